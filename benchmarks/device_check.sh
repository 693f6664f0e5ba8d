#!/usr/bin/env bash
# The accelerator check of issue 14: one command, at most 8 minutes, ONE JSON.
#
#   bash benchmarks/device_check.sh [OUTPUT_JSON]             # default benchmarks/results/device_check.json
#   DEVICE_CHECK_SMOKE=1 bash benchmarks/device_check.sh /tmp/dc.json   # tiny sizes (CPU test)
#
# Runs in the repository root with `python` (or $PYTHON). If the package does not import, it is
# installed in editable mode without dependencies (the machine may have no network; TensorFlow,
# TFP and tf-keras must already be there). What is installed is recorded in the JSON. The Python
# part (benchmarks/device_check.py) budgets its pieces to stop starting new ones after
# DEVICE_CHECK_DEADLINE_S (default 420) seconds; `timeout` here is the hard stop at 470 s, after
# which the JSON still holds every finished piece ("complete": false).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUTPUT="${1:-benchmarks/results/device_check.json}"
export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}" TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if ! "$PYTHON" -c "import tfp_advbnn, tensorflow_probability, tf_keras" >/dev/null 2>&1; then
  echo "device_check: tfp_advbnn does not import; pip install -e . --no-deps" >&2
  "$PYTHON" -m pip install -q -e . --no-deps >&2 || echo "device_check: install failed" >&2
fi
"$PYTHON" -c "import tensorflow as tf; print('device_check: TF', tf.__version__, tf.config.list_physical_devices('GPU'))" >&2

timeout --kill-after=10 "${DEVICE_CHECK_TIMEOUT_S:-470}" "$PYTHON" benchmarks/device_check.py \
  --output="$OUTPUT" --deadline_s="${DEVICE_CHECK_DEADLINE_S:-420}"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "device_check: stopped by the ${DEVICE_CHECK_TIMEOUT_S:-470} s timeout; $OUTPUT has the finished pieces" >&2
fi
echo "device_check: exit $status, wrote $OUTPUT" >&2
exit "$status"
