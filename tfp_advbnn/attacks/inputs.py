"""Argument and input checks of the attacks: scalars that may be tensors, seeds, images, labels.

Plain-Python arguments go through ``tfp_advbnn.validation``. What only this package needs stays
here: a scalar given as a tensor (an eps sweep passes one to avoid retracing) is checked with an
in-graph assertion when its value is unknown at trace time, and a seed may be a stateless seed
pair tensor.
"""

import numbers

import tensorflow as tf

from tfp_advbnn import validation

# Seed pair type accepted by the stateless random ops.
SEED_DTYPE = tf.int64


def scalar_tensor(name, value, *, positive):
    """Validates a non-negative (or positive) scalar and returns it as a float32 tensor.

    Python numbers and tensors whose value is known (eager, or constant at trace time) are
    checked here with a ValueError; a symbolic tensor (inside tf.function) gets an in-graph
    assertion instead.
    """
    if isinstance(value, tf.Tensor | tf.Variable):
        if value.shape.rank not in (None, 0):
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {value.shape}")
        if not value.dtype.is_floating and not value.dtype.is_integer:
            raise ValueError(f"{name} must be a real number, got dtype {value.dtype.name}")
        tensor = tf.cast(value, tf.float32)
        static = tf.get_static_value(tensor)
        if static is None:
            check = tf.debugging.assert_greater if positive else tf.debugging.assert_greater_equal
            bound = "> 0" if positive else ">= 0"
            with tf.control_dependencies([check(tensor, 0.0, message=f"{name} must be {bound}")]):
                return tf.identity(tensor)
        value = float(static)
    check = validation.positive if positive else validation.non_negative
    return tf.constant(check(name, value), tf.float32)


def seed_pair(seed):
    """Turns ``seed`` (None, an int, or an int tensor of shape [2]) into a stateless seed pair.

    Unlike ``validation.seed`` any int is accepted (a negative one too): the stateless ops take
    any int64 pair.
    """
    if seed is None:
        return None
    if isinstance(seed, bool):
        raise ValueError(f"seed must be None, an int or a shape-[2] int tensor, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        return tf.constant([int(seed), 0], SEED_DTYPE)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape != (2,):
        raise ValueError(f"seed must be None, an int or a shape-[2] int tensor, got {seed!r}")
    return tf.cast(seed, SEED_DTYPE)


def images_and_labels(images, labels):
    """Converts and checks ``images`` (float32, [B, ...] in [0, 1]) and ``labels`` (int, [B]).

    Returns (images float32, labels int32). Eager inputs are checked here; symbolic images get
    in-graph assertions that they lie in [0, 1].
    """
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        raise ValueError(f"images must be float32 in [0, 1], got dtype {images.dtype.name}")
    if images.shape.rank is not None and images.shape.rank < 2:
        raise ValueError(f"images must have shape [B, H, W, 3], got shape {images.shape}")
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [B], got shape {labels.shape}")
    labels = tf.cast(labels, tf.int32)
    if tf.executing_eagerly():
        low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
        if images.shape.num_elements() and (low < 0.0 or high > 1.0):
            raise ValueError(f"images must lie in [0, 1], got values in [{low}, {high}]")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels disagree on the batch size: {images.shape} vs {labels.shape}"
            )
    else:
        checks = [
            tf.debugging.assert_greater_equal(images, 0.0, message="images must lie in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="images must lie in [0, 1]"),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
    return images, labels
