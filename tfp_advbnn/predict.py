"""Predictions with their uncertainty: the n-draw ensemble's entropy and mutual information, and
encoded image files (PNG, JPEG) turned into the model's input.

For a stochastic model, ``n`` calls give class probabilities ``p_1 .. p_n`` [B, C]; their mean
``p`` is the prediction of paper eq. 18. Two uncertainties come with it, in nats:

- predictive entropy ``H[p] = -sum_c p_c log p_c``: total uncertainty, in [0, log C];
- mutual information between the prediction and the weights,
  ``H[p] - (1/n) sum_k H[p_k]``: the epistemic part, how much the draws disagree, in
  [0, log C] (0 for a deterministic model). Smith and Gal (2018) score adversarial examples by
  both.

``ensemble_uncertainty`` computes them in the graph (the serving signatures use it);
``decode_images`` turns encoded images into float32 [B, H, W, C] in [0, 1] in the graph;
``read_image_files`` reads files on the host with an error naming a bad one; ``predict_files``
classifies files with a model, as ``python -m trainers.predict`` does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfp_advbnn import validation


class ImageFileError(ValueError):
    """An image file that is missing or cannot be decoded as PNG or JPEG (names the file)."""


def _entropy(probabilities: tf.Tensor) -> tf.Tensor:
    """-sum_c p_c log p_c over the last axis, nats; 0 log 0 counts as 0."""
    return -tf.reduce_sum(tf.math.xlogy(probabilities, probabilities), axis=-1)


def ensemble_uncertainty(model_fn: Callable, images, num_samples: int) -> dict:
    """The ``num_samples``-draw ensemble's prediction and both uncertainties.

    Args:
      model_fn: callable float32 images [B, H, W, C] -> logits [B, num_classes]; a stochastic
        model draws new weights (or noise) on every call.
      images: float32 [B, H, W, C] in [0, 1].
      num_samples: Python int >= 1, the number of calls.

    Returns:
      dict of float32 tensors: ``probabilities`` [B, num_classes] (mean softmax, eq. 18),
      ``entropy`` [B] (predictive entropy of that mean, nats) and ``mutual_information`` [B]
      (entropy minus the mean of the per-draw entropies, nats, clipped at 0 against round-off).
      Works eagerly and inside ``tf.function``, where the draws after the first run in a
      ``tf.while_loop``, so the graph does not grow with ``num_samples``.

    Example:
      >>> out = ensemble_uncertainty(lambda x: model(x, training=False), images, 10)
      >>> out["mutual_information"]  # [B], nats
    """
    validation.integer("num_samples", num_samples, minimum=1)

    def draw():
        probabilities = tf.nn.softmax(tf.cast(model_fn(images), tf.float32), axis=-1)
        return probabilities, _entropy(probabilities)

    total, total_entropy = draw()
    if num_samples > 1:

        def step(i, acc, acc_entropy):
            probabilities, entropy = draw()
            return i + 1, acc + probabilities, acc_entropy + entropy

        _, total, total_entropy = tf.while_loop(
            lambda i, *_: i < num_samples - 1, step, (tf.constant(0), total, total_entropy)
        )
    probabilities = total / float(num_samples)
    entropy = _entropy(probabilities)
    # Jensen: H[mean] >= mean of H; a negative value is round-off.
    mutual_information = tf.maximum(entropy - total_entropy / float(num_samples), 0.0)
    return {
        "probabilities": probabilities,
        "entropy": entropy,
        "mutual_information": mutual_information,
    }


def decode_images(image_bytes: tf.Tensor, image_shape: Sequence[int]) -> tf.Tensor:
    """Encoded images (PNG, JPEG; also GIF's first frame, BMP) -> the model's input.

    Args:
      image_bytes: tf.string [B], one encoded image each.
      image_shape: (height, width, channels) of the model; grey images are repeated to 3
        channels and an alpha channel is dropped.

    Returns:
      float32 [B, height, width, channels] in [0, 1] (pixel value / 255, as the training data).
      An image of another size is resized to (height, width), bilinearly with antialiasing; one
      of the right size is passed through unchanged. A string that is no image fails with
      TensorFlow's InvalidArgumentError.
    """
    height, width, channels = (int(d) for d in image_shape)

    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.cast(image, tf.float32) / 255.0
        size = tf.shape(image)[:2]
        same = tf.reduce_all(tf.equal(size, [height, width]))
        image = tf.cond(
            same,
            lambda: image,
            lambda: tf.clip_by_value(
                tf.image.resize(image, [height, width], antialias=True), 0.0, 1.0
            ),
        )
        return tf.reshape(image, [height, width, channels])

    return tf.map_fn(
        decode,
        image_bytes,
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32),
    )


def read_image_files(paths: Sequence[str]) -> list[bytes]:
    """The bytes of each image file, once each decodes as an image.

    Raises ``ImageFileError`` naming the first file that is missing, unreadable or not an image
    (checked on the host, so the message names the file rather than a batch position).
    """
    if not paths:
        raise ImageFileError("no image files given")
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            raise ImageFileError(f"cannot read image file {path}: {error.strerror}") from None
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            # TF's message starts with the op's device scope in braces; the reason follows.
            message = getattr(error, "message", str(error))
            reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", message).strip() or "bad data"
            raise ImageFileError(f"{path} is not a PNG or JPEG image: {reason}") from None
        contents.append(data)
    return contents


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image file's prediction: class id and name, its probability, both uncertainties."""

    path: str
    class_id: int
    class_name: str
    probability: float
    entropy: float
    mutual_information: float

    def line(self) -> str:
        """E.g. "cat.png: cat (3) p=0.8120 entropy=0.6011 mutual_information=0.0213"."""
        return (
            f"{self.path}: {self.class_name} ({self.class_id}) p={self.probability:.4f} "
            f"entropy={self.entropy:.4f} mutual_information={self.mutual_information:.4f}"
        )


def predict_files(
    classify_bytes: Callable,
    paths: Sequence[str],
    class_names: Sequence[str],
    *,
    batch_size: int = 64,
) -> list[Prediction]:
    """Classifies image files.

    Args:
      classify_bytes: tf.string [B] -> dict with ``probabilities`` [B, C], ``entropy`` [B] and
        ``mutual_information`` [B] (the ``serving_bytes`` function of an export).
      paths: image files (PNG, JPEG).
      class_names: C names, indexed by class id.
      batch_size: files per call.

    Returns:
      One ``Prediction`` per path, in order. Raises ``ImageFileError`` naming a bad file
      before any file is classified.

    Example:
      >>> module = export.serving_module(model, num_samples=10, image_shape=(32, 32, 3))
      >>> for p in predict_files(module.serving_bytes, ["cat.png"], class_names):
      ...     print(p.line())
    """
    batch_size = validation.integer("batch_size", batch_size, minimum=1)
    contents = read_image_files(paths)
    results = []
    for start in range(0, len(contents), batch_size):
        outputs = classify_bytes(tf.constant(contents[start : start + batch_size]))
        probabilities = outputs["probabilities"].numpy()
        if probabilities.shape[-1] != len(class_names):
            raise ValueError(
                f"the model has {probabilities.shape[-1]} classes but {len(class_names)} class "
                "names were given"
            )
        entropy = outputs["entropy"].numpy()
        information = outputs["mutual_information"].numpy()
        for i, row in enumerate(probabilities):
            class_id = int(np.argmax(row))
            results.append(
                Prediction(
                    path=paths[start + i],
                    class_id=class_id,
                    class_name=str(class_names[class_id]),
                    probability=float(row[class_id]),
                    entropy=float(entropy[i]),
                    mutual_information=float(information[i]),
                )
            )
    return results
