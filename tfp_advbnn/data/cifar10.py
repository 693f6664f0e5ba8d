"""CIFAR-10 from local files (binary or python layout, directory or official `.tar.gz`), or tfds.

Binary layout (`cifar-10-batches-bin`): records of 3073 bytes, a label byte then 1024 red, 1024
green and 1024 blue bytes, row-major 32x32. Python layout (`cifar-10-batches-py`): pickled dicts,
read through `safe_pickle`. Either may be a directory or the official archive, which is read in
one streaming pass without extraction. Every error names the file it comes from.
"""

from __future__ import annotations

import os
import pathlib
import tarfile
import zlib

import numpy as np

from tfp_advbnn.data.safe_pickle import restricted_unpickle
from tfp_advbnn.data.tfds import load_tfds

_NUM_CLASSES = 10
_SIDE = 32
IMAGE_SIZE = (_SIDE, _SIDE)
_PIXELS = _SIDE * _SIDE * 3
_RECORD_BYTES = 1 + _PIXELS
_BIN_DIR = "cifar-10-batches-bin"
_PY_DIR = "cifar-10-batches-py"
_TARBALLS = {"cifar-10-binary.tar.gz": "bin", "cifar-10-python.tar.gz": "py"}
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
# File names of each layout: the five training batches, the test batch and the class-name file.
_LAYOUT_FILES = {
    "bin": {
        "train": tuple(f"{b}.bin" for b in _TRAIN_BATCHES),
        "test": f"{_TEST_BATCH}.bin",
        "meta": "batches.meta.txt",
    },
    "py": {"train": _TRAIN_BATCHES, "test": _TEST_BATCH, "meta": "batches.meta"},
}
_LAYOUT_DIRS = {"bin": _BIN_DIR, "py": _PY_DIR}


def _planar_to_hwc(rows: np.ndarray) -> np.ndarray:
    """uint8 [N, 3072] channel-planar rows -> C-contiguous uint8 [N, 32, 32, 3]."""
    planes = rows.reshape(-1, 3, _SIDE, _SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))
    if bad.size:
        raise ValueError(
            f"{source}: label {int(labels[bad[0]])} of example {int(bad[0])} is out of range "
            f"[0, {_NUM_CLASSES - 1}] ({bad.size} bad labels)"
        )
    return labels.astype(np.int32)


