"""Reliability: kills and resumes, interrupted and corrupt checkpoints, wrong checkpoints,
non-finite steps, the bad-input catalogue, atomic outputs and reproducibility.

The guarantees are those of the README's "Reliability" section. The multi-worker preemption
test lives with the other multi-worker tests in test_training.py.
"""

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tfp_advbnn import attacks, data, evaluation, export, models, training

RECORD = 3073  # bytes of one CIFAR-10 binary record


def _config(model_dir, **overrides):
    values = dict(
        model_dir=str(model_dir),
        dataset="cifar10",
        model="vgg11",
        defense="adv_bnn",
        width_multiplier=0.0625,
        epochs=2,
        batch_size=16,
        train_pgd_steps=2,
        random_start=True,
        eval_num_samples=2,
        export_num_samples=2,
        alpha=0.5,
        seed=1,
        deterministic=True,
    )
    values.update(overrides)
    return training.TrainConfig(**values)


def _checkpoint_values(path) -> dict:
    """Every value of a checkpoint, by name (the optimizer, metrics, RNG states and canary)."""
    return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)}


def _assert_same_values(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    different = [name for name in a if not np.array_equal(a[name], b[name])]
    assert different == []


def _tree_digest(directory) -> dict:
    """File path -> sha256 of everything under ``directory``."""
    digests = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _metrics_without_timing(model_dir) -> list[dict]:
    lines = (model_dir / training.METRICS_FILENAME).read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k != "train_images_per_second"}
        for line in lines
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_data):
    """A 2-epoch adv_bnn run with a checkpoint every 2 steps: (model_dir, its final values)."""
    model_dir = tmp_path_factory.mktemp("finished")
    trainer = training.Trainer(_config(model_dir, checkpoint_every_steps=2), image_data=small_data)
    trainer.fit(verbose=False, export=False)
    return model_dir, _checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)


# ----- 1. bit-exact resume after SIGKILL ------------------------------------------------------

CLI_RUN = [
    "--dataset=cifar10",
    "--model=vgg11",
    "--width_multiplier=0.0625",
    "--defense=adv_bnn",
    "--max_train_examples=128",
    "--max_test_examples=32",
    "--batch_size=16",
    "--epochs=2",
    "--train_pgd_steps=2",
    "--random_start",
    "--eval_num_samples=2",
    "--export_num_samples=2",
    "--checkpoint_every_steps=1",
    "--deterministic",
    "--seed=3",
]


def _train_command(model_dir, cifar_bin_dir):
    return [
        sys.executable,
        "-m",
        "trainers.main",
        *CLI_RUN,
        f"--data_dir={cifar_bin_dir}",
        f"--model_dir={model_dir}",
    ]


def _saved_steps(model_dir) -> int:
    paths = training.checkpoint_paths(str(model_dir / training.CHECKPOINT_DIRNAME))
    return max((int(p.rsplit("-", 1)[1]) for p in paths), default=-1)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run_bit_for_bit(
    tmp_path, cifar_bin_dir
):
    steps_per_epoch = 128 // 16
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_train_command(clean_dir, cifar_bin_dir), cwd=REPO_ROOT, check=True)

    process = subprocess.Popen(_train_command(killed_dir, cifar_bin_dir), cwd=REPO_ROOT)
    deadline = time.time() + 300
    # Killed in the middle of the second epoch, between or during any of its operations.
    while _saved_steps(killed_dir) < steps_per_epoch + 3 and process.poll() is None:
        assert time.time() < deadline, "the run to be killed made no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / export.SAVED_MODEL_DIRNAME).exists()
    subprocess.run(_train_command(killed_dir, cifar_bin_dir), cwd=REPO_ROOT, check=True)

    final = 2 * steps_per_epoch
    clean = _checkpoint_values(str(clean_dir / training.CHECKPOINT_DIRNAME / f"ckpt-{final}"))
    resumed = _checkpoint_values(str(killed_dir / training.CHECKPOINT_DIRNAME / f"ckpt-{final}"))
    _assert_same_values(clean, resumed)
    assert clean["canary_steps/.ATTRIBUTES/VARIABLE_VALUE"] == final
    assert _metrics_without_timing(clean_dir) == _metrics_without_timing(killed_dir)


