"""Figures of reports: a sweep's curve is drawn; a report of no known mode is refused."""

import pytest
from eval_support import assert_png

from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.reports import wilson_interval

SWEEP = {
    "mode": "sweep",
    "label": "model",
    "attack": "pgd_linf",
    "norm": "linf",
    "pgd_steps": 20,
    "num_eot_samples": 1,
    "num_samples": 10,
    "eps": [0.0, 0.03],
    "accuracy": [0.9, 0.4],
    "accuracy_interval": [[0.85, 0.95], [0.3, 0.5]],
    "robust_accuracy": [0.9, 0.35],
    "robust_accuracy_interval": [[0.85, 0.95], [0.25, 0.45]],
}


def test_sweep_figure_is_a_png(tmp_path):
    path = tmp_path / "figures" / "sweep.png"
    assert plot_report(SWEEP, str(path)) == str(path)
    assert_png(path)


def test_a_sweep_at_zero_and_full_accuracy_is_drawn(tmp_path):
    # Reports of an attack that wins everywhere, with intervals as wilson_interval gives them
    # and one written before it held its point exactly (an edge 1e-17 past 0).
    report = {
        **SWEEP,
        "accuracy": [1.0, 0.0],
        "accuracy_interval": [wilson_interval(24, 24), [1e-17, 0.14]],
        "robust_accuracy": [1.0, 0.0],
        "robust_accuracy_interval": [wilson_interval(24, 24), wilson_interval(0, 24)],
    }
    path = tmp_path / "sweep.png"
    plot_report(report, str(path))
    assert_png(path)


def test_an_interval_that_misses_its_point_is_not_drawn(tmp_path):
    # Only rounding is forgiven: an interval 10 points away from its accuracy is a bug.
    report = {**SWEEP, "accuracy_interval": [[0.85, 0.95], [0.5, 0.6]]}
    with pytest.raises(ValueError, match="yerr"):
        plot_report(report, str(tmp_path / "x.png"))


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="histogram"):
        plot_report({**SWEEP, "mode": "histogram"}, str(tmp_path / "x.png"))
