"""Tests for tfp_advbnn.data.augment: pad-crop-flip, square crops, (seed, epoch) streams."""

import numpy as np
import pytest
import tensorflow as tf
from data_samples import all_batches, decode_reference

from tfp_advbnn.data.augment import random_square_crop
from tfp_advbnn.data.registry import load_data


@pytest.fixture(scope="module")
def reference(cifar_bin_dir):
    return decode_reference(cifar_bin_dir)


@pytest.fixture(scope="module")
def small(cifar_bin_dir):
    """64 training and 40 test examples: enough for pipeline checks, fast on 2 CPUs."""
    return load_data("cifar10", data_dir=cifar_bin_dir, max_train_examples=64, max_test_examples=40)


def _find_crop_flip(augmented: np.ndarray, source: np.ndarray):
    """(dy, dx, flipped) such that augmented is that crop of the zero-padded source, or None."""
    padded = np.pad(source, ((4, 4), (4, 4), (0, 0)))
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + 32, dx : dx + 32]
            for flipped in (False, True):
                if np.array_equal(crop[:, ::-1] if flipped else crop, augmented):
                    return dy, dx, flipped
    return None


def test_train_augmentation_is_pad_crop_flip_of_the_same_examples(small, reference):
    (x_train, y_train), _ = reference
    plain = all_batches(small.train_dataset(batch_size=16, epoch=3, seed=5, augment=False))
    augmented = all_batches(small.train_dataset(batch_size=16, epoch=3, seed=5))
    plain_x = np.concatenate([x for x, _ in plain])
    aug_x = np.concatenate([x for x, _ in augmented])
    assert aug_x.dtype == np.float32 and aug_x.min() >= 0.0 and aug_x.max() <= 1.0
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in plain]), np.concatenate([y for _, y in augmented])
    )
    # The unaugmented order is a permutation of the first 64 training examples.
    source_uint8 = np.rint(plain_x * 255).astype(np.uint8)
    flat = x_train[:64].reshape(64, -1)
    positions = [int(np.flatnonzero((flat == s.reshape(-1)).all(1))[0]) for s in source_uint8]
    assert sorted(positions) == list(range(64))
    transforms = [
        _find_crop_flip(np.rint(a * 255).astype(np.uint8), s)
        for a, s in zip(aug_x, source_uint8, strict=True)
    ]
    assert None not in transforms
    # Offsets and flips vary: the augmentation is really random across examples.
    assert len({t[:2] for t in transforms}) > 10
    assert 10 < sum(t[2] for t in transforms) < 54


def test_train_batches_are_a_function_of_seed_and_epoch(small):
    def epoch_of(**kwargs):
        return all_batches(small.train_dataset(batch_size=16, **kwargs))

    first = epoch_of(epoch=1, seed=7)
    again = epoch_of(epoch=1, seed=7)
    tf.random.set_seed(1234)  # The global TF seed must not matter.
    third = epoch_of(epoch=1, seed=7)
    for (x1, y1), (x2, y2), (x3, _) in zip(first, again, third, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x3)
    for other in (epoch_of(epoch=2, seed=7), epoch_of(epoch=1, seed=8)):
        x_first = np.concatenate([x for x, _ in first])
        x_other = np.concatenate([x for x, _ in other])
        assert not np.array_equal(
            np.concatenate([y for _, y in first]), np.concatenate([y for _, y in other])
        )
        assert not np.array_equal(x_first, x_other)
    # skip() into an epoch gives the tail of the same epoch (resume).
    tail = all_batches(small.train_dataset(batch_size=16, epoch=1, seed=7).skip(2))
    np.testing.assert_array_equal(tail[0][0], first[2][0])


@pytest.mark.parametrize("height,width,num_sides", [(37, 37, 3), (60, 50, 2), (10, 100, 1)])
def test_random_square_crop_covers_80_to_90_percent(height, width, num_sides):
    image = tf.reshape(tf.range(height * width, dtype=tf.float32), (height, width, 1))
    area = height * width
    sides, corners = set(), set()
    for i in range(60):
        crop = random_square_crop(image, tf.constant([11, i], tf.int64)).numpy()
        side = crop.shape[0]
        assert crop.shape == (side, side, 1) and side <= min(height, width)
        # side = round(sqrt(u * area)), u in [0.8, 0.9], clamped to the shorter image side.
        assert (side - 0.5) ** 2 <= 0.9 * area
        assert side == min(height, width) or (side + 0.5) ** 2 >= 0.8 * area
        top, left = divmod(int(crop[0, 0, 0]), width)
        np.testing.assert_array_equal(crop, image.numpy()[top : top + side, left : left + side])
        sides.add(side)
        corners.add((top, left))
    assert len(sides) == num_sides
    assert len(corners) > 5
