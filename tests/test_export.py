"""SavedModel export: signatures, uncertainty outputs, the posterior-mean pass, encoded-image
input, input checks, differentiability, atomic replacement, numbered versions and the TF Serving
warm-up file replayed in a fresh process."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from conftest import REPO_ROOT
from PIL import Image

from tfp_advbnn import export, layers, models
from tfp_advbnn.layers import sampling

IMAGE_SHAPE = (32, 32, 3)


def _tiny(defense):
    return models.build_model(
        "vgg11",
        defense,
        num_classes=10,
        input_shape=IMAGE_SHAPE,
        width_multiplier=0.0625,
        sigma_0=0.05,
        init_s=0.05,
        seed=3,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny BNN VGG-11 exported as version 1 of a model base (4 draws per prediction)."""
    model = _tiny("bnn")
    base = tmp_path_factory.mktemp("export") / "advbnn"
    path = export.export_version(model, str(base), num_samples=4, image_shape=IMAGE_SHAPE)
    return model, path, tf.saved_model.load(path)


def _images(n=3, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=(n, *IMAGE_SHAPE)), tf.float32)


def test_serving_default_returns_mean_softmax_and_classes(exported):
    _, _, loaded = exported
    outputs = loaded.signatures["serving_default"](images=_images())
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(outputs["classes"].numpy(), probabilities.argmax(axis=1))
    assert outputs["classes"].dtype == tf.int64


def test_sample_logits_draws_fresh_weights(exported):
    _, _, loaded = exported
    images = _images()
    first = loaded.signatures["sample_logits"](images=images)["logits"].numpy()
    second = loaded.signatures["sample_logits"](images=images)["logits"].numpy()
    assert first.shape == (3, 10)
    assert not np.allclose(first, second)


def test_serving_average_is_closer_to_the_model_mean_than_one_draw(exported):
    model, _, loaded = exported
    images = _images(8, seed=1)
    draw = tf.function(lambda x: tf.nn.softmax(model(x, training=False)))
    reference = np.mean([draw(images).numpy() for _ in range(100)], axis=0)
    served = loaded.signatures["serving_default"](images=images)["probabilities"].numpy()
    one_draw = tf.nn.softmax(loaded.signatures["sample_logits"](images=images)["logits"]).numpy()
    assert np.abs(served - reference).mean() < np.abs(one_draw - reference).mean()


@pytest.mark.parametrize("signature", ["serving_default", "sample_logits"])
def test_signatures_are_differentiable_wrt_images(exported, signature):
    _, _, loaded = exported
    images = _images()
    key = "probabilities" if signature == "serving_default" else "logits"
    with tf.GradientTape() as tape:
        tape.watch(images)
        output = loaded.signatures[signature](images=images)[key]
        objective = tf.reduce_sum(output[:, 0])
    gradient = tape.gradient(objective, images)
    assert gradient is not None
    assert float(tf.reduce_max(tf.abs(gradient))) > 0


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 16, 16, 3), np.float32), "shape"),
        (np.zeros((2, 32, 32, 1), np.float32), "shape"),
        (np.zeros((32, 32, 3), np.float32), "rank-4"),
        (np.full((1, 32, 32, 3), 255.0, np.float32), "[0, 1]"),
        (np.full((1, 32, 32, 3), -0.5, np.float32), "[0, 1]"),
    ],
)
def test_bad_requests_fail_with_a_clear_message(exported, images, message):
    _, _, loaded = exported
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError),
        match=message.replace("[", r"\[").replace("]", r"\]"),
    ):
        loaded.signatures["serving_default"](images=tf.constant(images))


