r"""Cross-checks our APGD-CE with EOT against an independent implementation: ART's APGD.

  python benchmarks/independent_attack.py                  # trains a small Adv-BNN first
  python benchmarks/independent_attack.py --model_dir=runs/advbnn --num_examples=500 \
      --num_steps=100 --num_eot_samples=20

A white-box evaluation is only as strong as its attack. This attacks the same test images of
one model at the same L-inf eps with two implementations of APGD-CE (Croce & Hein 2020):

- ours: ``tfp_advbnn.attacks.get("apgd")`` with ``num_eot_samples`` draws averaged per gradient
  (the mean of the per-draw cross-entropy gradients) and, on a stochastic model, its returned
  point picked by a ``num_samples``-draw ensemble, as ``trainers.evaluate`` runs it;
- ART: the Adversarial Robustness Toolbox's ``AutoProjectedGradientDescent`` (cross-entropy, one
  random start, initial step 2 eps as AutoAttack) on a ``TensorFlowV2Classifier`` whose forward
  pass averages the logits of ``num_eot_samples`` draws (EOT inside the model: ART sees one
  model whose gradient is already an average). ART keeps an example's final iterate when one
  such forward pass misclassifies it, else its random start.

Both sets of adversarial images are scored by the same kind of fresh ``num_samples``-draw
ensemble (paper eq. 18). The table gives each accuracy with its 95 % Wilson interval and the
paired difference (McNemar z); the issue's acceptance is that ours is not weaker than ART's by
more than 2 points. Without --model_dir it first trains (``python -m trainers.main``, resuming
in --work_dir) a VGG16 x0.25 Adv-BNN for --epochs on the CIFAR-10 subset of ../shared/data.
Needs ART: ``pip install -e ".[attacks]"``. Prints the table and writes JSON (--output).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from tfp_advbnn import attacks, evaluation, export, models, run_dir  # noqa: E402
from tfp_advbnn.attacks.square import require_art  # noqa: E402
from tfp_advbnn.evaluation.reports import wilson_interval  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model_dir", None, "A trained run to attack (default: train one, see --work_dir)."
)
flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin"),
    "CIFAR-10 directory (for the run trained here, and overriding --model_dir's).",
)
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_independent", "Where the run trained here goes.")
flags.DEFINE_integer("epochs", 3, "Epochs of the Adv-BNN trained here (PGD-2 training).")
flags.DEFINE_integer("num_examples", 100, "Test images attacked (the first ones).")
flags.DEFINE_float("eps", 8.0 / 255.0, "L-inf radius, [0, 1] pixel scale.")
flags.DEFINE_integer("num_steps", 50, "APGD iterations of both implementations.")
flags.DEFINE_integer("num_eot_samples", 10, "Draws per gradient (EOT) of both implementations.")
flags.DEFINE_integer("num_samples", 10, "Ensemble size that scores the adversarial images.")
flags.DEFINE_integer("batch_size", 50, "Images per attack batch.")
flags.DEFINE_integer("seed", 0, "Seed of the random starts.")
flags.DEFINE_string(
    "output", "benchmarks/results/independent_attack.json", "JSON output (atomically replaced)."
)

# The acceptance of issue 13: ours may be weaker than the independent implementation by at most
# this much accuracy.
MAX_WEAKER = 0.02


def train_default_run() -> str:
    """Trains (or resumes, or finds finished) the default Adv-BNN; returns its model_dir."""
    model_dir = os.path.join(FLAGS.work_dir, f"adv_bnn_vgg16_x025_e{FLAGS.epochs}")
    if os.path.isdir(os.path.join(model_dir, export.SAVED_MODEL_DIRNAME)):
        return model_dir
    # alpha 0.1017 = 5,085 / 50,000: on the subset the KL weight of the paper's alpha = 1.
    command = [
        sys.executable,
        "-m",
        "trainers.main",
        "--dataset=cifar10",
        f"--data_dir={FLAGS.data_dir}",
        "--defense=adv_bnn",
        "--model=vgg16",
        "--width_multiplier=0.25",
        f"--epochs={FLAGS.epochs}",
        "--batch_size=64",
        "--alpha=0.1017",
        "--train_pgd_steps=2",
        "--max_test_examples=200",
        "--eval_num_samples=2",
        f"--seed={FLAGS.seed}",
        f"--model_dir={model_dir}",
    ]
    print("training:", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    return model_dir


def batched(function, images, labels, batch_size, *extra):
    """Concatenates ``function(images[part], labels[part], *extra)`` over batches, as numpy."""
    parts = []
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        parts.append(np.asarray(function(images[start:stop], labels[start:stop], *extra)))
    return np.concatenate(parts)


def ensemble_correct(model_fn, x, labels, num_samples, batch_size):
    """bool [N]: a fresh ``num_samples``-draw ensemble classifies each image correctly."""

    @tf.function(reduce_retracing=True)
    def predict(images):
        probabilities = models.ensemble_probabilities(model_fn, images, num_samples)
        return tf.argmax(probabilities, axis=-1, output_type=tf.int32)

    return batched(lambda xb, yb: predict(tf.constant(xb)).numpy() == yb, x, labels, batch_size)


def ours(model_fn, images, labels, *, stochastic, num_eot_samples, num_samples):
    """Our APGD-CE with EOT, as the evaluation runs it: float32 adversarial images [N, H, W, 3]."""
    apgd = attacks.get("apgd")
    spec = [
        tf.TensorSpec([None, *images.shape[1:]], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([2], tf.int64),
    ]

    @tf.function(input_signature=spec)
    def craft(x, y, seed):
        return apgd(
            model_fn,
            x,
            y,
            eps=FLAGS.eps,
            num_steps=FLAGS.num_steps,
            num_eot_samples=num_eot_samples,
            selection_samples=num_samples if stochastic else 0,
            seed=seed,
        )

    parts = []
    for index, start in enumerate(range(0, len(images), FLAGS.batch_size)):
        stop = start + FLAGS.batch_size
        # A distinct stateless seed per batch makes every random start reproducible.
        seed = tf.constant([FLAGS.seed, index], tf.int64)
        x_adv = craft(tf.constant(images[start:stop]), tf.constant(labels[start:stop]), seed)
        parts.append(x_adv.numpy())
    return np.concatenate(parts)


def independent(model_fn, images, labels, *, num_classes, num_eot_samples):
    """ART's APGD-CE on the mean logits of ``num_eot_samples`` draws: float32 [N, H, W, 3]."""
    evasion = require_art("attacks.evasion")
    classification = require_art("estimators.classification")

    @tf.function(input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.float32)])
    def mean_logits(x):
        total = tf.cast(model_fn(x), tf.float32)
        _, total = tf.while_loop(
            lambda i, _: i < num_eot_samples - 1,
            lambda i, acc: (i + 1, acc + tf.cast(model_fn(x), tf.float32)),
            (tf.constant(0), total),
        )
        return total / float(num_eot_samples)

    def model(x, training=False):
        # ART passes its training-mode flag; the attacked model always runs in inference mode.
        del training
        return mean_logits(tf.cast(x, tf.float32))

    classifier = classification.TensorFlowV2Classifier(
        model=model,
        nb_classes=num_classes,
        input_shape=tuple(images.shape[1:]),
        clip_values=(0.0, 1.0),
    )
    attack = evasion.AutoProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=FLAGS.eps,
        eps_step=2.0 * FLAGS.eps,
        max_iter=FLAGS.num_steps,
        nb_random_init=1,
        batch_size=FLAGS.batch_size,
        loss_type="cross_entropy",
        verbose=False,
    )
    np.random.seed(FLAGS.seed)  # ART draws its random starts from NumPy's global generator
    return np.asarray(attack.generate(images, labels.astype(np.int64)), np.float32)


