"""Tests of tfp_advbnn.layers against independent numpy computations."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfp_advbnn import attacks, models
from tfp_advbnn.layers import (
    BayesBatchNormalization,
    BayesConv2D,
    BayesDense,
    RandomNoise,
    model_kl,
    standard_normal,
)

SIGMA_0 = 0.15
INIT_S = 0.05

# name -> (factory(seed), input shape); the factories cover every Bayesian layer variant.
BAYES_LAYERS = {
    "conv_reparam": (
        lambda seed=None: BayesConv2D(3, 3, sigma_0=SIGMA_0, init_s=INIT_S, seed=seed),
        (4, 6, 6, 2),
    ),
    "conv_flipout": (
        lambda seed=None: BayesConv2D(
            3, (3, 2), sigma_0=SIGMA_0, init_s=INIT_S, posterior="flipout", seed=seed
        ),
        (4, 6, 6, 2),
    ),
    "conv_valid_nobias": (
        lambda seed=None: BayesConv2D(
            3, 3, padding="valid", use_bias=False, sigma_0=SIGMA_0, init_s=INIT_S, seed=seed
        ),
        (4, 6, 6, 2),
    ),
    "dense_reparam": (
        lambda seed=None: BayesDense(5, sigma_0=SIGMA_0, init_s=INIT_S, seed=seed),
        (4, 7),
    ),
    "dense_flipout": (
        lambda seed=None: BayesDense(
            5, sigma_0=SIGMA_0, init_s=INIT_S, posterior="flipout", seed=seed
        ),
        (4, 7),
    ),
    "bn": (
        lambda seed=None: BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, seed=seed),
        (4, 5, 5, 3),
    ),
}
SEED_REPRODUCIBLE = [name for name in BAYES_LAYERS if "flipout" not in name]


def _inputs(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def _mu_s_pairs(layer):
    """(mu, s) numpy pairs, matched by variable name, independently of the layer's helpers."""
    by_name = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.trainable_variables}
    pairs = []
    for name, mu in by_name.items():
        if name.endswith("_mu"):
            pairs.append((mu.astype(np.float64), by_name[name[:-3] + "_s"].astype(np.float64)))
    assert 2 * len(pairs) == len(by_name)
    return pairs


def _eq6(pairs, sigma_0):
    total = 0.0
    for mu, s in pairs:
        sigma = np.exp(s)
        total += np.sum(np.log(sigma_0 / sigma) + (sigma**2 + mu**2) / (2 * sigma_0**2) - 0.5)
    return total


def _build(name, seed=None):
    factory, shape = BAYES_LAYERS[name]
    layer = factory(seed)
    x = _inputs(shape)
    layer(x)
    return layer, x


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_kl_matches_eq6_and_tracks_variables(name):
    layer, x = _build(name)
    kl = float(model_kl(layer))
    np.testing.assert_allclose(kl, _eq6(_mu_s_pairs(layer), SIGMA_0), rtol=1e-5)
    assert len(layer.losses) == len(_mu_s_pairs(layer))

    # Move every mu and s: the KL must follow (the distributions are not frozen at build).
    rng = np.random.default_rng(1)
    for v in layer.trainable_variables:
        v.assign(v + rng.normal(scale=0.3, size=v.shape).astype(np.float32))
    layer(x)
    new_kl = float(model_kl(layer))
    assert abs(new_kl - kl) > 1e-3 * abs(kl)
    np.testing.assert_allclose(new_kl, _eq6(_mu_s_pairs(layer), SIGMA_0), rtol=1e-5)


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_initial_mu_and_s(name):
    layer, _ = _build(name)
    shapes = {v.name.split("/")[-1].split(":")[0]: v.shape for v in layer.trainable_variables}
    for _, s in _mu_s_pairs(layer):
        np.testing.assert_allclose(s, math.log(INIT_S), rtol=1e-6)
    if name == "bn":
        values = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.weights}
        np.testing.assert_array_equal(values["gamma_mu"], 1.0)
        np.testing.assert_array_equal(values["beta_mu"], 0.0)
        return
    fan_in = int(np.prod(shapes["kernel_mu"][:-1]))
    bound = 1 / math.sqrt(fan_in)
    for mu, _ in _mu_s_pairs(layer):
        assert np.all(np.abs(mu) <= bound)
    # Kernels have >= 36 entries: all within half the bound has probability < 2^-36.
    kernel_mu = next(v.numpy() for v in layer.weights if "kernel_mu" in v.name)
    assert np.abs(kernel_mu).max() > 0.5 * bound


@pytest.mark.parametrize("name", BAYES_LAYERS)
def test_every_variable_gets_a_gradient(name):
    layer, x = _build(name)
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


@pytest.mark.parametrize("name", [*BAYES_LAYERS, "noise"])
def test_fresh_sample_every_call_eager_and_in_function(name):
    if name == "noise":
        layer, x = RandomNoise(0.1), _inputs((4, 6, 6, 2))
    else:
        layer, x = _build(name)
    kwargs = {"training": False} if name in ("bn", "noise") else {}
    a, b = layer(x, **kwargs), layer(x, **kwargs)
    assert float(tf.reduce_max(tf.abs(a - b))) > 1e-4
    fn = tf.function(lambda t: layer(t, **kwargs))
    c, d = fn(x), fn(x)
    assert float(tf.reduce_max(tf.abs(c - d))) > 1e-4
    assert float(tf.reduce_max(tf.abs(c - a))) > 1e-4