def test_saved_model_cli_runs_both_signatures(exported, tmp_path):
    _, path, _ = exported
    batch = tmp_path / "images.npy"
    np.save(batch, np.full((2, *IMAGE_SHAPE), 0.5, np.float32))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    for signature in ("serving_default", "sample_logits"):
        result = subprocess.run(
            [
                cli,
                "run",
                "--dir",
                path,
                "--tag_set",
                "serve",
                "--signature_def",
                signature,
                "--inputs",
                f"images={batch}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("probabilities" if signature == "serving_default" else "logits") in result.stdout


def test_failed_export_keeps_the_previous_one(tmp_path, monkeypatch):
    model = _tiny("plain")
    path = str(tmp_path / "saved_model")
    export.export_saved_model(model, path, num_samples=1, image_shape=IMAGE_SHAPE)
    before = sorted(os.listdir(path))

    def broken_save(*args, **kwargs):
        os.makedirs(os.path.join(args[1], "variables"), exist_ok=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(model, path, num_samples=1, image_shape=IMAGE_SHAPE)
    assert sorted(os.listdir(path)) == before
    assert [name for name in os.listdir(tmp_path) if name != "saved_model"] == []
    monkeypatch.undo()
    reloaded = tf.saved_model.load(path)
    plain = reloaded.signatures["sample_logits"](images=_images())["logits"].numpy()
    np.testing.assert_allclose(plain, model(_images(), training=False).numpy(), atol=1e-5)


def test_export_rejects_bad_num_samples(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        export.export_saved_model(
            _tiny("plain"), str(tmp_path / "m"), num_samples=0, image_shape=IMAGE_SHAPE
        )


# ----- uncertainty, the posterior-mean pass, encoded images -----------------------------------


SMALL_SHAPE = (4, 4, 3)


def _small_model(posterior="reparameterization", seed=5):
    """RSE noise -> BayesConv2D 3x3 valid (2 filters) -> BayesBatchNormalization -> BayesDense(3),
    with batch-norm means and moving statistics moved off their initial values."""
    bayes = dict(sigma_0=0.1, init_s=0.3)
    inputs = tf_keras.Input(SMALL_SHAPE)
    x = layers.RandomNoise(0.2, seed=seed, name="noise")(inputs)
    x = layers.BayesConv2D(
        2, 3, padding="valid", posterior=posterior, seed=seed + 1, name="conv", **bayes
    )(x)
    x = layers.BayesBatchNormalization(seed=seed + 2, name="bn", **bayes)(x)
    x = tf_keras.layers.Flatten()(x)
    outputs = layers.BayesDense(3, posterior=posterior, seed=seed + 3, name="dense", **bayes)(x)
    model = tf_keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(seed)
    for role in ("gamma", "beta"):
        bn.posterior_parameters[role][0].assign(rng.normal(size=2).astype(np.float32))
    bn.moving_mean.assign(rng.normal(size=2).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=2).astype(np.float32))
    return model


def _numpy_mean_pass(model, images):
    """The small model's forward pass with every weight at mu and no noise, in numpy."""
    conv, bn, dense = (model.get_layer(n) for n in ("conv", "bn", "dense"))
    kernel, bias = (conv.posterior_parameters[r][0].numpy() for r in ("kernel", "bias"))
    out = np.zeros((len(images), 2, 2, 2))
    for i in range(2):
        for j in range(2):
            patch = images[:, i : i + 3, j : j + 3, :]
            out[:, i, j, :] = np.einsum("bhwc,hwcf->bf", patch, kernel) + bias
    gamma, beta = (bn.posterior_parameters[r][0].numpy() for r in ("gamma", "beta"))
    out = (out - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    out = out * gamma + beta
    weights, dense_bias = (dense.posterior_parameters[r][0].numpy() for r in ("kernel", "bias"))
    return out.reshape(len(images), -1) @ weights + dense_bias


def _small_images(n=4, seed=7):
    return np.random.default_rng(seed).uniform(size=(n, *SMALL_SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """The small Bayesian model with RSE noise, exported as version 1 (3 draws)."""
    model = _small_model()
    base = tmp_path_factory.mktemp("small") / "tiny"
    path = export.export_version(model, str(base), num_samples=3, image_shape=SMALL_SHAPE)
    return model, base, path


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def test_signatures_and_their_outputs(small_export):
    loaded = tf.saved_model.load(small_export[2])
    assert sorted(loaded.signatures) == sorted(export.SIGNATURES)
    outputs = {name: sorted(fn.structured_outputs) for name, fn in loaded.signatures.items()}
    ensemble = ["classes", "entropy", "mutual_information", "probabilities"]
    assert outputs == {
        "serving_default": ensemble,
        "serving_bytes": ensemble,
        "posterior_mean": ["classes", "logits", "probabilities"],
        "sample_logits": ["logits"],
    }


def test_entropy_and_mutual_information_match_numpy_over_the_same_draws(small_export):
    """Two fresh loads start from the same saved RNG state, so the 3 draws of one
    ``serving_default`` call are the 3 ``sample_logits`` calls of the other load."""
    _, _, path = small_export
    images = tf.constant(_small_images(5, seed=2))
    draws_of = tf.saved_model.load(path).signatures["sample_logits"]
    per_draw = np.stack([_softmax(draws_of(images=images)["logits"].numpy()) for _ in range(3)])
    served = tf.saved_model.load(path).signatures["serving_default"](images=images)
    mean = per_draw.mean(axis=0)
    entropy = _entropy(mean)
    information = entropy - _entropy(per_draw).mean(axis=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(served["entropy"].numpy(), entropy, atol=1e-5)
    np.testing.assert_allclose(served["mutual_information"].numpy(), information, atol=1e-5)
    # The draws differ, so the epistemic part is not zero, and it is below the total.
    assert np.all(information > 1e-6)
    assert np.all(information < entropy)


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _decoded(encoded):
    """PIL's decoding of an encoded image: float32 [H, W, 3] in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), np.float32) / 255.0


def test_bytes_signature_classifies_a_png_like_the_float_signature(small_export):
    _, _, path = small_export
    pixels = np.random.default_rng(4).integers(0, 256, (3, *SMALL_SHAPE), dtype=np.uint8)
    encoded = [_png(p) for p in pixels]
    decoded = np.stack([_decoded(e) for e in encoded])
    np.testing.assert_array_equal(decoded, pixels / np.float32(255.0))
    from_bytes = tf.saved_model.load(path).signatures["serving_bytes"](
        image_bytes=tf.constant(encoded)
    )
    from_floats = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(decoded)
    )
    for key in ("probabilities", "entropy", "mutual_information"):
        np.testing.assert_allclose(from_bytes[key].numpy(), from_floats[key].numpy(), atol=1e-6)
    np.testing.assert_array_equal(from_bytes["classes"].numpy(), from_floats["classes"].numpy())


def test_bytes_signature_takes_jpeg_grey_and_other_sizes(small_export):
    _, _, path = small_export
    rng = np.random.default_rng(5)
    smooth = np.kron(rng.integers(0, 256, (2, 2, 3)), np.ones((2, 2, 1))).astype(np.uint8)
    jpeg = _jpeg(smooth)
    grey = _png(smooth[..., 0])
    large = _png(np.kron(smooth, np.ones((2, 2, 1), np.uint8)))
    loaded = tf.saved_model.load(path)
    outputs = loaded.signatures["serving_bytes"](image_bytes=tf.constant([jpeg, grey, large]))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Against PIL's decoding through the float signature, from the same saved RNG state: JPEG
    # decoders may differ by a grey level, which moves the output by little.
    reference = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(
            np.stack(
                [
                    _decoded(jpeg),
                    np.repeat(_decoded(grey)[..., :1], 3, -1),
                    smooth / np.float32(255.0),
                ]
            )
        )
    )
    np.testing.assert_allclose(probabilities, reference["probabilities"].numpy(), atol=2e-2)


def test_bytes_signature_refuses_what_is_no_image(small_export):
    loaded = tf.saved_model.load(small_export[2])
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.parametrize("posterior", ["reparameterization", "flipout"])
def test_posterior_mean_context_is_the_mu_only_pass(posterior):
    model = _small_model(posterior)
    images = _small_images()
    with sampling.posterior_mean():
        first = model(images, training=False).numpy()
        second = model(images, training=False).numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, _numpy_mean_pass(model, images), atol=1e-5)
    # Outside the context the noise is back.
    assert not np.allclose(model(images, training=False).numpy(), first, atol=1e-3)


def test_posterior_mean_signature_is_deterministic_and_the_mu_only_pass(small_export):
    model, _, path = small_export
    loaded = tf.saved_model.load(path)
    images = tf.constant(_small_images())
    first = loaded.signatures["posterior_mean"](images=images)
    second = loaded.signatures["posterior_mean"](images=images)
    np.testing.assert_array_equal(first["logits"].numpy(), second["logits"].numpy())
    expected = _numpy_mean_pass(model, images.numpy())
    np.testing.assert_allclose(first["logits"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(first["probabilities"].numpy(), _softmax(expected), atol=1e-6)
    np.testing.assert_array_equal(first["classes"].numpy(), expected.argmax(axis=1))
    sampled = loaded.signatures["sample_logits"](images=images)["logits"].numpy()
    assert not np.allclose(sampled, expected, atol=1e-3)


def test_posterior_mean_of_a_deterministic_defense_is_the_plain_pass():
    model = _tiny("plain")
    module = export.serving_module(model, num_samples=1, image_shape=IMAGE_SHAPE)
    images = _images(2)
    np.testing.assert_allclose(
        module.posterior_mean(images)["logits"].numpy(),
        model(images, training=False).numpy(),
        atol=1e-5,
    )


# ----- numbered versions and the warm-up file ---------------------------------------------------


def test_next_version_counts_only_integer_directories(tmp_path):
    assert export.next_version(str(tmp_path / "new")) == 1
    (tmp_path / "41").mkdir()
    (tmp_path / "7").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    (tmp_path / ".export-abc").mkdir()
    assert export.versions(str(tmp_path)) == [7, 41]
    assert export.next_version(str(tmp_path)) == 42


def test_versions_count_up_and_a_taken_number_is_never_overwritten(small_export, monkeypatch):
    model, base, path = small_export
    assert path == str(base / "1")
    assert (base / "1" / "saved_model.pb").is_file()
    before = tree_digest(base / "1")
    # Another export took number 1 between the scan and the rename: the rename must not
    # replace it, and the next number is used.
    answers = iter([1])
    real_next = export.next_version
    monkeypatch.setattr(export, "next_version", lambda b: next(answers, None) or real_next(b))
    second = export.export_version(model, str(base), num_samples=1, image_shape=SMALL_SHAPE)
    assert second == str(base / "2")
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert tree_digest(base / "1") == before
    assert (base / "2" / "saved_model.pb").is_file()


def test_a_failed_versioned_export_leaves_no_partial_version(small_export, monkeypatch):
    model, base, _ = small_export
    before = tree_digest(base)

    def broken_save(*args, **kwargs):
        os.makedirs(os.path.join(args[1], "variables"), exist_ok=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_version(model, str(base), num_samples=1, image_shape=SMALL_SHAPE)
    assert tree_digest(base) == before


def tree_digest(directory):
    """Relative path -> bytes of every file under ``directory``."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return files


# What the model server does at load time, written against the tensorflow_serving protos
# directly: read every PredictionLog of the warm-up file and run its request.
REPLAY = r"""
import json, os, sys
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

version_dir = sys.argv[1]
loaded = tf.saved_model.load(version_dir, tags=["serve"])
path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
replayed = []
for record in tf.data.TFRecordDataset(path):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
    replayed.append({
        "model": request.model_spec.name,
        "signature": request.model_spec.signature_name,
        "inputs": {k: [str(v.dtype.name), list(v.shape)] for k, v in inputs.items()},
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
        "finite": all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float64))))
                      for v in outputs.values()),
    })
print(json.dumps(replayed))
"""


def test_warmup_requests_replay_in_a_fresh_process(small_export):
    _, base, path = small_export
    result = subprocess.run(
        [sys.executable, "-c", REPLAY, path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replayed = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["signature"] for r in replayed] == list(export.SIGNATURES)
    assert {r["model"] for r in replayed} == {base.name}
    assert all(r["finite"] for r in replayed)
    images = ["float32", [export.WARMUP_BATCH, *SMALL_SHAPE]]
    by_signature = {r["signature"]: r for r in replayed}
    assert by_signature["serving_default"]["inputs"] == {"images": images}
    assert by_signature["serving_bytes"]["inputs"] == {
        "image_bytes": ["string", [export.WARMUP_BATCH]]
    }
    ensemble = {
        "probabilities": [2, 3],
        "classes": [2],
        "entropy": [2],
        "mutual_information": [2],
    }
    assert by_signature["serving_default"]["outputs"] == ensemble
    assert by_signature["serving_bytes"]["outputs"] == ensemble
    assert by_signature["posterior_mean"]["outputs"] == {
        "probabilities": [2, 3],
        "classes": [2],
        "logits": [2, 3],
    }
    assert by_signature["sample_logits"]["outputs"] == {"logits": [2, 3]}
