"""Layers and inputs shared by the tests of tfp_advbnn.layers: a case per Bayesian layer."""

import numpy as np
import tensorflow as tf

from tfp_advbnn.layers.bayesian import BayesConv2D, BayesDense
from tfp_advbnn.layers.normalization import BayesBatchNormalization

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


def random_inputs(shape, seed=0):
    """float32 standard normal inputs of ``shape``."""
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def mu_s_pairs(layer):
    """(mu, s) numpy pairs, matched by variable name, independently of the layer's helpers."""
    by_name = {v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.trainable_variables}
    pairs = []
    for name, mu in by_name.items():
        if name.endswith("_mu"):
            pairs.append((mu.astype(np.float64), by_name[name[:-3] + "_s"].astype(np.float64)))
    assert 2 * len(pairs) == len(by_name)
    return pairs


def build_layer(name, seed=None):
    """The ``BAYES_LAYERS`` case ``name``, built by one call; returns (layer, its input)."""
    factory, shape = BAYES_LAYERS[name]
    layer = factory(seed)
    x = random_inputs(shape)
    layer(x)
    return layer, x
