"""Tests for tfp_advbnn.attacks.inputs: every attack rejects bad arguments, naming the value."""

import re

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import linear_problem, linf, trained_cifar_model

from tfp_advbnn.attacks.apgd import apgd
from tfp_advbnn.attacks.cw import cw_l2
from tfp_advbnn.attacks.pgd import fgsm, pgd

FUNCTIONS = {"pgd": pgd, "fgsm": fgsm, "apgd": apgd, "cw_l2": cw_l2}


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


def test_eps_can_be_a_tensor_without_retracing(cifar_model):
    _, model_fn, images, labels = cifar_model
    traces = []

    @tf.function
    def run(x, y, eps):
        traces.append(1)
        return pgd(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=5)

    x, y = tf.constant(images[:8]), tf.constant(labels[:8])
    for eps in (1 / 255, 4 / 255):
        x_adv = run(x, y, tf.constant(eps))
        np.testing.assert_allclose(linf(x_adv.numpy() - images[:8]), eps, atol=1e-6)
        eager = pgd(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=5)
        np.testing.assert_allclose(x_adv, eager, atol=1e-5)
    assert len(traces) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="eps must be >= 0"):
        run(x, y, tf.constant(-0.1))


def _call(attack, **overrides):
    model_fn, _, _, images, labels = linear_problem()
    defaults = {
        "pgd": {"eps": 0.1, "step_size": 0.01, "num_steps": 2},
        "fgsm": {"eps": 0.1},
        "apgd": {"eps": 0.1, "num_steps": 2},
        "cw_l2": {"num_steps": 2},
    }[attack]
    return FUNCTIONS[attack](model_fn, images, labels, **{**defaults, **overrides})


@pytest.mark.parametrize(
    "attack, overrides, named",
    [
        ("pgd", {"eps": -0.1}, "-0.1"),
        ("pgd", {"eps": float("nan")}, "nan"),
        ("pgd", {"step_size": 0.0}, "0.0"),
        ("pgd", {"num_steps": -1}, "-1"),
        ("pgd", {"num_steps": 2.5}, "2.5"),
        ("pgd", {"num_eot_samples": 0}, "0"),
        ("pgd", {"norm": "l1"}, "'l1'"),
        ("pgd", {"seed": "abc"}, "'abc'"),
        ("fgsm", {"eps": -1.0}, "-1.0"),
        ("apgd", {"norm": "inf"}, "'inf'"),
        ("apgd", {"rho": 1.5}, "1.5"),
        ("apgd", {"num_eot_samples": 0}, "0"),
        ("apgd", {"selection_samples": -1}, "-1"),
        ("cw_l2", {"c": -2.0}, "-2.0"),
        ("cw_l2", {"learning_rate": 0.0}, "0.0"),
        ("cw_l2", {"kappa": -1.0}, "-1.0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(attack, overrides, named):
    name = next(iter(overrides))
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(named)}"):
        _call(attack, **overrides)


def test_bad_inputs_raise_value_error():
    model_fn, _, _, images, labels = linear_problem()
    with pytest.raises(ValueError, match=r"\[0, 1\], got values in \[76"):
        pgd(model_fn, images * 255, labels, eps=0.1, step_size=0.1, num_steps=1)
    with pytest.raises(ValueError, match="float64"):
        fgsm(model_fn, images.astype(np.float64), labels, eps=0.1)
    with pytest.raises(ValueError, match="float32"):
        fgsm(model_fn, images, labels.astype(np.float32), eps=0.1)
