"""Tests of tfp_advbnn.layers.sampling: fresh, seeded, checkpointed and uncorrelated draws."""

import math

import numpy as np
import pytest
import tensorflow as tf
from layer_cases import BAYES_LAYERS, INIT_S, SEED_REPRODUCIBLE, SIGMA_0, build_layer, random_inputs

from tfp_advbnn import attacks, models
from tfp_advbnn.layers.bayesian import BayesDense
from tfp_advbnn.layers.noise import RandomNoise
from tfp_advbnn.layers.sampling import standard_normal


@pytest.mark.parametrize("name", [*BAYES_LAYERS, "noise"])
def test_fresh_sample_every_call_eager_and_in_function(name):
    if name == "noise":
        layer, x = RandomNoise(0.1), random_inputs((4, 6, 6, 2))
    else:
        layer, x = build_layer(name)
    kwargs = {"training": False} if name in ("bn", "noise") else {}
    a, b = layer(x, **kwargs), layer(x, **kwargs)
    assert float(tf.reduce_max(tf.abs(a - b))) > 1e-4
    fn = tf.function(lambda t: layer(t, **kwargs))
    c, d = fn(x), fn(x)
    assert float(tf.reduce_max(tf.abs(c - d))) > 1e-4
    assert float(tf.reduce_max(tf.abs(c - a))) > 1e-4


@pytest.mark.parametrize("name", SEED_REPRODUCIBLE)
def test_seeded_layers_reproduce_and_differ(name):
    first, x = build_layer(name, seed=11)
    again, _ = build_layer(name, seed=11)
    other, _ = build_layer(name, seed=12)
    draws = [[layer(x).numpy() for _ in range(2)] for layer in (first, again, other)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert np.abs(draws[0][0] - draws[0][1]).max() > 1e-4
    assert np.abs(draws[0][0] - draws[2][0]).max() > 1e-4


@pytest.mark.parametrize("name", [*SEED_REPRODUCIBLE, "noise"])
def test_checkpoint_restores_generator_state(name, tmp_path):
    if name == "noise":
        layer, x = RandomNoise(0.3, seed=3), random_inputs((2, 4, 4, 3))
        layer(x)
    else:
        layer, x = build_layer(name)
    checkpoint = tf.train.Checkpoint(layer=layer)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    after_save = [layer(x).numpy() for _ in range(2)]
    checkpoint.restore(path).assert_consumed()
    after_restore = [layer(x).numpy() for _ in range(2)]
    np.testing.assert_array_equal(after_save, after_restore)
    assert np.abs(after_save[0] - after_save[1]).max() > 1e-4


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


@pytest.mark.parametrize("shape", [(7,), (3, 5, 2), (1001, 999)])
def test_standard_normal_is_standard_normal_and_seeded(shape):
    from scipy import stats

    seed = tf.constant([5, 9], tf.int32)
    draw = standard_normal(tf.constant(shape), seed).numpy()
    assert draw.shape == shape and draw.dtype == np.float32
    np.testing.assert_array_equal(draw, standard_normal(tf.constant(shape), seed).numpy())
    other = standard_normal(tf.constant(shape), tf.constant([5, 10], tf.int32)).numpy()
    assert not np.array_equal(draw, other)
    if draw.size > 1000:
        assert stats.kstest(draw.ravel(), "norm").pvalue > 1e-3
        assert abs(draw.mean()) < 0.01 and abs(draw.std() - 1.0) < 0.01


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
