r"""Where the time of one Adv-BNN train step goes: a side-by-side breakdown into timed pieces.

  python benchmarks/profile_step.py              # VGG16, batch 32, as throughput.py measures
  python benchmarks/profile_step.py --width_multiplier=0.25 --rounds=3 --output=/tmp/p.json

The train step of ``benchmarks/throughput.py`` (PGD-10 with a fresh weight draw per step, then
the update) runs at about 70 % of the float32 matmul ceiling. This benchmark times its pieces in
isolation, each a ``tf.function`` on the same model and batch, for the Adv-BNN model and for its
deterministic twin (``adv``: ordinary layers, same architecture):

  train_step      the Trainer's whole step (input pipeline, PGD-10, update, metrics, host work)
  pgd10           the training attack alone (10 forward + input-gradient passes)
  pgd_step        one forward + input-gradient pass (what each PGD step computes)
  forward         one inference forward pass
  update          forward in training mode + loss (CE and KL term) + weight gradients
  update_apply    the same and the optimizer's apply
  sample_*        drawing the weights of one forward pass alone: all, conv/dense, batch norm
  matmul          a 2048x2048 float32 matmul (the ceiling), timed in every round too

The CPU is shared and noisy, so every round times every piece once (in the same order), and the
table reports the median over ``--rounds`` rounds and the fractions of the Adv-BNN train step
they explain. A second table times each layer alone (forward + input gradient at its input
shape, as a PGD step runs it, and for Bayesian layers the weight draw alone), which shows how far
below the ceiling the small late layers run. ``--output`` writes everything as JSON; seconds are
wall-clock seconds per call, fractions are of the Adv-BNN ``train_step`` median.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402  (its flags: model, width_multiplier, batch_size, ...)

from tfp_advbnn import layers, training  # noqa: E402
from tfp_advbnn.attacks import eot  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Rounds; every round times every piece once.")
flags.DEFINE_float(
    "min_piece_seconds", 0.2, "A piece is called repeatedly until this long (per round)."
)
flags.DEFINE_bool("per_layer", True, "Also time every layer alone.")
FLAGS.set_default("output", "benchmarks/results/profile_step.json")
FLAGS.set_default("repeats", 0)  # throughput's flag; unused here (``--rounds`` instead)


def make_trainer(defense: str, synthetic):
    """A Trainer of ``defense`` on the synthetic data, as throughput.py builds it."""
    config = training.TrainConfig.from_flat(
        model_dir="/tmp/profile-step-unused",
        model=FLAGS.model,
        defense=defense,
        width_multiplier=FLAGS.width_multiplier,
        batch_size=FLAGS.batch_size,
        train_pgd_steps=FLAGS.train_pgd_steps,
        epochs=1,
    )
    return training.Trainer(config, image_data=synthetic)


def weight_draws(model):
    """The weight draws one forward pass of ``model`` makes, as ``(layer name, group, draw)``
    with group "conv_dense" or "batch_norm" and ``draw`` a zero-argument callable returning the
    drawn tensors (empty for a model without Bayesian layers)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, layers.BayesBatchNormalization):
            draw = lambda bn=layer: [bn._sample("gamma"), bn._sample("beta")]  # noqa: E731
            found.append((layer.name, "batch_norm", draw))
        elif isinstance(layer, layers.BayesianLayer):
            inner = layer._tfp_layer
            posteriors = [inner.kernel_posterior]
            if layer.use_bias:
                posteriors.append(inner.bias_posterior)
            draw = lambda conv=layer, p=posteriors: [conv._sample(q) for q in p]  # noqa: E731
            found.append((layer.name, "conv_dense", draw))
    return found


def pieces_for(name: str, trainer, images, labels) -> dict:
    """The timed pieces of one model: name -> zero-argument callable that blocks until done."""
    task, model = trainer.task, trainer.model
    optimizer = trainer.task.optimizer
    iterator = task.train_iterator(0)

    def train_step():
        task.train_step(iterator)
        float(task.train_loss.result())

    def loss_and_gradients():
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            cross_entropy = tf.reduce_mean(eot.cross_entropy(labels, logits))
            loss = cross_entropy + task.kl_weight(optimizer.iterations) * layers.model_kl(model)
        return tape.gradient(loss, model.trainable_variables)

    @tf.function
    def update_apply():
        gradients = loss_and_gradients()
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return optimizer.iterations

    functions = {
        "train_step": train_step,
        "pgd10": tf.function(lambda: task.adversarial_examples(images, labels)),
        "pgd_step": tf.function(lambda: eot.loss_grad(task.inference_logits, images, labels)[0]),
        "forward": tf.function(lambda: task.inference_logits(images)),
        "update": tf.function(loss_and_gradients),
        "update_apply": update_apply,
    }
    draws = weight_draws(model)
    if draws:
        for group in ("all", "conv_dense", "batch_norm"):
            chosen = [draw for _, g, draw in draws if group in ("all", g)]
            functions[f"sample_{group}"] = tf.function(lambda c=chosen: [d() for d in c])
    return {f"{piece}[{name}]": _blocking(fn) for piece, fn in functions.items()}


