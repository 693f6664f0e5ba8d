"""The KerasTuner search: space, objectives, persistence and resume, outputs, CLI."""

import glob
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tf_keras
from conftest import REPO_ROOT

from tfp_advbnn import data, training, tuning

TINY = dict(
    dataset="cifar10",
    model="vgg11",
    defense="adv_bnn",
    width_multiplier=0.0625,
    batch_size=16,
    epochs=3,
    train_pgd_steps=1,
    eval_num_samples=2,
    eval_pgd_steps=2,
    max_train_examples=80,
    max_test_examples=16,
    seed=1,
)
NUM_VALIDATION = 16  # a fifth of the 80 training images: the cap of load_search_data


def _search(tuner_dir, data_dir, validation_examples=NUM_VALIDATION, **overrides):
    base = training.TrainConfig(
        model_dir=str(tuner_dir),
        data_dir=str(data_dir),
        validation_examples=validation_examples,
        **TINY,
    )
    values = dict(tuner_dir=str(tuner_dir), base=base, max_trials=2, epochs_per_trial=1)
    values.update(overrides)
    return tuning.SearchConfig(**values)


def _trial_json(tuner_dir, trial_id):
    with open(os.path.join(tuner_dir, f"trial_{trial_id}", "trial.json")) as f:
        return json.load(f)


def _reported(trial, name):
    """A metric as KerasTuner stored it in trial.json (one observation at step 0)."""
    (observation,) = trial["metrics"]["metrics"][name]["observations"]
    return observation["value"][0]


def _metric_lines(model_dir):
    with open(os.path.join(model_dir, training.METRICS_FILENAME)) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def image_data(cifar_bin_dir):
    _, loaded = tuning.load_search_data(_search("unused", cifar_bin_dir))
    return loaded


def test_search_space_samples_log_uniformly_within_bounds_and_keeps_fixed_values():
    space = tuning.SearchSpace(alpha=(1e-3, 1.0), sigma_0=(0.02, 0.05), init_s=0.07)
    space.validate()
    hp = space.hyperparameters()
    samples = {p.name: [p.random_sample(seed) for seed in range(400)] for p in hp.space}
    assert set(samples) == set(tuning.TUNED)
    assert all(v == 0.07 for v in samples["init_s"])
    for name, (low, high) in [
        ("alpha", (1e-3, 1.0)),
        ("sigma_0", (0.02, 0.05)),
        ("learning_rate", (1e-4, 1e-2)),
    ]:
        values = np.asarray(samples[name])
        assert values.min() >= low and values.max() <= high, name
        # Log-uniform: log(value) is uniform, so its median is the geometric midpoint
        # (for alpha 0.032, where a uniform draw would have a median of 0.5).
        midpoint = math.sqrt(low * high)
        assert abs(math.log(np.median(values) / midpoint)) < 0.15 * math.log(high / low), name


@pytest.mark.parametrize(
    "space, flag",
    [
        (tuning.SearchSpace(alpha=(0.5, 0.1)), "alpha_min"),
        (tuning.SearchSpace(sigma_0=(0.0, 0.3)), "sigma_0_min"),
        (tuning.SearchSpace(init_s=(0.01, math.inf)), "init_s_min"),
        (tuning.SearchSpace(learning_rate=-1e-3), "fix_learning_rate"),
        (tuning.SearchSpace(alpha=-0.1), "fix_alpha"),
        (tuning.SearchSpace(sigma_0=0.0), "fix_sigma_0"),
    ],
)
def test_bad_search_space_is_rejected_naming_the_flag(space, flag):
    with pytest.raises(ValueError, match=f"^{flag}"):
        space.validate()


def test_a_fixed_alpha_of_zero_is_allowed():
    tuning.SearchSpace(alpha=0.0).validate()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(max_trials=0), "max_trials"),
        (dict(epochs_per_trial=0), "epochs_per_trial"),
        (dict(combined_weight=1.5), "combined_weight"),
        (dict(objective="accuracy"), "objective"),
        (dict(tuner="grid"), "tuner"),
        (dict(hyperband_factor=1), "hyperband_factor"),
        (dict(validation_examples=0), "validation_examples"),
        (dict(space=tuning.SearchSpace(alpha=(1.0, 1.0))), "alpha_min"),
    ],
)
def test_bad_search_settings_are_rejected_naming_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        _search(tmp_path, "unused", **overrides).validate()


