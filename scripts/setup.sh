#!/usr/bin/env bash
# Create .venv and install clip-cir with its test, plot and demo extras.
# torch is installed first on its own so that users (and this script) can pick the build:
# set TORCH_SPEC to choose, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" (the CPU machines
# this project is developed on keep exactly that pair on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if ! python -c "import torch, torchvision" 2>/dev/null; then
  pip install -q $TORCH_SPEC
fi
pip install -q -e ".[all]"
