"""Tests of tfp_advbnn.layers.normalization: BayesBatchNormalization's moments and updates."""

import math

import numpy as np
import pytest
import tensorflow as tf
from layer_cases import INIT_S, SIGMA_0, build_layer, random_inputs

from tfp_advbnn.layers.normalization import BayesBatchNormalization


def _with_tiny_sigma(layer):
    """Makes the posterior (numerically) deterministic: s = log(1e-8)."""
    for v in layer.trainable_variables:
        if v.name.split("/")[-1].startswith(("gamma_s", "beta_s")):
            v.assign(tf.fill(v.shape, math.log(1e-8)))


def test_batch_norm_inference_uses_moving_statistics():
    layer, x = build_layer("bn")
    rng = np.random.default_rng(2)
    moving_mean = rng.normal(size=3).astype(np.float32)
    moving_var = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, size=3).astype(np.float32)
    beta = rng.normal(size=3).astype(np.float32)
    layer.moving_mean.assign(moving_mean)
    layer.moving_variance.assign(moving_var)
    names = {v.name.split("/")[-1].split(":")[0]: v for v in layer.trainable_variables}
    names["gamma_mu"].assign(gamma)
    names["beta_mu"].assign(beta)
    _with_tiny_sigma(layer)

    expected = (x.numpy() - moving_mean) / np.sqrt(moving_var + 1e-5) * gamma + beta
    # Inference is the default when no training flag is given.
    for y in (layer(x, training=False), layer(x)):
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), moving_mean)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), moving_var)


def test_batch_norm_training_uses_batch_statistics_and_updates_moving():
    layer = BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, momentum=0.8, epsilon=1e-3)
    x = random_inputs((6, 4, 4, 3)) * 2.0 + 1.0
    layer(x, training=False)
    _with_tiny_sigma(layer)
    layer.moving_mean.assign([0.5, -0.5, 0.0])
    layer.moving_variance.assign([1.0, 2.0, 3.0])

    y = layer(x, training=True).numpy()
    xn = x.numpy().astype(np.float64)
    mean = xn.mean(axis=(0, 1, 2))
    var = xn.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), np.array([0.5, -0.5, 0.0]) * 0.8 + mean * 0.2, rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), np.array([1.0, 2.0, 3.0]) * 0.8 + var * 0.2, rtol=1e-5
    )


def test_batch_norm_training_flag_as_tensor_in_function():
    layer, x = build_layer("bn")
    fn = tf.function(lambda t, training: layer(t, training=training))
    before = layer.moving_mean.numpy().copy()
    fn(x, tf.constant(False))
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before)
    fn(x, tf.constant(True))
    assert np.abs(layer.moving_mean.numpy() - before).max() > 1e-4


@pytest.mark.parametrize(
    "make, bad",
    [
        (lambda: BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, momentum=1.5), "1.5"),
        (lambda: BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, epsilon=0), "0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()
