"""The dataset registry: one entry per data set name, and `load_data`, which loads by name.

Adding a data set is one entry in `_REGISTRY`: a loader that reads its train and test splits,
the native image size (or None when images of any size are resized to the caller's
`image_size`), its augmentation and whether it needs a `data_dir`. `DATASETS` lists the names.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

from tfp_advbnn import validation
from tfp_advbnn.data import cifar10, stl10
from tfp_advbnn.data.folder import list_image_folder
from tfp_advbnn.data.pipeline import DataSpec, ImageData, Split

_Sources = tuple[Split, Split, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class _Dataset:
    """How one data set is read, and what its images are.

    Attributes:
      load: (data_dir, seed, download) -> (train split, test split, class names); download:
        whether tensorflow-datasets may download a data set it has not prepared.
      native_size: (H, W) of every image, which `image_size` may only repeat; None: images of
        any size, resized to the `image_size` the caller must give.
      augmentation: the `DataSpec.augmentation` of its training pipeline.
      data_dir_role: what `data_dir` must name when it is required ("the image folder root");
        None: `data_dir` is optional and, when given, must exist.
    """

    load: Callable[[object, int, bool], _Sources]
    native_size: tuple[int, int] | None
    augmentation: str
    data_dir_role: str | None = None


def _in_memory(read: Callable[..., tuple]) -> Callable[[object, int, bool], _Sources]:
    """A loader from a reader ``read(data_dir, download=...)`` of uint8 arrays; the file order is
    kept (the seed is unused)."""

    def load(data_dir, seed: int, download: bool) -> _Sources:
        (x_train, y_train), (x_test, y_test), class_names = read(data_dir, download=download)
        return Split(y_train, images=x_train), Split(y_test, images=x_test), class_names

    return load


def _load_folder(data_dir, seed: int, download: bool) -> _Sources:
    # An image folder is always local: there is nothing to download.
    (train_paths, train_labels), (val_paths, val_labels), class_names = list_image_folder(
        pathlib.Path(data_dir), seed
    )
    return Split(train_labels, paths=train_paths), Split(val_labels, paths=val_paths), class_names


_REGISTRY: dict[str, _Dataset] = {
    "cifar10": _Dataset(
        load=_in_memory(cifar10.load_cifar10),
        native_size=cifar10.IMAGE_SIZE,
        augmentation="crop_flip",
    ),
    "stl10": _Dataset(
        load=_in_memory(stl10.load_stl10),
        native_size=stl10.IMAGE_SIZE,
        augmentation="crop_flip",
    ),
    "folder": _Dataset(
        load=_load_folder,
        native_size=None,
        augmentation="resized_crop_flip",
        data_dir_role="the image folder root",
    ),
}

DATASETS = tuple(_REGISTRY)


def _image_size(image_size, name: str, native: tuple[int, int] | None) -> tuple[int, int]:
    if image_size is None:
        if native is None:
            raise ValueError(f"image_size (H, W) is required for '{name}' data")
        return native
    size = validation.positive_pair("image_size", image_size, allow_scalar=False)
    if native is not None and size != native:
        resized = " or ".join(repr(n) for n, d in _REGISTRY.items() if d.native_size is None)
        raise ValueError(
            f"image_size {size} differs from the native {native} of '{name}'; resizing is only "
            f"done for {resized} data"
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
    download: bool = True,
) -> ImageData:
    """Loads a data set and returns its spec and pipelines.

    Args:
      name: one of `DATASETS`: "cifar10", "stl10" or "folder".
      data_dir: cifar10: local files (see `load_cifar10_arrays`) or a tensorflow-datasets data
        directory; None uses tensorflow-datasets' default directory. stl10: the official
        `stl10_binary` files (see `load_stl10_arrays`) or a tensorflow-datasets data directory
        (None: the default). folder: the root holding `train/<class>/` and `val/<class>/`
        (required).
      image_size: (H, W) the folder images are resized to (required for folders; for cifar10 and
        stl10 it may only repeat the native size).
      max_train_examples: keep only the first N training examples (None: all).
      max_test_examples: keep only the first N test (for folders: val) examples (None: all).
      validation_examples: move the last n examples of the (capped) training set into a
        validation split; the test set is never touched.
      seed: non-negative seed of the order of a folder's file lists (so that "first N" and
        "last n" are a random mix of classes, not the alphabetically first or last ones);
        CIFAR-10 and STL-10 keep their file order and ignore it.
      download: cifar10 and stl10 without local files: let tensorflow-datasets download and
        prepare the data set on first use (offline: one error naming the local alternatives);
        False: only an already prepared store is read.

    Returns:
      An `ImageData`. CIFAR-10 and STL-10 are held in memory as uint8; folders as file paths that
      the pipelines decode.

    Raises:
      FileNotFoundError: missing directories or files, or a tfds data set that is not prepared
        and cannot be downloaded.
      ValueError: bad arguments or corrupt data (always naming the file).

    Example:
      >>> images = load_data("cifar10", data_dir="data/cifar-10-batches-bin")
      >>> images.spec.image_shape, images.spec.num_classes
      ((32, 32, 3), 10)
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    max_train_examples = validation.optional_integer(
        "max_train_examples", max_train_examples, minimum=1
    )
    max_test_examples = validation.optional_integer(
        "max_test_examples", max_test_examples, minimum=1
    )
    validation_examples = validation.integer("validation_examples", validation_examples, minimum=0)
    seed = validation.integer("seed", seed, minimum=0)
    if not isinstance(download, bool):
        raise ValueError(f"download must be a bool, got {download!r}")

    dataset = _REGISTRY[name]
    if dataset.data_dir_role is not None and data_dir is None:
        raise ValueError(f"data_dir ({dataset.data_dir_role}) is required for '{name}' data")
    size = _image_size(image_size, name, dataset.native_size)
    if dataset.data_dir_role is None and data_dir is not None:
        if not pathlib.Path(data_dir).exists():
            raise FileNotFoundError(f"data_dir does not exist: {data_dir}")
    train, test, class_names = dataset.load(data_dir, seed, download)

    if max_train_examples is not None and max_train_examples < len(train):
        train = train.slice(None, max_train_examples)
    if max_test_examples is not None and max_test_examples < len(test):
        test = test.slice(None, max_test_examples)
    if validation_examples >= len(train):
        raise ValueError(
            f"validation_examples={validation_examples} leaves no training examples out of "
            f"{len(train)}"
        )
    validation_split = train.slice(len(train) - validation_examples, None)
    if validation_examples:
        train = train.slice(None, len(train) - validation_examples)

    spec = DataSpec(
        name=name,
        num_classes=len(class_names),
        image_shape=(*size, 3),
        num_train=len(train),
        num_test=len(test),
        num_validation=len(validation_split),
        class_names=tuple(class_names),
        augmentation=dataset.augmentation,
    )
    return ImageData(spec, train, validation_split, test)
