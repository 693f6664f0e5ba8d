r"""Searches alpha, sigma_0, init_s and the learning rate with KerasTuner.

  python -m trainers.tune --data_dir=../shared/data/cifar-10-batches-bin --model=vgg11 \
      --width_multiplier=0.0625 --max_train_examples=512 --validation_examples=128 \
      --batch_size=16 --train_pgd_steps=2 --eval_pgd_steps=5 --eval_num_samples=2 \
      --tuner=random --max_trials=2 --epochs_per_trial=1 --tuner_dir=runs/tune_demo
  python -m trainers.tune ... --fix_alpha=0.1 --sigma_0_min=0.02 --objective=combined
  python -m trainers.tune ... --train_best --epochs=200

Every trial trains with the shared training flags (trainers.flags) and the trial's values for
--epochs_per_trial epochs (Hyperband: its own budget, at most that) on the training set less its
last --validation_examples images, and is scored on those held-out images: ensemble accuracy
(val_accuracy), ensemble accuracy under PGD-<eval_pgd_steps> at --train_eps
(val_robust_accuracy), or their weighted sum (val_combined). The test set is never read. The
end of every search writes best_hyperparameters.json and summary.md into --tuner_dir.

Rerunning with the same --tuner_dir resumes: finished trials are kept, a trial that was
interrupted runs again from its checkpoint, and a larger --max_trials runs more trials.
--train_best then retrains the best values for the full --epochs on the whole training set
into --model_dir (default <tuner_dir>/best) and exports it like trainers.main.

The tuned values are set by --fix_<name> or --<name>_min/--<name>_max, never by --alpha,
--sigma_0, --init_s or --learning_rate.

On several machines (KerasTuner's distributed mode): run the same command everywhere with
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (where the chief serves the oracle) and
KERASTUNER_TUNER_ID=chief on one process, tuner0, tuner1, ... on the workers; --tuner_dir must
be one directory all of them share. The workers run the trials; the chief writes the summary
(and runs --train_best). A killed worker restarted with the same KERASTUNER_TUNER_ID resumes
its trial from the trial's checkpoint:

  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 KERASTUNER_TUNER_ID=chief \
      python -m trainers.tune --tuner_dir=/shared/tune ...
  KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 KERASTUNER_TUNER_ID=tuner0 \
      python -m trainers.tune --tuner_dir=/shared/tune ...
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)

# isort: split

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

from trainers import flags as training_flags  # noqa: E402
from trainers.main import run_training  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the shared training flags and those of the search."""
    from tfp_advbnn import tuning

    training_flags.define_training_flags()
    flags.DEFINE_enum("tuner", "random", list(tuning.TUNERS), "KerasTuner search algorithm.")
    flags.DEFINE_integer("max_trials", 10, "Most trials the search runs in all (>= 1).")
    flags.DEFINE_string(
        "tuner_dir", None, "Where the search lives (default runs/tune_<dataset>_<model>_<defense>)."
    )
    flags.DEFINE_integer(
        "epochs_per_trial", 5, "Epochs each trial trains (Hyperband: its max_epochs), >= 1."
    )
    flags.DEFINE_integer(
        "validation_examples",
        1000,
        "Training images held out to score trials (>= 1); capped at a fifth of the training "
        "images.",
    )
    flags.DEFINE_enum(
        "objective",
        "robust",
        list(tuning.OBJECTIVES),
        "Maximized metric: val_accuracy (clean), val_robust_accuracy (robust), or "
        "combined_weight * robust + (1 - combined_weight) * clean (combined).",
    )
    flags.DEFINE_float("combined_weight", 0.5, "Weight of the robust accuracy in [0, 1].")
    flags.DEFINE_integer("hyperband_factor", 3, "Hyperband's reduction factor (>= 2).")
    flags.DEFINE_bool("train_best", False, "Retrain the best values for the full --epochs.")
    flags.DEFINE_string(
        "model_dir", None, "Where --train_best trains and exports (default <tuner_dir>/best)."
    )
    flags.DEFINE_integer(
        "export_num_samples", 10, "Weight draws averaged by the --train_best SavedModel."
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps", 0, "Also checkpoint every N steps within an epoch (0: off)."
    )
    defaults = tuning.SearchSpace()
    for name in tuning.TUNED:
        low, high = getattr(defaults, name)
        flags.DEFINE_float(f"fix_{name}", None, f"Fix {name} to this value instead of tuning it.")
        flags.DEFINE_float(f"{name}_min", low, f"Lower bound of the log-uniform {name} (> 0).")
        flags.DEFINE_float(f"{name}_max", high, f"Upper bound of the log-uniform {name}.")


