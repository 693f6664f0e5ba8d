"""trainers.tune: a search and the retraining of its best values, and bad flags refused by name."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from run_support import reported, trial_json

from tfp_advbnn import run_dir
from tfp_advbnn.tuning.search_config import TUNED
from tfp_advbnn.tuning.summaries import BEST_FILENAME, SUMMARY_FILENAME
from tfp_advbnn.tuning.tuner import SEARCH_FILENAME


def _run_cli(args, timeout, **environ):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2", **environ)
    return subprocess.run(
        [sys.executable, "-m", "trainers.tune", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_searches_and_trains_the_best(tmp_path, cifar_bin_dir):
    tuner_dir = tmp_path / "search"
    result = _run_cli(
        [
            f"--data_dir={cifar_bin_dir}",
            f"--tuner_dir={tuner_dir}",
            "--model=vgg11",
            "--width_multiplier=0.0625",
            "--batch_size=16",
            "--max_train_examples=80",
            "--max_test_examples=16",
            "--validation_examples=16",
            "--train_pgd_steps=1",
            "--eval_pgd_steps=2",
            "--eval_num_samples=2",
            "--max_trials=1",
            "--epochs_per_trial=1",
            "--objective=combined",
            "--combined_weight=0.25",
            "--fix_alpha=0.1",
            "--sigma_0_min=0.02",
            "--sigma_0_max=0.04",
            "--train_best",
            "--epochs=1",
            "--export_num_samples=2",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tuner_dir / BEST_FILENAME) as f:
        best = json.load(f)
    assert best["trial_id"] == "0"
    assert best["objective"] == "val_combined"
    trial = trial_json(tuner_dir, "0")
    expected = 0.25 * reported(trial, "val_robust_accuracy") + 0.75 * reported(
        trial, "val_accuracy"
    )
    assert best["objective_value"] == pytest.approx(expected)
    assert best["hyperparameters"]["alpha"] == 0.1
    assert 0.02 <= best["hyperparameters"]["sigma_0"] <= 0.04
    assert (tuner_dir / SUMMARY_FILENAME).is_file()
    assert (tuner_dir / SEARCH_FILENAME).is_file()
    assert "**best**" in result.stdout
    # The best values retrained on the whole training set and exported.
    config = run_dir.read_config(str(tuner_dir / "best"))
    assert {name: config.get(name) for name in TUNED} == best["hyperparameters"]
    assert (config.data.validation_examples, config.optim.epochs) == (0, 1)
    assert (tuner_dir / "best" / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha_min=0.5", "--alpha_max=0.1"], "--alpha_min=0.5 must be > 0 and below alpha_max"),
        (["--alpha=0.1"], "--alpha is tuned by this search: fix it with --fix_alpha"),
        (["--fix_sigma_0=0.1", "--sigma_0_max=0.2"], "--fix_sigma_0 and --sigma_0_min"),
    ],
)
def test_cli_rejects_bad_flags_naming_them(tmp_path, args, message):
    result = _run_cli([f"--tuner_dir={tmp_path / 'search'}", *args], timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "search").exists()


def test_cli_rejects_an_incomplete_distributed_environment(tmp_path):
    result = _run_cli(
        [f"--tuner_dir={tmp_path / 'search'}"],
        timeout=120,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_TUNER_ID="tuner0",
    )
    assert result.returncode != 0
    assert "KERASTUNER_ORACLE_PORT is not set" in result.stderr
    assert not (tmp_path / "search").exists()
