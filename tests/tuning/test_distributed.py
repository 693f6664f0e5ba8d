"""A distributed search (tuning/distributed.py, trainers.tune): a chief and two workers as three
`trainers.tune` processes on loopback. One worker is SIGKILLed mid-trial and restarted with its
tuner id; every trial must then have been completed exactly once, the killed one resumed from its
checkpoint, and only the chief writes the summary, which names the best trial."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from run_support import metric_lines, reported, tiny_search, trial_json

from tfp_advbnn import run_dir
from tfp_advbnn.tuning.distributed import distributed_role, read_trial_runs
from tfp_advbnn.tuning.summaries import BEST_FILENAME, SUMMARY_FILENAME
from tfp_advbnn.tuning.tuner import check_distributed

pytest.importorskip("grpc", reason="KerasTuner's distributed mode needs grpcio")
pytestmark = pytest.mark.slow

MAX_TRIALS = 3
# 64 training images after the 16 held out, batch 16: 4 steps, a checkpoint after each one.
# bnn rather than adv_bnn: the same trial bookkeeping without PGD in the train step, which
# each process would trace for every trial.
FLAGS = [
    "--defense=bnn",
    "--model=vgg11",
    "--width_multiplier=0.0625",
    "--batch_size=16",
    "--max_train_examples=80",
    "--max_test_examples=16",
    "--validation_examples=16",
    "--eval_pgd_steps=2",
    "--eval_num_samples=2",
    f"--max_trials={MAX_TRIALS}",
    "--epochs_per_trial=1",
    "--checkpoint_every_steps=1",
    "--seed=1",
]
# The whole search, from the first start to the last exit: about a minute on 2 idle cores,
# several on a loaded machine.
DEADLINE_S = 600


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tuner_id, port, tuner_dir, data_dir, log_dir):
    env = dict(
        os.environ,
        TF_ENABLE_ONEDNN_OPTS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        KERASTUNER_TUNER_ID=tuner_id,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
    )
    log = log_dir / f"{tuner_id}-{time.monotonic_ns()}.log"
    with open(log, "w") as f:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainers.tune",
                f"--tuner_dir={tuner_dir}",
                f"--data_dir={data_dir}",
                *FLAGS,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return process, log


def _checkpoint_step(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, run_dir.CHECKPOINT_DIRNAME))
    return -1 if path is None else int(path.rsplit("-", 1)[1])


def _trial_mid_training(tuner_dir):
    """(trial id, tuner id) of a trial that has started, has a checkpoint after its first step
    and has not ended, or None."""
    for name in sorted(os.listdir(tuner_dir)):
        if not name.startswith("trial_"):
            continue
        runs = read_trial_runs(tuner_dir / name)
        started = [r for r in runs if r["event"] == "start"]
        ended = [r for r in runs if r["event"] == "end"]
        if started and not ended and _checkpoint_step(tuner_dir / name / "model") >= 1:
            return name.removeprefix("trial_"), started[-1]["tuner_id"]
    return None


@pytest.fixture(scope="module")
def search(tmp_path_factory, cifar_bin_dir):
    """Runs the search, SIGKILLs the first worker caught mid-trial, restarts it with the same
    tuner id, and waits for all processes. Returns what the test reads."""
    root = tmp_path_factory.mktemp("distributed")
    tuner_dir, port = root / "search", _free_port()
    started = {
        tuner_id: _start(tuner_id, port, tuner_dir, cifar_bin_dir, root)
        for tuner_id in ("chief", "tuner0", "tuner1")
    }
    processes = list(started.values())
    deadline = time.monotonic() + DEADLINE_S
    try:
        caught = None
        while caught is None and time.monotonic() < deadline:
            if tuner_dir.is_dir():
                caught = _trial_mid_training(tuner_dir)
            if any(p.poll() is not None for p, _ in processes):
                break
            time.sleep(0.05)
        assert caught is not None, "no trial was seen mid-training: " + "\n".join(
            log.read_text()[-2000:] for _, log in processes
        )
        killed_trial, killed_tuner = caught
        victim, victim_log = started[killed_tuner]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        at_kill = {
            "runs": read_trial_runs(tuner_dir / f"trial_{killed_trial}"),
            "status": trial_json(tuner_dir, killed_trial)["status"],
            "step": _checkpoint_step(tuner_dir / f"trial_{killed_trial}" / "model"),
        }
        restarted = _start(killed_tuner, port, tuner_dir, cifar_bin_dir, root)
        processes.append(restarted)
        others = [started[t] for t in started if t != killed_tuner] + [restarted]
        for process, _ in others:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = {tuner_id: log.read_text() for tuner_id, (_, log) in started.items()}
    return dict(
        tuner_dir=tuner_dir,
        killed_trial=killed_trial,
        killed_tuner=killed_tuner,
        at_kill=at_kill,
        victim_returncode=victim.returncode,
        returncodes={log.name: p.returncode for p, log in others},
        logs=logs,
        restarted_log=restarted[1].read_text(),
        victim_log=victim_log.read_text(),
    )


def test_all_processes_finish(search):
    assert search["victim_returncode"] == -signal.SIGKILL
    failed = {name: code for name, code in search["returncodes"].items() if code != 0}
    assert failed == {}, search["logs"]["chief"][-3000:] + search["restarted_log"][-3000:]


def test_the_killed_trial_was_caught_mid_training(search):
    at_kill = search["at_kill"]
    assert at_kill["status"] == "RUNNING"
    assert [r["event"] for r in at_kill["runs"]] == ["start"]
    # Killed after at least one step and before the last of the trial's 4 steps ended it.
    assert at_kill["step"] >= 1


def test_every_trial_completed_exactly_once(search):
    tuner_dir = search["tuner_dir"]
    trial_ids = sorted(
        name.removeprefix("trial_") for name in os.listdir(tuner_dir) if name.startswith("trial_")
    )
    assert trial_ids == [str(i) for i in range(MAX_TRIALS)]
    with open(tuner_dir / "oracle.json") as f:
        oracle = json.load(f)
    # KerasTuner's own count of the ends of each trial, and no trial left running or queued.
    assert oracle["run_times"] == {trial_id: 1 for trial_id in trial_ids}
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    ran_on = set()
    for trial_id in trial_ids:
        assert trial_json(tuner_dir, trial_id)["status"] == "COMPLETED"
        runs = read_trial_runs(tuner_dir / f"trial_{trial_id}")
        ends = [r["tuner_id"] for r in runs if r["event"] == "end"]
        starts = [r["tuner_id"] for r in runs if r["event"] == "start"]
        assert len(ends) == 1, runs
        ran_on.add(ends[0])
        if trial_id == search["killed_trial"]:
            assert starts == [search["killed_tuner"]] * 2
            assert ends == [search["killed_tuner"]]
        else:
            assert starts == ends
        # One epoch trained once: one metrics line, and the step canary of the Trainer holds.
        model_dir = tuner_dir / f"trial_{trial_id}" / "model"
        assert [line["epoch"] for line in metric_lines(model_dir)] == [1]
        assert _checkpoint_step(model_dir) == 4
    # Both workers ran trials; the chief none.
    assert ran_on == {"tuner0", "tuner1"}


def test_the_restarted_worker_resumed_the_killed_trial_from_its_checkpoint(search):
    model_dir = search["tuner_dir"] / f"trial_{search['killed_trial']}" / "model"
    resumed = re.search(
        re.escape(str(model_dir / run_dir.CHECKPOINT_DIRNAME))
        + r"/ckpt-(\d+) at epoch (\d+), step (\d+)",
        search["restarted_log"],
    )
    assert resumed is not None, search["restarted_log"][-3000:]
    checkpoint, epoch, step = (int(group) for group in resumed.groups())
    # The checkpoint on disk at the kill, at its place in the 4-step epoch.
    assert checkpoint == search["at_kill"]["step"] >= 1
    assert checkpoint == (epoch - 1) * 4 + step
    assert "Resumed from" not in search["victim_log"]


def test_only_the_chief_writes_the_summary_which_names_the_best_trial(search):
    tuner_dir = search["tuner_dir"]
    with open(tuner_dir / BEST_FILENAME) as f:
        best = json.load(f)
    robust = {
        str(i): reported(trial_json(tuner_dir, str(i)), "val_robust_accuracy")
        for i in range(MAX_TRIALS)
    }
    assert best["objective"] == "val_robust_accuracy"
    # The earliest trial among those with the highest validation robust accuracy.
    assert best["trial_id"] == min(
        (t for t, v in robust.items() if v == max(robust.values())), key=int
    )
    assert best["objective_value"] == max(robust.values())
    summary = (tuner_dir / SUMMARY_FILENAME).read_text()
    marked = [line.split("|")[1].strip() for line in summary.splitlines() if "**best**" in line]
    assert marked == [best["trial_id"]]
    assert "**best**" in search["logs"]["chief"]
    for tuner_id in ("tuner0", "tuner1"):
        log = (
            search["restarted_log"]
            if tuner_id == search["killed_tuner"]
            else search["logs"][tuner_id]
        )
        assert "**best**" not in log
        assert f"Worker {tuner_id}: no trial left" in log
    # Each process keeps its own KerasTuner state file.
    assert {"chief.json", "tuner0.json", "tuner1.json"} <= set(os.listdir(tuner_dir))


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_TUNER_ID": "tuner0"},
            "KERASTUNER_ORACLE_PORT is not set",
        ),
        (
            {
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": "80x",
                "KERASTUNER_TUNER_ID": "tuner0",
            },
            "KERASTUNER_ORACLE_PORT='80x' must be a port",
        ),
    ],
)
def test_bad_environment_is_refused_by_name(environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        distributed_role(environ)


def test_roles():
    base = {"KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert distributed_role({}) is None
    assert distributed_role({**base, "KERASTUNER_TUNER_ID": "chief"}) == "chief"
    assert distributed_role({**base, "KERASTUNER_TUNER_ID": "tuner1"}) == "worker"


def test_multi_worker_trials_are_refused_in_a_distributed_search(tmp_path, cifar_bin_dir):
    search = tiny_search(tmp_path, cifar_bin_dir)
    search = dataclasses.replace(search, base=search.base.replace(strategy="multi_worker"))
    check_distributed(search, None)
    with pytest.raises(ValueError, match="strategy='multi_worker' cannot run the trials"):
        check_distributed(search, "worker")
    check_distributed(
        dataclasses.replace(search, base=search.base.replace(strategy="mirrored")), "worker"
    )
