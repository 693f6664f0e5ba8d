"""Runs from their model_dirs: loading, the request's checks, and trainers.evaluate end to end."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from eval_support import CHECK_NAMES, assert_png
from run_support import tree_digest

from tfp_advbnn.evaluation import runner

# run_support: the finished_run fixture shared with the training tests.
pytest_plugins = ["eval_support", "run_support"]

REPORT_KEYS = {
    "model_dir",
    "defense",
    "attack",
    "num_examples",
    "pgd_steps",
    "num_samples",
    "num_eot_samples",
    "clean_accuracy",
    "eps",
    "accuracy",
    "mean_distortion",
    "checks",
}


def test_load_model_falls_back_to_the_saved_model(tmp_path, trained_dir, trained, fit_set):
    copy = tmp_path / "no_checkpoint"
    shutil.copytree(trained_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    loaded = runner.load_model(str(copy))
    assert (loaded.source, trained.source) == ("saved_model", "checkpoint")
    images = tf.constant(fit_set[0][:8])
    np.testing.assert_allclose(
        loaded.model_fn(images).numpy(), trained.model_fn(images).numpy(), rtol=1e-4, atol=1e-5
    )
    shutil.rmtree(copy / "saved_model")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        runner.load_model(str(copy))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"mode": "transfer"}, "model_dirs"),
        ({"model_dirs": ("/no/such/run",)}, "model_dirs"),
        ({"plot": "figure.pdf"}, "plot"),
        ({"output": ""}, "output"),
        ({"sweep_eps": (2.0,)}, "sweep_eps"),
        ({"sweep_sizes": (0,)}, "sweep_sizes"),
    ],
)
def test_request_rejects_bad_settings_naming_the_field(trained_dir, changes, field):
    values = {"mode": "sweep", "model_dirs": (str(trained_dir),), **changes}
    with pytest.raises(ValueError, match=f"^{field}"):
        runner.Request(**values)


def test_default_output_is_beside_the_runs():
    assert runner.default_output("sweep", "apgd", ["runs/a"]) == "runs/a/evaluation/sweep_apgd.json"
    several = runner.default_output("compare", "pgd_linf", ["/r/a", "/r/b"])
    assert several == "/r/evaluation/compare_pgd_linf.json"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_sweep_with_apgd_writes_report_and_plot(tmp_path, trained_dir):
    output = tmp_path / "report.json"
    result = _cli(
        f"--model_dir={trained_dir}",
        "--attack=apgd",
        "--eps_grid=0,0.01,0.03",
        "--pgd_steps=5",
        "--num_samples=2",
        "--max_examples=24",
        "--batch_size=12",
        "--check_examples=12",
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["attack"] == "apgd" and report["defense"] == "plain"
    assert report["model_dir"] == str(trained_dir) and report["num_examples"] == 24
    assert report["eps"] == [0.0, 0.01, 0.03] and len(report["accuracy"]) == 3
    # APGD is compared with PGD as well.
    assert [c["name"] for c in report["checks"]] == [*CHECK_NAMES, "not_weaker_than_pgd"]
    assert report["model_source"] == "checkpoint"
    assert_png(tmp_path / "report.png")


def test_cli_transfer_with_a_saved_model_only_run(tmp_path, trained_dir):
    other = tmp_path / "exported_only"
    shutil.copytree(trained_dir, other, ignore=shutil.ignore_patterns("checkpoints"))
    output = tmp_path / "transfer.json"
    plot = tmp_path / "heatmap.png"
    result = _cli(
        "--mode=transfer",
        f"--model_dirs={trained_dir},{other}",
        "--sweep_eps=0.03",
        "--pgd_steps=3",
        "--num_samples=1",
        "--max_examples=16",
        f"--output={output}",
        f"--plot={plot}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert np.array(report["affinity"]).shape == (1, 2, 2)
    # The two runs are the same network, so the attacks transfer exactly.
    np.testing.assert_allclose(
        np.array(report["accuracy"])[0], report["accuracy"][0][0][0], atol=1 / 16 + 1e-9
    )
    assert_png(plot)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--num_samples=0"], "--num_samples"),
        (["--eps_grid=0,abc"], "--eps_grid"),
        (["--mode=transfer"], "--model_dirs"),
    ],
)
def test_cli_rejects_bad_flags_naming_them(trained_dir, args, flag):
    model_dir = [] if "--mode=transfer" in args else [f"--model_dir={trained_dir}"]
    result = _cli(*model_dir, *args)
    assert result.returncode != 0
    assert flag in result.stderr


def test_cli_names_pgd_steps_for_the_attack_steps_field(trained_dir):
    result = _cli(f"--model_dir={trained_dir}", "--pgd_steps=0")
    assert result.returncode != 0
    assert "--pgd_steps must be an integer >= 1, got 0" in result.stderr


@pytest.mark.parametrize("args, named", [(["--eps_grid=0,x"], "--eps_grid")])
def test_cli_bad_flags_fail_naming_the_flag_and_leave_the_run_alone(
    tmp_path, finished_run, args, named
):
    source, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    before = tree_digest(model_dir)
    result = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", f"--model_dir={model_dir}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert tree_digest(model_dir) == before


def test_evaluate_cli_attacks_with_pgd_20_by_default():
    result = subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", "--helpfull"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    help_text = " ".join(result.stdout.split())
    assert re.search(r"--pgd_steps:[^-]*default 20 \(adaptive: 100\)", help_text), help_text[-2000:]


def test_cli_detect_writes_aucs_and_a_plot(tmp_path, trained_dir):
    output = tmp_path / "detect.json"
    result = _cli(
        "--mode=detect",
        f"--model_dir={trained_dir}",
        "--sweep_eps=0.03,0.01",
        "--pgd_steps=3",
        "--num_samples=2",
        "--max_examples=16",
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["mode"] == "detect" and report["defense"] == "plain"
    assert report["eps"] == [0.01, 0.03] and report["num_examples"] == 16
    # A deterministic network has no epistemic part: every score is 0, so every AUC is chance.
    assert report["auc"]["mutual_information"] == [0.5, 0.5]
    assert all(0.0 <= auc <= 1.0 for auc in report["auc"]["entropy"])
    assert "AUC entropy" in result.stdout
    assert_png(tmp_path / "detect.png")
