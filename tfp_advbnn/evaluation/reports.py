"""What an evaluation report says: its settings block, its caption, intervals, Markdown, JSON and
console text.

Reports are plain dicts ready for JSON; every mode's report starts from ``report_settings``.
Readers of earlier reports rely on the key ``pgd_steps``, so it keeps that name although it
holds ``EvalConfig.attack_steps`` (the steps of every iterative attack, not only PGD).

Every accuracy a report holds comes with its 95 % Wilson score interval (``wilson_interval``)
under the key of the accuracy with ``_interval`` appended: ``[low, high]`` fractions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from tfp_advbnn import attacks, run_dir
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.config.evaluate import default_eot_samples

# The two-sided 95 % normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> list[float]:
    """The Wilson score interval of a binomial proportion: ``[low, high]`` in [0, 1].

    Unlike the normal-approximation interval it stays inside [0, 1] and does not collapse to a
    point at 0 % or 100 %, where robust accuracies often are. ``[0, 1]`` when ``trials`` is 0.
    """
    if trials == 0:
        return [0.0, 1.0]
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # The bounds hold p exactly: at 0 or n successes rounding puts them 1e-17 on the wrong side.
    return [max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))]


def rates(correct) -> tuple[list | float, list]:
    """Accuracy and Wilson interval of bool outcomes, over their last (example) axis.

    A bool [N] gives ``(float, [low, high])``; bool [..., N] gives nested lists of the leading
    shape.
    """
    correct = np.asarray(correct, bool)
    trials = correct.shape[-1]
    counts = correct.sum(axis=-1)
    accuracy = (counts / trials if trials else np.zeros_like(counts, float)).tolist()
    if correct.ndim == 1:
        return float(accuracy), wilson_interval(int(counts), trials)
    intervals = np.array(
        [wilson_interval(int(k), trials) for k in counts.reshape(-1)], float
    ).reshape(*counts.shape, 2)
    return accuracy, intervals.tolist()


def report_settings(config: EvalConfig) -> dict:
    """The attack settings every report carries.

    ``attack`` is the protocol's first attack; ``num_eot_samples`` is None when it is left to
    each model (see ``EvalConfig.eot_samples_for``): model reports carry the resolved values
    in ``attacks``.
    """
    return {
        "protocol": config.protocol,
        "attack": config.attack_names[0],
        "attack_names": list(config.attack_names),
        "norm": config.norm,
        "pgd_steps": config.attack_steps,
        "pgd_step_size": config.pgd_step_size,
        "random_restarts": config.random_restarts,
        "num_eot_samples": config.num_eot_samples,
        "num_samples": config.num_samples,
        "seed": config.seed,
    }


def attack_caption(settings: Mapping) -> str:
    """The attacks of a report in words, e.g. "PGD (L∞), 20 steps, EOT 10, 2 random restarts".

    Several attacks (the adaptive protocol) are joined by " + " and end in ", worst case per
    example". EOT left to each model is described by its default on stochastic models.

    Args:
      settings: a report, or ``report_settings(config)`` (``random_restarts``,
        ``attack_names`` and ``protocol`` may be missing, as in earlier reports).
    """
    names = settings.get("attack_names") or [settings["attack"]]
    eot = settings["num_eot_samples"]
    parts = []
    for name in names:
        if eot is None:
            protocol = settings.get("protocol", "paper")
            stochastic_eot = default_eot_samples(protocol, name, stochastic=True)
            text = attacks.get(name).describe(num_steps=settings["pgd_steps"])
            if stochastic_eot > 1:
                text += f", EOT {stochastic_eot} on stochastic models"
        else:
            text = attacks.get(name).describe(num_steps=settings["pgd_steps"], num_eot_samples=eot)
        parts.append(text)
    caption = " + ".join(parts)
    restarts = settings.get("random_restarts", 0)
    if restarts:
        caption += f", {restarts} random restart{'s' if restarts > 1 else ''}"
    if len(names) > 1:
        caption += ", worst case per example"
    return caption


def percent_with_interval(accuracy: float, interval: Sequence[float] | None) -> str:
    """E.g. "45.2 (41.0–49.4)": accuracy and its interval in %."""
    if interval is None:
        return f"{100 * accuracy:.1f}"
    return f"{100 * accuracy:.1f} ({100 * interval[0]:.1f}\u2013{100 * interval[1]:.1f})"


def markdown_table(
    labels: Sequence[str],
    eps: Sequence[float],
    accuracy,
    *,
    caption: str,
    intervals=None,
) -> str:
    """A Markdown table like the paper's Table 1: a row per model, accuracy (%) per eps.

    Args:
      intervals: per model and eps, ``[low, high]`` 95 % intervals shown beside each accuracy.
    """
    lines = [caption, "", "| Model | " + " | ".join(f"{e:g}" for e in eps) + " |"]
    lines.append("|---|" + "---:|" * len(eps))
    intervals = intervals or [[None] * len(eps) for _ in labels]
    for label, row, row_intervals in zip(labels, accuracy, intervals, strict=True):
        cells = [percent_with_interval(a, i) for a, i in zip(row, row_intervals, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
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


def plan_notes(attack_settings: Sequence[Mapping], stochastic: bool) -> list[str]:
    """What a reader of a report must know about how its attacks ran on this model.

    Args:
      attack_settings: ``AttackSpec.settings()`` of each attack that ran.
      stochastic: whether the model is random.
    """
    if not stochastic:
        return []
    notes = []
    single = [s for s in attack_settings if s["num_eot_samples"] == 1]
    if single:
        notes.append(
            "Single-draw gradients (as the paper) on a stochastic model: an adaptive evaluation "
            "averages them over draws (--protocol=adaptive, or --num_eot_samples=20)."
        )
    if any(s["attack"].startswith("apgd") for s in single):
        notes.append(
            "APGD halves its step when the loss stops rising; with single-draw losses of a "
            "stochastic model that rule is driven by noise, so this APGD result understates the "
            "attack (AutoAttack's version for randomized defenses averages 20 draws)."
        )
    return notes


def sweep_summary(report: dict) -> str:
    """A sweep report as console text: accuracies with intervals per eps, attacks, checks."""
    lines = [
        f"{report['label']}: clean accuracy "
        f"{percent_with_interval(report['clean_accuracy'], report['clean_accuracy_interval'])} %",
        f"  {attack_caption(report)}; accuracy (robust: clean and adversarial both correct), "
        "% with 95 % intervals",
        "      eps  accuracy             robust_accuracy      mean_distortion",
    ]
    for e, eps in enumerate(report["eps"]):
        accuracy = percent_with_interval(report["accuracy"][e], report["accuracy_interval"][e])
        robust = percent_with_interval(
            report["robust_accuracy"][e], report["robust_accuracy_interval"][e]
        )
        distortion = report["mean_distortion"][e]
        lines.append(f"  {eps:7.4f}  {accuracy:19}  {robust:19}  {distortion:.5f}")
    if len(report["attacks"]) > 1:
        for attack in report["attacks"]:
            cells = ", ".join(
                f"{eps:g}: {100 * a:.1f}"
                for eps, a in zip(report["eps"], attack["robust_accuracy"], strict=True)
            )
            # Under the cascade an attack ran only on what the attacks before it left robust.
            scope = "and those before it" if report.get("cascade") else "alone"
            lines.append(f"  {attack['description']} {scope}, robust accuracy (%): {cells}")
    for check in report["checks"]:
        verdict = "pass" if check["passed"] else "FAIL"
        lines.append(f"  check {check['name']}: {verdict}: {check['message']}")
    lines.extend(f"  note: {note}" for note in report.get("notes", []))
    return "\n".join(lines)


def detect_summary(report: dict) -> str:
    """A detect report as console text: the accuracies and both AUCs per eps."""
    clean = percent_with_interval(report["clean_accuracy"], report["clean_accuracy_interval"])
    lines = [
        f"{report['label']}: clean accuracy {clean} %; {attack_caption(report)}; "
        f"{report['ensemble_draws']}-draw uncertainties",
        "      eps  adversarial accuracy  AUC entropy  AUC mutual information",
    ]
    for e, eps in enumerate(report["eps"]):
        accuracy = percent_with_interval(
            report["adversarial_accuracy"][e], report["adversarial_accuracy_interval"][e]
        )
        entropy, information = (report["auc"][name][e] for name in report["auc"])
        lines.append(f"  {eps:7.4f}  {accuracy:20}  {entropy:11.3f}  {information:.3f}")
    return "\n".join(lines)


def summary(report: dict) -> str | None:
    """Console text of a report: the table and model summaries of compare, a sweep's summary,
    detect's AUCs.

    None for the modes whose figure is their summary (transfer and the Fig. 4 ablations).
    """
    if report["mode"] == "compare":
        return "\n".join([report["table_markdown"], *map(sweep_summary, report["models"])])
    if report["mode"] == "sweep":
        return sweep_summary(report)
    if report["mode"] == "detect":
        return detect_summary(report)
    return None