def test_objectives_are_computed_from_the_validation_accuracies(tmp_path):
    metrics = tuning.trial_metrics(clean_accuracy=0.8, robust_accuracy=0.3, combined_weight=0.25)
    assert metrics == pytest.approx(
        {"val_accuracy": 0.8, "val_robust_accuracy": 0.3, "val_combined": 0.25 * 0.3 + 0.75 * 0.8}
    )
    assert tuning.trial_metrics(0.8, 0.3, 0.0)["val_combined"] == pytest.approx(0.8)
    assert tuning.trial_metrics(0.8, 0.3, 1.0)["val_combined"] == pytest.approx(0.3)
    for objective, name in [
        ("clean", "val_accuracy"),
        ("robust", "val_robust_accuracy"),
        ("combined", "val_combined"),
    ]:
        oracle = tuning.make_oracle(_search(tmp_path, "unused", objective=objective))
        assert (oracle.objective.name, oracle.objective.direction) == (name, "max")
    assert tuning.SearchConfig.objective == "robust"  # the default objective


def test_best_record_takes_the_highest_completed_trial():
    def record(trial_id, status, robust):
        return {"trial_id": trial_id, "status": status, "metrics": {"val_robust_accuracy": robust}}

    records = [
        record("0", "COMPLETED", 0.2),
        record("1", "FAILED", None),
        record("2", "COMPLETED", 0.5),
        record("3", "COMPLETED", 0.5),
        record("4", "RUNNING", None),
        record("5", "COMPLETED", 0.1),
    ]
    assert tuning.best_record(records, "val_robust_accuracy")["trial_id"] == "2"
    assert tuning.best_record(records[:1] + records[5:], "val_robust_accuracy")["trial_id"] == "0"
    assert tuning.best_record([records[1], records[4]], "val_robust_accuracy") is None


