"""Bayesian batch normalization: a sampled scale and offset over synchronized batch moments."""

import math

import tensorflow as tf
import tf_keras

from tfp_advbnn import validation
from tfp_advbnn.layers.kl import BayesianLayer
from tfp_advbnn.layers.sampling import make_generator, next_stateless_seed, standard_normal


class BayesBatchNormalization(BayesianLayer):
    """Batch normalization over the last axis with Bayesian scale (gamma) and offset (beta).

    gamma ~ N(gamma_mu, exp(gamma_s)^2) with gamma_mu initialised to 1, beta ~ N(beta_mu,
    exp(beta_s)^2) with beta_mu initialised to 0, both s initialised to log(init_s); prior
    N(0, sigma_0^2); eq. 6 KL of both in ``layer.losses``. A fresh (gamma, beta) is sampled on
    every call, in training and in inference.

    ``training=True``: normalizes with the batch mean and (biased) variance over all axes but the
    last, and updates ``moving = moving * momentum + batch * (1 - momentum)`` as tf_keras'
    BatchNormalization does. ``training=False`` (the default): uses the moving statistics.
    Statistics and normalization are computed in float32; output is in the compute dtype.

    Under a ``tf.distribute`` strategy with several replicas the batch moments are those of
    the global batch (all-reduced, as tf_keras' ``synchronized=True`` does).
    """

    def __init__(self, *, sigma_0, init_s, momentum=0.9, epsilon=1e-5, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.sigma_0 = validation.positive("sigma_0", sigma_0)
        self.init_s = validation.positive("init_s", init_s)
        self.momentum = validation.number("momentum", momentum, low=0, high=1)
        self.epsilon = validation.positive("epsilon", epsilon)
        self.seed = validation.seed("seed", seed)
        self.posterior_parameters = {}
        self._generator = None

    def build(self, input_shape):
        channels = tf.TensorShape(input_shape)[-1]
        if channels is None:
            raise ValueError(f"the channel axis of the input must be known, got {input_shape}")
        shape = (int(channels),)
        log_init_s = tf_keras.initializers.Constant(math.log(self.init_s))
        for role, mean in (("gamma", 1.0), ("beta", 0.0)):
            mu = self.add_weight(
                name=f"{role}_mu",
                shape=shape,
                initializer=tf_keras.initializers.Constant(mean),
                trainable=True,
            )
            s = self.add_weight(name=f"{role}_s", shape=shape, initializer=log_init_s)
            self.posterior_parameters[role] = (mu, s)
        # Mirrors tf_keras BatchNormalization: replicas update local copies, reads average them.
        moving = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
            experimental_autocast=False,
        )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, dtype=tf.float32, initializer="zeros", **moving
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, dtype=tf.float32, initializer="ones", **moving
        )
        self._generator = make_generator(self.seed)
        self._add_kl_losses()
        super().build(input_shape)

    def _sample(self, role):
        mu, s = self.posterior_parameters[role]
        mu = tf.cast(mu, tf.float32)
        noise = standard_normal(tf.shape(mu), next_stateless_seed(self._generator))
        return mu + tf.exp(tf.cast(s, tf.float32)) * noise

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        axes = list(range(x.shape.rank - 1))

        def batch_moments():
            mean, variance = _global_moments(x, axes)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
            return mean, variance

        def moving_moments():
            return tf.identity(self.moving_mean), tf.identity(self.moving_variance)

        if training is None:
            training = False
        mean, variance = tf.__internal__.smart_cond.smart_cond(
            training, batch_moments, moving_moments
        )
        gamma = self._sample("gamma")
        beta = self._sample("beta")
        outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            sigma_0=self.sigma_0,
            init_s=self.init_s,
            momentum=self.momentum,
            epsilon=self.epsilon,
            seed=self.seed,
        )
        return config


def _global_moments(x, axes):
    """Mean and biased variance over ``axes`` and, under a strategy, over all replicas."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.nn.moments(x, axes)
    sum_ = tf.distribute.ReduceOp.SUM
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
    count = context.all_reduce(sum_, count)
    total = context.all_reduce(sum_, tf.reduce_sum(x, axes))
    squares = context.all_reduce(sum_, tf.reduce_sum(tf.square(x), axes))
    mean = total / count
    return mean, tf.maximum(squares / count - tf.square(mean), 0.0)
