"""Input pipelines: CIFAR-10, STL-10 and image folders as deterministic `tf.data` datasets.

Every pipeline yields `(images, labels)` batches: images float32 [B, H, W, 3] with pixel values in
[0, 1], labels int32 [B] in [0, num_classes).

Sources:
- `cifar10` from a local copy in the official binary layout (`cifar-10-batches-bin`, records of
  3073 bytes: a label byte, then 1024 red, 1024 green and 1024 blue bytes, row-major 32x32) or the
  official python layout (`cifar-10-batches-py`, pickled dicts read through a restricted
  unpickler), either as a directory or as the official `.tar.gz`; without `data_dir` (or when
  `data_dir` holds a tensorflow-datasets store instead) through tensorflow-datasets.
- `stl10` through tensorflow-datasets, never downloading.
- `folder`: `root/train/<class>/*.png|jpg|jpeg` and `root/val/<class>/...` (ImageNet-143 and
  custom data), decoded lazily in the pipeline and resized to `image_size`.

Augmentation follows the paper's reference code: CIFAR-10 and STL-10 get a random crop after
4-pixel zero padding plus a horizontal flip ("crop_flip"); folders get a random resized square crop
covering 80-90 % of the image area plus a flip ("resized_crop_flip"). Test and validation data are
never augmented. Training order and augmentation are a pure function of (seed, epoch), so a resumed
run can `.skip(step)` into the same epoch and see the same batches.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import pickle
import tarfile
import zlib
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

DATASETS = ("cifar10", "stl10", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

_CIFAR_NUM_CLASSES = 10
_CIFAR_SIDE = 32
_CIFAR_PIXELS = _CIFAR_SIDE * _CIFAR_SIDE * 3
_CIFAR_RECORD_BYTES = 1 + _CIFAR_PIXELS
_CIFAR_BIN_DIR = "cifar-10-batches-bin"
_CIFAR_PY_DIR = "cifar-10-batches-py"
_CIFAR_TARBALLS = {"cifar-10-binary.tar.gz": "bin", "cifar-10-python.tar.gz": "py"}
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
_LAYOUT_DIRS = {"bin": _CIFAR_BIN_DIR, "py": _CIFAR_PY_DIR}

_PAD_PIXELS = 4
_RESIZED_CROP_AREA = (0.8, 0.9)
_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Static description of a loaded data set.

    Attributes:
      name: "cifar10", "stl10" or "folder".
      num_classes: number of classes; labels lie in [0, num_classes).
      image_shape: (H, W, 3) of the images the pipelines yield.
      num_train: training examples (after the cap and after carving out validation).
      num_test: test examples (after the cap).
      num_validation: validation examples carved from the end of the training set (0 if none).
      class_names: class names indexed by label.
      augmentation: "crop_flip" (4-pixel zero padding, random crop, horizontal flip) or
        "resized_crop_flip" (random square crop of 80-90 % of the area, resize, flip).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    num_validation: int
    class_names: tuple[str, ...]
    augmentation: str


class UnsafePickleError(ValueError):
    """A pickle asked for a global that the CIFAR-10 format does not need; nothing was run."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling.