@pytest.mark.parametrize("name", SEED_REPRODUCIBLE)
def test_seeded_layers_reproduce_and_differ(name):
    first, x = _build(name, seed=11)
    again, _ = _build(name, seed=11)
    other, _ = _build(name, seed=12)
    draws = [[layer(x).numpy() for _ in range(2)] for layer in (first, again, other)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert np.abs(draws[0][0] - draws[0][1]).max() > 1e-4
    assert np.abs(draws[0][0] - draws[2][0]).max() > 1e-4


@pytest.mark.parametrize("name", ["conv_flipout", "dense_flipout"])
def test_flipout_reproducible_under_global_seed(name):
    # Flipout's sign flips come from TF's stateful RNG (see the BayesConv2D docstring).
    def draws():
        tf.random.set_seed(5)
        layer, x = _build(name, seed=11)
        return [layer(x).numpy() for _ in range(2)]

    first, second = draws(), draws()
    np.testing.assert_array_equal(first, second)
    assert np.abs(first[0] - first[1]).max() > 1e-4


@pytest.mark.parametrize("name", [*SEED_REPRODUCIBLE, "noise"])
def test_checkpoint_restores_generator_state(name, tmp_path):
    if name == "noise":
        layer, x = RandomNoise(0.3, seed=3), _inputs((2, 4, 4, 3))
        layer(x)
    else:
        layer, x = _build(name)
    checkpoint = tf.train.Checkpoint(layer=layer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    after_save = [layer(x).numpy() for _ in range(2)]
    checkpoint.restore(path).assert_consumed()
    after_restore = [layer(x).numpy() for _ in range(2)]
    np.testing.assert_array_equal(after_save, after_restore)
    assert np.abs(after_save[0] - after_save[1]).max() > 1e-4


def _with_tiny_sigma(layer):
    """Makes the posterior (numerically) deterministic: s = log(1e-8)."""
    for v in layer.trainable_variables:
        if v.name.split("/")[-1].startswith(("gamma_s", "beta_s")):
            v.assign(tf.fill(v.shape, math.log(1e-8)))


def test_batch_norm_inference_uses_moving_statistics():
    layer, x = _build("bn")
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
    x = _inputs((6, 4, 4, 3)) * 2.0 + 1.0
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
    layer, x = _build("bn")
    fn = tf.function(lambda t, training: layer(t, training=training))
    before = layer.moving_mean.numpy().copy()
    fn(x, tf.constant(False))
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before)
    fn(x, tf.constant(True))
    assert np.abs(layer.moving_mean.numpy() - before).max() > 1e-4


def test_random_noise_is_on_at_inference_with_the_right_moments():
    layer = RandomNoise(0.3, seed=1)
    x = tf.fill([200, 50, 10], 2.0)
    noise = (layer(x, training=False) - x).numpy()
    # 1e5 draws: the mean's standard error is 1e-3, the std's about 7e-4.
    assert abs(noise.mean()) < 5e-3
    assert abs(noise.std() - 0.3) < 5e-3
    model = tf_keras.Sequential([tf_keras.Input((3,)), RandomNoise(0.3)])
    out = model(tf.zeros([2, 3]), training=False)
    assert float(tf.reduce_max(tf.abs(out))) > 0


def test_random_noise_zero_stddev_is_identity():
    x = _inputs((3, 4))
    np.testing.assert_array_equal(RandomNoise(0.0)(x).numpy(), x.numpy())


@pytest.mark.parametrize("name", [*BAYES_LAYERS, "noise"])
def test_config_round_trip(name):
    if name == "noise":
        layer, x = RandomNoise(0.25, seed=9, name="noisy"), _inputs((2, 3))
        layer(x)
    else:
        layer, x = _build(name, seed=21)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    if "flipout" not in name:
        # Same seed: same initial means and the same draws.
        np.testing.assert_array_equal(clone(x).numpy(), type(layer).from_config(config)(x).numpy())


def test_mixed_precision_policy_keeps_kl_and_variables_float32():
    layers = [
        BayesConv2D(2, 3, sigma_0=SIGMA_0, init_s=INIT_S, dtype="mixed_float16"),
        BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, dtype="mixed_float16"),
        RandomNoise(0.1, dtype="mixed_float16"),
    ]
    x = _inputs((2, 4, 4, 3))
    for layer in layers:
        x = layer(x, training=True) if isinstance(layer, BayesBatchNormalization) else layer(x)
        assert x.dtype == tf.float16
        assert model_kl(layer).dtype == tf.float32
        assert all(v.dtype == tf.float32 for v in layer.trainable_variables)


