"""Tests for tfp_advbnn.data.stl10: the official stl10_binary layout, read from generated files.

The files are written here from known images by the layout's definition (channel-first, every
channel column-major, labels 1 to 10), through numpy's Fortran-order ravel, not the reader's
reshape; a reader that swaps rows and columns or mixes the channels fails these tests.
"""

import numpy as np
import pytest

from tfp_advbnn.data import load_data, load_stl10_arrays

SIDE = 96
IMAGE_BYTES = SIDE * SIDE * 3
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def known_images(count: int, offset: int) -> np.ndarray:
    """uint8 [count, 96, 96, 3]: pixel (n, row r, column c, channel k) = 3r+5c+71k+13n mod 256.

    The coefficients of r and c differ, so a transposed image differs from the original.
    """
    n, r, c, k = np.meshgrid(
        np.arange(count) + offset, np.arange(SIDE), np.arange(SIDE), np.arange(3), indexing="ij"
    )
    return ((3 * r + 5 * c + 71 * k + 13 * n) % 256).astype(np.uint8)


def official_bytes(images: np.ndarray) -> bytes:
    """The official byte order: per image, the red, green, blue planes, each column by column."""
    return b"".join(
        image[:, :, channel].ravel(order="F").tobytes() for image in images for channel in range(3)
    )


def write_stl10(root, *, train_labels=(1, 10, 4), test_labels=(7, 2), names=CLASSES):
    """Writes stl10_binary/ under ``root``; returns (its path, train images, test images)."""
    binary = root / "stl10_binary"
    binary.mkdir(parents=True)
    train = known_images(len(train_labels), 0)
    test = known_images(len(test_labels), 50)
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        (binary / f"{split}_X.bin").write_bytes(official_bytes(images))
        (binary / f"{split}_y.bin").write_bytes(bytes(labels))
    (binary / "class_names.txt").write_text("".join(f"{name}\n" for name in names))
    return binary, train, test


def test_reads_images_labels_and_names_in_the_official_layout(tmp_path):
    binary, train, test = write_stl10(tmp_path)
    (x_train, y_train), (x_test, y_test), names = load_stl10_arrays(binary)
    assert x_train.shape == (3, 96, 96, 3) and x_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train, train)
    np.testing.assert_array_equal(x_test, test)
    np.testing.assert_array_equal(y_train, [0, 9, 3])
    np.testing.assert_array_equal(y_test, [6, 1])
    assert y_train.dtype == np.int32 and names == CLASSES


def test_each_pixel_comes_from_its_byte_offset(tmp_path):
    """Pixel (n, r, c, k) is byte n * 27648 + k * 9216 + c * 96 + r of the file (column-major)."""
    binary, _, _ = write_stl10(tmp_path)
    raw = np.frombuffer((binary / "train_X.bin").read_bytes(), np.uint8)
    (x_train, _), _, _ = load_stl10_arrays(binary)
    rng = np.random.default_rng(0)
    for n, r, c, k in zip(*(rng.integers(0, m, 50) for m in (3, SIDE, SIDE, 3)), strict=True):
        assert x_train[n, r, c, k] == raw[n * IMAGE_BYTES + k * SIDE * SIDE + c * SIDE + r]
    # The top-right corner of the red plane is the first byte of the last column.
    assert x_train[0, 0, SIDE - 1, 0] == raw[(SIDE - 1) * SIDE]


@pytest.mark.parametrize("given", ["parent", "binary"])
def test_load_data_reads_the_directory_or_its_parent(tmp_path, given):
    binary, train, test = write_stl10(tmp_path)
    data_dir = tmp_path if given == "parent" else binary
    loaded = load_data("stl10", data_dir=data_dir, download=False)
    spec = loaded.spec
    assert (spec.image_shape, spec.num_train, spec.num_test) == ((96, 96, 3), 3, 2)
    assert spec.class_names == CLASSES
    images, labels = loaded.test_arrays()
    np.testing.assert_array_equal(images, test.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(labels, [6, 1])


def _truncate(binary):
    path = binary / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-1])


def _remove(name):
    return lambda binary: (binary / name).unlink()


@pytest.mark.parametrize(
    "damage,error,message",
    [
        (_remove("test_y.bin"), FileNotFoundError, r"incomplete: missing .*test_y\.bin"),
        (_truncate, ValueError, r"test_X\.bin: truncated or corrupt image file"),
        (
            lambda b: (b / "train_y.bin").write_bytes(bytes([1, 2])),
            ValueError,
            r"train_y\.bin: 2 labels for the 3 images",
        ),
        (
            lambda b: (b / "test_y.bin").write_bytes(bytes([3, 0])),
            ValueError,
            r"test_y\.bin: label 0 of example 1 is out of range \[1, 10\]",
        ),
        (
            lambda b: (b / "train_y.bin").write_bytes(bytes([11, 1, 1])),
            ValueError,
            r"train_y\.bin: label 11 of example 0",
        ),
        (
            lambda b: (b / "class_names.txt").write_text("a\nb\n"),
            ValueError,
            r"class_names\.txt: expected 10 class names, found 2",
        ),
    ],
)
def test_damaged_files_name_the_file(tmp_path, damage, error, message):
    binary, _, _ = write_stl10(tmp_path)
    damage(binary)
    with pytest.raises(error, match=message):
        load_stl10_arrays(binary)


def test_a_directory_without_stl10_names_the_layouts(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="no STL-10 data in .*stl10_binary.*stl10/ folder"):
        load_data("stl10", data_dir=tmp_path / "other", download=False)
