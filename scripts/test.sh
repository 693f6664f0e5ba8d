#!/usr/bin/env bash
# Creates the virtual env (if needed), installs the package with its test extra, and runs
# the lint and the test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
export TF_ENABLE_ONEDNN_OPTS=1 TF_CPP_MIN_LOG_LEVEL=2
# Two workers (one per core), each test file on one worker so module fixtures are built once;
# the slowest tests are listed at the end.
"$VENV/bin/python" -m pytest tests -q -n 2 --dist loadfile --durations=15 "$@"
