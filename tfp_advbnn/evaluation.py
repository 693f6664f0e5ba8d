"""Robustness evaluation: accuracy-vs-eps sweeps, gradient-masking checks, comparisons, transfer.

Every function here takes a ``model_fn``: any callable from float32 images [B, H, W, 3] in
[0, 1] to float32 logits [B, C], where one call is one weight draw of a stochastic model (for a
tf_keras model, ``lambda x: model(x, training=False)``). Predictions are the ensemble of paper
eq. 18, ``models.ensemble_probabilities(model_fn, x, num_samples)``; attacks come from
``tfp_advbnn.attacks``.

Conventions:

- ``eps`` is a radius in the [0, 1] pixel scale: per pixel for the L-inf attacks (``pgd_linf``,
  ``fgsm``, ``apgd``), over the whole example for the L2 ones (``pgd_l2``, ``cw``).
- Accuracies are fractions in [0, 1]. ``mean_distortion`` is the mean over examples of the
  measured norm (L-inf or L2, as the attack) of ``x_adv - x``.
- Work is batched and runs in graph mode: per batch, one ``tf.function`` crafts the adversarial
  images and another scores them with the ensemble. ``eps`` and the step size are passed as
  tensors, so one trace serves every batch and every eps.
- With ``random_restarts = r`` every example is attacked ``1 + r`` times: first from the clean
  image (as the paper's PGD), then ``r`` times from uniform random points of the eps-ball (APGD
  always starts at a random point). An example counts as robust only if the ensemble classifies
  it correctly after every run.
- ``cw`` minimises the distortion without a budget; at radius ``eps`` an example counts as
  attacked only if the C&W image is misclassified and within ``eps`` (otherwise the clean image
  is scored), which turns its single run into a whole accuracy-vs-eps curve.

Reports are plain dicts ready for JSON (``write_json``); ``plot_report`` draws the figure of any
report: accuracy vs eps (paper Fig. 2), transfer heatmaps (Fig. 3), accuracy vs ensemble size
and vs PGD steps (Fig. 4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from tfp_advbnn import attacks, export, models, training

ATTACKS = ("pgd_linf", "pgd_l2", "fgsm", "cw", "apgd")
MODES = ("sweep", "compare", "transfer", "ensemble_sweep", "steps_sweep")
ATTACK_NORMS = {"pgd_linf": "linf", "pgd_l2": "l2", "fgsm": "linf", "cw": "l2", "apgd": "linf"}
ATTACK_NAMES = {
    "pgd_linf": "PGD (L\u221e)",
    "pgd_l2": "PGD (L2)",
    "fgsm": "FGSM",
    "cw": "C&W (L2)",
    "apgd": "APGD-CE (L\u221e)",
}
DEFENSE_NAMES = {
    "plain": "No defense",
    "bnn": "BNN",
    "adv": "Adv. training",
    "rse": "RSE",
    "adv_bnn": "Adv-BNN",
}

# The paper's grids (Sec. 5): CIFAR-10 and STL-10 up to 0.07, ImageNet-143 ("folder") to 0.02.
DEFAULT_EPS_GRIDS = {
    "cifar10": tuple(round(0.005 * i, 3) for i in range(15)),
    "stl10": tuple(round(0.005 * i, 3) for i in range(15)),
    "folder": tuple(round(0.002 * i, 3) for i in range(11)),
}

# Gradient-masking thresholds (Carlini et al. 2019, "On Evaluating Adversarial Robustness").
UNBOUNDED_MAX_ACCURACY = 0.05  # an eps = 1 attack must leave at most this accuracy
UNBOUNDED_MIN_STEPS = 50  # steps of that attack, at least
# A stochastic model's accuracy changes only count when a paired (McNemar) test finds them this
# many standard errors away from noise: about 1 false alarm in 700 comparisons.
SIGNIFICANCE_Z = 3.0
ZERO_GRADIENT_MAX_FRACTION = 0.01  # at most this fraction of examples may have a zero gradient

AFFINITY_DEFINITION = (
    "rho[s][t] = (clean_t - acc[s][t]) / (clean_t - acc[t][t]): the accuracy that target t "
    "loses on adversarial examples crafted on source s, as a fraction of what it loses to its "
    "own white-box attack. 1 on the diagonal; near 1: s's examples transfer fully to t; near 0: "
    "they do not. null where t's own attack costs it no accuracy."
)


def default_eps_grid(dataset: str) -> tuple[float, ...]:
    """The paper's eps grid for ``dataset`` ("cifar10", "stl10" or "folder" for ImageNet-143)."""
    if dataset not in DEFAULT_EPS_GRIDS:
        raise ValueError(f"dataset must be one of {sorted(DEFAULT_EPS_GRIDS)}, got {dataset!r}")
    return DEFAULT_EPS_GRIDS[dataset]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_eps_values(name: str, values) -> tuple[float, ...]:
    """Validates a non-empty list of radii in [0, 1]; returns them as a sorted, unique tuple."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of numbers in [0, 1], got {values!r}")
    for value in values:
        if not _is_real(value) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} values must be numbers in [0, 1], got {value!r}")
    return tuple(sorted({float(v) for v in values}))


def check_counts(name: str, values, *, minimum: int = 1) -> tuple[int, ...]:
    """Validates a non-empty list of ints >= ``minimum``; returns them sorted and unique."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(
            f"{name} must be a non-empty list of integers >= {minimum}, got {values!r}"
        )
    for value in values:
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name} values must be integers >= {minimum}, got {value!r}")
    return tuple(sorted({int(v) for v in values}))


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation; validated on construction (ValueError naming the field).

    Attributes:
      attack: one of ``ATTACKS``.
      eps_grid: radii in [0, 1] pixel scale (stored sorted and unique).
      pgd_steps: iterations of the iterative attacks (PGD and APGD steps, C&W's Adam steps).
      pgd_step_size: PGD step size in pixel scale; None: ``2.5 * eps / pgd_steps`` (Madry et
        al.), so each eps gets a proportional step. APGD adapts its own step; FGSM steps by eps.
      random_restarts: extra attack runs from random starting points (0: one run from x).
      num_eot_samples: model calls averaged per attack gradient (expectation over
        transformation; 1 as the paper).
      num_samples: weight draws of the ensemble prediction (eq. 18).
      max_examples: evaluate on the first N examples only (None: all).
      batch_size: examples per graph call.
      seed: seeds the random starts of the attacks.
      cw_c: weight of the C&W margin term.
      check_examples: the gradient-masking checks run on the first N evaluated examples.
      check_eot_samples: EOT draws of the multi-draw attack in the EOT check (>= 2).
    """

    attack: str = "pgd_linf"
    eps_grid: tuple[float, ...] = DEFAULT_EPS_GRIDS["cifar10"]
    pgd_steps: int = 20
    pgd_step_size: float | None = None
    random_restarts: int = 0
    num_eot_samples: int = 1
    num_samples: int = 10
    max_examples: int | None = None
    batch_size: int = 100
    seed: int = 0
    cw_c: float = 1.0
    check_examples: int = 500
    check_eot_samples: int = 10

    def __post_init__(self):
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {list(ATTACKS)}, got {self.attack!r}")
        object.__setattr__(self, "eps_grid", check_eps_values("eps_grid", self.eps_grid))
        at_least = {
            "pgd_steps": (self.pgd_steps, 1),
            "random_restarts": (self.random_restarts, 0),
            "num_eot_samples": (self.num_eot_samples, 1),
            "num_samples": (self.num_samples, 1),
            "batch_size": (self.batch_size, 1),
            "seed": (self.seed, 0),
            "check_examples": (self.check_examples, 1),
            "check_eot_samples": (self.check_eot_samples, 2),
        }
        for name, (value, low) in at_least.items():
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_examples is not None and (
            not _is_int(self.max_examples) or self.max_examples < 1
        ):
            raise ValueError(
                f"max_examples must be None or an integer >= 1, got {self.max_examples!r}"
            )
        step = self.pgd_step_size
        if step is not None and (not _is_real(step) or not 0.0 < step <= 1.0):
            raise ValueError(f"pgd_step_size must be None or a number in (0, 1], got {step!r}")
        if not _is_real(self.cw_c) or self.cw_c < 0:
            raise ValueError(f"cw_c must be a finite number >= 0, got {self.cw_c!r}")

    @property
    def norm(self) -> str:
        return ATTACK_NORMS[self.attack]


# ----- attack specifications and the compiled per-batch functions ---------------------------


@dataclasses.dataclass(frozen=True)
class _AttackSpec:
    """One attack setting; hashable, so it keys the cache of traced functions."""

    attack: str
    num_steps: int
    num_eot_samples: int
    step_size: float | None
    cw_c: float
    selection_samples: int

    @classmethod
    def of(cls, config: EvalConfig, **overrides) -> _AttackSpec:
        values = dict(
            attack=config.attack,
            num_steps=config.pgd_steps,
            num_eot_samples=config.num_eot_samples,
            step_size=config.pgd_step_size,
            cw_c=config.cw_c,
            selection_samples=config.num_samples,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def norm(self) -> str:
        return ATTACK_NORMS[self.attack]

    @property
    def thresholded(self) -> bool:
        """Unbounded attacks are cut at eps when scored (see the module docstring)."""
        return self.attack == "cw"

    def step_size_for(self, eps: float) -> float:
        if self.step_size is not None:
            return self.step_size
        if eps == 0.0:
            # The projection onto a radius-0 ball returns x whatever the step; PGD wants > 0.
            return 1.0
        return 2.5 * eps / self.num_steps


class _Evaluator:
    """Traced attack and scoring functions of one model_fn, created once and reused.

    Input signatures with an unknown batch size make one trace serve every batch (the last one
    is usually smaller) and every eps. A deterministic model is scored with one call whatever
    the ensemble size asked for (every draw would be the same), and APGD's ensemble pick of its
    returned point is skipped for it.

    Args:
      model_fn: images -> logits, one draw per call.
      images: float32 [N, H, W, 3], the evaluated examples (the first few decide ``stochastic``).
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).
    """

    def __init__(self, model_fn: Callable, images: np.ndarray, stochastic: bool | None = None):
        self.model_fn = model_fn
        if stochastic is None:
            stochastic = is_stochastic(model_fn, images[: min(len(images), 8)])
        self.stochastic = bool(stochastic)
        self._images = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
        self._labels = tf.TensorSpec([None], tf.int32)
        self._scalar = tf.TensorSpec([], tf.float32)
        self._functions = {}

    def craft(self, spec: _AttackSpec, random_start: bool):
        """tf.function (images, labels, eps, step_size, seed) -> adversarial images."""
        key = ("craft", spec, random_start)
        if key not in self._functions:
            model_fn = self.model_fn
            selection_samples = spec.selection_samples if self.stochastic else 0

            def craft(images, labels, eps, step_size, seed):
                if spec.attack in ("pgd_linf", "pgd_l2"):
                    return attacks.pgd(
                        model_fn,
                        images,
                        labels,
                        eps=eps,
                        step_size=step_size,
                        num_steps=spec.num_steps,
                        norm=spec.norm,
                        random_start=random_start,
                        num_eot_samples=spec.num_eot_samples,
                        seed=seed,
                    )
                if spec.attack == "fgsm":
                    return attacks.fgsm(
                        model_fn, images, labels, eps=eps, num_eot_samples=spec.num_eot_samples
                    )
                if spec.attack == "apgd":
                    return attacks.apgd(
                        model_fn,
                        images,
                        labels,
                        eps=eps,
                        num_steps=spec.num_steps,
                        norm=spec.norm,
                        num_eot_samples=spec.num_eot_samples,
                        selection_samples=selection_samples,
                        seed=seed,
                    )
                return attacks.cw_l2(
                    model_fn, images, labels, c=spec.cw_c, num_steps=spec.num_steps
                )

            signature = [self._images, self._labels, self._scalar, self._scalar]
            signature.append(tf.TensorSpec([2], tf.int64))
            self._functions[key] = tf.function(craft, input_signature=signature)
        return self._functions[key]

    def score(self, num_samples: int, norm: str, thresholded: bool):
        """tf.function (images, x_adv, labels, eps) -> (correct bool [B], distortion float [B])."""
        if not self.stochastic:
            num_samples = 1
        key = ("score", num_samples, norm, thresholded)
        if key not in self._functions:
            model_fn = self.model_fn

            def score(images, x_adv, labels, eps):
                distortion = _per_example_norm(x_adv - images, norm)
                if thresholded:
                    within = distortion <= eps
                    x_adv = tf.where(within[:, None, None, None], x_adv, images)
                    distortion = tf.where(within, distortion, 0.0)
                probabilities = models.ensemble_probabilities(model_fn, x_adv, num_samples)
                predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
                return tf.equal(predicted, labels), distortion

            signature = [self._images, self._images, self._labels, self._scalar]
            self._functions[key] = tf.function(score, input_signature=signature)
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
            self._functions[key] = tf.function(gradient, input_signature=signature)
        return self._functions[key]


def _per_example_norm(delta: tf.Tensor, norm: str) -> tf.Tensor:
    """L-inf or L2 norm of each example of ``delta`` [B, H, W, C] -> float32 [B]."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.norm(flat, axis=1)


