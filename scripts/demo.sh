#!/usr/bin/env bash
# Creates the virtual env (if needed), then trains a small Adv-BNN on CIFAR-10 and evaluates
# it under PGD. Data: $CIFAR10_DIR, else ../shared/data/cifar-10-batches-bin, else tfds.
# Usage: bash scripts/demo.sh [model_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
MODEL_DIR="${1:-runs/demo}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .
DATA_DIR="${CIFAR10_DIR:-}"
if [ -z "$DATA_DIR" ] && [ -d ../shared/data/cifar-10-batches-bin ]; then
  DATA_DIR=../shared/data/cifar-10-batches-bin
fi
DATA_FLAG=()
[ -n "$DATA_DIR" ] && DATA_FLAG=(--data_dir="$DATA_DIR")
export TF_ENABLE_ONEDNN_OPTS=1 TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" -m trainers.main --dataset=cifar10 "${DATA_FLAG[@]}" \
  --defense=adv_bnn --model=vgg16 --width_multiplier=0.25 --epochs=3 \
  --max_train_examples=2048 --max_test_examples=256 --batch_size=64 \
  --alpha=0.02 --eval_num_samples=4 --model_dir="$MODEL_DIR"
"$VENV/bin/python" -m trainers.evaluate --model_dir="$MODEL_DIR" "${DATA_FLAG[@]}" \
  --eps_grid=0,0.015,0.035 --pgd_steps=10 --num_samples=4 --max_examples=128 --check_examples=128 \
  --output="$MODEL_DIR/eval.json" --plot="$MODEL_DIR/eval.png"
echo "Demo finished: see $MODEL_DIR (metrics.jsonl, eval.json, eval.png, saved_model/)."
