"""SavedModel export with serving signatures, written atomically.

Two signatures, both differentiable with respect to ``images`` so external attack tools can
use them:

* ``serving_default``: ``images`` float32 [batch, H, W, 3] in [0, 1] -> ``probabilities``
  float32 [batch, num_classes], the mean softmax over ``num_samples`` fresh weight draws
  (paper eq. 18), and ``classes`` int64 [batch], their argmax.
* ``sample_logits``: ``images`` -> ``logits`` float32 [batch, num_classes] of one fresh draw.

Both check the rank, the image size, the channel count and the [0, 1] value range inside the
graph, so a bad request fails with a message that says what was expected.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from tfp_advbnn import models, run_dir, validation

SAVED_MODEL_DIRNAME = "saved_model"


class _ServingModule(tf.Module):
    """Holds the model and the two serving functions."""

    def __init__(self, model, num_samples: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self._num_samples = num_samples
        self._image_shape = tuple(int(d) for d in image_shape)
        # Unknown rank, so that the checks below run and explain a bad request.
        spec = tf.TensorSpec(None, tf.float32, name="images")
        self.serving_default = tf.function(self._serve, input_signature=[spec])
        self.sample_logits = tf.function(self._sample_logits, input_signature=[spec])

    def _checked(self, images: tf.Tensor) -> tf.Tensor:
        """``images`` once their rank, shape and [0, 1] range are checked.

        One assertion gates the tensor through a ``tf.cond`` (a data dependency), so the model
        never runs on a bad request; its message names the first check that failed. Every
        quantity is computed so that it is valid for an input of any rank.
        """
        height, width, channels = self._image_shape
        expected = f"[batch, {height}, {width}, {channels}]"
        shape = tf.shape(images)
        is_rank_4 = tf.equal(tf.size(shape), 4)
        padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[:4]
        has_shape = tf.logical_and(
            is_rank_4, tf.reduce_all(tf.equal(padded[1:], self._image_shape))
        )
        # Reduced as a flat vector: a reduction over an unknown-rank tensor was seen to assume
        # the rank the model implies.
        flat = tf.reshape(images, [-1])
        in_range = tf.logical_and(tf.reduce_min(flat) >= 0.0, tf.reduce_max(flat) <= 1.0)
        message = tf.where(
            is_rank_4,
            tf.where(
                has_shape,
                "images must lie in [0, 1] (pixel scale); got shape",
                f"images must have shape {expected}; got shape",
            ),
            f"images must be a rank-4 tensor of shape {expected}; got shape",
        )
        valid = tf.logical_and(has_shape, in_range)

        def fail():
            failed = tf.debugging.Assert(False, [message, shape])
            with tf.control_dependencies([failed]):
                return tf.identity(images)

        return tf.cond(valid, lambda: tf.identity(images), fail)

    def _logits(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(images, training=False), tf.float32)

    def _serve(self, images):
        images = self._checked(images)
        probabilities = models.ensemble_probabilities(self._logits, images, self._num_samples)
        return {
            "probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    def _sample_logits(self, images):
        return {"logits": self._logits(self._checked(images))}


def export_saved_model(
    model, export_dir: str, *, num_samples: int, image_shape: tuple[int, int, int]
) -> str:
    """Exports ``model`` as a SavedModel at ``export_dir``, replacing it only on success.

    Args:
      model: a built tf_keras model from float32 images in [0, 1] to logits.
      export_dir: the SavedModel directory to write.
      num_samples: weight draws averaged by ``serving_default`` (>= 1).
      image_shape: (height, width, channels) the model expects.

    Returns:
      ``export_dir``.

    The export is written into a temporary directory beside ``export_dir`` and renamed over it
    only when the save finished, so a failed or interrupted export never replaces a good one.
    """
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    export_dir = os.path.abspath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    module = _ServingModule(model, num_samples, image_shape)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tf.saved_model.save(
            module,
            staging,
            signatures={
                "serving_default": module.serving_default,
                "sample_logits": module.sample_logits,
            },
        )
        run_dir.replace_dir(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir
