"""The default training recipe per dataset and defense: the paper's Table 2, the schedule of
the reference code, and the optimizer settings measured with ``benchmarks/recipe.py``.
"""

from __future__ import annotations

from tfp_advbnn import validation
from tfp_advbnn.config import INIT_S

# The paper's Table 2 (eps, sigma_0, alpha, PGD-10 in training), the schedule length of the
# reference code, and its default model per dataset. ``folder`` stands for ImageNet-143 and
# other image folders.
DATASET_DEFAULTS = {
    "cifar10": {
        "train_eps": 8.0 / 256.0,
        "sigma_0": 0.05,
        "alpha": 1.0,
        "epochs": 200,
        "image_size": None,
        "model": "vgg16",
    },
    "stl10": {
        "train_eps": 8.0 / 256.0,
        "sigma_0": 0.15,
        "alpha": 1.0 / 50.0,
        "epochs": 120,
        "image_size": None,
        "model": "model_a",
    },
    "folder": {
        "train_eps": 0.01,
        "sigma_0": 0.15,
        "alpha": 1.0 / 50.0,
        "epochs": 80,
        "image_size": 64,
        "model": "vgg16",
    },
}

# Optimizers. Plain, adv and RSE: the reference's SGD at 0.01, momentum 0.9 and coupled weight
# decay 5e-4. BNN and Adv-BNN: Adam as the reference, but at 1e-4 (BNN) and 1e-3 (Adv-BNN)
# instead of its 0.01, and with the posterior std starting at INIT_S = 0.002 instead of sigma_0:
# Adam moves every mu and s by about the learning rate per step whatever the gradient's size,
# and the KL's per-weight gradient, tiny but larger than the CE's in VGG16's wide layers, then
# drives the 15M stds to sigma_0 and the means to 0 within a few hundred steps. Measured with
# benchmarks/recipe.py (README, "Training recipe").
_SGD = {"optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4}
DEFENSE_DEFAULTS = {
    "plain": _SGD,
    "adv": _SGD,
    "rse": _SGD,
    "bnn": {"optimizer": "adam", "learning_rate": 1e-4, "weight_decay": 0.0},
    "adv_bnn": {"optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0},
}

# The reference schedule: epochs per stage, learning rate divided by 10 at each stage.
STAGE_EPOCHS = {
    "cifar10": (80, 60, 40, 20),
    "stl10": (60, 40, 20),
    "folder": (30, 20, 20, 10),
}


def recipe_defaults(dataset: str, defense: str) -> dict:
    """The default settings of ``dataset`` and ``defense``: Table 2, the reference code, and the
    measured deviations of ``DEFENSE_DEFAULTS``.

    Returns a dict of TrainConfig field -> value for ``train_eps``, ``sigma_0``, ``alpha``,
    ``epochs``, ``image_size``, ``model``, ``optimizer``, ``learning_rate``, ``weight_decay``
    and ``init_s`` (read by the Bayesian defenses only).
    """
    validation.choice("dataset", dataset, DATASET_DEFAULTS)
    validation.choice("defense", defense, DEFENSE_DEFAULTS)
    return dict(DATASET_DEFAULTS[dataset], **DEFENSE_DEFAULTS[defense], init_s=INIT_S)


def with_recipe_defaults(values: dict) -> dict:
    """``values`` (TrainConfig fields, with ``dataset`` and ``defense``) where every field of
    ``recipe_defaults`` that is missing or None takes the recipe's value."""
    defaults = recipe_defaults(values["dataset"], values["defense"])
    filled = dict(values)
    for name, default in defaults.items():
        if filled.get(name) is None:
            filled[name] = default
    return filled