def _blocking(fn):
    """``fn`` made to wait for its result (eager tensors are already computed; a nested
    structure is walked to force every tensor)."""

    def call():
        result = fn()
        for tensor in tf.nest.flatten(result):
            if isinstance(tensor, tf.Tensor):
                tensor.numpy()

    return call


def time_rounds(pieces: dict, rounds: int, min_seconds: float) -> dict:
    """Median seconds per call of each piece over ``rounds`` interleaved rounds.

    Every piece is called once to trace and warm up; a round then calls each piece ``n`` times
    in a row (``n`` chosen from the warm-up call so that ``n`` calls take about
    ``min_seconds``) and records the mean. Returns name -> {"median", "all"} in seconds."""
    calls = {}
    for name, piece in pieces.items():
        piece()  # trace
        start = time.perf_counter()
        piece()
        calls[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    samples = {name: [] for name in pieces}
    for _ in range(rounds):
        for name, piece in pieces.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                piece()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: {"median": float(np.median(v)), "all": v} for name, v in samples.items()}


def layer_flops(layer) -> float:
    """Forward multiply-add FLOPs (2 per MAC) of one image through ``layer`` (0 if not a conv or
    dense layer)."""
    shape = layer.output.shape
    if hasattr(layer, "filters") and hasattr(layer, "kernel_size"):
        kernel = int(np.prod(layer.kernel_size))
        return 2.0 * shape[1] * shape[2] * kernel * layer.input.shape[-1] * layer.filters
    if hasattr(layer, "units"):
        return 2.0 * layer.input.shape[-1] * layer.units
    return 0.0


def layer_pieces(model, name: str, batch_size: int) -> tuple[dict, dict]:
    """Per-layer pieces: forward (inference) + input gradient of each layer at its input shape,
    and for Bayesian layers their weight draw alone. Returns (pieces, flops per layer)."""
    pieces, flops = {}, {}
    draws = {layer_name: draw for layer_name, _, draw in weight_draws(model)}
    for layer in model.layers[1:]:  # the first is the InputLayer
        shape = [batch_size, *layer.input.shape[1:]]
        x = tf.random.stateless_uniform(shape, seed=[1, 2])
        upstream = tf.random.stateless_uniform(layer.output.shape[1:], seed=[3, 4])

        def fwd_igrad(layer=layer, x=x, upstream=upstream):
            # Both results are returned and the upstream gradient is not constant, so that
            # neither the forward pass nor the weights' draw can be pruned or folded away.
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                y = layer(x, training=False)
            return y, tape.gradient(y, x, output_gradients=y * 0.0 + upstream)

        pieces[f"{layer.name}[{name}]"] = _blocking(tf.function(fwd_igrad))
        flops[f"{layer.name}[{name}]"] = layer_flops(layer)
        if layer.name in draws:
            pieces[f"{layer.name}.sample[{name}]"] = _blocking(tf.function(draws[layer.name]))
    return pieces, flops


def summarize(times: dict, ceiling_gflops: float, train_gflops_per_image: float) -> list:
    """Rows (what, seconds, fraction of the Adv-BNN train step) explaining the train step."""
    t = {name: value["median"] for name, value in times.items()}
    step = t["train_step[adv_bnn]"]
    ideal = train_gflops_per_image * FLAGS.batch_size / ceiling_gflops
    k = FLAGS.train_pgd_steps
    draws_per_step = k + 1
    rows = [
        ("train step, Adv-BNN (measured)", step),
        ("  at the matmul ceiling (FLOPs / ceiling)", ideal),
        ("  PGD-10 attack", t["pgd10[adv_bnn]"]),
        ("    of which 10 x one PGD pass", k * t["pgd_step[adv_bnn]"]),
        (
            "    PGD loop overhead (pgd10 - 10 x pass)",
            t["pgd10[adv_bnn]"] - k * t["pgd_step[adv_bnn]"],
        ),
        ("  update (fwd + loss + weight grads + apply)", t["update_apply[adv_bnn]"]),
        ("    of which the optimizer's apply", t["update_apply[adv_bnn]"] - t["update[adv_bnn]"]),
        (
            "  host and the rest (step - pgd10 - update_apply)",
            step - t["pgd10[adv_bnn]"] - t["update_apply[adv_bnn]"],
        ),
        (
            f"  weight draws ({draws_per_step} per step: all)",
            draws_per_step * t["sample_all[adv_bnn]"],
        ),
        (
            f"    batch-norm draws alone ({draws_per_step} per step)",
            draws_per_step * t["sample_batch_norm[adv_bnn]"],
        ),
        ("train step, adv (same net, ordinary layers)", t["train_step[adv]"]),
        ("  Bayesian cost (Adv-BNN - adv step)", step - t["train_step[adv]"]),
        (
            "  Bayesian cost beyond the draws",
            step - t["train_step[adv]"] - draws_per_step * t["sample_all[adv_bnn]"],
        ),
    ]
    return [{"what": what, "seconds": s, "fraction": s / step} for what, s in rows]


