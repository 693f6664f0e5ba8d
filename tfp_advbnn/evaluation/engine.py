"""The attack evaluator: traced attack and scoring functions, and per-example outcomes.

Every evaluation mode reduces to ``attack_outcomes`` (craft on one model, score on several, per
eps and example) and ``clean_correct``. Work is batched and runs in graph mode: per batch, one
``tf.function`` crafts the adversarial images and another scores them with the ensemble; eps and
the step size are tensors, so one trace serves every batch and every eps.

Under a ``tf.distribute`` strategy of several replicas (an Evaluator built inside its
``scope()``: ``trainers.evaluate --strategy``), each batch is split into contiguous parts, one per
replica across every worker, crafted and scored there, and gathered back in order, so the
outcomes of a deterministic model and attack are those of one device. Random starts take a seed
folded with the replica id (the same distribution, not the same draws as one device).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_advbnn import models
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import protocols
from tfp_advbnn.evaluation.protocols import AttackSpec


def draws_differ(model_fn: Callable, images) -> bool:
    """Whether two calls of ``model_fn`` on the same images give different logits."""
    x = tf.constant(np.asarray(images, np.float32))
    return not np.array_equal(model_fn(x).numpy(), model_fn(x).numpy())


class Evaluator:
    """Traced attack and scoring functions of one model_fn, created once and reused.

    Input signatures with an unknown batch size make one trace serve every batch (the last one
    is usually smaller) and every eps. A deterministic model is scored with one call whatever
    the ensemble size asked for (every draw would be the same), and APGD's ensemble pick of its
    returned point is skipped for it.

    The strategy is the one in scope when the Evaluator is built (``tf.distribute.get_strategy``):
    with several replicas, ``craft`` and ``score`` split each batch across them.

    Args:
      model_fn: images -> logits, one draw per call.
      images: float32 [N, H, W, 3], the evaluated examples (the first few decide ``stochastic``).
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).
    """

    def __init__(self, model_fn: Callable, images: np.ndarray, stochastic: bool | None = None):
        self.model_fn = model_fn
        self.strategy = tf.distribute.get_strategy()
        if stochastic is None:
            stochastic = draws_differ(model_fn, images[: min(len(images), 8)])
        self.stochastic = bool(stochastic)
        self._images = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
        self._labels = tf.TensorSpec([None], tf.int32)
        self._scalar = tf.TensorSpec([], tf.float32)
        self._functions = {}

    def craft(self, spec: AttackSpec, random_start: bool):
        """tf.function (images, labels, eps, step_size, seed) -> adversarial images."""
        key = ("craft", spec, random_start)
        if key not in self._functions:
            model_fn = self.model_fn
            selection_samples = spec.selection_samples if self.stochastic else 0

            def craft(images, labels, eps, step_size, seed):
                return protocols.craft(
                    spec,
                    model_fn,
                    images,
                    labels,
                    eps=eps,
                    step_size=step_size,
                    seed=seed,
                    random_start=random_start,
                    selection_samples=selection_samples,
                )

            signature = [self._images, self._labels, self._scalar, self._scalar]
            signature.append(tf.TensorSpec([2], tf.int64))
            self._functions[key] = self._compile(craft, signature, batched=2, seeded=True)
        return self._functions[key]

    def _compile(self, fn, signature, *, batched: int, seeded: bool = False):
        """``fn`` as one tf.function; under several replicas, its first ``batched`` arguments
        split into one contiguous part per replica and its outputs gathered back in order. With
        ``seeded``, the last argument (an int64 [2] seed) is folded with the replica id."""
        strategy = self.strategy
        if strategy.num_replicas_in_sync == 1:
            return _traced(fn, signature)

        def distributed(*args):
            # Filled while tracing: the outputs' structure and dtypes, the same on every replica.
            traced = {}

            def replica_fn(*args):
                context = tf.distribute.get_replica_context()
                replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
                replicas = context.num_replicas_in_sync
                size = tf.shape(args[0])[0]
                start, stop = (replica * size) // replicas, ((replica + 1) * size) // replicas
                args = [a[start:stop] for a in args[:batched]] + list(args[batched:])
                if seeded:
                    args[-1] += tf.stack([tf.constant(0, tf.int64), tf.cast(replica, tf.int64)])
                outputs = fn(*args)
                flat = tf.nest.flatten(outputs)
                traced.update(structure=outputs, dtypes=[t.dtype for t in flat])
                # Booleans cannot travel through every collective: int32 there and back.
                return [tf.cast(t, tf.int32) if t.dtype == tf.bool else t for t in flat]

            per_replica = strategy.run(replica_fn, args=args)
            gathered = [strategy.gather(v, axis=0) for v in per_replica]
            restored = [
                tf.cast(t, tf.bool) if dtype == tf.bool else t
                for t, dtype in zip(gathered, traced["dtypes"], strict=True)
            ]
            return tf.nest.pack_sequence_as(traced["structure"], restored)

        return _traced(distributed, signature)

    def score(self, num_samples: int, norm: str, thresholded: bool):
        """tf.function (images, x_adv, labels, eps) -> (adv_ok, clean_ok, distortion).

        ``adv_ok`` and ``clean_ok`` (bool [B]) say whether the ensemble classifies the
        adversarial and the clean image correctly; both halves go through the model in one
        batch, so a model drawing its weights once per call scores them with the same draws
        (the pairing ``robust_accuracy`` needs). ``distortion`` is float32 [B].
        """
        if not self.stochastic:
            num_samples = 1
        key = ("score", num_samples, norm, thresholded)
        if key not in self._functions:
            model_fn = self.model_fn

            def score(images, x_adv, labels, eps):
                distortion = per_example_norm(x_adv - images, norm)
                if thresholded:
                    within = distortion <= eps
                    x_adv = tf.where(within[:, None, None, None], x_adv, images)
                    distortion = tf.where(within, distortion, 0.0)
                both = tf.concat([x_adv, images], axis=0)
                probabilities = models.ensemble_probabilities(model_fn, both, num_samples)
                predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
                ok = tf.equal(predicted, tf.concat([labels, labels], axis=0))
                adv_ok, clean_ok = tf.split(ok, 2)
                return adv_ok, clean_ok, distortion

            signature = [self._images, self._images, self._labels, self._scalar]
            self._functions[key] = self._compile(score, signature, batched=3)
        return self._functions[key]

    def classify(self, num_samples: int):
        """tf.function (images, labels) -> bool [B]: the ensemble classifies image b correctly
        (one pass over the images, unlike ``score``, which also passes adversarial ones)."""
        if not self.stochastic:
            num_samples = 1
        key = ("classify", num_samples)
        if key not in self._functions:
            model_fn = self.model_fn

            def classify(images, labels):
                probabilities = models.ensemble_probabilities(model_fn, images, num_samples)
                return tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels)

            signature = [self._images, self._labels]
            self._functions[key] = self._compile(classify, signature, batched=2)
        return self._functions[key]

    def input_gradient(self):
        """tf.function (images, labels) -> d cross-entropy / d images of one model_fn call."""
        key = ("gradient",)
        if key not in self._functions:
            model_fn = self.model_fn

            def gradient(images, labels):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(images)
                    logits = tf.cast(model_fn(images), tf.float32)
                    loss = tf.reduce_sum(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
                    )
                return tape.gradient(
                    loss, images, unconnected_gradients=tf.UnconnectedGradients.ZERO
                )

            signature = [self._images, self._labels]
            self._functions[key] = _traced(gradient, signature)
        return self._functions[key]


def _traced(fn, signature):
    """``tf.function(fn)`` with its own entry in TF's frequent-retracing detector.

    The detector keys a tf.function by its Python code object, so the functions built from one
    closure for different attacks (each traced once, as it must be: a different graph) would
    add up to a false "excessive retracing" warning. A ``functools.partial`` has no code object
    of its own, so each function is tracked apart and a real retrace of one is still reported.
    """
    return tf.function(functools.partial(fn), input_signature=signature)


def per_example_norm(delta: tf.Tensor, norm: str) -> tf.Tensor:
    """L-inf or L2 norm of each example of ``delta`` [B, H, W, C] -> float32 [B]."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.norm(flat, axis=1)


