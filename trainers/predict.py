r"""Classifies image files with a trained run and prints each prediction's uncertainty.

  python -m trainers.predict --model_dir=runs/advbnn cat.png dog.jpg

One line per file: the class (its name from the run's model_spec.json) and id, its probability
under the ``--num_samples``-draw ensemble (paper eq. 18), the predictive entropy and the mutual
information between prediction and weights (the epistemic part), both in nats. PNG and JPEG
files (also GIF, BMP) of any size: they are resized to the model's image size as the
``serving_bytes`` signature does. A missing or undecodable file stops the command with an
error naming it, before anything is printed.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)

# isort: split

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "A trained run's model_dir.", required=True)
flags.DEFINE_integer("num_samples", 10, "Weight draws of the ensemble prediction (>= 1).")
flags.DEFINE_integer("batch_size", 64, "Images classified per call (>= 1).")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files after the flags")
    if FLAGS.num_samples < 1:
        raise app.UsageError(f"--num_samples must be >= 1, got {FLAGS.num_samples}")
    if FLAGS.batch_size < 1:
        raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}")
    from tfp_advbnn import export, models, predict, training

    # Checked before the model is restored, so a bad file fails fast.
    predict.read_image_files(paths)
    model, config, model_spec = training.restore_model(FLAGS.model_dir)
    module = export.serving_module(
        model,
        num_samples=models.num_draws(config.objective.defense, FLAGS.num_samples),
        image_shape=tuple(model_spec["image_shape"]),
    )
    predictions = predict.predict_files(
        module.serving_bytes, paths, model_spec["class_names"], batch_size=FLAGS.batch_size
    )
    for prediction in predictions:
        print(prediction.line())


if __name__ == "__main__":
    cli.run(main)
