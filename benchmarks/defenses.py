r"""Trains each of the five defenses on the CIFAR-10 subset and measures clean and PGD accuracy.

  python benchmarks/defenses.py                                  # ../shared/data subset
  python benchmarks/defenses.py --epochs=2 --defenses=plain,adv --output=/tmp/d.json

Every defense gets the same architecture, data, seed and budget. Each run is a normal
``trainers.main`` model_dir under --work_dir (rerunning resumes and skips finished runs).
Evaluation: ensemble accuracy (eq. 18) on clean test images and under L-inf PGD at --eps with a
fresh weight draw at every step. Prints a table and writes JSON.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfp_advbnn import evaluation, models, training  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin"),
    "CIFAR-10 directory.",
)
flags.DEFINE_list("defenses", list(models.DEFENSES), "Defenses to train.")
flags.DEFINE_string("model", "vgg16", "Architecture.")
flags.DEFINE_float("width_multiplier", 0.25, "Conv width multiplier.")
flags.DEFINE_integer("epochs", 6, "Epochs per defense.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("alpha", 0.02, "KL weight of bnn and adv_bnn (see README: small N).")
flags.DEFINE_float("init_s", 0.01, "Initial posterior std of bnn and adv_bnn.")
flags.DEFINE_float("eps", 8.0 / 255.0, "Training and evaluation L-inf radius.")
flags.DEFINE_integer("eval_examples", 500, "Test images evaluated.")
flags.DEFINE_integer("pgd_steps", 20, "Evaluation PGD steps.")
flags.DEFINE_integer("num_samples", 10, "Ensemble size of the evaluation.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_defenses", "Where the runs go.")
flags.DEFINE_string("output", "benchmarks/results/defenses.json", "JSON output.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = []
    for defense in FLAGS.defenses:
        recipe = training.recipe_defaults("cifar10", defense)
        config = training.TrainConfig.from_flat(
            model_dir=os.path.join(FLAGS.work_dir, defense),
            dataset="cifar10",
            data_dir=FLAGS.data_dir,
            model=FLAGS.model,
            defense=defense,
            width_multiplier=FLAGS.width_multiplier,
            alpha=FLAGS.alpha,
            init_s=FLAGS.init_s,
            train_eps=FLAGS.eps,
            epochs=FLAGS.epochs,
            batch_size=FLAGS.batch_size,
            eval_num_samples=FLAGS.num_samples,
            seed=FLAGS.seed,
            optimizer=recipe["optimizer"],
            learning_rate=recipe["learning_rate"],
            weight_decay=recipe["weight_decay"],
        )
        started = time.time()
        trainer = training.Trainer(config)
        trainer.fit(verbose=True)
        train_seconds = time.time() - started
        images, labels = trainer.data.test_arrays()
        eval_config = evaluation.EvalConfig(
            attack="pgd_linf",
            eps_grid=(0.0, FLAGS.eps),
            attack_steps=FLAGS.pgd_steps,
            num_samples=models.num_draws(defense, FLAGS.num_samples),
            max_examples=FLAGS.eval_examples,
            seed=FLAGS.seed,
        )
        model = trainer.model
        report = evaluation.sweep(
            lambda x, m=model: m(x, training=False),
            images,
            labels,
            eval_config,
            with_checks=False,
        )
        rows.append(
            {
                "defense": defense,
                "clean_accuracy": report["accuracy"][0],
                "pgd_accuracy": report["accuracy"][1],
                "train_seconds": train_seconds,
            }
        )
        print(f"{defense}: {rows[-1]}", flush=True)
    result = {
        "model": FLAGS.model,
        "width_multiplier": FLAGS.width_multiplier,
        "epochs": FLAGS.epochs,
        "alpha": FLAGS.alpha,
        "init_s": FLAGS.init_s,
        "eps": FLAGS.eps,
        "pgd_steps": FLAGS.pgd_steps,
        "eval_examples": FLAGS.eval_examples,
        "rows": rows,
    }
    print(f"\n{'defense':<8} {'clean':>7} {'PGD':>7} {'train s':>8}")
    for row in rows:
        print(
            f"{row['defense']:<8} {row['clean_accuracy']:>7.3f} {row['pgd_accuracy']:>7.3f} "
            f"{row['train_seconds']:>8.0f}"
        )
    training.write_text_atomically(FLAGS.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
