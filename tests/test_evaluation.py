"""Evaluation suite: sweeps, gradient-masking checks, multi-model modes, outputs and the CLI."""

import dataclasses
import itertools
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT

from tfp_advbnn import data, evaluation, models, training

IMAGE_SHAPE = (32, 32, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_KEYS = {
    "model_dir",
    "defense",
    "attack",
    "num_examples",
    "pgd_steps",
    "num_samples",
    "num_eot_samples",
    "clean_accuracy",
    "eps",
    "accuracy",
    "mean_distortion",
    "checks",
}
CHECK_NAMES = [
    "accuracy_monotonic_in_eps",
    "unbounded_attack",
    "iterative_at_least_single_step",
    "more_steps_converged",
    "nonzero_gradient",
    "eot_at_least_single_draw",
]


@pytest.fixture(scope="module")
def small_data(cifar_bin_dir):
    return data.load_data(
        "cifar10", data_dir=str(cifar_bin_dir), max_train_examples=64, max_test_examples=40
    )


@pytest.fixture(scope="module")
def fit_set(cifar_bin_dir):
    """The 64 training images the tiny run memorises: float32 [64, 32, 32, 3], int32 [64].

    Robustness tests need a model that is right on most of its inputs, which a 64-image run
    only is on the images it was trained on.
    """
    (x_train, y_train), _ = data.load_cifar10_arrays(str(cifar_bin_dir))
    return x_train[:64].astype(np.float32) / 255.0, y_train[:64].astype(np.int32)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, small_data, cifar_bin_dir):
    """A plain (deterministic) tiny VGG-11 run trained on 64 CIFAR-10 images."""
    model_dir = tmp_path_factory.mktemp("runs") / "plain"
    config = training.TrainConfig(
        model_dir=str(model_dir),
        dataset="cifar10",
        data_dir=str(cifar_bin_dir),
        max_train_examples=64,
        max_test_examples=40,
        model="vgg11",
        defense="plain",
        width_multiplier=0.0625,
        epochs=8,
        batch_size=8,
        learning_rate=0.003,
        eval_num_samples=1,
        export_num_samples=1,
        seed=1,
    )
    training.Trainer(config, image_data=small_data).fit(verbose=False)
    return model_dir


@pytest.fixture(scope="module")
def trained(trained_dir):
    return evaluation.load_model(str(trained_dir))


def _tiny_fn(defense, seed=3):
    model = models.build_model(
        "vgg11",
        defense,
        num_classes=10,
        input_shape=IMAGE_SHAPE,
        width_multiplier=0.0625,
        sigma_0=0.05,
        init_s=0.05,
        seed=seed,
    )
    return lambda x: model(x, training=False)


def _config(**overrides):
    values = dict(
        eps_grid=(0.0, 0.01, 0.03),
        pgd_steps=8,
        num_samples=2,
        batch_size=24,
        check_examples=32,
        check_eot_samples=2,
    )
    values.update(overrides)
    return evaluation.EvalConfig(**values)


def _assert_png(path):
    with open(path, "rb") as f:
        content = f.read()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 10_000  # a drawn figure, not an empty canvas


def test_default_eps_grids_are_the_papers():
    cifar = evaluation.default_eps_grid("cifar10")
    assert len(cifar) == 15 and cifar[0] == 0.0 and cifar[-1] == pytest.approx(0.07)
    np.testing.assert_allclose(np.diff(cifar), 0.005, atol=1e-9)
    assert evaluation.default_eps_grid("stl10") == cifar
    imagenet = evaluation.default_eps_grid("folder")
    assert len(imagenet) == 11 and imagenet[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(imagenet), 0.002, atol=1e-9)
    with pytest.raises(ValueError, match="mnist"):
        evaluation.default_eps_grid("mnist")


