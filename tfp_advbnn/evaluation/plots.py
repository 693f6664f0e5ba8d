"""Figures of evaluation reports: accuracy vs eps (paper Fig. 2), transfer heatmaps (Fig. 3),
accuracy vs ensemble size and vs attack steps (Fig. 4).

Figures are bare matplotlib ``Figure`` objects drawn with the Agg canvas, so plotting leaves
pyplot's global state alone; every PNG is written atomically through ``run_dir``.
"""

from __future__ import annotations

import numpy as np

from tfp_advbnn import attacks, run_dir
from tfp_advbnn.evaluation.detection import plot_detection
from tfp_advbnn.evaluation.protocols import MODES
from tfp_advbnn.evaluation.reports import attack_caption

# Error bars (in %) this far below 0 are float rounding of an interval edge, not an error.
ROUNDING_PERCENT = 1e-9


def _save_png(figure, path: str) -> str:
    """Saves a matplotlib figure as a PNG at ``path`` atomically; returns ``path``."""
    return run_dir.write_atomically(
        path,
        lambda staging: figure.savefig(staging, format="png", dpi=120, bbox_inches="tight"),
        suffix=".png",
    )


def _figure(width: float = 7.0, height: float = 4.5):
    # A bare Figure draws with the Agg canvas and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _curves_figure(curves, *, title: str, xlabel: str, log_x: bool = False):
    """One line per (label, xs, accuracies in [0, 1], intervals or None), accuracy in % on y.

    Intervals (``[low, high]`` per point, as reports hold them) are drawn as error bars.
    """
    figure = _figure()
    axes = figure.subplots()
    for label, xs, ys, intervals in curves:
        ys = np.array(ys, float) * 100.0
        errors = None
        if intervals is not None:
            bounds = np.array(intervals, float) * 100.0
            errors = np.stack([ys - bounds[:, 0], bounds[:, 1] - ys])
            # Reports written before wilson_interval held its point exactly can have an edge
            # 1e-15 % past it; only such rounding is set to 0, so a real interval error still
            # stops matplotlib (which refuses negative bars).
            errors[(errors < 0) & (errors > -ROUNDING_PERCENT)] = 0.0
        axes.errorbar(xs, ys, yerr=errors, marker="o", markersize=4, capsize=3, label=label)
    if log_x:
        # Log spacing for counts up to 1000, labelled with the counts actually evaluated.
        xs = sorted({x for _, values, _, _ in curves for x in values})
        axes.set_xscale("log")
        axes.minorticks_off()
        axes.set_xticks(xs, [f"{x:g}" for x in xs])
    axes.set_xlabel(xlabel)
    axes.set_ylabel("Test accuracy (%), 95 % Wilson intervals")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return figure


def _eps_label(norm: str) -> str:
    return "\u03b5 (L\u221e, [0, 1] pixel scale)" if norm == "linf" else "\u03b5 (L2 norm)"


def _sweep_curves(report: dict, robust_only: bool = False) -> list:
    """A sweep's robust accuracy (and, alone, its paper-count accuracy) as curves."""
    robust = (
        f"{report['label']} (robust)" if not robust_only else report["label"],
        report["eps"],
        report["robust_accuracy"],
        report.get("robust_accuracy_interval"),
    )
    if robust_only:
        return [robust]
    paper = (
        f"{report['label']} (paper's count)",
        report["eps"],
        report["accuracy"],
        report.get("accuracy_interval"),
    )
    return [paper, robust]


def _rows(report: dict, x_key: str) -> list:
    """One curve per eps of an ablation report: robust accuracy against ``x_key``."""
    intervals = report.get("robust_accuracy_interval") or [None] * len(report["eps"])
    return [
        (f"\u03b5 = {eps:g}", report[x_key], row, interval)
        for eps, row, interval in zip(
            report["eps"], report["robust_accuracy"], intervals, strict=True
        )
    ]


