"""Models and data the attack tests share: a CIFAR-10 conv net, linear and counting models.

The trained conv net is built once per session (``trained_cifar_model`` is cached), as the
single test module of the flat layout did.
"""

import functools

import numpy as np
import tensorflow as tf
import tf_keras

NUM_EVAL = 48


def read_cifar_bin(path, num_examples):
    """First ``num_examples`` records of a CIFAR-10 binary batch: float32 NHWC in [0, 1], int32."""
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)[:num_examples]
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, raw[:, 0].astype(np.int32)


@functools.cache
def trained_cifar_model(cifar_bin_dir):
    """A small conv net trained briefly on 1,000 real CIFAR-10 images.

    Returns (model, model_fn, images [NUM_EVAL, 32, 32, 3], labels [NUM_EVAL]) where the images are
    training images the model classifies with accuracy well above chance.
    """
    x, y = read_cifar_bin(cifar_bin_dir / "data_batch_1.bin", 1000)
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((32, 32, 3)),
            tf_keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            tf_keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10),
        ]
    )
    model.compile(
        tf_keras.optimizers.Adam(3e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=50, epochs=15, verbose=0)

    def model_fn(images):
        return model(images, training=False)

    images, labels = x[:NUM_EVAL], y[:NUM_EVAL]
    assert accuracy(model_fn, images, labels) >= 0.5
    return model, model_fn, images, labels


def accuracy(model_fn, images, labels):
    return float(np.mean(np.argmax(model_fn(images), axis=1) == labels))


def linear_problem(num_classes=2, batch=6, seed=0):
    """A fixed linear model on [B, 4, 4, 3] images kept away from the box edges."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(48, num_classes)).astype(np.float32)
    bias = rng.normal(size=(num_classes,)).astype(np.float32)
    images = rng.uniform(0.3, 0.7, size=(batch, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch).astype(np.int32)

    def model_fn(x):
        return tf.reshape(x, [-1, 48]) @ weights + bias

    return model_fn, weights, bias, images, labels


def counting_model():
    """A stochastic linear model_fn that logs each call and the scalar weight noise it drew.

    logits = flat(x) @ (W + s * V) with s ~ N(0, 1) drawn on every call. ``calls`` counts the
    calls and ``draws[i]`` holds the noise of call i, as variables so graph runs update them.
    """
    rng = np.random.default_rng(1)
    weights = tf.constant(rng.normal(size=(48, 3)), tf.float32)
    shift = tf.constant(rng.normal(size=(48, 3)), tf.float32)
    calls = tf.Variable(0)
    draws = tf.Variable(tf.zeros([64]))
    # A generator, as the project's Bayesian layers use, so draws do not depend on global seeds.
    generator = tf.random.Generator.from_seed(7)

    def model_fn(x):
        noise = generator.normal([])
        draws.scatter_nd_update([[calls]], [noise])
        calls.assign_add(1)
        return tf.reshape(x, [-1, 48]) @ (weights + noise * shift)

    return model_fn, calls, draws


def linf(delta):
    return np.max(np.abs(delta), axis=(1, 2, 3))


def l2(delta):
    return np.sqrt(np.sum(np.square(delta), axis=(1, 2, 3)))