def search_space_from_flags():
    """The SearchSpace the --fix_<name> and --<name>_min/--<name>_max flags describe."""
    from tfp_advbnn import tuning

    values = {}
    for name in tuning.TUNED:
        if FLAGS[name].present:
            raise app.UsageError(
                f"--{name} is tuned by this search: fix it with --fix_{name}, or bound it with "
                f"--{name}_min and --{name}_max"
            )
        fixed = FLAGS[f"fix_{name}"].value
        bounded = FLAGS[f"{name}_min"].present or FLAGS[f"{name}_max"].present
        if fixed is not None and bounded:
            raise app.UsageError(f"--fix_{name} and --{name}_min/--{name}_max exclude each other")
        values[name] = (
            fixed if fixed is not None else (FLAGS[f"{name}_min"].value, FLAGS[f"{name}_max"].value)
        )
    return tuning.SearchSpace(**values)


def search_config_from_flags():
    """A validated SearchConfig from the parsed flags (the validation count not yet capped)."""
    from tfp_advbnn import tuning, validation

    space = search_space_from_flags()
    try:
        role = tuning.distributed_role()
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    tuner_dir = FLAGS.tuner_dir or os.path.join(
        "runs", f"tune_{FLAGS.dataset}_{training_flags.model_name()}_{FLAGS.defense}"
    )
    try:
        # Before the TrainConfig's check, which takes 0 for "no validation split".
        validation.integer("validation_examples", FLAGS.validation_examples, minimum=1)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None
    search = tuning.SearchConfig(
        tuner_dir=tuner_dir,
        base=training_flags.config_from_flags(
            model_dir=tuner_dir,
            validation_examples=FLAGS.validation_examples,
            checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        ),
        space=space,
        tuner=FLAGS.tuner,
        max_trials=FLAGS.max_trials,
        epochs_per_trial=FLAGS.epochs_per_trial,
        objective=FLAGS.objective,
        combined_weight=FLAGS.combined_weight,
        hyperband_factor=FLAGS.hyperband_factor,
    )
    try:
        search.validate()
        validation.integer("export_num_samples", FLAGS.export_num_samples, minimum=1)
        tuning.check_tuner_available(search.tuner)
        tuning.check_distributed(search, role)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None
    return search


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfp_advbnn import tuning

    search = search_config_from_flags()
    requested = search.base.data.validation_examples
    search, image_data = tuning.load_search_data(search)
    if search.base.data.validation_examples < requested:
        print(
            f"Holding out {search.base.data.validation_examples} validation images instead of "
            f"{requested}: at most {tuning.MAX_VALIDATION_FRACTION:.0%} of the training images.",
            flush=True,
        )
    role = tuning.distributed_role()
    if role == "chief":
        print(f"Chief: serving the oracle at {tuning.oracle_address()}", flush=True)
    elif role == "worker":
        print(
            f"Worker {os.environ[tuning.TUNER_ID_ENV]}: taking trials from the chief at "
            f"{tuning.oracle_address()}",
            flush=True,
        )
    try:
        best = tuning.run_search(search, image_data)
    except KeyboardInterrupt as interrupt:
        message = str(interrupt) or "rerun the same command to resume the search"
        print(f"Interrupted: {message}", file=sys.stderr)
        return 130
    if best is None:
        print(
            f"Worker {os.environ[tuning.TUNER_ID_ENV]}: no trial left; the chief writes the "
            "summary" + (" and runs --train_best" if FLAGS.train_best else ""),
            flush=True,
        )
        return 0
    print(
        f"Best: trial {best['trial_id']}, {best['objective']}={best['objective_value']:.4f}, "
        f"{best['hyperparameters']} (in {os.path.join(search.tuner_dir, tuning.BEST_FILENAME)})",
        flush=True,
    )
    if not FLAGS.train_best:
        return 0
    config = tuning.best_config(
        search,
        best,
        model_dir=FLAGS.model_dir or os.path.join(search.tuner_dir, "best"),
        export_num_samples=FLAGS.export_num_samples,
    )
    return run_training(config)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