def plot_report(report: dict, path: str) -> str:
    """Draws the figure of any evaluation report as a PNG at ``path``; returns ``path``."""
    mode = report["mode"]
    if mode == "transfer":
        return _plot_transfer(report, path)
    if mode == "detect":
        return plot_detection(report, path)
    attack_text = attack_caption(report)
    if mode == "sweep":
        figure = _curves_figure(
            _sweep_curves(report),
            title=f"Accuracy vs \u03b5: {attack_text}, ensemble of {report['num_samples']}",
            xlabel=_eps_label(report["norm"]),
        )
    elif mode == "compare":
        figure = _curves_figure(
            [curve for m in report["models"] for curve in _sweep_curves(m, robust_only=True)],
            title=f"Robust accuracy vs \u03b5: {attack_text}, ensemble of {report['num_samples']}",
            xlabel=_eps_label(report["norm"]),
        )
    elif mode == "ensemble_sweep":
        figure = _curves_figure(
            _rows(report, "ensemble_sizes"),
            title=f"{report['label']}: robust accuracy vs ensemble size ({attack_text})",
            xlabel="Ensemble size n (weight draws averaged per prediction)",
            log_x=len(report["ensemble_sizes"]) > 1 and max(report["ensemble_sizes"]) >= 20,
        )
    elif mode == "steps_sweep":
        figure = _curves_figure(
            _rows(report, "steps"),
            title=(
                f"{report['label']}: robust accuracy vs attack steps "
                f"({attacks.get(report['attack']).display_name}, {_step_text(report)}, "
                f"ensemble of {report['num_samples']})"
            ),
            xlabel="Attack steps",
            log_x=len(report["steps"]) > 1 and max(report["steps"]) >= 100,
        )
    else:
        raise ValueError(f"unknown report mode {mode!r}; expected one of {MODES}")
    return _save_png(figure, path)


def _step_text(report: dict) -> str:
    fixed = report.get("fixed_step_size")
    return f"step {fixed:g}" if fixed else "step 2.5\u00b7\u03b5/steps"


def _plot_transfer(report: dict, path: str) -> str:
    """Per eps, two heatmaps: target accuracy and affinity, sources on rows, targets on columns."""
    from matplotlib import colormaps

    names = report["models"]
    num_eps = len(report["eps"])
    side = 1.6 + 0.9 * len(names)
    figure = _figure(2 * side + 2.0, side * num_eps + 0.6)
    grid = figure.subplots(num_eps, 2, squeeze=False)
    colormap = colormaps["viridis"].with_extremes(bad="lightgray")
    for e, eps in enumerate(report["eps"]):
        accuracy = np.array(report["accuracy"][e], float) * 100.0
        affinity = np.array(
            [[np.nan if v is None else v for v in row] for row in report["affinity"][e]], float
        )
        panels = [
            (grid[e][0], accuracy, 100.0, "Target accuracy (%)", "{:.1f}"),
            (grid[e][1], affinity, 1.0, "Affinity \u03c1 (eq. 17)", "{:.2f}"),
        ]
        for axes, values, top, what, fmt in panels:
            image = axes.imshow(
                np.ma.masked_invalid(values), cmap=colormap, vmin=0.0, vmax=top, aspect="equal"
            )
            for s in range(len(names)):
                for t in range(len(names)):
                    value = values[s, t]
                    if np.isnan(value):
                        text, color = "n/a", "black"
                    else:
                        # Dark text on the bright end of viridis, light text elsewhere.
                        text, color = fmt.format(value), "black" if value > 0.6 * top else "white"
                    axes.text(t, s, text, ha="center", va="center", color=color, fontsize=9)
            axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
            axes.set_yticks(range(len(names)), names)
            axes.set_xlabel("Target model (evaluated)")
            axes.set_ylabel("Source model (crafts the attack)")
            axes.set_title(f"{what}, \u03b5 = {eps:g}")
            figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(
        f"Transfer attack: {attack_caption(report)}, ensemble of {report['num_samples']}"
    )
    return _save_png(figure, path)
