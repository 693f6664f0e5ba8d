r"""The training-recipe ablation: what makes the all-layer KL objective train at alpha = 1.

  python benchmarks/recipe.py                               # every row, ../shared/data subset
  python benchmarks/recipe.py --rows=bnn_reference,plain_sgd --work_dir=/tmp/recipe

Each row is one ``trainers.main`` run on the CIFAR-10 subset (5,085 training images) followed by
one ``trainers.evaluate`` run (L-inf PGD-20 at --eps, one fresh weight draw per step, 10-draw
ensemble, on the first --eval_examples test images). The user's first command,
``--dataset=cifar10 --alpha=1.0`` on 50,000 images, is emulated by alpha = 5085 / 50000 = 0.1017,
which gives the same KL weight alpha / N_train. Finished rows are skipped, so rerunning resumes.
Prints a table (clean accuracy on all 1,017 test images, PGD accuracy, final cross-entropy and
KL terms of the loss, wall time) and writes JSON.
"""

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin"),
    "CIFAR-10 directory (the subset).",
)
flags.DEFINE_list("rows", None, "Rows to run (default: all, in table order).")
flags.DEFINE_integer("epochs", 8, "Epochs of every row.")
flags.DEFINE_integer("batch_size", 64, "Global batch size of every row.")
flags.DEFINE_float("alpha", 5085 / 50000, "KL weight: alpha 1 at N = 50,000, rescaled to N.")
flags.DEFINE_float("eps", 8.0 / 255.0, "Evaluation L-inf radius in [0, 1] pixel scale.")
flags.DEFINE_integer(
    "eval_examples", 200, "Test images attacked by the evaluation of non-adversarial rows."
)
flags.DEFINE_integer(
    "adversarial_eval_examples", 500, "Test images attacked for rows trained adversarially."
)
flags.DEFINE_integer("seed", 0, "Seed of every row.")
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_recipe", "Where the runs go.")
flags.DEFINE_string("output", os.path.join(REPO, "benchmarks", "results", "recipe.json"), "JSON.")

# name -> (what the row tests, trainers.main flags). Every row trains VGG16 at full width unless
# its flags say otherwise; Bayesian rows get the emulated alpha. Each row names its optimizer,
# learning rate and initial posterior std, so it does not depend on the current defaults.
SGD = ["--optimizer=sgd", "--learning_rate=0.01"]
ROWS = {
    "plain": ("plain: SGD 0.01, momentum 0.9, L2 5e-4", ["--defense=plain", *SGD]),
    "bnn_reference": (
        "bnn: Adam 0.01, init_s = sigma_0 (the reference's)",
        ["--defense=bnn", "--optimizer=adam", "--learning_rate=0.01", "--init_s=0.05"],
    ),
    "bnn_sgd": (
        "bnn: SGD 0.01, momentum 0.9, init_s 0.01",
        ["--defense=bnn", *SGD, "--init_s=0.01"],
    ),
    "bnn_adam_1e3": (
        "bnn: Adam 1e-3, init_s 0.002",
        ["--defense=bnn", "--optimizer=adam", "--learning_rate=0.001", "--init_s=0.002"],
    ),
    "bnn_adam_1e4": (
        "bnn: Adam 1e-4, init_s 0.002 (the recipe)",
        ["--defense=bnn", "--optimizer=adam", "--learning_rate=0.0001", "--init_s=0.002"],
    ),
    "bnn_adam_1e4_classifier_kl": (
        "bnn: Adam 1e-4, init_s 0.002, classifier-only KL (the reference's objective)",
        [
            "--defense=bnn",
            "--optimizer=adam",
            "--learning_rate=0.0001",
            "--init_s=0.002",
            "--kl_scope=classifier",
        ],
    ),
    "adv_x05": (
        "adv, width 0.5: SGD 0.01, momentum 0.9, L2 5e-4",
        ["--defense=adv", "--width_multiplier=0.5", *SGD],
    ),
    "adv_bnn_x05": (
        "adv_bnn, width 0.5: Adam 1e-3, init_s 0.002",
        [
            "--defense=adv_bnn",
            "--width_multiplier=0.5",
            "--optimizer=adam",
            "--learning_rate=0.001",
            "--init_s=0.002",
        ],
    ),
}


