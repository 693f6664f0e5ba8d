"""The KL term of eq. 6: its closed form, its registration as a layer loss, its model total.

Every weight and bias ``w`` of a Bayesian layer has the mean-field Gaussian posterior
``q(w) = N(mu, exp(s)^2)`` and the prior ``p(w) = N(0, sigma_0^2)``, whose KL divergence is

    KL(q || p) = sum_i [ log(sigma_0 / sigma_i) + (sigma_i^2 + mu_i^2) / (2 sigma_0^2) - 1/2 ].

Summed over all weights and biases of a layer and unscaled, it is in ``layer.losses`` as a
callable loss: it is computed from the current mu and s whenever ``losses`` is read (not in every
forward pass); ``model_kl`` sums it over a model.
"""

import functools
import math

import tensorflow as tf
import tf_keras


def kl_normal(mu, s, sigma_0):
    """Eq. 6: KL(N(mu, exp(s)^2) || N(0, sigma_0^2)) summed over all elements.

    Args:
      mu: posterior means, any shape.
      s: posterior log standard deviations, same shape as ``mu``.
      sigma_0: prior standard deviation, a positive Python float.

    Returns:
      float32 scalar. Computed in float32 whatever the variables' dtype, so that it stays
      accurate under mixed precision; uses ``s`` directly rather than ``log(exp(s))``.
    """
    mu = tf.cast(mu, tf.float32)
    s = tf.cast(s, tf.float32)
    inv_two_var0 = 1.0 / (2.0 * sigma_0 * sigma_0)
    return tf.reduce_sum(
        math.log(sigma_0) - s + (tf.exp(2.0 * s) + tf.square(mu)) * inv_two_var0 - 0.5
    )


class BayesianLayer(tf_keras.layers.Layer):
    """Base of the Bayesian layers (``BayesConv2D``, ``BayesDense``, ``BayesBatchNormalization``).

    A subclass sets ``sigma_0`` (the prior standard deviation), fills ``posterior_parameters``
    (role, e.g. "kernel" or "gamma" -> its (mu, s) variables) in ``build`` and then calls
    ``_add_kl_losses``. ``bayesian_variables`` recognizes Bayesian layers by this class.
    """

    def _add_kl_losses(self):
        """Adds the eq. 6 KL of each of the layer's (mu, s) pairs as a callable loss.

        tf_keras evaluates a callable loss whenever ``layer.losses`` is read, from the
        variables' current values. A KL computed in ``call`` instead would be recomputed in
        every forward pass, every PGD step included, where nothing reads it; measured on VGG16
        (15M weights, batch 32) that doubled the time of a PGD-20 evaluation step.
        """
        for mu, s in self.posterior_parameters.values():
            self.add_loss(functools.partial(kl_normal, mu, s, self.sigma_0))


def model_kl(model_or_layer):
    """Sum of ``model_or_layer.losses`` as a float32 scalar (0.0 when there are none).

    For models built by ``tfp_advbnn.models.build_model`` the only losses are the Bayesian
    layers' KL terms (eq. 6), so this is the model's total KL over all its layers. It depends
    only on the variables (it is computed when called, in the current context), so it is
    valid anywhere once the model is built, and differentiable with respect to every mu and s.
    """
    losses = model_or_layer.losses
    if not losses:
        return tf.constant(0.0, tf.float32)
    return tf.add_n([tf.cast(loss, tf.float32) for loss in losses])


def bayesian_variables(model_or_layer):
    """The (mu, s) variables of every Bayesian layer in ``model_or_layer``, nested ones included.

    These are regularized by the KL term, so training excludes them from weight decay. Empty for
    a model without Bayesian layers. Only built layers have variables.
    """
    variables = []
    for module in (model_or_layer, *model_or_layer.submodules):
        if isinstance(module, BayesianLayer):
            for mu, s in module.posterior_parameters.values():
                variables.extend((mu, s))
    return variables