@pytest.mark.parametrize(
    "field, value",
    [
        ("attack", "deepfool"),
        ("eps_grid", (0.0, 1.5)),
        ("eps_grid", ()),
        ("pgd_steps", 0),
        ("pgd_step_size", 0.0),
        ("random_restarts", -1),
        ("num_eot_samples", 0),
        ("num_samples", 0),
        ("max_examples", 0),
        ("batch_size", 2.5),
        ("check_eot_samples", 1),
    ],
)
def test_eval_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        evaluation.EvalConfig(**{field: value})


def test_sweep_on_a_trained_model(trained, fit_set):
    images, labels = fit_set
    report = evaluation.sweep(trained.model_fn, images, labels, _config(), label="plain")
    logits = trained.model_fn(tf.constant(images)).numpy()
    independent_clean = float(np.mean(logits.argmax(axis=1) == labels))
    assert independent_clean > 0.15  # above chance: the run has learned something
    assert report["clean_accuracy"] == pytest.approx(independent_clean)
    # eps = 0 leaves every image as it is.
    assert report["accuracy"][0] == pytest.approx(independent_clean)
    assert report["mean_distortion"][0] == 0.0
    for eps, distortion in zip(report["eps"][1:], report["mean_distortion"][1:], strict=True):
        assert 0.9 * eps <= distortion <= eps + 1e-6
    accuracy = report["accuracy"]
    assert all(b <= a + 1.0 / len(images) for a, b in itertools.pairwise(accuracy))
    assert accuracy[-1] < accuracy[0]
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    by_name = {c["name"]: c for c in report["checks"]}
    for check in report["checks"]:
        assert isinstance(check["passed"], bool) and check["message"]
    assert by_name["unbounded_attack"]["passed"]
    assert by_name["unbounded_attack"]["accuracy"] <= evaluation.UNBOUNDED_MAX_ACCURACY
    assert by_name["nonzero_gradient"]["passed"]
    assert by_name["accuracy_monotonic_in_eps"]["passed"]
    assert by_name["eot_at_least_single_draw"]["applicable"] is False
    assert report["stochastic"] is False
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize("defense, calls_per_score", [("plain", 1), ("adv_bnn", 5)])
def test_deterministic_models_are_scored_with_one_call(fit_set, defense, calls_per_score):
    # Every draw of a deterministic model is the same, so its ensemble of 5 is one call; a
    # stochastic model's is 5. Calls: 2 (the stochasticity probe), then per batch the clean
    # score and, per eps, pgd_steps attack calls (one per step) and the score.
    model_fn = _tiny_fn(defense)
    calls = tf.Variable(0)

    def counting_fn(x):
        calls.assign_add(1)
        return model_fn(x)

    images, labels = fit_set
    config = _config(eps_grid=(0.0, 0.02), pgd_steps=3, num_samples=5, batch_size=32)
    evaluation.run_sweep(counting_fn, images[:32], labels[:32], config)
    attack_calls = 3
    # The eps-0 "attack" runs too: PGD projects onto the radius-0 ball.
    assert int(calls.numpy()) == 2 + calls_per_score + 2 * (attack_calls + calls_per_score)


def test_random_restarts_never_increase_accuracy(trained, fit_set):
    images, labels = fit_set
    config = _config(eps_grid=(0.01, 0.03), num_samples=1, max_examples=32)
    once = evaluation.run_sweep(trained.model_fn, images, labels, config)
    restarted = evaluation.run_sweep(
        trained.model_fn, images, labels, dataclasses.replace(config, random_restarts=2)
    )
    # The first run is the same deterministic attack; restarts can only add fooled examples.
    assert not np.any(restarted.correct & ~once.correct)
    assert all(r <= o for r, o in zip(restarted.accuracy, once.accuracy, strict=True))
    assert np.all(restarted.distortion <= np.array(restarted.eps)[:, None] + 1e-6)


