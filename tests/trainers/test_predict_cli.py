"""trainers.predict: classes and both uncertainties of PNG and JPEG files, checked against the
ensemble computed in numpy from the restored model's draws; bad files named in the error."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from PIL import Image

from tfp_advbnn import training
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training.trainer import Trainer

LINE = re.compile(
    r"^(?P<path>.+): (?P<name>\S+) \((?P<id>\d+)\) p=(?P<p>[\d.]+) "
    r"entropy=(?P<entropy>[\d.]+) mutual_information=(?P<mi>[\d.]+)$"
)


@pytest.fixture(scope="module")
def bnn_run(tmp_path_factory, small_data, cifar_bin_dir):
    """A one-epoch tiny BNN run (checkpoint, config.json, model_spec.json), not exported."""
    model_dir = tmp_path_factory.mktemp("runs") / "bnn"
    config = TrainConfig.from_flat(
        model_dir=str(model_dir),
        dataset="cifar10",
        data_dir=str(cifar_bin_dir),
        max_train_examples=64,
        max_test_examples=32,
        model="vgg11",
        defense="bnn",
        # A posterior wide enough that the draws disagree visibly (the recipe's 0.002 gives
        # mutual information below the 4 printed decimals).
        init_s=0.1,
        width_multiplier=0.0625,
        epochs=1,
        batch_size=16,
        eval_num_samples=1,
        export_num_samples=1,
        seed=1,
    )
    Trainer(config, image_data=small_data).fit(verbose=False, export=False)
    return model_dir


def _run(args):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "trainers.predict", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write(path, pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=95)
    path.write_bytes(buffer.getvalue())
    # PIL's decoding of what was written, float32 in [0, 1].
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def test_predicts_png_and_jpeg_with_the_ensemble_uncertainties(bnn_run, tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    png = tmp_path / "noise.png"
    jpeg = tmp_path / "blocks.jpg"
    decoded = np.stack(
        [
            _write(png, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG"),
            _write(jpeg, smooth, "JPEG"),
        ]
    )
    result = _run([f"--model_dir={bnn_run}", "--num_samples=3", str(png), str(jpeg)])
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [LINE.match(line) for line in result.stdout.strip().splitlines()]
    assert all(lines) and [m["path"] for m in lines] == [str(png), str(jpeg)]

    # The same 3 draws, here: the restored checkpoint holds every layer's RNG state, and the
    # command classifies both files in one batch of 3 model calls.
    model, _, spec = training.restore_model(str(bnn_run))
    logits = np.stack([model(tf.constant(decoded), training=False).numpy() for _ in range(3)])
    per_draw = np.exp(logits - logits.max(-1, keepdims=True))
    per_draw /= per_draw.sum(-1, keepdims=True)
    mean = per_draw.mean(0)
    entropy = -(mean * np.log(mean)).sum(-1)
    information = entropy + (per_draw * np.log(per_draw)).sum(-1).mean(0)
    # PNG is lossless (exact up to printing); JPEG decoders may differ by a grey level.
    for i, (match, tolerance) in enumerate(zip(lines, (1e-4, 2e-2), strict=True)):
        class_id = int(mean[i].argmax())
        if tolerance < 1e-3 or mean[i].max() - np.sort(mean[i])[-2] > 0.05:
            assert int(match["id"]) == class_id
            assert match["name"] == spec["class_names"][class_id]
        assert float(match["p"]) == pytest.approx(mean[i].max(), abs=tolerance)
        assert float(match["entropy"]) == pytest.approx(entropy[i], abs=tolerance)
        assert float(match["mi"]) == pytest.approx(information[i], abs=tolerance)
    assert float(lines[0]["mi"]) > 0


@pytest.mark.parametrize("bad", ["notes.png", "missing.jpg"])
def test_a_bad_file_is_named_in_the_error(bnn_run, tmp_path, bad):
    good = tmp_path / "good.png"
    _write(good, np.zeros((32, 32, 3), np.uint8), "PNG")
    if bad == "notes.png":
        (tmp_path / bad).write_text("not an image")
    result = _run([f"--model_dir={bnn_run}", str(good), str(tmp_path / bad)])
    assert result.returncode != 0
    assert str(tmp_path / bad) in result.stderr
    assert result.stdout.strip() == ""


def test_no_files_is_a_usage_error(bnn_run):
    result = _run([f"--model_dir={bnn_run}"])
    assert result.returncode != 0
    assert "image files" in result.stderr
