"""The training loop (training/trainer.py): a run's outputs and resume, mirrored and two-worker
runs, mid-epoch and SIGKILL resumes that end bit for bit as uninterrupted runs, the step
canary, and the non-finite rollback."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from run_support import (
    WORKER_STEPS_PER_EPOCH,
    assert_same_values,
    checkpoint_values,
    deterministic_config,
    epochs_logged,
    metrics_without_timing,
    saved_step,
    start_workers,
    tiny_config,
    wait_for_workers,
)

from tfp_advbnn import export, run_dir
from tfp_advbnn.training import checkpointing
from tfp_advbnn.training.trainer import Trainer

pytest_plugins = ["run_support"]


def test_run_writes_everything_and_resumes(tmp_path, small_data):
    config = tiny_config(tmp_path / "run", epochs=1, eval_robust_examples=16)
    Trainer(config, image_data=small_data).fit(verbose=False)
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
    assert json.loads((model_dir / "config.json").read_text())["objective"]["defense"] == "adv_bnn"

    resumed = Trainer(config.replace(epochs=2), image_data=small_data)
    resumed.fit(verbose=False)
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert int(resumed.optimizer.iterations.numpy()) == 2 * resumed.steps_per_epoch

    loaded = tf.saved_model.load(str(model_dir / "saved_model"))
    images, _ = next(iter(small_data.test_dataset(batch_size=4)))
    probabilities = loaded.signatures["serving_default"](images=images)["probabilities"]
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_adv_bnn_trains_under_mirrored(tmp_path, small_data):
    config = tiny_config(tmp_path, defense="adv_bnn", strategy="mirrored", epochs=1)
    metrics = Trainer(config, image_data=small_data).fit(verbose=False)
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["kl"])
    assert (tmp_path / "saved_model").is_dir()


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_resume(tmp_path, cifar_bin_dir):
    model_dir = tmp_path / "run"
    for returncode, output in wait_for_workers(start_workers(model_dir, cifar_bin_dir, epochs=2)):
        assert returncode == 0, output
    for name in ("config.json", "model_spec.json", "tensorboard", "saved_model"):
        assert (model_dir / name).exists(), name
    assert epochs_logged(model_dir) == [1, 2]
    assert saved_step(model_dir) == 2 * WORKER_STEPS_PER_EPOCH
    # Only the chief wrote: no worker scratch directory and one TensorBoard events file.
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []
    assert len(list((model_dir / "tensorboard").iterdir())) == 1

    for returncode, output in wait_for_workers(start_workers(model_dir, cifar_bin_dir, epochs=3)):
        assert returncode == 0, output
        assert "Resumed from" in output
    assert epochs_logged(model_dir) == [1, 2, 3]
    assert saved_step(model_dir) == 3 * WORKER_STEPS_PER_EPOCH


def test_mid_epoch_resume_on_two_replicas_sees_the_same_batches(tmp_path, small_data):
    """Stopped after step 1 of 4 under MirroredStrategy on 2 CPU replicas and resumed, a run
    ends with the weights and step count of an uninterrupted one: the resumed epoch skips
    exactly the batches already trained on (each step takes one per replica)."""

    def config_at(name):
        return tiny_config(
            tmp_path / name,
            defense="plain",
            strategy="mirrored",
            epochs=1,
            optimizer="sgd",
            learning_rate=0.1,
            momentum=0.0,
        )

    uninterrupted = Trainer(config_at("whole"), image_data=small_data)
    assert uninterrupted.strategy.num_replicas_in_sync == 2
    uninterrupted.fit(verbose=False, export=False)

    stopped = Trainer(config_at("stopped"), image_data=small_data)
    real_step = stopped.task.train_step

    def step_then_signal(iterator):
        faults = real_step(iterator)
        os.kill(os.getpid(), signal.SIGTERM)
        return faults

    stopped.task.train_step = step_then_signal
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(verbose=False, export=False)
    resumed = Trainer(config_at("stopped"), image_data=small_data)
    resumed.fit(verbose=False, export=False)
    assert (
        int(resumed.task.canary_steps.numpy()) == int(uninterrupted.task.canary_steps.numpy()) == 4
    )
    for mine, theirs in zip(
        resumed.model.trainable_variables, uninterrupted.model.trainable_variables, strict=True
    ):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


CLI_RUN = [
    "--dataset=cifar10",
    "--model=vgg11",
    "--width_multiplier=0.0625",
    "--defense=adv_bnn",
    "--max_train_examples=128",
    "--max_test_examples=32",
    "--batch_size=16",
    "--epochs=2",
    "--train_pgd_steps=2",
    "--random_start",
    "--eval_num_samples=2",
    "--export_num_samples=2",
    "--checkpoint_every_steps=1",
    "--deterministic",
    "--seed=3",
]


def _train_command(model_dir, cifar_bin_dir):
    return [
        sys.executable,
        "-m",
        "trainers.main",
        *CLI_RUN,
        f"--data_dir={cifar_bin_dir}",
        f"--model_dir={model_dir}",
    ]


def _saved_steps(model_dir) -> int:
    paths = checkpointing.checkpoint_paths(str(model_dir / run_dir.CHECKPOINT_DIRNAME))
    return max((int(p.rsplit("-", 1)[1]) for p in paths), default=-1)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run_bit_for_bit(
    tmp_path, cifar_bin_dir
):
    steps_per_epoch = 128 // 16
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_train_command(clean_dir, cifar_bin_dir), cwd=REPO_ROOT, check=True)

    process = subprocess.Popen(_train_command(killed_dir, cifar_bin_dir), cwd=REPO_ROOT)
    deadline = time.time() + 300
    # Killed in the middle of the second epoch, between or during any of its operations.
    while _saved_steps(killed_dir) < steps_per_epoch + 3 and process.poll() is None:
        assert time.time() < deadline, "the run to be killed made no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / export.SAVED_MODEL_DIRNAME).exists()
    subprocess.run(_train_command(killed_dir, cifar_bin_dir), cwd=REPO_ROOT, check=True)

    final = 2 * steps_per_epoch
    clean = checkpoint_values(str(clean_dir / run_dir.CHECKPOINT_DIRNAME / f"ckpt-{final}"))
    resumed = checkpoint_values(str(killed_dir / run_dir.CHECKPOINT_DIRNAME / f"ckpt-{final}"))
    assert_same_values(clean, resumed)
    assert clean["canary_steps/.ATTRIBUTES/VARIABLE_VALUE"] == final
    assert metrics_without_timing(clean_dir) == metrics_without_timing(killed_dir)


def test_a_transient_nonfinite_step_rolls_back_and_the_run_ends_as_a_clean_one(
    tmp_path, finished_run, small_data, caplog
):
    _, clean_values = finished_run
    trainer = Trainer(
        deterministic_config(tmp_path, checkpoint_every_steps=2), image_data=small_data
    )
    real_step = trainer.task.train_step
    calls = []

    def faulty_step(iterator):
        faults = real_step(iterator)
        calls.append(1)
        if len(calls) == 7:
            # A fault in the middle of epoch 2: the weights turn NaN, the step reports it.
            weight = trainer.model.trainable_variables[0]
            weight.assign(tf.fill(weight.shape, np.nan))
            return tf.constant(1)
        return faults

    trainer.task.train_step = faulty_step
    with caplog.at_level(logging.WARNING):
        trainer.fit(verbose=False, export=False)
    assert "rolled back to epoch 2, step 2 (retry 1 of 3)" in caplog.text
    assert_same_values(
        clean_values, checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)
    )
    assert [m["epoch"] for m in metrics_without_timing(tmp_path)] == [1, 2]


def test_a_diverging_run_stops_after_the_retries_and_keeps_only_finite_checkpoints(
    tmp_path, small_data
):
    config = deterministic_config(
        tmp_path, defense="plain", learning_rate=1e38, max_nonfinite_retries=2
    )
    trainer = Trainer(config, image_data=small_data)
    with pytest.raises(FloatingPointError, match="max_nonfinite_retries=2"):
        trainer.fit(verbose=False, export=False)
    paths = checkpointing.checkpoint_paths(str(tmp_path / run_dir.CHECKPOINT_DIRNAME))
    assert paths
    for path in paths:
        for name, value in checkpoint_values(path).items():
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name
    assert not (tmp_path / export.SAVED_MODEL_DIRNAME).exists()


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path, small_data):
    trainer = Trainer(deterministic_config(tmp_path, defense="plain"), image_data=small_data)
    first = trainer.save()
    weight = trainer.model.trainable_variables[-1]
    weight.assign(tf.fill(weight.shape, np.inf))
    trainer.optimizer.iterations.assign_add(1)
    with pytest.raises(FloatingPointError, match="non-finite values"):
        trainer.save()
    assert checkpointing.checkpoint_paths(str(tmp_path / run_dir.CHECKPOINT_DIRNAME)) == [first]


def test_two_runs_with_one_seed_train_the_same_bits(tmp_path, finished_run, small_data):
    _, clean_values = finished_run
    trainer = Trainer(
        deterministic_config(tmp_path, checkpoint_every_steps=2), image_data=small_data
    )
    trainer.fit(verbose=False, export=False)
    assert_same_values(
        clean_values, checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)
    )