@dataclasses.dataclass(frozen=True)
class _Target:
    """A model scoring adversarial images: its evaluator and its ensemble size."""

    evaluator: _Evaluator
    num_samples: int


def _progress(total: int, enabled: bool):
    """A progress bar on a terminal; silent when output is not a TTY (logs, CI, tests)."""
    verbose = 1 if enabled and sys.stdout.isatty() else 0
    return tf_keras.utils.Progbar(total, verbose=verbose, unit_name="batch")


def _batches(num_examples: int, batch_size: int):
    return [slice(s, min(s + batch_size, num_examples)) for s in range(0, num_examples, batch_size)]


def _attack_outcomes(
    source: _Evaluator,
    targets: Sequence[_Target],
    images: np.ndarray,
    labels: np.ndarray,
    spec: _AttackSpec,
    eps_values: Sequence[float],
    *,
    restarts: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Crafts on ``source`` and scores on every target, per eps and example.

    Returns:
      correct: bool [T, E, N], whether target t classifies example n correctly after every run
        of the attack at eps e.
      distortion: float32 [E, N], the norm of the perturbation that counts for target 0: that of
        the first run fooling it, else that of the first run.
    """
    num = len(images)
    eps_values = [float(e) for e in eps_values]
    correct = np.ones((len(targets), len(eps_values), num), bool)
    distortion = np.zeros((len(eps_values), num), np.float32)
    batches = _batches(num, batch_size)
    bar = _progress(len(batches) * (restarts + 1) * len(eps_values), progress)
    done = 0
    for batch_index, part in enumerate(batches):
        x = tf.constant(images[part], tf.float32)
        y = tf.constant(labels[part], tf.int32)
        for run in range(restarts + 1):
            craft = source.craft(spec, random_start=run > 0)
            # Distinct stateless seeds per (run, batch) make every random start reproducible.
            seed_pair = tf.constant([seed, (run << 32) + batch_index], tf.int64)
            unbounded_adv = None
            for e, eps in enumerate(eps_values):
                eps_t = tf.constant(eps, tf.float32)
                if spec.thresholded:
                    # C&W ignores eps: craft once per batch and run, cut at each eps when scored.
                    if unbounded_adv is None:
                        unbounded_adv = craft(x, y, eps_t, tf.constant(1.0), seed_pair)
                    x_adv = unbounded_adv
                else:
                    step = tf.constant(spec.step_size_for(eps), tf.float32)
                    x_adv = craft(x, y, eps_t, step, seed_pair)
                for t, target in enumerate(targets):
                    score = target.evaluator.score(target.num_samples, spec.norm, spec.thresholded)
                    ok, dist = score(x, x_adv, y, eps_t)
                    ok = ok.numpy()
                    if t == 0:
                        newly_fooled = correct[0, e, part] & ~ok
                        if run == 0:
                            distortion[e, part] = dist.numpy()
                        else:
                            distortion[e, part] = np.where(
                                newly_fooled, dist.numpy(), distortion[e, part]
                            )
                    correct[t, e, part] &= ok
                done += 1
                bar.update(done)
    return correct, distortion


def _clean_correct(
    evaluator: _Evaluator, images, labels, *, num_samples: int, batch_size: int
) -> np.ndarray:
    """bool [N]: the ensemble of ``num_samples`` draws classifies clean example n correctly."""
    score = evaluator.score(num_samples, "linf", False)
    correct = np.zeros(len(images), bool)
    for part in _batches(len(images), batch_size):
        x = tf.constant(images[part], tf.float32)
        ok, _ = score(x, x, tf.constant(labels[part], tf.int32), tf.constant(0.0))
        correct[part] = ok.numpy()
    return correct


def _prepare(images, labels, config: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Checks the data and keeps the first ``config.max_examples`` examples."""
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


def is_stochastic(model_fn: Callable, images) -> bool:
    """Whether two calls of ``model_fn`` on the same images give different logits."""
    x = tf.constant(np.asarray(images, np.float32))
    return not np.array_equal(model_fn(x).numpy(), model_fn(x).numpy())


# ----- the accuracy-vs-eps sweep ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Per-example outcome of a sweep.

    Attributes:
      eps: E radii.
      correct: bool [E, N], robust after every run at each eps.
      distortion: float32 [E, N], measured norm of each counted perturbation.
      clean_correct: bool [N], correct on the clean image.
    """

    eps: tuple[float, ...]
    correct: np.ndarray
    distortion: np.ndarray
    clean_correct: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.clean_correct.shape[0])

    @property
    def accuracy(self) -> list[float]:
        return [float(v) for v in self.correct.mean(axis=1)]

    @property
    def mean_distortion(self) -> list[float]:
        return [float(v) for v in self.distortion.mean(axis=1)]

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())


def run_sweep(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    *,
    stochastic: bool | None = None,
    progress: bool = False,
) -> SweepResult:
    """Clean and adversarial ensemble accuracy of ``model_fn`` at every eps of the config.

    Args:
      model_fn: float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C]; one call, one draw.
      images: float32 [N, H, W, 3] in [0, 1].
      labels: int [N] class ids.
      config: the attack and its settings.
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).
      progress: show a progress bar (on a terminal only).
    """
    images, labels = _prepare(images, labels, config)
    evaluator = _Evaluator(model_fn, images, stochastic)
    clean = _clean_correct(
        evaluator, images, labels, num_samples=config.num_samples, batch_size=config.batch_size
    )
    correct, distortion = _attack_outcomes(
        evaluator,
        [_Target(evaluator, config.num_samples)],
        images,
        labels,
        _AttackSpec.of(config),
        config.eps_grid,
        restarts=config.random_restarts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    return SweepResult(config.eps_grid, correct[0], distortion, clean)


def _settings(config: EvalConfig) -> dict:
    return {
        "attack": config.attack,
        "norm": config.norm,
        "pgd_steps": config.pgd_steps,
        "pgd_step_size": config.pgd_step_size,
        "random_restarts": config.random_restarts,
        "num_eot_samples": config.num_eot_samples,
        "num_samples": config.num_samples,
        "seed": config.seed,
    }


def sweep(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    *,
    label: str = "model",
    with_checks: bool = True,
    stochastic: bool | None = None,
    progress: bool = False,
) -> dict:
    """The report of one model: accuracy and distortion per eps, and the gradient-masking checks.

    Args:
      model_fn, images, labels, config, progress: as ``run_sweep``.
      label: the model's name in plots and tables.
      with_checks: run ``checks`` (else ``checks`` is an empty list).
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).

    Returns:
      A JSON-ready dict with ``mode`` "sweep", ``label``, ``num_examples``, ``clean_accuracy``,
      ``eps``, ``accuracy``, ``mean_distortion``, ``checks``, ``stochastic``, ``seconds`` and
      the attack settings (``attack``, ``norm``, ``pgd_steps``, ``pgd_step_size``,
      ``random_restarts``, ``num_eot_samples``, ``num_samples``, ``seed``).
    """
    started = time.time()
    images, labels = _prepare(images, labels, config)
    if stochastic is None:
        stochastic = is_stochastic(model_fn, images[: min(len(images), 8)])
    result = run_sweep(model_fn, images, labels, config, stochastic=stochastic, progress=progress)
    sweep_seconds = time.time() - started
    check_list = []
    if with_checks:
        check_list = checks(model_fn, images, labels, config, result, stochastic=stochastic)
    return {
        "mode": "sweep",
        "label": label,
        **_settings(config),
        "num_examples": result.num_examples,
        "clean_accuracy": result.clean_accuracy,
        "eps": list(result.eps),
        "accuracy": result.accuracy,
        "mean_distortion": result.mean_distortion,
        "checks": check_list,
        "stochastic": bool(stochastic),
        "seconds": {"sweep": sweep_seconds, "total": time.time() - started},
    }


# ----- gradient-masking checks -----------------------------------------------------------------


def _min_change(num_examples: int) -> float:
    """The smallest accuracy change a check acts on: one percentage point, or one example."""
    return max(0.01, 1.0 / num_examples)


def _paired_rise(before, after, stochastic: bool) -> dict:
    """How much accuracy rises from ``before`` to ``after`` (bool [N], same examples).

    A rise counts (``significant``) when it exceeds ``_min_change`` and, for a stochastic model
    whose per-example outcomes are themselves random, when the one-sided McNemar statistic
    ``z = (gained - lost) / sqrt(gained + lost)`` exceeds ``SIGNIFICANCE_Z`` as well. ``gained``
    counts examples correct only after, ``lost`` those correct only before.
    """
    before = np.asarray(before, bool)
    after = np.asarray(after, bool)
    gained = int(np.sum(after & ~before))
    lost = int(np.sum(before & ~after))
    rise = float(after.mean() - before.mean())
    z = (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0
    significant = rise > _min_change(len(before)) and (not stochastic or z > SIGNIFICANCE_Z)
    return {"rise": rise, "z": float(z), "gained": gained, "lost": lost, "significant": significant}


def _finish(check: dict) -> dict:
    if not check["passed"]:
        logging.warning("Gradient-masking check %r FAILED: %s", check["name"], check["message"])
    return check


def check_monotonic(eps: Sequence[float], correct, stochastic: bool) -> dict:
    """Accuracy must not increase with eps (a larger ball contains the smaller one).

    Args:
      eps: E increasing radii.
      correct: bool [E, N], per-example robustness at each eps.
      stochastic: whether the outcomes are random (then a rise must also be significant).
    """
    eps = [float(e) for e in eps]
    correct = np.asarray(correct, bool)
    accuracy = [float(a) for a in correct.mean(axis=1)]
    rises = [_paired_rise(correct[i], correct[i + 1], stochastic) for i in range(len(eps) - 1)]
    worst = int(np.argmax([r["rise"] for r in rises])) if rises else 0
    largest = rises[worst] if rises else {"rise": 0.0, "z": 0.0}
    failed = [i for i, r in enumerate(rises) if r["significant"]]
    if not failed:
        message = "accuracy does not increase with eps"
    else:
        first = failed[0]
        message = (
            f"accuracy rises by {rises[first]['rise']:.4f} (McNemar z = {rises[first]['z']:.1f}) "
            f"from eps={eps[first]:g} to eps={eps[first + 1]:g}: the attack fails to use the "
            "larger budget, which suggests gradient masking or an unsuitable step size; use "
            "more steps, random restarts, EOT or APGD"
        )
    return _finish(
        {
            "name": "accuracy_monotonic_in_eps",
            "passed": not failed,
            "eps": eps,
            "accuracy": accuracy,
            "max_increase": largest["rise"],
            "max_increase_z": largest["z"],
            "min_change": _min_change(correct.shape[1]),
            "message": message,
        }
    )


def check_unbounded(accuracy: float, num_examples: int, attack: str) -> dict:
    """An eps = 1 L-inf attack (the whole [0, 1] box) must drive accuracy to about 0."""
    threshold = max(UNBOUNDED_MAX_ACCURACY, 1.0 / num_examples)
    passed = accuracy <= threshold
    if passed:
        message = "an unbounded attack drives accuracy to about 0"
    else:
        message = (
            f"{accuracy:.4f} accuracy survives an eps=1 attack that may change every pixel: the "
            "gradients do not lead the attack anywhere, which suggests gradient masking or "
            "obfuscation (or a broken attack); robust accuracies at small eps are not credible"
        )
    return _finish(
        {
            "name": "unbounded_attack",
            "passed": bool(passed),
            "attack": attack,
            "eps": 1.0,
            "accuracy": float(accuracy),
            "threshold": threshold,
            "message": message,
        }
    )


def check_iterative_vs_single_step(
    iterative_correct,
    single_correct,
    eps: float,
    stochastic: bool,
    *,
    iterative: str,
    single: str,
) -> dict:
    """The iterative attack must be at least as strong as the single-step one, per example.

    Fails when the iterative attack leaves a higher accuracy (see ``_paired_rise``) or, for a
    deterministic model, when more than ``max(2%, 2 examples)`` of the examples are fooled by the
    single step only.

    Args:
      iterative_correct, single_correct: bool [N], correct after each attack at ``eps``.
    """
    iterative_correct = np.asarray(iterative_correct, bool)
    single_correct = np.asarray(single_correct, bool)
    num = len(iterative_correct)
    rise = _paired_rise(single_correct, iterative_correct, stochastic)
    only_single = float(np.mean(iterative_correct & ~single_correct))
    per_example_limit = max(0.02, 2.0 / num)
    passed = not rise["significant"] and (stochastic or only_single <= per_example_limit)
    if passed:
        message = f"{iterative} is at least as strong as {single}"
    else:
        message = (
            f"{single} fools {only_single:.4f} of the examples that {iterative} does not "
            f"(accuracy {single_correct.mean():.4f} vs {iterative_correct.mean():.4f}, McNemar "
            f"z = {rise['z']:.1f}): a single large step beating many small ones suggests a "
            "locally masked or noisy gradient; raise the steps or EOT samples, or use APGD"
        )
    return _finish(
        {
            "name": "iterative_at_least_single_step",
            "passed": bool(passed),
            "eps": float(eps),
            "iterative_attack": iterative,
            "single_step_attack": single,
            "iterative_accuracy": float(iterative_correct.mean()),
            "single_step_accuracy": float(single_correct.mean()),
            "fraction_fooled_only_by_single_step": only_single,
            "z": rise["z"],
            "message": message,
        }
    )


def check_more_steps(
    correct, correct_doubled, num_steps: int, eps: float, stochastic: bool
) -> dict:
    """Doubling the attack's steps must not change the accuracy by more than noise.

    A rise means more optimisation made the attack weaker (masked or noisy gradients); a drop
    means the attack had not converged, so the reported accuracies overstate robustness.

    Args:
      correct, correct_doubled: bool [N], correct after ``num_steps`` and ``2 * num_steps`` steps.
    """
    correct = np.asarray(correct, bool)
    correct_doubled = np.asarray(correct_doubled, bool)
    up = _paired_rise(correct, correct_doubled, stochastic)
    down = _paired_rise(correct_doubled, correct, stochastic)
    passed = not (up["significant"] or down["significant"])
    if passed:
        message = f"doubling the steps to {2 * num_steps} does not change the accuracy"
    elif up["significant"]:
        message = (
            f"accuracy rises by {up['rise']:.4f} (McNemar z = {up['z']:.1f}) with "
            f"{2 * num_steps} steps instead of {num_steps}: a longer attack doing worse suggests "
            "masked or noisy gradients; use EOT or APGD"
        )
    else:
        message = (
            f"accuracy drops by {down['rise']:.4f} (McNemar z = {down['z']:.1f}) with "
            f"{2 * num_steps} steps instead of {num_steps}: the attack has not converged and the "
            "reported accuracies overstate robustness; raise --pgd_steps"
        )
    return _finish(
        {
            "name": "more_steps_converged",
            "passed": bool(passed),
            "eps": float(eps),
            "num_steps": int(num_steps),
            "accuracy": float(correct.mean()),
            "accuracy_doubled_steps": float(correct_doubled.mean()),
            "change": up["rise"],
            "z": up["z"],
            "message": message,
        }
    )


def check_eot(
    correct_single_draw, correct_multi_draw, num_eot_samples: int, eps: float, stochastic: bool
) -> dict:
    """For a stochastic model, EOT over several draws must be at least as strong as one draw.

    Args:
      correct_single_draw, correct_multi_draw: bool [N], correct after the attack with one draw
        and with ``num_eot_samples`` draws per gradient (None for a deterministic model).
    """
    if not stochastic:
        return _finish(
            {
                "name": "eot_at_least_single_draw",
                "passed": True,
                "applicable": False,
                "eps": float(eps),
                "message": "deterministic model: every draw is the same, EOT changes nothing",
            }
        )
    single = np.asarray(correct_single_draw, bool)
    multi = np.asarray(correct_multi_draw, bool)
    rise = _paired_rise(single, multi, stochastic)
    passed = not rise["significant"]
    if passed:
        message = f"EOT over {num_eot_samples} draws is at least as strong as a single draw"
    else:
        message = (
            f"accuracy is {multi.mean():.4f} with {num_eot_samples}-draw EOT gradients but "
            f"{single.mean():.4f} with single draws (McNemar z = {rise['z']:.1f}): averaging "
            "gradients should only help the attacker, so the attack is unreliable on this model"
        )
    return _finish(
        {
            "name": "eot_at_least_single_draw",
            "passed": bool(passed),
            "applicable": True,
            "eps": float(eps),
            "num_eot_samples": int(num_eot_samples),
            "accuracy_single_draw": float(single.mean()),
            "accuracy_multi_draw": float(multi.mean()),
            "z": rise["z"],
            "message": message,
        }
    )


def check_nonzero_gradient(model_fn: Callable, images, labels, *, batch_size: int = 100) -> dict:
    """Input gradients of the cross-entropy (one draw) must be finite and non-zero per example.

    Args:
      images: float32 [N, H, W, 3] in [0, 1]; labels: int [N].
    """
    images = np.asarray(images, np.float32)
    evaluator = _Evaluator(model_fn, images)
    return _nonzero_gradient(evaluator, images, np.asarray(labels), batch_size)


def _nonzero_gradient(evaluator: _Evaluator, images, labels, batch_size: int) -> dict:
    gradient_fn = evaluator.input_gradient()
    norms = []
    finite = []
    for part in _batches(len(images), batch_size):
        grad = gradient_fn(
            tf.constant(images[part], tf.float32), tf.constant(labels[part], tf.int32)
        ).numpy()
        flat = grad.reshape(len(grad), -1)
        finite.append(np.isfinite(flat).all(axis=1))
        norms.append(np.abs(np.nan_to_num(flat)).sum(axis=1))
    norms = np.concatenate(norms)
    finite = np.concatenate(finite)
    zero_fraction = float(np.mean(norms == 0.0))
    nonfinite_fraction = float(np.mean(~finite))
    passed = zero_fraction <= ZERO_GRADIENT_MAX_FRACTION and nonfinite_fraction == 0.0
    if passed:
        message = "input gradients are finite and non-zero"
    else:
        message = (
            f"{zero_fraction:.4f} of the examples have an exactly zero input gradient and "
            f"{nonfinite_fraction:.4f} a non-finite one: gradient-based attacks get no signal, "
            "the textbook sign of gradient masking (non-differentiable or saturated layers); "
            "evaluate with a gradient-free or transfer attack, or BPDA"
        )
    return _finish(
        {
            "name": "nonzero_gradient",
            "passed": bool(passed),
            "fraction_zero_gradient": zero_fraction,
            "fraction_nonfinite_gradient": nonfinite_fraction,
            "mean_l1_gradient": float(np.mean(norms)),
            "threshold": ZERO_GRADIENT_MAX_FRACTION,
            "message": message,
        }
    )


def check_eps_of(eps_values: Sequence[float]) -> float | None:
    """The radius the checks attack at: the middle non-zero eps (0.035 on the CIFAR-10 grid)."""
    nonzero = sorted(e for e in eps_values if e > 0)
    if not nonzero:
        return None
    return nonzero[(len(nonzero) - 1) // 2]


def checks(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    result: SweepResult,
    *,
    stochastic: bool | None = None,
) -> list[dict]:
    """The automated gradient-masking checks of Carlini et al. (2019) on a finished sweep.

    Runs on the first ``config.check_examples`` examples, at ``check_eps_of(config.eps_grid)``:

    1. ``accuracy_monotonic_in_eps``: the sweep's accuracy does not increase with eps.
    2. ``unbounded_attack``: an eps = 1 L-inf attack (APGD when the sweep uses APGD, else PGD;
       ``max(pgd_steps, UNBOUNDED_MIN_STEPS)`` steps of ``2.5 / steps``) leaves at most
       ``UNBOUNDED_MAX_ACCURACY``.
    3. ``iterative_at_least_single_step``: the iterative attack (the sweep's, or PGD of the same
       norm when the sweep uses FGSM) is at least as strong as FGSM (L2: one normalized step of
       size eps), and on a deterministic model fools nearly every example FGSM fools.
    4. ``more_steps_converged``: doubling the iterative attack's steps at the same step size
       neither raises nor lowers its accuracy.
    5. ``nonzero_gradient``: input gradients are finite and not exactly zero.
    6. ``eot_at_least_single_draw`` (stochastic models): PGD/APGD averaging
       ``max(check_eot_samples, 2 * num_eot_samples)`` draws per step is at least as strong as
       one draw.

    Accuracy comparisons are paired, on the same examples: a change counts when it exceeds one
    percentage point (or one example) and, for a stochastic model, when a one-sided McNemar test
    puts it more than ``SIGNIFICANCE_Z`` standard errors from noise.

    Every check attacks with a single run (no restarts). Each entry is a dict with ``name``,
    ``passed``, the numbers behind the verdict and a ``message``; a failed check logs a warning
    saying what the failure suggests.
    """
    images, labels = _prepare(images, labels, config)
    num = min(len(images), config.check_examples, result.num_examples)
    images, labels = images[:num], labels[:num]
    evaluator = _Evaluator(model_fn, images, stochastic)
    stochastic = evaluator.stochastic
    outcome_cache = {}

    def correct_at(spec: _AttackSpec, eps: float) -> np.ndarray:
        key = (spec, eps)
        if key not in outcome_cache:
            correct, _ = _attack_outcomes(
                evaluator,
                [_Target(evaluator, config.num_samples)],
                images,
                labels,
                spec,
                [eps],
                restarts=0,
                batch_size=config.batch_size,
                seed=config.seed,
                progress=False,
            )
            outcome_cache[key] = correct[0, 0]
        return outcome_cache[key]

    configured = _AttackSpec.of(config)
    check_eps = check_eps_of(result.eps)
    if config.random_restarts == 0 and check_eps is not None:
        # The sweep already ran the configured attack at check_eps on these examples.
        outcome_cache[(configured, check_eps)] = result.correct[result.eps.index(check_eps), :num]

    found = [check_monotonic(result.eps, result.correct, stochastic)]

    unbounded_attack = "apgd" if config.attack == "apgd" else "pgd_linf"
    # Steps of 2.5 / 20 would bounce across the whole box: the unbounded attack gets at least
    # UNBOUNDED_MIN_STEPS steps, so a failure means the gradients, not the step size.
    unbounded = _AttackSpec.of(
        config,
        attack=unbounded_attack,
        num_steps=max(config.pgd_steps, UNBOUNDED_MIN_STEPS),
        step_size=None,
    )
    found.append(
        check_unbounded(
            float(correct_at(unbounded, 1.0).mean()), num, ATTACK_NAMES[unbounded_attack]
        )
    )

    if check_eps is None:
        skipped = {
            "passed": True,
            "applicable": False,
            "message": "not run: the eps grid has no eps > 0",
        }
        return [
            *found,
            {"name": "iterative_at_least_single_step", **skipped},
            {"name": "more_steps_converged", **skipped},
            _nonzero_gradient(evaluator, images, labels, config.batch_size),
            {"name": "eot_at_least_single_draw", **skipped},
        ]

    iterative = configured
    if config.attack == "fgsm":
        iterative = _AttackSpec.of(config, attack="pgd_linf")
    if config.norm == "linf":
        single = _AttackSpec.of(config, attack="fgsm")
        single_name = ATTACK_NAMES["fgsm"]
    else:
        single = _AttackSpec.of(config, attack="pgd_l2", num_steps=1, step_size=check_eps)
        single_name = "FGM (L2, one step)"
    iterative_correct = correct_at(iterative, check_eps)
    found.append(
        check_iterative_vs_single_step(
            iterative_correct,
            correct_at(single, check_eps),
            check_eps,
            stochastic,
            iterative=ATTACK_NAMES[iterative.attack],
            single=single_name,
        )
    )

    doubled = dataclasses.replace(
        iterative, num_steps=2 * iterative.num_steps, step_size=iterative.step_size_for(check_eps)
    )
    found.append(
        check_more_steps(
            iterative_correct,
            correct_at(doubled, check_eps),
            iterative.num_steps,
            check_eps,
            stochastic,
        )
    )

    found.append(_nonzero_gradient(evaluator, images, labels, config.batch_size))

    single_draw = multi_draw = None
    multi_samples = max(config.check_eot_samples, 2 * config.num_eot_samples)
    if stochastic:
        # C&W has no EOT: its check uses L2 PGD.
        eot_base = (
            iterative if iterative.attack != "cw" else _AttackSpec.of(config, attack="pgd_l2")
        )
        single_draw = correct_at(dataclasses.replace(eot_base, num_eot_samples=1), check_eps)
        multi_draw = correct_at(
            dataclasses.replace(eot_base, num_eot_samples=multi_samples), check_eps
        )
    found.append(check_eot(single_draw, multi_draw, multi_samples, check_eps, stochastic))
    return found


# ----- several models --------------------------------------------------------------------------


def markdown_table(labels: Sequence[str], eps: Sequence[float], accuracy, *, caption: str) -> str:
    """A Markdown table like the paper's Table 1: a row per model, accuracy (%) per eps."""
    lines = [caption, "", "| Model | " + " | ".join(f"{e:g}" for e in eps) + " |"]
    lines.append("|---|" + "---:|" * len(eps))
    for label, row in zip(labels, accuracy, strict=True):
        lines.append(f"| {label} | " + " | ".join(f"{100 * a:.1f}" for a in row) + " |")
    return "\n".join(lines) + "\n"


