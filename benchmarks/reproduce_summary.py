"""The summary stage of ``benchmarks/reproduce.py``: tables, figures and summary.json from reports.

Reads only the study's JSON reports, each model's ``metrics.jsonl`` and the step timings, and
writes ``summary.json`` (every number of the tables, with its interval), ``tables.md`` and the
figures (``fig_*.png``) to the results folder. Accuracies are fractions in the JSON and percent
in the tables; intervals are 95 % Wilson intervals of the evaluated images.
"""

from __future__ import annotations

import json
import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The paper's Table 1 (CIFAR-10, VGG16, L-inf PGD-20) and the re-evaluation with gradients
# averaged over draws (Zimmermann 2019), in percent at the radii of --eps_grid.
TABLE1_EPS = (0.0, 0.015, 0.035, 0.055, 0.07)
PUBLISHED_ROWS = {
    "paper: Adv. training": (80.3, 58.3, 31.1, 15.5, 10.3),
    "paper: Adv-BNN": (79.7, 68.7, 45.4, 26.9, 18.6),
    "re-evaluation (averaged gradient): Adv-BNN": (79.7, 64.2, 37.7, 16.3, 8.1),
}
EIGHT_OVER_255 = 8 / 255
TEST_IMAGES = 1017  # the subset's test split, on which trainers.main scores every epoch
SEED_PAIRS = {"Adv. training": ("adv", "adv_seed1"), "Adv-BNN": ("adv_bnn", "adv_bnn_seed1")}
Z95 = 1.959963984540054


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _last_metrics(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[-1] if lines else None


def _at(report: dict, key: str, eps: float):
    """``report[key]`` at the radius ``eps`` of ``report["eps"]`` (None if not evaluated)."""
    for i, e in enumerate(report["eps"]):
        if math.isclose(e, eps, abs_tol=1e-9):
            return report[key][i]
    return None


def _wilson(p: float, n: int) -> list[float]:
    """The 95 % Wilson interval of a proportion ``p`` of ``n`` (as the reports compute it)."""
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]


def _standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def _percent(p, interval=None) -> str:
    if p is None:
        return "-"
    if interval is None:
        return f"{100 * p:.1f}"
    return f"{100 * p:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _model_row(name, spec, reports_dir, work_dir, timings) -> dict:
    defense, seed, extra, label = spec
    model_dir = os.path.join(work_dir, name)
    saved = os.path.relpath(os.path.join(model_dir, "saved_model"), _repo())
    row = {
        "model": name,
        "label": label,
        "defense": defense,
        "seed": seed,
        "extra_flags": extra,
        "train_seconds": timings.get(saved),
        "final_train_metrics": _last_metrics(model_dir),
    }
    table1 = _load(os.path.join(reports_dir, f"table1_{name}.json"))
    if table1:
        row["table1"] = {
            key: table1[key]
            for key in (
                "num_examples",
                "eps",
                "clean_accuracy",
                "clean_accuracy_interval",
                "accuracy",
                "accuracy_interval",
                "robust_accuracy",
                "robust_accuracy_interval",
            )
        }
        row["table1"]["checks"] = {c["name"]: c["passed"] for c in table1["checks"]}
        row["table1"]["seconds"] = table1["seconds"]["total"]
    adaptive = _load(os.path.join(reports_dir, f"adaptive_{name}.json"))
    if adaptive:
        row["adaptive"] = {
            key: adaptive[key]
            for key in (
                "num_examples",
                "eps",
                "clean_accuracy",
                "clean_accuracy_interval",
                "robust_accuracy",
                "robust_accuracy_interval",
                "cascade",
            )
        }
        row["adaptive"]["after_each_attack"] = {
            a["description"]: a["robust_accuracy"] for a in adaptive["attacks"]
        }
        row["adaptive"]["square_checks"] = [
            {
                key: check[key]
                for key in (
                    "eps",
                    "passed",
                    "white_box_accuracy",
                    "square_accuracy",
                    "fraction_fooled_only_by_square",
                    "z",
                )
            }
            for check in adaptive["checks"]
            if check["name"] == "black_box_not_stronger" and check.get("applicable", True)
        ]
        row["adaptive"]["seconds"] = adaptive["seconds"]["total"]
    detect = _load(os.path.join(reports_dir, f"detect_{name}.json"))
    if detect:
        row["detect"] = {
            key: detect[key]
            for key in (
                "num_examples",
                "eps",
                "auc",
                "adversarial_accuracy",
                "adversarial_accuracy_interval",
                "clean_accuracy",
            )
        }
    return row


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seed_spread(rows: dict) -> list[dict]:
    """Per defense and radius: both seeds' adaptive robust accuracy, their gap, the noise."""
    spread = []
    for label, (first, second) in SEED_PAIRS.items():
        a, b = rows.get(first, {}).get("adaptive"), rows.get(second, {}).get("adaptive")
        if not (a and b):
            continue
        for eps in a["eps"]:
            if eps == 0:
                continue
            p, q = _at(a, "robust_accuracy", eps), _at(b, "robust_accuracy", eps)
            n = a["num_examples"]
            spread.append(
                {
                    "defense": label,
                    "eps": eps,
                    "seed_0": p,
                    "seed_1": q,
                    "gap": q - p,
                    "standard_error_each": [_standard_error(p, n), _standard_error(q, n)],
                    # Unpaired: the same images under both seeds make the true noise smaller.
                    "gap_noise_95": Z95
                    * math.sqrt(_standard_error(p, n) ** 2 + _standard_error(q, n) ** 2),
                }
            )
    return spread


