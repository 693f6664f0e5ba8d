"""The schedule and optimizer (training/optim.py): the reference's stages scaled to the epochs,
and momentum as Adam's beta_1."""

import math

import numpy as np
import pytest
import tensorflow as tf
from run_support import tiny_config

from tfp_advbnn.training import optim


@pytest.mark.parametrize(
    "dataset, epochs, expected_epochs",
    [
        ("cifar10", 200, [80, 140, 180]),
        ("cifar10", 10, [4, 7, 9]),
        ("stl10", 120, [60, 100]),
        ("folder", 80, [30, 50, 70]),
    ],
)
def test_schedule_scales_the_reference_stages(dataset, epochs, expected_epochs):
    config = tiny_config(
        "unused",
        dataset=dataset,
        epochs=epochs,
        learning_rate=0.01,
        image_size=8 if dataset == "folder" else None,
    )
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=5)
    assert schedule.boundaries == [e * 5 for e in expected_epochs]
    for stage, boundary in enumerate([0] + [e * 5 for e in expected_epochs]):
        np.testing.assert_allclose(float(schedule(boundary + 1)), 0.01 / 10**stage, rtol=1e-6)


def test_momentum_is_adams_beta_1(tmp_path, small_data):
    """Adam's second step from m1 = (1 - b1) g1: m2 = b1 m1 + (1 - b1) g2, bias-corrected."""
    config = tiny_config(
        tmp_path, defense="plain", optimizer="adam", learning_rate=0.1, momentum=0.5
    )
    optimizer = optim.make_optimizer(config, steps_per_epoch=10)
    variable = tf.Variable([1.0])
    for gradient in (1.0, -3.0):
        optimizer.apply_gradients([(tf.constant([gradient]), variable)])
    b1, b2, eps = 0.5, 0.999, 1e-7
    m, v, value = 0.0, 0.0, 1.0
    for t, g in enumerate((1.0, -3.0), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        value -= 0.1 * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(variable.numpy(), [value], rtol=1e-5)
