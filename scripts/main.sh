#!/usr/bin/env bash
# Set up (if needed) and run the main job: GLASS on an SBM graph pair, from the
# shipped config graph_sbm_small, with figures. Extra arguments go to `glass-pyg graph`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec glass-pyg graph --config graph_sbm_small --plot "$@"
