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
* ``oracle.json``, ``tuner0.json``: KerasTuner's state (distributed: ``chief.json`` and one
  ``<tuner id>.json`` per worker).
* ``trial_<id>/trial.json``: KerasTuner's record of a trial (values, metrics, status).
* ``trial_<id>/runs.jsonl``: a ``start`` and an ``end`` line per run of the trial (which tuner,
  host and process ran it).
* ``trial_<id>/model/``: the trial's run (config.json, metrics.jsonl, checkpoints/, ...).
* ``best_hyperparameters.json`` and ``summary.md``: written at the end of every search.

A rerun with the same ``tuner_dir`` reloads the search: finished trials are kept, a trial left
running by an interruption is run again (its Trainer resumes from the trial's checkpoint), and
``max_trials`` may be raised to run more.

On several machines, KerasTuner's distributed mode (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``): the chief serves the oracle, the workers
run the trials in the shared ``tuner_dir``, and a worker killed mid-trial and restarted with
the same tuner id resumes its trial from the trial's checkpoint (``distributed``).

Modules: ``search_config`` (what is searched and how trials are scored), ``tuner`` (the
KerasTuner tuner and ``run_search``), ``summaries`` (the best trial and the Markdown table),
``distributed`` (the chief's oracle server, the roles, the per-trial run log).
"""

from tfp_advbnn.tuning.distributed import (
    ORACLE_IP_ENV,
    ORACLE_PORT_ENV,
    RUNS_FILENAME,
    TUNER_ID_ENV,
    distributed_role,
    oracle_address,
    read_trial_runs,
)
from tfp_advbnn.tuning.search_config import (
    METRICS,
    OBJECTIVES,
    TUNED,
    TUNERS,
    Bounds,
    SearchConfig,
    SearchSpace,
    best_config,
    trial_metrics,
)
from tfp_advbnn.tuning.summaries import (
    BEST_FILENAME,
    SUMMARY_FILENAME,
    best_record,
    summary_markdown,
)
from tfp_advbnn.tuning.tuner import (
    MAX_VALIDATION_FRACTION,
    SEARCH_FILENAME,
    TRIAL_MODEL_DIRNAME,
    AdvBnnTuner,
    check_distributed,
    check_tuner_available,
    load_search_data,
    make_oracle,
    run_search,
)

__all__ = [
    "BEST_FILENAME",
    "MAX_VALIDATION_FRACTION",
    "METRICS",
    "OBJECTIVES",
    "ORACLE_IP_ENV",
    "ORACLE_PORT_ENV",
    "RUNS_FILENAME",
    "SEARCH_FILENAME",
    "SUMMARY_FILENAME",
    "TRIAL_MODEL_DIRNAME",
    "TUNED",
    "TUNER_ID_ENV",
    "TUNERS",
    "AdvBnnTuner",
    "Bounds",
    "SearchConfig",
    "SearchSpace",
    "best_config",
    "best_record",
    "check_distributed",
    "check_tuner_available",
    "distributed_role",
    "load_search_data",
    "make_oracle",
    "oracle_address",
    "read_trial_runs",
    "run_search",
    "summary_markdown",
    "trial_metrics",
]
