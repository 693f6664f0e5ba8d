"""The KerasTuner tuner whose trials are runs of ``training.Trainer``, and the search loop:
the data shared by the trials, the oracle, the settings a rerun must repeat, and the run, in
one process or as the chief or a worker of a distributed search (``tuning.distributed``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil

import keras_tuner as kt
import tensorflow as tf
import tf_keras

from tfp_advbnn import data, run_dir, training
from tfp_advbnn.tuning import distributed
from tfp_advbnn.tuning.search_config import METRICS, TUNED, SearchConfig, trial_metrics
from tfp_advbnn.tuning.summaries import (
    BEST_FILENAME,
    SUMMARY_FILENAME,
    best_record,
    summary_markdown,
)

SEARCH_FILENAME = "search.json"
TRIAL_MODEL_DIRNAME = "model"

# At most this fraction of the training images is held out for validation.
MAX_VALIDATION_FRACTION = 0.2


def load_search_data(search: SearchConfig) -> tuple[SearchConfig, data.ImageData]:
    """Loads the data once for all trials, with the validation split carved out.

    The requested ``search.base.data.validation_examples`` is capped at MAX_VALIDATION_FRACTION of
    the training images (after ``max_train_examples``), so that small subsets still train.

    Returns:
      ``search`` with the validation count actually used, and the ImageData of every trial.
    Raises:
      ValueError: when the training set is too small to hold out even one image.
    """
    everything = training.load_data_for(search.base.replace(validation_examples=0))
    available = everything.spec.num_train
    count = min(search.base.data.validation_examples, int(available * MAX_VALIDATION_FRACTION))
    if count < 1:
        raise ValueError(
            f"validation_examples: {available} training images are too few to hold out a "
            f"validation split of at most {MAX_VALIDATION_FRACTION:.0%}"
        )
    base = search.base.replace(validation_examples=count)
    return dataclasses.replace(search, base=base), training.load_data_for(base)


def make_oracle(search: SearchConfig) -> kt.Oracle:
    """The KerasTuner oracle of ``search.tuner``, maximizing ``search.objective_name``."""
    common = dict(
        objective=kt.Objective(search.objective_name, "max"),
        hyperparameters=search.space.hyperparameters(),
        # KerasTuner replaces a seed of 0 by a random one; +1 keeps --seed=0 reproducible.
        seed=search.base.runtime.seed + 1,
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


def check_tuner_available(tuner: str) -> None:
    """Raises ValueError when the oracle of ``tuner`` needs a package that is not installed
    (``bayesian``: scikit-learn, for KerasTuner's Gaussian process)."""
    if tuner == "bayesian":
        try:
            importlib.import_module("sklearn.gaussian_process")
        except ImportError as error:
            raise ValueError(
                f"tuner=bayesian needs scikit-learn (KerasTuner's Gaussian process): {error}"
            ) from None


def check_distributed(search: SearchConfig, role: str | None) -> None:
    """Raises ValueError when ``search`` cannot run in the distributed ``role``: the trials of a
    tuning worker may use the GPUs of its machine (``strategy=mirrored``), but not a
    ``multi_worker`` cluster, whose every process would report the same trial."""
    if role is not None and search.base.runtime.strategy == "multi_worker":
        raise ValueError(
            "strategy='multi_worker' cannot run the trials of a distributed search "
            f"({distributed.TUNER_ID_ENV}={os.environ.get(distributed.TUNER_ID_ENV)!r}); use "
            "strategy=mirrored within each worker"
        )


class AdvBnnTuner(kt.Tuner):
    """A KerasTuner tuner whose trials are runs of ``training.Trainer``.

    In a distributed search (``tuning.distributed``) the chief only serves the oracle and the
    workers run the trials; they must share ``tuner_dir`` (one filesystem). A worker waits for
    the chief, then checks the settings against the chief's ``search.json``.

    Args:
      search: the validated search settings; ``search.tuner_dir`` is KerasTuner's project dir.
      image_data: the data of every trial, from ``load_search_data(search)``.
    Raises:
      ValueError: when ``tuner_dir`` holds a search with other settings, ``image_data`` has
        no validation split of ``search.base.data.validation_examples`` images, the
        KERASTUNER_* variables are inconsistent, or a worker finds no ``search.json`` of the
        chief in ``tuner_dir``.
    """

    def __init__(self, search: SearchConfig, image_data: data.ImageData):
        search.validate()
        self.role = distributed.distributed_role()
        check_distributed(search, self.role)
        if image_data.spec.num_validation != search.base.data.validation_examples:
            raise ValueError(
                f"image_data has {image_data.spec.num_validation} validation images but the "
                f"search expects validation_examples={search.base.data.validation_examples}; load "
                "it with load_search_data"
            )
        self.search_config = search
        self.image_data = image_data
        if self.role != "worker":
            _check_or_write_settings(search)
        directory, project_name = os.path.split(os.path.abspath(search.tuner_dir))
        super().__init__(
            oracle=make_oracle(search),
            directory=directory,
            project_name=project_name,
            overwrite=False,
        )
        if self.role == "worker":
            # Blocks until the chief answers; it writes search.json before it serves.
            self.oracle.get_space()
            _check_or_write_settings(search, write=False)

    def search(self, *fit_args, **fit_kwargs):
        """Runs trials until the oracle has none left; the chief serves the oracle instead
        (``distributed.serve_oracle``) until every worker is done."""
        if self.role != "chief":
            super().search(*fit_args, **fit_kwargs)
            return
        self.oracle.verbose = fit_kwargs.get("verbose", 1)
        self.save()
        distributed.serve_oracle(self.oracle)
        # KerasTuner's end_trial saves the oracle before it drops the trial from the ongoing
        # ones; a chief restarted on that state would queue a finished trial for a retry.
        self.save()

    def trial_model_dir(self, trial_id: str) -> str:
        """Where the Trainer of trial ``trial_id`` keeps its run: one directory per trial id, so
        workers never share one (the oracle gives a trial to one worker at a time)."""
        return os.path.join(self.project_dir, f"trial_{trial_id}", TRIAL_MODEL_DIRNAME)

    def run_trial(self, trial, verbose=1) -> dict:
        """Trains the trial's configuration and returns its validation metrics.

        Hyperband's ``tuner/epochs`` sets the trial's epochs; a trial continuing
        ``tuner/trial_id`` starts from a copy of that trial's checkpoints, so it trains only
        the epochs after ``tuner/initial_epoch``. A trial run again (interrupted, or its worker
        killed and restarted with the same tuner id) resumes from its latest checkpoint.
        ``verbose`` is the value given to ``search()``; when true the Trainer prints its
        per-epoch metrics. Each run appends its ``start`` and ``end`` to the trial's
        ``runs.jsonl``.
        """
        values = trial.hyperparameters.values
        model_dir = self.trial_model_dir(trial.trial_id)
        trial_dir = os.path.dirname(model_dir)
        distributed.log_trial_run(trial_dir, "start", self.tuner_id)
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
        results = trainer.task.evaluate(self.image_data.spec.num_validation, split="validation")
        metrics = trial_metrics(
            results["validation_accuracy"],
            results["validation_robust_accuracy"],
            self.search_config.combined_weight,
        )
        distributed.log_trial_run(trial_dir, "end", self.tuner_id)
        return metrics

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


def _check_or_write_settings(search: SearchConfig, write: bool = True) -> None:
    """Writes search.json, or checks that a rerun (or a worker) repeats the settings found
    there. With ``write=False`` (a worker) a missing search.json is an error: the chief writes
    it into the shared tuner_dir."""
    path = os.path.join(search.tuner_dir, SEARCH_FILENAME)
    settings = search.settings()
    if not write and not os.path.exists(path):
        raise ValueError(
            f"tuner_dir {search.tuner_dir} has no {SEARCH_FILENAME}, though the chief at "
            f"{distributed.oracle_address()} is serving: the chief and the workers must share "
            "tuner_dir (one filesystem, the same path)"
        )
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
    run_dir.write_text_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


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
    target = os.path.join(model_dir, run_dir.CHECKPOINT_DIRNAME)
    if tf.train.latest_checkpoint(target) is not None:
        return
    source = os.path.join(previous_model_dir, run_dir.CHECKPOINT_DIRNAME)
    if tf.train.latest_checkpoint(source) is None:
        raise FileNotFoundError(f"no checkpoint to continue from in {source}")
    # Staged and renamed, so that an interrupted copy is never taken for a checkpoint.
    staging = target + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    run_dir.replace_dir(staging, target)


def run_search(
    search: SearchConfig, image_data: data.ImageData, verbose: bool = True
) -> dict | None:
    """Runs (or resumes) the search, then writes ``best_hyperparameters.json`` and
    ``summary.md`` into ``search.tuner_dir`` and prints the summary.

    In a distributed search (``tuning.distributed``) the chief serves the oracle until the
    workers are done, then writes the summary; a worker runs trials until none is left and
    writes no summary.

    Returns:
      The best trial: ``trial_id``, ``objective``, ``objective_value``, ``hyperparameters``,
      ``epochs``, ``metrics`` and ``model_dir`` (the content of best_hyperparameters.json);
      None on a worker.
    Raises:
      RuntimeError: when no trial completed (summary.md still lists the trials).

    Examples:
        >>> search, image_data = load_search_data(search)
        >>> best = run_search(search, image_data)  # KERASTUNER_* unset: one process
        >>> best["hyperparameters"]["alpha"]
    """
    tuner = AdvBnnTuner(search, image_data)
    tuner.search(verbose=1 if verbose else 0)
    if tuner.role == "worker":
        return None
    records = tuner.trial_records()
    best = best_record(records, search.objective_name)
    summary = summary_markdown(records, search, best)
    run_dir.write_text_atomically(os.path.join(search.tuner_dir, SUMMARY_FILENAME), summary)
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
    run_dir.write_text_atomically(
        os.path.join(search.tuner_dir, BEST_FILENAME),
        json.dumps(result, indent=2, sort_keys=True) + "\n",
    )
    return result
