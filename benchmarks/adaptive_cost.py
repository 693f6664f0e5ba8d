r"""What the adaptive protocol costs, beside the paper protocol and APGD-CE with EOT alone.

  python benchmarks/adaptive_cost.py --model_dir=runs/advbnn              # 500 test images
  python benchmarks/adaptive_cost.py --model_dir=runs/advbnn --num_examples=50 --output=/tmp/a.json

On the first ``--num_examples`` test images of one trained run, at L-inf eps ``--eps`` ([0, 1]
pixel scale), three evaluations run one after the other on the same images, as
``trainers.evaluate --mode=sweep`` runs them (``evaluation.sweeps.sweep``, no gradient-masking
checks):

- ``paper``: PGD-20, one weight draw per step, scored by the ``--num_samples``-draw ensemble;
- ``apgd_ce_eot``: APGD-CE alone, ``--steps`` iterations, gradients averaged over
  ``--eot_samples`` draws (``--protocol=paper --attack=apgd``);
- ``adaptive``: ``--protocol=adaptive`` (APGD-CE then APGD-DLR with those settings, worst case
  per example) and its Square check on ``--square_examples`` images;
- ``adaptive_cascade`` (asked for by ``--protocols``): the same with ``--cascade``, AutoAttack's
  order (APGD-DLR only on the examples APGD-CE left robust, clean-misclassified ones never),
  without Square, so the two rows' robust accuracies and costs compare directly.

For each: wall seconds, seconds per image, the model passes per image measured by counting the
images that go through the network (every attack step, EOT draw, ensemble pick and score), the
gradient evaluations per image the attacks' settings imply, and the accuracies with 95 % Wilson
intervals. The projected hours for the 10,000 CIFAR-10 test images scale the measured seconds
per image. Prints a table and writes JSON (``--output``).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfp_advbnn import models  # noqa: E402
from tfp_advbnn.config import EvalConfig  # noqa: E402
from tfp_advbnn.evaluation import runner, sweeps  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The trained run to evaluate.", required=True)
flags.DEFINE_string("data_dir", None, "Test data, overriding the run's data_dir.")
flags.DEFINE_integer("num_examples", 500, "First test images evaluated.")
flags.DEFINE_float("eps", 8.0 / 255.0, "L-inf radius in [0, 1] pixel scale.")
flags.DEFINE_integer("steps", 100, "APGD iterations of apgd_ce_eot and adaptive.")
flags.DEFINE_integer("eot_samples", 20, "Weight draws per APGD gradient (stochastic models).")
flags.DEFINE_integer("num_samples", 10, "Ensemble size that scores every prediction.")
flags.DEFINE_integer("square_examples", 100, "Images of the adaptive protocol's Square check.")
flags.DEFINE_integer("batch_size", 100, "Images per attack call.")
ROWS = ("paper", "apgd_ce_eot", "adaptive", "adaptive_cascade")
flags.DEFINE_list(
    "protocols", ["paper", "apgd_ce_eot", "adaptive"], f"Which rows to run, of {list(ROWS)}."
)
flags.DEFINE_string("output", "benchmarks/results/adaptive_cost.json", "JSON output.")

TEST_IMAGES = 10_000


def counting(model_fn, counter: tf.Variable):
    """``model_fn`` that adds the rows of every batch it is called on to ``counter``."""

    def counted(images):
        with tf.control_dependencies([counter.assign_add(tf.cast(tf.shape(images)[0], tf.int64))]):
            return tf.identity(model_fn(images))

    return counted


def config_of(name: str) -> EvalConfig:
    common = dict(
        eps_grid=(0.0, FLAGS.eps),
        max_examples=FLAGS.num_examples,
        batch_size=FLAGS.batch_size,
        num_samples=FLAGS.num_samples,
    )
    if name == "paper":
        return EvalConfig(protocol="paper", **common)
    if name == "apgd_ce_eot":
        return EvalConfig(
            protocol="paper",
            attack="apgd",
            attack_steps=FLAGS.steps,
            num_eot_samples=FLAGS.eot_samples,
            **common,
        )
    cascade = name == "adaptive_cascade"
    return EvalConfig(
        protocol="adaptive",
        attack_steps=FLAGS.steps,
        num_eot_samples=FLAGS.eot_samples,
        square_examples=0 if cascade else FLAGS.square_examples,
        cascade=cascade,
        **common,
    )


def gradient_evaluations(report: dict) -> int | None:
    """Gradient evaluations per image that the attacks' settings imply: (steps + 1) * EOT
    draws per APGD run (its start point included), steps * draws per PGD run. None under the
    cascade, whose attacks run on fewer images: its model passes are measured instead."""
    if report["cascade"]:
        return None
    runs = 1 + report["random_restarts"]
    total = 0
    for attack in report["attacks"]:
        start_point = 1 if attack["attack"].startswith("apgd") else 0
        total += runs * (attack["num_steps"] + start_point) * attack["num_eot_samples"]
    return total


def main(argv):
    del argv
    unknown = [name for name in FLAGS.protocols if name not in ROWS]
    if unknown:
        raise app.UsageError(f"--protocols: unknown {unknown}; choose from {list(ROWS)}")
    logging.set_verbosity(logging.WARNING)
    loaded = runner.load_model(FLAGS.model_dir)
    images, labels = runner.load_test_data(loaded.config, data_dir=FLAGS.data_dir)
    images, labels = images[: FLAGS.num_examples], labels[: FLAGS.num_examples]
    stochastic = models.is_stochastic(loaded.config.objective.defense)
    counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    model_fn = counting(loaded.model_fn, counter)
    rows = []
    for name in FLAGS.protocols:
        counter.assign(0)
        started = time.time()
        report = sweeps.sweep(
            model_fn,
            images,
            labels,
            config_of(name),
            with_checks=False,
            stochastic=stochastic,
        )
        seconds = time.time() - started
        square = [c for c in report["checks"] if c["name"] == "black_box_not_stronger"]
        row = {
            "protocol": name,
            "attacks": [a["attack"] for a in report["attacks"]],
            "num_examples": report["num_examples"],
            "seconds": seconds,
            "seconds_per_image": seconds / report["num_examples"],
            "square_seconds": report["seconds"]["total"] - report["seconds"]["sweep"],
            "model_passes_per_image": int(counter.numpy()) / report["num_examples"],
            "gradient_evaluations_per_image": gradient_evaluations(report),
            "projected_hours_10k": seconds / report["num_examples"] * TEST_IMAGES / 3600,
            "clean_accuracy": report["clean_accuracy"],
            "accuracy": report["accuracy"][1],
            "accuracy_interval": report["accuracy_interval"][1],
            "robust_accuracy": report["robust_accuracy"][1],
            "robust_accuracy_interval": report["robust_accuracy_interval"][1],
            "per_attack_robust_accuracy": {
                a["attack"]: a["robust_accuracy"][1] for a in report["attacks"]
            },
            "square_check": square[0] if square else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write(loaded, rows)
    _print_table(rows)
    print(f"wrote {FLAGS.output}")


def _write(loaded, rows) -> None:
    """The JSON of the rows so far (a cut-short run keeps what it measured)."""
    result = {
        "command": " ".join(sys.argv),
        "model_dir": FLAGS.model_dir,
        "defense": loaded.config.objective.defense,
        "model": loaded.config.network.model,
        "width_multiplier": loaded.config.network.width_multiplier,
        "eps": FLAGS.eps,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)


def _print_table(rows) -> None:
    print(
        f"{'protocol':<12} {'s/image':>8} {'passes/img':>10} {'grads/img':>9} "
        f"{'h per 10k':>9} {'accuracy':>22} {'robust_accuracy':>22}"
    )
    for row in rows:
        cells = [
            f"{row[k]:.3f} [{row[k + '_interval'][0]:.3f}, {row[k + '_interval'][1]:.3f}]"
            for k in ("accuracy", "robust_accuracy")
        ]
        gradients = str(row["gradient_evaluations_per_image"])
        print(
            f"{row['protocol']:<12} {row['seconds_per_image']:>8.2f} "
            f"{row['model_passes_per_image']:>10.0f} {gradients:>9} "
            f"{row['projected_hours_10k']:>9.1f} {cells[0]:>22} {cells[1]:>22}"
        )


if __name__ == "__main__":
    app.run(main)
