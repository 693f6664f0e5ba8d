r"""The reproduction study: five defenses on the CIFAR-10 subset, the paper's evaluations.

  python benchmarks/reproduce.py                      # everything, about 1.5 h on 2 CPU cores
  python benchmarks/reproduce.py --stages=evaluate    # one stage (each needs the ones before)

Stages, in order (each step is skipped when its output exists, so a rerun resumes; an
interrupted training resumes from its checkpoint):

1. ``alpha``: a 3-trial random search of alpha (KL weight) for adv_bnn with ``trainers.tune``,
   on a validation split held out of the training images (the test images are never read).
2. ``train``: ``trainers.main`` for plain, bnn, adv, rse and adv_bnn with the same
   architecture, data, budget and seed; bnn and adv_bnn use the alpha found in stage 1.
3. ``evaluate``: ``trainers.evaluate`` per model: PGD-20 over the grid with single-draw
   gradients (the paper's protocol, with the gradient-masking checks), the same with 10-draw
   gradient averaging (the strong protocol; stochastic models only, since for a deterministic
   model every draw is the same), and APGD at the middle eps with 1-draw and (stochastic models)
   10-draw gradients.
4. ``transfer``: the 5 x 5 transfer matrix at the middle eps (Fig. 3).
5. ``ablations``: adv_bnn's accuracy against the ensemble size and the number of PGD steps
   (Fig. 4).
6. ``summary``: ``summary.json``, ``table.md`` and the accuracy-vs-eps figures of both protocols
   (Fig. 2) in --results_dir.

Every subprocess command is printed before it runs, so any row can be rerun by hand. Model
directories go to --work_dir (not committed: checkpoints and SavedModels); the reports and
figures go to --results_dir.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFENSES = ("plain", "bnn", "adv", "rse", "adv_bnn")
STOCHASTIC = ("bnn", "rse", "adv_bnn")
STAGES = ("alpha", "train", "evaluate", "transfer", "ablations", "summary")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin"),
    "CIFAR-10 directory (the subset).",
)
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_reproduce", "Model directories go here.")
flags.DEFINE_string("results_dir", os.path.join(REPO, "docs", "results"), "Reports go here.")
flags.DEFINE_list("stages", list(STAGES), "Stages to run, in order.")
flags.DEFINE_string("model", "vgg16", "Architecture.")
flags.DEFINE_float("width_multiplier", 0.25, "Conv width multiplier.")
flags.DEFINE_integer("epochs", 8, "Training epochs per defense (the staged schedule scales).")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_float("init_s", 0.01, "Initial posterior std of bnn and adv_bnn.")
flags.DEFINE_list("alpha_range", ["0.002", "0.2"], "Log-uniform range of the alpha search.")
flags.DEFINE_integer("alpha_trials", 3, "Trials of the alpha search.")
flags.DEFINE_integer("alpha_epochs", 2, "Epochs per alpha trial.")
flags.DEFINE_list("eps_grid", ["0", "0.015", "0.035", "0.055", "0.07"], "Evaluation radii.")
flags.DEFINE_float("middle_eps", 0.035, "Radius of APGD, transfer and the ablations.")
flags.DEFINE_integer("eval_examples", 500, "Test images of the PGD sweeps and APGD.")
flags.DEFINE_integer("eot_examples", 200, "Test images of the 10-draw-gradient sweeps.")
flags.DEFINE_integer("check_examples", 200, "Test images of the gradient-masking checks.")
flags.DEFINE_integer("transfer_examples", 300, "Test images of the transfer matrix.")
flags.DEFINE_integer("ablation_examples", 200, "Test images of the ensemble-size sweep.")
flags.DEFINE_integer("steps_examples", 100, "Test images of the PGD-steps sweep.")
flags.DEFINE_integer("seed", 0, "Seed of training and evaluation.")


class Study:
    """Runs the stages as subprocesses of the trainers and keeps a log of the commands."""

    def __init__(self):
        self.work_dir = FLAGS.work_dir
        self.results_dir = FLAGS.results_dir
        self.reports_dir = os.path.join(self.results_dir, "reports")
        os.makedirs(self.reports_dir, exist_ok=True)
        os.makedirs(self.work_dir, exist_ok=True)
        self.log_path = os.path.join(self.results_dir, "commands.log")
        self.timings_path = os.path.join(self.results_dir, "timings.json")

    def timings(self) -> dict:
        """Wall seconds of every finished step, keyed by its output path."""
        if not os.path.exists(self.timings_path):
            return {}
        with open(self.timings_path) as f:
            return json.load(f)

    def model_dir(self, defense: str) -> str:
        return os.path.join(self.work_dir, defense)

    def report(self, name: str) -> str:
        return os.path.join(self.reports_dir, name + ".json")

    def run(self, module: str, args: list[str], *, done_when: str) -> None:
        """Runs ``python -m module args`` unless ``done_when`` exists; exits on failure."""
        if os.path.exists(done_when):
            print(f"[skip] {os.path.relpath(done_when, REPO)} exists", flush=True)
            return
        command = [sys.executable, "-m", module, *args]
        text = shlex.join(["python", "-m", module, *args])
        print(f"[run] {text}", flush=True)
        started = time.time()
        result = subprocess.run(command, cwd=REPO, check=False)
        seconds = time.time() - started
        if result.returncode != 0:
            sys.exit(f"failed ({result.returncode}) after {seconds:.0f} s: {text}")
        with open(self.log_path, "a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {seconds:7.0f} s  {text}\n")
        timings = self.timings()
        timings[os.path.relpath(done_when, REPO)] = round(seconds, 1)
        with open(self.timings_path, "w") as f:
            json.dump(timings, f, indent=2)
        print(f"[done] {seconds:.0f} s", flush=True)

    def training_flags(self, defense: str) -> list[str]:
        return [
            "--dataset=cifar10",
            f"--data_dir={FLAGS.data_dir}",
            f"--model={FLAGS.model}",
            f"--width_multiplier={FLAGS.width_multiplier}",
            f"--defense={defense}",
            f"--batch_size={FLAGS.batch_size}",
            f"--seed={FLAGS.seed}",
        ]

    # ----- stages ---------------------------------------------------------------------------

    def alpha_dir(self) -> str:
        return os.path.join(self.work_dir, "alpha_search")

    def alpha(self) -> None:
        low, high = FLAGS.alpha_range
        tuner_dir = self.alpha_dir()
        self.run(
            "trainers.tune",
            [
                *self.training_flags("adv_bnn"),
                "--tuner=random",
                f"--max_trials={FLAGS.alpha_trials}",
                f"--epochs_per_trial={FLAGS.alpha_epochs}",
                "--validation_examples=500",
                "--objective=combined",
                "--eval_pgd_steps=10",
                f"--alpha_min={low}",
                f"--alpha_max={high}",
                "--fix_sigma_0=0.05",
                f"--fix_init_s={FLAGS.init_s}",
                "--fix_learning_rate=0.001",
                f"--tuner_dir={tuner_dir}",
            ],
            done_when=os.path.join(tuner_dir, "best_hyperparameters.json"),
        )
        for name in ("best_hyperparameters.json", "summary.md"):
            with open(os.path.join(tuner_dir, name)) as source:
                text = source.read()
            with open(os.path.join(self.results_dir, f"alpha_search_{name}"), "w") as target:
                target.write(text)

    def chosen_alpha(self) -> float:
        with open(os.path.join(self.alpha_dir(), "best_hyperparameters.json")) as f:
            best = json.load(f)
        values = best.get("hyperparameters", best)
        return float(values["alpha"])

    def train(self) -> None:
        alpha = self.chosen_alpha()
        for defense in DEFENSES:
            bayesian = defense in ("bnn", "adv_bnn")
            extra = [f"--alpha={alpha}", f"--init_s={FLAGS.init_s}"] if bayesian else []
            self.run(
                "trainers.main",
                [
                    *self.training_flags(defense),
                    *extra,
                    f"--epochs={FLAGS.epochs}",
                    f"--model_dir={self.model_dir(defense)}",
                ],
                done_when=os.path.join(self.model_dir(defense), "saved_model"),
            )

    def evaluate_flags(self, name: str, examples: int) -> list[str]:
        return [
            f"--max_examples={examples}",
            f"--check_examples={FLAGS.check_examples}",
            f"--seed={FLAGS.seed}",
            f"--output={self.report(name)}",
            f"--plot={os.path.join(self.results_dir, name + '.png')}",
        ]

    def evaluate(self) -> None:
        grid = "--eps_grid=" + ",".join(FLAGS.eps_grid)
        for defense in DEFENSES:
            model_dir = f"--model_dir={self.model_dir(defense)}"
            name = f"pgd20_eot1_{defense}"
            self.run(
                "trainers.evaluate",
                [model_dir, grid, *self.evaluate_flags(name, FLAGS.eval_examples)],
                done_when=self.report(name),
            )
            if defense in STOCHASTIC:
                name = f"pgd20_eot10_{defense}"
                self.run(
                    "trainers.evaluate",
                    [
                        model_dir,
                        grid,
                        "--num_eot_samples=10",
                        "--nochecks",
                        *self.evaluate_flags(name, FLAGS.eot_examples),
                    ],
                    done_when=self.report(name),
                )
            name = f"apgd_eot1_{defense}"
            self.run(
                "trainers.evaluate",
                [
                    model_dir,
                    "--attack=apgd",
                    f"--eps_grid=0,{FLAGS.middle_eps}",
                    *self.evaluate_flags(name, FLAGS.eval_examples),
                ],
                done_when=self.report(name),
            )
            if defense in STOCHASTIC:
                name = f"apgd_eot10_{defense}"
                self.run(
                    "trainers.evaluate",
                    [
                        model_dir,
                        "--attack=apgd",
                        "--num_eot_samples=10",
                        "--nochecks",
                        f"--eps_grid=0,{FLAGS.middle_eps}",
                        *self.evaluate_flags(name, FLAGS.eot_examples),
                    ],
                    done_when=self.report(name),
                )

    def transfer(self) -> None:
        name = "transfer"
        self.run(
            "trainers.evaluate",
            [
                "--mode=transfer",
                "--model_dirs=" + ",".join(self.model_dir(d) for d in DEFENSES),
                f"--sweep_eps={FLAGS.middle_eps}",
                *self.evaluate_flags(name, FLAGS.transfer_examples),
            ],
            done_when=self.report(name),
        )

    def ablations(self) -> None:
        model_dir = f"--model_dir={self.model_dir('adv_bnn')}"
        name = "ensemble_sweep_adv_bnn"
        self.run(
            "trainers.evaluate",
            [
                model_dir,
                "--mode=ensemble_sweep",
                "--sweep_eps=0.015,0.035,0.055",
                "--sweep_sizes=1,2,5,10,20",
                *self.evaluate_flags(name, FLAGS.ablation_examples),
            ],
            done_when=self.report(name),
        )
        name = "steps_sweep_adv_bnn"
        self.run(
            "trainers.evaluate",
            [
                model_dir,
                "--mode=steps_sweep",
                f"--sweep_eps={FLAGS.middle_eps}",
                "--sweep_steps=1,2,5,10,20,50,100,200,1000",
                *self.evaluate_flags(name, FLAGS.steps_examples),
            ],
            done_when=self.report(name),
        )

    def summary(self) -> None:
        from tfp_advbnn import evaluation, training

        def load(name):
            with open(self.report(name)) as f:
                return json.load(f)

        rows = []
        for defense in DEFENSES:
            eot1 = load(f"pgd20_eot1_{defense}")
            eot10 = load(f"pgd20_eot10_{defense}") if defense in STOCHASTIC else eot1
            apgd = load(f"apgd_eot1_{defense}")
            apgd10 = load(f"apgd_eot10_{defense}") if defense in STOCHASTIC else apgd
            with open(os.path.join(self.model_dir(defense), "metrics.jsonl")) as f:
                metrics = [json.loads(line) for line in f if line.strip()][-1]
            saved_model = os.path.join(self.model_dir(defense), "saved_model")
            rows.append(
                {
                    "defense": defense,
                    "label": eot1["label"],
                    "eps": eot1["eps"],
                    "accuracy_eot1": eot1["accuracy"],
                    "accuracy_eot10": eot10["accuracy"],
                    "eot10_examples": eot10["num_examples"],
                    "apgd_eps": apgd["eps"][-1],
                    "apgd_eot1_accuracy": apgd["accuracy"][-1],
                    "apgd_eot10_accuracy": apgd10["accuracy"][-1],
                    "pgd_eot1_at_apgd_eps": eot1["accuracy"][eot1["eps"].index(apgd["eps"][-1])],
                    "pgd_eot10_at_apgd_eps": eot10["accuracy"][eot10["eps"].index(apgd["eps"][-1])],
                    "checks_passed": {c["name"]: c["passed"] for c in eot1["checks"]},
                    "apgd_checks_passed": {c["name"]: c["passed"] for c in apgd["checks"]},
                    "train_seconds": self.timings().get(os.path.relpath(saved_model, REPO)),
                    "final_train_metrics": metrics,
                }
            )
        for protocol, key in (("eot1", "accuracy_eot1"), ("eot10", "accuracy_eot10")):
            report = {
                "mode": "compare",
                "attack": "pgd_linf",
                "norm": "linf",
                "pgd_steps": 20,
                "random_restarts": 0,
                "num_eot_samples": 1 if protocol == "eot1" else 10,
                "num_samples": 10,
                "models": [
                    {"label": r["label"], "eps": r["eps"], "accuracy": r[key]} for r in rows
                ],
            }
            evaluation.plot_report(report, os.path.join(self.results_dir, f"fig2_{protocol}.png"))
        summary = {
            "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
            "settings": {
                name: FLAGS[name].value
                for name in (
                    "model",
                    "width_multiplier",
                    "epochs",
                    "batch_size",
                    "init_s",
                    "eps_grid",
                    "middle_eps",
                    "eval_examples",
                    "eot_examples",
                    "check_examples",
                    "transfer_examples",
                    "ablation_examples",
                    "steps_examples",
                    "seed",
                )
            },
            "alpha": self.chosen_alpha(),
            "rows": rows,
        }
        training.write_text_atomically(
            os.path.join(self.results_dir, "summary.json"), json.dumps(summary, indent=2) + "\n"
        )
        training.write_text_atomically(
            os.path.join(self.results_dir, "table.md"), _table_markdown(rows)
        )
        print(_table_markdown(rows))


def _percent(values) -> str:
    return " | ".join(f"{100 * v:.1f}" for v in values)


def _table_markdown(rows: list[dict]) -> str:
    eps = rows[0]["eps"]
    header = "| defense | protocol | " + " | ".join(f"{e:g}" for e in eps) + " |"
    lines = [header, "|---|---|" + "---:|" * len(eps)]
    for row in rows:
        lines.append(f"| {row['label']} | PGD-20, 1-draw grad | {_percent(row['accuracy_eot1'])} |")
        if row["defense"] in STOCHASTIC:
            lines.append(
                f"| {row['label']} | PGD-20, 10-draw grad | {_percent(row['accuracy_eot10'])} |"
            )
    lines.append("")
    lines.append(
        f"| defense (eps {rows[0]['apgd_eps']:g}) | PGD-20, 1-draw | APGD-20, 1-draw | "
        "PGD-20, 10-draw | APGD-20, 10-draw |"
    )
    lines.append("|---|---:|---:|---:|---:|")
    for row in rows:
        values = [
            row[key]
            for key in (
                "pgd_eot1_at_apgd_eps",
                "apgd_eot1_accuracy",
                "pgd_eot10_at_apgd_eps",
                "apgd_eot10_accuracy",
            )
        ]
        lines.append(f"| {row['label']} | {_percent(values)} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = [s for s in FLAGS.stages if s not in STAGES]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    study = Study()
    started = time.time()
    for stage in STAGES:
        if stage in FLAGS.stages:
            print(f"=== stage {stage} ({time.time() - started:.0f} s so far)", flush=True)
            getattr(study, stage)()
    print(f"finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    app.run(main)