# ----- 2. interrupted saves and corrupt checkpoints -------------------------------------------

# Trains one epoch of the run in argv[1], then SIGKILLs itself inside the next checkpoint save,
# after the new checkpoint's files are written and before the checkpoint state names it.
_KILLED_IN_SAVE = """
import os, signal, sys
from tensorflow.python.checkpoint import checkpoint_management
from tfp_advbnn import training
config = training.TrainConfig.from_json(open(sys.argv[1]).read())
trainer = training.Trainer(config)
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
    config = _config(tmp_path / "run", epochs=1, data_dir=str(cifar_bin_dir))
    config = dataclasses.replace(config, max_train_examples=64, max_test_examples=32)
    config_path = tmp_path / "config.json"
    config_path.write_text(config.to_json())
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_SAVE, str(config_path)], cwd=REPO_ROOT, check=False
    )
    assert result.returncode == -signal.SIGKILL
    checkpoint_dir = tmp_path / "run" / training.CHECKPOINT_DIRNAME
    steps = 64 // 16
    # The half-finished save left its files, but the state still names the epoch's checkpoint.
    assert list(checkpoint_dir.glob(f"ckpt-{steps + 1}.*"))
    assert tf.train.latest_checkpoint(str(checkpoint_dir)).endswith(f"ckpt-{steps}")
    trainer = training.Trainer(dataclasses.replace(config, epochs=2), image_data=small_data)
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
    checkpoint_dir = model_dir / training.CHECKPOINT_DIRNAME
    newest, previous = training.checkpoint_paths(str(checkpoint_dir))[:2]
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
    trainer = training.Trainer(_config(model_dir, checkpoint_every_steps=2), image_data=small_data)
    with caplog.at_level(logging.WARNING):
        assert trainer.restore()
    assert int(trainer.optimizer.iterations.numpy()) == int(previous.rsplit("-", 1)[1])
    assert "Skipped unreadable checkpoints" in caplog.text
    assert os.path.basename(newest) in caplog.text


# ----- 3. wrong checkpoints -------------------------------------------------------------------


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
    shutil.copytree(source / training.CHECKPOINT_DIRNAME, model_dir / training.CHECKPOINT_DIRNAME)
    before = _tree_digest(model_dir)
    trainer = training.Trainer(_config(model_dir, **overrides), image_data=small_data)
    with pytest.raises(training.CheckpointMismatchError, match=named):
        trainer.fit(verbose=False, export=False)
    assert _tree_digest(model_dir / training.CHECKPOINT_DIRNAME) == {
        k[len(training.CHECKPOINT_DIRNAME) + 1 :]: v for k, v in before.items()
    }


def test_restore_model_refuses_a_checkpoint_of_another_defense(tmp_path, finished_run):
    source, _ = finished_run
    model_dir = tmp_path / "relabelled"
    shutil.copytree(source, model_dir)
    config = training.read_config(str(model_dir))
    (model_dir / training.CONFIG_FILENAME).write_text(
        dataclasses.replace(config, defense="plain").to_json()
    )
    with pytest.raises(training.CheckpointMismatchError, match="defense plain"):
        training.restore_model(str(model_dir))


# ----- 4. non-finite steps --------------------------------------------------------------------


def test_a_transient_nonfinite_step_rolls_back_and_the_run_ends_as_a_clean_one(
    tmp_path, finished_run, small_data, caplog
):
    _, clean_values = finished_run
    trainer = training.Trainer(_config(tmp_path, checkpoint_every_steps=2), image_data=small_data)
    real_step = trainer._train_step
    calls = []

    def faulty_step(iterator):
        faults = real_step(iterator)
        calls.append(1)
        if len(calls) == 7:
            # A fault in the middle of epoch 2: the weights turn NaN, the step reports it.
            weight = trainer.model.trainable_variables[0]
            weight.assign(tf.fill(weight.shape, np.nan))
            return tf.constant(1)
        return faults

    trainer._train_step = faulty_step
    with caplog.at_level(logging.WARNING):
        trainer.fit(verbose=False, export=False)
    assert "rolled back to epoch 2, step 2 (retry 1 of 3)" in caplog.text
    _assert_same_values(
        clean_values, _checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)
    )
    assert [m["epoch"] for m in _metrics_without_timing(tmp_path)] == [1, 2]


def test_a_diverging_run_stops_after_the_retries_and_keeps_only_finite_checkpoints(
    tmp_path, small_data
):
    config = _config(tmp_path, defense="plain", learning_rate=1e38, max_nonfinite_retries=2)
    trainer = training.Trainer(config, image_data=small_data)
    with pytest.raises(FloatingPointError, match="max_nonfinite_retries=2"):
        trainer.fit(verbose=False, export=False)
    paths = training.checkpoint_paths(str(tmp_path / training.CHECKPOINT_DIRNAME))
    assert paths
    for path in paths:
        for name, value in _checkpoint_values(path).items():
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name
    assert not (tmp_path / export.SAVED_MODEL_DIRNAME).exists()


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tmp_path, small_data):
    trainer = training.Trainer(_config(tmp_path, defense="plain"), image_data=small_data)
    first = trainer.save()
    weight = trainer.model.trainable_variables[-1]
    weight.assign(tf.fill(weight.shape, np.inf))
    trainer.optimizer.iterations.assign_add(1)
    with pytest.raises(FloatingPointError, match="non-finite values"):
        trainer.save()
    assert training.checkpoint_paths(str(tmp_path / training.CHECKPOINT_DIRNAME)) == [first]


# ----- 5. the bad-input catalogue -------------------------------------------------------------


class _Payload:
    """Pickles into a call that would create ``marker``: a loader must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _copy_bin(cifar_bin_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(cifar_bin_dir, target)
    return target


def _truncated_batch(cifar_bin_dir, tmp_path):
    target = _copy_bin(cifar_bin_dir, tmp_path)
    path = target / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[: RECORD * 10 + 17])
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "data_batch_3.bin"


