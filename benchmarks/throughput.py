r"""Throughput of the Adv-BNN train and evaluation steps, beside the machine's matmul ceiling.

  python benchmarks/throughput.py                       # VGG16, batch 32, 32x32 (the target)
  python benchmarks/throughput.py --width_multiplier=0.25 --repeats=2 --output=/tmp/t.json

Measures images/s of:
  train: one Adv-BNN train step (PGD-10 with a fresh weight draw per step, then the update);
  eval:  one evaluation step (PGD-20, then a 10-draw ensemble prediction).
and reports the achieved GFLOP/s (conv and dense multiply-adds, counted analytically) next to
the float32 matmul GFLOP/s measured in the same run. Prints a table and writes JSON.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfp_advbnn import attacks, data, models, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "vgg16", "Architecture.")
flags.DEFINE_string("defense", "adv_bnn", "Defense of the train step.")
flags.DEFINE_float("width_multiplier", 1.0, "Conv width multiplier.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("image_size", 32, "Image side.")
flags.DEFINE_integer("train_pgd_steps", 10, "PGD steps of the train step.")
flags.DEFINE_integer("eval_pgd_steps", 20, "PGD steps of the eval step.")
flags.DEFINE_integer("eval_num_samples", 10, "Ensemble draws of the eval step.")
flags.DEFINE_integer("repeats", 5, "Timed steps (after one warm-up step).")
flags.DEFINE_string("strategy", "default", "Distribution strategy.")
flags.DEFINE_string("precision", "float32", "float32 | mixed_float16 | mixed_bfloat16.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_string("output", "benchmarks/throughput.json", "JSON output path.")
flags.DEFINE_bool(
    "scaling",
    False,
    "Also time the train step on 1 replica and on 2 (MirroredStrategy), as a scaling table.",
)
flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices (for --scaling without GPUs)."
)


def forward_flops(model) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass through convs and denses."""
    total = 0.0
    for layer in model.layers:
        shape = layer.output.shape
        if hasattr(layer, "filters") and hasattr(layer, "kernel_size"):
            input_channels = layer.input.shape[-1]
            kernel = int(np.prod(layer.kernel_size))
            total += 2.0 * shape[1] * shape[2] * kernel * input_channels * layer.filters
        elif hasattr(layer, "units"):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        result = product(a, b)
    result.numpy()
    return 2.0 * size**3 * repeats / (time.perf_counter() - start) / 1e9


class _SyntheticData:
    """Random images in the ImageData interface, so the benchmark needs no files."""

    def __init__(self, num_examples: int, image_size: int):
        rng = np.random.default_rng(0)
        self.images = rng.uniform(size=(num_examples, image_size, image_size, 3)).astype(np.float32)
        self.labels = rng.integers(0, 10, size=num_examples).astype(np.int32)
        self.spec = data.DataSpec(
            name="synthetic",
            num_classes=10,
            image_shape=(image_size, image_size, 3),
            num_train=num_examples,
            num_test=num_examples,
            num_validation=0,
            class_names=tuple(str(i) for i in range(10)),
            augmentation="crop_flip",
        )

    def train_dataset(self, *, batch_size, epoch=0, seed=0, input_context=None, **kwargs):
        del epoch, seed, kwargs
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
        return dataset.repeat().batch(batch_size, drop_remainder=True).prefetch(2)