def run(command: list[str], log_path: str) -> float:
    """Runs ``command`` in the repository, appending its output to ``log_path``; returns seconds."""
    started = time.time()
    print(f"[run] {shlex.join(command)}", flush=True)
    with open(log_path, "a") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}), see {log_path}: {shlex.join(command)}")
    return time.time() - started


def train_flags(name: str, model_dir: str) -> list[str]:
    _, extra = ROWS[name]
    bayesian = any(flag in extra for flag in ("--defense=bnn", "--defense=adv_bnn"))
    return [
        "--dataset=cifar10",
        f"--data_dir={FLAGS.data_dir}",
        "--model=vgg16",
        "--width_multiplier=1.0",
        f"--epochs={FLAGS.epochs}",
        f"--batch_size={FLAGS.batch_size}",
        *([f"--alpha={FLAGS.alpha}"] if bayesian else []),
        "--eval_num_samples=4",
        f"--seed={FLAGS.seed}",
        f"--model_dir={model_dir}",
        *extra,
    ]


def run_row(name: str) -> dict:
    model_dir = os.path.join(FLAGS.work_dir, name)
    report_path = os.path.join(model_dir, "pgd.json")
    row_path = os.path.join(model_dir, "row.json")
    if os.path.exists(row_path):
        with open(row_path) as f:
            return json.load(f)
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, "log.txt")
    train_command = [sys.executable, "-m", "trainers.main", *train_flags(name, model_dir)]
    train_seconds = run(train_command, log_path)
    adversarial = any(flag in ROWS[name][1] for flag in ("--defense=adv", "--defense=adv_bnn"))
    examples = FLAGS.adversarial_eval_examples if adversarial else FLAGS.eval_examples
    eval_command = [
        sys.executable,
        "-m",
        "trainers.evaluate",
        f"--model_dir={model_dir}",
        f"--eps_grid={FLAGS.eps}",
        "--pgd_steps=20",
        "--num_samples=10",
        f"--max_examples={examples}",
        "--checks=false",
        f"--seed={FLAGS.seed}",
        f"--output={report_path}",
    ]
    eval_seconds = run(eval_command, log_path)
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    with open(report_path) as f:
        report = json.load(f)
    robust = float(report["accuracy"][-1])
    n = int(report["num_examples"])
    row = {
        "row": name,
        "setting": ROWS[name][0],
        "train_command": shlex.join(["python", "-m", "trainers.main", *train_command[3:]]),
        "eval_command": shlex.join(["python", "-m", "trainers.evaluate", *eval_command[3:]]),
        "test_accuracy": last["test_accuracy"],
        "test_examples": 1017,
        "robust_accuracy": robust,
        "robust_standard_error": math.sqrt(robust * (1 - robust) / n),
        "robust_examples": n,
        "eps": FLAGS.eps,
        "train_cross_entropy": last.get("train_cross_entropy"),
        "train_kl_term": last.get("train_kl_term"),
        "kl": last.get("kl"),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
    }
    with open(row_path, "w") as f:
        json.dump(row, f, indent=2)
    return row


def main(argv):
    del argv
    names = FLAGS.rows or list(ROWS)
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise app.UsageError(f"--rows: unknown rows {unknown}; known: {list(ROWS)}")
    rows = []
    for name in names:
        rows.append(run_row(name))
        print(json.dumps(rows[-1]), flush=True)
    columns = ["row", "setting", "epochs", "clean", "PGD-20 at 8/255", "CE term", "KL term"]
    print("| " + " | ".join([*columns, "KL (nats)", "train s"]) + " |")
    print("|" + "---|" * 9)
    for row in rows:
        epochs = re.search(r"--epochs=(\d+)", row["train_command"]).group(1)
        print(
            f"| {row['row']} | {ROWS[row['row']][0]} | {epochs} | {row['test_accuracy']:.3f} | "
            f"{row['robust_accuracy']:.3f} +- {row['robust_standard_error']:.3f} "
            f"(n={row['robust_examples']}) | {row['train_cross_entropy']:.3f} | "
            f"{row['train_kl_term']:.3f} | {row['kl']:.3g} | {row['train_seconds']:.0f} |"
        )
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump({"epochs": FLAGS.epochs, "alpha": FLAGS.alpha, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
