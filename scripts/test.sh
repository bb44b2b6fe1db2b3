#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export CLIP_CIR_CACHE="${CLIP_CIR_CACHE:-$(mktemp -d)}"
python -m pytest -q tests "$@"
