"""Tests for tfp_advbnn.data.registry: load_data by name, its arguments and its splits."""

import types
from unittest import mock

import numpy as np
import pytest
from data_samples import N_TEST, all_batches, decode_reference, make_folder

from tfp_advbnn.data.registry import DATASETS, load_data


@pytest.fixture(scope="module")
def reference(cifar_bin_dir):
    return decode_reference(cifar_bin_dir)


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "images")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "imagenet"}, "unknown data set 'imagenet'"),
        ({"max_train_examples": 0}, "max_train_examples must be an integer >= 1, got 0"),
        ({"max_test_examples": -3}, "max_test_examples must be an integer >= 1, got -3"),
        ({"max_train_examples": True}, "max_train_examples"),
        ({"validation_examples": -1}, "validation_examples must be an integer >= 0, got -1"),
        ({"max_train_examples": 10, "validation_examples": 10}, "leaves no training examples"),
        ({"image_size": (64, 64)}, "differs from the native"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments(kwargs, message, cifar_bin_dir):
    kwargs = {"name": "cifar10", "data_dir": cifar_bin_dir, **kwargs}
    with pytest.raises(ValueError, match=message):
        load_data(kwargs.pop("name"), **kwargs)


def test_validation_split_is_the_tail_of_the_capped_train_set(cifar_bin_dir, reference):
    (x_train, y_train), _ = reference
    loaded = load_data(
        "cifar10", data_dir=cifar_bin_dir, max_train_examples=60, validation_examples=12
    )
    spec = loaded.spec
    assert (spec.num_train, spec.num_validation, spec.num_test) == (48, 12, N_TEST)
    val_x, val_y = loaded.validation_arrays()
    np.testing.assert_array_equal(val_x, x_train[48:60].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(val_y, y_train[48:60])
    streamed = np.concatenate([x for x, _ in all_batches(loaded.validation_dataset(batch_size=5))])
    np.testing.assert_array_equal(streamed, val_x)
    train_x = np.concatenate(
        [x for x, _ in all_batches(loaded.train_dataset(batch_size=8, augment=False))]
    )
    train_keys = {row.tobytes() for row in np.rint(train_x * 255).astype(np.uint8)}
    assert train_keys == {row.tobytes() for row in x_train[:48]}
    assert train_keys.isdisjoint(row.tobytes() for row in x_train[48:60])


@pytest.mark.parametrize("image_size", [None, (0, 8), (8,), (8.0, 8), "8x8"])
def test_folder_image_size_is_validated(image_size, folder):
    with pytest.raises(ValueError, match="image_size"):
        load_data("folder", data_dir=folder, image_size=image_size)


def _make_stl10_store(root):
    """A tfds store prepared by the real STL-10 builder from generated files: 3 train, 2 test.

    Returns (store directory, uint8 [2, 96, 96, 3] test images); test image i has label i.
    """
    import tensorflow_datasets as tfds

    raw = root / "raw" / "stl10_binary"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2), ("unlabeled", 1)):
        # The official files: images uint8 [N, 3, 96, 96] column-major, labels 1-based uint8.
        rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8).tofile(raw / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count, dtype=np.uint8) + 1).tofile(raw / f"{split}_y.bin")
    (raw / "class_names.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    store = root / "tfds"
    builder = tfds.builder("stl10", data_dir=str(store))
    # The builder asks its download manager for the official archive; this offline stand-in
    # hands it the generated files instead.
    offline = types.SimpleNamespace(
        download_and_extract=lambda url: str(raw.parent), downloaded_size=0
    )
    with mock.patch.object(type(builder), "_make_download_manager", return_value=offline):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP
            )
        )
    test_images = np.fromfile(raw / "test_X.bin", np.uint8).reshape(2, 3, 96, 96)
    return store, test_images.transpose(0, 3, 2, 1)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
CIFAR10_CLASSES += ("dog", "frog", "horse", "ship", "truck")


def _pairs(images, labels):
    return sorted(
        (image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
    )


def test_every_registered_name_loads(cifar_bin_dir, reference, folder, tmp_path):
    _, (x_test, y_test) = reference
    stl10_store, stl10_images = _make_stl10_store(tmp_path / "stl10")
    cases = {
        "cifar10": (
            {"data_dir": cifar_bin_dir, "max_test_examples": 8},
            ((32, 32, 3), "crop_flip", CIFAR10_CLASSES),
            (x_test[:8], y_test[:8]),
        ),
        "stl10": (
            {"data_dir": stl10_store},
            ((96, 96, 3), "crop_flip", tuple(f"class{i}" for i in range(10))),
            (stl10_images, np.arange(2)),
        ),
        "folder": (
            {"data_dir": folder, "image_size": (8, 8)},
            ((8, 8, 3), "resized_crop_flip", ("ant", "cat", "emu")),
            None,
        ),
    }
    assert sorted(cases) == sorted(DATASETS), "every registered data set needs a case here"
    for name in DATASETS:
        kwargs, (image_shape, augmentation, class_names), expected = cases[name]
        loaded = load_data(name, **kwargs)
        spec = loaded.spec
        assert (spec.name, spec.image_shape, spec.augmentation) == (name, image_shape, augmentation)
        assert (spec.class_names, spec.num_classes) == (class_names, len(class_names))
        images, labels = loaded.test_arrays()
        assert images.shape == (spec.num_test, *image_shape) and images.dtype == np.float32
        if expected is not None:  # The same (image, label) pairs; tfds stores them shuffled.
            pixels = np.rint(images * 255).astype(np.uint8)
            assert _pairs(pixels, labels) == _pairs(*expected)
        x, y = next(iter(loaded.train_dataset(batch_size=2)))
        assert x.shape == (2, *image_shape) and y.shape == (2,)


def test_unknown_name_lists_the_registered_ones(cifar_bin_dir):
    with pytest.raises(ValueError, match="unknown data set 'imagenet'") as info:
        load_data("imagenet", data_dir=cifar_bin_dir)
    for name in DATASETS:
        assert repr(name) in str(info.value)
