"""The KerasTuner tuner and the search loop (tuning/tuner.py): the validation split, persistence
and resume, outputs, tf_keras checkpoints, reruns with other settings, and Hyperband."""

import glob
import json
import os
import types

import numpy as np
import pytest
import tf_keras
from run_support import NUM_VALIDATION, TINY, metric_lines, reported, tiny_search, trial_json

from tfp_advbnn import data, run_dir
from tfp_advbnn.training.trainer import Trainer
from tfp_advbnn.tuning.search_config import TUNED, SearchSpace
from tfp_advbnn.tuning.summaries import BEST_FILENAME, SUMMARY_FILENAME
from tfp_advbnn.tuning.tuner import AdvBnnTuner, load_search_data, run_search


@pytest.fixture(scope="module")
def image_data(cifar_bin_dir):
    _, loaded = load_search_data(tiny_search("unused", cifar_bin_dir))
    return loaded


def test_validation_split_is_capped_and_carved_from_the_training_set(cifar_bin_dir, image_data):
    search, loaded = load_search_data(
        tiny_search("unused", cifar_bin_dir, validation_examples=1000)
    )
    assert search.base.data.validation_examples == NUM_VALIDATION
    assert (loaded.spec.num_train, loaded.spec.num_validation) == (64, 16)
    assert loaded.spec.num_test == TINY["max_test_examples"]
    (x_train, y_train), (x_test, _) = data.load_cifar10_arrays(cifar_bin_dir)
    images, labels = image_data.validation_arrays()
    np.testing.assert_array_equal(labels, y_train[64:80])
    np.testing.assert_allclose(images * 255.0, x_train[64:80], atol=1e-3)
    assert not np.array_equal(np.round(images * 255.0), x_test[:16])


@pytest.fixture(scope="module")
def resumed_search(tmp_path_factory, cifar_bin_dir, image_data):
    """One trial (max_trials=1); then max_trials=2 with its new trial interrupted after
    training; then the same rerun twice. Records every Trainer.fit and any test-set read."""
    tuner_dir = tmp_path_factory.mktemp("search")
    state = types.SimpleNamespace(run=0, interrupt=False, fits=[], test_reads=[])
    original_fit = Trainer.fit

    def recording_fit(self, verbose=True, export=True):
        state.fits.append((state.run, self.config.model_dir))
        metrics = original_fit(self, verbose=verbose, export=export)
        if state.interrupt:
            state.interrupt = False
            raise KeyboardInterrupt("simulated Ctrl-C at the end of the trial's training")
        return metrics

    def recording(name):
        original = getattr(data.ImageData, name)

        def read(self, *args, **kwargs):
            state.test_reads.append(name)
            return original(self, *args, **kwargs)

        return read

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit", recording_fit)
        for name in ("test_dataset", "test_arrays"):
            patch.setattr(data.ImageData, name, recording(name))
        state.run = 1
        state.first_best = run_search(
            tiny_search(tuner_dir, cifar_bin_dir, max_trials=1), image_data, verbose=False
        )
        state.run, state.interrupt = 2, True
        with pytest.raises(KeyboardInterrupt):
            run_search(tiny_search(tuner_dir, cifar_bin_dir), image_data, verbose=False)
        state.interrupted_trial = trial_json(tuner_dir, "1")
        state.run = 3
        state.best = run_search(tiny_search(tuner_dir, cifar_bin_dir), image_data, verbose=False)
        state.run = 4
        state.rerun_best = run_search(
            tiny_search(tuner_dir, cifar_bin_dir), image_data, verbose=False
        )
    state.tuner_dir = str(tuner_dir)
    return state


def test_rerun_trains_only_the_new_trial(resumed_search):
    tuner_dir = resumed_search.tuner_dir
    model_dir = {i: os.path.join(tuner_dir, f"trial_{i}", "model") for i in "01"}
    # Run 2 trains only trial 1, run 3 finishes that interrupted trial, run 4 trains nothing.
    assert resumed_search.fits == [
        (1, model_dir["0"]),
        (2, model_dir["1"]),
        (3, model_dir["1"]),
    ]
    trial_dirs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(tuner_dir, "trial_*")))
    assert trial_dirs == ["trial_0", "trial_1"]
    for directory in model_dir.values():
        assert [line["epoch"] for line in metric_lines(directory)] == [1]


def test_interrupted_trial_is_retried_with_its_values(resumed_search):
    interrupted = resumed_search.interrupted_trial
    assert interrupted["status"] == "RUNNING"
    finished = trial_json(resumed_search.tuner_dir, "1")
    assert finished["status"] == "COMPLETED"
    assert finished["hyperparameters"]["values"] == interrupted["hyperparameters"]["values"]
    assert trial_json(resumed_search.tuner_dir, "0")["status"] == "COMPLETED"


