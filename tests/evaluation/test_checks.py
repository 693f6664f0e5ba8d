"""The gradient-masking checks: each verdict on crafted outcomes, and ``checks`` on real models."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from eval_support import CHECK_NAMES, eval_config, tiny_fn

from tfp_advbnn.evaluation.checks import (
    check_eot,
    check_iterative_vs_single_step,
    check_monotonic,
    check_more_steps,
    check_unbounded,
    checks,
)
from tfp_advbnn.evaluation.sweeps import run_sweep

pytest_plugins = ["eval_support"]


def test_checks_catch_a_model_with_masked_gradients(trained, fit_set, caplog):
    images, labels = fit_set
    masked = lambda x: trained.model_fn(tf.stop_gradient(x))  # noqa: E731
    config = eval_config()
    result = run_sweep(masked, images, labels, config)
    assert result.accuracy == [result.clean_accuracy] * 3  # no gradient, no attack
    with caplog.at_level(logging.WARNING):
        found = {c["name"]: c for c in checks(masked, images, labels, config, result)}
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
            verdict = check_monotonic([0.0, 0.01, 0.02], rising, stochastic)
        assert not verdict["passed"]
        assert verdict["max_increase"] == pytest.approx(0.4)
        assert "eps=0.01 to eps=0.02" in verdict["message"]
    assert "accuracy_monotonic_in_eps" in caplog.text
    falling = rising[[2, 0, 1]]
    assert check_monotonic([0.0, 0.01, 0.02], falling, False)["passed"]


def test_monotonic_check_tells_noise_from_a_rise_on_stochastic_models():
    # 12 examples gained and 8 lost: a 4-point rise that is within noise (z = 0.9) for a
    # random model, but a real rise for a deterministic one.
    before = _outcomes(100, range(40))
    after = _outcomes(100, [*range(8, 40), *range(40, 52)])
    correct = np.stack([before, after])
    assert check_monotonic([0.01, 0.02], correct, True)["passed"]
    assert not check_monotonic([0.01, 0.02], correct, False)["passed"]


def test_unbounded_check_threshold():
    assert check_unbounded(0.0, 500, "PGD")["passed"]
    assert not check_unbounded(0.3, 500, "PGD")["passed"]


def test_single_step_check_fails_when_fgsm_beats_the_iterative_attack():
    iterative = np.ones(100, bool)
    single = _outcomes(100, range(30, 100))  # FGSM fools 30 examples that PGD misses
    for stochastic in (False, True):
        verdict = check_iterative_vs_single_step(
            iterative, single, 0.03, stochastic, iterative="PGD", single="FGSM"
        )
        assert not verdict["passed"]
        assert verdict["fraction_fooled_only_by_single_step"] == pytest.approx(0.3)
    ok = check_iterative_vs_single_step(
        single, iterative, 0.03, False, iterative="PGD", single="FGSM"
    )
    assert ok["passed"]


def test_more_steps_check_fails_in_both_directions():
    base = _outcomes(200, range(80))
    same = check_more_steps(base, base, 20, 0.03, True)
    assert same["passed"]
    rises = check_more_steps(base, _outcomes(200, range(120)), 20, 0.03, True)
    assert not rises["passed"] and "rises" in rises["message"]
    drops = check_more_steps(base, _outcomes(200, range(40)), 20, 0.03, True)
    assert not drops["passed"] and "not converged" in drops["message"]


def test_eot_check():
    single = _outcomes(200, range(60))
    assert not check_eot(single, _outcomes(200, range(120)), 10, 0.03, True)["passed"]
    assert check_eot(single, _outcomes(200, range(50)), 10, 0.03, True)["passed"]
    deterministic = check_eot(None, None, 10, 0.03, False)
    assert deterministic["passed"] and not deterministic["applicable"]


def test_checks_on_a_stochastic_model_run_the_eot_check(fit_set):
    images, labels = fit_set
    model_fn = tiny_fn("rse")
    config = eval_config(eps_grid=(0.0, 0.02), attack_steps=3, check_examples=16)
    result = run_sweep(model_fn, images[:16], labels[:16], config)
    found = {c["name"]: c for c in checks(model_fn, images, labels, config, result)}
    assert found["eot_at_least_single_draw"]["applicable"]
    assert found["eot_at_least_single_draw"]["num_eot_samples"] == 2
    assert found["nonzero_gradient"]["passed"]
    assert list(found) == CHECK_NAMES
