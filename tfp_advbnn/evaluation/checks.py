"""The gradient-masking checks of Carlini et al. (2019) on a finished sweep.

Each ``check_*`` function turns per-example outcomes into a verdict: a dict with ``name``,
``passed``, the numbers behind it and a ``message`` saying what a failure suggests (a failed check
is also logged as a warning). ``checks`` runs the attacks they need and returns them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfp_advbnn import attacks
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine
from tfp_advbnn.evaluation.protocols import AttackSpec, diagnosis_eps

# Gradient-masking thresholds (Carlini et al. 2019, "On Evaluating Adversarial Robustness").
UNBOUNDED_MAX_ACCURACY = 0.05  # an eps = 1 attack must leave at most this accuracy
UNBOUNDED_MIN_STEPS = 50  # steps of that attack, at least
# A stochastic model's accuracy changes only count when a paired (McNemar) test finds them this
# many standard errors away from noise: about 1 false alarm in 700 comparisons.
SIGNIFICANCE_Z = 3.0
ZERO_GRADIENT_MAX_FRACTION = 0.01  # at most this fraction of examples may have a zero gradient
# Steps of the PGD that stronger attacks are compared with: the paper's PGD-20.
PGD_REFERENCE_STEPS = 20


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
            "reported accuracies overstate robustness; raise attack_steps (--pgd_steps)"
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


def check_not_weaker_than_pgd(
    attack_correct, pgd_correct, eps: float, stochastic: bool, *, attack: str, pgd: str
) -> dict:
    """An attack meant to be stronger than PGD (APGD, C&W) must not leave a higher accuracy.

    Both attacks ran on the same examples; the comparison is paired (see ``_paired_rise``). A
    failure means the stronger attack's result, and any worst case built on it, is not
    credible: on a stochastic model, the usual cause is APGD's step-size rule following the
    noise of single-draw losses.

    Args:
      attack_correct, pgd_correct: bool [N], correct after each attack at ``eps``.
      attack, pgd: their descriptions.
    """
    attack_correct = np.asarray(attack_correct, bool)
    pgd_correct = np.asarray(pgd_correct, bool)
    rise = _paired_rise(pgd_correct, attack_correct, stochastic)
    passed = not rise["significant"]
    if passed:
        message = f"{attack} is at least as strong as {pgd}"
    else:
        message = (
            f"{attack} leaves {attack_correct.mean():.4f} accuracy where {pgd} leaves "
            f"{pgd_correct.mean():.4f} (McNemar z = {rise['z']:.1f}): the stronger attack is "
            "weaker here, so its numbers understate the threat; on a stochastic model average "
            "its gradients over more draws (--num_eot_samples=20), and quote the lower figure"
        )
    return _finish(
        {
            "name": "not_weaker_than_pgd",
            "passed": bool(passed),
            "eps": float(eps),
            "attack": attack,
            "pgd_attack": pgd,
            "accuracy": float(attack_correct.mean()),
            "pgd_accuracy": float(pgd_correct.mean()),
            "z": rise["z"],
            "message": message,
        }
    )


def _nonzero_gradient(evaluator: engine.Evaluator, images, labels, batch_size: int) -> dict:
    gradient_fn = evaluator.input_gradient()
    norms = []
    finite = []
    for part in engine.batches(len(images), batch_size):
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


def checks(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    result: engine.SweepResult,
    *,
    stochastic: bool | None = None,
) -> list[dict]:
    """The automated gradient-masking checks of Carlini et al. (2019) on a finished sweep.

    Runs on the first ``config.check_examples`` examples, at ``diagnosis_eps(config.eps_grid)``:

    1. ``accuracy_monotonic_in_eps``: the sweep's accuracy does not increase with eps.
    2. ``unbounded_attack``: an eps = 1 L-inf attack (APGD when the sweep uses APGD, else PGD;
       ``max(attack_steps, UNBOUNDED_MIN_STEPS)`` steps of ``2.5 / steps``) leaves at most
       ``UNBOUNDED_MAX_ACCURACY``.
    3. ``iterative_at_least_single_step``: the iterative attack (the sweep's, or PGD of the same
       norm when the sweep uses FGSM) is at least as strong as FGSM (L2: one normalized step of
       size eps), and on a deterministic model fools nearly every example FGSM fools.
    4. ``more_steps_converged``: doubling the iterative attack's steps at the same step size
       neither raises nor lowers its accuracy.
    5. ``nonzero_gradient``: input gradients are finite and not exactly zero.
    6. ``eot_at_least_single_draw`` (stochastic models): PGD/APGD averaging
       ``max(check_eot_samples, 2 * its EOT draws)`` draws per step is at least as strong as
       one draw.
    7. ``not_weaker_than_pgd``, one per attack of the protocol that is not PGD or FGSM (APGD-CE,
       APGD-DLR, C&W): it leaves no higher accuracy than PGD of the same norm with
       ``PGD_REFERENCE_STEPS`` steps and the attack's EOT draws.

    Accuracy comparisons are paired, on the same examples: a change counts when it exceeds one
    percentage point (or one example) and, for a stochastic model, when a one-sided McNemar test
    puts it more than ``SIGNIFICANCE_Z`` standard errors from noise.

    Every check attacks with a single run (no restarts). Each entry is a dict with ``name``,
    ``passed``, the numbers behind the verdict and a ``message``; a failed check logs a warning
    saying what the failure suggests.
    """
    images, labels = engine.prepare(images, labels, config)
    num = min(len(images), config.check_examples, result.num_examples)
    images, labels = images[:num], labels[:num]
    evaluator = engine.Evaluator(model_fn, images, stochastic)
    stochastic = evaluator.stochastic
    outcome_cache = {}

    def correct_at(spec: AttackSpec, eps: float) -> np.ndarray:
        key = (spec, eps)
        if key not in outcome_cache:
            outcomes = engine.attack_outcomes(
                evaluator,
                [engine.Target(evaluator, config.num_samples)],
                images,
                labels,
                spec,
                [eps],
                restarts=0,
                batch_size=config.batch_size,
                seed=config.seed,
                progress=False,
            )
            outcome_cache[key] = outcomes.correct[0, 0]
        return outcome_cache[key]

    configured = AttackSpec.of(config, stochastic=stochastic)
    radius = diagnosis_eps(result.eps)
    if config.random_restarts == 0 and radius is not None:
        # The sweep already ran each attack of its protocol at this radius on these examples.
        for attack in result.attacks:
            outcome_cache[(attack.spec, radius)] = attack.correct[result.eps.index(radius), :num]

    found = [check_monotonic(result.eps, result.correct, stochastic)]

    unbounded_attack = configured.attack if configured.attack.startswith("apgd") else "pgd_linf"
    # Steps of 2.5 / 20 would bounce across the whole box: the unbounded attack gets at least
    # UNBOUNDED_MIN_STEPS steps, so a failure means the gradients, not the step size.
    unbounded = AttackSpec.of(
        config,
        stochastic=stochastic,
        attack=unbounded_attack,
        num_steps=max(config.attack_steps, UNBOUNDED_MIN_STEPS),
        step_size=None,
    )
    found.append(
        check_unbounded(
            float(correct_at(unbounded, 1.0).mean()),
            num,
            attacks.get(unbounded_attack).display_name,
        )
    )

    if radius is None:
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
    if configured.attack == "fgsm":
        iterative = AttackSpec.of(config, stochastic=stochastic, attack="pgd_linf")
    if config.norm == "linf":
        single = AttackSpec.of(config, stochastic=stochastic, attack="fgsm")
        single_name = attacks.get("fgsm").display_name
    else:
        single = AttackSpec.of(
            config, stochastic=stochastic, attack="pgd_l2", num_steps=1, step_size=radius
        )
        single_name = "FGM (L2, one step)"
    iterative_correct = correct_at(iterative, radius)
    found.append(
        check_iterative_vs_single_step(
            iterative_correct,
            correct_at(single, radius),
            radius,
            stochastic,
            iterative=attacks.get(iterative.attack).display_name,
            single=single_name,
        )
    )

    doubled = dataclasses.replace(
        iterative, num_steps=2 * iterative.num_steps, step_size=iterative.step_size_for(radius)
    )
    found.append(
        check_more_steps(
            iterative_correct,
            correct_at(doubled, radius),
            iterative.num_steps,
            radius,
            stochastic,
        )
    )

    found.append(_nonzero_gradient(evaluator, images, labels, config.batch_size))

    single_draw = multi_draw = None
    multi_samples = max(config.check_eot_samples, 2 * iterative.num_eot_samples)
    if stochastic:
        # C&W has no EOT: its check uses L2 PGD.
        eot_base = iterative
        if iterative.attack == "cw":
            eot_base = AttackSpec.of(config, stochastic=stochastic, attack="pgd_l2")
        single_draw = correct_at(dataclasses.replace(eot_base, num_eot_samples=1), radius)
        multi_draw = correct_at(
            dataclasses.replace(eot_base, num_eot_samples=multi_samples), radius
        )
    found.append(check_eot(single_draw, multi_draw, multi_samples, radius, stochastic))

    pgd_name = "pgd_linf" if config.norm == "linf" else "pgd_l2"
    for attack in result.attacks:
        if attack.spec.attack in ("pgd_linf", "pgd_l2", "fgsm"):
            continue
        eot = attack.spec.num_eot_samples
        if attack.spec.attack == "cw":
            # C&W averages no draws: its PGD gets the EOT PGD would get under this config.
            eot = config.eot_samples_for(pgd_name, stochastic)
        pgd = AttackSpec.of(
            config,
            stochastic=stochastic,
            attack=pgd_name,
            num_steps=PGD_REFERENCE_STEPS,
            num_eot_samples=eot,
            step_size=None,
        )
        found.append(
            check_not_weaker_than_pgd(
                correct_at(attack.spec, radius),
                correct_at(pgd, radius),
                radius,
                stochastic,
                attack=attack.spec.describe(),
                pgd=pgd.describe(),
            )
        )
    return found


def square_check(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    result: engine.SweepResult,
    *,
    stochastic: bool,
    radius: float | None = None,
) -> dict:
    """The black-box check: Square must not fool more than the sweep's white-box worst case.

    Runs ART's Square attack (``tfp_advbnn.evaluation.blackbox``) on the ensemble of
    ``config.num_samples`` draws, on the first ``config.square_examples`` examples at
    ``radius`` (a radius of the sweep; None: ``diagnosis_eps``), with ``config.square_queries``
    queries per example. L-inf only.

    Raises ImportError naming the ``attacks`` extra when ART is not installed.
    """
    if radius is None:
        radius = diagnosis_eps(result.eps)
    elif radius not in result.eps:
        raise ValueError(f"radius={radius} is not a radius of the sweep {list(result.eps)}")
    if radius is None or config.norm != "linf":
        why = "the eps grid has no eps > 0" if radius is None else "Square here is L-inf only"
        return {
            "name": "black_box_not_stronger",
            "passed": True,
            "applicable": False,
            "message": f"not run: {why}",
        }
    from tfp_advbnn.evaluation import blackbox

    images, labels = engine.prepare(images, labels, config)
    num = min(config.square_examples, result.num_examples)
    square_correct = blackbox.square_outcomes(
        model_fn,
        images[:num],
        labels[:num],
        eps=radius,
        num_samples=config.num_samples,
        max_queries=config.square_queries,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    white_box = result.correct[result.eps.index(radius), :num]
    names = [attack.spec.describe(config.random_restarts) for attack in result.attacks]
    return blackbox.check_square(white_box, square_correct, radius, stochastic, attack_names=names)
