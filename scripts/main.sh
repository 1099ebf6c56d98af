#!/usr/bin/env bash
# Set up (if needed) and run the main job: the 1-D OT solver benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec glass-pyg bench-sinkhorn "$@"