@dataclasses.dataclass(frozen=True)
class Target:
    """A model scoring adversarial images: its evaluator and its ensemble size."""

    evaluator: Evaluator
    num_samples: int


def progress_bar(total: int, enabled: bool):
    """A progress bar on a terminal; silent when output is not a TTY (logs, CI, tests)."""
    verbose = 1 if enabled and sys.stdout.isatty() else 0
    return tf_keras.utils.Progbar(total, verbose=verbose, unit_name="batch")


def batches(num_examples: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` examples covering ``num_examples``."""
    return [slice(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]


@dataclasses.dataclass(frozen=True)
class Outcomes:
    """Per-example outcomes of one attack, crafted on a source and scored on targets.

    Attributes:
      correct: bool [T, E, N], target t classifies example n correctly after every run of the
        attack at eps e (the paper's count, whatever the clean prediction).
      robust: bool [T, E, N], and its clean prediction, scored with the same draws in the same
        call, is correct too (the honest count: an example wrong when clean is never robust).
      distortion: float32 [E, N], the norm of the perturbation that counts for target 0: that of
        the first run fooling it, else that of the first run.
    """

    correct: np.ndarray
    robust: np.ndarray
    distortion: np.ndarray


def attack_outcomes(
    source: Evaluator,
    targets: Sequence[Target],
    images: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    eps_values: Sequence[float],
    *,
    restarts: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> Outcomes:
    """Crafts on ``source`` and scores on every target, per eps and example.

    At eps = 0 there is no perturbation: nothing is crafted and the adversarial outcome is the
    clean one of the same call, so the eps = 0 cell equals the clean count of its draws.
    """
    num = len(images)
    eps_values = [float(e) for e in eps_values]
    correct = np.ones((len(targets), len(eps_values), num), bool)
    robust = np.ones_like(correct)
    distortion = np.zeros((len(eps_values), num), np.float32)
    parts = batches(num, batch_size)
    bar = progress_bar(len(parts) * (restarts + 1) * len(eps_values), progress)
    done = 0
    for batch_index, part in enumerate(parts):
        x = tf.constant(images[part], tf.float32)
        y = tf.constant(labels[part], tf.int32)
        for run in range(restarts + 1):
            craft = source.craft(spec, random_start=run > 0)
            # Distinct stateless seeds per (run, batch) make every random start reproducible.
            seed_pair = tf.constant([seed, (run << 32) + batch_index], tf.int64)
            unbounded_adv = None
            for e, eps in enumerate(eps_values):
                eps_t = tf.constant(eps, tf.float32)
                if eps == 0.0:
                    x_adv = x
                elif spec.thresholded:
                    # C&W ignores eps: craft once per batch and run, cut at each eps when scored.
                    if unbounded_adv is None:
                        unbounded_adv = craft(x, y, eps_t, tf.constant(1.0), seed_pair)
                    x_adv = unbounded_adv
                else:
                    step = tf.constant(spec.step_size_for(eps), tf.float32)
                    x_adv = craft(x, y, eps_t, step, seed_pair)
                for t, target in enumerate(targets):
                    score = target.evaluator.score(target.num_samples, spec.norm, spec.thresholded)
                    adv_ok, clean_ok, dist = score(x, x_adv, y, eps_t)
                    clean_ok = clean_ok.numpy()
                    ok = clean_ok if eps == 0.0 else adv_ok.numpy()
                    if t == 0:
                        newly_fooled = correct[0, e, part] & ~ok
                        if run == 0:
                            distortion[e, part] = dist.numpy()
                        else:
                            distortion[e, part] = np.where(
                                newly_fooled, dist.numpy(), distortion[e, part]
                            )
                    correct[t, e, part] &= ok
                    robust[t, e, part] &= ok & clean_ok
                done += 1
                bar.update(done)
    return Outcomes(correct, robust, distortion)


def clean_correct(
    evaluator: Evaluator, images, labels, *, num_samples: int, batch_size: int
) -> np.ndarray:
    """bool [N]: the ensemble of ``num_samples`` draws classifies clean example n correctly."""
    classify = evaluator.classify(num_samples)
    correct = np.zeros(len(images), bool)
    for part in batches(len(images), batch_size):
        x = tf.constant(images[part], tf.float32)
        correct[part] = classify(x, tf.constant(labels[part], tf.int32)).numpy()
    return correct


def prepare(images, labels, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Checks the data and keeps the first ``config.max_examples`` examples.

    Returns float32 images [N, H, W, 3] in [0, 1] and int32 labels [N].
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [{images.shape[0]}], got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if len(images) == 0:
        raise ValueError("no examples to evaluate")
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(
            f"images must lie in [0, 1], got values in [{images.min()}, {images.max()}]"
        )
    if config.max_examples is not None:
        images, labels = images[: config.max_examples], labels[: config.max_examples]
    return images.astype(np.float32, copy=False), labels.astype(np.int32, copy=False)


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """One attack of a sweep's plan on its own: per-example outcomes (see ``Outcomes``).

    Attributes:
      spec: the attack and its settings.
      correct, robust: bool [E, N].
    """

    spec: AttackSpec
    correct: np.ndarray
    robust: np.ndarray


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Per-example outcome of a sweep: the worst case over the attacks of its protocol.

    Attributes:
      eps: E radii.
      correct: bool [E, N], classified correctly after every run of every attack at each eps.
      robust: bool [E, N], and correct when clean too, scored with the same draws each time.
      distortion: float32 [E, N], measured norm of each counted perturbation (that of the first
        attack fooling the ensemble, else of the first attack).
      clean_correct: bool [N], correct on the clean image (an ensemble of its own draws).
      attacks: each attack's own outcomes, in the order they ran.
    """

    eps: tuple[float, ...]
    correct: np.ndarray
    robust: np.ndarray
    distortion: np.ndarray
    clean_correct: np.ndarray
    attacks: tuple[AttackResult, ...] = ()

    @property
    def num_examples(self) -> int:
        return int(self.clean_correct.shape[0])

    @property
    def accuracy(self) -> list[float]:
        return [float(v) for v in self.correct.mean(axis=1)]

    @property
    def robust_accuracy(self) -> list[float]:
        return [float(v) for v in self.robust.mean(axis=1)]

    @property
    def mean_distortion(self) -> list[float]:
        return [float(v) for v in self.distortion.mean(axis=1)]

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())
