"""Hyperparameter search with KerasTuner on our own training loop.

KerasTuner 1.4.8 is multi-backend Keras 3 and our models are tf_keras models, so KerasTuner's
HyperModel / ``model.fit`` / ``save_weights`` path is never used. KerasTuner supplies the oracles
(random search, Bayesian optimization, Hyperband) and the bookkeeping of trials; each trial is a
run of ``training.Trainer`` in its own model_dir, and ``AdvBnnTuner.run_trial`` returns its
validation metrics:

* ``val_accuracy``: ensemble accuracy (paper eq. 18, ``eval_num_samples`` weight draws);
* ``val_robust_accuracy``: ensemble accuracy under PGD-``eval_pgd_steps`` at ``train_eps``
  (L-inf, [0, 1] pixel scale) on every validation image;
* ``val_combined``: ``w * val_robust_accuracy + (1 - w) * val_accuracy``.

All three are measured on a validation split carved from the end of the training set; a search
never reads the test set. Every trial uses the same seed, so trials differ only in their
hyperparameters.

Layout of ``tuner_dir``:

* ``search.json``: the settings of the search; a rerun must match them.
* ``oracle.json``, ``tuner0.json``: KerasTuner's state.
* ``trial_<id>/trial.json``: KerasTuner's record of a trial (values, metrics, status).
* ``trial_<id>/model/``: the trial's run (config.json, metrics.jsonl, checkpoints/, ...).
* ``best_hyperparameters.json`` and ``summary.md``: written at the end of every search.

A rerun with the same ``tuner_dir`` reloads the search: finished trials are kept, a trial left
running by an interruption is run again (its Trainer resumes from the trial's checkpoint), and
``max_trials`` may be raised to run more.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import keras_tuner as kt
import tensorflow as tf
import tf_keras

from tfp_advbnn import data, training

TUNED = ("alpha", "sigma_0", "init_s", "learning_rate")
TUNERS = ("random", "bayesian", "hyperband")
OBJECTIVES = {"clean": "val_accuracy", "robust": "val_robust_accuracy", "combined": "val_combined"}
METRICS = ("val_accuracy", "val_robust_accuracy", "val_combined")

SEARCH_FILENAME = "search.json"
BEST_FILENAME = "best_hyperparameters.json"
SUMMARY_FILENAME = "summary.md"
TRIAL_MODEL_DIRNAME = "model"

# At most this fraction of the training images is held out for validation.
MAX_VALIDATION_FRACTION = 0.2

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
    init_s: float | Bounds = (0.01, 0.3)
    learning_rate: float | Bounds = (1e-4, 1e-2)

    def validate(self) -> None:
        """Raises ValueError naming the first bad value: bounds need 0 < low < high < inf; a
        fixed alpha must be >= 0 (0 turns the KL term off) and the other fixed values > 0."""
        for name in TUNED:
            value = getattr(self, name)
            if isinstance(value, tuple):
                low, high = value
                if not (0 < low < high and math.isfinite(high)):
                    raise ValueError(
                        f"{name}_min={low} must be > 0 and below {name}_max={high} (finite)"
                    )
            elif not (math.isfinite(value) and (value >= 0 if name == "alpha" else value > 0)):
                bound = ">= 0" if name == "alpha" else "> 0"
                raise ValueError(f"fix_{name} must be a finite number {bound}, got {value}")

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
    ``base.validation_examples`` images at the end of the training set are the validation split.
    For Hyperband, ``epochs_per_trial`` is its ``max_epochs`` and ``max_trials`` still caps the
    number of trials.
    """

    tuner_dir: str
    base: training.TrainConfig
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
        if self.tuner not in TUNERS:
            raise ValueError(f"tuner must be one of {list(TUNERS)}, got {self.tuner!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.combined_weight <= 1:
            raise ValueError(f"combined_weight must be in [0, 1], got {self.combined_weight}")
        at_least = {
            "max_trials": (self.max_trials, 1),
            "epochs_per_trial": (self.epochs_per_trial, 1),
            "hyperband_factor": (self.hyperband_factor, 2),
            "validation_examples": (self.base.validation_examples, 1),
        }
        for name, (value, low) in at_least.items():
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        if not self.tuner_dir:
            raise ValueError("tuner_dir must be a directory path, got an empty string")

    def settings(self) -> dict:
        """What ``search.json`` holds: the settings a rerun of the search must repeat."""
        shared = {
            name: value
            for name, value in dataclasses.asdict(self.base).items()
            if name not in _RERUN_MAY_CHANGE
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

    def trial_config(self, values: dict, *, epochs: int, model_dir: str) -> training.TrainConfig:
        """The validated TrainConfig of a trial with the tuned ``values`` (a dict over TUNED).

        Trials evaluate on the validation split after every epoch (a search never reads the
        test set) and skip the per-epoch robust evaluation (``eval_robust_examples=0``): they
        are scored once, after training, on the whole validation split.
        """
        config = dataclasses.replace(
            self.base,
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


def load_search_data(search: SearchConfig) -> tuple[SearchConfig, data.ImageData]:
    """Loads the data once for all trials, with the validation split carved out.

    The requested ``search.base.validation_examples`` is capped at MAX_VALIDATION_FRACTION of
    the training images (after ``max_train_examples``), so that small subsets still train.

    Returns:
      ``search`` with the validation count actually used, and the ImageData of every trial.
    Raises:
      ValueError: when the training set is too small to hold out even one image.
    """
    everything = training.load_data_for(dataclasses.replace(search.base, validation_examples=0))
    available = everything.spec.num_train
    count = min(search.base.validation_examples, int(available * MAX_VALIDATION_FRACTION))
    if count < 1:
        raise ValueError(
            f"validation_examples: {available} training images are too few to hold out a "
            f"validation split of at most {MAX_VALIDATION_FRACTION:.0%}"
        )
    base = dataclasses.replace(search.base, validation_examples=count)
    return dataclasses.replace(search, base=base), training.load_data_for(base)


def make_oracle(search: SearchConfig) -> kt.Oracle:
    """The KerasTuner oracle of ``search.tuner``, maximizing ``search.objective_name``."""
    common = dict(
        objective=kt.Objective(search.objective_name, "max"),
        hyperparameters=search.space.hyperparameters(),
        # KerasTuner replaces a seed of 0 by a random one; +1 keeps --seed=0 reproducible.
        seed=search.base.seed + 1,
    )
    if search.tuner == "random":
        return kt.oracles.RandomSearchOracle(max_trials=search.max_trials, **common)
    if search.tuner == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=search.max_trials, **common)
    oracle = kt.oracles.HyperbandOracle(
        max_epochs=search.epochs_per_trial,
        factor=search.hyperband_factor,
        hyperband_iterations=1,
        **common,
    )
    # HyperbandOracle takes no max_trials argument, but its base class honours the attribute.
    oracle.max_trials = search.max_trials
    return oracle


class AdvBnnTuner(kt.Tuner):
    """A KerasTuner tuner whose trials are runs of ``training.Trainer``.

    Args:
      search: the validated search settings; ``search.tuner_dir`` is KerasTuner's project dir.
      image_data: the data of every trial, from ``load_search_data(search)``.
    Raises:
      ValueError: when ``tuner_dir`` holds a search with other settings, or ``image_data`` has
        no validation split of ``search.base.validation_examples`` images.
    """

    def __init__(self, search: SearchConfig, image_data: data.ImageData):
        search.validate()
        if image_data.spec.num_validation != search.base.validation_examples:
            raise ValueError(
                f"image_data has {image_data.spec.num_validation} validation images but the "
                f"search expects validation_examples={search.base.validation_examples}; load "
                "it with load_search_data"
            )
        self.search_config = search
        self.image_data = image_data
        _check_or_write_settings(search)
        directory, project_name = os.path.split(os.path.abspath(search.tuner_dir))
        super().__init__(
            oracle=make_oracle(search),
            directory=directory,
            project_name=project_name,
            overwrite=False,
        )

    def trial_model_dir(self, trial_id: str) -> str:
        """Where the Trainer of trial ``trial_id`` keeps its run."""
        return os.path.join(self.project_dir, f"trial_{trial_id}", TRIAL_MODEL_DIRNAME)

    def run_trial(self, trial, verbose=1) -> dict:
        """Trains the trial's configuration and returns its validation metrics.

        Hyperband's ``tuner/epochs`` sets the trial's epochs; a trial continuing
        ``tuner/trial_id`` starts from a copy of that trial's checkpoints, so it trains only
        the epochs after ``tuner/initial_epoch``. ``verbose`` is the value given to
        ``search()``; when true the Trainer prints its per-epoch metrics.
        """
        values = trial.hyperparameters.values
        model_dir = self.trial_model_dir(trial.trial_id)
        if "tuner/trial_id" in values:
            _start_from_checkpoint(self.trial_model_dir(values["tuner/trial_id"]), model_dir)
        config = self.search_config.trial_config(
            values,
            epochs=values.get("tuner/epochs", self.search_config.epochs_per_trial),
            model_dir=model_dir,
        )
        # Frees the previous trial's Keras graph state before this trial builds its model.
        tf_keras.backend.clear_session()
        trainer = training.Trainer(config, image_data=self.image_data)
        # Only the best configuration is exported (--train_best); a trial is restored from
        # its checkpoint, and an export costs seconds of tracing.
        trainer.fit(verbose=bool(verbose), export=False)
        results = trainer.evaluate(self.image_data.spec.num_validation, split="validation")
        return trial_metrics(
            results["validation_accuracy"],
            results["validation_robust_accuracy"],
            self.search_config.combined_weight,
        )

    def save_model(self, trial_id, model, step=0):
        """Saves nothing: a trial's model is the tf_keras checkpoint its Trainer wrote into
        ``trial_model_dir(trial_id)``, never a Keras-3 weights file."""
        del trial_id, model, step

    def load_model(self, trial):
        """The tf_keras model of ``trial``, restored from its latest checkpoint."""
        model, _, _ = training.restore_model(self.trial_model_dir(trial.trial_id))
        return model

    def trial_records(self) -> list[dict]:
        """One dict per trial, in trial order: ``trial_id``, ``status``, ``epochs``,
        ``hyperparameters`` (over TUNED), ``metrics`` (over METRICS; None where not reported)
        and ``model_dir``."""
        records = []
        for trial_id, trial in self.oracle.trials.items():
            values = trial.hyperparameters.values
            records.append(
                {
                    "trial_id": trial_id,
                    "status": trial.status,
                    "epochs": int(values.get("tuner/epochs", self.search_config.epochs_per_trial)),
                    "hyperparameters": {name: float(values[name]) for name in TUNED},
                    "metrics": {
                        name: (
                            float(trial.metrics.get_last_value(name))
                            if trial.metrics.exists(name)
                            else None
                        )
                        for name in METRICS
                    },
                    "model_dir": self.trial_model_dir(trial_id),
                }
            )
        return sorted(records, key=lambda record: int(record["trial_id"]))


def _check_or_write_settings(search: SearchConfig) -> None:
    """Writes search.json, or checks that a rerun repeats the settings found there."""
    path = os.path.join(search.tuner_dir, SEARCH_FILENAME)
    settings = search.settings()
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        flat_existing, flat_now = _flatten(existing), _flatten(settings)
        changed = sorted(
            key
            for key in set(flat_existing) | set(flat_now)
            if flat_existing.get(key) != flat_now.get(key)
        )
        if changed:
            details = ", ".join(
                f"{key}: {flat_existing.get(key)!r} there vs {flat_now.get(key)!r} now"
                for key in changed
            )
            raise ValueError(
                f"tuner_dir {search.tuner_dir} holds a search with other settings ({details}); "
                "use a new --tuner_dir or the original flags"
            )
        return
    training.write_text_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _flatten(settings: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict with dotted keys, so that a difference names its setting."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _start_from_checkpoint(previous_model_dir: str, model_dir: str) -> None:
    """Copies the checkpoints of ``previous_model_dir`` into ``model_dir`` unless it already has
    its own (a retried trial), so that its Trainer resumes at the previous trial's epoch."""
    target = os.path.join(model_dir, training.CHECKPOINT_DIRNAME)
    if tf.train.latest_checkpoint(target) is not None:
        return
    source = os.path.join(previous_model_dir, training.CHECKPOINT_DIRNAME)
    if tf.train.latest_checkpoint(source) is None:
        raise FileNotFoundError(f"no checkpoint to continue from in {source}")
    # Staged and renamed, so that an interrupted copy is never taken for a checkpoint.
    staging = target + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


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
        + f"), {len(records)} trials, validation split of {search.base.validation_examples} "
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


def run_search(search: SearchConfig, image_data: data.ImageData, verbose: bool = True) -> dict:
    """Runs (or resumes) the search, then writes ``best_hyperparameters.json`` and
    ``summary.md`` into ``search.tuner_dir`` and prints the summary.

    Returns:
      The best trial: ``trial_id``, ``objective``, ``objective_value``, ``hyperparameters``,
      ``epochs``, ``metrics`` and ``model_dir`` (the content of best_hyperparameters.json).
    Raises:
      RuntimeError: when no trial completed (summary.md still lists the trials).
    """
    tuner = AdvBnnTuner(search, image_data)
    tuner.search(verbose=1 if verbose else 0)
    records = tuner.trial_records()
    best = best_record(records, search.objective_name)
    summary = summary_markdown(records, search, best)
    training.write_text_atomically(os.path.join(search.tuner_dir, SUMMARY_FILENAME), summary)
    print(summary, flush=True)
    if best is None:
        raise RuntimeError(f"no trial of the search in {search.tuner_dir} completed")
    result = {
        "trial_id": best["trial_id"],
        "objective": search.objective_name,
        "objective_value": best["metrics"][search.objective_name],
        "hyperparameters": best["hyperparameters"],
        "epochs": best["epochs"],
        "metrics": best["metrics"],
        "model_dir": best["model_dir"],
    }
    training.write_text_atomically(
        os.path.join(search.tuner_dir, BEST_FILENAME),
        json.dumps(result, indent=2, sort_keys=True) + "\n",
    )
    return result


def best_config(search: SearchConfig, best: dict, **overrides) -> training.TrainConfig:
    """The validated TrainConfig of the best trial for a full-length run: ``search.base`` (its
    full ``epochs``) with the best values, trained on the whole training set (the validation
    split is folded back in), then ``overrides`` (at least ``model_dir``)."""
    config = dataclasses.replace(
        search.base,
        **{name: float(best["hyperparameters"][name]) for name in TUNED},
        validation_examples=0,
        **overrides,
    )
    config.validate()
    return config