def advantage(rows: dict) -> list[dict]:
    """Adv-BNN minus adversarial training, adaptive robust accuracy, both seeds pooled."""
    found = []
    for eps in (0.035, EIGHT_OVER_255):
        values = {}
        for label, names in SEED_PAIRS.items():
            reports = [rows.get(n, {}).get("adaptive") for n in names]
            reports = [r for r in reports if r]
            if not reports:
                break
            n = sum(r["num_examples"] for r in reports)
            values[label] = (
                sum(_at(r, "robust_accuracy", eps) * r["num_examples"] for r in reports) / n,
                n,
            )
        if len(values) < 2:
            continue
        (p, n_p), (q, n_q) = values["Adv-BNN"], values["Adv. training"]
        noise = Z95 * math.sqrt(_standard_error(p, n_p) ** 2 + _standard_error(q, n_q) ** 2)
        found.append(
            {
                "eps": eps,
                "adv_bnn": p,
                "adv": q,
                "difference": p - q,
                "interval_95": [p - q - noise, p - q + noise],
                "evaluations_pooled": {"adv_bnn": n_p, "adv": n_q},
            }
        )
    return found


def _table1_markdown(rows: dict) -> str:
    eps = TABLE1_EPS
    header = "| | " + " | ".join(f"{e:g}" for e in eps) + " |\n|---|" + "---:|" * len(eps)
    lines = [header]
    for label, values in PUBLISHED_ROWS.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    for key, name in (("accuracy", "accuracy"), ("robust_accuracy", "robust accuracy")):
        for row in rows.values():
            t = row.get("table1")
            if not t:
                continue
            cells = [_percent(_at(t, key, e), _at(t, key + "_interval", e)) for e in eps]
            lines.append(f"| ours, {name}: {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _square_cell(squares: dict, eps: float) -> str:
    check = squares.get(round(eps, 6))
    if check is None:
        return "not run"
    verdict = "passed" if check["passed"] else "FAILED"
    return (
        f"{verdict}: Square {100 * check['square_accuracy']:.0f} vs white-box "
        f"{100 * check['white_box_accuracy']:.0f} (z = {check['z']:.1f})"
    )


def _test_accuracy(metrics: dict) -> str:
    """The last epoch's test accuracy (all 1,017 test images) in percent, with its interval."""
    if "test_accuracy" not in metrics:
        return "-"
    p = metrics["test_accuracy"]
    return _percent(p, _wilson(p, TEST_IMAGES))


def _number(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.3f}" if key in metrics else "-"


def _adaptive_markdown(rows: dict) -> str:
    lines = [
        "| model | clean | paper protocol, 0.035 | adaptive, 0.035 | adaptive, 8/255 | "
        "Square check 0.035 | Square check 8/255 |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows.values():
        a = row.get("adaptive")
        if not a:
            continue
        t = row.get("table1", {})
        paper = (
            _percent(_at(t, "robust_accuracy", 0.035), _at(t, "robust_accuracy_interval", 0.035))
            if t
            else "-"
        )
        squares = {round(c["eps"], 6): c for c in a["square_checks"]}

        lines.append(
            f"| {row['label']} | "
            + _percent(a["clean_accuracy"], a["clean_accuracy_interval"])
            + f" | {paper} | "
            + " | ".join(
                _percent(_at(a, "robust_accuracy", e), _at(a, "robust_accuracy_interval", e))
                for e in (0.035, EIGHT_OVER_255)
            )
            + f" | {_square_cell(squares, 0.035)} | {_square_cell(squares, EIGHT_OVER_255)} |"
        )
    return "\n".join(lines) + "\n"


def _training_markdown(rows: dict) -> str:
    lines = [
        "| model | flags beyond the defaults | train s | test accuracy (last epoch, 1,017) | "
        "CE term | KL term |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        m = row["final_train_metrics"] or {}
        seconds = row["train_seconds"]

        lines.append(
            f"| {row['label']} | {' '.join(row['extra_flags']) or '-'} (seed {row['seed']}) | "
            f"{seconds:.0f} | {_test_accuracy(m)} | "
            f"{_number(m, 'train_cross_entropy')} | {_number(m, 'train_kl_term')} |"
            if seconds is not None
            else f"| {row['label']} | not trained | - | - | - | - |"
        )
    return "\n".join(lines) + "\n"


def _seed_markdown(spread: list[dict]) -> str:
    lines = [
        "| defense | eps | seed 0 | seed 1 | gap | 95 % noise of a gap | sampling SE (each) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in spread:
        lines.append(
            f"| {s['defense']} | {s['eps']:.4f} | {100 * s['seed_0']:.1f} | "
            f"{100 * s['seed_1']:.1f} | {100 * s['gap']:+.1f} | +-{100 * s['gap_noise_95']:.1f} "
            f"| {100 * s['standard_error_each'][0]:.1f}, {100 * s['standard_error_each'][1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _detect_markdown(rows: dict) -> str:
    lines = [
        "| model | eps | PGD-20 accuracy | AUC, predictive entropy | AUC, mutual information |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        d = row.get("detect")
        if not d:
            continue
        for i, eps in enumerate(d["eps"]):
            accuracy = _percent(d["adversarial_accuracy"][i], d["adversarial_accuracy_interval"][i])
            lines.append(
                f"| {row['label']} | {eps:.4f} | {accuracy} | "
                f"{d['auc']['entropy'][i]:.3f} | {d['auc']['mutual_information'][i]:.3f} |"
            )
    return "\n".join(lines) + "\n"


def _error_bars(value, interval):
    return [[100 * (value - interval[0])], [100 * (interval[1] - value)]]


def _bars(path, title, groups, series, ylabel="Robust accuracy (%)"):
    """Grouped bars with 95 % interval whiskers.

    ``groups``: x labels; ``series``: (legend, [(value, interval) or None per group]).
    """
    figure, axes = plt.subplots(figsize=(max(7.5, 0.7 * len(groups) * len(series)), 4.5))
    width = 0.8 / max(len(series), 1)
    for s, (legend, values) in enumerate(series):
        for g, cell in enumerate(values):
            if cell is None:
                continue
            value, interval = cell
            axes.bar(
                g + (s - (len(series) - 1) / 2) * width,
                100 * value,
                width,
                yerr=_error_bars(value, interval),
                capsize=3,
                color=f"C{s}",
                label=legend if g == min(i for i, c in enumerate(values) if c) else None,
            )
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, rotation=15, ha="right")
    axes.set_ylabel(ylabel)
    axes.set_title(textwrap.fill(title, 70), fontsize=10)
    axes.set_xlim(-0.6, len(groups) - 0.4)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _figures(rows: dict, results_dir: str) -> list[str]:
    written = []

    def path(name):
        written.append(os.path.join(results_dir, name))
        return written[-1]

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for i, row in enumerate(r for r in rows.values() if r["seed"] == 0 and not r["extra_flags"]):
        t = row.get("table1")
        if not t:
            continue
        eps = t["eps"]
        values = [100 * v for v in t["robust_accuracy"]]
        low = [
            100 * (v - lo)
            for v, (lo, _) in zip(t["robust_accuracy"], t["robust_accuracy_interval"], strict=True)
        ]
        high = [
            100 * (hi - v)
            for v, (_, hi) in zip(t["robust_accuracy"], t["robust_accuracy_interval"], strict=True)
        ]
        axes.errorbar(
            eps,
            values,
            yerr=[low, high],
            marker="o",
            capsize=3,
            label=f"ours: {row['label']}",
            color=f"C{i}",
        )
    for j, (label, values) in enumerate(PUBLISHED_ROWS.items()):
        axes.plot(TABLE1_EPS, values, linestyle="--", marker="x", color=f"C{5 + j}", label=label)
    axes.set_xlabel("L\u221e radius \u03b5 ([0, 1] pixel scale)")
    axes.set_ylabel("Accuracy (%)")
    axes.set_title(
        textwrap.fill(
            "Table 1: PGD-20, one weight draw per step, 10-draw ensemble, all 1,017 test images "
            "(ours: robust accuracy, 95 % intervals; dashed: published)",
            70,
        ),
        fontsize=10,
    )
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path("fig_table1.png"), dpi=120)
    plt.close(figure)

    robust = [r for r in rows.values() if r.get("adaptive")]
    if robust:

        def cell(report, key, eps):
            if not report:
                return None
            value = _at(report, key, eps)
            return None if value is None else (value, _at(report, key + "_interval", eps))

        _bars(
            path("fig_adaptive.png"),
            "Robust accuracy: paper protocol vs adaptive (APGD-CE + APGD-DLR, EOT 20)",
            [r["label"] for r in robust],
            [
                (
                    "paper protocol, 0.035",
                    [cell(r.get("table1"), "robust_accuracy", 0.035) for r in robust],
                ),
                (
                    "adaptive, 0.035",
                    [cell(r["adaptive"], "robust_accuracy", 0.035) for r in robust],
                ),
                (
                    "adaptive, 8/255",
                    [cell(r["adaptive"], "robust_accuracy", EIGHT_OVER_255) for r in robust],
                ),
            ],
        )

        def named(names):
            return [rows[n] for n in names if n in rows and rows[n].get("adaptive")]

        for file, title, names in (
            (
                "fig_seeds.png",
                "Seed-to-seed spread (adaptive protocol)",
                ["adv", "adv_seed1", "adv_bnn", "adv_bnn_seed1"],
            ),
            (
                "fig_kl_ablation.png",
                "KL ablation: all-layer KL vs the reference's classifier-only KL",
                ["adv_bnn", "adv_bnn_classifier_kl"],
            ),
            (
                "fig_fast_training.png",
                "Fast training: PGD-10 vs single-step (FGSM-RS) Adv-BNN",
                ["adv_bnn", "adv_bnn_fgsm_rs"],
            ),
        ):
            chosen = named(names)
            if len(chosen) < 2:
                continue
            _bars(
                path(file),
                title,
                [r["label"] for r in chosen],
                [
                    (
                        "clean",
                        [
                            (
                                r["adaptive"]["clean_accuracy"],
                                r["adaptive"]["clean_accuracy_interval"],
                            )
                            for r in chosen
                        ],
                    ),
                    (
                        "adaptive, 0.035",
                        [cell(r["adaptive"], "robust_accuracy", 0.035) for r in chosen],
                    ),
                    (
                        "adaptive, 8/255",
                        [cell(r["adaptive"], "robust_accuracy", EIGHT_OVER_255) for r in chosen],
                    ),
                ],
                ylabel="Accuracy (%)",
            )

    detected = [r for r in rows.values() if r.get("detect")]
    if detected:
        figure, axes = plt.subplots(figsize=(7, 4))
        width = 0.8 / (2 * len(detected[0]["detect"]["eps"]))
        k = 0
        for score, name in (
            ("entropy", "predictive entropy"),
            ("mutual_information", "mutual information"),
        ):
            for i, eps in enumerate(detected[0]["detect"]["eps"]):
                axes.bar(
                    [g + (k - 1.5) * width for g in range(len(detected))],
                    [r["detect"]["auc"][score][i] for r in detected],
                    width,
                    label=f"{name}, \u03b5 = {eps:.4f}",
                    color=f"C{k}",
                )
                k += 1
        axes.axhline(0.5, color="gray", linestyle=":", label="chance")
        axes.set_xticks(range(len(detected)))
        axes.set_xticklabels([r["label"] for r in detected])
        axes.set_ylabel("ROC AUC, clean vs PGD-20 images")
        axes.set_ylim(0.3, 1.0)
        axes.set_title(
            "Detecting PGD-20 images by the ensemble's uncertainty (ROC AUC)", fontsize=10
        )
        axes.legend(fontsize=7)
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(path("fig_detection.png"), dpi=120)
        plt.close(figure)
    return written


def write(*, reports_dir, results_dir, work_dir, timings, models, settings) -> dict:
    """Writes summary.json, tables.md and the figures; returns the summary."""
    rows = {
        name: _model_row(name, spec, reports_dir, work_dir, timings)
        for name, spec in models.items()
    }
    spread = seed_spread(rows)
    edge = advantage(rows)
    figures = _figures(rows, results_dir)
    summary = {
        "settings": settings,
        "rows": rows,
        "seed_spread": spread,
        "adv_bnn_minus_adv": edge,
        "figures": [os.path.basename(f) for f in figures],
        "stage_seconds": timings,
    }
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    edge_lines = [
        "| eps | Adv-BNN | Adv. training | difference | 95 % interval |",
        "|---:|---:|---:|---:|---|",
    ] + [
        f"| {e['eps']:.4f} | {100 * e['adv_bnn']:.1f} | {100 * e['adv']:.1f} | "
        f"{100 * e['difference']:+.1f} | [{100 * e['interval_95'][0]:+.1f}, "
        f"{100 * e['interval_95'][1]:+.1f}] |"
        for e in edge
    ]
    text = "\n".join(
        [
            "## Training",
            _training_markdown(rows),
            "## Table 1 (paper protocol, every test image)",
            _table1_markdown(rows),
            "## Adaptive protocol",
            _adaptive_markdown(rows),
            "## Seeds",
            _seed_markdown(spread),
            "## Adv-BNN minus adversarial training (adaptive, seeds pooled)",
            "\n".join(edge_lines) + "\n",
            "## Detection",
            _detect_markdown(rows),
        ]
    )
    with open(os.path.join(results_dir, "tables.md"), "w") as f:
        f.write(text)
    print(text)
    return summary