def _describe(config: EvalConfig) -> str:
    parts = [ATTACK_NAMES[config.attack]]
    if config.attack != "fgsm":
        parts.append(f"{config.pgd_steps} steps")
    if config.num_eot_samples > 1:
        parts.append(f"EOT {config.num_eot_samples}")
    if config.random_restarts:
        restarts = config.random_restarts
        parts.append(f"{restarts} random restart{'s' if restarts > 1 else ''}")
    parts.append(f"ensemble of {config.num_samples}")
    return ", ".join(parts)


def _check_models(model_fns: Mapping[str, Callable], minimum: int) -> list[str]:
    names = list(model_fns)
    if len(names) < minimum:
        raise ValueError(f"need at least {minimum} models, got {len(names)}: {names}")
    return names


def compare(
    model_fns: Mapping[str, Callable],
    images,
    labels,
    config: EvalConfig,
    *,
    with_checks: bool = True,
    stochastic: Mapping[str, bool] | None = None,
    progress: bool = False,
) -> dict:
    """Sweeps of several models on the same examples (paper Fig. 2 and Table 1).

    Args:
      model_fns: label -> model_fn, in plot and table order.
      stochastic: label -> whether that model is random (missing: found by calling it).

    Returns:
      dict with ``mode`` "compare", the attack settings, ``eps``, ``num_examples``,
      ``models`` (one ``sweep`` report per model, in order) and ``table_markdown``.
    """
    names = _check_models(model_fns, 1)
    images, labels = _prepare(images, labels, config)
    stochastic = stochastic or {}
    reports = [
        sweep(
            model_fns[name],
            images,
            labels,
            config,
            label=name,
            with_checks=with_checks,
            stochastic=stochastic.get(name),
            progress=progress,
        )
        for name in names
    ]
    caption = (
        f"Accuracy (%) under {_describe(config)}, on {len(images)} test examples "
        f"(eps in [0, 1] pixel scale, {config.norm})."
    )
    return {
        "mode": "compare",
        **_settings(config),
        "num_examples": len(images),
        "eps": list(config.eps_grid),
        "models": reports,
        "table_markdown": markdown_table(
            names, config.eps_grid, [r["accuracy"] for r in reports], caption=caption
        ),
    }