def test_checks_catch_a_model_with_masked_gradients(trained, fit_set, caplog):
    images, labels = fit_set
    masked = lambda x: trained.model_fn(tf.stop_gradient(x))  # noqa: E731
    config = _config()
    result = evaluation.run_sweep(masked, images, labels, config)
    assert result.accuracy == [result.clean_accuracy] * 3  # no gradient, no attack
    with caplog.at_level(logging.WARNING):
        found = {c["name"]: c for c in evaluation.checks(masked, images, labels, config, result)}
    assert not found["nonzero_gradient"]["passed"]
    assert found["nonzero_gradient"]["fraction_zero_gradient"] == 1.0
    assert not found["unbounded_attack"]["passed"]
    # The checks use the first check_examples examples; none of them can be attacked.
    subset_clean = result.clean_correct[: config.check_examples].mean()
    assert found["unbounded_attack"]["accuracy"] == pytest.approx(subset_clean)
    assert "nonzero_gradient" in caplog.text and "unbounded_attack" in caplog.text


def _outcomes(num, correct_indices):
    """bool [num], True at ``correct_indices``."""
    correct = np.zeros(num, bool)
    correct[list(correct_indices)] = True
    return correct


def test_monotonic_check_fails_when_accuracy_rises_with_eps(caplog):
    # 60% correct at eps 0.01 but 100% at 0.02 on the same 100 examples: 40 gained, none lost.
    rising = np.stack([_outcomes(100, range(80)), _outcomes(100, range(60)), np.ones(100, bool)])
    for stochastic in (False, True):
        with caplog.at_level(logging.WARNING):
            verdict = evaluation.check_monotonic([0.0, 0.01, 0.02], rising, stochastic)
        assert not verdict["passed"]
        assert verdict["max_increase"] == pytest.approx(0.4)
        assert "eps=0.01 to eps=0.02" in verdict["message"]
    assert "accuracy_monotonic_in_eps" in caplog.text
    falling = rising[[2, 0, 1]]
    assert evaluation.check_monotonic([0.0, 0.01, 0.02], falling, False)["passed"]


def test_monotonic_check_tells_noise_from_a_rise_on_stochastic_models():
    # 12 examples gained and 8 lost: a 4-point rise that is within noise (z = 0.9) for a
    # random model, but a real rise for a deterministic one.
    before = _outcomes(100, range(40))
    after = _outcomes(100, [*range(8, 40), *range(40, 52)])
    correct = np.stack([before, after])
    assert evaluation.check_monotonic([0.01, 0.02], correct, True)["passed"]
    assert not evaluation.check_monotonic([0.01, 0.02], correct, False)["passed"]


def test_unbounded_check_threshold():
    assert evaluation.check_unbounded(0.0, 500, "PGD")["passed"]
    assert not evaluation.check_unbounded(0.3, 500, "PGD")["passed"]


def test_single_step_check_fails_when_fgsm_beats_the_iterative_attack():
    iterative = np.ones(100, bool)
    single = _outcomes(100, range(30, 100))  # FGSM fools 30 examples that PGD misses
    for stochastic in (False, True):
        verdict = evaluation.check_iterative_vs_single_step(
            iterative, single, 0.03, stochastic, iterative="PGD", single="FGSM"
        )
        assert not verdict["passed"]
        assert verdict["fraction_fooled_only_by_single_step"] == pytest.approx(0.3)
    ok = evaluation.check_iterative_vs_single_step(
        single, iterative, 0.03, False, iterative="PGD", single="FGSM"
    )
    assert ok["passed"]


def test_more_steps_check_fails_in_both_directions():
    base = _outcomes(200, range(80))
    same = evaluation.check_more_steps(base, base, 20, 0.03, True)
    assert same["passed"]
    rises = evaluation.check_more_steps(base, _outcomes(200, range(120)), 20, 0.03, True)
    assert not rises["passed"] and "rises" in rises["message"]
    drops = evaluation.check_more_steps(base, _outcomes(200, range(40)), 20, 0.03, True)
    assert not drops["passed"] and "not converged" in drops["message"]


