"""The attack evaluator: one call per score of a deterministic model; restarts only add fools."""

import dataclasses
import logging

import numpy as np
import pytest
import tensorflow as tf
from eval_support import eval_config, tiny_fn

from tfp_advbnn.evaluation.sweeps import run_sweep, sweep

pytest_plugins = ["eval_support"]


@pytest.mark.parametrize("defense, calls_per_score", [("plain", 1), ("adv_bnn", 5)])
def test_deterministic_models_are_scored_with_one_call(fit_set, defense, calls_per_score):
    # Every draw of a deterministic model is the same, so its ensemble of 5 is one call; a
    # stochastic model's is 5. Calls: 2 (the stochasticity probe), then per batch the clean
    # score and, per eps, attack_steps attack calls (one per step; none at eps 0, where nothing
    # can be perturbed) and the score (clean and adversarial halves in one call). The clean
    # score passes the 32 images once; the others pass 2 x 32 (the probe and the scores).
    model_fn = tiny_fn(defense)
    calls = tf.Variable(0)
    rows = tf.Variable(0)

    def counting_fn(x):
        calls.assign_add(1)
        rows.assign_add(tf.shape(x)[0])
        return model_fn(x)

    images, labels = fit_set
    config = eval_config(eps_grid=(0.0, 0.02), attack_steps=3, num_samples=5, batch_size=32)
    run_sweep(counting_fn, images[:32], labels[:32], config)
    attack_calls = 3
    assert int(calls.numpy()) == 2 + calls_per_score + calls_per_score + (
        attack_calls + calls_per_score
    )
    probe, clean, at_zero, at_eps = 2 * 8, 32 * calls_per_score, 64 * calls_per_score, 64
    assert int(rows.numpy()) == probe + clean + at_zero + 32 * attack_calls + at_eps * (
        calls_per_score
    )


def test_random_restarts_never_increase_accuracy(trained, fit_set):
    images, labels = fit_set
    config = eval_config(eps_grid=(0.01, 0.03), num_samples=1, max_examples=32)
    once = run_sweep(trained.model_fn, images, labels, config)
    restarted = run_sweep(
        trained.model_fn, images, labels, dataclasses.replace(config, random_restarts=2)
    )
    # The first run is the same deterministic attack; restarts can only add fooled examples.
    assert not np.any(restarted.correct & ~once.correct)
    assert all(r <= o for r, o in zip(restarted.accuracy, once.accuracy, strict=True))
    assert np.all(restarted.distortion <= np.array(restarted.eps)[:, None] + 1e-6)


def test_a_sweep_with_its_checks_logs_no_retracing_warning(fit_set):
    """The checks craft with several attacks (FGSM, more steps, EOT, ...), each its own graph
    traced once: TF's frequent-retracing detector must not take them for retraces of one."""
    images, labels = fit_set[0][:6], fit_set[1][:6]
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    tf.get_logger().addHandler(handler)
    try:
        sweep(tiny_fn("adv_bnn"), images, labels, eval_config(attack_steps=2, batch_size=3))
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [m for m in messages if "retracing" in m], messages
