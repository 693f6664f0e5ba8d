"""Bayesian convolution and dense layers (paper eq. 5) on TFP's variational layers.

Every weight and bias ``w`` has the mean-field Gaussian posterior ``q(w) = N(mu, exp(s)^2)``,
where the trainable variable ``s`` holds the LOG standard deviation (not TFP's default softplus
parameterization), and the prior ``p(w) = N(0, sigma_0^2)`` has no variables; the eq. 6 KL is a
loss of the layer (``kl``). The trainable variables of a Bayesian layer are exactly its
``(mu, s)`` pairs, so a Bayesian layer has twice the trainable variables (and scalars) of its
ordinary twin. A private base, ``_BayesianTFPLayer``, holds what the thin public classes
``BayesConv2D`` and ``BayesDense`` share.
"""

import math
import threading

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from tfp_advbnn import validation
from tfp_advbnn.layers.kl import BayesianLayer
from tfp_advbnn.layers.sampling import (
    derive_seed,
    make_generator,
    next_stateless_seed,
    standard_normal,
)

tfd = tfp.distributions

POSTERIORS = ("reparameterization", "flipout")

# TFP's variational layers keep the current weight sample in Python attributes
# (``kernel_posterior_tensor``) between drawing it and using it, and MirroredStrategy traces
# each replica in its own thread: the lock keeps one replica from using another's sample.
_TFP_CALL_LOCK = threading.RLock()


class _BayesianTFPLayer(BayesianLayer):
    """Shared machinery for the Bayesian conv and dense layers.

    Wraps a TFP variational layer, created by the subclass's ``_make_tfp_layer(**kwargs)``,
    whose posterior, prior and posterior-sampling callables are the methods below; the KL is a
    callable loss of this layer (``_add_kl_losses``).
    """

    def __init__(self, *, use_bias, sigma_0, init_s, posterior, seed, **kwargs):
        super().__init__(**kwargs)
        validation.choice("posterior", posterior, POSTERIORS)
        self.use_bias = bool(use_bias)
        self.sigma_0 = validation.positive("sigma_0", sigma_0)
        self.init_s = validation.positive("init_s", init_s)
        self.posterior = posterior
        self.seed = validation.seed("seed", seed)
        self.posterior_parameters = {}
        self._fan_in = None
        self._generator = None
        if self.use_bias:
            bias_fns = {
                "bias_posterior_fn": self._posterior_fn,
                "bias_posterior_tensor_fn": self._sample,
                "bias_prior_fn": self._prior_fn,
                "bias_divergence_fn": None,
            }
        else:
            bias_fns = {"bias_posterior_fn": None, "bias_prior_fn": None}
        self._tfp_layer = self._make_tfp_layer(
            kernel_posterior_fn=self._posterior_fn,
            kernel_posterior_tensor_fn=self._sample,
            kernel_prior_fn=self._prior_fn,
            # The KL is a callable loss of this layer (see _add_kl_losses), not a per-call one.
            kernel_divergence_fn=None,
            # The TFP layer holds the variables in the variable dtype; call() casts around it.
            dtype=self.dtype_policy.variable_dtype,
            name=posterior,
            **bias_fns,
        )

    def _posterior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        """N(mu, exp(s)^2) per element; mu ~ U(+-1/sqrt(fan_in)), s = log(init_s)."""
        role = name.replace("_posterior", "")
        if role == "kernel":
            # TFP builds the kernel before the bias, so the bias reuses the kernel's fan-in.
            self._fan_in = int(np.prod(shape[:-1]))
        bound = 1.0 / math.sqrt(self._fan_in)
        # add_variable_fn is the TFP layer's deprecated add_variable alias (it warns on every
        # use); its add_weight is the same thing.
        del add_variable_fn
        mu = self._tfp_layer.add_weight(
            name=f"{role}_mu",
            shape=shape,
            dtype=dtype,
            initializer=tf_keras.initializers.RandomUniform(
                -bound, bound, seed=derive_seed(self.seed, role, "mu")
            ),
            trainable=trainable,
        )
        s = self._tfp_layer.add_weight(
            name=f"{role}_s",
            shape=shape,
            dtype=dtype,
            initializer=tf_keras.initializers.Constant(math.log(self.init_s)),
            trainable=trainable,
        )
        self.posterior_parameters[role] = (mu, s)
        # DeferredTensor re-reads s on every use, so the distribution is never frozen at build.
        scale = tfp.util.DeferredTensor(s, tf.exp)
        return tfd.Independent(
            tfd.Normal(loc=mu, scale=scale), reinterpreted_batch_ndims=len(shape)
        )

    def _prior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        """N(0, sigma_0^2) per element, without variables."""
        del name, trainable, add_variable_fn
        return tfd.Independent(
            tfd.Normal(loc=tf.zeros(shape, dtype), scale=tf.constant(self.sigma_0, dtype)),
            reinterpreted_batch_ndims=len(shape),
        )

    def _sample(self, distribution):
        """loc + scale * eps: the reparameterized draw of eq. 5 (gradients reach mu and s).

        ``distribution`` is the Independent posterior, or for Flipout's kernel the zero-mean
        Normal of its perturbation.
        """
        normal = getattr(distribution, "distribution", distribution)
        loc = tf.convert_to_tensor(normal.loc)
        noise = standard_normal(tf.shape(loc), next_stateless_seed(self._generator), loc.dtype)
        return loc + tf.convert_to_tensor(normal.scale) * noise

    def build(self, input_shape):
        self._generator = make_generator(self.seed)
        self._tfp_layer.build(input_shape)
        self._add_kl_losses()
        super().build(input_shape)

    def call(self, inputs):
        with _TFP_CALL_LOCK:
            outputs = self._tfp_layer(tf.cast(inputs, self._tfp_layer.dtype))
        return tf.cast(outputs, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            use_bias=self.use_bias,
            sigma_0=self.sigma_0,
            init_s=self.init_s,
            posterior=self.posterior,
            seed=self.seed,
        )
        return config


