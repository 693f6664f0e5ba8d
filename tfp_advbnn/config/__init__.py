"""The settings of a run as nested frozen dataclasses: each setting is declared once, here.

A ``TrainConfig`` is its ``model_dir`` and seven sections: ``data``, ``network``, ``objective``
(the defense and its KL term), ``attack`` (the training attack), ``optim``, ``monitor``
(per-epoch evaluation and export) and ``runtime``. An ``EvalConfig`` holds the settings of one
evaluation. Every field is declared with ``setting(default, help, ...)``: its help text, its
choices, the defenses it applies to and whether the recipe (``training.recipe_defaults``) gives
its default live in the field's metadata. The command-line flags (``trainers/flags.py``) are
generated from these declarations, so no setting is written a second time.

Flat names: a field's name is unique across the sections of its config and is also its flag
name (``--alpha`` sets ``objective.alpha``). ``TrainConfig.from_flat(alpha=0.1, ...)`` and
``config.replace(alpha=0.1)`` take flat names; ``config.flat()`` gives them. Errors of
``validate()`` name the field by its path (``objective.alpha``); ``trainers/flags.py`` turns
the path into the flag. Units: radii and step sizes are in [0, 1] pixel scale;
``kl_warmup_epochs`` is in epochs (fractions allowed).

Examples:
    >>> config = TrainConfig.from_flat(model_dir="runs/a", defense="bnn", alpha=0.1)
    >>> config.objective.alpha
    0.1
    >>> config.replace(epochs=3).optim.epochs
    3
"""

from tfp_advbnn.config.declare import FlatConfig, Setting, setting, settings_of
from tfp_advbnn.config.evaluate import (
    ADAPTIVE_EOT_SAMPLES,
    ADAPTIVE_EPS_GRIDS,
    DEFAULT_EPS_GRIDS,
    PROTOCOLS,
    EvalConfig,
)
from tfp_advbnn.config.train import (
    EVAL_SPLITS,
    INIT_S,
    KL_SCOPES,
    OPTIMIZERS,
    POSTERIORS,
    PRECISIONS,
    STRATEGIES,
    AttackConfig,
    DataConfig,
    MonitorConfig,
    NetworkConfig,
    ObjectiveConfig,
    OptimConfig,
    RuntimeConfig,
    TrainConfig,
)

__all__ = [
    "ADAPTIVE_EOT_SAMPLES",
    "ADAPTIVE_EPS_GRIDS",
    "DEFAULT_EPS_GRIDS",
    "PROTOCOLS",
    "EVAL_SPLITS",
    "INIT_S",
    "KL_SCOPES",
    "OPTIMIZERS",
    "POSTERIORS",
    "PRECISIONS",
    "STRATEGIES",
    "AttackConfig",
    "DataConfig",
    "EvalConfig",
    "FlatConfig",
    "MonitorConfig",
    "NetworkConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RuntimeConfig",
    "Setting",
    "TrainConfig",
    "setting",
    "settings_of",
]
