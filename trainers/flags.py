"""Command-line flags generated from the settings declared in ``tfp_advbnn.config``.

Each field of a config becomes the flag of its flat name, with its help text, type, choices
and default; a setting whose default comes from the recipe gets a None default, filled from
``training.recipe_defaults`` for the run's --dataset and --defense. A flag given to a defense
that does not read it is refused, not ignored. Library errors name the config field by its path
(``objective.alpha``); they are reported here with the flag's name (``--alpha``).
"""

from __future__ import annotations

import re

from absl import app, flags

FLAGS = flags.FLAGS

# Settings of a single run (trainers.main) that the tuner defines its own way or fixes.
RUN_ONLY = (
    "validation_examples",
    "export_num_samples",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_split",
)


def define_flags(config_cls, *, only=None, exclude=(), renames=None) -> None:
    """Defines a flag per setting of ``config_cls`` (all, or those in ``only``).

    Args:
      config_cls: ``config.TrainConfig`` or ``config.EvalConfig``.
      only, exclude: flat names to define, or to leave out.
      renames: flat name -> flag name, where the command line has kept an older name.
    """
    from tfp_advbnn import config

    renames = renames or {}
    for setting in config.settings_of(config_cls):
        if (only is not None and setting.name not in only) or setting.name in exclude:
            continue
        name = renames.get(setting.name, setting.name)
        default = None if setting.recipe else setting.default
        kind = setting.type.replace(" | None", "")
        if setting.choices is not None:
            flags.DEFINE_enum(name, default, list(setting.choices), setting.help)
        elif kind == "bool":
            flags.DEFINE_bool(name, default, setting.help)
        elif kind == "int":
            flags.DEFINE_integer(name, default, setting.help)
        elif kind == "float":
            flags.DEFINE_float(name, default, setting.help)
        elif kind.startswith("tuple["):
            flags.DEFINE_list(name, None, setting.help)
        else:
            flags.DEFINE_string(name, default, setting.help)


def define_training_flags() -> None:
    """Defines the TrainConfig flags shared by trainers.main and trainers.tune."""
    from tfp_advbnn import config

    define_flags(config.TrainConfig, exclude=RUN_ONLY)


def flag_error(error: ValueError, config_cls, renames=None) -> app.UsageError:
    """``error`` of a config check, with the field it names replaced by its flag."""
    renames = renames or {}
    text = str(error)
    match = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)*)\b", text)
    if match:
        name = match.group(1).split(".")[-1]
        if name in config_cls.flat_names():
            return app.UsageError(f"--{renames.get(name, name)}{text[match.end() :]}")
    return app.UsageError(text)


def check_flags_apply_to_the_defense() -> None:
    """Raises UsageError for a flag given on the command line that the defense does not use."""
    from tfp_advbnn import config

    for setting in config.settings_of(config.TrainConfig):
        defenses = setting.applies_to
        if defenses is None or FLAGS.defense in defenses:
            continue
        if setting.name in FLAGS and FLAGS[setting.name].present:
            raise app.UsageError(
                f"--{setting.name} applies to --defense={' or '.join(defenses)} only; "
                f"--defense={FLAGS.defense} does not use it"
            )


def config_from_flags(**overrides):
    """A validated TrainConfig from the parsed flags, with the recipe's defaults filled in."""
    from tfp_advbnn import config, training

    check_flags_apply_to_the_defense()
    values = {
        name: FLAGS[name].value
        for name in config.TrainConfig.flat_names()
        if name in FLAGS and name not in RUN_ONLY
    }
    values.update(overrides)
    try:
        train_config = config.TrainConfig.from_flat(**training.with_recipe_defaults(values))
        train_config.validate()
    except ValueError as error:
        raise flag_error(error, config.TrainConfig) from None
    return train_config


def model_name() -> str:
    """The architecture of the run: --model, else the dataset's default."""
    from tfp_advbnn import training

    return FLAGS.model or training.recipe_defaults(FLAGS.dataset, FLAGS.defense)["model"]
