"""The gradient-free check: verdicts on crafted outcomes, and end to end on linear models whose
gradient is honest or masked (``tf.stop_gradient``), deterministic and stochastic."""

import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn import attacks, models
from tfp_advbnn.evaluation.blackbox import check_square, square_outcomes

SIDE = 8
DIM = SIDE * SIDE * 3
NUM_CLASSES = 3
EPS = 0.08


def _outcomes(num, correct_indices):
    """bool [num], True at ``correct_indices``."""
    correct = np.zeros(num, bool)
    correct[list(correct_indices)] = True
    return correct


def test_passes_when_the_white_box_attacks_are_stronger():
    square = _outcomes(50, range(30))
    white = _outcomes(50, range(20))  # fools every example Square fools, and ten more
    for stochastic in (False, True):
        verdict = check_square(white, square, 0.03, stochastic, attack_names=["PGD"])
        assert verdict["passed"]
        assert verdict["name"] == "black_box_not_stronger"
        assert verdict["white_box_accuracy"] == pytest.approx(0.4)
        assert verdict["square_accuracy"] == pytest.approx(0.6)
        assert verdict["fraction_fooled_only_by_square"] == 0.0
        assert verdict["fraction_fooled_only_by_white_box"] == pytest.approx(0.2)


def test_fails_when_square_fools_examples_the_white_box_worst_case_missed(caplog):
    # Deterministic, 50 examples: the white-box attacks fool 0-9, Square fools 3-12 instead.
    # Square alone fools 10, 11, 12: 3 examples = 6% > max(2%, 2/50) = 4%, although the
    # accuracies differ by 0 (the white-box attacks fool 0, 1, 2 that Square misses).
    white = _outcomes(50, range(10, 50))
    square = _outcomes(50, [*range(3), *range(13, 50)])
    with caplog.at_level(logging.WARNING):
        verdict = check_square(white, square, 0.03, False, attack_names=["PGD", "APGD-CE"])
    assert not verdict["passed"]
    assert verdict["fraction_fooled_only_by_square"] == pytest.approx(3 / 50)
    assert verdict["z"] == 0.0
    assert "gradient masking" in verdict["message"] and "PGD, APGD-CE" in verdict["message"]
    assert "black_box_not_stronger" in caplog.text
    # Two examples (4%) is within the per-example allowance.
    square[12] = True
    assert check_square(white, square, 0.03, False, attack_names=["PGD"])["passed"]


def test_stochastic_outcomes_fail_only_beyond_mcnemar_noise():
    # 200 examples, Square fools 0-99. Noise: Square alone fools 0-5, the white-box attacks
    # alone fool 100-103: z = (6 - 4) / sqrt(10) = 0.63, a stochastic model passes, while a
    # deterministic one fails (6 examples = 3% fooled only by Square > max(2%, 2/200)).
    square = _outcomes(200, range(100, 200))
    white = square.copy()
    white[:6] = True
    white[100:104] = False
    noisy = check_square(white, square, 0.03, True, attack_names=["APGD-CE, EOT 20"])
    assert noisy["passed"]
    assert noisy["z"] == pytest.approx(2 / math.sqrt(10))
    assert not check_square(white, square, 0.03, False, attack_names=["PGD"])["passed"]
    # Square alone fools 20, the white-box attacks alone 2: z = 18 / sqrt(22) = 3.84 > 3, and
    # the accuracies differ by 9 points.
    white = square.copy()
    white[:20] = True
    white[100:102] = False
    strong = check_square(white, square, 0.03, True, attack_names=["APGD-CE, EOT 20"])
    assert not strong["passed"]
    assert strong["z"] == pytest.approx(18 / math.sqrt(22))
    assert strong["white_box_accuracy"] - strong["square_accuracy"] == pytest.approx(0.09)


def test_per_attack_rows_are_reduced_to_their_worst_case():
    pgd = _outcomes(10, range(6))
    apgd = _outcomes(10, range(2, 8))  # worst case with PGD: 2-5 correct
    square = _outcomes(10, range(2, 6))
    verdict = check_square(
        np.stack([pgd, apgd]), square, 0.03, False, attack_names=["PGD", "APGD-CE"]
    )
    assert verdict["passed"]
    assert verdict["white_box_accuracy"] == pytest.approx(0.4)
    assert verdict["per_attack_accuracy"] == {"PGD": 0.6, "APGD-CE": 0.6}
    # Against PGD alone Square fools 0 and 1 too: 20% of the examples.
    assert not check_square(pgd, square, 0.03, False, attack_names=["PGD"])["passed"]