def test_search_writes_best_hyperparameters_and_summary(resumed_search):
    tuner_dir = resumed_search.tuner_dir
    with open(os.path.join(tuner_dir, BEST_FILENAME)) as f:
        best = json.load(f)
    assert best == resumed_search.best == resumed_search.rerun_best
    assert best["objective"] == "val_robust_accuracy"
    assert set(best["hyperparameters"]) == set(TUNED)
    assert best["model_dir"] == os.path.join(tuner_dir, f"trial_{best['trial_id']}", "model")
    with open(os.path.join(tuner_dir, SUMMARY_FILENAME)) as f:
        rows = [line for line in f if line.startswith("| ") and "---" not in line]
    header, trial_rows = rows[0], rows[1:]
    assert header.split("|")[1].strip() == "trial"
    assert [row.split("|")[1].strip() for row in trial_rows] == ["0", "1"]
    marked = [row.split("|")[1].strip() for row in trial_rows if "**best**" in row]
    assert marked == [best["trial_id"]]
    for trial_id, row in zip("01", trial_rows, strict=True):
        trial = trial_json(tuner_dir, trial_id)
        robust = reported(trial, "val_robust_accuracy")
        assert f"| {robust:.4f} |" in row
        alpha = trial["hyperparameters"]["values"]["alpha"]
        assert f"| {alpha:.4g} |" in row
        assert 1e-3 <= alpha <= 1.0


def test_best_names_the_trial_with_the_highest_objective(resumed_search):
    tuner_dir = resumed_search.tuner_dir
    trials = {i: trial_json(tuner_dir, i) for i in "01"}
    robust = {i: reported(t, "val_robust_accuracy") for i, t in trials.items()}
    best = resumed_search.best
    assert best["objective_value"] == max(robust.values())
    assert robust[best["trial_id"]] == max(robust.values())
    assert best["hyperparameters"] == trials[best["trial_id"]]["hyperparameters"]["values"]
    for trial in trials.values():
        clean = reported(trial, "val_accuracy")
        robust_value = reported(trial, "val_robust_accuracy")
        combined = reported(trial, "val_combined")
        assert combined == pytest.approx(0.5 * robust_value + 0.5 * clean)
        # Accuracies over 16 validation images: multiples of 1/16.
        assert clean * NUM_VALIDATION == pytest.approx(round(clean * NUM_VALIDATION))


def test_search_never_reads_the_test_set(resumed_search):
    assert resumed_search.test_reads == []
    for trial_id in "01":
        model_dir = os.path.join(resumed_search.tuner_dir, f"trial_{trial_id}", "model")
        config = run_dir.read_config(model_dir)
        assert config.data.validation_examples == NUM_VALIDATION
        (line,) = metric_lines(model_dir)
        assert "validation_accuracy" in line
        assert not any(key.startswith("test_") for key in line)


def test_trials_are_tf_keras_checkpoints(resumed_search, cifar_bin_dir, image_data):
    tuner = AdvBnnTuner(tiny_search(resumed_search.tuner_dir, cifar_bin_dir), image_data=image_data)
    (best_trial,) = tuner.oracle.get_best_trials(1)
    model = tuner.load_model(best_trial)
    assert isinstance(model, tf_keras.Model)
    names = {
        os.path.basename(p) for p in glob.glob(f"{resumed_search.tuner_dir}/**", recursive=True)
    }
    # Neither KerasTuner's Keras-3 weights nor a per-trial SavedModel.
    assert not names & {"checkpoint.weights.h5", "build_config.json", "saved_model"}


def test_rerun_with_other_settings_is_rejected(resumed_search, cifar_bin_dir, image_data):
    changed = tiny_search(resumed_search.tuner_dir, cifar_bin_dir, objective="clean")
    with pytest.raises(ValueError, match="objective: 'robust' there vs 'clean' now"):
        AdvBnnTuner(changed, image_data=image_data)
    wider = tiny_search(
        resumed_search.tuner_dir, cifar_bin_dir, space=SearchSpace(alpha=(1e-4, 1.0))
    )
    with pytest.raises(ValueError, match="search_space.alpha.min"):
        AdvBnnTuner(wider, image_data=image_data)


def test_hyperband_continues_the_promoted_trial_from_its_checkpoint(
    tmp_path, cifar_bin_dir, image_data
):
    # max_epochs 2, factor 2: trials 0 and 1 train 1 epoch, trial 2 takes the better one to 2.
    search = tiny_search(
        tmp_path,
        cifar_bin_dir,
        tuner="hyperband",
        hyperband_factor=2,
        epochs_per_trial=2,
        max_trials=3,
    )
    best = run_search(search, image_data, verbose=False)
    trials = {i: trial_json(tmp_path, i) for i in "012"}
    values = trials["2"]["hyperparameters"]["values"]
    previous = values["tuner/trial_id"]
    assert (values["tuner/initial_epoch"], values["tuner/epochs"]) == (1, 2)
    assert {k: values[k] for k in TUNED} == {
        k: trials[previous]["hyperparameters"]["values"][k] for k in TUNED
    }
    robust = {i: reported(t, "val_robust_accuracy") for i, t in trials.items()}
    assert robust[previous] == max(robust["0"], robust["1"])
    model_dir = tmp_path / "trial_2" / "model"
    # Only its second epoch was trained here: the first came with the copied checkpoint.
    assert [line["epoch"] for line in metric_lines(model_dir)] == [2]
    assert run_dir.read_config(model_dir).optim.epochs == 2
    assert best["objective_value"] == max(robust.values())
