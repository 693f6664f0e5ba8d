"""Honest counting and the Fig. 4 step rule, on hand-built models whose answers are known.

- ``robust_accuracy`` pairs the clean and adversarial predictions of the same draws;
- the adaptive protocol's worst case is the per-example AND of its attacks;
- ``steps_sweep`` with a fixed step makes the path ``steps * step`` long (the reference's Fig. 4);
- transfer puts sources on rows and targets on columns.
"""

import numpy as np
import pytest
import tensorflow as tf
from eval_support import LINEAR_SHAPE as SHAPE
from eval_support import linear_problem

from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation.sweeps import run_sweep, steps_sweep, sweep
from tfp_advbnn.evaluation.transfer import transfer


def config(**values):
    defaults = dict(num_samples=1, batch_size=32, check_examples=16)
    return EvalConfig(**{**defaults, **values})


@pytest.mark.parametrize("step", [0.002, 0.005])
def test_steps_sweep_with_a_fixed_step_walks_steps_times_step(step):
    model_fn, images, labels, margins = linear_problem()
    eps, steps = 0.03, [1, 2, 4, 8]
    report = steps_sweep(model_fn, images, labels, config(), [eps], steps, step_size=step)
    # PGD from the clean image moves every pixel by min(k * step, eps) against the margin.
    expected = [float(np.mean(margins > min(k * step, eps))) for k in steps]
    assert report["accuracy"][0] == pytest.approx(expected)
    assert report["fixed_step_size"] == step
    # The 2.5 * eps / k rule keeps the path at 2.5 * eps: every step count reaches the boundary.
    rule = steps_sweep(model_fn, images, labels, config(), [eps], steps, step_size=None)
    assert rule["accuracy"][0] == pytest.approx([float(np.mean(margins > eps))] * len(steps))


def test_robust_accuracy_pairs_clean_and_adversarial_predictions_of_the_same_draws():
    # One fair coin per call, shared by the whole batch, decides the class of every input: the
    # clean and adversarial halves of one scoring call always agree. Scored with separate draws
    # they would agree half the time, and robust accuracy would be about a quarter.
    def coin_fn(x):
        heads = tf.cast(tf.random.uniform([]) < 0.5, tf.float32)
        logits = tf.stack([heads, 1.0 - heads]) * 10.0
        return tf.tile(logits[None], [tf.shape(x)[0], 1])

    images = np.full((96, *SHAPE), 0.5, np.float32)
    labels = np.zeros(96, np.int32)
    result = run_sweep(
        coin_fn, images, labels, config(eps_grid=(0.0, 0.02), attack_steps=2), stochastic=True
    )
    np.testing.assert_array_equal(result.robust, result.correct)
    # Batches of 32 share a coin: the accuracy is a multiple of 1/3 and not all 0 or all 1.
    assert 0.0 < np.mean(result.correct) < 1.0


def test_robust_accuracy_drops_examples_wrong_when_clean():
    model_fn, images, labels, margins = linear_problem()
    flipped = labels.copy()
    flipped[:16] = 1 - flipped[:16]  # wrong when clean; the attack can only make them "right"
    eps = 0.02
    result = run_sweep(model_fn, images, flipped, config(eps_grid=(0.0, eps), attack_steps=10))
    clean = np.arange(64) >= 16
    np.testing.assert_array_equal(result.robust[0], clean)
    np.testing.assert_array_equal(result.robust[1], clean & (margins > eps))
    # Against a wrong label the attack only pushes further from it: both counts agree here.
    np.testing.assert_array_equal(result.correct[1], result.robust[1])


def test_adaptive_worst_case_is_the_and_of_its_attacks_and_the_report_says_what_ran():
    model_fn, images, labels, _ = linear_problem()
    adaptive = config(protocol="adaptive", eps_grid=(0.0, 0.02), attack_steps=5, square_examples=0)
    report = sweep(model_fn, images, labels, adaptive, with_checks=False, stochastic=False)
    per_attack = report["attacks"]
    assert [a["attack"] for a in per_attack] == ["apgd", "apgd_dlr"]
    # A deterministic model gets one draw per step: EOT would only repeat the same gradient.
    assert [a["num_eot_samples"] for a in per_attack] == [1, 1]
    assert all(a["num_steps"] == 5 for a in per_attack)
    for e in range(2):
        worst = min(a["robust_accuracy"][e] for a in per_attack)
        assert report["robust_accuracy"][e] <= worst + 1e-12
    low, high = report["robust_accuracy_interval"][1]
    assert low <= report["robust_accuracy"][1] <= high
    result = run_sweep(model_fn, images, labels, adaptive, stochastic=False)
    np.testing.assert_array_equal(
        result.correct, result.attacks[0].correct & result.attacks[1].correct
    )


def test_adaptive_protocol_defaults_and_refusals():
    adaptive = EvalConfig(protocol="adaptive")
    assert adaptive.attack_steps == 100 and adaptive.square_examples == 100
    assert adaptive.eot_samples_for("apgd", stochastic=True) == 20
    assert adaptive.eot_samples_for("apgd", stochastic=False) == 1
    assert EvalConfig(protocol="adaptive", num_eot_samples=5).eot_samples_for("apgd", True) == 5
    paper = EvalConfig()
    assert (paper.attack, paper.attack_steps, paper.square_examples) == ("pgd_linf", 20, 0)
    assert paper.eot_samples_for("pgd_linf", stochastic=True) == 1
    with pytest.raises(ValueError, match="attack: protocol=adaptive"):
        EvalConfig(protocol="adaptive", attack="pgd_linf")
    with pytest.raises(ValueError, match="adaptive_attacks"):
        EvalConfig(protocol="adaptive", adaptive_attacks=("apgd", "pgd_l2"))


def test_transfer_puts_sources_on_rows_and_targets_on_columns():
    # A: the linear model. C: a constant model that always answers the true class and has no
    # input gradient. A's examples cannot fool C; C's gradient is zero, so its "attack" leaves
    # the clean images, which A classifies correctly.
    model_fn, images, labels, margins = linear_problem()
    labels = np.zeros_like(labels)  # C answers 0; A is judged against 0 too

    def constant_fn(x):
        return (
            tf.tile(tf.constant([[10.0, 0.0]]), [tf.shape(x)[0], 1])
            + 0.0 * tf.reduce_sum(x, axis=[1, 2, 3], keepdims=False)[:, None]
        )

    a_correct_clean = model_fn(tf.constant(images)).numpy().argmax(1) == 0
    a_clean = float(a_correct_clean.mean())
    eps = 0.02
    a_white_box = float(np.mean(a_correct_clean & (margins > eps)))
    report = transfer(
        {"A": model_fn, "C": constant_fn},
        images,
        labels,
        config(attack_steps=10),
        [eps],
    )
    accuracy = np.array(report["accuracy"][0])
    np.testing.assert_allclose(accuracy, [[a_white_box, 1.0], [a_clean, 1.0]])
