"""Tests for tfp_advbnn.data.folder: listing, decoding and the pipelines of image folders."""

import numpy as np
import pytest
import tensorflow as tf
from data_samples import all_batches, colors_of, make_folder, write_image

from tfp_advbnn.data.registry import load_data


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "images")


def test_folder_spec_and_unaugmented_val(folder):
    loaded = load_data("folder", data_dir=folder, image_size=(8, 10))
    spec = loaded.spec
    assert spec.class_names == ("ant", "cat", "emu")  # Sorted, not creation order.
    assert (spec.num_classes, spec.num_train, spec.num_test) == (3, 12, 6)
    assert (spec.image_shape, spec.augmentation) == ((8, 10, 3), "resized_crop_flip")
    images, labels = loaded.test_arrays()
    assert images.shape == (6, 8, 10, 3) and images.dtype == np.float32
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    error = np.abs(images - colors_of(labels, spec.class_names)[:, None, None, :]).max((1, 2, 3))
    # Solid colours: the 3 PNGs resize exactly, the lossy JPEGs to within a few levels.
    assert (error < 1e-6).sum() >= 3 and error.max() < 4 / 255
    streamed = all_batches(loaded.test_dataset(batch_size=4))
    assert [len(y) for _, y in streamed] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in streamed]), images)


def test_folder_train_labels_and_augmentation(folder):
    loaded = load_data("folder", data_dir=folder, image_size=(16, 16))
    first = all_batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1))
    again = all_batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1))
    other = all_batches(loaded.train_dataset(batch_size=4, epoch=1, seed=1))
    images = np.concatenate([x for x, _ in first])
    labels = np.concatenate([y for _, y in first])
    assert images.shape == (12, 16, 16, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # Each image's mean colour is its class colour: labels travel with their images.
    np.testing.assert_allclose(
        images.mean(axis=(1, 2)), colors_of(labels, loaded.spec.class_names), atol=0.03
    )
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(images, np.concatenate([x for x, _ in other]))
    # Augmented crops differ from the plain resize of the same files.
    plain = all_batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1, augment=False))
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in plain]))
    assert not np.allclose(images, np.concatenate([x for x, _ in plain]), atol=0.05)


def test_folder_converts_grey_images_to_rgb_and_skips_other_files(folder):
    write_image(folder / "val" / "ant" / "c.png", np.full((9, 9, 1), 77, np.uint8))
    (folder / "val" / "ant" / "notes.txt").write_text("not an image")
    (folder / "val" / "ant" / "._c.png").write_bytes(b"macOS resource fork")
    images, labels = load_data("folder", data_dir=folder, image_size=(4, 4)).test_arrays()
    assert images.shape == (7, 4, 4, 3) and (labels == 0).sum() == 3
    grey = np.abs(images - 77 / 255).max((1, 2, 3)) < 1e-6
    assert grey.sum() == 1 and labels[grey][0] == 0


def test_folder_caps_and_validation(folder):
    loaded = load_data(
        "folder",
        data_dir=folder,
        image_size=(8, 8),
        max_train_examples=10,
        max_test_examples=3,
        validation_examples=4,
    )
    assert (loaded.spec.num_train, loaded.spec.num_validation, loaded.spec.num_test) == (6, 4, 3)
    val_x, val_y = loaded.validation_arrays()
    np.testing.assert_allclose(
        val_x.mean(axis=(1, 2)), colors_of(val_y, loaded.spec.class_names), atol=0.03
    )
    train_x = np.concatenate(
        [x for x, _ in all_batches(loaded.train_dataset(batch_size=2, augment=False))]
    )
    assert not any(np.array_equal(t, v) for t in train_x for v in val_x)


@pytest.mark.parametrize(
    "bad_file", ["train/cat/img9.png", "val/ant/0_first.png", "val/emu/z_last.jpg"]
)
def test_corrupt_image_error_names_the_file(bad_file, folder):
    (folder / bad_file).write_bytes(b"this is not an image")
    loaded = load_data("folder", data_dir=folder, image_size=(8, 8))
    split = bad_file.split("/")[0]
    dataset = (
        loaded.train_dataset(batch_size=2)
        if split == "train"
        else loaded.test_dataset(batch_size=2)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=bad_file):
        all_batches(dataset)


def test_class_mismatch_between_train_and_val(tmp_path):
    root = make_folder(tmp_path / "images")
    (root / "val" / "dog").mkdir()
    write_image(root / "val" / "dog" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"classes differ.*only in train \[\].*only in val \['dog'\]"
    ):
        load_data("folder", data_dir=root, image_size=(8, 8))


def test_empty_class_folder_is_named(folder):
    (folder / "train" / "yak").mkdir()
    (folder / "train" / "yak" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty image folder: .*train/yak"):
        load_data("folder", data_dir=folder, image_size=(8, 8))


@pytest.mark.parametrize(
    "layout,error,message",
    [
        ("no_root", FileNotFoundError, "image folder root does not exist"),
        ("no_val", FileNotFoundError, "split directory is missing: .*val"),
        ("no_classes", ValueError, "has no class subdirectories"),
    ],
)
def test_folder_structure_errors(layout, error, message, tmp_path):
    root = tmp_path / "images"
    if layout != "no_root":
        (root / "train").mkdir(parents=True)
        write_image(root / "train" / "cat" / "a.png", np.zeros((4, 4, 3), np.uint8))
        if layout == "no_classes":
            (root / "val").mkdir()
    with pytest.raises(error, match=message):
        load_data("folder", data_dir=root, image_size=(8, 8))
