r"""One accelerator check in under 8 minutes, written as ONE JSON (run by device_check.sh).

  bash benchmarks/device_check.sh                                  # on a machine with a GPU
  DEVICE_CHECK_SMOKE=1 bash benchmarks/device_check.sh /tmp/dc.json  # tiny sizes, any machine

What it measures, in this order (the most wanted first, so a run cut short still has them):

  train/<defense>/<variant>  images/s of the Trainer's train step (Adv-BNN: PGD-10 with a fresh
                             weight draw per step, then the update; ``adv``: the same on ordinary
                             layers), VGG16, full width, global batch 128, on synthetic CIFAR-10
                             shaped data through the real input pipeline, for the variants
                             float32, mixed_float16 and jit (float32 with ``jit_compile``), and
                             mixed_float16_jit; with the projected seconds of one 50,000-image
                             Adv-BNN epoch (50,000 / images/s; the per-epoch evaluation excluded)
                             and the GPU's peak memory during the piece (bytes);
  eval/<variant>             images/s of the evaluation step: PGD-20 (fresh draw per step) and a
                             10-draw ensemble prediction (eq. 18);
  mixed_precision_run        a short mixed_float16 Adv-BNN run: ``mixed_run_steps`` more steps
                             of the mixed_float16 trainer timed above (its second epoch's
                             batches), each step's loss recorded and asserted finite.

Every piece has a time budget (``--budget_scale`` scales them all) and the whole run a deadline
(``--deadline_s``): a piece that cannot start in time is recorded as skipped. The JSON is
rewritten (atomically) after every piece, so a run killed by the outer timeout still leaves what
it measured, with ``"complete": false``. Without a GPU the run is marked ``"device": "no GPU"``
and, unless in smoke mode, times only the float32 variants (half precision and XLA on CPU say
nothing about a GPU). Smoke mode (``DEVICE_CHECK_SMOKE=1`` or ``--smoke``): width 0.125, batch 8,
PGD-2 / PGD-2, 2 draws, a few steps, every variant: it checks that every code path runs.

Exit status: 0 when every piece that ran succeeded and the mixed-precision losses were finite;
1 otherwise (the JSON says which piece failed and why).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfp_advbnn import attacks, data, models, training  # noqa: E402
from tfp_advbnn.data.pipeline import Split  # noqa: E402

SMOKE = os.environ.get("DEVICE_CHECK_SMOKE", "") not in ("", "0")
CIFAR10_TRAIN = 50_000
# name -> (precision, jit_compile)
VARIANTS = {
    "float32": ("float32", False),
    "mixed_float16": ("mixed_float16", False),
    "jit": ("float32", True),
    "mixed_float16_jit": ("mixed_float16", True),
}

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", SMOKE, "Tiny sizes and few steps (default from DEVICE_CHECK_SMOKE).")
flags.DEFINE_string("output", "benchmarks/results/device_check.json", "The JSON written.")
flags.DEFINE_float("width_multiplier", None, "Conv width multiplier (default 1; smoke 0.125).")
flags.DEFINE_integer("batch_size", None, "Global batch (default 128; smoke 8).")
flags.DEFINE_integer("train_pgd_steps", None, "PGD steps in training (default 10; smoke 2).")
flags.DEFINE_integer("eval_pgd_steps", None, "PGD steps of the eval step (default 20; smoke 2).")
flags.DEFINE_integer("eval_num_samples", None, "Ensemble draws of the eval step (10; smoke 2).")
flags.DEFINE_integer("mixed_run_steps", None, "Steps of the mixed-precision run (40; smoke 4).")
flags.DEFINE_float("deadline_s", 420.0, "No piece starts after this many seconds.")
flags.DEFINE_float("budget_scale", 1.0, "Multiplies every piece's timing budget.")

# The synthetic training set holds _TRAIN_BATCHES batches (one epoch, not repeated): more than
# the warm-up and the most timed steps of any piece.
_TRAIN_BATCHES = 64
_MAX_TIMED_STEPS = 50
# (piece, seconds of timing budget after the warm-up, the least time left to start it)
_TRAIN_PLAN = (
    ("adv_bnn", "float32", 20, 60),
    ("adv_bnn", "mixed_float16", 20, 60),
    ("adv", "float32", 12, 40),
    ("adv", "mixed_float16", 12, 40),
    ("adv_bnn", "jit", 20, 90),
    ("adv", "jit", 12, 70),
    ("adv_bnn", "mixed_float16_jit", 20, 90),
)


def sizes() -> dict:
    """The run's sizes: the flags where given, else the full or the smoke defaults."""
    defaults = dict(
        width_multiplier=(0.125, 1.0),
        batch_size=(8, 128),
        train_pgd_steps=(2, 10),
        eval_pgd_steps=(2, 20),
        eval_num_samples=(2, 10),
        mixed_run_steps=(4, 40),
    )
    chosen = {}
    for name, (smoke, full) in defaults.items():
        value = getattr(FLAGS, name)
        chosen[name] = value if value is not None else (smoke if FLAGS.smoke else full)
    return chosen