def main(argv):
    del argv
    synthetic = throughput._SyntheticData(FLAGS.batch_size * 4, FLAGS.image_size)
    images = tf.constant(synthetic.images[: FLAGS.batch_size])
    labels = tf.constant(synthetic.labels[: FLAGS.batch_size])
    trainers = {name: make_trainer(name, synthetic) for name in ("adv_bnn", "adv")}
    size = 2048
    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.matmul(a, b))
    pieces = {"matmul": _blocking(matmul)}
    for name, trainer in trainers.items():
        pieces.update(pieces_for(name, trainer, images, labels))
    times = time_rounds(pieces, FLAGS.rounds, FLAGS.min_piece_seconds)
    ceiling = 2.0 * size**3 / times["matmul"]["median"] / 1e9
    flops = throughput.forward_flops(trainers["adv_bnn"].model)
    train_gflops = (2 * FLAGS.train_pgd_steps + 3) * flops / 1e9
    summary = summarize(times, ceiling, train_gflops)

    layer_rows = []
    if FLAGS.per_layer:
        layer_all, layer_flop = {"matmul": pieces["matmul"]}, {}
        for name, trainer in trainers.items():
            found, counts = layer_pieces(trainer.model, name, FLAGS.batch_size)
            layer_all.update(found)
            layer_flop.update(counts)
        layer_times = time_rounds(layer_all, FLAGS.rounds, FLAGS.min_piece_seconds / 4)
        layer_ceiling = 2.0 * size**3 / layer_times["matmul"]["median"] / 1e9
        for key, value in layer_times.items():
            if key == "matmul":
                continue
            # Forward + input gradient is about twice the forward's multiply-adds.
            work = 2.0 * layer_flop.get(key, 0.0) * FLAGS.batch_size
            layer_rows.append(
                {
                    "piece": key,
                    "seconds": value["median"],
                    "gflops": work / value["median"] / 1e9 if work else None,
                    "fraction_of_ceiling": work / value["median"] / 1e9 / layer_ceiling
                    if work
                    else None,
                }
            )
        times.update(layer_times)

    print(
        f"{FLAGS.model} x{FLAGS.width_multiplier}, batch {FLAGS.batch_size}, "
        f"PGD-{FLAGS.train_pgd_steps}; "
        f"medians of {FLAGS.rounds} interleaved rounds; matmul ceiling {ceiling:.0f} GFLOP/s"
    )
    print(f"{'piece':<34} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, value in times.items():
        if name in pieces:
            low, high = min(value["all"]), max(value["all"])
            print(f"{name:<34} {value['median']:>9.4f} {low:>8.4f} {high:>8.4f}")
    print(f"\n{'where the Adv-BNN train step goes':<52} {'s':>8} {'share':>7}")
    for row in summary:
        print(f"{row['what']:<52} {row['seconds']:>8.3f} {100 * row['fraction']:>6.1f}%")
    if layer_rows:
        header = f"{'layer (fwd + input grad, batch)':<30} {'ms':>8} {'GFLOP/s':>8}"
        print(f"\n{header} {'of ceiling':>10}")
        for row in layer_rows:
            gflops = f"{row['gflops']:.0f}" if row["gflops"] else "-"
            share = f"{100 * row['fraction_of_ceiling']:.0f}%" if row["gflops"] else "-"
            print(f"{row['piece']:<30} {1000 * row['seconds']:>8.2f} {gflops:>8} {share:>10}")
    result = {
        "model": FLAGS.model,
        "width_multiplier": FLAGS.width_multiplier,
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "train_pgd_steps": FLAGS.train_pgd_steps,
        "rounds": FLAGS.rounds,
        "matmul_ceiling_gflops": ceiling,
        "train_gflops_per_image": train_gflops,
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "pieces": times,
        "summary": summary,
        "layers": layer_rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    training.write_text_atomically(FLAGS.output, json.dumps(result, indent=2) + "\n")
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