def row(name, correct, seconds, x_adv, images):
    accuracy = float(np.mean(correct))
    return {
        "attack": name,
        "accuracy": accuracy,
        "interval_95": wilson_interval(int(np.sum(correct)), len(correct)),
        "seconds": seconds,
        "max_linf": float(np.abs(x_adv - images).max()) if x_adv is not None else 0.0,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    require_art("attacks.evasion")  # fail before training when ART is missing
    model_dir = FLAGS.model_dir or train_default_run()
    loaded = evaluation.load_model(model_dir)
    config = loaded.config.replace(max_test_examples=None)
    images, labels = evaluation.load_test_data(config, data_dir=FLAGS.data_dir)
    if FLAGS.num_examples > len(images):
        raise ValueError(f"--num_examples={FLAGS.num_examples} but the test set has {len(images)}")
    images, labels = images[: FLAGS.num_examples], labels[: FLAGS.num_examples]
    defense = config.objective.defense
    stochastic = models.is_stochastic(defense)
    num_eot_samples = models.num_draws(defense, FLAGS.num_eot_samples)
    num_samples = models.num_draws(defense, FLAGS.num_samples)
    num_classes = int(loaded.model_spec["num_classes"])
    model_fn = loaded.model_fn

    clean = ensemble_correct(model_fn, images, labels, num_samples, FLAGS.batch_size)
    rows = [row("clean", clean, 0.0, None, images)]
    outcomes = {}
    for name, craft in (
        (
            "ours: APGD-CE, EOT gradient",
            lambda: ours(
                model_fn,
                images,
                labels,
                stochastic=stochastic,
                num_eot_samples=num_eot_samples,
                num_samples=num_samples,
            ),
        ),
        (
            "ART: AutoProjectedGradientDescent, mean-logit model",
            lambda: independent(
                model_fn, images, labels, num_classes=num_classes, num_eot_samples=num_eot_samples
            ),
        ),
    ):
        started = time.time()
        x_adv = craft()
        seconds = time.time() - started
        correct = ensemble_correct(model_fn, x_adv, labels, num_samples, FLAGS.batch_size)
        outcomes[name] = correct
        rows.append(row(name, correct, seconds, x_adv, images))
        print(f"{name}: accuracy {correct.mean():.3f} in {seconds:.0f} s", flush=True)

    ours_correct, art_correct = outcomes.values()
    # Paired comparison on the same examples (one-sided McNemar: positive z, ART stronger).
    only_ours_fails = int(np.sum(~ours_correct & art_correct))
    only_art_fails = int(np.sum(ours_correct & ~art_correct))
    disagreements = only_ours_fails + only_art_fails
    z = (only_art_fails - only_ours_fails) / math.sqrt(disagreements) if disagreements else 0.0
    weaker_by = float(ours_correct.mean() - art_correct.mean())
    result = {
        "model_dir": os.path.abspath(model_dir),
        "defense": defense,
        "num_examples": len(images),
        "eps": FLAGS.eps,
        "num_steps": FLAGS.num_steps,
        "num_eot_samples": num_eot_samples,
        "num_samples": num_samples,
        "seed": FLAGS.seed,
        "rows": rows,
        "ours_weaker_by": weaker_by,
        "fooled_only_by_ours": only_ours_fails,
        "fooled_only_by_art": only_art_fails,
        "mcnemar_z": z,
        "max_weaker": MAX_WEAKER,
        "passed": weaker_by <= MAX_WEAKER,
    }

    print(
        f"\n{defense}, {len(images)} test images, L-inf eps {FLAGS.eps:.4f}, {FLAGS.num_steps} "
        f"steps, EOT {num_eot_samples}, scored by a {num_samples}-draw ensemble\n"
    )
    print("| attack | accuracy | 95 % Wilson | seconds | max L-inf |")
    print("|---|---|---|---|---|")
    for entry in rows:
        low, high = entry["interval_95"]
        print(
            f"| {entry['attack']} | {entry['accuracy']:.3f} | [{low:.3f}, {high:.3f}] | "
            f"{entry['seconds']:.0f} | {entry['max_linf']:.4f} |"
        )
    print(
        f"\nours - ART accuracy: {weaker_by:+.3f} (fooled only by ours {only_ours_fails}, only by "
        f"ART {only_art_fails}, McNemar z = {z:.1f}); ours "
        + ("is" if result["passed"] else "is NOT")
        + f" within {MAX_WEAKER:.0%} of the independent implementation"
    )
    run_dir.write_text_atomically(FLAGS.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
