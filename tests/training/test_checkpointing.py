"""Checkpoint identity and restore (training/checkpointing.py): a kill inside a save, corrupt
checkpoints, checkpoints of another model, and restore_model."""

import logging
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from run_support import deterministic_config, tiny_config, tree_digest

from tfp_advbnn import run_dir
from tfp_advbnn.training import checkpointing
from tfp_advbnn.training.trainer import Trainer

pytest_plugins = ["run_support"]


def test_restore_model_matches_the_trained_weights(tmp_path, small_data):
    trainer = Trainer(tiny_config(tmp_path, defense="plain", epochs=1), image_data=small_data)
    trainer.fit(verbose=False)
    model, config, spec = checkpointing.restore_model(str(tmp_path))
    assert config.objective.defense == "plain" and spec["num_classes"] == 10
    images, _ = next(iter(small_data.test_dataset(batch_size=4)))
    np.testing.assert_allclose(
        model(images, training=False).numpy(),
        trainer.model(images, training=False).numpy(),
        atol=1e-5,
    )


# Trains one epoch of the run in argv[1], then SIGKILLs itself inside the next checkpoint save,
# after the new checkpoint's files are written and before the checkpoint state names it.
_KILLED_IN_SAVE = """
import os, signal, sys
from tensorflow.python.checkpoint import checkpoint_management
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training.trainer import Trainer
config = TrainConfig.from_json(open(sys.argv[1]).read())
trainer = Trainer(config)
trainer.fit(verbose=False, export=False)
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint_management.update_checkpoint_state_internal = killed
trainer.optimizer.iterations.assign_add(1)
trainer.save()
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_leaves_the_previous_one_restorable(
    tmp_path, cifar_bin_dir, small_data
):
    config = deterministic_config(tmp_path / "run", epochs=1, data_dir=str(cifar_bin_dir))
    config = config.replace(max_train_examples=64, max_test_examples=32)
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_SAVE, str(config_path)], cwd=REPO_ROOT, check=False
    )
    assert result.returncode == -signal.SIGKILL
    checkpoint_dir = tmp_path / "run" / run_dir.CHECKPOINT_DIRNAME
    steps = 64 // 16
    # The half-finished save left its files, but the state still names the epoch's checkpoint.
    assert list(checkpoint_dir.glob(f"ckpt-{steps + 1}.*"))
    assert tf.train.latest_checkpoint(str(checkpoint_dir)).endswith(f"ckpt-{steps}")
    trainer = Trainer(config.replace(epochs=2), image_data=small_data)
    assert trainer.restore()
    assert int(trainer.optimizer.iterations.numpy()) == steps
    assert int(trainer.epoch.numpy()) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path, finished_run, small_data, damage, caplog
):
    source, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    checkpoint_dir = model_dir / run_dir.CHECKPOINT_DIRNAME
    newest, previous = checkpointing.checkpoint_paths(str(checkpoint_dir))[:2]
    (data_file,) = [p for p in checkpoint_dir.glob(os.path.basename(newest) + ".data-*")]
    payload = bytearray(data_file.read_bytes())
    if damage == "truncate":
        data_file.write_bytes(payload[: len(payload) // 2])
    elif damage == "flip":
        for offset in range(0, len(payload), 97):
            payload[offset] ^= 0xFF
        data_file.write_bytes(bytes(payload))
    else:
        data_file.unlink()
    trainer = Trainer(
        deterministic_config(model_dir, checkpoint_every_steps=2), image_data=small_data
    )
    with caplog.at_level(logging.WARNING):
        assert trainer.restore()
    assert int(trainer.optimizer.iterations.numpy()) == int(previous.rsplit("-", 1)[1])
    assert "Skipped unreadable checkpoints" in caplog.text
    assert os.path.basename(newest) in caplog.text


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"defense": "adv"}, "defense adv"),
        ({"defense": "bnn", "posterior": "flipout"}, "posterior flipout"),
        ({"model": "vgg13"}, "vgg13"),
        ({"width_multiplier": 0.125}, "x0.125"),
    ],
)
def test_checkpoint_of_another_model_is_refused_not_partially_restored(
    tmp_path, finished_run, small_data, overrides, named
):
    source, _ = finished_run
    model_dir = tmp_path / "other"
    model_dir.mkdir()
    shutil.copytree(source / run_dir.CHECKPOINT_DIRNAME, model_dir / run_dir.CHECKPOINT_DIRNAME)
    before = tree_digest(model_dir)
    trainer = Trainer(deterministic_config(model_dir, **overrides), image_data=small_data)
    with pytest.raises(checkpointing.CheckpointMismatchError, match=named):
        trainer.fit(verbose=False, export=False)
    assert tree_digest(model_dir / run_dir.CHECKPOINT_DIRNAME) == {
        k[len(run_dir.CHECKPOINT_DIRNAME) + 1 :]: v for k, v in before.items()
    }


def test_restore_model_refuses_a_checkpoint_of_another_defense(tmp_path, finished_run):
    source, _ = finished_run
    model_dir = tmp_path / "relabelled"
    shutil.copytree(source, model_dir)
    config = run_dir.read_config(str(model_dir))
    (model_dir / run_dir.CONFIG_FILENAME).write_text(config.replace(defense="plain").to_json())
    with pytest.raises(checkpointing.CheckpointMismatchError, match="defense plain"):
        checkpointing.restore_model(str(model_dir))
