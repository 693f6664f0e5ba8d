"""The noise layer of Random Self-Ensemble (RSE; Liu et al., ECCV 2018), on at inference too."""

import tensorflow as tf
import tf_keras

from tfp_advbnn import validation
from tfp_advbnn.layers.sampling import make_generator, next_stateless_seed, standard_normal


class RandomNoise(tf_keras.layers.Layer):
    """Additive N(0, stddev^2) noise, active in training AND inference (the RSE noise layer).

    Unlike tf_keras ``GaussianNoise`` (off at inference). ``stddev`` is in input units (pixel
    scale [0, 1] before the first conv). Fresh noise on every call, stateless sampling from the
    layer's own generator. Output has the input's shape and dtype.
    """

    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev = validation.non_negative("stddev", stddev)
        self.seed = validation.seed("seed", seed)
        self._generator = None

    def build(self, input_shape):
        self._generator = make_generator(self.seed)
        super().build(input_shape)

    def call(self, inputs):
        seed = next_stateless_seed(self._generator)
        noise = standard_normal(tf.shape(inputs), seed, inputs.dtype)
        return inputs + self.stddev * noise

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(stddev=self.stddev, seed=self.seed)
        return config
