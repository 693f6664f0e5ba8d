#!/usr/bin/env bash
# Runs the tests under Bazel 4 (Debian's bazel-bootstrap), offline: WORKSPACE fetches nothing,
# the Python toolchain is the virtual env $VENV (default .venv, made by scripts/test.sh), and
# each test file is one py_test target. Bazel's output lives under $BAZEL_OUTPUT_USER_ROOT
# (default /tmp/bazel-root), never in the tree.
# Usage: bash scripts/bazel_test.sh [bazel test args]   (default: //...)
#   VENV=.venv-ci BAZEL_TEST_JOBS=1 bash scripts/bazel_test.sh //:test_run_dir //:tests_config
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV="${VENV:-.venv}"
if ! command -v bazel >/dev/null; then
  echo "error: bazel not found; install Bazel 4.2 (Debian: apt-get install bazel-bootstrap)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "error: VENV=$VENV has no bin/python; create it (bash scripts/test.sh) or set VENV" >&2
  exit 2
fi
if [ ! -d ../shared/data ]; then
  echo "error: ../shared/data not found; tests that read the CIFAR-10 subset need it" >&2
  exit 2
fi
if ! "$VENV/bin/python" scripts/gen_build.py --check; then
  exit 2
fi
startup=(--output_user_root="${BAZEL_OUTPUT_USER_ROOT:-/tmp/bazel-root}" --max_idle_secs=600)
jobs=()
if [ -n "${BAZEL_TEST_JOBS:-}" ]; then
  jobs=(--local_test_jobs="$BAZEL_TEST_JOBS")
fi
if [ $# -eq 0 ]; then
  set -- //...
fi
exec bazel "${startup[@]}" test "${jobs[@]}" "$@"
