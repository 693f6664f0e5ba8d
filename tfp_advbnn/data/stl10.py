"""STL-10 from the official binary files on disk (``stl10_binary/``), else tensorflow-datasets.

Official layout (Coates et al. 2011), in a directory ``stl10_binary``:

- ``train_X.bin`` (5,000 images) and ``test_X.bin`` (8,000 images): uint8, each image 96 x 96
  x 3 stored channel-first (all red, then all green, then all blue bytes) and every channel
  column-major (Fortran order: the bytes of one column, top to bottom, then the next column).
  A file of N images is N * 27,648 bytes; read as [N, 3, 96, 96] C-order its axes are
  (image, channel, column, row).
- ``train_y.bin`` and ``test_y.bin``: one uint8 label per image, 1 to 10.
- ``class_names.txt``: the ten class names, one a line, in label order.

``unlabeled_X.bin`` (100,000 images) is not read: no defense here trains on unlabeled data.
"""

from __future__ import annotations

import pathlib

import numpy as np

from tfp_advbnn.data.tfds import load_tfds

_SIDE = 96
IMAGE_SIZE = (_SIDE, _SIDE)
_IMAGE_BYTES = _SIDE * _SIDE * 3
_NUM_CLASSES = 10
BINARY_DIR = "stl10_binary"
_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")


def _binary_dir(path: pathlib.Path) -> pathlib.Path | None:
    """The ``stl10_binary`` directory that ``path`` is or directly holds, else None."""
    if (path / "train_X.bin").is_file() or path.name == BINARY_DIR:
        return path
    if (path / BINARY_DIR).is_dir():
        return path / BINARY_DIR
    return None


def _read_images(path: pathlib.Path) -> np.ndarray:
    """One ``*_X.bin`` file -> uint8 [N, 96, 96, 3] (row, column, RGB)."""
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise ValueError(
            f"{path}: truncated or corrupt image file: {size} bytes is not a positive multiple "
            f"of the {_IMAGE_BYTES}-byte image size (96 x 96 x 3)"
        )
    # Axes as stored: (image, channel, column, row); to (image, row, column, channel).
    stored = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, _SIDE, _SIDE)
    return np.ascontiguousarray(stored.transpose(0, 3, 2, 1))


def _read_labels(path: pathlib.Path, count: int) -> np.ndarray:
    """One ``*_y.bin`` file of 1-based labels -> int32 [count] in [0, 9]."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int32)
    if labels.shape != (count,):
        raise ValueError(
            f"{path}: {labels.size} labels for the {count} images of the matching _X.bin file"
        )
    bad = np.flatnonzero((labels < 1) | (labels > _NUM_CLASSES))
    if bad.size:
        raise ValueError(
            f"{path}: label {int(labels[bad[0]])} of example {int(bad[0])} is out of range "
            f"[1, {_NUM_CLASSES}] ({bad.size} bad labels)"
        )
    return labels - 1


def _read_class_names(path: pathlib.Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: class-name file is not text: {err}") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != _NUM_CLASSES:
        raise ValueError(f"{path}: expected {_NUM_CLASSES} class names, found {len(names)}")
    return names


def load_stl10_arrays(path) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Reads STL-10's labelled train and test splits from the official binary files.

    Args:
      path: the ``stl10_binary`` directory, or a directory holding it.

    Returns:
      ((x_train, y_train), (x_test, y_test), class names): images uint8 [N, 96, 96, 3] (RGB,
      HWC), labels int32 [N] in [0, 9] (the files' 1-10 less one), in file order.

    Raises:
      FileNotFoundError: ``path`` or one of the five files is missing.
      ValueError: a file is truncated or corrupt, or a label is out of range (naming the file).

    Example:
      >>> (x_train, y_train), (x_test, y_test), names = load_stl10_arrays("data/stl10_binary")
      >>> x_train.shape, y_train.max()
      ((5000, 96, 96, 3), 9)
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"STL-10 path does not exist: {path}")
    source = _binary_dir(path)
    if source is None:
        raise FileNotFoundError(
            f"no STL-10 data in {path}: expected a {BINARY_DIR} directory or a directory "
            f"holding one, with {', '.join(_FILES)}"
        )
    missing = [str(source / name) for name in _FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"STL-10 ({BINARY_DIR} layout) is incomplete: missing {missing}")
    splits = []
    for split in ("train", "test"):
        images = _read_images(source / f"{split}_X.bin")
        splits.append((images, _read_labels(source / f"{split}_y.bin", len(images))))
    train, test = splits
    return train, test, _read_class_names(source / "class_names.txt")


def load_stl10(data_dir, *, download: bool = True) -> tuple[tuple, tuple, tuple[str, ...]]:
    """STL-10 from the binary files in ``data_dir``, else from tensorflow-datasets.

    Args:
      data_dir: a ``stl10_binary`` directory or one holding it; a tensorflow-datasets data
        directory (recognised by its ``stl10/`` folder); or None for tensorflow-datasets'
        default one (``~/tensorflow_datasets``, or ``$TFDS_DATA_DIR``).
      download: let tensorflow-datasets download and prepare STL-10 into its data directory
        when it has no prepared copy there (never when ``data_dir`` holds the binary files).

    Returns:
      As ``load_stl10_arrays``.
    """
    if data_dir is not None:
        path = pathlib.Path(data_dir)
        if _binary_dir(path) is not None:
            return load_stl10_arrays(path)
        if not (path / "stl10").is_dir():
            raise FileNotFoundError(
                f"no STL-10 data in {path}: expected a {BINARY_DIR} directory (or one holding "
                "it), or a tensorflow-datasets data directory (one holding a stl10/ folder); "
                "without --data_dir tensorflow-datasets downloads it on first use"
            )
    return load_tfds(
        "stl10", data_dir, download=download, local_files=f"the official {BINARY_DIR}/ files"
    )
