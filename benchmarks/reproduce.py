r"""The reproduction study, second edition: nine models on the CIFAR-10 subset, two protocols.

  python benchmarks/reproduce.py                          # everything, about 2.5 h on 2 CPU cores
  python benchmarks/reproduce.py --stages=train           # one stage (each needs the ones before)
  python benchmarks/reproduce.py --models=plain,adv       # some models through the stages

The models (``MODELS``), all VGG16 at --width_multiplier, --epochs, batch --batch_size, on the
5,085 training images, with the training recipe's defaults (the optimizer, learning rate,
weight decay and initial posterior std of each defense); the Bayesian ones at alpha =
5,085 / 50,000, the KL weight alpha / N_train of the paper's alpha = 1 on the full training set:

- the five defenses at seed 0 (``plain``, ``bnn``, ``adv``, ``rse``, ``adv_bnn``);
- ``adv`` and ``adv_bnn`` at seed 1, for the seed-to-seed spread;
- ``adv_bnn`` with the reference's objective (``--kl_scope=classifier``: the classifier's KL
  alone), the KL ablation;
- ``adv_bnn`` trained with the single-step attack (``--train_attack=fgsm_rs``, Wong et al.),
  the fast-training row.

Stages, in order. Each step is skipped when its output exists, so a rerun after a kill resumes
(an interrupted training resumes from its checkpoint):

1. ``train``: ``trainers.main`` per model.
2. ``table1``: the paper's protocol (PGD-20, one weight draw per step, 10-draw ensemble) over
   --eps_grid on every test image, ``accuracy`` and ``robust_accuracy`` with 95 % intervals;
   the gradient-masking checks on --check_examples images for the seed-0 defenses.
3. ``adaptive``: the adaptive protocol (APGD-CE then APGD-DLR, 100 iterations, EOT 20 on a
   stochastic model, worst case per example) at --adaptive_eps on --adaptive_examples images,
   for every model trained adversarially or with noise, run as AutoAttack runs it
   (``--cascade``: a later attack or a larger radius attacks only the examples still robust);
   the Square check (black-box) at each radius on --square_examples images for the seed-0
   ``adv``, ``rse`` and ``adv_bnn``.
4. ``detect``: the uncertainty detection AUCs of clean vs PGD-20 images for ``bnn``, ``rse``
   and ``adv_bnn`` at --adaptive_eps.
5. ``summary``: ``summary.json``, ``tables.md`` and the figures in --results_dir, from the
   reports alone.

Every subprocess command is printed before it runs and logged with its wall time in
``commands.log``, so any row can be rerun by hand. Model directories go to --work_dir (not
committed: checkpoints and SavedModels); reports and figures go to --results_dir.
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

# name -> (defense, seed, extra trainers.main flags, what the row is for).
MODELS = {
    "plain": ("plain", 0, [], "No defense"),
    "bnn": ("bnn", 0, [], "BNN"),
    "adv": ("adv", 0, [], "Adv. training"),
    "rse": ("rse", 0, [], "RSE"),
    "adv_bnn": ("adv_bnn", 0, [], "Adv-BNN"),
    "adv_seed1": ("adv", 1, [], "Adv. training, seed 1"),
    "adv_bnn_seed1": ("adv_bnn", 1, [], "Adv-BNN, seed 1"),
    "adv_bnn_classifier_kl": (
        "adv_bnn",
        0,
        ["--kl_scope=classifier"],
        "Adv-BNN, classifier-only KL (the reference's objective)",
    ),
    "adv_bnn_fgsm_rs": (
        "adv_bnn",
        0,
        ["--train_attack=fgsm_rs"],
        "Adv-BNN, single-step training (FGSM-RS)",
    ),
}
BAYESIAN = ("bnn", "adv_bnn")
STOCHASTIC = ("bnn", "rse", "adv_bnn")
# Defenses whose robustness the adaptive protocol measures (the undefended models have none).
ROBUST = ("adv", "rse", "adv_bnn")
SQUARE_MODELS = ("adv", "rse", "adv_bnn")
CHECKED_MODELS = ("plain", "bnn", "adv", "rse", "adv_bnn")
DETECT_MODELS = ("bnn", "rse", "adv_bnn")
STAGES = ("train", "table1", "adaptive", "detect", "summary")
EIGHT_OVER_255 = 8 / 255

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO, "..", "shared", "data", "cifar-10-batches-bin"),
    "CIFAR-10 directory (the subset).",
)
flags.DEFINE_string("work_dir", "/tmp/tfp_advbnn_reproduce", "Model directories go here.")
flags.DEFINE_string("results_dir", os.path.join(REPO, "docs", "results"), "Reports go here.")
flags.DEFINE_list("stages", list(STAGES), "Stages to run, in order.")
flags.DEFINE_list("models", list(MODELS), "Models to take through the stages, in this order.")
flags.DEFINE_string("model", "vgg16", "Architecture.")
flags.DEFINE_float("width_multiplier", 0.25, "Conv width multiplier.")
flags.DEFINE_integer("epochs", 15, "Training epochs per model (the staged schedule scales).")
flags.DEFINE_integer("batch_size", 64, "Training batch size.")
flags.DEFINE_float("alpha", 5085 / 50000, "KL weight: the paper's alpha = 1 rescaled to N.")
flags.DEFINE_list("eps_grid", ["0", "0.015", "0.035", "0.055", "0.07"], "Table 1's radii.")
flags.DEFINE_list(
    "adaptive_eps", ["0", "0.035", repr(EIGHT_OVER_255)], "Radii of the adaptive protocol."
)
flags.DEFINE_integer("adaptive_examples", 500, "Test images of the adaptive protocol.")
flags.DEFINE_integer("square_examples", 50, "Test images of each Square check.")
flags.DEFINE_integer("check_examples", 200, "Test images of the gradient-masking checks.")
flags.DEFINE_integer("detect_examples", 500, "Test images of the detection AUCs.")


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
        self.models = list(FLAGS.models)

    def timings(self) -> dict:
        """Wall seconds of every finished step, keyed by its output path."""
        if not os.path.exists(self.timings_path):
            return {}
        with open(self.timings_path) as f:
            return json.load(f)

    def model_dir(self, name: str) -> str:
        return os.path.join(self.work_dir, name)

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

    def selected(self, names) -> list[str]:
        return [m for m in self.models if m in names]

    # ----- stages ---------------------------------------------------------------------------

    def train(self) -> None:
        for name in self.models:
            defense, seed, extra, _ = MODELS[name]
            alpha = [f"--alpha={FLAGS.alpha}"] if defense in BAYESIAN else []
            self.run(
                "trainers.main",
                [
                    "--dataset=cifar10",
                    f"--data_dir={FLAGS.data_dir}",
                    f"--model={FLAGS.model}",
                    f"--width_multiplier={FLAGS.width_multiplier}",
                    f"--defense={defense}",
                    f"--epochs={FLAGS.epochs}",
                    f"--batch_size={FLAGS.batch_size}",
                    f"--seed={seed}",
                    *alpha,
                    *extra,
                    f"--model_dir={self.model_dir(name)}",
                ],
                done_when=os.path.join(self.model_dir(name), "saved_model"),
            )

    def table1(self) -> None:
        for name in self.models:
            report = f"table1_{name}"
            checks = (
                [f"--check_examples={FLAGS.check_examples}"]
                if name in CHECKED_MODELS
                else ["--nochecks"]
            )
            self.run(
                "trainers.evaluate",
                [
                    f"--model_dir={self.model_dir(name)}",
                    "--protocol=paper",
                    "--eps_grid=" + ",".join(FLAGS.eps_grid),
                    *checks,
                    "--seed=0",
                    f"--output={self.report(report)}",
                    f"--plot={os.path.join(self.results_dir, report + '.png')}",
                ],
                done_when=self.report(report),
            )

    def adaptive(self) -> None:
        radii = [e for e in FLAGS.adaptive_eps if float(e) > 0]
        for name in self.models:
            if MODELS[name][0] not in ROBUST:
                continue
            report = f"adaptive_{name}"
            square = (
                [f"--square_examples={FLAGS.square_examples}", "--square_eps=" + ",".join(radii)]
                if name in SQUARE_MODELS
                else ["--square_examples=0"]
            )
            self.run(
                "trainers.evaluate",
                [
                    f"--model_dir={self.model_dir(name)}",
                    "--protocol=adaptive",
                    "--eps_grid=" + ",".join(FLAGS.adaptive_eps),
                    f"--max_examples={FLAGS.adaptive_examples}",
                    "--cascade",
                    "--nochecks",
                    *square,
                    "--seed=0",
                    f"--output={self.report(report)}",
                    f"--plot={os.path.join(self.results_dir, report + '.png')}",
                ],
                done_when=self.report(report),
            )

    def detect(self) -> None:
        radii = [e for e in FLAGS.adaptive_eps if float(e) > 0]
        for name in self.selected(DETECT_MODELS):
            report = f"detect_{name}"
            self.run(
                "trainers.evaluate",
                [
                    f"--model_dir={self.model_dir(name)}",
                    "--mode=detect",
                    "--sweep_eps=" + ",".join(radii),
                    f"--max_examples={FLAGS.detect_examples}",
                    "--seed=0",
                    f"--output={self.report(report)}",
                    f"--plot={os.path.join(self.results_dir, report + '.png')}",
                ],
                done_when=self.report(report),
            )

    def summary(self) -> None:
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        import reproduce_summary

        reproduce_summary.write(
            reports_dir=self.reports_dir,
            results_dir=self.results_dir,
            work_dir=self.work_dir,
            timings=self.timings(),
            models={name: MODELS[name] for name in self.models},
            settings={
                "command": "python benchmarks/reproduce.py " + " ".join(sys.argv[1:]),
                **{
                    name: FLAGS[name].value
                    for name in (
                        "model",
                        "width_multiplier",
                        "epochs",
                        "batch_size",
                        "alpha",
                        "eps_grid",
                        "adaptive_eps",
                        "adaptive_examples",
                        "square_examples",
                        "check_examples",
                        "detect_examples",
                    )
                },
            },
        )


def main(argv):
    del argv
    unknown = [s for s in FLAGS.stages if s not in STAGES]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; choose from {list(STAGES)}")
    unknown = [m for m in FLAGS.models if m not in MODELS]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    study = Study()
    started = time.time()
    for stage in STAGES:
        if stage in FLAGS.stages:
            print(f"=== stage {stage} ({time.time() - started:.0f} s so far)", flush=True)
            getattr(study, stage)()
    print(f"finished in {time.time() - started:.0f} s")


if __name__ == "__main__":
    app.run(main)
