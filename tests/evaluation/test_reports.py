"""Reports: the settings block, the attack caption, the Markdown table, JSON, console text, and
atomic writes of a report and its figure."""

import json
import os

import numpy as np
import pytest

from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.reports import (
    attack_caption,
    markdown_table,
    plan_notes,
    rates,
    report_settings,
    summary,
    wilson_interval,
    write_json,
)


def test_settings_and_caption_name_the_attack():
    config = EvalConfig(attack_steps=7, num_eot_samples=10, random_restarts=2)
    settings = report_settings(config)
    assert settings["pgd_steps"] == 7 and settings["norm"] == "linf"
    assert attack_caption(settings) == "PGD (L\u221e), 7 steps, EOT 10, 2 random restarts"
    fgsm = report_settings(EvalConfig(attack="fgsm", random_restarts=1))
    assert attack_caption(fgsm) == "FGSM, 1 random restart"


def test_adaptive_caption_names_both_attacks_their_eot_and_the_worst_case():
    caption = attack_caption(report_settings(EvalConfig(protocol="adaptive")))
    assert caption == (
        "APGD-CE (L\u221e), 100 steps, EOT 20 on stochastic models + "
        "APGD-DLR (L\u221e), 100 steps, EOT 20 on stochastic models, worst case per example"
    )
    # PGD of the paper protocol keeps its single draw; APGD defaults to 20 on stochastic models.
    assert attack_caption(report_settings(EvalConfig())) == "PGD (L\u221e), 20 steps"
    apgd = attack_caption(report_settings(EvalConfig(attack="apgd")))
    assert apgd.endswith("EOT 20 on stochastic models")


@pytest.mark.parametrize("successes, trials", [(0, 10), (3, 10), (10, 10), (45, 200), (1, 1017)])
def test_wilson_interval_matches_scipy(successes, trials):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = scipy_stats.binomtest(successes, trials).proportion_ci(method="wilson")
    low, high = wilson_interval(successes, trials)
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


@pytest.mark.parametrize("trials", [1, 10, 24, 100, 500, 1017])
def test_wilson_interval_holds_its_point_estimate_exactly(trials):
    # Float rounding once put the bound at 0 successes at +1e-17, outside the 0 it bounds,
    # which made matplotlib refuse the error bar of a report at 0 % robust accuracy.
    for successes in range(trials + 1):
        low, high = wilson_interval(successes, trials)
        assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert wilson_interval(0, trials)[0] == 0.0 and wilson_interval(trials, trials)[1] == 1.0


def test_rates_reduce_the_example_axis_of_any_shape():
    correct = np.array([[[1, 1, 0, 0], [1, 1, 1, 1]], [[0, 0, 0, 0], [1, 0, 0, 0]]], bool)
    accuracy, intervals = rates(correct)
    assert accuracy == [[0.5, 1.0], [0.0, 0.25]]
    assert intervals[0][1] == wilson_interval(4, 4) and intervals[1][1] == wilson_interval(1, 4)
    single, interval = rates(correct[0, 0])
    assert single == 0.5 and interval == wilson_interval(2, 4)


def test_markdown_table_rows_are_percentages():
    table = markdown_table(["A", "B"], [0.0, 0.03], [[0.5, 0.25], [1.0, 0.0]], caption="Cap.")
    assert table.splitlines() == [
        "Cap.",
        "",
        "| Model | 0 | 0.03 |",
        "|---|---:|---:|",
        "| A | 50.0 | 25.0 |",
        "| B | 100.0 | 0.0 |",
    ]


def test_write_json_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "out" / "report.json"
    write_json({"accuracy": [float("nan"), 0.5], "z": float("inf")}, str(path))
    assert json.loads(path.read_text()) == {"accuracy": [None, 0.5], "z": None}


def test_summary_of_a_stochastic_sweep_suggests_eot():
    report = {
        "mode": "sweep",
        "label": "BNN",
        "attack": "pgd_linf",
        "pgd_steps": 20,
        "clean_accuracy": 0.5,
        "clean_accuracy_interval": [0.25, 0.75],
        "eps": [0.0],
        "accuracy": [0.5],
        "accuracy_interval": [[0.25, 0.75]],
        "robust_accuracy": [0.5],
        "robust_accuracy_interval": [[0.25, 0.75]],
        "mean_distortion": [0.0],
        "attacks": [{"attack": "pgd_linf", "num_eot_samples": 1}],
        "checks": [{"name": "unbounded_attack", "passed": False, "message": "why"}],
        "notes": plan_notes([{"attack": "pgd_linf", "num_eot_samples": 1}], stochastic=True),
        "stochastic": True,
        "num_eot_samples": 1,
    }
    lines = summary(report).splitlines()
    assert lines[0] == "BNN: clean accuracy 50.0 (25.0\u201375.0) %"
    assert lines[1].startswith("  PGD (L\u221e), 20 steps;")
    assert lines[4] == "  check unbounded_attack: FAIL: why"
    assert "--protocol=adaptive" in lines[5]
    assert plan_notes([{"attack": "pgd_linf", "num_eot_samples": 1}], stochastic=False) == []
    apgd_notes = plan_notes([{"attack": "apgd", "num_eot_samples": 1}], stochastic=True)
    assert "driven by noise" in apgd_notes[1]
    assert summary({"mode": "transfer"}) is None


def test_a_report_that_cannot_be_written_keeps_the_old_report_and_plot(tmp_path, monkeypatch):
    report = {
        "mode": "sweep",
        "label": "model",
        "attack": "pgd_linf",
        "norm": "linf",
        "pgd_steps": 20,
        "num_eot_samples": 1,
        "num_samples": 10,
        "eps": [0.0, 0.03],
        "accuracy": [0.9, 0.4],
        "robust_accuracy": [0.9, 0.4],
    }
    json_path, png_path = tmp_path / "report.json", tmp_path / "report.png"
    write_json(report, str(json_path))
    plot_report(report, str(png_path))
    old_json, old_png = json_path.read_bytes(), png_path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_json({**report, "accuracy": [0.8, 0.3]}, str(json_path))

    def failing_savefig(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_report({**report, "accuracy": [0.8, 0.3]}, str(png_path))
    assert json_path.read_bytes() == old_json
    assert png_path.read_bytes() == old_png
    assert sorted(os.listdir(tmp_path)) == ["report.json", "report.png"]
