"""Checkpoint identity and restore: a checkpoint is restored whole into the model it was
written by, or refused; never partially restored into another model.

Every checkpoint of a run records its ``model_identity`` (architecture, width, defense,
posterior, classes, image shape). ``restore_checked`` compares it and restores;
``restore_latest`` falls back from an unreadable checkpoint to the one before it;
``restore_model`` rebuilds a run's model from its model_dir for evaluation and export.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from tfp_advbnn import run_dir
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training.task import build_model_for

# Where ``tf.train.Checkpoint(model_identity=...)`` keeps the identity string.
_IDENTITY_KEY = "model_identity/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointMismatchError(ValueError):
    """No checkpoint of a model_dir fits the model of the run restoring it."""


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoints recorded in ``directory``'s state file, newest first."""
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return []
    return list(reversed(state.all_model_checkpoint_paths))


def model_identity(config: TrainConfig, num_classes: int, image_shape) -> str:
    """What a checkpoint's variables are shaped by, as JSON; saved in every checkpoint."""
    return json.dumps(
        {
            "model": config.network.model,
            "width_multiplier": config.network.width_multiplier,
            "defense": config.objective.defense,
            "posterior": config.network.posterior,
            "num_classes": int(num_classes),
            "image_shape": [int(d) for d in image_shape],
        },
        sort_keys=True,
    )


def restore_checked(
    checkpoint: tf.train.Checkpoint, path: str, identity: str, *, model_only: bool = False
) -> None:
    """Restores ``checkpoint`` from ``path`` after checking the model identity recorded there.

    Args:
      checkpoint: what to restore into.
      path: a checkpoint prefix (``.../ckpt-N``).
      identity: this run's ``model_identity``.
      model_only: ``checkpoint`` tracks the model alone: the saved optimizer and metrics stay
        unread, but every model variable must be found. Otherwise every saved value must find
        its variable and every variable its value.
    Raises:
      ValueError: the checkpoint records another identity. A value without its variable (or
      the reverse) raises AssertionError, an unreadable file tf.errors.OpError or others.
    """
    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(_IDENTITY_KEY):
        found = reader.get_tensor(_IDENTITY_KEY)
        found = found.decode() if isinstance(found, bytes) else str(found)
        if found != identity:
            raise ValueError(f"it was written by the model {found}, this run builds {identity}")
    status = checkpoint.restore(path)
    if model_only:
        status.expect_partial().assert_existing_objects_matched()
    else:
        status.assert_consumed()


def restore_latest(
    checkpoint: tf.train.Checkpoint, directory: str, identity: str, config: TrainConfig
) -> bool:
    """Restores the newest readable checkpoint of ``directory``; returns whether there was one.

    An unreadable (truncated, corrupted) checkpoint is skipped with a warning for the one
    before it. Raises CheckpointMismatchError, naming ``config``'s model, when no checkpoint
    can be restored, e.g. one written by another architecture or defense.
    """
    paths = checkpoint_paths(directory)
    if not paths:
        return False
    failures = []
    for path in paths:
        try:
            restore_checked(checkpoint, path, identity)
        # A damaged file surfaces as one of many error types (OpError, IndexError from a
        # short read, ...); each is recorded and the next checkpoint tried.
        except Exception as error:
            failures.append(f"{path}: {_first_line(error)}")
            continue
        if failures:
            logging.warning(
                "Skipped unreadable checkpoints (%s); resumed from %s", "; ".join(failures), path
            )
        return True
    raise CheckpointMismatchError(
        f"no checkpoint in {directory} can be restored into this run's model "
        f"({_model_text(config)}, posterior {config.network.posterior}): " + "; ".join(failures)
    )


def restore_model(model_dir: str):
    """Rebuilds the model of ``model_dir`` and restores its latest checkpoint.

    Returns:
      (model, config, model_spec). Raises FileNotFoundError when there is no config or
      checkpoint, and an error when the checkpoint does not match the model (never a silent
      partial restore).
    """
    config = run_dir.read_config(model_dir)
    model_spec = run_dir.read_model_spec(model_dir)
    model = build_model_for(config, model_spec["num_classes"], model_spec["image_shape"])
    directory = os.path.join(model_dir, run_dir.CHECKPOINT_DIRNAME)
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    identity = model_identity(config, model_spec["num_classes"], model_spec["image_shape"])
    try:
        restore_checked(tf.train.Checkpoint(model=model), path, identity, model_only=True)
    except (tf.errors.OpError, ValueError, AssertionError) as error:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model of {model_dir}/{run_dir.CONFIG_FILENAME} "
            f"({_model_text(config)}): "
            f"{_first_line(error)}"
        ) from None
    return model, config, model_spec


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _model_text(config) -> str:
    """The model of ``config`` in words, e.g. "vgg16 x0.25, defense adv_bnn"."""
    network = config.network
    return f"{network.model} x{network.width_multiplier:g}, defense {config.objective.defense}"
