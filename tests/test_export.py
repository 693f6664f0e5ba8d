"""SavedModel export: signatures, input checks, differentiability, atomic replacement."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn import export, models

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
    model = _tiny("bnn")
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    export.export_saved_model(model, path, num_samples=4, image_shape=IMAGE_SHAPE)
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
