"""What an evaluation report says: its settings block, its caption, Markdown, JSON and console text.

Reports are plain dicts ready for JSON; every mode's report starts from ``report_settings``.
Readers of earlier reports rely on the key ``pgd_steps``, so it keeps that name although it
holds ``EvalConfig.attack_steps`` (the steps of every iterative attack, not only PGD).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from tfp_advbnn import attacks, run_dir
from tfp_advbnn.config import EvalConfig


def report_settings(config: EvalConfig) -> dict:
    """The attack settings every report carries."""
    return {
        "attack": config.attack,
        "norm": config.norm,
        "pgd_steps": config.attack_steps,
        "pgd_step_size": config.pgd_step_size,
        "random_restarts": config.random_restarts,
        "num_eot_samples": config.num_eot_samples,
        "num_samples": config.num_samples,
        "seed": config.seed,
    }


def attack_caption(settings: Mapping) -> str:
    """The attack of a report in words, e.g. "PGD (L∞), 20 steps, EOT 10, 2 random restarts".

    Args:
      settings: a report, or ``report_settings(config)`` (``random_restarts`` may be missing).
    """
    return attacks.get(settings["attack"]).describe(
        num_steps=settings["pgd_steps"],
        num_eot_samples=settings["num_eot_samples"],
        random_restarts=settings.get("random_restarts", 0),
    )


def markdown_table(labels: Sequence[str], eps: Sequence[float], accuracy, *, caption: str) -> str:
    """A Markdown table like the paper's Table 1: a row per model, accuracy (%) per eps."""
    lines = [caption, "", "| Model | " + " | ".join(f"{e:g}" for e in eps) + " |"]
    lines.append("|---|" + "---:|" * len(eps))
    for label, row in zip(labels, accuracy, strict=True):
        lines.append(f"| {label} | " + " | ".join(f"{100 * a:.1f}" for a in row) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(value):
    """NaN and infinities become None (JSON has no such numbers); numpy values become Python."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, path: str) -> str:
    """Writes ``report`` as indented JSON to ``path`` atomically; returns ``path``."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"
    return run_dir.write_text_atomically(path, text)


def sweep_summary(report: dict) -> str:
    """A sweep report as console text: accuracy and distortion per eps, then the checks."""
    lines = [
        f"{report['label']}: clean accuracy {report['clean_accuracy']:.4f}",
        "      eps  accuracy  mean_distortion",
    ]
    for eps, accuracy, distortion in zip(
        report["eps"], report["accuracy"], report["mean_distortion"], strict=True
    ):
        lines.append(f"  {eps:7.4f}  {accuracy:8.4f}  {distortion:15.5f}")
    for check in report["checks"]:
        verdict = "pass" if check["passed"] else "FAIL"
        lines.append(f"  check {check['name']}: {verdict}: {check['message']}")
    if report["stochastic"] and report["num_eot_samples"] == 1:
        lines.append(
            "  Single-draw gradients, as the paper. For an adaptive evaluation of this "
            "stochastic model rerun with --num_eot_samples=10 (or more)."
        )
        if report["attack"].startswith("apgd"):
            lines.append(
                "  APGD halves its step when the loss stops rising; single-draw losses of a "
                "stochastic model are too noisy for that rule, so give APGD --num_eot_samples=10 "
                "or more here (AutoAttack's version for randomized defenses uses 20)."
            )
    return "\n".join(lines)


def summary(report: dict) -> str | None:
    """Console text of a report: the table and model summaries of compare, a sweep's summary.

    None for the modes whose figure is their summary (transfer and the Fig. 4 ablations).
    """
    if report["mode"] == "compare":
        return "\n".join([report["table_markdown"], *map(sweep_summary, report["models"])])
    if report["mode"] == "sweep":
        return sweep_summary(report)
    return None
