"""Tests for tfp_advbnn.attacks.eot: fresh weight draws per call, mean gradients, input tapes."""

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import counting_model, linear_problem

from tfp_advbnn.attacks.apgd import apgd
from tfp_advbnn.attacks.cw import cw_l2
from tfp_advbnn.attacks.pgd import fgsm, pgd


@pytest.mark.parametrize("in_graph", [False, True])
@pytest.mark.parametrize(
    "attack, num_eot_samples, expected_calls",
    [
        ("pgd", 1, 5),
        ("pgd", 3, 15),
        ("fgsm", 4, 4),
        ("apgd", 1, 6),
        ("apgd", 2, 12),
        ("cw", 1, 5),
    ],
)
def test_every_step_draws_fresh_weights(in_graph, attack, num_eot_samples, expected_calls):
    model_fn, calls, draws = counting_model()
    images = np.random.default_rng(2).uniform(size=(4, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0], np.int32)

    def run(x, y):
        if attack == "pgd":
            return pgd(
                model_fn,
                x,
                y,
                eps=0.1,
                step_size=0.02,
                num_steps=5,
                num_eot_samples=num_eot_samples,
            )
        if attack == "fgsm":
            return fgsm(model_fn, x, y, eps=0.1, num_eot_samples=num_eot_samples)
        if attack == "apgd":
            return apgd(model_fn, x, y, eps=0.1, num_steps=5, num_eot_samples=num_eot_samples)
        return cw_l2(model_fn, x, y, num_steps=5)

    if in_graph:
        run = tf.function(run)
    run(images, labels)
    assert int(calls.numpy()) == expected_calls
    noises = draws.numpy()[:expected_calls]
    assert len(np.unique(noises)) == expected_calls


def test_eot_gradient_is_the_mean_over_separate_draws():
    # The model cycles through three weight matrices, one per call, so FGSM with three EOT samples
    # must step along the sign of the mean of the three input gradients.
    rng = np.random.default_rng(4)
    all_weights = rng.normal(size=(3, 48, 3)).astype(np.float32)
    calls = tf.Variable(0)

    def model_fn(x):
        w = tf.gather(all_weights, calls % 3)
        calls.assign_add(1)
        return tf.reshape(x, [-1, 48]) @ w

    images = rng.uniform(0.3, 0.7, size=(5, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=5).astype(np.int32)
    x = tf.constant(images)
    grads = []
    for w in all_weights:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.reshape(x, [-1, 48]) @ w
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        grads.append(tape.gradient(loss, x).numpy())
    eps = 0.05
    expected = images + eps * np.sign(np.mean(grads, axis=0))
    x_adv = fgsm(model_fn, images, labels, eps=eps, num_eot_samples=3)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    # A single draw follows the first matrix only, which differs from the average.
    single = fgsm(model_fn, images, labels, eps=eps)
    np.testing.assert_allclose(single, images + eps * np.sign(grads[0]), atol=1e-6)
    assert not np.allclose(single, expected)


@pytest.mark.parametrize("attack", ["pgd", "apgd", "cw"])
def test_attacks_compute_only_input_gradients(attack):
    # spy() marks the weight read. Its backward function runs only if a tape recorded the read,
    # i.e. if the tape watched the variable, so it counts weight-gradient work.
    spy_backward_calls = []

    @tf.custom_gradient
    def spy(value):
        def grad(upstream):
            spy_backward_calls.append(1)
            return upstream

        return tf.identity(value), grad

    model_fn_plain, weights, bias, images, labels = linear_problem(num_classes=3)
    variable = tf.Variable(weights)

    def model_fn(x):
        return tf.reshape(x, [-1, 48]) @ spy(variable) + bias

    # Control: a default tape watches the variable and the probe fires.
    with tf.GradientTape() as tape:
        x = tf.constant(images)
        tape.watch(x)
        loss = tf.reduce_sum(model_fn(x))
    tape.gradient(loss, x)
    assert spy_backward_calls

    spy_backward_calls.clear()
    if attack == "pgd":
        x_adv = pgd(model_fn, images, labels, eps=0.05, step_size=0.01, num_steps=3)
    elif attack == "apgd":
        x_adv = apgd(model_fn, images, labels, eps=0.05, num_steps=3, seed=0)
    else:
        x_adv = cw_l2(model_fn, images, labels, num_steps=3)
    assert not spy_backward_calls
    assert np.abs(x_adv.numpy() - images).max() > 0.0


def _dlr_numpy(labels, logits):
    """Croce & Hein (2020), eq. 6, written out per example."""
    values = []
    for label, row in zip(labels, logits, strict=True):
        ordered = np.sort(row)[::-1]
        best_other = np.max(np.delete(row, label))
        values.append(-(row[label] - best_other) / (ordered[0] - ordered[2] + 1e-12))
    return np.array(values)


def test_dlr_loss_matches_the_formula_and_ignores_logit_shift_and_scale():
    from tfp_advbnn.attacks.eot import dlr

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(64, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=64).astype(np.int32)
    # Make some examples correctly classified, so both signs of the margin occur.
    logits[np.arange(32), labels[:32]] += 10
    got = dlr(tf.constant(labels), tf.constant(logits)).numpy()
    np.testing.assert_allclose(got, _dlr_numpy(labels, logits), rtol=1e-5, atol=1e-6)
    # Negative exactly where the true class has the largest logit.
    np.testing.assert_array_equal(got < 0, np.argmax(logits, axis=1) == labels)
    shifted = dlr(tf.constant(labels), tf.constant(7.0 * logits - 4.0)).numpy()
    np.testing.assert_allclose(shifted, got, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 classes"):
        dlr(tf.constant(labels[:4] % 2), tf.constant(logits[:4, :2]))


def test_apgd_dlr_fools_a_linear_model_within_its_ball():
    rng = np.random.default_rng(0)
    weights = tf.constant(rng.normal(size=(3 * 4 * 4, 5)).astype(np.float32))
    images = rng.uniform(size=(32, 4, 4, 3)).astype(np.float32)

    def model_fn(x):
        return tf.reshape(x, (-1, 48)) @ weights

    labels = np.argmax(model_fn(images).numpy(), axis=1).astype(np.int32)
    eps = 0.05
    adversarial = apgd(model_fn, images, labels, eps=eps, num_steps=20, seed=1, loss="dlr").numpy()
    assert np.abs(adversarial - images).max() <= eps + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    still_correct = np.argmax(model_fn(adversarial).numpy(), axis=1) == labels
    # A linear model's DLR ascent finds the closest other class: far fewer stay correct.
    assert still_correct.mean() < 0.5
