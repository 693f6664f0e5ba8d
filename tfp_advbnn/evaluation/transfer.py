"""Several models on the same examples: white-box comparison (paper Fig. 2, Table 1) and transfer.

``compare`` sweeps each model with its own attack; ``transfer`` crafts on each source model and
scores on every target (paper eq. 17, Fig. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tfp_advbnn import validation
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine
from tfp_advbnn.evaluation.protocols import AttackSpec, diagnosis_eps
from tfp_advbnn.evaluation.reports import attack_caption, markdown_table, rates, report_settings
from tfp_advbnn.evaluation.sweeps import no_cascade, sweep

AFFINITY_DEFINITION = (
    "rho[s][t] = (clean_t - acc[s][t]) / (clean_t - acc[t][t]): the accuracy that target t "
    "loses on adversarial examples crafted on source s, as a fraction of what it loses to its "
    "own white-box attack. 1 on the diagonal; near 1: s's examples transfer fully to t; near 0: "
    "they do not. null where t's own attack costs it no accuracy."
)


def _model_names(model_fns: Mapping[str, Callable], minimum: int) -> list[str]:
    names = list(model_fns)
    if len(names) < minimum:
        raise ValueError(f"need at least {minimum} models, got {len(names)}: {names}")
    return names


def compare(
    model_fns: Mapping[str, Callable],
    images,
    labels,
    config: EvalConfig,
    *,
    with_checks: bool = True,
    stochastic: Mapping[str, bool] | None = None,
    progress: bool = False,
) -> dict:
    """Sweeps of several models on the same examples (paper Fig. 2 and Table 1).

    Args:
      model_fns: label -> model_fn, in plot and table order.
      stochastic: label -> whether that model is random (missing: found by calling it).

    Returns:
      dict with ``mode`` "compare", the attack settings, ``eps``, ``num_examples``,
      ``models`` (one ``sweep`` report per model, in order) and ``table_markdown``.
    """
    names = _model_names(model_fns, 1)
    images, labels = engine.prepare(images, labels, config)
    stochastic = stochastic or {}
    reports = [
        sweep(
            model_fns[name],
            images,
            labels,
            config,
            label=name,
            with_checks=with_checks,
            stochastic=stochastic.get(name),
            progress=progress,
        )
        for name in names
    ]
    settings = report_settings(config)
    caption = (
        f"Accuracy (%) under {attack_caption(settings)}, ensemble of {config.num_samples}, "
        f"on {len(images)} test examples (eps in [0, 1] pixel scale, {config.norm}), with 95 % "
        "Wilson intervals; the paper's count (adversarial prediction correct)."
    )
    robust_caption = (
        "Robust accuracy (%): clean and adversarial predictions both correct, with the same "
        "draws; same attacks and examples."
    )
    table = markdown_table(
        names,
        config.eps_grid,
        [r["accuracy"] for r in reports],
        caption=caption,
        intervals=[r["accuracy_interval"] for r in reports],
    )
    robust_table = markdown_table(
        names,
        config.eps_grid,
        [r["robust_accuracy"] for r in reports],
        caption=robust_caption,
        intervals=[r["robust_accuracy_interval"] for r in reports],
    )
    return {
        "mode": "compare",
        **settings,
        "num_examples": len(images),
        "eps": list(config.eps_grid),
        "models": reports,
        "table_markdown": table + "\n" + robust_table,
    }


def transfer(
    model_fns: Mapping[str, Callable],
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float] | None = None,
    *,
    progress: bool = False,
) -> dict:
    """Black-box transfer: examples crafted on each source, ensemble accuracy on each target.

    The affinity matrix (the quantity of paper eq. 17 and Fig. 3, as defined here) is

        rho[s][t] = (clean_t - acc[s][t]) / (clean_t - acc[t][t]),

    where ``acc[s][t]`` is target t's ensemble accuracy on the examples crafted on source s
    (``acc[t][t]`` is t's white-box accuracy) and ``clean_t`` its clean accuracy: the share of
    its white-box accuracy loss that the transferred examples cause. ``rho[t][t] = 1``; it is
    None where ``clean_t <= acc[t][t]``.

    Args:
      model_fns: label -> model_fn (at least 2), the sources and targets.
      eps_values: the radii (default: ``diagnosis_eps(config.eps_grid)``).

    Returns:
      dict with ``mode`` "transfer", ``models`` (labels), ``eps``, ``clean_accuracy`` [T],
      ``accuracy`` [E][S][T] and ``robust_accuracy`` [E][S][T] (each with ``_interval``:
      [..., 2]), ``affinity`` [E][S][T] and ``affinity_definition``.
    """
    if config.protocol != "paper":
        raise ValueError(
            f"protocol: mode=transfer crafts with one attack (protocol=paper), got "
            f"protocol={config.protocol}"
        )
    no_cascade(config, "transfer")
    names = _model_names(model_fns, 2)
    images, labels = engine.prepare(images, labels, config)
    if eps_values is None:
        eps_values = [diagnosis_eps(config.eps_grid) or 0.0]
    eps_values = validation.unit_values("eps_values", list(eps_values))
    evaluators = [engine.Evaluator(model_fns[name], images) for name in names]
    targets = [engine.Target(ev, config.num_samples) for ev in evaluators]
    clean_correct = np.stack(
        [
            engine.clean_correct(
                ev, images, labels, num_samples=config.num_samples, batch_size=config.batch_size
            )
            for ev in evaluators
        ]
    )
    clean, clean_interval = rates(clean_correct)
    num = len(images)
    correct = np.zeros((len(eps_values), len(names), len(names), num), bool)
    robust = np.zeros_like(correct)
    source_attacks = []
    for s, source in enumerate(evaluators):
        # The source's gradients, with the EOT draws its own white-box attack would take.
        spec = AttackSpec.of(config, stochastic=source.stochastic)
        source_attacks.append(spec.settings())
        # Target 0 is the source itself, so the counted distortion is the white-box one.
        order = [s] + [t for t in range(len(names)) if t != s]
        outcomes = engine.attack_outcomes(
            source,
            [targets[t] for t in order],
            images,
            labels,
            spec,
            eps_values,
            restarts=config.random_restarts,
            batch_size=config.batch_size,
            seed=config.seed,
            progress=progress,
        )
        for position, t in enumerate(order):
            correct[:, s, t] = outcomes.correct[position]
            robust[:, s, t] = outcomes.robust[position]
    accuracy, accuracy_interval = rates(correct)
    robust_accuracy, robust_interval = rates(robust)
    accuracy = np.asarray(accuracy)
    affinity = []
    for e in range(len(eps_values)):
        rows = []
        for s in range(len(names)):
            row = []
            for t in range(len(names)):
                white_box_loss = clean[t] - accuracy[e, t, t]
                row.append(
                    float((clean[t] - accuracy[e, s, t]) / white_box_loss)
                    if white_box_loss > 0
                    else None
                )
            rows.append(row)
        affinity.append(rows)
    return {
        "mode": "transfer",
        **report_settings(config),
        "num_examples": len(images),
        "models": names,
        "source_attacks": source_attacks,
        "eps": list(eps_values),
        "clean_accuracy": clean,
        "clean_accuracy_interval": clean_interval,
        "accuracy": accuracy.tolist(),
        "accuracy_interval": accuracy_interval,
        "robust_accuracy": robust_accuracy,
        "robust_accuracy_interval": robust_interval,
        "affinity": affinity,
        "affinity_definition": AFFINITY_DEFINITION,
    }