def _label_out_of_range(cifar_bin_dir, tmp_path):
    target = _copy_bin(cifar_bin_dir, tmp_path)
    path = target / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[RECORD * 4] = 10
    path.write_bytes(bytes(raw))
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "test_batch.bin"


def _tampered_pickle(cifar_py_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_py_dir, target)
    marker = tmp_path / "payload-ran"
    (target / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(str(marker))}))

    def load():
        try:
            data.load_cifar10_arrays(str(target))
        finally:
            assert not marker.exists()

    return load, data.UnsafePickleError, "data_batch_1"


def _corrupt_image(cifar_bin_dir, tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(2):
                image = rng.integers(0, 255, (12, 12, 3), np.uint8)
                tf.io.write_file(str(directory / f"{i}.png"), tf.io.encode_png(image))
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    def load():
        loaded = data.load_data("folder", data_dir=str(root), image_size=(8, 8))
        for _ in loaded.train_dataset(batch_size=5, drop_remainder=False):
            pass

    return load, tf.errors.InvalidArgumentError, "broken.png"


def _wrong_image_size(cifar_py_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_py_dir, target)
    batch = {b"data": np.zeros((10, 2000), np.uint8), b"labels": [0] * 10}
    (target / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "data_batch_2"


def _empty_data_dir(cifar_bin_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return lambda: data.load_cifar10_arrays(str(empty)), FileNotFoundError, str(empty)


def _missing_data_dir(cifar_bin_dir, tmp_path):
    missing = tmp_path / "nowhere"
    return (
        lambda: data.load_data("cifar10", data_dir=str(missing)),
        FileNotFoundError,
        str(missing),
    )


def _bad_train_config(cifar_bin_dir, tmp_path):
    return (
        lambda: _config(tmp_path, train_eps=8.0).validate(),
        ValueError,
        "train_eps must be in [0, 1]",
    )


def _bad_eval_config(cifar_bin_dir, tmp_path):
    return (
        lambda: evaluation.EvalConfig(eps_grid=(0.0, -0.1)),
        ValueError,
        "eps_grid",
    )


def _bad_attack_argument(cifar_bin_dir, tmp_path):
    images = np.zeros((2, 4, 4, 3), np.float32)
    return (
        lambda: attacks.pgd(
            lambda x: tf.zeros([2, 10]), images, [0, 1], eps=0.1, step_size=0.0, num_steps=1
        ),
        ValueError,
        "step_size",
    )


BAD_INPUTS = {
    "truncated batch file": _truncated_batch,
    "label out of range": _label_out_of_range,
    "tampered pickle, never executed": _tampered_pickle,
    "corrupt image file": _corrupt_image,
    "images of the wrong size": _wrong_image_size,
    "empty data directory": _empty_data_dir,
    "missing data directory": _missing_data_dir,
    "train config value": _bad_train_config,
    "evaluation config value": _bad_eval_config,
    "attack argument": _bad_attack_argument,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_an_error_naming_it(case, cifar_bin_dir, cifar_py_dir, tmp_path):
    python_layout = case.startswith(("tampered", "images of the wrong size"))
    source = cifar_py_dir if python_layout else cifar_bin_dir
    run, error, named = BAD_INPUTS[case](source, tmp_path)
    with pytest.raises(error) as raised:
        run()
    assert named in str(raised.value)


def test_model_dir_of_an_incompatible_run_is_refused_and_kept(tmp_path, finished_run, small_data):
    source, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    before = _tree_digest(model_dir)
    with pytest.raises(ValueError, match=r"seed: 1 in model_dir vs 2 now"):
        training.Trainer(_config(model_dir, seed=2), image_data=small_data).fit(verbose=False)
    assert _tree_digest(model_dir) == before


def _tiny_model(defense, seed):
    return models.build_model(
        "vgg11",
        defense,
        num_classes=10,
        input_shape=(32, 32, 3),
        width_multiplier=0.0625,
        sigma_0=0.05,
        init_s=0.05,
        seed=seed,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = _tiny_model("plain", 0)
    path = str(tmp_path_factory.mktemp("served") / "saved_model")
    export.export_saved_model(model, path, num_samples=1, image_shape=(32, 32, 3))
    return tf.saved_model.load(path).signatures["serving_default"]


@pytest.mark.parametrize(
    "images, named",
    [
        (tf.zeros([32, 32, 3]), "rank-4"),
        (tf.zeros([1, 28, 28, 3]), "shape"),
        (tf.fill([1, 32, 32, 3], 255.0), "[0, 1]"),
    ],
)
def test_saved_model_rejects_bad_requests_by_name(served, images, named):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as raised:
        served(images=images)
    assert named in str(raised.value)


def test_saved_model_rejects_a_wrong_dtype(served):
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        served(images=tf.zeros([1, 32, 32, 3], tf.uint8))


@pytest.mark.parametrize(
    "module, args, named",
    [
        ("trainers.main", ["--batch_size=0"], "batch_size"),
        ("trainers.main", ["--defense=magic"], "magic"),
        ("trainers.evaluate", ["--eps_grid=0,x"], "--eps_grid"),
    ],
)
def test_cli_bad_flags_fail_naming_the_flag_and_leave_the_run_alone(
    tmp_path, finished_run, module, args, named
):
    source, _ = finished_run
    model_dir = tmp_path / "run"
    shutil.copytree(source, model_dir)
    before = _tree_digest(model_dir)
    result = subprocess.run(
        [sys.executable, "-m", module, f"--model_dir={model_dir}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert _tree_digest(model_dir) == before


# ----- 6. atomic outputs ----------------------------------------------------------------------


def test_a_failed_text_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "best_hyperparameters.json"
    training.write_text_atomically(str(path), '{"alpha": 0.1}\n')

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        training.write_text_atomically(str(path), '{"alpha": 0.')
    assert path.read_text() == '{"alpha": 0.1}\n'
    assert os.listdir(tmp_path) == [path.name]


def test_a_report_that_cannot_be_written_keeps_the_old_report_and_plot(tmp_path, monkeypatch):
    report = {
        "mode": "sweep",
        "label": "model",
        "attack": "pgd_linf",
        "norm": "linf",
        "pgd_steps": 20,
        "num_eot_samples": 1,
        "num_samples": 10,
        "eps": [0.0, 0.03],
        "accuracy": [0.9, 0.4],
    }
    json_path, png_path = tmp_path / "report.json", tmp_path / "report.png"
    evaluation.write_json(report, str(json_path))
    evaluation.plot_report(report, str(png_path))
    old_json, old_png = json_path.read_bytes(), png_path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        evaluation.write_json({**report, "accuracy": [0.8, 0.3]}, str(json_path))

    def failing_savefig(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", failing_savefig)
    with pytest.raises(OSError, match="disk full"):
        evaluation.plot_report({**report, "accuracy": [0.8, 0.3]}, str(png_path))
    assert json_path.read_bytes() == old_json
    assert png_path.read_bytes() == old_png
    assert sorted(os.listdir(tmp_path)) == ["report.json", "report.png"]


def test_metrics_lines_of_a_redone_epoch_replace_the_old_ones(tmp_path):
    for epoch, loss in [(1, 2.0), (2, 1.5), (3, 1.2), (2, 1.4)]:
        training._write_epoch_metrics(str(tmp_path), {"epoch": epoch, "train_loss": loss})
    lines = (tmp_path / training.METRICS_FILENAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"epoch": 1, "train_loss": 2.0},
        {"epoch": 2, "train_loss": 1.4},
    ]


# ----- 7. reproducibility ---------------------------------------------------------------------


def _draws(seed):
    model = _tiny_model("adv_bnn", seed)
    images = tf.constant(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), tf.float32)
    return np.stack([model(images, training=False).numpy() for _ in range(3)])


def test_same_seed_same_weight_draws_and_other_seed_other_draws():
    first, again, other = _draws(5), _draws(5), _draws(6)
    np.testing.assert_array_equal(first, again)
    # Successive calls are fresh draws, and another seed draws differently.
    assert not np.array_equal(first[0], first[1])
    assert not np.allclose(first, other)


def test_same_seed_same_pgd_perturbation_and_other_seed_other_perturbation():
    def perturbation(seed):
        model_fn = _tiny_model("adv_bnn", seed)
        images = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
        x_adv = attacks.pgd(
            lambda x: model_fn(x, training=False),
            images,
            np.array([0, 1, 2, 3], np.int32),
            eps=0.03,
            step_size=0.01,
            num_steps=3,
            random_start=True,
            seed=seed,
        )
        return x_adv.numpy() - images

    first, again, other = perturbation(7), perturbation(7), perturbation(8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_two_runs_with_one_seed_train_the_same_bits(tmp_path, finished_run, small_data):
    _, clean_values = finished_run
    trainer = training.Trainer(_config(tmp_path, checkpoint_every_steps=2), image_data=small_data)
    trainer.fit(verbose=False, export=False)
    _assert_same_values(
        clean_values, _checkpoint_values(trainer.checkpoint_manager.latest_checkpoint)
    )
