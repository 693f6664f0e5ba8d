"""The model_dir layout and the atomic writers (run_dir.py): config.json checks, metrics.jsonl
lines, failed writes that keep the old file, and replace_dir."""

import json
import os
import shutil

import pytest
from run_support import deterministic_config, tiny_config, tree_digest

from tfp_advbnn import run_dir
from tfp_advbnn.training.trainer import Trainer

pytest_plugins = ["run_support"]


def test_model_dir_with_another_run_is_refused(tmp_path, small_data):
    Trainer(tiny_config(tmp_path, defense="plain", epochs=1), image_data=small_data).fit(
        verbose=False
    )
    config_before = (tmp_path / "config.json").read_text()
    checkpoints_before = sorted(os.listdir(tmp_path / "checkpoints"))
    other = Trainer(tiny_config(tmp_path, defense="rse", epochs=1), image_data=small_data)
    with pytest.raises(ValueError, match="defense"):
        other.fit(verbose=False)
    assert (tmp_path / "config.json").read_text() == config_before
    assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints_before


def test_model_dir_of_an_incompatible_run_is_refused_and_kept(tmp_path, finished_run, small_data):
    source, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    before = tree_digest(model_dir)
    with pytest.raises(ValueError, match=r"seed: 1 in model_dir vs 2 now"):
        Trainer(deterministic_config(model_dir, seed=2), image_data=small_data).fit(verbose=False)
    assert tree_digest(model_dir) == before


def test_a_failed_text_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "best_hyperparameters.json"
    run_dir.write_text_atomically(str(path), '{"alpha": 0.1}\n')

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        run_dir.write_text_atomically(str(path), '{"alpha": 0.')
    assert path.read_text() == '{"alpha": 0.1}\n'
    assert os.listdir(tmp_path) == [path.name]


def test_metrics_lines_of_a_redone_epoch_replace_the_old_ones(tmp_path):
    for epoch, loss in [(1, 2.0), (2, 1.5), (3, 1.2), (2, 1.4)]:
        run_dir.write_epoch_metrics(str(tmp_path), {"epoch": epoch, "train_loss": loss})
    lines = (tmp_path / run_dir.METRICS_FILENAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"epoch": 1, "train_loss": 2.0},
        {"epoch": 2, "train_loss": 1.4},
    ]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_staging_file(tmp_path):
    path = tmp_path / "report.png"
    path.write_bytes(b"old")

    def half_a_write(staging):
        with open(staging, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_dir.write_atomically(str(path), half_a_write, suffix=".png")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == [path.name]
    assert run_dir.write_atomically(str(path), lambda p: open(p, "wb").close()) == str(path)
    assert path.read_bytes() == b""


def test_replace_dir_swaps_in_the_new_dir_and_keeps_the_old_one_when_the_move_fails(
    tmp_path, monkeypatch
):
    target, new = tmp_path / "saved_model", tmp_path / "staged"
    target.mkdir()
    (target / "old").write_text("old")
    new.mkdir()
    (new / "new").write_text("new")
    real_replace = os.replace

    def failing_move_of_the_new_dir(source, destination):
        if os.fspath(source) == os.fspath(new):
            raise OSError("cross-device link")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_move_of_the_new_dir)
    with pytest.raises(OSError, match="cross-device link"):
        run_dir.replace_dir(str(new), str(target))
    assert sorted(os.listdir(target)) == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["saved_model", "staged"]

    monkeypatch.setattr(os, "replace", real_replace)
    run_dir.replace_dir(str(new), str(target))
    assert sorted(os.listdir(target)) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]


def test_a_dir_without_config_or_model_spec_is_not_a_model_dir(tmp_path):
    for read in (run_dir.read_config, run_dir.read_model_spec):
        with pytest.raises(FileNotFoundError, match="is not a tfp_advbnn model_dir"):
            read(str(tmp_path))
