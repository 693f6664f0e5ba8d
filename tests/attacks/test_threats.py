"""Tests for tfp_advbnn.attacks.threats: the balls' geometry, random starts, per-example norms."""

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import l2, linear_problem, linf, trained_cifar_model

from tfp_advbnn.attacks.apgd import apgd
from tfp_advbnn.attacks.pgd import pgd
from tfp_advbnn.attacks.threats import per_example_norm


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


def _run(attack, model_fn, images, labels, *, eps, norm, **kwargs):
    if attack == "pgd":
        kwargs.setdefault("step_size", max(eps, 1e-3) / 4)
        kwargs.setdefault("random_start", True)
        return pgd(model_fn, images, labels, eps=eps, norm=norm, **kwargs)
    return apgd(model_fn, images, labels, eps=eps, norm=norm, **kwargs)


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
@pytest.mark.parametrize(
    "norm, eps", [("linf", 0.0), ("linf", 2 / 255), ("linf", 0.1), ("l2", 0.0), ("l2", 0.5)]
)
def test_perturbation_stays_in_ball_and_box(cifar_model, attack, norm, eps):
    _, model_fn, images, labels = cifar_model
    x_adv = _run(attack, model_fn, images[:16], labels[:16], eps=eps, norm=norm, num_steps=3)
    x_adv = x_adv.numpy()
    assert x_adv.shape == images[:16].shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = (linf if norm == "linf" else l2)(x_adv - images[:16])
    assert np.all(size <= eps + 1e-6)
    if eps == 0.0:
        np.testing.assert_array_equal(x_adv, images[:16])
    else:
        assert np.all(size > 0.0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_reproducible_with_a_seed(norm):
    model_fn, _, _, images, labels = linear_problem()

    def start_tensor(seed):
        return pgd(
            model_fn,
            images,
            labels,
            eps=0.1,
            step_size=0.01,
            num_steps=0,
            norm=norm,
            random_start=True,
            seed=seed,
        )

    def start(seed):
        return start_tensor(seed).numpy()

    first, again, other = start(1), start(1), start(2)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert np.abs(start(None) - start(None)).max() > 1e-3
    in_graph = tf.function(lambda: start_tensor(tf.constant([1, 0])))
    np.testing.assert_allclose(in_graph(), first, atol=1e-7)
    assert np.all(np.abs(first - images).max(axis=(1, 2, 3)) > 0.0)


@pytest.mark.parametrize("norm, expected", [("linf", linf), ("l2", l2)])
def test_per_example_norm_measures_each_example(norm, expected):
    delta = np.random.default_rng(0).normal(size=(5, 4, 4, 3)).astype(np.float32)
    measured = per_example_norm(tf.constant(delta), norm).numpy()
    assert measured.shape == (5,) and measured.dtype == np.float32
    np.testing.assert_allclose(measured, expected(delta), rtol=1e-6)
