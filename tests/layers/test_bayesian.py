"""Tests of tfp_advbnn.layers.bayesian: BayesConv2D and BayesDense (eq. 5), against numpy.

Cases parametrized over every Bayesian layer (``layer_cases``) include BayesBatchNormalization,
whose posterior follows the same parameterization; the config round trip covers RandomNoise too.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from layer_cases import BAYES_LAYERS, INIT_S, SIGMA_0, build_layer, mu_s_pairs, random_inputs

from tfp_advbnn.layers.bayesian import BayesConv2D, BayesDense
from tfp_advbnn.layers.kl import model_kl
from tfp_advbnn.layers.noise import RandomNoise
from tfp_advbnn.layers.normalization import BayesBatchNormalization


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_initial_mu_and_s(name):
    layer, _ = build_layer(name)
    shapes = {v.name.split("/")[-1].split(":")[0]: v.shape for v in layer.trainable_variables}
    for _, s in mu_s_pairs(layer):
        np.testing.assert_allclose(s, math.log(INIT_S), rtol=1e-6)
    if name == "bn":
        values = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
        np.testing.assert_array_equal(values["gamma_mu"], 1.0)
        np.testing.assert_array_equal(values["beta_mu"], 0.0)
        return
    fan_in = int(np.prod(shapes["kernel_mu"][:-1]))
    bound = 1 / math.sqrt(fan_in)
    for mu, _ in mu_s_pairs(layer):
        assert np.all(np.abs(mu) <= bound)
    # Kernels have >= 36 entries: all within half the bound has probability < 2^-36.
    kernel_mu = next(v.numpy() for v in layer.weights if "kernel_mu" in v.name)
    assert np.abs(kernel_mu).max() > 0.5 * bound


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_every_variable_gets_a_gradient(name):
    layer, x = build_layer(name)
    with tf.GradientTape(persistent=True) as tape:
        y = layer(x, training=True) if name == "bn" else layer(x)
        data_loss = tf.reduce_sum(tf.sin(y))
        loss = data_loss + model_kl(layer)
    # The data term alone must reach every mu and s too: through the reparameterized sample.
    data_grads = tape.gradient(data_loss, layer.trainable_variables)
    grads = tape.gradient(loss, layer.trainable_variables)
    assert len(layer.trainable_variables) in (2, 4)
    for var, data_grad, grad in zip(layer.trainable_variables, data_grads, grads, strict=True):
        for g in (data_grad, grad):
            assert g is not None, var.name
            assert float(tf.reduce_max(tf.abs(g))) > 0, var.name


@pytest.mark.parametrize("name", ["conv_flipout", "dense_flipout"])
def test_flipout_reproducible_under_global_seed(name):
    # Flipout's sign flips come from TF's stateful RNG (see the BayesConv2D docstring).
    def draws():
        tf.random.set_seed(5)
        layer, x = build_layer(name, seed=11)
        return [layer(x).numpy() for _ in range(2)]

    first, second = draws(), draws()
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0] - first[1]).max() > 1e-4


@pytest.mark.parametrize("name", [*BAYES_LAYERS, "noise"])
def test_config_round_trip(name):
    if name == "noise":
        layer, x = RandomNoise(0.25, seed=9, name="noisy"), random_inputs((2, 3))
        layer(x)
    else:
        layer, x = build_layer(name, seed=21)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    if "flipout" not in name:
        # Same seed: same initial means and the same draws.
        np.testing.assert_array_equal(clone(x).numpy(), type(layer).from_config(config)(x).numpy())


def _set_log_std(layer, role, values):
    """Sets the posterior log std of ``role`` ("kernel", "bias", "gamma", "beta")."""
    _, s = layer.posterior_parameters[role]
    s.assign(np.broadcast_to(values, s.shape).astype(np.float32))


def _fix_at_zero(layer, role):
    """Makes ``role`` exactly 0 in every draw: mean 0, log std -30."""
    mu, _ = layer.posterior_parameters[role]
    mu.assign(tf.zeros_like(mu))
    _set_log_std(layer, role, -30.0)


def _conv_kernel_draws(layer, num_draws):
    """[num_draws, kh, kw, c_in, c_out] kernels, each read from one call on unit impulses."""
    kh, kw = layer.kernel_size
    c_in = int(layer.posterior_parameters["kernel"][0].shape[2])
    # One impulse image per (row, col, channel) of a kh x kw x c_in "valid" patch: the single
    # output pixel of impulse (i, j, c) is kernel[i, j, c, :] + bias.
    impulses = np.eye(kh * kw * c_in, dtype=np.float32).reshape(-1, kh, kw, c_in)
    call = tf.function(lambda: layer(tf.constant(impulses)))
    draws = [call().numpy().reshape(kh, kw, c_in, -1) for _ in range(num_draws)]
    return np.stack(draws)


def _dense_kernel_draws(layer, num_draws):
    """[num_draws, d_in, units] kernels from calls on one-hot rows (the bias has no noise)."""
    d_in = int(layer.posterior_parameters["kernel"][0].shape[0])
    call = tf.function(lambda: layer(tf.eye(d_in)))
    return np.stack([call().numpy() for _ in range(num_draws)])


def _bn_draws(layer, role, num_draws):
    """[num_draws, channels] draws of gamma (output at x = 1 minus x = 0) or beta (at x = 0)."""
    x = tf.constant([[[[0.0] * 4]], [[[1.0] * 4]]])
    call = tf.function(lambda: layer(x, training=False))
    draws = []
    for _ in range(num_draws):
        out = call().numpy().reshape(2, -1)
        # Moving mean 0 and variance 1: output = gamma * x / sqrt(1 + epsilon) + beta.
        draws.append(
            (out[1] - out[0]) * math.sqrt(1 + layer.epsilon) if role == "gamma" else out[0]
        )
    return np.stack(draws)


# Log stds spread over the range training visits, one per element along the last axis.
_LOG_STDS = np.log([0.01, 0.05, 0.2, 1.0])


@pytest.mark.parametrize("kind", ["conv", "dense", "bn_gamma", "bn_beta"])
def test_weight_noise_variance_is_exp_2s(kind):
    """Empirical variance over 3,000 draws of each weight equals exp(2 s) (not exp(s), softplus)."""
    num_draws = 3000
    if kind == "conv":
        layer = BayesConv2D(4, 2, padding="valid", sigma_0=SIGMA_0, init_s=INIT_S, seed=3)
        layer(tf.zeros([1, 2, 2, 2]))
        _set_log_std(layer, "kernel", _LOG_STDS)
        _fix_at_zero(layer, "bias")
        draws = _conv_kernel_draws(layer, num_draws)
    elif kind == "dense":
        layer = BayesDense(4, sigma_0=SIGMA_0, init_s=INIT_S, seed=3)
        layer(tf.zeros([1, 3]))
        _set_log_std(layer, "kernel", _LOG_STDS)
        _fix_at_zero(layer, "bias")
        draws = _dense_kernel_draws(layer, num_draws)
    else:
        role = kind.split("_")[1]
        layer = BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, seed=3)
        layer(tf.zeros([1, 1, 1, 4]))
        _set_log_std(layer, role, _LOG_STDS)
        _fix_at_zero(layer, "beta" if role == "gamma" else "gamma")
        draws = _bn_draws(layer, role, num_draws)
    mu = layer.posterior_parameters["kernel" if kind in ("conv", "dense") else role][0].numpy()
    np.testing.assert_allclose(draws.mean(axis=0), mu, atol=5 * np.exp(_LOG_STDS.max()) / 50)
    ratio = draws.var(axis=0, ddof=1) / np.exp(2 * _LOG_STDS)
    # The variance estimate of n normal draws has relative std sqrt(2 / (n - 1)) = 2.6 %.
    assert np.abs(ratio - 1).max() < 5 * math.sqrt(2 / (num_draws - 1)), ratio


@pytest.mark.parametrize(
    "make, bad",
    [
        (lambda: BayesConv2D(2, 3, sigma_0=0.0, init_s=INIT_S), "0.0"),
        (lambda: BayesConv2D(2, 3, sigma_0=SIGMA_0, init_s=-1.0), "-1.0"),
        (lambda: BayesConv2D(0, 3, sigma_0=SIGMA_0, init_s=INIT_S), "0"),
        (lambda: BayesConv2D(2, 3, padding="full", sigma_0=SIGMA_0, init_s=INIT_S), "'full'"),
        (lambda: BayesConv2D(2, (3, 0), sigma_0=SIGMA_0, init_s=INIT_S), r"\(3, 0\)"),
        (lambda: BayesConv2D(2, 3, sigma_0=SIGMA_0, init_s=INIT_S, posterior="lrt"), "'lrt'"),
        (lambda: BayesDense(3, sigma_0=SIGMA_0, init_s=INIT_S, seed=-4), "-4"),
        (lambda: BayesDense(2.5, sigma_0=SIGMA_0, init_s=INIT_S), "2.5"),
        (lambda: BayesDense(3, sigma_0=float("nan"), init_s=INIT_S), "nan"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()