def test_validation_split_is_capped_and_carved_from_the_training_set(cifar_bin_dir, image_data):
    search, loaded = tuning.load_search_data(
        _search("unused", cifar_bin_dir, validation_examples=1000)
    )
    assert search.base.validation_examples == NUM_VALIDATION
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
    original_fit = training.Trainer.fit

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
        patch.setattr(training.Trainer, "fit", recording_fit)
        for name in ("test_dataset", "test_arrays"):
            patch.setattr(data.ImageData, name, recording(name))
        state.run = 1
        state.first_best = tuning.run_search(
            _search(tuner_dir, cifar_bin_dir, max_trials=1), image_data, verbose=False
        )
        state.run, state.interrupt = 2, True
        with pytest.raises(KeyboardInterrupt):
            tuning.run_search(_search(tuner_dir, cifar_bin_dir), image_data, verbose=False)
        state.interrupted_trial = _trial_json(tuner_dir, "1")
        state.run = 3
        state.best = tuning.run_search(_search(tuner_dir, cifar_bin_dir), image_data, verbose=False)
        state.run = 4
        state.rerun_best = tuning.run_search(
            _search(tuner_dir, cifar_bin_dir), image_data, verbose=False
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
        assert [line["epoch"] for line in _metric_lines(directory)] == [1]


def test_interrupted_trial_is_retried_with_its_values(resumed_search):
    interrupted = resumed_search.interrupted_trial
    assert interrupted["status"] == "RUNNING"
    finished = _trial_json(resumed_search.tuner_dir, "1")
    assert finished["status"] == "COMPLETED"
    assert finished["hyperparameters"]["values"] == interrupted["hyperparameters"]["values"]
    assert _trial_json(resumed_search.tuner_dir, "0")["status"] == "COMPLETED"


def test_search_writes_best_hyperparameters_and_summary(resumed_search):
    tuner_dir = resumed_search.tuner_dir
    with open(os.path.join(tuner_dir, tuning.BEST_FILENAME)) as f:
        best = json.load(f)
    assert best == resumed_search.best == resumed_search.rerun_best
    assert best["objective"] == "val_robust_accuracy"
    assert set(best["hyperparameters"]) == set(tuning.TUNED)
    assert best["model_dir"] == os.path.join(tuner_dir, f"trial_{best['trial_id']}", "model")
    with open(os.path.join(tuner_dir, tuning.SUMMARY_FILENAME)) as f:
        rows = [line for line in f if line.startswith("| ") and "---" not in line]
    header, trial_rows = rows[0], rows[1:]
    assert header.split("|")[1].strip() == "trial"
    assert [row.split("|")[1].strip() for row in trial_rows] == ["0", "1"]
    marked = [row.split("|")[1].strip() for row in trial_rows if "**best**" in row]
    assert marked == [best["trial_id"]]
    for trial_id, row in zip("01", trial_rows, strict=True):
        trial = _trial_json(tuner_dir, trial_id)
        robust = _reported(trial, "val_robust_accuracy")
        assert f"| {robust:.4f} |" in row
        alpha = trial["hyperparameters"]["values"]["alpha"]
        assert f"| {alpha:.4g} |" in row
        assert 1e-3 <= alpha <= 1.0


def test_best_names_the_trial_with_the_highest_objective(resumed_search):
    tuner_dir = resumed_search.tuner_dir
    trials = {i: _trial_json(tuner_dir, i) for i in "01"}
    robust = {i: _reported(t, "val_robust_accuracy") for i, t in trials.items()}
    best = resumed_search.best
    assert best["objective_value"] == max(robust.values())
    assert robust[best["trial_id"]] == max(robust.values())
    assert best["hyperparameters"] == trials[best["trial_id"]]["hyperparameters"]["values"]
    for trial in trials.values():
        clean = _reported(trial, "val_accuracy")
        robust_value = _reported(trial, "val_robust_accuracy")
        combined = _reported(trial, "val_combined")
        assert combined == pytest.approx(0.5 * robust_value + 0.5 * clean)
        # Accuracies over 16 validation images: multiples of 1/16.
        assert clean * NUM_VALIDATION == pytest.approx(round(clean * NUM_VALIDATION))


def test_search_never_reads_the_test_set(resumed_search):
    assert resumed_search.test_reads == []
    for trial_id in "01":
        model_dir = os.path.join(resumed_search.tuner_dir, f"trial_{trial_id}", "model")
        config = training.read_config(model_dir)
        assert config.validation_examples == NUM_VALIDATION
        (line,) = _metric_lines(model_dir)
        assert "validation_accuracy" in line
        assert not any(key.startswith("test_") for key in line)


def test_trials_are_tf_keras_checkpoints(resumed_search, cifar_bin_dir, image_data):
    tuner = tuning.AdvBnnTuner(
        _search(resumed_search.tuner_dir, cifar_bin_dir), image_data=image_data
    )
    (best_trial,) = tuner.oracle.get_best_trials(1)
    model = tuner.load_model(best_trial)
    assert isinstance(model, tf_keras.Model)
    names = {
        os.path.basename(p) for p in glob.glob(f"{resumed_search.tuner_dir}/**", recursive=True)
    }
    # Neither KerasTuner's Keras-3 weights nor a per-trial SavedModel.
    assert not names & {"checkpoint.weights.h5", "build_config.json", "saved_model"}


def test_rerun_with_other_settings_is_rejected(resumed_search, cifar_bin_dir, image_data):
    changed = _search(resumed_search.tuner_dir, cifar_bin_dir, objective="clean")
    with pytest.raises(ValueError, match="objective: 'robust' there vs 'clean' now"):
        tuning.AdvBnnTuner(changed, image_data=image_data)
    wider = _search(
        resumed_search.tuner_dir, cifar_bin_dir, space=tuning.SearchSpace(alpha=(1e-4, 1.0))
    )
    with pytest.raises(ValueError, match="search_space.alpha.min"):
        tuning.AdvBnnTuner(wider, image_data=image_data)


def test_hyperband_continues_the_promoted_trial_from_its_checkpoint(
    tmp_path, cifar_bin_dir, image_data
):
    # max_epochs 2, factor 2: trials 0 and 1 train 1 epoch, trial 2 takes the better one to 2.
    search = _search(
        tmp_path,
        cifar_bin_dir,
        tuner="hyperband",
        hyperband_factor=2,
        epochs_per_trial=2,
        max_trials=3,
    )
    best = tuning.run_search(search, image_data, verbose=False)
    trials = {i: _trial_json(tmp_path, i) for i in "012"}
    values = trials["2"]["hyperparameters"]["values"]
    previous = values["tuner/trial_id"]
    assert (values["tuner/initial_epoch"], values["tuner/epochs"]) == (1, 2)
    assert {k: values[k] for k in tuning.TUNED} == {
        k: trials[previous]["hyperparameters"]["values"][k] for k in tuning.TUNED
    }
    robust = {i: _reported(t, "val_robust_accuracy") for i, t in trials.items()}
    assert robust[previous] == max(robust["0"], robust["1"])
    model_dir = tmp_path / "trial_2" / "model"
    # Only its second epoch was trained here: the first came with the copied checkpoint.
    assert [line["epoch"] for line in _metric_lines(model_dir)] == [2]
    assert training.read_config(model_dir).epochs == 2
    assert best["objective_value"] == max(robust.values())


def _run_cli(args, timeout):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "trainers.tune", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_searches_and_trains_the_best(tmp_path, cifar_bin_dir):
    tuner_dir = tmp_path / "search"
    result = _run_cli(
        [
            f"--data_dir={cifar_bin_dir}",
            f"--tuner_dir={tuner_dir}",
            "--model=vgg11",
            "--width_multiplier=0.0625",
            "--batch_size=16",
            "--max_train_examples=80",
            "--max_test_examples=16",
            "--validation_examples=16",
            "--train_pgd_steps=1",
            "--eval_pgd_steps=2",
            "--eval_num_samples=2",
            "--max_trials=1",
            "--epochs_per_trial=1",
            "--objective=combined",
            "--combined_weight=0.25",
            "--fix_alpha=0.1",
            "--sigma_0_min=0.02",
            "--sigma_0_max=0.04",
            "--train_best",
            "--epochs=1",
            "--export_num_samples=2",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tuner_dir / tuning.BEST_FILENAME) as f:
        best = json.load(f)
    assert best["trial_id"] == "0"
    assert best["objective"] == "val_combined"
    trial = _trial_json(tuner_dir, "0")
    expected = 0.25 * _reported(trial, "val_robust_accuracy") + 0.75 * _reported(
        trial, "val_accuracy"
    )
    assert best["objective_value"] == pytest.approx(expected)
    assert best["hyperparameters"]["alpha"] == 0.1
    assert 0.02 <= best["hyperparameters"]["sigma_0"] <= 0.04
    assert (tuner_dir / tuning.SUMMARY_FILENAME).is_file()
    assert (tuner_dir / tuning.SEARCH_FILENAME).is_file()
    assert "**best**" in result.stdout
    # The best values retrained on the whole training set and exported.
    config = training.read_config(str(tuner_dir / "best"))
    assert {name: getattr(config, name) for name in tuning.TUNED} == best["hyperparameters"]
    assert (config.validation_examples, config.epochs) == (0, 1)
    assert (tuner_dir / "best" / "saved_model" / "saved_model.pb").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--alpha_min=0.5", "--alpha_max=0.1"], "--alpha_min=0.5 must be > 0 and below alpha_max"),
        (["--alpha=0.1"], "--alpha is tuned by this search: fix it with --fix_alpha"),
        (["--fix_sigma_0=0.1", "--sigma_0_max=0.2"], "--fix_sigma_0 and --sigma_0_min"),
    ],
)
def test_cli_rejects_bad_flags_naming_them(tmp_path, args, message):
    result = _run_cli([f"--tuner_dir={tmp_path / 'search'}", *args], timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "search").exists()
