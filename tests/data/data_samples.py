"""Sample data for the tests of tfp_advbnn.data: CIFAR-10 copies, references and image folders.

Not a test module: the test files of this folder import these helpers and wrap the ones they
need in fixtures.
"""

import pathlib
import tarfile

import numpy as np
import tensorflow as tf

N_TRAIN, N_TEST = 5085, 1017
RECORD = 3073


def link_layout(src: pathlib.Path, dst: pathlib.Path, skip=()) -> pathlib.Path:
    """A writable copy of a batches dir made of symlinks, minus the names in `skip`."""
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if file.name not in skip:
            (dst / file.name).symlink_to(file)
    return dst


def make_tarball(src: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        archive.add(src, arcname=src.name)
    return path


def all_batches(dataset):
    """Every batch of `dataset` as numpy (images, labels) pairs."""
    return [(x, y) for x, y in dataset.as_numpy_iterator()]


def decode_reference(cifar_bin_dir: pathlib.Path):
    """Arrays decoded here, independently of the library, from the binary records."""

    def decode(name):
        raw = np.fromfile(cifar_bin_dir / name, dtype=np.uint8).reshape(-1, RECORD)
        images = np.empty((raw.shape[0], 32, 32, 3), np.uint8)
        for channel in range(3):
            start = 1 + 1024 * channel
            images[..., channel] = raw[:, start : start + 1024].reshape(-1, 32, 32)
        return images, raw[:, 0].astype(np.int32)

    train = [decode(f"data_batch_{i}.bin") for i in range(1, 6)]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), decode("test_batch.bin")


COLORS = {"emu": (200, 30, 30), "ant": (20, 180, 40), "cat": (40, 60, 220)}


def write_image(path: pathlib.Path, pixels: np.ndarray):
    encode = tf.io.encode_png if path.suffix == ".png" else tf.io.encode_jpeg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(pixels).numpy())


def make_folder(root: pathlib.Path, classes=tuple(COLORS), train_per_class=4):
    """Train images: class colour plus +-20 noise at varied sizes; val: solid class colour."""
    rng = np.random.default_rng(0)
    sizes = [(20, 24), (30, 18), (24, 24), (17, 29)]
    for name in classes:
        color = np.array(COLORS[name], np.int32)
        for i in range(train_per_class):
            height, width = sizes[i % len(sizes)]
            noise = rng.integers(-20, 21, (height, width, 3))
            pixels = np.clip(color + noise, 0, 255).astype(np.uint8)
            write_image(root / "train" / name / f"img{i}.png", pixels)
        write_image(root / "val" / name / "a.png", np.full((12, 14, 3), color, np.uint8))
        write_image(root / "val" / name / "b.jpg", np.full((16, 16, 3), color, np.uint8))
    return root


def colors_of(labels, class_names):
    return np.array([COLORS[class_names[i]] for i in labels], np.float32) / 255
