"""What the training, trainers and tuning tests share: tiny run configs, a finished run, readers
of checkpoints and model_dirs, two-worker launches of trainers.main, and KerasTuner records.

Test modules that use the ``finished_run`` fixture load this module with
``pytest_plugins = ["run_support"]``, which registers it once per session, so the run is trained
once for all of them, and import its helpers by name. Those imports load it before pytest
registers it, too late for assertion rewriting, hence PYTEST_DONT_REWRITE (its asserts stay
plain asserts).
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tfp_advbnn import run_dir
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training.trainer import Trainer


def tiny_config(model_dir, **overrides):
    """A TrainConfig of a 1/16-width VGG11 Adv-BNN that trains in seconds; ``overrides`` win."""
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
    return TrainConfig.from_flat(**values)


def deterministic_config(model_dir, **overrides):
    """``tiny_config`` with PGD random starts and TF op determinism, for bit-exact checks."""
    values = dict(random_start=True, deterministic=True)
    values.update(overrides)
    return tiny_config(model_dir, **values)


def checkpoint_values(path) -> dict:
    """Every value of a checkpoint, by name (the optimizer, metrics, RNG states and canary)."""
    return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)}


def assert_same_values(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    different = [name for name in a if not np.array_equal(a[name], b[name])]
    assert different == []


def tree_digest(directory) -> dict:
    """File path -> sha256 of everything under ``directory``."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def metrics_without_timing(model_dir) -> list[dict]:
    lines = (model_dir / run_dir.METRICS_FILENAME).read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k != "train_images_per_second"}
        for line in lines
    ]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, small_data):
    """A 2-epoch adv_bnn run with a checkpoint every 2 steps: (model_dir, its final values)."""
    model_dir = tmp_path_factory.mktemp("finished")
    trainer = Trainer(
        deterministic_config(model_dir, checkpoint_every_steps=2), image_data=small_data
    )
    trainer.fit(verbose=False, export=False)
    return model_dir, checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)


# ----- two trainers.main workers of one MultiWorkerMirroredStrategy cluster ------------------

WORKER_STEPS_PER_EPOCH = 64 // 16


def free_ports(count):
    """``count`` loopback ports free a moment ago (for a cluster spec on 127.0.0.1)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(model_dir, data_dir, epochs):
    """Two `trainers.main` processes of one MultiWorkerMirroredStrategy cluster on loopback.

    Returns (process, log path) pairs; the logs go to files beside ``model_dir``.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
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


def wait_for_workers(workers, timeout=240):
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


def saved_step(model_dir):
    path = tf.train.latest_checkpoint(str(model_dir / run_dir.CHECKPOINT_DIRNAME))
    return int(tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def epochs_logged(model_dir):
    return [
        json.loads(line)["epoch"]
        for line in (model_dir / run_dir.METRICS_FILENAME).read_text().splitlines()
    ]


# ----- KerasTuner searches -------------------------------------------------------------------

TINY = dict(
    dataset="cifar10",
    model="vgg11",
    defense="adv_bnn",
    width_multiplier=0.0625,
    batch_size=16,
    epochs=3,
    train_pgd_steps=1,
    eval_num_samples=2,
    eval_pgd_steps=2,
    max_train_examples=80,
    max_test_examples=16,
    seed=1,
)
NUM_VALIDATION = 16  # a fifth of the 80 training images: the cap of load_search_data


def tiny_search(tuner_dir, data_dir, validation_examples=NUM_VALIDATION, **overrides):
    """A SearchConfig of two one-epoch trials of the TINY run; ``overrides`` win."""
    # Imported here: KerasTuner loads Keras 3, which the training tests have no use for.
    from tfp_advbnn.tuning.search_config import SearchConfig

    base = TrainConfig.from_flat(
        model_dir=str(tuner_dir),
        data_dir=str(data_dir),
        validation_examples=validation_examples,
        **TINY,
    )
    values = dict(tuner_dir=str(tuner_dir), base=base, max_trials=2, epochs_per_trial=1)
    values.update(overrides)
    return SearchConfig(**values)


def trial_json(tuner_dir, trial_id):
    with open(os.path.join(tuner_dir, f"trial_{trial_id}", "trial.json")) as f:
        return json.load(f)


def reported(trial, name):
    """A metric as KerasTuner stored it in trial.json (one observation at step 0)."""
    (observation,) = trial["metrics"]["metrics"][name]["observations"]
    return observation["value"][0]


def metric_lines(model_dir):
    with open(os.path.join(model_dir, run_dir.METRICS_FILENAME)) as f:
        return [json.loads(line) for line in f]
