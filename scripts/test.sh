#!/usr/bin/env bash
# Set up (if needed) and run the test suite. GLASS_FULL_TESTS=1 also runs the slow cases.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [[ "${GLASS_FULL_TESTS:-0}" == "1" ]]; then
  exec python -m pytest -m "" -q "$@"
fi
exec python -m pytest -q "$@"
