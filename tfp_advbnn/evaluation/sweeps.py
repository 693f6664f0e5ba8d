"""Accuracy-vs-eps sweeps of one model (paper Fig. 2), and the ablations of paper Fig. 4.

``run_sweep`` gives per-example outcomes (the worst case over the protocol's attacks); ``sweep``
turns them into a report with intervals and the gradient-masking checks; ``ensemble_sweep`` and
``steps_sweep`` vary the ensemble size and the number of attack steps (``protocol=paper``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from tfp_advbnn import validation
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine, protocols, reports
from tfp_advbnn.evaluation.checks import checks, square_check
from tfp_advbnn.evaluation.engine import SweepResult
from tfp_advbnn.evaluation.protocols import REFERENCE_STEP_SIZE, AttackSpec
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

    Runs each attack of the protocol (``protocols.attack_plan``) on every example; an example
    counts as correct (robust) at an eps only if it is after every attack: the worst case per
    example.

    Args:
      model_fn: float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C]; one call, one draw.
      images: float32 [N, H, W, 3] in [0, 1].
      labels: int [N] class ids.
      config: the protocol, its attacks and their settings.
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).
      progress: show a progress bar (on a terminal only).
    """
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images, stochastic)
    clean = engine.clean_correct(
        evaluator, images, labels, num_samples=config.num_samples, batch_size=config.batch_size
    )
    if config.cascade:
        return _cascade(evaluator, images, labels, config, clean, progress)
    results = []
    correct = robust = distortion = None
    for spec in protocols.attack_plan(config, evaluator.stochastic):
        outcomes = engine.attack_outcomes(
            evaluator,
            [engine.Target(evaluator, config.num_samples)],
            images,
            labels,
            spec,
            config.eps_grid,
            restarts=config.random_restarts,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
        results.append(engine.AttackResult(spec, outcomes.correct[0], outcomes.robust[0]))
        if correct is None:
            correct, robust = outcomes.correct[0].copy(), outcomes.robust[0].copy()
            distortion = outcomes.distortion.copy()
            continue
        newly_fooled = correct & ~outcomes.correct[0]
        distortion = np.where(newly_fooled, outcomes.distortion, distortion)
        correct &= outcomes.correct[0]
        robust &= outcomes.robust[0]
    return SweepResult(config.eps_grid, correct, robust, distortion, clean, tuple(results))


def _cascade(
    evaluator: engine.Evaluator,
    images: np.ndarray,
    labels: np.ndarray,
    config: EvalConfig,
    clean: np.ndarray,
    progress: bool,
) -> SweepResult:
    """``run_sweep`` as AutoAttack runs it: each attack only on the examples still robust.

    Radii go in increasing order and an example fooled at a smaller eps counts as fooled at
    every larger one (its adversarial image lies in the larger ball too), so each attack at each
    eps runs only on the examples that have survived everything before it; clean-misclassified
    examples are never attacked. ``robust`` is the worst case over the attacks, as without the
    cascade (up to the draws: an example fooled once stays fooled); ``correct`` equals
    ``robust``, and each ``AttackResult`` holds the cumulative outcome after that attack.
    """
    plan = protocols.attack_plan(config, evaluator.stochastic)
    eps_values = config.eps_grid  # sorted ascending by EvalConfig
    alive = clean.copy()
    robust = np.zeros((len(eps_values), len(images)), bool)
    distortion = np.zeros((len(eps_values), len(images)), np.float32)
    after_attack = np.zeros((len(plan), len(eps_values), len(images)), bool)
    for e, eps in enumerate(eps_values):
        if e > 0:
            distortion[e] = distortion[e - 1]
        for k, spec in enumerate(plan):
            attacked = np.flatnonzero(alive)
            # At eps = 0 nothing is crafted: one scoring call stands for every attack.
            if attacked.size and (eps > 0 or k == 0):
                outcomes = engine.attack_outcomes(
                    evaluator,
                    [engine.Target(evaluator, config.num_samples)],
                    images[attacked],
                    labels[attacked],
                    spec,
                    [eps],
                    restarts=config.random_restarts,
                    batch_size=config.batch_size,
                    seed=config.seed,
                    progress=progress,
                )
                survived = outcomes.robust[0, 0]
                # As without the cascade: the first attack's norm, or that of the attack fooling.
                counted = slice(None) if k == 0 else ~survived
                distortion[e, attacked[counted]] = outcomes.distortion[0][counted]
                alive[attacked[~survived]] = False
            after_attack[k, e] = alive
        robust[e] = alive
    results = tuple(
        engine.AttackResult(spec, after_attack[k], after_attack[k]) for k, spec in enumerate(plan)
    )
    return SweepResult(eps_values, robust.copy(), robust, distortion, clean, results)


def accuracy_fields(result: SweepResult) -> dict:
    """A sweep's accuracies with their 95 % Wilson intervals, as report fields."""
    accuracy, accuracy_interval = reports.rates(result.correct)
    robust, robust_interval = reports.rates(result.robust)
    clean, clean_interval = reports.rates(result.clean_correct)
    return {
        "clean_accuracy": clean,
        "clean_accuracy_interval": clean_interval,
        "accuracy": accuracy,
        "accuracy_interval": accuracy_interval,
        "robust_accuracy": robust,
        "robust_accuracy_interval": robust_interval,
    }


def attack_fields(attack: engine.AttackResult) -> dict:
    """One attack of a sweep on its own: what ran and its accuracies with intervals."""
    accuracy, accuracy_interval = reports.rates(attack.correct)
    robust, robust_interval = reports.rates(attack.robust)
    return {
        **attack.spec.settings(),
        "accuracy": accuracy,
        "accuracy_interval": accuracy_interval,
        "robust_accuracy": robust,
        "robust_accuracy_interval": robust_interval,
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
    """The report of one model: accuracies and distortion per eps, the checks.

    Args:
      model_fn, images, labels, config, progress: as ``run_sweep``.
      label: the model's name in plots and tables.
      with_checks: run the gradient-masking ``checks`` (the Square check runs whenever
        ``config.square_examples`` > 0).
      stochastic: whether ``model_fn`` is random (None: found by calling it twice).

    Returns:
      A JSON-ready dict with ``mode`` "sweep", ``label``, ``num_examples``, ``eps``, the
      accuracies of ``accuracy_fields`` (``accuracy``: the paper's count; ``robust_accuracy``:
      clean and adversarial both correct; each with ``_interval``), ``mean_distortion``,
      ``attacks`` (each attack alone, ``attack_fields``), ``checks``, ``notes``,
      ``stochastic``, ``seconds`` and the settings (``protocol``, ``attack``, ``norm``,
      ``pgd_steps``, ``pgd_step_size``, ``random_restarts``, ``num_eot_samples`` (of the first
      attack, as it ran), ``num_samples``, ``seed``).

    Examples:
      >>> report = sweep(model_fn, images, labels, EvalConfig(protocol="adaptive"))
      >>> report["robust_accuracy"], report["robust_accuracy_interval"]
    """
    if config.cascade and with_checks:
        raise ValueError(
            "cascade: the gradient-masking checks need each attack's own outcome on every "
            "example, which the cascade does not compute; run the checks without the cascade, "
            "or turn them off (with_checks=False, --nochecks)"
        )
    started = time.time()
    images, labels = engine.prepare(images, labels, config)
    if stochastic is None:
        stochastic = engine.draws_differ(model_fn, images[: min(len(images), 8)])
    result = run_sweep(model_fn, images, labels, config, stochastic=stochastic, progress=progress)
    sweep_seconds = time.time() - started
    check_list = []
    if with_checks:
        check_list = checks(model_fn, images, labels, config, result, stochastic=stochastic)
    if config.square_examples > 0:
        for radius in config.square_eps or (protocols.diagnosis_eps(result.eps),):
            check_list.append(
                square_check(
                    model_fn, images, labels, config, result, stochastic=stochastic, radius=radius
                )
            )
    ran = [attack.spec.settings() for attack in result.attacks]
    notes = reports.plan_notes(ran, bool(stochastic))
    if config.cascade:
        notes.append(
            "cascade: each attack and each larger eps ran only on the examples still robust, "
            "clean-misclassified ones never; accuracy equals robust_accuracy and each attack's "
            "figures are cumulative (robust after it and every attack before it)"
        )
    return {
        "mode": "sweep",
        "label": label,
        **report_settings(config),
        "num_eot_samples": result.attacks[0].spec.num_eot_samples,
        "num_examples": result.num_examples,
        "eps": list(result.eps),
        **accuracy_fields(result),
        "mean_distortion": result.mean_distortion,
        "attacks": [attack_fields(attack) for attack in result.attacks],
        "checks": check_list,
        "notes": notes,
        "cascade": config.cascade,
        "stochastic": bool(stochastic),
        "seconds": {"sweep": sweep_seconds, "total": time.time() - started},
    }


def _single_attack(config: EvalConfig, mode: str) -> None:
    if config.protocol != "paper":
        raise ValueError(
            f"protocol: mode={mode} runs one attack (protocol=paper); protocol={config.protocol} "
            "applies to mode=sweep and mode=compare"
        )
    no_cascade(config, mode)


def no_cascade(config: EvalConfig, mode: str) -> None:
    """ValueError naming ``cascade`` when it is set for a mode that attacks every example."""
    if config.cascade:
        raise ValueError(
            f"cascade: mode={mode} scores every example under every setting; the cascade "
            "applies to mode=sweep and mode=compare"
        )


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
      ``clean_accuracy`` [K], ``accuracy`` [E][K] and ``robust_accuracy`` [E][K], each with
      its ``_interval`` ([..., 2]).
    """
    _single_attack(config, "ensemble_sweep")
    eps_values = validation.unit_values("eps_values", list(eps_values))
    sizes = validation.integer_values("ensemble_sizes", list(ensemble_sizes))
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images)
    clean = np.stack(
        [
            engine.clean_correct(
                evaluator, images, labels, num_samples=n, batch_size=config.batch_size
            )
            for n in sizes
        ]
    )
    spec = AttackSpec.of(config, stochastic=evaluator.stochastic)
    outcomes = engine.attack_outcomes(
        evaluator,
        [engine.Target(evaluator, n) for n in sizes],
        images,
        labels,
        spec,
        eps_values,
        restarts=config.random_restarts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    clean_accuracy, clean_interval = reports.rates(clean)
    # Outcomes are [K, E, N]; reports are [E][K].
    accuracy, accuracy_interval = reports.rates(outcomes.correct.transpose(1, 0, 2))
    robust, robust_interval = reports.rates(outcomes.robust.transpose(1, 0, 2))
    return {
        "mode": "ensemble_sweep",
        "label": label,
        **report_settings(config),
        "num_eot_samples": spec.num_eot_samples,
        "num_examples": len(images),
        "eps": list(eps_values),
        "ensemble_sizes": list(sizes),
        "clean_accuracy": clean_accuracy,
        "clean_accuracy_interval": clean_interval,
        "accuracy": accuracy,
        "accuracy_interval": accuracy_interval,
        "robust_accuracy": robust,
        "robust_accuracy_interval": robust_interval,
    }


def steps_sweep(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float],
    steps: Sequence[int],
    *,
    step_size: float | None = REFERENCE_STEP_SIZE,
    label: str = "model",
    progress: bool = False,
) -> dict:
    """Accuracy against the number of attack steps at each eps (paper Fig. 4, right).

    Args:
      step_size: the step of every step count, in pixel scale, so more steps make a longer
        path, as the reference ran Fig. 4 (0.007 on CIFAR-10). None: the config's rule
        (``pgd_step_size``, else ``2.5 * eps / steps``: the path stays 2.5 * eps, and more
        steps only refine it). Must be None when ``config.pgd_step_size`` is set.

    Returns:
      dict with ``mode`` "steps_sweep", ``label``, ``eps`` [E], ``steps`` [K],
      ``fixed_step_size``, ``accuracy`` [E][K] and ``robust_accuracy`` [E][K], each with its
      ``_interval`` ([E][K][2]).
    """
    _single_attack(config, "steps_sweep")
    if config.attack == "fgsm":
        raise ValueError("steps_sweep needs an iterative attack; fgsm always takes one step")
    if step_size is not None:
        validation.unit_interval("fixed_step_size", step_size, open_low=True)
        if config.pgd_step_size is not None:
            raise ValueError(
                f"fixed_step_size={step_size} and pgd_step_size={config.pgd_step_size} both set "
                "the step of steps_sweep; give one"
            )
    eps_values = validation.unit_values("eps_values", list(eps_values))
    steps = validation.integer_values("steps", list(steps))
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images)
    correct = np.zeros((len(eps_values), len(steps), len(images)), bool)
    robust = np.zeros_like(correct)
    for k, num_steps in enumerate(steps):
        overrides = {"num_steps": num_steps}
        if step_size is not None:
            overrides["step_size"] = step_size
        spec = AttackSpec.of(config, stochastic=evaluator.stochastic, **overrides)
        outcomes = engine.attack_outcomes(
            evaluator,
            [engine.Target(evaluator, config.num_samples)],
            images,
            labels,
            spec,
            eps_values,
            restarts=config.random_restarts,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
        correct[:, k] = outcomes.correct[0]
        robust[:, k] = outcomes.robust[0]
    accuracy, accuracy_interval = reports.rates(correct)
    robust_accuracy, robust_interval = reports.rates(robust)
    return {
        "mode": "steps_sweep",
        "label": label,
        **report_settings(config),
        "num_eot_samples": spec.num_eot_samples,
        "num_examples": len(images),
        "eps": list(eps_values),
        "steps": list(steps),
        "fixed_step_size": step_size,
        "accuracy": accuracy,
        "accuracy_interval": accuracy_interval,
        "robust_accuracy": robust_accuracy,
        "robust_accuracy_interval": robust_interval,
    }