def synthetic_data(num_train: int, num_test: int) -> data.ImageData:
    """Random CIFAR-10-shaped uint8 images and labels behind the real input pipeline."""
    rng = np.random.default_rng(0)

    def split(n):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        return Split(labels=rng.integers(0, 10, size=n).astype(np.int32), images=images)

    spec = data.DataSpec(
        name="cifar10",
        num_classes=10,
        image_shape=(32, 32, 3),
        num_train=num_train,
        num_test=num_test,
        num_validation=0,
        class_names=tuple(str(i) for i in range(10)),
        augmentation="crop_flip",
    )
    return data.ImageData(spec, split(num_train), split(0), split(num_test))


def environment() -> dict:
    """What this machine and Python have: versions, devices, the GPU's name and capability."""

    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    return {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_probability": version("tensorflow-probability"),
        "tf_keras": version("tf-keras"),
        "tfp_advbnn_installed": version("tfp-advbnn") or version("tfp_advbnn"),
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "gpus": [
            {"name": gpu.name, **{k: str(v) for k, v in detail.items()}}
            for gpu, detail in zip(gpus, details, strict=True)
        ],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def reset_peak_memory(gpu: bool):
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory(gpu: bool):
    """The GPU's peak allocated bytes since the last reset, or None without a GPU."""
    if not gpu:
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def make_trainer(defense: str, variant: str, size: dict, image_data):
    precision, jit = VARIANTS[variant]
    config = training.TrainConfig.from_flat(
        model_dir="/tmp/device-check-unused",
        model="vgg16",
        defense=defense,
        width_multiplier=size["width_multiplier"],
        batch_size=size["batch_size"],
        train_pgd_steps=size["train_pgd_steps"],
        eval_num_samples=size["eval_num_samples"],
        precision=precision,
        jit_compile=jit,
        epochs=1,
    )
    return training.Trainer(config, image_data=image_data)


def timed_steps(step, budget_s: float, min_steps: int = 2, max_steps: int = _MAX_TIMED_STEPS):
    """Calls ``step`` once to compile, then until ``budget_s`` is spent (at least ``min_steps``).

    Returns the compile (first call) seconds, the timed steps and their median and mean
    seconds per step."""
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    seconds = []
    begin = time.perf_counter()
    while len(seconds) < min_steps or (
        time.perf_counter() - begin < budget_s and len(seconds) < max_steps
    ):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {
        "first_call_s": compile_s,
        "timed_steps": len(seconds),
        "median_step_s": float(np.median(seconds)),
        "mean_step_s": float(np.mean(seconds)),
    }


def train_piece(defense, variant, budget_s, size, image_data, gpu) -> dict:
    trainer = make_trainer(defense, variant, size, image_data)
    iterator = trainer.task.train_iterator(0)
    faults = []

    def step():
        faults.append(int(trainer.task.train_step(iterator)))
        float(trainer.task.train_loss.result())

    reset_peak_memory(gpu)
    timing = timed_steps(step, budget_s)
    images_per_second = size["batch_size"] / timing["median_step_s"]
    result = {
        **timing,
        "images_per_second": images_per_second,
        "nonfinite_steps": sum(faults),
        "peak_memory_bytes": peak_memory(gpu),
    }
    if defense == "adv_bnn":
        # One epoch of 50,000 images at this step's rate (the per-epoch evaluation excluded).
        result["projected_cifar10_epoch_s"] = CIFAR10_TRAIN / images_per_second
    return result, trainer


def eval_piece(trainer, budget_s, size, image_data, gpu) -> dict:
    """The evaluation step on ``trainer``'s model: PGD-``eval_pgd_steps`` at 8/255 (one draw per
    step), then the ``eval_num_samples``-draw ensemble."""
    model = trainer.model
    images, labels = next(iter(image_data.test_dataset(batch_size=size["batch_size"])))
    steps = size["eval_pgd_steps"]

    @tf.function
    def evaluate(x, y):
        predict = lambda z: tf.cast(model(z, training=False), tf.float32)  # noqa: E731
        adversarial = attacks.pgd(
            predict,
            x,
            y,
            eps=8.0 / 255.0,
            step_size=attacks.default_step_size(8.0 / 255.0, steps),
            num_steps=steps,
        )
        return models.ensemble_probabilities(predict, adversarial, size["eval_num_samples"])

    reset_peak_memory(gpu)
    timing = timed_steps(lambda: evaluate(images, labels).numpy(), budget_s)
    return {
        **timing,
        "images_per_second": size["batch_size"] / timing["median_step_s"],
        "peak_memory_bytes": peak_memory(gpu),
    }


def mixed_precision_run(trainer, budget_s, size, gpu) -> dict:
    """``mixed_run_steps`` more train steps of the mixed_float16 Adv-BNN ``trainer`` (the one
    the throughput piece trained, so no second compile), each step's loss recorded; asserts
    that every loss is finite and no step was a fault."""
    task = trainer.task
    iterator = task.train_iterator(1)
    losses, faults = [], 0
    reset_peak_memory(gpu)
    begin = time.perf_counter()
    for _ in range(size["mixed_run_steps"]):
        task.train_loss.reset_state()
        faults += int(task.train_step(iterator))
        losses.append(float(task.train_loss.result()))
        if time.perf_counter() - begin > budget_s:
            break
    result = {
        "steps": len(losses),
        "seconds": time.perf_counter() - begin,
        "losses": losses,
        "nonfinite_steps": faults,
        "loss_scale": float(trainer.optimizer.loss_scale),
        "peak_memory_bytes": peak_memory(gpu),
    }
    result["finite"] = bool(np.all(np.isfinite(losses))) and faults == 0
    assert result["finite"], f"non-finite mixed-precision losses: {losses} ({faults} faults)"
    return result


class Report:
    """The JSON being built, rewritten atomically after every piece."""

    def __init__(self, path: str, header: dict):
        self.path = path
        self.result = {**header, "pieces": {}, "complete": False}
        self.ok = True
        self.write()

    def write(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        text = json.dumps(self.result, indent=2, default=str) + "\n"
        training.write_text_atomically(self.path, text)

    def run(self, name: str, fn, min_left_s: float, deadline: float):
        """Runs ``fn()`` as piece ``name`` unless fewer than ``min_left_s`` seconds remain."""
        left = deadline - time.perf_counter()
        if left < min_left_s:
            self.result["pieces"][name] = {"skipped": f"out of time ({left:.0f} s left)"}
            print(f"{name}: skipped, {left:.0f} s left", flush=True)
            self.write()
            return None
        start = time.perf_counter()
        try:
            value, extra = fn()
        except Exception as error:  # noqa: BLE001  (recorded; the other pieces still run)
            self.ok = False
            value, extra = {"error": f"{type(error).__name__}: {error}"}, None
            traceback.print_exc()
        value["wall_s"] = time.perf_counter() - start
        self.result["pieces"][name] = value
        print(f"{name}: {json.dumps(value, default=str)[:400]}", flush=True)
        self.write()
        return extra


def main(argv):
    del argv
    begin = time.perf_counter()
    deadline = begin + FLAGS.deadline_s
    size = sizes()
    env = environment()
    gpu = bool(env["gpus"])
    scale = FLAGS.budget_scale * (0.1 if FLAGS.smoke else 1.0)
    report = Report(
        FLAGS.output,
        {
            "device": env["gpus"][0].get("device_name", "GPU") if gpu else "no GPU",
            "smoke": FLAGS.smoke,
            "sizes": {**size, "model": "vgg16", "image_size": 32},
            "environment": env,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    image_data = synthetic_data(size["batch_size"] * _TRAIN_BATCHES, size["batch_size"] * 2)
    plan = [
        row for row in _TRAIN_PLAN if gpu or FLAGS.smoke or VARIANTS[row[1]] == ("float32", False)
    ]
    if not gpu and not FLAGS.smoke:
        report.result["not_measured"] = "half precision and XLA: no GPU"
    eval_models = {}
    for defense, variant, budget, min_left in plan:

        def piece(defense=defense, variant=variant, budget=budget):
            return train_piece(defense, variant, budget * scale, size, image_data, gpu)

        trainer = report.run(f"train/{defense}/{variant}", piece, min_left * scale, deadline)
        if defense == "adv_bnn" and variant in ("float32", "mixed_float16") and trainer:
            eval_models[variant] = trainer
        trainer = None  # frees the model (and its GPU memory) before the next piece
        if defense == "adv_bnn" and variant == "mixed_float16":
            # The eval steps and the finite-loss run come before the slower-compiling variants.
            for name, held in eval_models.items():
                report.run(
                    f"eval/{name}",
                    lambda t=held: (eval_piece(t, 15 * scale, size, image_data, gpu), None),
                    40 * scale,
                    deadline,
                )
            if "mixed_float16" in eval_models:
                report.run(
                    "mixed_precision_run",
                    lambda t=eval_models["mixed_float16"]: (
                        mixed_precision_run(t, 30 * scale, size, gpu),
                        None,
                    ),
                    20 * scale,
                    deadline,
                )
            eval_models.clear()
        gc.collect()
    for name, held in eval_models.items():  # without a GPU: only float32 was trained
        report.run(
            f"eval/{name}",
            lambda t=held: (eval_piece(t, 15 * scale, size, image_data, gpu), None),
            40 * scale,
            deadline,
        )
    pieces = report.result["pieces"]
    epochs = {
        name: piece["projected_cifar10_epoch_s"]
        for name, piece in pieces.items()
        if "projected_cifar10_epoch_s" in piece
    }
    if epochs:
        best = min(epochs, key=epochs.get)
        report.result["best_adv_bnn_epoch"] = {"piece": best, "seconds": epochs[best]}
    peaks = [p["peak_memory_bytes"] for p in pieces.values() if p.get("peak_memory_bytes")]
    report.result["peak_memory_bytes"] = max(peaks) if peaks else None
    report.result["total_s"] = time.perf_counter() - begin
    report.result["complete"] = True
    report.result["ok"] = report.ok
    report.write()
    print(f"wrote {FLAGS.output} ({report.result['total_s']:.0f} s, ok={report.ok})")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