def test_eot_check():
    single = _outcomes(200, range(60))
    assert not evaluation.check_eot(single, _outcomes(200, range(120)), 10, 0.03, True)["passed"]
    assert evaluation.check_eot(single, _outcomes(200, range(50)), 10, 0.03, True)["passed"]
    deterministic = evaluation.check_eot(None, None, 10, 0.03, False)
    assert deterministic["passed"] and not deterministic["applicable"]


def test_checks_on_a_stochastic_model_run_the_eot_check(fit_set):
    images, labels = fit_set
    model_fn = _tiny_fn("rse")
    config = _config(eps_grid=(0.0, 0.02), pgd_steps=3, check_examples=16)
    result = evaluation.run_sweep(model_fn, images[:16], labels[:16], config)
    found = {c["name"]: c for c in evaluation.checks(model_fn, images, labels, config, result)}
    assert found["eot_at_least_single_draw"]["applicable"]
    assert found["eot_at_least_single_draw"]["num_eot_samples"] == 2
    assert found["nonzero_gradient"]["passed"]
    assert list(found) == CHECK_NAMES


def test_ensemble_sweep_writes_json_and_png(tmp_path, fit_set):
    images, labels = fit_set
    report = evaluation.ensemble_sweep(
        _tiny_fn("bnn"), images[:16], labels[:16], _config(pgd_steps=3), [0.0, 0.02], [1, 3]
    )
    assert np.array(report["accuracy"]).shape == (2, 2)
    assert len(report["clean_accuracy"]) == 2
    evaluation.write_json(report, str(tmp_path / "ensemble.json"))
    evaluation.plot_report(report, str(tmp_path / "ensemble.png"))
    assert json.loads((tmp_path / "ensemble.json").read_text())["ensemble_sizes"] == [1, 3]
    _assert_png(tmp_path / "ensemble.png")


def test_steps_sweep_writes_json_and_png(tmp_path, trained, fit_set):
    images, labels = fit_set
    report = evaluation.steps_sweep(
        trained.model_fn, images, labels, _config(), [0.01, 0.03], [1, 4]
    )
    accuracy = np.array(report["accuracy"])
    assert accuracy.shape == (2, 2)
    assert np.all((0 <= accuracy) & (accuracy <= 1))
    evaluation.write_json(report, str(tmp_path / "steps.json"))
    evaluation.plot_report(report, str(tmp_path / "steps.png"))
    assert json.loads((tmp_path / "steps.json").read_text())["steps"] == [1, 4]
    _assert_png(tmp_path / "steps.png")
    with pytest.raises(ValueError, match="iterative"):
        evaluation.steps_sweep(
            trained.model_fn, images, labels, _config(attack="fgsm"), [0.01], [1]
        )


def test_compare_writes_curves_and_a_table(tmp_path, trained, fit_set):
    images, labels = fit_set
    config = _config(pgd_steps=3, max_examples=24)
    model_fns = {"No defense": trained.model_fn, "RSE": _tiny_fn("rse")}
    report = evaluation.compare(model_fns, images, labels, config, with_checks=False)
    assert [m["label"] for m in report["models"]] == ["No defense", "RSE"]
    assert all(len(m["accuracy"]) == 3 and m["num_examples"] == 24 for m in report["models"])
    table = report["table_markdown"].splitlines()
    assert table[2] == "| Model | 0 | 0.01 | 0.03 |"
    first_row = "| No defense | " + " | ".join(
        f"{100 * a:.1f}" for a in report["models"][0]["accuracy"]
    )
    assert table[4] == first_row + " |" and table[5].startswith("| RSE |")
    evaluation.write_json(report, str(tmp_path / "compare.json"))
    evaluation.plot_report(report, str(tmp_path / "compare.png"))
    _assert_png(tmp_path / "compare.png")


