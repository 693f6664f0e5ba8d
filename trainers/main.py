r"""Trains one of the five defenses.

  python -m trainers.main --dataset=cifar10 --alpha=1.0
  python -m trainers.main --dataset=cifar10 --data_dir=../shared/data/cifar-10-batches-bin \
      --defense=adv_bnn --model=vgg16 --width_multiplier=0.25 --epochs=2 --model_dir=runs/demo

Rerunning with the same --model_dir resumes from its latest checkpoint. Ctrl-C or SIGTERM
saves a checkpoint before exiting (under --strategy=multi_worker: SIGTERM to any worker).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)

# isort: split

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers import flags as training_flags  # noqa: E402

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model_dir = FLAGS.model_dir or os.path.join(
        "runs", f"{FLAGS.dataset}_{training_flags.model_name()}_{FLAGS.defense}"
    )
    run_settings = {name: FLAGS[name].value for name in training_flags.RUN_ONLY}
    return run_training(training_flags.config_from_flags(model_dir=model_dir, **run_settings))


def run_training(config) -> int:
    """Trains ``config`` (resuming its model_dir) and returns the process exit code."""
    from tfp_advbnn import export, training

    try:
        metrics = training.train(config)
    except KeyboardInterrupt as interrupt:
        print(f"Interrupted: {interrupt}", file=sys.stderr)
        return 130
    saved_model = os.path.join(config.model_dir, export.SAVED_MODEL_DIRNAME)
    print(f"Done. SavedModel at {saved_model}: {metrics}")
    return 0


if __name__ == "__main__":
    training_flags.define_training_flags()
    flags.DEFINE_string(
        "model_dir", None, "Where checkpoints, logs and exports go (default runs/<run name>)."
    )
    from tfp_advbnn import config

    training_flags.define_flags(config.TrainConfig, only=training_flags.RUN_ONLY)
    cli.run(main)
