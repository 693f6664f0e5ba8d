"""Bayesian and noise layers of Adv-BNN (Liu et al., ICLR 2019), as tf_keras layers.

Every weight and bias ``w`` of a Bayesian layer has the mean-field Gaussian posterior of the
paper's eq. 5, ``q(w) = N(mu, exp(s)^2)`` with ``s`` the log standard deviation, and the prior
``p(w) = N(0, sigma_0^2)``; the eq. 6 KL of every layer is in ``layer.losses``.

- ``bayesian``: ``BayesConv2D`` and ``BayesDense`` on TFP's variational layers (``POSTERIORS``).
- ``normalization``: ``BayesBatchNormalization``.
- ``noise``: ``RandomNoise``, the RSE noise layer.
- ``kl``: ``kl_normal`` (eq. 6), the ``BayesianLayer`` base that registers it as a loss,
  ``model_kl`` and ``bayesian_variables``.
- ``sampling``: ``derive_seed``, ``standard_normal`` and the per-layer generators that make every
  stochastic layer draw fresh, checkpointed, reproducible noise on every call.
"""

from tfp_advbnn.layers.bayesian import POSTERIORS, BayesConv2D, BayesDense
from tfp_advbnn.layers.kl import BayesianLayer, bayesian_variables, kl_normal, model_kl
from tfp_advbnn.layers.noise import RandomNoise
from tfp_advbnn.layers.normalization import BayesBatchNormalization
from tfp_advbnn.layers.sampling import (
    derive_seed,
    make_generator,
    next_stateless_seed,
    standard_normal,
)

__all__ = [
    "POSTERIORS",
    "BayesBatchNormalization",
    "BayesConv2D",
    "BayesDense",
    "BayesianLayer",
    "RandomNoise",
    "bayesian_variables",
    "derive_seed",
    "kl_normal",
    "make_generator",
    "model_kl",
    "next_stateless_seed",
    "standard_normal",
]
