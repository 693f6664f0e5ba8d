"""Prepared tensorflow-datasets stores as in-memory arrays; nothing is ever downloaded."""

from __future__ import annotations

import os

import numpy as np


def load_tfds(
    name: str, data_dir, *, local_files: str = ""
) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Loads the train and test splits of a prepared tfds data set into memory.

    Args:
      name: the tfds name ("cifar10", "stl10").
      data_dir: the tfds data directory; None for tensorflow-datasets' default one.
      local_files: the local layouts the data set can also be read from, named in the error
        when nothing is prepared ("" when there are none).

    Returns:
      ((x_train, y_train), (x_test, y_test), class names): images uint8 [N, H, W, 3], labels
      int32 [N], in the store's order.

    Raises:
      FileNotFoundError: the store is missing, broken or not prepared.
      ValueError: a label lies outside the data set's classes.
    """
    # Imported on use: it is slow to import, and only this source needs it.
    import tensorflow_datasets as tfds

    hint = (
        f"tensorflow-datasets has no prepared '{name}' in "
        f"{data_dir or 'its default data directory'} and downloading is disabled. Pass "
        "--data_dir pointing at local files"
        + (f" ({local_files})" if local_files else "")
        + f", or pre-download with `tfds build {name}`"
        + (f" --data_dir={data_dir}" if data_dir else "")
        + " on a machine with network access."
    )
    store = None if data_dir is None else os.fspath(data_dir)
    try:
        builder = tfds.builder(name, data_dir=store)
        prepared = builder.is_prepared()
    except Exception as err:  # tfds raises many types for a missing or broken store.
        raise FileNotFoundError(f"{hint} ({err})") from None
    if not prepared:
        raise FileNotFoundError(hint)
    splits = tfds.load(
        name,
        split=["train", "test"],
        data_dir=store,
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
