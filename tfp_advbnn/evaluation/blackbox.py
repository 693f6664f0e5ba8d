"""The gradient-free check: a score-based attack must not beat the white-box attacks.

White-box attacks follow gradients; a model can mislead them (masked, shattered or noisy
gradients) without being robust. Square (``attacks.square``), which only queries the ensemble's
probabilities, cannot be misled that way. If it fools examples that survived every white-box
attack of the same report, beyond noise, the white-box accuracies overstate robustness: the
textbook sign of gradient masking (Carlini et al. 2019; AutoAttack's ``check_square_sr``).

``square_outcomes`` runs Square and scores its images with a fresh ensemble; ``check_square``
turns the two sets of per-example outcomes into a verdict like those of ``checks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfp_advbnn import models, validation
from tfp_advbnn.attacks.square import square_attack
from tfp_advbnn.evaluation import engine
from tfp_advbnn.evaluation.checks import _finish, _paired_rise

CHECK_NAME = "black_box_not_stronger"
BLACK_BOX_ATTACK = "Square (L\u221e)"


def square_outcomes(
    model_fn: Callable,
    images,
    labels,
    *,
    eps: float,
    num_samples: int,
    max_queries: int,
    seed: int | None,
    batch_size: int,
) -> np.ndarray:
    """Whether the ensemble classifies each example correctly after Square at ``eps``.

    Square queries the ``num_samples``-draw ensemble (``attacks.square.square_attack``); its
    images are then scored by a fresh ensemble of ``num_samples`` draws (one call for a
    deterministic model), so a point that fooled one lucky ensemble during the search does not
    count unless it fools a new one too.

    Args:
      model_fn: float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C], one draw per call.
      images: float32 [N, H, W, 3] in [0, 1].
      labels: int [N].
      eps: L-inf radius in the [0, 1] pixel scale.
      num_samples: int >= 1, ensemble size of the queries and of the scoring.
      max_queries: int >= 1, Square iterations.
      seed: None or int >= 0, seeds Square's proposals.
      batch_size: int >= 1, images per model call.

    Returns:
      bool np.ndarray [N].

    Examples:
        >>> correct = square_outcomes(model_fn, images, labels, eps=8 / 255, num_samples=10,
        ...                           max_queries=1000, seed=0, batch_size=128)  # doctest: +SKIP
    """
    x_adv = square_attack(
        model_fn,
        images,
        labels,
        eps=eps,
        num_samples=num_samples,
        max_queries=max_queries,
        seed=seed,
        batch_size=batch_size,
    )
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    if not engine.draws_differ(model_fn, images[: min(len(images), 8)]):
        num_samples = 1  # every draw of a deterministic model is the same

    @tf.function(input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.float32)])
    def predict(x):
        probabilities = models.ensemble_probabilities(model_fn, x, num_samples)
        return tf.argmax(probabilities, axis=-1, output_type=tf.int32)

    correct = np.zeros(len(images), bool)
    for part in engine.batches(len(images), batch_size):
        correct[part] = predict(tf.constant(x_adv[part])).numpy() == labels[part]
    return correct


def check_square(
    white_box_correct,
    square_correct,
    eps: float,
    stochastic: bool,
    *,
    attack_names: Sequence[str],
) -> dict:
    """Square must not find more adversarial examples than the white-box attacks.

    ``white_box_correct`` is either the per-example worst case over the white-box attacks
    (bool [N]: correct after every one of them) or one row per attack (bool [A, N], A =
    ``len(attack_names)``), whose worst case is taken here. The check fails when Square's
    accuracy is lower than the worst case's by more than noise (``checks._paired_rise``: more
    than one point or one example, and for a stochastic model a one-sided McNemar z above
    ``checks.SIGNIFICANCE_Z``) or, on a deterministic model, when Square alone fools more than
    ``max(2%, 2 examples)``: examples every white-box attack missed but a gradient-free search
    found mean the gradients misled the white-box attacks.

    Args:
      white_box_correct: bool [N] or [A, N], correct after the white-box attacks at ``eps``.
      square_correct: bool [N], correct after Square at ``eps`` (``square_outcomes``), same
        examples in the same order.
      eps: the radius both were run at, [0, 1] pixel scale.
      stochastic: whether the model's outcomes are random.
      attack_names: the white-box attacks, e.g. ``["APGD-CE (L\u221e)", "APGD-DLR (L\u221e)"]``.

    Returns:
      dict with ``name`` ("black_box_not_stronger"), ``passed``, ``eps``, ``black_box_attack``,
      ``white_box_attacks``, ``white_box_accuracy`` (worst case), ``square_accuracy``,
      ``fraction_fooled_only_by_square``, ``fraction_fooled_only_by_white_box``, ``z``,
      ``per_attack_accuracy`` (with [A, N] outcomes) and ``message``.

    Examples:
        >>> check_square([True, False], [True, False], 0.03, False,
        ...              attack_names=["PGD"])["passed"]
        True
    """
    eps = validation.unit_interval("eps", eps)
    attack_names = [str(name) for name in attack_names]
    if not attack_names:
        raise ValueError("attack_names must name at least one white-box attack, got none")
    white = np.asarray(white_box_correct, bool)
    square = np.asarray(square_correct, bool)
    if square.ndim != 1 or len(square) == 0:
        raise ValueError(f"square_correct must have shape [N] with N >= 1, got {square.shape}")
    per_attack = None
    if white.ndim == 2:
        if white.shape[0] != len(attack_names):
            raise ValueError(
                f"white_box_correct has {white.shape[0]} rows but attack_names names "
                f"{len(attack_names)} attacks: {attack_names}"
            )
        per_attack = dict(zip(attack_names, (float(v) for v in white.mean(axis=1)), strict=True))
        white = white.all(axis=0)
    if white.shape != square.shape:
        raise ValueError(
            f"white_box_correct must cover the {len(square)} examples of square_correct, got "
            f"shape {np.asarray(white_box_correct).shape}"
        )
    num = len(square)
    rise = _paired_rise(square, white, bool(stochastic))
    only_square = float(np.mean(white & ~square))
    only_white = float(np.mean(square & ~white))
    per_example_limit = max(0.02, 2.0 / num)
    passed = not rise["significant"] and (stochastic or only_square <= per_example_limit)
    names = ", ".join(attack_names)
    if passed:
        message = f"the gradient-free Square attack finds no more adversarial examples than {names}"
    else:
        message = (
            f"the gradient-free Square attack fools {only_square:.4f} of the examples that "
            f"survive {names} (accuracy {square.mean():.4f} under Square vs {white.mean():.4f} "
            f"under the white-box worst case, McNemar z = {rise['z']:.1f}): an attack that never "
            "sees a gradient beating gradient-based ones is a sign of gradient masking; the "
            "white-box accuracies overstate robustness, so report the worst case over all "
            "attacks, Square included, and attack with EOT, more steps or BPDA"
        )
    check = {
        "name": CHECK_NAME,
        "passed": bool(passed),
        "eps": eps,
        "black_box_attack": BLACK_BOX_ATTACK,
        "white_box_attacks": attack_names,
        "white_box_accuracy": float(white.mean()),
        "square_accuracy": float(square.mean()),
        "fraction_fooled_only_by_square": only_square,
        "fraction_fooled_only_by_white_box": only_white,
        "z": rise["z"],
        "message": message,
    }
    if per_attack is not None:
        check["per_attack_accuracy"] = per_attack
    return _finish(check)
