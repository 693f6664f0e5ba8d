"""Accuracy-vs-eps sweeps of one model (paper Fig. 2), and the ablations of paper Fig. 4.

``run_sweep`` gives per-example outcomes; ``sweep`` turns them into a report with the
gradient-masking checks; ``ensemble_sweep`` and ``steps_sweep`` vary the ensemble size and the
number of attack steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from tfp_advbnn import validation
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine
from tfp_advbnn.evaluation.checks import checks
from tfp_advbnn.evaluation.engine import SweepResult
from tfp_advbnn.evaluation.protocols import AttackSpec
from tfp_advbnn.evaluation.reports import report_settings


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
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images, stochastic)
    clean = engine.clean_correct(
        evaluator, images, labels, num_samples=config.num_samples, batch_size=config.batch_size
    )
    correct, distortion = engine.attack_outcomes(
        evaluator,
        [engine.Target(evaluator, config.num_samples)],
        images,
        labels,
        AttackSpec.of(config),
        config.eps_grid,
        restarts=config.random_restarts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    return SweepResult(config.eps_grid, correct[0], distortion, clean)


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
    images, labels = engine.prepare(images, labels, config)
    if stochastic is None:
        stochastic = engine.draws_differ(model_fn, images[: min(len(images), 8)])
    result = run_sweep(model_fn, images, labels, config, stochastic=stochastic, progress=progress)
    sweep_seconds = time.time() - started
    check_list = []
    if with_checks:
        check_list = checks(model_fn, images, labels, config, result, stochastic=stochastic)
    return {
        "mode": "sweep",
        "label": label,
        **report_settings(config),
        "num_examples": result.num_examples,
        "clean_accuracy": result.clean_accuracy,
        "eps": list(result.eps),
        "accuracy": result.accuracy,
        "mean_distortion": result.mean_distortion,
        "checks": check_list,
        "stochastic": bool(stochastic),
        "seconds": {"sweep": sweep_seconds, "total": time.time() - started},
    }


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
    eps_values = validation.unit_values("eps_values", list(eps_values))
    sizes = validation.integer_values("ensemble_sizes", list(ensemble_sizes))
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images)
    clean = [
        float(
            engine.clean_correct(
                evaluator, images, labels, num_samples=n, batch_size=config.batch_size
            ).mean()
        )
        for n in sizes
    ]
    correct, _ = engine.attack_outcomes(
        evaluator,
        [engine.Target(evaluator, n) for n in sizes],
        images,
        labels,
        AttackSpec.of(config),
        eps_values,
        restarts=config.random_restarts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    return {
        "mode": "ensemble_sweep",
        "label": label,
        **report_settings(config),
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
    eps_values = validation.unit_values("eps_values", list(eps_values))
    steps = validation.integer_values("steps", list(steps))
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images)
    accuracy = np.zeros((len(eps_values), len(steps)))
    for k, num_steps in enumerate(steps):
        correct, _ = engine.attack_outcomes(
            evaluator,
            [engine.Target(evaluator, config.num_samples)],
            images,
            labels,
            AttackSpec.of(config, num_steps=num_steps),
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
        **report_settings(config),
        "num_examples": len(images),
        "eps": list(eps_values),
        "steps": list(steps),
        "accuracy": accuracy.tolist(),
    }
