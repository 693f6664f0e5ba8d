"""Sweeps of one model: accuracy vs eps with its checks, and the Fig. 4 ablations."""

import itertools
import json

import numpy as np
import pytest
import tensorflow as tf
from eval_support import CHECK_NAMES, assert_png, eval_config, tiny_fn

from tfp_advbnn.evaluation.checks import UNBOUNDED_MAX_ACCURACY
from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.reports import write_json
from tfp_advbnn.evaluation.sweeps import ensemble_sweep, steps_sweep, sweep

pytest_plugins = ["eval_support"]


def test_sweep_on_a_trained_model(trained, fit_set):
    images, labels = fit_set
    report = sweep(trained.model_fn, images, labels, eval_config(), label="plain")
    logits = trained.model_fn(tf.constant(images)).numpy()
    independent_clean = float(np.mean(logits.argmax(axis=1) == labels))
    assert independent_clean > 0.15  # above chance: the run has learned something
    assert report["clean_accuracy"] == pytest.approx(independent_clean)
    # eps = 0 leaves every image as it is.
    assert report["accuracy"][0] == pytest.approx(independent_clean)
    assert report["mean_distortion"][0] == 0.0
    for eps, distortion in zip(report["eps"][1:], report["mean_distortion"][1:], strict=True):
        assert 0.9 * eps <= distortion <= eps + 1e-6
    accuracy = report["accuracy"]
    assert all(b <= a + 1.0 / len(images) for a, b in itertools.pairwise(accuracy))
    assert accuracy[-1] < accuracy[0]
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    by_name = {c["name"]: c for c in report["checks"]}
    for check in report["checks"]:
        assert isinstance(check["passed"], bool) and check["message"]
    assert by_name["unbounded_attack"]["passed"]
    assert by_name["unbounded_attack"]["accuracy"] <= UNBOUNDED_MAX_ACCURACY
    assert by_name["nonzero_gradient"]["passed"]
    assert by_name["accuracy_monotonic_in_eps"]["passed"]
    assert by_name["eot_at_least_single_draw"]["applicable"] is False
    assert report["stochastic"] is False
    json.dumps(report, allow_nan=False)


def test_ensemble_sweep_writes_json_and_png(tmp_path, fit_set):
    images, labels = fit_set
    report = ensemble_sweep(
        tiny_fn("bnn"), images[:16], labels[:16], eval_config(attack_steps=3), [0.0, 0.02], [1, 3]
    )
    assert np.array(report["accuracy"]).shape == (2, 2)
    assert len(report["clean_accuracy"]) == 2
    write_json(report, str(tmp_path / "ensemble.json"))
    plot_report(report, str(tmp_path / "ensemble.png"))
    assert json.loads((tmp_path / "ensemble.json").read_text())["ensemble_sizes"] == [1, 3]
    assert_png(tmp_path / "ensemble.png")


def test_steps_sweep_writes_json_and_png(tmp_path, trained, fit_set):
    images, labels = fit_set
    report = steps_sweep(trained.model_fn, images, labels, eval_config(), [0.01, 0.03], [1, 4])
    accuracy = np.array(report["accuracy"])
    assert accuracy.shape == (2, 2)
    assert np.all((0 <= accuracy) & (accuracy <= 1))
    write_json(report, str(tmp_path / "steps.json"))
    plot_report(report, str(tmp_path / "steps.png"))
    assert json.loads((tmp_path / "steps.json").read_text())["steps"] == [1, 4]
    assert_png(tmp_path / "steps.png")
    with pytest.raises(ValueError, match="iterative"):
        steps_sweep(trained.model_fn, images, labels, eval_config(attack="fgsm"), [0.01], [1])
