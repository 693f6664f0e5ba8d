"""What a finished search reports: the best trial and a Markdown table of every trial."""

from __future__ import annotations

import keras_tuner as kt

from tfp_advbnn.tuning.search_config import METRICS, TUNED, SearchConfig

BEST_FILENAME = "best_hyperparameters.json"
SUMMARY_FILENAME = "summary.md"


def best_record(records: list[dict], objective_name: str) -> dict | None:
    """The completed trial with the highest ``objective_name`` (the earliest among equals), or
    None when no trial completed."""
    completed = [
        r
        for r in records
        if r["status"] == kt.engine.trial.TrialStatus.COMPLETED
        and r["metrics"][objective_name] is not None
    ]
    if not completed:
        return None
    return max(completed, key=lambda record: record["metrics"][objective_name])


def summary_markdown(records: list[dict], search: SearchConfig, best: dict | None) -> str:
    """The Markdown summary: one row per trial with its values and metrics, the best marked."""
    lines = [
        "# Hyperparameter search",
        "",
        f"Tuner `{search.tuner}`, objective `{search.objective_name}` (max"
        + (
            f", weight {search.combined_weight:g} on robust"
            if search.objective == "combined"
            else ""
        )
        + f"), {len(records)} trials, validation split of {search.base.data.validation_examples} "
        "training images.",
        "",
    ]
    header = ["trial", "status", *TUNED, "epochs", *METRICS, "best"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for record in records:
        cells = [record["trial_id"], record["status"]]
        cells += [f"{record['hyperparameters'][name]:.4g}" for name in TUNED]
        cells.append(str(record["epochs"]))
        cells += [
            "" if record["metrics"][name] is None else f"{record['metrics'][name]:.4f}"
            for name in METRICS
        ]
        is_best = best is not None and record["trial_id"] == best["trial_id"]
        cells.append("**best**" if is_best else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
