"""TensorBoard histograms of the posterior of every Bayesian layer, written after each epoch.

For each Bayesian layer and each of its weights (``kernel``, ``bias``; ``gamma``, ``beta`` for
Bayesian batch normalization), with posterior q(w) = N(mu, sigma^2), sigma = exp(s):

- ``posterior_std/<layer>/<weight>``: sigma of every element;
- ``posterior_snr/<layer>/<weight>``: the signal-to-noise ratio |mu| / sigma of every element
  (large: the weight is nearly deterministic; below 1: its sign is uncertain).

The scalars of ``metrics.jsonl`` (the CE and KL terms apart, the learning rate, the robust
accuracy when measured) are written beside them by the trainer.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfp_advbnn.layers import BayesianLayer


def posterior_statistics(model) -> dict[str, np.ndarray]:
    """Every tag above -> its float32 values, flattened, for the Bayesian layers of ``model``.

    Layers are named by ``layer.name``; a name seen twice (nested models) gets ``_<k>`` added.
    Empty for a model without Bayesian layers.
    """
    statistics = {}
    seen: dict[str, int] = {}
    for module in (model, *model.submodules):
        if not isinstance(module, BayesianLayer):
            continue
        name = module.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name] - 1}"
        for weight, (mu, s) in module.posterior_parameters.items():
            mu_values = np.asarray(tf.convert_to_tensor(mu), np.float64).ravel()
            sigma = np.exp(np.asarray(tf.convert_to_tensor(s), np.float64).ravel())
            statistics[f"posterior_std/{name}/{weight}"] = sigma.astype(np.float32)
            statistics[f"posterior_snr/{name}/{weight}"] = (np.abs(mu_values) / sigma).astype(
                np.float32
            )
    return statistics


def write_posterior_histograms(model, step: int) -> int:
    """Writes the histograms of ``posterior_statistics(model)`` to the default summary writer.

    Args:
      model: a built model.
      step: the summary step (the trainer uses the number of finished epochs).

    Returns:
      The number of histograms written (0 for a model without Bayesian layers).

    Example:
      >>> with tf.summary.create_file_writer("runs/x/tensorboard").as_default():
      ...     write_posterior_histograms(model, step=1)
    """
    statistics = posterior_statistics(model)
    for tag, values in statistics.items():
        tf.summary.histogram(tag, values, step=step)
    return len(statistics)
