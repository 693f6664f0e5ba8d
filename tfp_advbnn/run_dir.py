"""What a run leaves on disk, and how it is written so that a failed run never loses work.

A model_dir holds ``config.json`` (the run's TrainConfig), ``model_spec.json`` (the classes and
image shape its model was built for), ``metrics.jsonl`` (one JSON object per finished epoch),
``checkpoints/`` (``tf.train.CheckpointManager``), ``tensorboard/`` and ``saved_model/``
(``export.SAVED_MODEL_DIRNAME``). The readers and writers of the first three are here.

Every file the library writes into a model_dir, a report or an export goes through the atomic
writers here: the new content is staged beside its target and renamed over it, so a reader (or
a later run) sees either the old complete file or the new complete one, never a partial file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

from tfp_advbnn.config import TrainConfig

CONFIG_FILENAME = "config.json"
MODEL_SPEC_FILENAME = "model_spec.json"
METRICS_FILENAME = "metrics.jsonl"
CHECKPOINT_DIRNAME = "checkpoints"
TENSORBOARD_DIRNAME = "tensorboard"

# TrainConfig fields a resumed run may change: they say how long to train, where the data are
# and how this machine runs and checkpoints the run, not what is trained.
RESUMABLE_FIELDS = frozenset(
    {
        "epochs",
        "model_dir",
        "data_dir",
        "download",
        "log_every_secs",
        "checkpoint_every_steps",
        "strategy",
        "max_nonfinite_retries",
        "keep_checkpoints",
        "deterministic",
    }
)


def write_atomically(path: str, write: Callable[[str], None], *, suffix: str = "") -> str:
    """Calls ``write(staging_path)``, then renames the staged file over ``path``; returns it.

    ``suffix`` is given to the staging file for writers that pick a format by extension.

    Examples:
        >>> write_atomically("/tmp/plot.png", lambda p: figure.savefig(p, format="png"))
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    return path


def write_text_atomically(path: str, text: str) -> str:
    """Writes ``text`` (flushed to disk) to ``path`` atomically; returns ``path``."""

    def write(staging: str) -> None:
        with open(staging, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(path, write)


def replace_dir(new_dir: str, target: str) -> None:
    """Moves the finished directory ``new_dir`` to ``target``.

    An existing ``target`` is moved aside first and deleted only once ``new_dir`` is in place;
    if the move fails, the old ``target`` is put back.
    """
    if not os.path.exists(target):
        os.replace(new_dir, target)
        return
    retired = tempfile.mkdtemp(prefix=".retired-", dir=os.path.dirname(os.path.abspath(target)))
    os.rmdir(retired)
    os.replace(target, retired)
    try:
        os.replace(new_dir, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def check_or_write_config(config: TrainConfig, write: bool = True) -> None:
    """Checks that a resumed run matches the config.json in model_dir, then writes it if
    ``write`` (multi_worker: only the chief writes).

    Raises ValueError naming every field that differs, outside ``RESUMABLE_FIELDS``.
    """
    path = os.path.join(config.model_dir, CONFIG_FILENAME)
    if os.path.exists(path):
        with open(path) as f:
            existing = TrainConfig.from_json(f.read())
        before, now = existing.flat(), config.flat()
        mismatched = {
            name: (before[name], now[name])
            for name in before
            if name not in RESUMABLE_FIELDS and before[name] != now[name]
        }
        if mismatched:
            details = ", ".join(
                f"{k}: {a!r} in model_dir vs {b!r} now" for k, (a, b) in sorted(mismatched.items())
            )
            raise ValueError(
                f"model_dir {config.model_dir} holds a run with a different configuration "
                f"({details}); use a new --model_dir or the original flags"
            )
    if write:
        write_text_atomically(path, config.to_json() + "\n")


def read_config(model_dir: str) -> TrainConfig:
    """The TrainConfig of the run in ``model_dir``; FileNotFoundError when it has none."""
    path = os.path.join(model_dir, CONFIG_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a tfp_advbnn model_dir")
    with open(path) as f:
        return TrainConfig.from_json(f.read())


def write_model_spec(
    model_dir: str, *, num_classes: int, image_shape: Sequence[int], class_names: Sequence[str]
) -> None:
    """Records what the run's model was built for: its classes and (H, W, C) image shape."""
    spec = {
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "class_names": list(class_names),
    }
    write_text_atomically(
        os.path.join(model_dir, MODEL_SPEC_FILENAME), json.dumps(spec, indent=2) + "\n"
    )


def read_model_spec(model_dir: str) -> dict:
    """``num_classes``, ``image_shape`` and ``class_names`` of the run in ``model_dir``."""
    path = os.path.join(model_dir, MODEL_SPEC_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a tfp_advbnn model_dir")
    with open(path) as f:
        return json.load(f)


def write_epoch_metrics(model_dir: str, metrics: dict) -> None:
    """Records one epoch in metrics.jsonl (atomically), replacing any earlier line of it or of
    a later epoch (left by a run that was rolled back or killed before its checkpoint)."""
    path = os.path.join(model_dir, METRICS_FILENAME)
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) < metrics["epoch"]]
    kept.append(json.dumps(metrics, sort_keys=True) + "\n")
    write_text_atomically(path, "".join(kept))
