r"""Exports a trained run as a SavedModel with serving signatures and a TF Serving warm-up file.

  python -m trainers.export --model_dir=runs/demo --num_samples=20
  python -m trainers.export --model_dir=runs/demo --export_base=models/advbnn

Writes ``<model_dir>/saved_model`` (or ``--export_dir``), replacing an existing export only
after the new one is complete; or, with ``--export_base``, the next numbered version
``<export_base>/<N>/`` that ``tensorflow_model_server --model_base_path=<export_base>`` serves,
never touching an existing version.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)

# isort: split

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A trained run's model_dir.", required=True)
flags.DEFINE_integer("num_samples", 10, "Weight draws averaged by serving_default (>= 1).")
flags.DEFINE_string("export_dir", None, "Where to write (default <model_dir>/saved_model).")
flags.DEFINE_string(
    "export_base",
    None,
    "Write the next numbered version <export_base>/<N>/ (TF Serving's --model_base_path "
    "layout) instead of --export_dir.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.num_samples < 1:
        raise app.UsageError(f"--num_samples must be >= 1, got {FLAGS.num_samples}")
    if FLAGS.export_dir and FLAGS.export_base:
        raise app.UsageError("give --export_dir or --export_base, not both")
    from tfp_advbnn import export, models, training

    model, config, model_spec = training.restore_model(FLAGS.model_dir)
    num_samples = models.num_draws(config.objective.defense, FLAGS.num_samples)
    image_shape = tuple(model_spec["image_shape"])
    if FLAGS.export_base:
        export_dir = export.export_version(
            model, FLAGS.export_base, num_samples=num_samples, image_shape=image_shape
        )
    else:
        export_dir = FLAGS.export_dir or os.path.join(FLAGS.model_dir, export.SAVED_MODEL_DIRNAME)
        export.export_saved_model(
            model, export_dir, num_samples=num_samples, image_shape=image_shape
        )
    print(
        f"Exported {config.objective.defense} {config.network.model} ({num_samples} draws) "
        f"to {export_dir}"
    )


if __name__ == "__main__":
    cli.run(main)