def test_replicas_draw_different_noise_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        dense = BayesDense(3, sigma_0=SIGMA_0, init_s=0.5, seed=1)
        noise = RandomNoise(0.5, seed=2)
        dense.build((None, 4))
        noise.build((None, 4))
    x = tf.ones([1, 4])
    per_replica = strategy.run(tf.function(lambda: (dense(x), noise(x))))
    for values in per_replica:
        first, second = (v.numpy() for v in strategy.experimental_local_results(values))
        assert np.abs(first - second).max() > 1e-4


def test_model_kl_is_zero_without_losses():
    layer = tf_keras.layers.Dense(2)
    layer(tf.ones([1, 3]))
    kl = model_kl(layer)
    assert kl.dtype == tf.float32 and float(kl) == 0.0


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
        (lambda: BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, momentum=1.5), "1.5"),
        (lambda: BayesBatchNormalization(sigma_0=SIGMA_0, init_s=INIT_S, epsilon=0), "0"),
        (lambda: RandomNoise(-0.1), "-0.1"),
        (lambda: RandomNoise("0.1"), "'0.1'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()


@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), (1001, 999)])
def test_standard_normal_is_standard_normal_and_seeded(shape):
    from scipy import stats

    from tfp_advbnn.layers import standard_normal

    seed = tf.constant([5, 9], tf.int32)
    draw = standard_normal(tf.constant(shape), seed).numpy()
    assert draw.shape == shape and draw.dtype == np.float32
    np.testing.assert_array_equal(draw, standard_normal(tf.constant(shape), seed).numpy())
    other = standard_normal(tf.constant(shape), tf.constant([5, 10], tf.int32)).numpy()
    assert not np.array_equal(draw, other)
    if draw.size > 1000:
        assert stats.kstest(draw.ravel(), "norm").pvalue > 1e-3
        assert abs(draw.mean()) < 0.01 and abs(draw.std() - 1.0) < 0.01


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


def test_box_muller_pairs_are_independent_normals():
    """Each uniform pair gives a cos and a sin normal: paired samples must be uncorrelated,
    and so must their squares (which a shared or reused uniform would couple)."""
    size = 200_000
    samples = standard_normal(tf.constant([size]), tf.constant([3, 4], tf.int32)).numpy()
    half = size // 2
    first, second = samples[:half], samples[half:]
    bound = 5 / math.sqrt(half)  # 5 standard errors of a correlation near 0
    assert abs(np.corrcoef(first, second)[0, 1]) < bound
    assert abs(np.corrcoef(first**2, second**2)[0, 1]) < bound
    assert abs(np.corrcoef(np.abs(first), np.abs(second))[0, 1]) < bound
    # Neighbours within one half come from different uniform pairs.
    assert abs(np.corrcoef(first[:-1], first[1:])[0, 1]) < bound


def _small_bnn(width_multiplier, seed):
    return models.build_model(
        "vgg11",
        "bnn",
        num_classes=10,
        input_shape=(32, 32, 3),
        width_multiplier=width_multiplier,
        sigma_0=SIGMA_0,
        init_s=INIT_S,
        seed=seed,
    )


def test_draws_of_different_layers_and_steps_are_uncorrelated():
    """Two same-shaped layers of one seeded model, over successive calls: every pair of
    kernel-noise draws (layer x step) is uncorrelated, so no layer or step reuses a seed."""
    model = _small_bnn(width_multiplier=0.125, seed=5)
    pair = [model.get_layer("conv7"), model.get_layer("conv8")]
    assert pair[0].posterior_parameters["kernel"][0].shape == (
        pair[1].posterior_parameters["kernel"][0].shape
    )
    for layer in pair:
        mu, s = layer.posterior_parameters["kernel"]
        mu.assign(tf.zeros_like(mu))
        s.assign(tf.zeros_like(s))  # draws are then the standard normal noise itself
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[1, 2])
    noises = []
    for _ in range(3):
        model(images)
        noises += [layer._tfp_layer.kernel_posterior_tensor.numpy().ravel() for layer in pair]
    correlations = np.corrcoef(np.stack(noises))
    off_diagonal = correlations[~np.eye(len(noises), dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / math.sqrt(noises[0].size)


@pytest.mark.parametrize("num_eot_samples", [1, 2])
def test_real_bayesian_layers_draw_at_every_step_of_the_compiled_pgd_loop(num_eot_samples):
    """Each layer's generator advances once per model call: after a compiled PGD-k its state
    has moved k * eot times as far as after one call (a draw hoisted out of the loop would
    move it once, or not at all)."""
    model = _small_bnn(width_multiplier=0.0625, seed=7)
    bayesian = [layer for layer in model.layers if hasattr(layer, "posterior_parameters")]
    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4])
    labels = tf.constant([1, 2])

    def counters():
        return np.array([int(layer._generator.state.numpy()[0]) for layer in bayesian])

    start = counters()
    model(images)
    per_call = counters() - start
    assert np.all(per_call > 0)
    num_steps = 4
    attack = tf.function(
        lambda x, y: attacks.pgd(
            model,
            x,
            y,
            eps=0.03,
            step_size=0.01,
            num_steps=num_steps,
            num_eot_samples=num_eot_samples,
        )
    )
    before = counters()
    attack(images, labels)
    np.testing.assert_array_equal(counters() - before, num_steps * num_eot_samples * per_call)
