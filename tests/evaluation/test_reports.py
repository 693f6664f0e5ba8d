"""Reports: the settings block, the attack caption, the Markdown table, JSON, console text, and
atomic writes of a report and its figure."""

import json
import os

import pytest

from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.reports import (
    attack_caption,
    markdown_table,
    report_settings,
    summary,
    write_json,
)


def test_settings_and_caption_name_the_attack():
    config = EvalConfig(attack_steps=7, num_eot_samples=10, random_restarts=2)
    settings = report_settings(config)
    assert settings["pgd_steps"] == 7 and settings["norm"] == "linf"
    assert attack_caption(settings) == "PGD (L\u221e), 7 steps, EOT 10, 2 random restarts"
    fgsm = report_settings(EvalConfig(attack="fgsm", random_restarts=1))
    assert attack_caption(fgsm) == "FGSM, 1 random restart"


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
        "clean_accuracy": 0.5,
        "eps": [0.0],
        "accuracy": [0.5],
        "mean_distortion": [0.0],
        "checks": [{"name": "unbounded_attack", "passed": False, "message": "why"}],
        "stochastic": True,
        "num_eot_samples": 1,
    }
    lines = summary(report).splitlines()
    assert lines[0] == "BNN: clean accuracy 0.5000"
    assert lines[3] == "  check unbounded_attack: FAIL: why"
    assert "--num_eot_samples=10" in lines[4]
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
