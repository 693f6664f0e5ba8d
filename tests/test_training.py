"""The training engine: loss of eq. 13, schedule, checkpoints, resume, outputs."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tfp_advbnn import layers, models, training


def _config(model_dir, **overrides):
    values = dict(
        model_dir=str(model_dir),
        dataset="cifar10",
        model="vgg11",
        defense="adv_bnn",
        width_multiplier=0.0625,
        epochs=2,
        batch_size=16,
        train_pgd_steps=2,
        eval_num_samples=2,
        export_num_samples=2,
        alpha=0.5,
        seed=1,
    )
    values.update(overrides)
    return training.TrainConfig(**values)


@pytest.mark.parametrize(
    "dataset, epochs, expected_epochs",
    [
        ("cifar10", 200, [80, 140, 180]),
        ("cifar10", 10, [4, 7, 9]),
        ("stl10", 120, [60, 100]),
        ("folder", 80, [30, 50, 70]),
    ],
)
def test_schedule_scales_the_reference_stages(dataset, epochs, expected_epochs):
    config = _config(
        "unused",
        dataset=dataset,
        epochs=epochs,
        learning_rate=0.01,
        image_size=8 if dataset == "folder" else None,
    )
    schedule = training.learning_rate_schedule(config, steps_per_epoch=5)
    assert schedule.boundaries == [e * 5 for e in expected_epochs]
    for stage, boundary in enumerate([0] + [e * 5 for e in expected_epochs]):
        np.testing.assert_allclose(float(schedule(boundary + 1)), 0.01 / 10**stage, rtol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("defense", "madry"),
        ("model", "resnet50"),
        ("train_eps", 8.0),
        ("batch_size", 0),
        ("alpha", -1.0),
        ("sigma_0", 0.0),
        ("learning_rate", float("nan")),
        ("train_pgd_steps", 0),
        ("optimizer", "rmsprop"),
        ("eval_num_samples", 0),
    ],
)
def test_bad_config_names_the_field(field, value):
    config = _config("unused", **{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()


def test_train_step_loss_is_cross_entropy_plus_scaled_kl(tmp_path, small_data):
    """Eq. 13 checked against an independent computation on a model with ~zero variance."""
    config = _config(
        tmp_path,
        defense="bnn",
        alpha=0.7,
        optimizer="sgd",
        learning_rate=1e-9,
        weight_decay=0.0,
        momentum=0.0,
    )
    trainer = training.Trainer(config, image_data=small_data)
    _zero_variance(trainer.model)
    images, labels = next(iter(small_data.train_dataset(batch_size=16, epoch=0, seed=1)))
    logits = trainer.model(images, training=True)
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    kl = float(layers.model_kl(trainer.model))
    expected = float(cross_entropy) + 0.7 / small_data.spec.num_train * kl
    trainer._train_step(trainer._train_iterator(0, 0))
    np.testing.assert_allclose(float(trainer.train_loss.result()), expected, rtol=1e-4)
    np.testing.assert_allclose(float(trainer.train_kl.result()), kl, rtol=1e-4)


def test_every_trainable_variable_gets_updated(tmp_path, small_data):
    trainer = training.Trainer(_config(tmp_path, defense="adv_bnn"), image_data=small_data)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer._train_step(trainer._train_iterator(0, 0))
    after = [v.numpy() for v in trainer.model.trainable_variables]
    unchanged = [
        v.name
        for v, b, a in zip(trainer.model.trainable_variables, before, after, strict=True)
        if np.array_equal(b, a)
    ]
    assert unchanged == []


def test_run_writes_everything_and_resumes(tmp_path, small_data):
    config = _config(tmp_path / "run", epochs=1, eval_robust_examples=16)
    training.Trainer(config, image_data=small_data).fit(verbose=False)
    model_dir = tmp_path / "run"
    for name in (
        "config.json",
        "model_spec.json",
        "metrics.jsonl",
        "checkpoints",
        "tensorboard",
        "saved_model",
    ):
        assert (model_dir / name).exists(), name
    first = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in first] == [1]
    for key in ("train_loss", "train_accuracy", "kl", "test_accuracy", "test_robust_accuracy"):
        assert np.isfinite(first[0][key]), key
    assert json.loads((model_dir / "config.json").read_text())["defense"] == "adv_bnn"

    resumed = training.Trainer(dataclasses.replace(config, epochs=2), image_data=small_data)
    resumed.fit(verbose=False)
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert int(resumed.optimizer.iterations.numpy()) == 2 * resumed.steps_per_epoch

    loaded = tf.saved_model.load(str(model_dir / "saved_model"))
    images, _ = next(iter(small_data.test_dataset(batch_size=4)))
    probabilities = loaded.signatures["serving_default"](images=images)["probabilities"]
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_signal_mid_epoch_saves_and_resume_loses_no_step(tmp_path, small_data):
    config = _config(tmp_path, defense="plain", epochs=2)
    trainer = training.Trainer(config, image_data=small_data)
    real_step = trainer._train_step
    calls = []

    def step_then_signal(iterator):
        faults = real_step(iterator)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return faults

    trainer._train_step = step_then_signal
    with pytest.raises(KeyboardInterrupt, match="Rerun"):
        trainer.fit(verbose=False)
    saved_step = int(
        tf.train.load_variable(
            trainer.checkpoint_manager.latest_checkpoint,
            "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
        )
    )
    assert saved_step == 3

    resumed = training.Trainer(config, image_data=small_data)
    resumed.fit(verbose=False)
    assert int(resumed.optimizer.iterations.numpy()) == 2 * resumed.steps_per_epoch
    epochs = [
        json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2]


def test_model_dir_with_another_run_is_refused(tmp_path, small_data):
    training.Trainer(_config(tmp_path, defense="plain", epochs=1), image_data=small_data).fit(
        verbose=False
    )
    config_before = (tmp_path / "config.json").read_text()
    checkpoints_before = sorted(os.listdir(tmp_path / "checkpoints"))
    other = training.Trainer(_config(tmp_path, defense="rse", epochs=1), image_data=small_data)
    with pytest.raises(ValueError, match="defense"):
        other.fit(verbose=False)
    assert (tmp_path / "config.json").read_text() == config_before
    assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints_before


def test_restore_model_matches_the_trained_weights(tmp_path, small_data):
    trainer = training.Trainer(_config(tmp_path, defense="plain", epochs=1), image_data=small_data)
    trainer.fit(verbose=False)
    model, config, spec = training.restore_model(str(tmp_path))
    assert config.defense == "plain" and spec["num_classes"] == 10
    images, _ = next(iter(small_data.test_dataset(batch_size=4)))
    np.testing.assert_allclose(
        model(images, training=False).numpy(),
        trainer.model(images, training=False).numpy(),
        atol=1e-5,
    )


def test_cli_rejects_a_bad_flag_with_its_name(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainers.main", "--train_eps=8", f"--model_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "train_eps" in result.stderr
    assert not os.listdir(tmp_path)


def test_every_defense_builds_a_trainer(tmp_path, small_data):
    for defense in models.DEFENSES:
        trainer = training.Trainer(
            _config(tmp_path / defense, defense=defense), image_data=small_data
        )
        trainer._train_step(trainer._train_iterator(0, 0))
        assert np.isfinite(float(trainer.train_loss.result())), defense


@pytest.mark.parametrize("defense", ["plain", "adv"])
def test_mirrored_step_equals_single_device_step(tmp_path, small_data, defense):
    """Same global batch on 2 replicas and on 1 device: the same updated weights."""
    assert len(tf.config.list_logical_devices("CPU")) == 2
    weights = {}
    for strategy in ("default", "mirrored"):
        # Plain SGD: Adam's first step is lr * sign(gradient), which turns float noise in a
        # near-zero gradient into a full-size difference.
        config = _config(
            tmp_path / strategy,
            defense=defense,
            strategy=strategy,
            optimizer="sgd",
            learning_rate=0.1,
            momentum=0.0,
            weight_decay=0.0,
        )
        trainer = training.Trainer(config, image_data=small_data)
        assert trainer.strategy.num_replicas_in_sync == (2 if strategy == "mirrored" else 1)
        trainer._train_step(trainer._train_iterator(0, 0))
        weights[strategy] = [v.numpy() for v in trainer.model.trainable_variables]
        weights[strategy + "_loss"] = float(trainer.train_loss.result())
    np.testing.assert_allclose(weights["mirrored_loss"], weights["default_loss"], rtol=1e-4)
    for single, mirrored in zip(weights["default"], weights["mirrored"], strict=True):
        np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5)


def _zero_variance(model):
    """Sets every posterior log std to -30 so that draws equal the means."""
    for _, log_std in (
        pair
        for layer in model.layers
        for pair in getattr(layer, "posterior_parameters", {}).values()
    ):
        log_std.assign(tf.fill(log_std.shape, -30.0))


def test_mirrored_counts_the_kl_once(tmp_path, small_data):
    """On 2 replicas the reported loss is still CE + alpha / N * KL, with the KL once."""
    reference = training.Trainer(
        _config(tmp_path / "one", defense="bnn", alpha=0.7), image_data=small_data
    )
    _zero_variance(reference.model)
    images, labels = next(iter(small_data.train_dataset(batch_size=16, epoch=0, seed=1)))
    logits = reference.model(images, training=True)
    cross_entropy = float(
        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    )
    kl = float(layers.model_kl(reference.model))

    mirrored = training.Trainer(
        _config(tmp_path / "two", defense="bnn", alpha=0.7, strategy="mirrored"),
        image_data=small_data,
    )
    _zero_variance(mirrored.model)
    mirrored._train_step(mirrored._train_iterator(0, 0))
    np.testing.assert_allclose(float(mirrored.train_kl.result()), kl, rtol=1e-4)
    expected = cross_entropy + 0.7 / small_data.spec.num_train * kl
    np.testing.assert_allclose(float(mirrored.train_loss.result()), expected, rtol=1e-4)


def test_adv_bnn_trains_under_mirrored(tmp_path, small_data):
    config = _config(tmp_path, defense="adv_bnn", strategy="mirrored", epochs=1)
    metrics = training.Trainer(config, image_data=small_data).fit(verbose=False)
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["kl"])
    assert (tmp_path / "saved_model").is_dir()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step_is_finite_and_keeps_float32_state(tmp_path, small_data, precision):
    config = _config(tmp_path, defense="adv_bnn", precision=precision)
    trainer = training.Trainer(config, image_data=small_data)
    trainer._train_step(trainer._train_iterator(0, 0))
    assert np.isfinite(float(trainer.train_loss.result()))
    assert np.isfinite(float(trainer.train_kl.result()))
    assert all(v.dtype == tf.float32 for v in trainer.model.trainable_variables)
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(model_dir, data_dir, epochs):
    """Two `trainers.main` processes of one MultiWorkerMirroredStrategy cluster on loopback.

    Returns (process, log path) pairs; the logs go to files beside ``model_dir``.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    flags = [
        "--strategy=multi_worker",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        "--model=vgg11",
        "--defense=plain",
        "--width_multiplier=0.0625",
        "--batch_size=16",
        "--max_train_examples=64",
        "--max_test_examples=32",
        f"--epochs={epochs}",
        "--eval_num_samples=2",
        "--export_num_samples=2",
    ]
    workers = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_ENABLE_ONEDNN_OPTS="1",
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        log = model_dir.parent / f"worker-{index}-{time.monotonic_ns()}.log"
        with open(log, "w") as f:
            process = subprocess.Popen(
                [sys.executable, "-m", "trainers.main", *flags],
                cwd=REPO_ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        workers.append((process, log))
    return workers


def _wait(workers, timeout=240):
    """Each worker's (return code, log). A worker still running after ``timeout`` seconds is
    killed, so its return code is -9."""
    deadline = time.monotonic() + timeout
    try:
        for process, _ in workers:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for process, _ in workers:
            process.kill()
            process.wait()
    return [(process.returncode, log.read_text()) for process, log in workers]


def _saved_step(model_dir):
    path = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    return int(tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def _epochs_logged(model_dir):
    return [
        json.loads(line)["epoch"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()
    ]


STEPS_PER_EPOCH = 64 // 16


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_resume(tmp_path, cifar_bin_dir):
    model_dir = tmp_path / "run"
    for returncode, output in _wait(_start_workers(model_dir, cifar_bin_dir, epochs=2)):
        assert returncode == 0, output
    for name in ("config.json", "model_spec.json", "tensorboard", "saved_model"):
        assert (model_dir / name).exists(), name
    assert _epochs_logged(model_dir) == [1, 2]
    assert _saved_step(model_dir) == 2 * STEPS_PER_EPOCH
    # Only the chief wrote: no worker scratch directory and one TensorBoard events file.
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    assert len(list((model_dir / "tensorboard").iterdir())) == 1

    for returncode, output in _wait(_start_workers(model_dir, cifar_bin_dir, epochs=3)):
        assert returncode == 0, output
        assert "Resumed from" in output
    assert _epochs_logged(model_dir) == [1, 2, 3]
    assert _saved_step(model_dir) == 3 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_sigterm_to_one_worker_checkpoints_all_and_resume_is_exact(tmp_path, cifar_bin_dir):
    model_dir = tmp_path / "run"
    epochs = 4
    workers = _start_workers(model_dir, cifar_bin_dir, epochs=epochs)
    metrics = model_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
            pytest.fail(f"no epoch finished: {_wait(workers, timeout=1)}")
        time.sleep(0.1)
    # Mid-run (epoch 1 is done, three remain) the non-chief worker is preempted.
    workers[1][0].send_signal(signal.SIGTERM)
    for returncode, output in _wait(workers):
        assert returncode == 130 and "preempted" in output, output
    saved = _saved_step(model_dir)
    assert STEPS_PER_EPOCH < saved < epochs * STEPS_PER_EPOCH
    assert not (model_dir / "saved_model").exists()
    assert not (model_dir / ".worker-1-tmp").exists()

    for returncode, output in _wait(_start_workers(model_dir, cifar_bin_dir, epochs=epochs)):
        assert returncode == 0, output
        assert f"Resumed from {model_dir / 'checkpoints' / f'ckpt-{saved}'}" in output
    assert _epochs_logged(model_dir) == list(range(1, epochs + 1))
    assert _saved_step(model_dir) == epochs * STEPS_PER_EPOCH
