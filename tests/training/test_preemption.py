"""Clean stops (training/preemption.py): a signal mid-epoch saves and the resume loses no step;
under multi_worker a SIGTERM to one worker checkpoints all of them."""

import json
import os
import signal
import time

import pytest
import tensorflow as tf
from run_support import (
    WORKER_STEPS_PER_EPOCH,
    epochs_logged,
    saved_step,
    start_workers,
    tiny_config,
    wait_for_workers,
)

from tfp_advbnn.training.trainer import Trainer


def test_signal_mid_epoch_saves_and_resume_loses_no_step(tmp_path, small_data):
    config = tiny_config(tmp_path, defense="plain", epochs=2)
    trainer = Trainer(config, image_data=small_data)
    real_step = trainer.task.train_step
    calls = []

    def step_then_signal(iterator):
        faults = real_step(iterator)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return faults

    trainer.task.train_step = step_then_signal
    with pytest.raises(KeyboardInterrupt, match="Rerun"):
        trainer.fit(verbose=False)
    saved_step = int(
        tf.train.load_variable(
            trainer.checkpoint_manager.latest_checkpoint,
            "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
        )
    )
    assert saved_step == 3

    resumed = Trainer(config, image_data=small_data)
    resumed.fit(verbose=False)
    assert int(resumed.optimizer.iterations.numpy()) == 2 * resumed.steps_per_epoch
    epochs = [
        json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2]


@pytest.mark.slow
def test_sigterm_to_one_worker_checkpoints_all_and_resume_is_exact(tmp_path, cifar_bin_dir):
    model_dir = tmp_path / "run"
    epochs = 4
    workers = start_workers(model_dir, cifar_bin_dir, epochs=epochs)
    metrics = model_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in workers):
            pytest.fail(f"no epoch finished: {wait_for_workers(workers, timeout=1)}")
        time.sleep(0.1)
    # Mid-run (epoch 1 is done, three remain) the non-chief worker is preempted.
    workers[1][0].send_signal(signal.SIGTERM)
    for returncode, output in wait_for_workers(workers):
        assert returncode == 130 and "preempted" in output, output
    saved = saved_step(model_dir)
    assert WORKER_STEPS_PER_EPOCH < saved < epochs * WORKER_STEPS_PER_EPOCH
    assert not (model_dir / "saved_model").exists()
    assert not (model_dir / ".worker-1-tmp").exists()

    for returncode, output in wait_for_workers(
        start_workers(model_dir, cifar_bin_dir, epochs=epochs)
    ):
        assert returncode == 0, output
        assert f"Resumed from {model_dir / 'checkpoints' / f'ckpt-{saved}'}" in output
    assert epochs_logged(model_dir) == list(range(1, epochs + 1))
    assert saved_step(model_dir) == epochs * WORKER_STEPS_PER_EPOCH
