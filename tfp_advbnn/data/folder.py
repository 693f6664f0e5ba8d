"""Image folders: `root/{train,val}/<class>/*.png|jpg|jpeg`, listed here and decoded lazily.

Used for ImageNet-143 and custom data. Listing gives file paths and labels in a seeded random
order; the pipelines decode each file with `decode_image_file` inside `checked_file_stream`, which
fails naming the file when one cannot be read.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _list_split(split_dir: pathlib.Path) -> dict[str, list[str]]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder split directory is missing: {split_dir}")
    try:
        class_dirs = sorted(
            e for e in split_dir.iterdir() if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as err:
        raise FileNotFoundError(f"cannot read {split_dir}: {err}") from None
    if not class_dirs:
        raise ValueError(f"{split_dir} has no class subdirectories (expected {split_dir}/<class>/)")
    files = {}
    for class_dir in class_dirs:
        try:
            entries = sorted(
                e.path
                for e in os.scandir(class_dir)
                if e.is_file()
                and not e.name.startswith(".")
                and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
        except OSError as err:
            raise FileNotFoundError(f"cannot read {class_dir}: {err}") from None
        if not entries:
            raise ValueError(
                f"empty image folder: {class_dir} holds no {'/'.join(IMAGE_EXTENSIONS)} files"
            )
        files[class_dir.name] = entries
    return files


def list_image_folder(root: pathlib.Path, seed: int):
    """Lists root/{train,val}/<class>/ images -> (train paths, labels), (val ...), class names.

    Paths are bytes [N] (object arrays), labels int32 [N], class names sorted. Both lists are put
    in a seeded random order: caps and the validation carve take leading and trailing slices,
    which in sorted order would hold only the first or last classes. Hidden files and directories
    (names starting with ".") are skipped.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root does not exist: {root}")
    train, val = _list_split(root / "train"), _list_split(root / "val")
    if sorted(train) != sorted(val):
        raise ValueError(
            f"classes differ between {root / 'train'} and {root / 'val'}: only in train "
            f"{sorted(set(train) - set(val))}, only in val {sorted(set(val) - set(train))}"
        )
    class_names = tuple(sorted(train))

    def flatten(files):
        # Bytes, so that any file name the OS allows becomes a tf.string.
        paths = [os.fsencode(p) for c in class_names for p in files[c]]
        labels = [i for i, c in enumerate(class_names) for _ in files[c]]
        return np.array(paths, dtype=object), np.array(labels, dtype=np.int32)

    def shuffled(files, stream):
        paths, labels = flatten(files)
        order = np.random.default_rng([seed, stream]).permutation(len(paths))
        return paths[order], labels[order]

    return shuffled(train, 0), shuffled(val, 1), class_names


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG file -> float32 [h, w, 3] in [0, 1] (grey and alpha images become RGB)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.convert_image_dtype(image, tf.float32)


def checked_file_stream(indices: tf.data.Dataset, load, paths: tf.Tensor, image_shape):
    """Maps `load` over file indices and fails naming the file when one cannot be decoded.

    `load(index)` returns (image float32 `image_shape`, label int32, index); the stream yields
    (image, label) in the order of `indices`.

    A failing decode inside `map` raises an error that does not name the file. Instead, errors
    are dropped with `ignore_errors` and the surviving example indices are compared, in order,
    with the expected ones (plus an end marker, so a failure in the last example is seen too):
    the first gap names the file. Nothing is ever dropped silently.
    """
    end = tf.constant(-1, tf.int64)
    loaded = indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    loaded = loaded.ignore_errors()
    marker = (tf.zeros(image_shape, tf.float32), tf.constant(0, tf.int32), end)
    loaded = loaded.concatenate(tf.data.Dataset.from_tensors(marker))
    expected = indices.concatenate(tf.data.Dataset.from_tensors(end))

    def check(want, example):
        image, label, got = example
        failed = tf.debugging.Assert(
            tf.equal(want, got),
            [
                "Could not read or decode image file",
                tf.gather(paths, tf.maximum(want, 0)),
                "(missing, unreadable, empty or corrupt; expected PNG or JPEG)",
            ],
        )
        with tf.control_dependencies([failed]):
            return tf.identity(image), label, want

    def is_example(image, label, index):
        return index >= 0

    def drop_index(image, label, index):
        return image, label

    checked = tf.data.Dataset.zip((expected, loaded)).map(check)
    return checked.filter(is_example).map(drop_index)
