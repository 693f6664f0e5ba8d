"""Loaded data sets as deterministic `tf.data` pipelines: `DataSpec`, `Split` and `ImageData`.

Every pipeline yields `(images, labels)` batches: images float32 [B, H, W, 3] with pixel values in
[0, 1], labels int32 [B] in [0, num_classes). Training order and augmentation are a pure function
of (seed, epoch), so a resumed run can `.skip(step)` into the same epoch and see the same batches.
Test and validation data are never augmented.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tfp_advbnn import validation
from tfp_advbnn.data.augment import epoch_streams, pad_crop_flip, resize, resized_crop_flip
from tfp_advbnn.data.folder import checked_file_stream, decode_image_file

_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Static description of a loaded data set.

    Attributes:
      name: the registered data set name, one of `DATASETS` ("cifar10", "stl10", "folder").
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


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 [N, H, W, 3] images or file paths (bytes [N]); int32 labels [N]."""

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def slice(self, start: int | None, stop: int | None) -> Split:
        # Copies, so that a cap lets the full arrays be freed.
        def cut(a):
            return None if a is None else a[start:stop].copy()

        return Split(cut(self.labels), cut(self.images), cut(self.paths))


def _to_unit_float(images: tf.Tensor, labels: tf.Tensor):
    """uint8 batches -> float32 in [0, 1]; file batches are already float32."""
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    return images, labels


class ImageData:
    """A loaded data set: its `spec` plus train, validation and test pipelines."""

    def __init__(self, spec: DataSpec, train: Split, validation: Split, test: Split):
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
        batch_size = validation.integer("batch_size", batch_size, minimum=1)
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
                    image = pad_crop_flip(image, index, *augment_keys)
                return image, tf.gather(labels, index)

            examples = indices.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
        else:

            def load(index):
                image = decode_image_file(tf.gather(items, index))
                if augment_keys is not None:
                    image = resized_crop_flip(image, index, *augment_keys, (height, width))
                else:
                    image = resize(image, (height, width))
                return image, tf.gather(labels, index), index

            examples = checked_file_stream(indices, load, items, (height, width, 3))
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
        seed = validation.integer("seed", seed, minimum=0)
        epoch = validation.integer("epoch", epoch, minimum=0)
        order, crop_key, flip_key = epoch_streams(seed, epoch, self.spec.num_train)
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