class BayesConv2D(_BayesianTFPLayer):
    """2-D convolution with Bayesian kernel and bias (paper eq. 5), NHWC.

    Built on ``tfp.layers.Convolution2DReparameterization`` (``posterior="reparameterization"``:
    one weight sample per call, shared by the batch) or ``tfp.layers.Convolution2DFlipout``
    (``posterior="flipout"``: pseudo-independent perturbations per example).

    Args:
      filters: number of output channels.
      kernel_size: int or (kh, kw).
      strides: int or (sh, sw).
      padding: "same" or "valid".
      use_bias: whether the layer has a (Bayesian) bias.
      sigma_0: prior standard deviation.
      init_s: initial posterior standard deviation; ``s`` starts at ``log(init_s)``.
      posterior: "reparameterization" or "flipout".
      seed: optional non-negative int seeding the mu initializers and the layer's generator.

    Input float [B, H, W, C_in]; output [B, H', W', filters] in the layer's compute dtype.

    Flipout limitation: the Gaussian weight perturbation is drawn statelessly from the layer's
    generator, but TFP's Flipout layers draw their Rademacher sign flips with TensorFlow's
    stateful RNG (TFP passes ``seed`` through a ``SeedStream``, which rejects tensor seeds). The
    signs are fresh on every call and get an op seed derived from ``seed``, but their state is not
    in the checkpoint and their exact values depend on the global seed and the call history.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        *,
        strides=1,
        padding="same",
        use_bias=True,
        sigma_0,
        init_s,
        posterior="reparameterization",
        seed=None,
        **kwargs,
    ):
        self.filters = validation.integer("filters", filters, minimum=1)
        self.padding = validation.choice("padding", padding, ("same", "valid"))
        self.kernel_size = validation.positive_pair("kernel_size", kernel_size)
        self.strides = validation.positive_pair("strides", strides)
        super().__init__(
            use_bias=use_bias,
            sigma_0=sigma_0,
            init_s=init_s,
            posterior=posterior,
            seed=seed,
            **kwargs,
        )

    def _make_tfp_layer(self, **kwargs):
        if self.posterior == "flipout":
            return tfp.layers.Convolution2DFlipout(
                self.filters,
                self.kernel_size,
                strides=self.strides,
                padding=self.padding,
                seed=derive_seed(self.seed, "flipout"),
                **kwargs,
            )
        return tfp.layers.Convolution2DReparameterization(
            self.filters, self.kernel_size, strides=self.strides, padding=self.padding, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
        )
        return config


class BayesDense(_BayesianTFPLayer):
    """Fully connected layer with Bayesian kernel and bias (paper eq. 5).

    Built on ``tfp.layers.DenseReparameterization`` or ``tfp.layers.DenseFlipout``; arguments as
    for ``BayesConv2D`` (same Flipout limitation). Input float [B, D_in]; output [B, units].
    """

    def __init__(
        self,
        units,
        *,
        use_bias=True,
        sigma_0,
        init_s,
        posterior="reparameterization",
        seed=None,
        **kwargs,
    ):
        self.units = validation.integer("units", units, minimum=1)
        super().__init__(
            use_bias=use_bias,
            sigma_0=sigma_0,
            init_s=init_s,
            posterior=posterior,
            seed=seed,
            **kwargs,
        )

    def _make_tfp_layer(self, **kwargs):
        if self.posterior == "flipout":
            return tfp.layers.DenseFlipout(
                self.units, seed=derive_seed(self.seed, "flipout"), **kwargs
            )
        return tfp.layers.DenseReparameterization(self.units, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config
