"""Do the ensemble's uncertainties flag adversarial examples? ROC AUC of clean vs attacked.

For each eps, every test image is attacked with the config's attack (PGD by default, crafted by
``engine.Evaluator.craft``, the code every other mode attacks with) and the clean and the
adversarial images are scored by the two uncertainties of the ``num_samples``-draw ensemble
(``predict.ensemble_uncertainty``): the predictive entropy and the mutual information between
prediction and weights (the epistemic part), both in nats. A detector that calls an input
adversarial when its uncertainty is above a threshold has, over all thresholds, the ROC AUC of
clean (negatives) vs adversarial (positives) scores: 1 is a perfect detector, 0.5 chance, below
0.5 means the attack makes the model MORE certain. Smith and Gal (2018) measured this for
dropout networks.

``roc_auc`` is the rank (Mann-Whitney U) formula with tied scores counted half, so a
deterministic model, whose mutual information is 0 everywhere, gets 0.5.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfp_advbnn import predict, run_dir
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine, sweeps
from tfp_advbnn.evaluation.protocols import AttackSpec
from tfp_advbnn.evaluation.reports import attack_caption, rates, report_settings

SCORES = ("entropy", "mutual_information")
SCORE_NAMES = {"entropy": "Predictive entropy", "mutual_information": "Mutual information"}


def roc_auc(negatives, positives) -> float:
    """Area under the ROC curve of a detector flagging high scores as positive.

    The probability that a random positive scores above a random negative, ties counted half:
    ``(R - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R`` the sum of the positives' ranks
    among all scores (tied scores get their mean rank).

    Args:
      negatives: float [n_neg] scores of the clean examples (n_neg >= 1, finite).
      positives: float [n_pos] scores of the adversarial examples (n_pos >= 1, finite).

    Example:
      >>> roc_auc([0.1, 0.2], [0.3, 0.2])
      0.875
    """
    negatives = np.asarray(negatives, np.float64).reshape(-1)
    positives = np.asarray(positives, np.float64).reshape(-1)
    if negatives.size == 0 or positives.size == 0:
        raise ValueError(
            f"roc_auc needs at least one score of each class, got {negatives.size} negatives "
            f"and {positives.size} positives"
        )
    scores = np.concatenate([negatives, positives])
    if not np.all(np.isfinite(scores)):
        raise ValueError("roc_auc got a non-finite score")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size)
    ranks[order] = np.arange(1, scores.size + 1)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    n_pos, n_neg = positives.size, negatives.size
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detect(
    model_fn: Callable,
    images,
    labels,
    config: EvalConfig,
    eps_values: Sequence[float],
    *,
    label: str = "model",
    stochastic: bool | None = None,
    progress: bool = False,
) -> dict:
    """ROC AUC of clean vs adversarial examples, scored by each uncertainty, at each eps.

    Args:
      model_fn: float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C]; one call, one
        draw.
      images: float32 [N, H, W, 3] in [0, 1] (the first ``config.max_examples`` are used).
      labels: int [N] class ids (the attack's targets to move away from).
      config: the attack (one bounded attack of the ``paper`` protocol: ``pgd_linf`` by
        default, ``attack_steps``, ``pgd_step_size``, ``num_eot_samples``), the ensemble size
        ``num_samples``, ``batch_size`` and ``seed``. Random restarts and the ``adaptive``
        protocol are refused: one attacked image per example is scored.
      eps_values: radii in [0, 1] pixel scale (per pixel for L-inf attacks).
      label: the model's name in the report and plot.
      stochastic: whether ``model_fn`` is random (None: found by calling it twice). A
        deterministic model is scored with one call: its mutual information is 0.
      progress: show a progress bar (on a terminal only).

    Returns:
      A JSON-ready dict: ``mode`` "detect", ``label``, the attack settings of
      ``report_settings``, ``num_examples``, ``stochastic``, ``ensemble_draws`` (draws used),
      ``eps``, ``clean_accuracy`` (+ ``_interval``), ``adversarial_accuracy`` [E] (+
      ``_interval``), ``auc`` {"entropy": [E], "mutual_information": [E]},
      ``clean_mean`` {score: float} and ``adversarial_mean`` {score: [E]} (nats), ``seconds``.

    Example:
      >>> report = detect(lambda x: model(x, training=False), x_test, y_test,
      ...                 EvalConfig(num_samples=10), eps_values=(0.01, 0.03))
      >>> report["auc"]["mutual_information"]
    """
    started = time.time()
    if config.protocol != "paper":
        raise ValueError(
            f"detect runs one attack; protocol {config.protocol!r} is not supported (use paper)"
        )
    sweeps.no_cascade(config, "detect")
    if config.random_restarts:
        raise ValueError(
            f"detect scores one attacked image per example; random_restarts="
            f"{config.random_restarts} is not supported (use 0)"
        )
    eps_values = [float(e) for e in eps_values]
    if not eps_values:
        raise ValueError("detect needs at least one eps")
    for eps in eps_values:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1] (pixel scale), got {eps}")
    images, labels = engine.prepare(images, labels, config)
    evaluator = engine.Evaluator(model_fn, images, stochastic)
    spec = AttackSpec.of(config, stochastic=evaluator.stochastic)
    if spec.thresholded:
        raise ValueError(
            f"detect needs a bounded attack; {spec.attack!r} has no eps budget (use pgd_linf)"
        )
    draws = config.num_samples if evaluator.stochastic else 1
    image_spec = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
    score = tf.function(
        lambda x: predict.ensemble_uncertainty(model_fn, x, draws), input_signature=[image_spec]
    )
    craft = evaluator.craft(spec, random_start=False)
    parts = engine.batches(len(images), config.batch_size)

    def scored(x):
        outputs = score(x)
        predicted = np.argmax(outputs["probabilities"].numpy(), axis=-1)
        return predicted, {name: outputs[name].numpy() for name in SCORES}

    num = len(images)
    clean = {name: np.zeros(num) for name in SCORES}
    clean_correct = np.zeros(num, bool)
    adversarial = {name: np.zeros((len(eps_values), num)) for name in SCORES}
    adversarial_correct = np.zeros((len(eps_values), num), bool)
    bar = engine.progress_bar(len(parts) * (len(eps_values) + 1), progress)
    done = 0
    for batch_index, part in enumerate(parts):
        x = tf.constant(images[part])
        y = tf.constant(labels[part])
        predicted, values = scored(x)
        clean_correct[part] = predicted == labels[part]
        for name in SCORES:
            clean[name][part] = values[name]
        done += 1
        bar.update(done)
        seed = tf.constant([config.seed, batch_index], tf.int64)
        for e, eps in enumerate(eps_values):
            step = tf.constant(spec.step_size_for(eps), tf.float32)
            x_adv = craft(x, y, tf.constant(eps, tf.float32), step, seed)
            predicted, values = scored(x_adv)
            adversarial_correct[e, part] = predicted == labels[part]
            for name in SCORES:
                adversarial[name][e, part] = values[name]
            done += 1
            bar.update(done)
    clean_accuracy, clean_interval = rates(clean_correct)
    adversarial_accuracy, adversarial_interval = rates(adversarial_correct)
    return {
        "mode": "detect",
        "label": label,
        **report_settings(config),
        "num_eot_samples": spec.num_eot_samples,
        "num_examples": num,
        "stochastic": evaluator.stochastic,
        "ensemble_draws": draws,
        "eps": eps_values,
        "clean_accuracy": clean_accuracy,
        "clean_accuracy_interval": clean_interval,
        "adversarial_accuracy": adversarial_accuracy,
        "adversarial_accuracy_interval": adversarial_interval,
        "auc": {
            name: [roc_auc(clean[name], adversarial[name][e]) for e in range(len(eps_values))]
            for name in SCORES
        },
        "clean_mean": {name: float(clean[name].mean()) for name in SCORES},
        "adversarial_mean": {
            name: [float(v) for v in adversarial[name].mean(axis=1)] for name in SCORES
        },
        "seconds": {"total": time.time() - started},
    }


def plot_detection(report: dict, path: str) -> str:
    """Draws a ``detect`` report as a PNG at ``path`` (atomically); returns ``path``.

    ROC AUC against eps, one line per uncertainty, with the chance level (0.5) dashed.
    """
    if report.get("mode") != "detect":
        raise ValueError(f"plot_detection draws a 'detect' report, got mode {report.get('mode')!r}")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    axes = figure.subplots()
    for name in SCORES:
        axes.plot(report["eps"], report["auc"][name], marker="o", label=SCORE_NAMES[name])
    axes.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="Chance (0.5)")
    unit = "L\u221e, [0, 1] pixel scale" if report["norm"] == "linf" else "L2 norm"
    axes.set_xlabel(f"\u03b5 ({unit})")
    axes.set_ylabel("ROC AUC, clean vs adversarial")
    axes.set_ylim(0.0, 1.0)
    axes.set_title(
        f"{report['label']}: detecting adversarial examples by uncertainty\n"
        f"{attack_caption(report)}; {report['ensemble_draws']}-draw ensemble, "
        f"{report['num_examples']} examples"
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    return run_dir.write_atomically(
        path,
        lambda staging: figure.savefig(staging, format="png", dpi=120, bbox_inches="tight"),
        suffix=".png",
    )