def _parse_bin_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> (uint8 [N, 32, 32, 3], int32 [N])."""
    if not data or len(data) % _RECORD_BYTES:
        raise ValueError(
            f"{source}: truncated or corrupt batch: {len(data)} bytes is not a positive multiple "
            f"of the {_RECORD_BYTES}-byte record length"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD_BYTES)
    labels = _check_labels(records[:, 0].astype(np.int64), source)
    return _planar_to_hwc(records[:, 1:]), labels


def _bytes_keys(obj, source: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    # Python 2 pickles give bytes keys under encoding="bytes"; re-pickled files may use str keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _parse_py_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch dict -> (uint8 [N, 32, 32, 3], int32 [N])."""
    batch = _bytes_keys(restricted_unpickle(data, source), source)
    missing = [k.decode() for k in (b"data", b"labels") if k not in batch]
    if missing:
        raise ValueError(
            f"{source}: corrupt batch: missing keys {missing} (has {sorted(map(repr, batch))})"
        )
    pixels = batch[b"data"]
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != _PIXELS
        or pixels.shape[0] == 0
    ):
        desc = (
            f"{pixels.dtype} array of shape {pixels.shape}"
            if isinstance(pixels, np.ndarray)
            else type(pixels).__name__
        )
        raise ValueError(
            f"{source}: corrupt batch: b'data' must be a non-empty uint8 array of shape "
            f"[N, {_PIXELS}], found {desc}"
        )
    try:
        labels = np.asarray(batch[b"labels"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: corrupt batch: unreadable b'labels': {err}") from None
    if labels.shape != (pixels.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{source}: corrupt batch: b'labels' must be {pixels.shape[0]} integers, found "
            f"{labels.dtype} of shape {labels.shape}"
        )
    return _planar_to_hwc(pixels), _check_labels(labels.astype(np.int64), source)


def _parse_meta(layout: str, data: bytes, source: str) -> tuple[str, ...]:
    if layout == "bin":
        try:
            names = tuple(line.strip() for line in data.decode("utf-8").splitlines())
        except UnicodeDecodeError as err:
            raise ValueError(f"{source}: class-name file is not text: {err}") from None
        names = tuple(n for n in names if n)
    else:
        meta = _bytes_keys(restricted_unpickle(data, source), source)
        raw = meta.get(b"label_names")
        if not isinstance(raw, list | tuple) or not all(isinstance(n, bytes | str) for n in raw):
            raise ValueError(f"{source}: corrupt meta file: no list of b'label_names'")
        names = tuple(n.decode() if isinstance(n, bytes) else n for n in raw)
    if len(names) != _NUM_CLASSES:
        raise ValueError(
            f"{source}: expected {_NUM_CLASSES} class names, found {len(names)}: {names}"
        )
    return names


def _layout_names(layout: str) -> tuple[str, ...]:
    files = _LAYOUT_FILES[layout]
    return (*files["train"], files["test"], files["meta"])


def _layout_of_dir(path: pathlib.Path) -> str | None:
    """The layout, "bin" or "py", when `path` is a batches directory (by name or content)."""
    for layout in _LAYOUT_FILES:
        if path.name == _LAYOUT_DIRS[layout] or any(
            (path / n).is_file() for n in _layout_names(layout)
        ):
            return layout
    return None


def _read_tarball(path: pathlib.Path) -> tuple[str, dict[str, bytes]]:
    """Reads the CIFAR-10 members of an official archive in one streaming pass, no extraction."""
    members: dict[str, dict[str, bytes]] = {"bin": {}, "py": {}}
    dir_layout = {d: layout for layout, d in _LAYOUT_DIRS.items()}
    try:
        # Streaming mode ("r|*") reads the gzip stream once; random access into a .tar.gz would
        # decompress from the start for every member read out of order.
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                parts = pathlib.PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] not in dir_layout:
                    continue
                file = archive.extractfile(member)
                members[dir_layout[parts[-2]]].setdefault(parts[-1], file.read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: unreadable or truncated archive: {err}") from None
    for layout in ("bin", "py"):
        if members[layout]:
            return layout, members[layout]
    raise ValueError(
        f"{path}: archive holds no {_BIN_DIR}/ or {_PY_DIR}/ directory of CIFAR-10 batch files"
    )


def _find_cifar10(path: pathlib.Path) -> pathlib.Path | None:
    """The batches directory or archive that `path` is or directly holds, else None."""
    if path.is_file() or _layout_of_dir(path) is not None:
        return path
    for name in (*_LAYOUT_DIRS.values(), *_TARBALLS):
        if (path / name).exists():
            return path / name
    return None


def _read_cifar10(path) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Local files -> ((x_train, y_train), (x_test, y_test), class names)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 path does not exist: {path}")
    source = _find_cifar10(path)
    if source is None:
        raise FileNotFoundError(
            f"no CIFAR-10 data in {path}: expected a {_BIN_DIR} or {_PY_DIR} "
            f"directory, a directory holding one of them, or one of {sorted(_TARBALLS)}"
        )
    if source.is_file():
        layout, members = _read_tarball(source)
        prefix = f"{source}:{_LAYOUT_DIRS[layout]}/"
    else:
        layout = _layout_of_dir(source)
        members = {
            name: (source / name).read_bytes()
            for name in _layout_names(layout)
            if (source / name).is_file()
        }
        prefix = f"{source}{os.sep}"
    files = _LAYOUT_FILES[layout]
    names = _layout_names(layout)
    missing = [prefix + name for name in names if name not in members]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 ({layout} layout) is incomplete: missing {missing}")
    parse = _parse_bin_batch if layout == "bin" else _parse_py_batch
    train = [parse(members[name], prefix + name) for name in files["train"]]
    test = parse(members[files["test"]], prefix + files["test"])
    class_names = _parse_meta(layout, members[files["meta"]], prefix + files["meta"])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), test, class_names


def load_cifar10_arrays(
    path,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads all of CIFAR-10 (data_batch_1..5 and test_batch) from local files.

    Args:
      path: a `cifar-10-batches-bin` or `cifar-10-batches-py` directory, a directory holding one
        of them (or one of the official archives), or an official `.tar.gz` of either layout.

    Returns:
      ((x_train, y_train), (x_test, y_test)): images uint8 [N, 32, 32, 3] (RGB, HWC), labels
      int32 [N] in [0, 9], in file order.

    Raises:
      FileNotFoundError: `path` or one of the batch files is missing.
      ValueError: a batch is truncated or corrupt, a label is out of range, or a pickle asks for
        anything but numpy arrays (`UnsafePickleError`, nothing executed).
    """
    train, test, _ = _read_cifar10(path)
    return train, test


def load_cifar10(data_dir, *, download: bool = True) -> tuple[tuple, tuple, tuple[str, ...]]:
    """CIFAR-10 from the local files in `data_dir`, else from tensorflow-datasets.

    Args:
      data_dir: local files (as for `load_cifar10_arrays`), a tensorflow-datasets data directory
        (recognised by its `cifar10/` folder), or None for tensorflow-datasets' default one.
      download: let tensorflow-datasets download and prepare CIFAR-10 into its data directory
        when it has no prepared copy there (never when `data_dir` holds local files).

    Returns:
      ((x_train, y_train), (x_test, y_test), class names): images uint8 [N, 32, 32, 3], labels
      int32 [N], in file order.
    """
    if data_dir is not None:
        path = pathlib.Path(data_dir)
        if _find_cifar10(path) is not None:
            return _read_cifar10(path)
        if not (path / "cifar10").is_dir():
            raise FileNotFoundError(
                f"no CIFAR-10 data in {path}: expected a {_BIN_DIR} or {_PY_DIR} "
                f"directory, a directory holding one, one of {sorted(_TARBALLS)}, or "
                "a tensorflow-datasets data directory (one holding a cifar10/ folder); without "
                "--data_dir tensorflow-datasets downloads it on first use"
            )
    return load_tfds(
        "cifar10",
        data_dir,
        download=download,
        local_files=f"{_BIN_DIR}, {_PY_DIR} or an official .tar.gz",
    )
