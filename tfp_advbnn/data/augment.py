"""Training augmentation and its randomness, a pure function of (seed, epoch, example index).

Follows the paper's reference code: in-memory data sets (CIFAR-10, STL-10) get "crop_flip", a
random crop after 4-pixel zero padding plus a horizontal flip; image folders get
"resized_crop_flip", a random square crop covering 80-90 % of the image area, a resize and a
flip. All draws come from stateless ops seeded with (a key derived from (seed, epoch), example
index), so the same epoch gives the same batches whatever the global TF seed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_PAD_PIXELS = 4
_RESIZED_CROP_AREA = (0.8, 0.9)


def epoch_streams(seed: int, epoch: int, size: int) -> tuple[np.ndarray, int, int]:
    """(permutation of range(size), crop key, flip key), all a function of (seed, epoch) only."""
    order_seq, crop_seq, flip_seq = np.random.SeedSequence([seed, epoch]).spawn(3)
    order = np.random.default_rng(order_seq).permutation(size)
    # 63-bit keys: stateless-op seeds are int64 pairs (key, example index).
    crop_key, flip_key = (int(s.generate_state(1, np.uint64)[0] >> 1) for s in (crop_seq, flip_seq))
    return order, crop_key, flip_key


def element_seed(key: int, index: tf.Tensor) -> tf.Tensor:
    """Stateless-op seed int64 [2] for one example: (per-(seed, epoch) key, example index)."""
    return tf.stack([tf.constant(key, tf.int64), index])


def pad_crop_flip(image: tf.Tensor, index: tf.Tensor, crop_key: int, flip_key: int) -> tf.Tensor:
    """Random crop of the 4-pixel zero-padded image back to its size, then a random flip."""
    padded = tf.pad(image, [[_PAD_PIXELS, _PAD_PIXELS], [_PAD_PIXELS, _PAD_PIXELS], [0, 0]])
    cropped = tf.image.stateless_random_crop(
        padded, image.shape, seed=element_seed(crop_key, index)
    )
    return tf.image.stateless_random_flip_left_right(cropped, seed=element_seed(flip_key, index))


def random_square_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Square crop covering a uniform 80-90 % of the image area at a uniform position.

    Square crops follow the reference code (RandomResizedCrop(scale=(0.8, 0.9), ratio=(1, 1)));
    where the square would not fit (elongated images) its side is clamped to the shorter side.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    draws = tf.random.stateless_uniform([3], seed=seed)
    low, high = _RESIZED_CROP_AREA
    area = (low + (high - low) * draws[0]) * tf.cast(height * width, tf.float32)
    side = tf.cast(tf.round(tf.sqrt(area)), tf.int32)
    side = tf.clip_by_value(side, 1, tf.minimum(height, width))
    top = tf.cast(draws[1] * tf.cast(height - side + 1, tf.float32), tf.int32)
    left = tf.cast(draws[2] * tf.cast(width - side + 1, tf.float32), tf.int32)
    top, left = tf.minimum(top, height - side), tf.minimum(left, width - side)
    return image[top : top + side, left : left + side]


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """float32 [h, w, 3] in [0, 1] -> float32 [H, W, 3] in [0, 1] (bilinear, antialiased)."""
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def resized_crop_flip(
    image: tf.Tensor, index: tf.Tensor, crop_key: int, flip_key: int, size: tuple[int, int]
) -> tf.Tensor:
    """`random_square_crop`, resized to `size` (H, W), then a random horizontal flip."""
    image = random_square_crop(image, element_seed(crop_key, index))
    image = resize(image, size)
    return tf.image.stateless_random_flip_left_right(image, seed=element_seed(flip_key, index))
