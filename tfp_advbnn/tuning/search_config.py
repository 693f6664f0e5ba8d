"""What a hyperparameter search searches and how its trials are scored: ``SearchSpace``,
``SearchConfig`` (with the TrainConfig of each trial and of the best one) and the trial metrics.
"""

from __future__ import annotations

import dataclasses

import keras_tuner as kt

from tfp_advbnn import validation
from tfp_advbnn.config import TrainConfig

TUNED = ("alpha", "sigma_0", "init_s", "learning_rate")
TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = {"clean": "val_accuracy", "robust": "val_robust_accuracy", "combined": "val_combined"}
METRICS = ("val_accuracy", "val_robust_accuracy", "val_combined")

# TrainConfig fields a rerun may change: the tuned ones come from the search space, and the
# others say where the data are, how this machine runs a trial, or only concern the full-length
# --train_best run.
_RERUN_MAY_CHANGE = frozenset(
    {
        *TUNED,
        "model_dir",
        "epochs",
        "data_dir",
        "strategy",
        "checkpoint_every_steps",
        "eval_robust_examples",
    }
)

Bounds = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What is tuned. Each field is a fixed value or the (low, high) bounds of a log-uniform
    range. ``alpha`` is the KL weight, ``sigma_0`` the prior std, ``init_s`` the initial
    posterior std and ``learning_rate`` the initial learning rate.

    The validation messages name the trainers.tune flags (``fix_<name>``, ``<name>_min``,
    ``<name>_max``).
    """

    alpha: float | Bounds = (1e-3, 1.0)
    sigma_0: float | Bounds = (0.01, 0.3)
    init_s: float | Bounds = (1e-3, 0.1)  # the recipe's 0.002 inside (README, Training recipe)
    learning_rate: float | Bounds = (1e-4, 1e-2)

    def validate(self) -> None:
        """Raises ValueError naming the first bad value: bounds need 0 < low < high < inf; a
        fixed alpha must be >= 0 (0 turns the KL term off) and the other fixed values > 0."""
        for name in TUNED:
            value = getattr(self, name)
            if isinstance(value, tuple):
                low, high = value
                if not (0 < low < high and validation.is_real(high)):
                    raise ValueError(
                        f"{name}_min={low} must be > 0 and below {name}_max={high} (finite)"
                    )
            elif name == "alpha":
                validation.non_negative(f"fix_{name}", value)
            else:
                validation.positive(f"fix_{name}", value)

    def hyperparameters(self) -> kt.HyperParameters:
        """The KerasTuner space: ``Float(..., sampling="log")`` per range, ``Fixed`` per value."""
        hp = kt.HyperParameters()
        for name in TUNED:
            value = getattr(self, name)
            if isinstance(value, tuple):
                hp.Float(name, float(value[0]), float(value[1]), sampling="log")
            else:
                hp.Fixed(name, float(value))
        return hp

    def to_dict(self) -> dict:
        """``{name: {"fixed": value}}`` or ``{name: {"min": low, "max": high}}``, for JSON."""
        described = {}
        for name in TUNED:
            value = getattr(self, name)
            if isinstance(value, tuple):
                described[name] = {"min": float(value[0]), "max": float(value[1])}
            else:
                described[name] = {"fixed": float(value)}
        return described


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs. Built from flags in ``trainers/tune.py``.

    ``base`` holds the settings every trial shares; its tuned fields, ``model_dir`` and
    ``epochs`` are replaced per trial (``epochs`` stays the length of the --train_best run).
    ``base.data.validation_examples`` images at the end of the training set are the validation
    split.
    For Hyperband, ``epochs_per_trial`` is its ``max_epochs`` and ``max_trials`` still caps the
    number of trials.
    """

    tuner_dir: str
    base: TrainConfig
    space: SearchSpace = dataclasses.field(default_factory=SearchSpace)
    tuner: str = "random"
    max_trials: int = 10
    epochs_per_trial: int = 1
    objective: str = "robust"
    combined_weight: float = 0.5
    hyperband_factor: int = 3

    @property
    def objective_name(self) -> str:
        """The metric that is maximized: val_accuracy, val_robust_accuracy or val_combined."""
        return OBJECTIVES[self.objective]

    def validate(self) -> None:
        """Raises ValueError naming the first bad field (messages start with the flag name)."""
        self.space.validate()
        self.base.validate()
        validation.choice("tuner", self.tuner, TUNERS)
        validation.choice("objective", self.objective, OBJECTIVES)
        validation.number("combined_weight", self.combined_weight, low=0, high=1)
        validation.integer("max_trials", self.max_trials, minimum=1)
        validation.integer("epochs_per_trial", self.epochs_per_trial, minimum=1)
        validation.integer("hyperband_factor", self.hyperband_factor, minimum=2)
        validation.integer("validation_examples", self.base.data.validation_examples, minimum=1)
        if not self.tuner_dir:
            raise ValueError("tuner_dir must be a directory path, got an empty string")

    def settings(self) -> dict:
        """What ``search.json`` holds: the settings a rerun of the search must repeat."""
        shared = {
            name: value for name, value in self.base.flat().items() if name not in _RERUN_MAY_CHANGE
        }
        settings = {
            "tuner": self.tuner,
            "objective": self.objective,
            "combined_weight": self.combined_weight,
            "epochs_per_trial": self.epochs_per_trial,
            "search_space": self.space.to_dict(),
            "trial_config": shared,
        }
        if self.tuner == "hyperband":
            settings["hyperband_factor"] = self.hyperband_factor
        return settings

    def trial_config(self, values: dict, *, epochs: int, model_dir: str) -> TrainConfig:
        """The validated TrainConfig of a trial with the tuned ``values`` (a dict over TUNED).

        Trials evaluate on the validation split after every epoch (a search never reads the
        test set) and skip the per-epoch robust evaluation (``eval_robust_examples=0``): they
        are scored once, after training, on the whole validation split.
        """
        config = self.base.replace(
            **{name: float(values[name]) for name in TUNED},
            epochs=int(epochs),
            model_dir=model_dir,
            eval_robust_examples=0,
            eval_split="validation",
        )
        config.validate()
        return config


def trial_metrics(clean_accuracy: float, robust_accuracy: float, combined_weight: float) -> dict:
    """The metrics a trial reports, from its validation accuracies (fractions in [0, 1])."""
    return {
        "val_accuracy": float(clean_accuracy),
        "val_robust_accuracy": float(robust_accuracy),
        "val_combined": float(
            combined_weight * robust_accuracy + (1.0 - combined_weight) * clean_accuracy
        ),
    }


def best_config(search: SearchConfig, best: dict, **overrides) -> TrainConfig:
    """The validated TrainConfig of the best trial for a full-length run: ``search.base`` (its
    full ``epochs``) with the best values, trained on the whole training set (the validation
    split is folded back in), then ``overrides`` (at least ``model_dir``)."""
    config = search.base.replace(
        **{name: float(best["hyperparameters"][name]) for name in TUNED},
        validation_examples=0,
        **overrides,
    )
    config.validate()
    return config
