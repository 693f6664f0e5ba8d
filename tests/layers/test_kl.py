"""Tests of tfp_advbnn.layers.kl: the eq. 6 KL of every Bayesian layer, against numpy."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from layer_cases import BAYES_LAYERS, INIT_S, SIGMA_0, build_layer, mu_s_pairs, random_inputs

from tfp_advbnn.layers.bayesian import BayesConv2D
from tfp_advbnn.layers.kl import model_kl
from tfp_advbnn.layers.noise import RandomNoise
from tfp_advbnn.layers.normalization import BayesBatchNormalization


def _eq6(pairs, sigma_0):
    total = 0.0
    for mu, s in pairs:
        sigma = np.exp(s)
        total += np.sum(np.log(sigma_0 / sigma) + (sigma**2 + mu**2) / (2 * sigma_0**2) - 0.5)
    return total


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_kl_matches_eq6_and_tracks_variables(name):
    layer, x = build_layer(name)
    kl = float(model_kl(layer))
    np.testing.assert_allclose(kl, _eq6(mu_s_pairs(layer), SIGMA_0), rtol=1e-5)
    assert len(layer.losses) == len(mu_s_pairs(layer))

    # Move every mu and s: the KL must follow (the distributions are not frozen at build).
    rng = np.random.default_rng(1)
    for v in layer.trainable_variables:
        v.assign(v + rng.normal(scale=0.3, size=v.shape).astype(np.float32))
    layer(x)
    new_kl = float(model_kl(layer))
    assert abs(new_kl - kl) > 1e-3 * abs(kl)
    np.testing.assert_allclose(new_kl, _eq6(mu_s_pairs(layer), SIGMA_0), rtol=1e-5)


def test_mixed_precision_policy_keeps_kl_and_variables_float32():
    layers = [
        BayesConv2D(2, 3, sigma_0=SIGMA_0, init_s=INIT_S, dtype="mixed_float16"),
        BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, dtype="mixed_float16"),
        RandomNoise(0.1, dtype="mixed_float16"),
    ]
    x = random_inputs((2, 4, 4, 3))
    for layer in layers:
        x = layer(x, training=True) if isinstance(layer, BayesBatchNormalization) else layer(x)
        assert x.dtype == tf.float16
        assert model_kl(layer).dtype == tf.float32
        assert all(v.dtype == tf.float32 for v in layer.trainable_variables)


def test_model_kl_is_zero_without_losses():
    layer = tf_keras.layers.Dense(2)
    layer(tf.ones([1, 3]))
    kl = model_kl(layer)
    assert kl.dtype == tf.float32 and float(kl) == 0.0
