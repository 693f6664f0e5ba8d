"""SavedModel export for TF Serving: four signatures, a warm-up file, atomic and versioned writes.

Signatures (every float input is ``images`` float32 [batch, H, W, C] in [0, 1]):

* ``serving_default``: ``images`` -> ``probabilities`` float32 [batch, num_classes], the mean
  softmax over ``num_samples`` fresh weight draws (paper eq. 18); ``classes`` int64 [batch],
  their argmax; ``entropy`` float32 [batch], the predictive entropy of ``probabilities`` in
  nats; ``mutual_information`` float32 [batch], that entropy minus the mean entropy of the
  draws, in nats: the epistemic part (``predict.ensemble_uncertainty``).
* ``serving_bytes``: ``image_bytes`` tf.string [batch] of encoded PNG / JPEG images (the REST
  API's ``{"b64": ...}`` values), decoded, resized to (H, W) if needed and scaled to [0, 1]
  (``predict.decode_images``) -> the outputs of ``serving_default``.
* ``posterior_mean``: ``images`` -> ``probabilities``, ``classes`` and ``logits`` of one
  deterministic pass with every weight at its posterior mean and no RSE noise
  (``layers.sampling.posterior_mean``); for a deterministic defense the plain pass.
* ``sample_logits``: ``images`` -> ``logits`` float32 [batch, num_classes] of one fresh draw.

The float signatures are differentiable with respect to ``images`` (for external attack tools)
and check the rank, the image size, the channel count and the [0, 1] range inside the graph, so
a bad request fails with a message that says what was expected.

Every export has ``assets.extra/tf_serving_warmup_requests``: one ``PredictionLog`` per
signature, which the model server replays when it loads the model. ``export_saved_model``
writes one directory and replaces it only on success; ``export_version`` writes the next
numbered version under a base directory, the layout of ``tensorflow_model_server
--model_base_path``, and never touches an existing version.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from tfp_advbnn import predict, run_dir, validation
from tfp_advbnn.layers import sampling

SAVED_MODEL_DIRNAME = "saved_model"
SIGNATURES = ("serving_default", "serving_bytes", "posterior_mean", "sample_logits")
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Grey and a ramp: two images, so that the warm-up runs a batch rather than a single example.
WARMUP_BATCH = 2


class ServingModule(tf.Module):
    """The model and the four serving functions (see the module docstring).

    Args:
      model: a built tf_keras model from float32 images in [0, 1] to logits.
      num_samples: weight draws averaged by ``serving_default`` and ``serving_bytes`` (>= 1).
      image_shape: (height, width, channels) the model expects.
    """

    def __init__(self, model, num_samples: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.model = model
        self._num_samples = validation.integer("num_samples", num_samples, minimum=1)
        self._image_shape = tuple(int(d) for d in image_shape)
        # Unknown rank, so that the checks below run and explain a bad request.
        spec = tf.TensorSpec(None, tf.float32, name="images")
        self.serving_default = tf.function(self._serve, input_signature=[spec])
        self.serving_bytes = tf.function(
            self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")]
        )
        self.posterior_mean = tf.function(self._posterior_mean, input_signature=[spec])
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

    def _ensemble(self, images):
        outputs = predict.ensemble_uncertainty(self._logits, images, self._num_samples)
        outputs["classes"] = tf.argmax(outputs["probabilities"], axis=-1, output_type=tf.int64)
        return outputs

    def _serve(self, images):
        return self._ensemble(self._checked(images))

    def _serve_bytes(self, image_bytes):
        # Decoded images have the model's shape and lie in [0, 1] by construction.
        return self._ensemble(predict.decode_images(image_bytes, self._image_shape))

    def _posterior_mean(self, images):
        images = self._checked(images)
        # Traced inside the context: the saved graph has zero noise in every layer.
        with sampling.posterior_mean():
            logits = self._logits(images)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {
            "probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "logits": logits,
        }

    def _sample_logits(self, images):
        return {"logits": self._logits(self._checked(images))}


def serving_module(model, *, num_samples: int, image_shape: tuple[int, int, int]):
    """The ``ServingModule`` of ``model``: its four functions, callable without saving.

    Example:
      >>> module = serving_module(model, num_samples=10, image_shape=(32, 32, 3))
      >>> module.serving_default(images)["mutual_information"]
    """
    return ServingModule(model, num_samples, image_shape)


def warmup_images(image_shape: tuple[int, int, int]) -> np.ndarray:
    """The warm-up batch: uint8 [2, H, W, C], a mid-grey image and a horizontal ramp."""
    height, width, channels = (int(d) for d in image_shape)
    grey = np.full((height, width, channels), 128, np.uint8)
    ramp = np.broadcast_to(
        np.linspace(0, 255, width).astype(np.uint8)[None, :, None], (height, width, channels)
    )
    return np.stack([grey, ramp])


def warmup_requests(image_shape: tuple[int, int, int], model_name: str = "") -> list:
    """One ``tensorflow_serving.apis.prediction_log_pb2.PredictionLog`` per signature.

    Each holds a ``PredictRequest`` of the warm-up batch (``warmup_images``): float32 [2, H, W,
    C] in [0, 1] as ``images``, or the same images as PNG bytes, tf.string [2], as
    ``image_bytes``. ``model_name`` fills ``model_spec.name``.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    pixels = warmup_images(image_shape)
    floats = tf.make_tensor_proto(pixels.astype(np.float32) / 255.0)
    pngs = tf.make_tensor_proto([tf.io.encode_png(image).numpy() for image in pixels])
    logs = []
    for signature in SIGNATURES:
        name = "image_bytes" if signature == "serving_bytes" else "images"
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        request.inputs[name].CopyFrom(pngs if signature == "serving_bytes" else floats)
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def _write(module: ServingModule, directory: str, model_name: str) -> None:
    """Saves ``module`` with its signatures and the warm-up file into ``directory``."""
    tf.saved_model.save(
        module,
        directory,
        signatures={name: getattr(module, name) for name in SIGNATURES},
    )
    path = os.path.join(directory, WARMUP_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(module._image_shape, model_name):
            writer.write(log.SerializeToString())


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

    Example:
      >>> export_saved_model(model, "runs/advbnn/saved_model", num_samples=10,
      ...                    image_shape=(32, 32, 3))
    """
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    export_dir = os.path.abspath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    module = ServingModule(model, num_samples, image_shape)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        _write(module, staging, os.path.basename(export_dir))
        run_dir.replace_dir(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def versions(export_base: str) -> list[int]:
    """The version numbers under ``export_base``, ascending: its subdirectories named by an
    integer, the ones ``tensorflow_model_server`` loads. A missing base has none."""
    if not os.path.isdir(export_base):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_base)
        if name.isdigit() and os.path.isdir(os.path.join(export_base, name))
    )


def next_version(export_base: str) -> int:
    """One more than the largest version under ``export_base``; 1 for a new base."""
    existing = versions(export_base)
    return existing[-1] + 1 if existing else 1


def export_version(
    model, export_base: str, *, num_samples: int, image_shape: tuple[int, int, int]
) -> str:
    """Exports ``model`` as the next numbered version under ``export_base``; returns its path.

    ``export_base/<version>/`` (``next_version``) is what ``tensorflow_model_server
    --model_base_path=export_base`` loads: the server serves the largest version, and picks a
    new one up while running. The version is written into a dot-named temporary directory under
    ``export_base`` (a name the server ignores) and renamed to its number only when complete, so
    the server never sees a partial version, a failed export leaves none, and an existing
    version is never overwritten (if another export takes the number first, the next is used).
    The warm-up requests name the model ``basename(export_base)``.

    Example:
      >>> export_version(model, "models/advbnn", num_samples=10, image_shape=(32, 32, 3))
      '/abs/models/advbnn/1'
    """
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    export_base = os.path.abspath(export_base)
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise NotADirectoryError(f"export_base {export_base} exists and is not a directory")
    os.makedirs(export_base, exist_ok=True)
    module = ServingModule(model, num_samples, image_shape)
    staging = tempfile.mkdtemp(prefix=".export-", dir=export_base)
    try:
        _write(module, staging, os.path.basename(export_base))
        while True:
            target = os.path.join(export_base, str(next_version(export_base)))
            if os.path.lexists(target) and not os.path.isdir(target):
                # next_version() counts directories only: this number is a file's name.
                raise FileExistsError(f"{target} exists and is not a version directory")
            if os.path.lexists(target):
                # Another export took the number since next_version() looked: take the next.
                continue
            try:
                os.rename(staging, target)
                return target
            except OSError:
                # rename() fails on a non-empty target directory, so a version that appeared
                # since the check is never replaced; a failure with no target is a real one.
                if not os.path.lexists(target):
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