@pytest.mark.parametrize(
    "white, square, names, needle",
    [
        (np.ones((2, 4), bool), np.ones(4, bool), ["PGD"], "2 rows but attack_names names 1"),
        (np.ones(5, bool), np.ones(4, bool), ["PGD"], "must cover the 4 examples"),
        (np.ones(4, bool), np.ones((1, 4), bool), ["PGD"], r"square_correct must have shape \[N\]"),
        (np.ones(4, bool), np.ones(4, bool), [], "at least one white-box attack"),
    ],
)
def test_bad_outcomes_are_refused(white, square, names, needle):
    with pytest.raises(ValueError, match=needle):
        check_square(white, square, 0.03, False, attack_names=names)


def linear_model(masked, noise=0.0, seed=0):
    """A 3-class linear model on [B, 8, 8, 3] images; ``masked`` hides its input gradient.

    With ``noise`` > 0 every call adds N(0, noise^2) to each logit (a stochastic model).
    """
    rng = np.random.default_rng(seed)
    weights = tf.constant(rng.normal(size=(DIM, NUM_CLASSES)), tf.float32)
    bias = tf.constant(rng.normal(size=(NUM_CLASSES,)), tf.float32)

    def model_fn(x):
        if masked:
            x = tf.stop_gradient(x)
        logits = tf.reshape(x, [-1, DIM]) @ weights + bias
        if noise:
            logits += tf.random.normal(tf.shape(logits), stddev=noise)
        return logits

    return model_fn


def problem(num=40, seed=0):
    """Images the noiseless model classifies correctly (labels are its predictions)."""
    images = np.random.default_rng(seed + 1).uniform(0.1, 0.9, (num, SIDE, SIDE, 3))
    images = images.astype(np.float32)
    labels = np.argmax(linear_model(False, seed=seed)(images).numpy(), axis=1).astype(np.int32)
    return images, labels


def white_box_outcomes(model_fn, images, labels, num_samples):
    """bool [2, N]: the ensemble is correct after PGD-20 and after APGD-CE (20 steps)."""
    rows = []
    for name, settings in (
        ("pgd_linf", dict(step_size=EPS / 4, num_steps=20)),
        ("apgd", dict(num_steps=20, seed=0)),
    ):
        x_adv = attacks.get(name)(model_fn, images, labels, eps=EPS, **settings)
        probabilities = models.ensemble_probabilities(model_fn, x_adv, num_samples)
        rows.append(np.argmax(probabilities.numpy(), axis=1) == labels)
    return np.stack(rows)


@pytest.mark.parametrize("noise", [0.0, 0.1], ids=["deterministic", "stochastic"])
def test_end_to_end_the_check_catches_a_masked_gradient_and_passes_an_honest_one(noise):
    images, labels = problem()
    num_samples = 4 if noise else 1
    verdicts = {}
    for masked in (False, True):
        model_fn = linear_model(masked, noise)
        white = white_box_outcomes(model_fn, images, labels, num_samples)
        square = square_outcomes(
            model_fn,
            images,
            labels,
            eps=EPS,
            num_samples=num_samples,
            max_queries=100,
            seed=0,
            batch_size=64,
        )
        verdicts[masked] = check_square(
            white, square, EPS, bool(noise), attack_names=["PGD (L\u221e)", "APGD-CE (L\u221e)"]
        )
    honest, masked = verdicts[False], verdicts[True]
    # The same linear map: PGD follows its exact gradient, so it beats the black-box search ...
    assert honest["passed"], honest["message"]
    assert honest["white_box_accuracy"] <= honest["square_accuracy"]
    # ... but behind stop_gradient PGD cannot move, while Square finds the same examples.
    assert not masked["passed"]
    assert masked["per_attack_accuracy"]["PGD (L\u221e)"] >= 0.9
    assert masked["square_accuracy"] <= masked["white_box_accuracy"] - 0.3
    assert "gradient masking" in masked["message"]