def time_steps(step, repeats: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def make_trainer(strategy: str, synthetic):
    config = training.TrainConfig.from_flat(
        model_dir="/tmp/throughput-unused",
        model=FLAGS.model,
        defense=FLAGS.defense,
        width_multiplier=FLAGS.width_multiplier,
        batch_size=FLAGS.batch_size,
        train_pgd_steps=FLAGS.train_pgd_steps,
        eval_num_samples=FLAGS.eval_num_samples,
        strategy=strategy,
        precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile,
        epochs=1,
    )
    trainer = training.Trainer(config, image_data=synthetic)
    iterator = trainer.task.train_iterator(0)

    def train_step():
        trainer.task.train_step(iterator)
        float(trainer.task.train_loss.result())

    return trainer, train_step


def scaling_rows(synthetic) -> list[dict]:
    """Train-step images/s on 1 replica and on every device (MirroredStrategy)."""
    rows = []
    for strategy in ("default", "mirrored"):
        trainer, step = make_trainer(strategy, synthetic)
        seconds = time_steps(step, FLAGS.repeats)
        rows.append(
            {
                "replicas": trainer.strategy.num_replicas_in_sync,
                "images_per_second": FLAGS.batch_size / seconds,
            }
        )
    return rows


def main(argv):
    del argv
    if FLAGS.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.logical_cpus
        )
    ceiling = matmul_gflops()
    synthetic = _SyntheticData(FLAGS.batch_size * 4, FLAGS.image_size)
    trainer, train_step = make_trainer(FLAGS.strategy, synthetic)

    images = tf.constant(synthetic.images[: FLAGS.batch_size])
    labels = tf.constant(synthetic.labels[: FLAGS.batch_size])
    model = trainer.model

    @tf.function
    def eval_fn(x, y):
        predict = lambda z: tf.cast(model(z, training=False), tf.float32)  # noqa: E731
        adversarial = attacks.pgd(
            predict,
            x,
            y,
            eps=8.0 / 255.0,
            step_size=2.0 / 255.0,
            num_steps=FLAGS.eval_pgd_steps,
        )
        return models.ensemble_probabilities(predict, adversarial, FLAGS.eval_num_samples)

    def eval_step():
        eval_fn(images, labels).numpy()

    flops = forward_flops(model)
    k_train, k_eval = FLAGS.train_pgd_steps, FLAGS.eval_pgd_steps
    # A PGD step is a forward and an input-gradient backward (~2 forwards); the update is a
    # forward and a backward for inputs and weights (~3 forwards); a draw is one forward.
    train_flops = (2 * k_train + 3) * flops
    eval_flops = (2 * k_eval + FLAGS.eval_num_samples) * flops
    rows = []
    for name, step, per_image in (
        ("train", train_step, train_flops),
        ("eval", eval_step, eval_flops),
    ):
        seconds = time_steps(step, FLAGS.repeats)
        images_per_second = FLAGS.batch_size / seconds
        rows.append(
            {
                "step": name,
                "seconds_per_step": seconds,
                "images_per_second": images_per_second,
                "gflops_per_image": per_image / 1e9,
                "achieved_gflops": images_per_second * per_image / 1e9,
                "arithmetic_limit_images_per_second": ceiling * 1e9 / per_image,
            }
        )
    result = {
        "model": FLAGS.model,
        "defense": FLAGS.defense,
        "width_multiplier": FLAGS.width_multiplier,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "strategy": FLAGS.strategy,
        "replicas": trainer.strategy.num_replicas_in_sync,
        "precision": FLAGS.precision,
        "jit_compile": FLAGS.jit_compile,
        "matmul_ceiling_gflops": ceiling,
        "forward_gflops_per_image": flops / 1e9,
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "rows": rows,
    }
    print(
        f"{FLAGS.model} x{FLAGS.width_multiplier} {FLAGS.defense}, batch {FLAGS.batch_size}, "
        f"{FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.precision}, "
        f"{result['replicas']} replica(s); matmul ceiling {ceiling:.1f} GFLOP/s"
    )
    print(
        f"{'step':<6} {'img/s':>8} {'s/step':>8} {'GFLOP/img':>10} {'GFLOP/s':>9} "
        f"{'limit img/s':>12}"
    )
    for row in rows:
        print(
            f"{row['step']:<6} {row['images_per_second']:>8.2f} {row['seconds_per_step']:>8.3f} "
            f"{row['gflops_per_image']:>10.2f} {row['achieved_gflops']:>9.1f} "
            f"{row['arithmetic_limit_images_per_second']:>12.2f}"
        )
    if FLAGS.scaling:
        result["scaling"] = scaling_rows(synthetic)
        print(f"\nscaling (train step, global batch {FLAGS.batch_size})")
        print(f"{'replicas':>8} {'img/s':>8} {'speed-up':>9}")
        for row in result["scaling"]:
            speedup = row["images_per_second"] / result["scaling"][0]["images_per_second"]
            print(f"{row['replicas']:>8} {row['images_per_second']:>8.2f} {speedup:>9.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    training.write_text_atomically(FLAGS.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
