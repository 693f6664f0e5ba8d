"""Tests for tfp_advbnn.attacks.apgd: the returned point, step halving, the ensemble pick."""

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import accuracy, counting_model, l2, linear_problem, linf, trained_cifar_model

from tfp_advbnn.attacks.apgd import apgd, apgd_checkpoints, ensemble_pick
from tfp_advbnn.attacks.pgd import pgd


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


def test_apgd_returns_highest_loss_point_when_the_label_cannot_change():
    # A bias of 8 for each example's own class makes misclassification impossible within eps
    # (the logit margin moves by at most eps * ||w_1 - w_0||_1, about 3), so
    # APGD must return its highest-loss point: the analytic optimum eps * sign(w_other - w_y).
    model_fn, weights, _, images, labels = linear_problem()
    onehot = tf.one_hot(labels, 2)

    def confident_fn(x):
        return model_fn(x) + 8.0 * onehot

    eps = 0.05
    x_adv = apgd(confident_fn, images, labels, eps=eps, num_steps=10, seed=0)
    assert np.all(np.argmax(confident_fn(x_adv), axis=1) == labels)
    direction = np.sign(weights[:, 1 - labels] - weights[:, labels]).T.reshape(images.shape)
    np.testing.assert_allclose(x_adv, images + eps * direction, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("l2", 0.5), ("linf", 0.1)])
def test_apgd_step_halving_converges_to_an_interior_maximum(norm, eps):
    # The loss peaks at a point strictly inside the ball. Steps of the initial size 2 * eps keep
    # jumping over it (as PGD with that fixed step shows), so APGD gets close only by halving.
    rng = np.random.default_rng(5)
    images = np.full((4, 4, 4, 3), 0.5, np.float32)
    if norm == "l2":
        direction = rng.normal(size=images.shape)
        direction /= np.sqrt(np.sum(direction**2, axis=(1, 2, 3), keepdims=True))
        peak = images + 0.5 * eps * direction
    else:
        peak = images + rng.uniform(-0.5 * eps, 0.5 * eps, size=images.shape)
    peak = peak.astype(np.float32)
    labels = np.zeros(4, np.int32)

    def model_fn(x):
        # Class 0 always wins (no misclassified point), and the loss grows as x nears the peak.
        sq_dist = tf.reduce_sum(tf.square(x - peak), axis=[1, 2, 3])
        return tf.stack([tf.zeros_like(sq_dist), -10.0 * sq_dist - 0.1], axis=1)

    start_dist = l2(images - peak)
    x_apgd = apgd(model_fn, images, labels, eps=eps, num_steps=40, norm=norm, seed=0)
    x_pgd = pgd(
        model_fn,
        images,
        labels,
        eps=eps,
        step_size=2 * eps,
        num_steps=40,
        norm=norm,
        random_start=True,
        seed=0,
    )
    assert np.all(l2(x_apgd.numpy() - peak) < 0.1 * start_dist)
    assert np.all(l2(x_pgd.numpy() - peak) > 0.5 * start_dist)


def _noisy_margin_model(noise_std, seed):
    """Two classes; the class-1 logit is the image mean scaled by 20, plus fresh noise per call.

    Without noise an image of mean m is class 1 when m > 0 and its class-0 cross-entropy grows
    with m. The noise is independent of x, so gradients are exact but single-draw losses and
    single-draw predictions are noisy.
    """
    generator = tf.random.Generator.from_seed(seed)

    def model_fn(x):
        signal = 20.0 * tf.reduce_mean(x, axis=[1, 2, 3]) - 10.0
        noise = noise_std * generator.normal(tf.shape(signal))
        return tf.stack([tf.zeros_like(signal), signal + noise], axis=1)

    return model_fn


def test_ensemble_pick_prefers_what_fools_the_ensemble_over_single_draw_luck():
    # Three candidates per example with noise-free margins -1 (robust), +0.5 (fools the
    # ensemble) and -0.2 (robust, higher loss than the first); in random order per example.
    # Single draws with noise std 3 flip about 40% of predictions, but 400 draws must pick the
    # +0.5 candidate every time, and among robust ones the higher-loss one.
    model_fn = _noisy_margin_model(noise_std=3.0, seed=3)
    rng = np.random.default_rng(0)
    margins = np.array([-1.0, 0.5, -0.2], np.float32)
    order = np.stack([rng.permutation(3) for _ in range(12)])
    candidates = [
        np.broadcast_to(((margins[order[:, k]] + 10.0) / 20.0)[:, None, None, None], (12, 2, 2, 3))
        for k in range(3)
    ]
    labels = np.zeros(12, np.int32)

    def picked_margin(cands):
        x = ensemble_pick(model_fn, [tf.constant(c) for c in cands], labels, 400)
        return 20.0 * np.mean(x.numpy(), axis=(1, 2, 3)) - 10.0

    np.testing.assert_allclose(picked_margin(candidates), 0.5, atol=1e-4)
    np.testing.assert_allclose(
        picked_margin([np.where(np.isclose(c, 0.525), 0.45, c) for c in candidates]),
        -0.2,
        atol=1e-4,
    )


def test_apgd_ensemble_selection_costs_three_candidates_per_draw():
    model_fn, calls, _ = counting_model()
    images = np.random.default_rng(2).uniform(size=(4, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0], np.int32)
    batch_sizes = []

    def recording_fn(x):
        batch_sizes.append(x.shape[0])
        return model_fn(x)

    apgd(recording_fn, images, labels, eps=0.1, num_steps=5, selection_samples=7)
    # 6 attack calls on the batch, then 7 ensemble draws on the 3 stacked candidates.
    assert int(calls.numpy()) == 6 + 7
    assert batch_sizes[-7:] == [12] * 7


def test_apgd_checkpoints_follow_croce_hein_schedule():
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99, 1.05 (spacing shrinks by .03 down to .06).
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9]
    assert apgd_checkpoints(1) == [0]


@pytest.mark.parametrize("norm, eps", [("linf", 2 / 255), ("l2", 0.25)])
def test_apgd_is_at_least_as_strong_as_pgd(cifar_model, norm, eps):
    _, model_fn, images, labels = cifar_model
    steps = 10
    x_pgd = pgd(model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=steps, norm=norm)
    x_apgd = apgd(model_fn, images, labels, eps=eps, num_steps=steps, norm=norm, seed=0)
    clean = accuracy(model_fn, images, labels)
    assert accuracy(model_fn, x_apgd, labels) <= accuracy(model_fn, x_pgd, labels) < clean
    size = (linf if norm == "linf" else l2)(x_apgd.numpy() - images)
    assert np.all(size <= eps + 1e-6)
