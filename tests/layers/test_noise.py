"""Tests of tfp_advbnn.layers.noise: the RSE RandomNoise layer."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from layer_cases import random_inputs

from tfp_advbnn.layers.noise import RandomNoise


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
    x = random_inputs((3, 4))
    np.testing.assert_array_equal(RandomNoise(0.0)(x).numpy(), x.numpy())


@pytest.mark.parametrize(
    "make, bad",
    [
        (lambda: RandomNoise(-0.1), "-0.1"),
        (lambda: RandomNoise("0.1"), "'0.1'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()
