#!/usr/bin/env bash
# Set up .venv (if needed), lint (ruff, configured in pyproject.toml) and run the test suite. On CI (CI=true) it also installs Debian's
# chromium for the demo's browser test; elsewhere that test is skipped (with its reason) when
# no chromium/chromedriver is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${CI:-}" = "true" ]; then
  bash .ci/install_browser.sh
fi
. .venv/bin/activate
ruff check .
export CLIP_CIR_CACHE="${CLIP_CIR_CACHE:-$(mktemp -d)}"
python -m pytest -q -rs tests "$@"