def test_transfer_matrices_and_heatmap(tmp_path, trained, fit_set):
    images, labels = fit_set
    config = _config(pgd_steps=4)
    model_fns = {"plain": trained.model_fn, "rse": _tiny_fn("rse"), "rse2": _tiny_fn("rse", 4)}
    report = evaluation.transfer(model_fns, images, labels, config, [0.03])
    accuracy = np.array(report["accuracy"])
    assert accuracy.shape == (1, 3, 3)
    assert np.array(report["affinity"], dtype=object).shape == (1, 3, 3)
    # The white-box corner matches an independent sweep of the deterministic model.
    white_box = evaluation.run_sweep(
        trained.model_fn, images, labels, _config(pgd_steps=4, eps_grid=(0.03,))
    )
    assert accuracy[0, 0, 0] == pytest.approx(white_box.accuracy[0])
    clean = report["clean_accuracy"]
    assert clean[0] == pytest.approx(white_box.clean_accuracy)
    for s in range(3):
        for t in range(3):
            rho = report["affinity"][0][s][t]
            lost = clean[t] - accuracy[0, t, t]
            if lost > 0:
                assert rho == pytest.approx((clean[t] - accuracy[0, s, t]) / lost)
            else:
                assert rho is None
    assert report["affinity"][0][0][0] == pytest.approx(1.0)
    evaluation.write_json(report, str(tmp_path / "transfer.json"))
    evaluation.plot_report(report, str(tmp_path / "transfer.png"))
    _assert_png(tmp_path / "transfer.png")


def test_load_model_falls_back_to_the_saved_model(tmp_path, trained_dir, trained, fit_set):
    copy = tmp_path / "no_checkpoint"
    shutil.copytree(trained_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    loaded = evaluation.load_model(str(copy))
    assert (loaded.source, trained.source) == ("saved_model", "checkpoint")
    images = tf.constant(fit_set[0][:8])
    np.testing.assert_allclose(
        loaded.model_fn(images).numpy(), trained.model_fn(images).numpy(), rtol=1e-4, atol=1e-5
    )
    shutil.rmtree(copy / "saved_model")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        evaluation.load_model(str(copy))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainers.evaluate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_sweep_with_apgd_writes_report_and_plot(tmp_path, trained_dir):
    output = tmp_path / "report.json"
    result = _cli(
        f"--model_dir={trained_dir}",
        "--attack=apgd",
        "--eps_grid=0,0.01,0.03",
        "--pgd_steps=5",
        "--num_samples=2",
        "--max_examples=24",
        "--batch_size=12",
        "--check_examples=12",
        f"--output={output}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["attack"] == "apgd" and report["defense"] == "plain"
    assert report["model_dir"] == str(trained_dir) and report["num_examples"] == 24
    assert report["eps"] == [0.0, 0.01, 0.03] and len(report["accuracy"]) == 3
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    assert report["model_source"] == "checkpoint"
    _assert_png(tmp_path / "report.png")


def test_cli_transfer_with_a_saved_model_only_run(tmp_path, trained_dir):
    other = tmp_path / "exported_only"
    shutil.copytree(trained_dir, other, ignore=shutil.ignore_patterns("checkpoints"))
    output = tmp_path / "transfer.json"
    plot = tmp_path / "heatmap.png"
    result = _cli(
        "--mode=transfer",
        f"--model_dirs={trained_dir},{other}",
        "--sweep_eps=0.03",
        "--pgd_steps=3",
        "--num_samples=1",
        "--max_examples=16",
        f"--output={output}",
        f"--plot={plot}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert np.array(report["affinity"]).shape == (1, 2, 2)
    # The two runs are the same network, so the attacks transfer exactly.
    np.testing.assert_allclose(
        np.array(report["accuracy"])[0], report["accuracy"][0][0][0], atol=1 / 16 + 1e-9
    )
    _assert_png(plot)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--num_samples=0"], "--num_samples"),
        (["--eps_grid=0,abc"], "--eps_grid"),
        (["--mode=transfer"], "--model_dirs"),
    ],
)
def test_cli_rejects_bad_flags_naming_them(trained_dir, args, flag):
    model_dir = [] if "--mode=transfer" in args else [f"--model_dir={trained_dir}"]
    result = _cli(*model_dir, *args)
    assert result.returncode != 0
    assert flag in result.stderr
