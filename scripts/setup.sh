#!/usr/bin/env bash
# Create .venv with the CPU build of torch and glass-pyg (editable) with its test and bench extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned to the CPU build so no dependency pulls a CUDA wheel
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,bench]"
# torch-sparse and torch-scatter have no wheels for this torch on PyPI: prebuilt CPU wheels, when present
# (../shared/wheels beside the checkout, or GLASS_WHEELS), are installed offline so the SparseTensor paths run
WHEELS=${GLASS_WHEELS:-../shared/wheels}
if ls "$WHEELS"/torch_sparse-*.whl >/dev/null 2>&1 && ! python -c "import torch_sparse" 2>/dev/null; then
  python -m pip install -q --no-deps "$WHEELS"/torch_scatter-*.whl "$WHEELS"/torch_sparse-*.whl \
    || echo "setup: the wheels in $WHEELS do not fit this Python and torch; SparseTensor tests will skip" >&2
fi
