r"""Single-step and free adversarial training beside PGD training, side by side in one run.

  python benchmarks/fast_training.py                       # $CIFAR10_DIR, else ../shared/data
  python benchmarks/fast_training.py --epochs=2 --max_train_examples=1000 --output=/tmp/f.json

Trains ``adv_bnn`` and ``adv`` with each ``--train_attack`` (pgd: PGD-``--train_pgd_steps``;
fgsm_rs: FGSM from a random start, step 1.25 eps; free: ``--free_replays`` replays per batch and
ceil(epochs / replays) passes) on the same data, architecture, seed and epoch budget, each a
normal model_dir under ``--work_dir`` (deleted first, so every run is timed from scratch).
The guard (``training/guard.py``) runs with its defaults: on for fgsm_rs and free, off for pgd.

Evaluation on the first ``--eval_examples`` test images, at ``--eps`` (L-inf, [0, 1] pixel
scale): the ensemble accuracy (eq. 18, ``--num_samples`` draws for adv_bnn, 1 for adv) on clean
images and under PGD-``--pgd_steps`` (step 2.5 eps / steps, no random start) whose gradient is
one weight draw per step (1-draw) or the mean of ``--eot_samples`` draws per step (EOT). Standard
errors are binomial, sqrt(p (1 - p) / n). ``adv`` is deterministic, so its EOT attack is its 1-draw
attack (reported as such, not run twice). Wall time is the whole Trainer.fit (its per-epoch
test evaluation and guard included). Prints a table and writes JSON (``--output``).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfp_advbnn import attacks, data, models, run_dir, training  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.environ.get(
        "CIFAR10_DIR", os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin")
    ),
    "CIFAR-10 directory (default: $CIFAR10_DIR, else the shared subset).",
)
flags.DEFINE_list("defenses", ["adv_bnn", "adv"], "Defenses to train (adv and/or adv_bnn).")
flags.DEFINE_list("train_attacks", ["pgd", "fgsm_rs", "free"], "Training attacks.")
flags.DEFINE_string("model", "vgg16", "Architecture.")
flags.DEFINE_float("width_multiplier", 0.25, "Conv width multiplier.")
flags.DEFINE_integer(
    "epochs", 8, "Epoch budget of every run (free: ceil(epochs / replays) passes)."
)
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images.")
flags.DEFINE_integer("train_pgd_steps", 10, "PGD steps of the pgd runs.")
flags.DEFINE_integer("free_replays", 8, "Replays of the free runs.")
flags.DEFINE_float("alpha", 0.1017, "KL weight of adv_bnn (the demo's, for the 5,085 images).")
flags.DEFINE_float("eps", 8.0 / 255.0, "Training and evaluation L-inf radius.")
flags.DEFINE_integer("eval_examples", 500, "Test images evaluated.")
flags.DEFINE_integer("pgd_steps", 20, "Evaluation PGD steps.")
flags.DEFINE_integer("eot_samples", 20, "Weight draws per PGD gradient in the EOT evaluation.")
flags.DEFINE_integer("num_samples", 10, "Ensemble size of the adv_bnn predictions.")
flags.DEFINE_integer("eval_batch_size", 100, "Images per evaluation call.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_fast_training", "Where the runs go.")
flags.DEFINE_string("output", "benchmarks/results/fast_training.json", "JSON output.")


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` on ``n`` images."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def evaluate(model, defense: str, images: np.ndarray, labels: np.ndarray) -> dict:
    """Clean, PGD 1-draw and PGD EOT ensemble accuracies of ``model`` with standard errors."""
    num_samples = models.num_draws(defense, FLAGS.num_samples)
    step = attacks.default_step_size(FLAGS.eps, FLAGS.pgd_steps)

    def logits(x):
        return tf.cast(model(x, training=False), tf.float32)

    @tf.function
    def correct(x, y, eot_samples):
        if eot_samples:
            x = attacks.pgd(
                logits,
                x,
                y,
                eps=FLAGS.eps,
                step_size=step,
                num_steps=FLAGS.pgd_steps,
                num_eot_samples=eot_samples,
            )
        probabilities = models.ensemble_probabilities(logits, x, num_samples)
        return tf.equal(tf.argmax(probabilities, -1, output_type=tf.int32), y)

    results = {}
    protocols = [("clean", 0), ("pgd_1draw", 1)]
    if models.is_stochastic(defense):
        protocols.append(("pgd_eot", FLAGS.eot_samples))
    for name, eot_samples in protocols:
        hits = []
        for start in range(0, len(labels), FLAGS.eval_batch_size):
            stop = start + FLAGS.eval_batch_size
            hits.append(correct(images[start:stop], labels[start:stop], eot_samples).numpy())
        accuracy = float(np.concatenate(hits).mean())
        results[f"{name}_accuracy"] = accuracy
        results[f"{name}_se"] = standard_error(accuracy, len(labels))
    if not models.is_stochastic(defense):
        # One deterministic model: every draw is the same, so EOT is the 1-draw attack.
        results["pgd_eot_accuracy"] = results["pgd_1draw_accuracy"]
        results["pgd_eot_se"] = results["pgd_1draw_se"]
    return results


def train_one(defense: str, train_attack: str, image_data) -> tuple[dict, object]:
    recipe = training.recipe_defaults("cifar10", defense)
    values = dict(
        model_dir=os.path.join(FLAGS.work_dir, f"{defense}_{train_attack}"),
        dataset="cifar10",
        data_dir=FLAGS.data_dir,
        model=FLAGS.model,
        defense=defense,
        width_multiplier=FLAGS.width_multiplier,
        train_eps=FLAGS.eps,
        train_attack=train_attack,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        max_train_examples=FLAGS.max_train_examples,
        eval_num_samples=FLAGS.num_samples,
        seed=FLAGS.seed,
        optimizer=recipe["optimizer"],
        learning_rate=recipe["learning_rate"],
        weight_decay=recipe["weight_decay"],
    )
    if train_attack == "pgd":
        values["train_pgd_steps"] = FLAGS.train_pgd_steps
    if train_attack == "free":
        values["free_replays"] = FLAGS.free_replays
    if models.is_bayesian(defense):
        values["alpha"] = FLAGS.alpha
    config = training.TrainConfig.from_flat(**values)
    shutil.rmtree(config.model_dir, ignore_errors=True)
    started = time.time()
    trainer = training.Trainer(config, image_data=image_data)
    trainer.fit(verbose=False, export=False)
    seconds = time.time() - started
    with open(os.path.join(config.model_dir, run_dir.METRICS_FILENAME)) as f:
        lines = [json.loads(line) for line in f]
    row = {
        "defense": defense,
        "train_attack": train_attack,
        "train_seconds": seconds,
        "passes": trainer.num_epochs,
        "epochs_logged": len(lines),
        "guard_fired": any(line.get("guard_fired", False) for line in lines),
        "guard_accuracy": [line.get("guard_accuracy") for line in lines],
        "rolled_back_to_epoch": next(
            (line["guard_rolled_back_to_epoch"] for line in lines if line.get("guard_fired")),
            None,
        ),
    }
    return row, trainer.model


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    image_data = data.load_data(
        "cifar10",
        data_dir=FLAGS.data_dir,
        max_train_examples=FLAGS.max_train_examples,
        max_test_examples=FLAGS.eval_examples,
        seed=FLAGS.seed,
    )
    images, labels = image_data.test_arrays()
    rows = []
    for defense in FLAGS.defenses:
        for train_attack in FLAGS.train_attacks:
            row, model = train_one(defense, train_attack, image_data)
            started = time.time()
            row.update(evaluate(model, defense, images, labels))
            row["eval_seconds"] = time.time() - started
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(image_data, labels, rows)
    _print_table(rows)
    print(f"wrote {FLAGS.output}")


def _write(image_data, labels, rows) -> None:
    """Writes the JSON of the rows so far (a cut-short run keeps what it measured)."""
    result = {
        "command": " ".join(sys.argv),
        "model": FLAGS.model,
        "width_multiplier": FLAGS.width_multiplier,
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "num_train": image_data.spec.num_train,
        "train_pgd_steps": FLAGS.train_pgd_steps,
        "free_replays": FLAGS.free_replays,
        "alpha": FLAGS.alpha,
        "eps": FLAGS.eps,
        "pgd_steps": FLAGS.pgd_steps,
        "eot_samples": FLAGS.eot_samples,
        "num_samples": FLAGS.num_samples,
        "eval_examples": len(labels),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    training.write_text_atomically(FLAGS.output, json.dumps(result, indent=2) + "\n")


def _print_table(rows) -> None:
    header = (
        f"{'defense':<8} {'attack':<8} {'train s':>8} {'clean':>12} {'PGD 1-draw':>12} "
        f"{'PGD EOT':>12} {'guard':>6}"
    )
    print("\n" + header)
    for row in rows:
        cells = [
            f"{row[f'{name}_accuracy']:.3f}±{row[f'{name}_se']:.3f}"
            for name in ("clean", "pgd_1draw", "pgd_eot")
        ]
        print(
            f"{row['defense']:<8} {row['train_attack']:<8} {row['train_seconds']:>8.0f} "
            f"{cells[0]:>12} {cells[1]:>12} {cells[2]:>12} {str(row['guard_fired']):>6}"
        )


if __name__ == "__main__":
    app.run(main)