def transfer(
    model_fns: Mapping[str, Callable],
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float] | None = None,
    *,
    progress: bool = False,
) -> dict:
    """Black-box transfer: examples crafted on each source, ensemble accuracy on each target.

    The affinity matrix (the quantity of paper eq. 17 and Fig. 3, as defined here) is

        rho[s][t] = (clean_t - acc[s][t]) / (clean_t - acc[t][t]),

    where ``acc[s][t]`` is target t's ensemble accuracy on the examples crafted on source s
    (``acc[t][t]`` is t's white-box accuracy) and ``clean_t`` its clean accuracy: the share of
    its white-box accuracy loss that the transferred examples cause. ``rho[t][t] = 1``; it is
    None where ``clean_t <= acc[t][t]``.

    Args:
      model_fns: label -> model_fn (at least 2), the sources and targets.
      eps_values: the radii (default: ``check_eps_of(config.eps_grid)``).

    Returns:
      dict with ``mode`` "transfer", ``models`` (labels), ``eps``, ``clean_accuracy`` [T],
      ``accuracy`` [E][S][T], ``affinity`` [E][S][T] and ``affinity_definition``.
    """
    names = _check_models(model_fns, 2)
    images, labels = _prepare(images, labels, config)
    if eps_values is None:
        eps_values = [check_eps_of(config.eps_grid) or 0.0]
    eps_values = check_eps_values("eps_values", list(eps_values))
    evaluators = [_Evaluator(model_fns[name], images) for name in names]
    targets = [_Target(ev, config.num_samples) for ev in evaluators]
    clean = [
        float(
            _clean_correct(
                ev, images, labels, num_samples=config.num_samples, batch_size=config.batch_size
            ).mean()
        )
        for ev in evaluators
    ]
    spec = _AttackSpec.of(config)
    accuracy = np.zeros((len(eps_values), len(names), len(names)))
    for s, source in enumerate(evaluators):
        # Target 0 is the source itself, so the counted distortion is the white-box one.
        order = [s] + [t for t in range(len(names)) if t != s]
        correct, _ = _attack_outcomes(
            source,
            [targets[t] for t in order],
            images,
            labels,
            spec,
            eps_values,
            restarts=config.random_restarts,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
        for position, t in enumerate(order):
            accuracy[:, s, t] = correct[position].mean(axis=1)
    affinity = []
    for e in range(len(eps_values)):
        rows = []
        for s in range(len(names)):
            row = []
            for t in range(len(names)):
                white_box_loss = clean[t] - accuracy[e, t, t]
                row.append(
                    float((clean[t] - accuracy[e, s, t]) / white_box_loss)
                    if white_box_loss > 0
                    else None
                )
            rows.append(row)
        affinity.append(rows)
    return {
        "mode": "transfer",
        **_settings(config),
        "num_examples": len(images),
        "models": names,
        "eps": list(eps_values),
        "clean_accuracy": clean,
        "accuracy": accuracy.tolist(),
        "affinity": affinity,
        "affinity_definition": AFFINITY_DEFINITION,
    }


# ----- ablations of Fig. 4 ---------------------------------------------------------------------


def ensemble_sweep(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float],
    ensemble_sizes: Sequence[int],
    *,
    label: str = "model",
    progress: bool = False,
) -> dict:
    """Accuracy against the ensemble size n at each eps (paper Fig. 4, left).

    The attack (``config``; its own EOT draws) is crafted once per eps and the same adversarial
    images are scored with each n.

    Returns:
      dict with ``mode`` "ensemble_sweep", ``label``, ``eps`` [E], ``ensemble_sizes`` [K],
      ``clean_accuracy`` [K] and ``accuracy`` [E][K].
    """
    eps_values = check_eps_values("eps_values", list(eps_values))
    sizes = check_counts("ensemble_sizes", list(ensemble_sizes))
    images, labels = _prepare(images, labels, config)
    evaluator = _Evaluator(model_fn, images)
    clean = [
        float(
            _clean_correct(
                evaluator, images, labels, num_samples=n, batch_size=config.batch_size
            ).mean()
        )
        for n in sizes
    ]
    correct, _ = _attack_outcomes(
        evaluator,
        [_Target(evaluator, n) for n in sizes],
        images,
        labels,
        _AttackSpec.of(config),
        eps_values,
        restarts=config.random_restarts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    return {
        "mode": "ensemble_sweep",
        "label": label,
        **_settings(config),
        "num_examples": len(images),
        "eps": list(eps_values),
        "ensemble_sizes": list(sizes),
        "clean_accuracy": clean,
        "accuracy": correct.mean(axis=2).T.tolist(),
    }


def steps_sweep(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float],
    steps: Sequence[int],
    *,
    label: str = "model",
    progress: bool = False,
) -> dict:
    """Accuracy against the number of attack steps at each eps (paper Fig. 4, right).

    Each step count gets its own step size by the config's rule (fixed ``pgd_step_size``, or
    ``2.5 * eps / steps``).

    Returns:
      dict with ``mode`` "steps_sweep", ``label``, ``eps`` [E], ``steps`` [K] and
      ``accuracy`` [E][K].
    """
    if config.attack == "fgsm":
        raise ValueError("steps_sweep needs an iterative attack; fgsm always takes one step")
    eps_values = check_eps_values("eps_values", list(eps_values))
    steps = check_counts("steps", list(steps))
    images, labels = _prepare(images, labels, config)
    evaluator = _Evaluator(model_fn, images)
    accuracy = np.zeros((len(eps_values), len(steps)))
    for k, num_steps in enumerate(steps):
        correct, _ = _attack_outcomes(
            evaluator,
            [_Target(evaluator, config.num_samples)],
            images,
            labels,
            _AttackSpec.of(config, num_steps=num_steps),
            eps_values,
            restarts=config.random_restarts,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
        accuracy[:, k] = correct[0].mean(axis=1)
    return {
        "mode": "steps_sweep",
        "label": label,
        **_settings(config),
        "num_examples": len(images),
        "eps": list(eps_values),
        "steps": list(steps),
        "accuracy": accuracy.tolist(),
    }


# ----- models from a model_dir and their test data ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained run ready for evaluation.

    Attributes:
      model_fn: images -> logits of one fresh draw.
      config: the run's ``training.TrainConfig``.
      model_spec: ``num_classes``, ``image_shape`` and ``class_names``.
      source: "checkpoint" or "saved_model".
      label: a display name, from the defense.
    """

    model_fn: Callable
    config: training.TrainConfig
    model_spec: dict
    source: str
    label: str


def load_model(model_dir: str) -> LoadedModel:
    """The model of ``model_dir``: its latest checkpoint, else its SavedModel's sample_logits.

    Raises FileNotFoundError when ``model_dir`` has no config or has neither.
    """
    config = training.read_config(model_dir)
    label = DEFENSE_NAMES.get(config.defense, config.defense)
    if tf.train.latest_checkpoint(os.path.join(model_dir, training.CHECKPOINT_DIRNAME)):
        model, config, model_spec = training.restore_model(model_dir)

        def model_fn(images):
            return tf.cast(model(images, training=False), tf.float32)

        return LoadedModel(model_fn, config, model_spec, "checkpoint", label)
    path = os.path.join(model_dir, export.SAVED_MODEL_DIRNAME)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{model_dir} has neither a checkpoint in {training.CHECKPOINT_DIRNAME}/ nor a "
            f"SavedModel in {export.SAVED_MODEL_DIRNAME}/"
        )
    loaded = tf.saved_model.load(path)

    def saved_model_fn(images):
        # Reached through ``loaded``, which owns the variables the signature reads.
        return loaded.signatures["sample_logits"](images=images)["logits"]

    return LoadedModel(
        saved_model_fn, config, training.read_model_spec(model_dir), "saved_model", label
    )


def load_test_data(
    config: training.TrainConfig, *, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The run's test set (its ``max_test_examples`` honoured): float32 [N, H, W, 3], int32 [N].

    ``data_dir`` overrides the run's.
    """
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    return training.load_data_for(config).test_arrays()


# ----- outputs ---------------------------------------------------------------------------------


def _jsonable(value):
    """NaN and infinities become None (JSON has no such numbers); numpy values become Python."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, path: str) -> str:
    """Writes ``report`` as indented JSON to ``path`` atomically; returns ``path``."""
    training.write_text_atomically(
        path, json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"
    )
    return path


def _save_figure(figure, path: str) -> str:
    """Saves a matplotlib figure as PNG through a temporary file renamed over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(handle)
    try:
        figure.savefig(staging, format="png", dpi=120, bbox_inches="tight")
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    return path


def _figure(width: float = 7.0, height: float = 4.5):
    # A bare Figure draws with the Agg canvas and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _curves_figure(curves, *, title: str, xlabel: str, log_x: bool = False):
    """One line per (label, xs, accuracies in [0, 1]) with accuracy in % on the y axis."""
    figure = _figure()
    axes = figure.subplots()
    for label, xs, ys in curves:
        axes.plot(xs, [100.0 * y for y in ys], marker="o", markersize=4, label=label)
    if log_x:
        # Log spacing for counts up to 1000, labelled with the counts actually evaluated.
        xs = sorted({x for _, values, _ in curves for x in values})
        axes.set_xscale("log")
        axes.minorticks_off()
        axes.set_xticks(xs, [f"{x:g}" for x in xs])
    axes.set_xlabel(xlabel)
    axes.set_ylabel("Test accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return figure


def _eps_label(norm: str) -> str:
    return "\u03b5 (L\u221e, [0, 1] pixel scale)" if norm == "linf" else "\u03b5 (L2 norm)"


def _report_config_text(report: dict) -> str:
    parts = [ATTACK_NAMES[report["attack"]]]
    if report["attack"] != "fgsm":
        parts.append(f"{report['pgd_steps']} steps")
    if report["num_eot_samples"] > 1:
        parts.append(f"EOT {report['num_eot_samples']}")
    restarts = report.get("random_restarts", 0)
    if restarts:
        parts.append(f"{restarts} random restart{'s' if restarts > 1 else ''}")
    return ", ".join(parts)


def plot_report(report: dict, path: str) -> str:
    """Draws the figure of any report of this module as a PNG at ``path``; returns ``path``."""
    mode = report["mode"]
    if mode == "transfer":
        return _plot_transfer(report, path)
    attack_text = _report_config_text(report)
    if mode == "sweep":
        figure = _curves_figure(
            [(report["label"], report["eps"], report["accuracy"])],
            title=f"Accuracy vs \u03b5: {attack_text}, ensemble of {report['num_samples']}",
            xlabel=_eps_label(report["norm"]),
        )
    elif mode == "compare":
        figure = _curves_figure(
            [(m["label"], m["eps"], m["accuracy"]) for m in report["models"]],
            title=f"Accuracy vs \u03b5: {attack_text}, ensemble of {report['num_samples']}",
            xlabel=_eps_label(report["norm"]),
        )
    elif mode == "ensemble_sweep":
        figure = _curves_figure(
            [
                (f"\u03b5 = {eps:g}", report["ensemble_sizes"], row)
                for eps, row in zip(report["eps"], report["accuracy"], strict=True)
            ],
            title=f"{report['label']}: accuracy vs ensemble size ({attack_text})",
            xlabel="Ensemble size n (weight draws averaged per prediction)",
            log_x=len(report["ensemble_sizes"]) > 1 and max(report["ensemble_sizes"]) >= 20,
        )
    elif mode == "steps_sweep":
        figure = _curves_figure(
            [
                (f"\u03b5 = {eps:g}", report["steps"], row)
                for eps, row in zip(report["eps"], report["accuracy"], strict=True)
            ],
            title=(
                f"{report['label']}: accuracy vs attack steps "
                f"({ATTACK_NAMES[report['attack']]}, ensemble of {report['num_samples']})"
            ),
            xlabel="Attack steps",
            log_x=len(report["steps"]) > 1 and max(report["steps"]) >= 100,
        )
    else:
        raise ValueError(f"unknown report mode {mode!r}; expected one of {MODES}")
    return _save_figure(figure, path)


def _plot_transfer(report: dict, path: str) -> str:
    """Per eps, two heatmaps: target accuracy and affinity, sources on rows, targets on columns."""
    from matplotlib import colormaps

    names = report["models"]
    num_eps = len(report["eps"])
    side = 1.6 + 0.9 * len(names)
    figure = _figure(2 * side + 2.0, side * num_eps + 0.6)
    grid = figure.subplots(num_eps, 2, squeeze=False)
    colormap = colormaps["viridis"].with_extremes(bad="lightgray")
    for e, eps in enumerate(report["eps"]):
        accuracy = np.array(report["accuracy"][e], float) * 100.0
        affinity = np.array(
            [[np.nan if v is None else v for v in row] for row in report["affinity"][e]], float
        )
        panels = [
            (grid[e][0], accuracy, 100.0, "Target accuracy (%)", "{:.1f}"),
            (grid[e][1], affinity, 1.0, "Affinity \u03c1 (eq. 17)", "{:.2f}"),
        ]
        for axes, values, top, what, fmt in panels:
            image = axes.imshow(
                np.ma.masked_invalid(values), cmap=colormap, vmin=0.0, vmax=top, aspect="equal"
            )
            for s in range(len(names)):
                for t in range(len(names)):
                    value = values[s, t]
                    if np.isnan(value):
                        text, color = "n/a", "black"
                    else:
                        # Dark text on the bright end of viridis, light text elsewhere.
                        text, color = fmt.format(value), "black" if value > 0.6 * top else "white"
                    axes.text(t, s, text, ha="center", va="center", color=color, fontsize=9)
            axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
            axes.set_yticks(range(len(names)), names)
            axes.set_xlabel("Target model (evaluated)")
            axes.set_ylabel("Source model (crafts the attack)")
            axes.set_title(f"{what}, \u03b5 = {eps:g}")
            figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(
        f"Transfer attack: {_report_config_text(report)}, ensemble of {report['num_samples']}"
    )
    return _save_figure(figure, path)
