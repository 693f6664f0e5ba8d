"""Evaluation under ``--strategy=mirrored`` and ``multi_worker`` (evaluation/engine.py,
runner.py): each batch split across two logical CPUs, or two worker processes, gives the report
of one device, on uneven splits too."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from conftest import REPO_ROOT
from eval_support import eval_config
from run_support import free_ports

from tfp_advbnn import training
from tfp_advbnn.evaluation import engine, protocols, runner

pytest_plugins = ["eval_support"]


def test_split_batches_give_the_outcomes_of_one_device(fit_set, trained):
    """The tiny plain run, PGD from the clean point, 7-image batches (split
    3 + 4): the adversarial images and every outcome equal one device's."""
    images, labels = fit_set[0][:20], fit_set[1][:20]
    model_fn = trained.model_fn
    spec = protocols.AttackSpec.of(eval_config(), stochastic=False, attack="pgd_linf")
    results = {}
    for name in ("default", "mirrored"):
        strategy = training.build_strategy(name)
        with strategy.scope():
            evaluator = engine.Evaluator(model_fn, images, stochastic=False)
            assert evaluator.strategy.num_replicas_in_sync == (2 if name == "mirrored" else 1)
            outcomes = engine.attack_outcomes(
                evaluator,
                [engine.Target(evaluator, 1)],
                images,
                labels,
                spec,
                [0.0, 0.01, 0.03],
                restarts=0,
                batch_size=7,
                seed=0,
                progress=False,
            )
            craft = evaluator.craft(spec, random_start=False)
            x_adv = craft(
                tf.constant(images[:7]),
                tf.constant(labels[:7]),
                tf.constant(0.03),
                tf.constant(0.0075),
                tf.constant([0, 0], tf.int64),
            )
        results[name] = outcomes, x_adv.numpy()
    (single, single_adv), (mirrored, mirrored_adv) = results["default"], results["mirrored"]
    assert mirrored_adv.shape == single_adv.shape == images[:7].shape
    np.testing.assert_allclose(mirrored_adv, single_adv, atol=1e-6)
    # The attack moved the images (else the comparison would say little), the same way on both.
    assert np.abs(single_adv - images[:7]).max() > 0.02
    np.testing.assert_array_equal(mirrored.correct, single.correct)
    np.testing.assert_array_equal(mirrored.robust, single.robust)
    np.testing.assert_allclose(mirrored.distortion, single.distortion, atol=1e-6)


def test_runner_on_mirrored_writes_the_report_of_one_device(tmp_path, trained_dir):
    reports = {}
    for name in ("default", "mirrored"):
        request = runner.Request(
            "sweep",
            (str(trained_dir),),
            output=str(tmp_path / f"{name}.json"),
            with_checks=False,
            strategy=name,
        )
        config = eval_config(attack_steps=4, max_examples=21, batch_size=9)
        runner.run(request, config)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    keys = ("num_examples", "clean_accuracy", "accuracy", "robust_accuracy", "mean_distortion")
    for key in keys:
        np.testing.assert_allclose(reports["mirrored"][key], reports["default"][key], atol=1e-6)
    assert reports["default"]["num_examples"] == 21


def test_two_workers_write_the_report_of_one_device(tmp_path, trained_dir):
    """Two ``trainers.evaluate --strategy=multi_worker`` processes on loopback: the chief
    writes the report of a default-strategy run, the other worker writes nothing."""
    common = [
        "--mode=sweep",
        f"--model_dir={trained_dir}",
        "--eps_grid=0,0.01,0.03",
        "--pgd_steps=3",
        "--max_examples=13",
        "--batch_size=5",
        "--nochecks",
    ]
    single = tmp_path / "single.json"
    result = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", *common, f"--output={single}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        )
        output = tmp_path / f"worker{index}.json"
        command = [sys.executable, "-m", "trainers.evaluate", *common, f"--output={output}"]
        workers.append(
            subprocess.Popen(
                [*command, "--strategy=multi_worker"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert not (tmp_path / "worker1.json").exists()
    chief, one_device = (json.loads(p.read_text()) for p in (tmp_path / "worker0.json", single))
    for key in ("num_examples", "clean_accuracy", "accuracy", "robust_accuracy"):
        np.testing.assert_allclose(chief[key], one_device[key], atol=1e-6, err_msg=key)