def _checked_reconstruct(subtype, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by __setstate__; only the
    # plain ndarray class may be instantiated, so no other type's constructor can be reached.
    if subtype is not np.ndarray:
        raise _Forbidden(f"array reconstruction of {subtype!r} is not allowed")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _checked_dtype(*args):
    descr = np.dtype(*args)
    # Object arrays would let the pickle place arbitrary Python objects inside the data array.
    if descr.hasobject:
        raise _Forbidden(f"object dtype {descr!r} is not allowed")
    return descr


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store every bytes object (the dict keys and the pixel
    # buffer) as _codecs.encode(str, "latin1"); nothing else of the codec machinery is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Forbidden("_codecs.encode is only allowed as encode(str, 'latin1')")
    return text.encode("latin-1")


# The numpy function that rebuilds arrays, found through ndarray.__reduce__ rather than a private
# module path, which moved from numpy.core to numpy._core in numpy 2.
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]

_ALLOWED_GLOBALS: Mapping[tuple[str, str], Callable] = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _Forbidden(pickle.UnpicklingError):
    """Raised inside unpickling when the pickle asks for something outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays and protocol-2 bytes need."""

    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _Forbidden(f"forbidden global '{module}.{name}'")
        return allowed

    def persistent_load(self, pid):
        raise _Forbidden(f"forbidden persistent id {pid!r}")


def _restricted_unpickle(data: bytes, source: str):
    """Unpickles `data` allowing only numpy array reconstruction; `source` names it in errors.

    Raises:
      UnsafePickleError: the pickle references any other global (its payload never executes).
      ValueError: the pickle is truncated or malformed.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Forbidden as err:
        raise UnsafePickleError(
            f"{source}: refused to unpickle: {err}. A CIFAR-10 batch only needs numpy array "
            "reconstruction; this file is not an official CIFAR-10 pickle and was not loaded."
        ) from None
    except Exception as err:  # Malformed pickles fail in many ways; all mean a corrupt file.
        raise ValueError(f"{source}: corrupt or truncated pickle: {err!r}") from None


# ---------------------------------------------------------------------------------------------
# CIFAR-10 from local files.


def _planar_to_hwc(rows: np.ndarray) -> np.ndarray:
    """uint8 [N, 3072] channel-planar rows -> C-contiguous uint8 [N, 32, 32, 3]."""
    planes = rows.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    bad = np.flatnonzero((labels < 0) | (labels >= _CIFAR_NUM_CLASSES))
    if bad.size:
        raise ValueError(
            f"{source}: label {int(labels[bad[0]])} of example {int(bad[0])} is out of range "
            f"[0, {_CIFAR_NUM_CLASSES - 1}] ({bad.size} bad labels)"
        )
    return labels.astype(np.int32)


def _parse_bin_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> (uint8 [N, 32, 32, 3], int32 [N])."""
    if not data or len(data) % _CIFAR_RECORD_BYTES:
        raise ValueError(
            f"{source}: truncated or corrupt batch: {len(data)} bytes is not a positive multiple "
            f"of the {_CIFAR_RECORD_BYTES}-byte record length"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    labels = _check_labels(records[:, 0].astype(np.int64), source)
    return _planar_to_hwc(records[:, 1:]), labels


def _bytes_keys(obj, source: str) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    # Python 2 pickles give bytes keys under encoding="bytes"; re-pickled files may use str keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _parse_py_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch dict -> (uint8 [N, 32, 32, 3], int32 [N])."""
    batch = _bytes_keys(_restricted_unpickle(data, source), source)
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
        or pixels.shape[1] != _CIFAR_PIXELS
        or pixels.shape[0] == 0
    ):
        desc = (
            f"{pixels.dtype} array of shape {pixels.shape}"
            if isinstance(pixels, np.ndarray)
            else type(pixels).__name__
        )
        raise ValueError(
            f"{source}: corrupt batch: b'data' must be a non-empty uint8 array of shape "
            f"[N, {_CIFAR_PIXELS}], found {desc}"
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
        meta = _bytes_keys(_restricted_unpickle(data, source), source)
        raw = meta.get(b"label_names")
        if not isinstance(raw, list | tuple) or not all(isinstance(n, bytes | str) for n in raw):
            raise ValueError(f"{source}: corrupt meta file: no list of b'label_names'")
        names = tuple(n.decode() if isinstance(n, bytes) else n for n in raw)
    if len(names) != _CIFAR_NUM_CLASSES:
        raise ValueError(
            f"{source}: expected {_CIFAR_NUM_CLASSES} class names, found {len(names)}: {names}"
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
        f"{path}: archive holds no {_CIFAR_BIN_DIR}/ or {_CIFAR_PY_DIR}/ directory of CIFAR-10 "
        "batch files"
    )


def _find_cifar10(path: pathlib.Path) -> pathlib.Path | None:
    """The batches directory or archive that `path` is or directly holds, else None."""
    if path.is_file() or _layout_of_dir(path) is not None:
        return path
    for name in (*_LAYOUT_DIRS.values(), *_CIFAR_TARBALLS):
        if (path / name).exists():
            return path / name
    return None


def _read_cifar10(path) -> tuple[tuple, tuple, tuple[str, ...]]:
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 path does not exist: {path}")
    source = _find_cifar10(path)
    if source is None:
        raise FileNotFoundError(
            f"no CIFAR-10 data in {path}: expected a {_CIFAR_BIN_DIR} or {_CIFAR_PY_DIR} "
            f"directory, a directory holding one of them, or one of {sorted(_CIFAR_TARBALLS)}"
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


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets.


def _load_tfds(name: str, data_dir) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Loads a prepared tfds data set into memory: uint8 [N, H, W, 3] images, int32 labels."""
    import tensorflow_datasets as tfds

    hint = (
        f"tensorflow-datasets has no prepared '{name}' in "
        f"{data_dir or 'its default data directory'} and downloading is disabled. Pass "
        "--data_dir pointing at local files"
        + (
            f" ({_CIFAR_BIN_DIR}, {_CIFAR_PY_DIR} or an official .tar.gz)"
            if name == "cifar10"
            else ""
        )
        + f", or pre-download with `tfds build {name}`"
        + (f" --data_dir={data_dir}" if data_dir else "")
        + " on a machine with network access."
    )
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
        prepared = builder.is_prepared()
    except Exception as err:  # tfds raises many types for a missing or broken store.
        raise FileNotFoundError(f"{hint} ({err})") from None
    if not prepared:
        raise FileNotFoundError(hint)
    splits = tfds.load(
        name,
        split=["train", "test"],
        data_dir=None if data_dir is None else os.fspath(data_dir),
        download=False,
        as_supervised=True,
        batch_size=-1,
        shuffle_files=False,
    )
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    names = tuple(builder.info.features["label"].names)
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"tfds '{name}' {split}: labels out of range [0, {len(names) - 1}]")
    return (
        (np.asarray(x_train, np.uint8), np.asarray(y_train, np.int32)),
        (np.asarray(x_test, np.uint8), np.asarray(y_test, np.int32)),
        names,
    )


# ---------------------------------------------------------------------------------------------
# Image folders.


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


def _list_image_folder(root: pathlib.Path, seed: int):
    """Lists root/{train,val}/<class>/ images -> (train paths, labels), (val ...), class names.

    Both lists are put in a seeded random order: caps and the validation carve take leading
    and trailing slices, which in sorted order would hold only the first or last classes.
    Hidden files and directories (names starting with ".") are skipped.
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


# ---------------------------------------------------------------------------------------------
# Splits and pipelines.


@dataclasses.dataclass(frozen=True, eq=False)
class _Split:
    """One split: uint8 [N, H, W, 3] images or file paths (bytes [N]); int32 labels [N]."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int | None, stop: int | None) -> _Split:
        # Copies, so that a cap lets the full arrays be freed.
        def cut(a):
            return None if a is None else a[start:stop].copy()

        return _Split(cut(self.labels), cut(self.images), cut(self.paths))


def _epoch_streams(seed: int, epoch: int, size: int) -> tuple[np.ndarray, int, int]:
    """(permutation of range(size), crop key, flip key), all a function of (seed, epoch) only."""
    order_seq, crop_seq, flip_seq = np.random.SeedSequence([seed, epoch]).spawn(3)
    order = np.random.default_rng(order_seq).permutation(size)
    # 63-bit keys: stateless-op seeds are int64 pairs (key, example index).
    crop_key, flip_key = (int(s.generate_state(1, np.uint64)[0] >> 1) for s in (crop_seq, flip_seq))
    return order, crop_key, flip_key


def _element_seed(key: int, index: tf.Tensor) -> tf.Tensor:
    """Stateless-op seed int64 [2] for one example: (per-(seed, epoch) key, example index)."""
    return tf.stack([tf.constant(key, tf.int64), index])


def _pad_crop_flip(image: tf.Tensor, index: tf.Tensor, crop_key: int, flip_key: int) -> tf.Tensor:
    """Random crop of the 4-pixel zero-padded image back to its size, then a random flip."""
    padded = tf.pad(image, [[_PAD_PIXELS, _PAD_PIXELS], [_PAD_PIXELS, _PAD_PIXELS], [0, 0]])
    cropped = tf.image.stateless_random_crop(
        padded, image.shape, seed=_element_seed(crop_key, index)
    )
    return tf.image.stateless_random_flip_left_right(cropped, seed=_element_seed(flip_key, index))


def _random_square_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
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


def _decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """PNG/JPEG file -> float32 [h, w, 3] in [0, 1] (grey and alpha images become RGB)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.convert_image_dtype(image, tf.float32)


def _resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def _to_unit_float(images: tf.Tensor, labels: tf.Tensor):
    """uint8 batches -> float32 in [0, 1]; file batches are already float32."""
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    return images, labels


class ImageData:
    """A loaded data set: its `spec` plus train, validation and test pipelines."""

    def __init__(self, spec: DataSpec, train: _Split, validation: _Split, test: _Split):
        self.spec = spec
        self._splits = {"train": train, "validation": validation, "test": test}
        self._tensors: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}

    def _source(self, split: str) -> tuple[tf.Tensor, tf.Tensor]:
        # Built once per split (eagerly): pipelines capture these tensors instead of embedding
        # new copies. Host memory, where tf.data runs, even when a GPU is the default device.
        if split in self._tensors:
            return self._tensors[split]
        data = self._splits[split]
        items = data.images if data.images is not None else data.paths
        with tf.device("/cpu:0"):
            tensors = (tf.constant(items), tf.constant(data.labels, tf.int32))
        if tf.executing_eagerly():
            self._tensors[split] = tensors
        return tensors

    def _dataset(
        self,
        split: str,
        order: np.ndarray,
        *,
        batch_size: int,
        drop_remainder: bool,
        augment_keys: tuple[int, int] | None,
        input_context,
    ) -> tf.data.Dataset:
        batch_size = _positive_int(batch_size, "batch_size")
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
            order = order[input_context.input_pipeline_id :: input_context.num_input_pipelines]
        items, labels = self._source(split)
        indices = tf.data.Dataset.from_tensor_slices(order.astype(np.int64))
        height, width, _ = self.spec.image_shape

        if self._splits[split].images is not None:

            def load(index):
                image = tf.gather(items, index)
                if augment_keys is not None:
                    image = _pad_crop_flip(image, index, *augment_keys)
                return image, tf.gather(labels, index)

            examples = indices.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
        else:

            def load(index):
                image = _decode_image_file(tf.gather(items, index))
                if augment_keys is not None:
                    crop_key, flip_key = augment_keys
                    image = _random_square_crop(image, _element_seed(crop_key, index))
                    image = _resize(image, (height, width))
                    image = tf.image.stateless_random_flip_left_right(
                        image, seed=_element_seed(flip_key, index)
                    )
                else:
                    image = _resize(image, (height, width))
                return image, tf.gather(labels, index), index

            examples = _checked_file_stream(indices, load, items, (height, width, 3))
        batches = examples.batch(batch_size, drop_remainder=drop_remainder)
        return batches.map(_to_unit_float, num_parallel_calls=_AUTOTUNE).prefetch(_AUTOTUNE)

    def train_dataset(
        self,
        *,
        batch_size: int,
        epoch: int = 0,
        seed: int = 0,
        augment: bool = True,
        drop_remainder: bool = True,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """One epoch of shuffled (and by default augmented) training batches.

        Order and augmentation depend only on (seed, epoch): the order is a permutation drawn from
        a numpy generator seeded with (seed, epoch), and each example's crop and flip come from
        stateless ops seeded with ((seed, epoch)-derived key, example index). Calling this twice
        with the same arguments gives identical batches, whatever the global TF seed.

        Args:
          batch_size: global batch size (split across replicas when `input_context` is given).
          epoch: epoch number >= 0.
          seed: non-negative integer seed.
          augment: apply the spec's augmentation.
          drop_remainder: drop the last partial batch.
          input_context: from `strategy.distribute_datasets_from_function`; this pipeline keeps
            every `num_input_pipelines`-th example of the epoch order starting at
            `input_pipeline_id`, and batches with the per-replica batch size.

        Returns:
          Dataset of (float32 [B, H, W, 3] in [0, 1], int32 [B]).
        """
        seed = _non_negative_int(seed, "seed")
        epoch = _non_negative_int(epoch, "epoch")
        order, crop_key, flip_key = _epoch_streams(seed, epoch, self.spec.num_train)
        return self._dataset(
            "train",
            order,
            batch_size=batch_size,
            drop_remainder=drop_remainder,
            augment_keys=(crop_key, flip_key) if augment else None,
            input_context=input_context,
        )

    def test_dataset(
        self, *, batch_size: int, input_context: tf.distribute.InputContext | None = None
    ) -> tf.data.Dataset:
        """Test batches in file order, unaugmented, last partial batch kept.

        Returns:
          Dataset of (float32 [B, H, W, 3] in [0, 1], int32 [B]).
        """
        return self._fixed_dataset("test", batch_size, input_context)

    def validation_dataset(
        self, *, batch_size: int, input_context: tf.distribute.InputContext | None = None
    ) -> tf.data.Dataset:
        """Validation batches (the carved-out tail of the training set), like `test_dataset`."""
        self._require_validation()
        return self._fixed_dataset("validation", batch_size, input_context)

    def _fixed_dataset(self, split, batch_size, input_context):
        order = np.arange(len(self._splits[split]))
        return self._dataset(
            split,
            order,
            batch_size=batch_size,
            drop_remainder=False,
            augment_keys=None,
            input_context=input_context,
        )

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Whole test set: (float32 [N, H, W, 3] in [0, 1], int32 [N]), as the pipeline yields."""
        return self._arrays("test")

    def validation_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Whole validation set: (float32 [N, H, W, 3] in [0, 1], int32 [N])."""
        self._require_validation()
        return self._arrays("validation")

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        data = self._splits[split]
        if data.images is not None:
            return data.images.astype(np.float32) / np.float32(255.0), data.labels.copy()
        batches = list(self._fixed_dataset(split, 256, None).as_numpy_iterator())
        return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

    def _require_validation(self):
        if self.spec.num_validation == 0:
            raise ValueError(
                "this data set has no validation split; pass validation_examples > 0 to load_data"
            )


def _checked_file_stream(indices: tf.data.Dataset, load, paths: tf.Tensor, image_shape):
    """Maps `load` over file indices and fails naming the file when one cannot be decoded.

    A failing decode inside `map` raises an error that does not name the file. Instead, errors
    are dropped with `ignore_errors` and the surviving example indices are compared, in order,
    with the expected ones (plus an end marker, so a failure in the last example is seen too):
    the first gap names the file. Nothing is ever dropped silently.
    """
    end = tf.constant(-1, tf.int64)
    loaded = indices.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True).ignore_errors()
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


# ---------------------------------------------------------------------------------------------
# Entry point.


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_image_size(image_size, name: str, native: tuple[int, int] | None):
    if image_size is None:
        if native is None:
            raise ValueError(f"image_size (H, W) is required for '{name}' data")
        return native
    if (
        not isinstance(image_size, list | tuple)
        or len(image_size) != 2
        or any(
            isinstance(s, bool) or not isinstance(s, int | np.integer) or s <= 0 for s in image_size
        )
    ):
        raise ValueError(f"image_size must be two positive integers (H, W), got {image_size!r}")
    size = (int(image_size[0]), int(image_size[1]))
    if native is not None and size != native:
        raise ValueError(
            f"image_size {size} differs from the native {native} of '{name}'; resizing is only "
            "done for 'folder' data"
        )
    return size


def load_data(
    name: str,
    *,
    data_dir=None,
    image_size=None,
    max_train_examples: int | None = None,
    max_test_examples: int | None = None,
    validation_examples: int = 0,
    seed: int = 0,
) -> ImageData:
    """Loads a data set and returns its spec and pipelines.

    Args:
      name: "cifar10", "stl10" or "folder".
      data_dir: cifar10: local files (see `load_cifar10_arrays`) or a tensorflow-datasets data
        directory; None uses tensorflow-datasets' default directory. stl10: a
        tensorflow-datasets data directory (None: the default). folder: the root holding
        `train/<class>/` and `val/<class>/` (required). Nothing is ever downloaded.
      image_size: (H, W) the folder images are resized to (required for folders; for cifar10 and
        stl10 it may only repeat the native size).
      max_train_examples: keep only the first N training examples (None: all).
      max_test_examples: keep only the first N test (for folders: val) examples (None: all).
      validation_examples: move the last n examples of the (capped) training set into a
        validation split; the test set is never touched.
      seed: non-negative seed of the order of a folder's file lists (so that "first N" and
        "last n" are a random mix of classes, not the alphabetically first or last ones);
        CIFAR-10 and STL-10 keep their file order and ignore it.

    Returns:
      An `ImageData`. CIFAR-10 and STL-10 are held in memory as uint8; folders as file paths that
      the pipelines decode.

    Raises:
      FileNotFoundError: missing directories or files, or an unprepared tfds data set.
      ValueError: bad arguments or corrupt data (always naming the file).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    if max_train_examples is not None:
        max_train_examples = _positive_int(max_train_examples, "max_train_examples")
    if max_test_examples is not None:
        max_test_examples = _positive_int(max_test_examples, "max_test_examples")
    validation_examples = _non_negative_int(validation_examples, "validation_examples")
    seed = _non_negative_int(seed, "seed")

    if name == "folder":
        if data_dir is None:
            raise ValueError("data_dir (the image folder root) is required for 'folder' data")
        size = _check_image_size(image_size, name, None)
        (train_paths, train_labels), (val_paths, val_labels), class_names = _list_image_folder(
            pathlib.Path(data_dir), seed
        )
        train = _Split(train_labels, paths=train_paths)
        test = _Split(val_labels, paths=val_paths)
        augmentation = "resized_crop_flip"
    else:
        native = (96, 96) if name == "stl10" else (_CIFAR_SIDE, _CIFAR_SIDE)
        size = _check_image_size(image_size, name, native)
        if data_dir is not None and not pathlib.Path(data_dir).exists():
            raise FileNotFoundError(f"data_dir does not exist: {data_dir}")
        local = None
        if name == "cifar10" and data_dir is not None:
            path = pathlib.Path(data_dir)
            if _find_cifar10(path) is not None:
                local = _read_cifar10(path)
            elif not (path / "cifar10").is_dir():
                raise FileNotFoundError(
                    f"no CIFAR-10 data in {path}: expected a {_CIFAR_BIN_DIR} or {_CIFAR_PY_DIR} "
                    f"directory, a directory holding one, one of {sorted(_CIFAR_TARBALLS)}, or "
                    "a tensorflow-datasets directory with a prepared cifar10"
                )
        (x_train, y_train), (x_test, y_test), class_names = local or _load_tfds(name, data_dir)
        train = _Split(y_train, images=x_train)
        test = _Split(y_test, images=x_test)
        augmentation = "crop_flip"

    if max_train_examples is not None and max_train_examples < len(train):
        train = train.slice(None, max_train_examples)
    if max_test_examples is not None and max_test_examples < len(test):
        test = test.slice(None, max_test_examples)
    if validation_examples >= len(train):
        raise ValueError(
            f"validation_examples={validation_examples} leaves no training examples out of "
            f"{len(train)}"
        )
    validation = train.slice(len(train) - validation_examples, None)
    if validation_examples:
        train = train.slice(None, len(train) - validation_examples)

    spec = DataSpec(
        name=name,
        num_classes=len(class_names),
        image_shape=(*size, 3),
        num_train=len(train),
        num_test=len(test),
        num_validation=len(validation),
        class_names=tuple(class_names),
        augmentation=augmentation,
    )
    return ImageData(spec, train, validation, test)


__all__ = [
    "DATASETS",
    "DataSpec",
    "ImageData",
    "UnsafePickleError",
    "load_cifar10_arrays",
    "load_data",
]
