"""Evaluation under ``--strategy=mirrored`` (evaluation/engine.py, runner.py): each batch split
across two logical CPUs gives the report of one device, on an uneven split too."""

import json

import numpy as np
import tensorflow as tf
from eval_support import eval_config

from tfp_advbnn import training
from tfp_advbnn.evaluation import engine, protocols, runner

pytest_plugins = ["eval_support"]


def test_split_batches_give_the_outcomes_of_one_device(fit_set, trained):
    """The tiny plain run, PGD from the clean point, 7-image batches (split
    3 + 4): the adversarial images and every outcome equal one device's."""
    images, labels = fit_set[0][:20], fit_set[1][:20]
    model_fn = trained.model_fn
    spec = protocols.AttackSpec.of(eval_config(), stochastic=False, attack="pgd_linf")
    results = {}
    for name in ("default", "mirrored"):
        strategy = training.build_strategy(name)
        with strategy.scope():
            evaluator = engine.Evaluator(model_fn, images, stochastic=False)
            assert evaluator.strategy.num_replicas_in_sync == (2 if name == "mirrored" else 1)
            outcomes = engine.attack_outcomes(
                evaluator,
                [engine.Target(evaluator, 1)],
                images,
                labels,
                spec,
                [0.0, 0.01, 0.03],
                restarts=0,
                batch_size=7,
                seed=0,
                progress=False,
            )
            craft = evaluator.craft(spec, random_start=False)
            x_adv = craft(
                tf.constant(images[:7]),
                tf.constant(labels[:7]),
                tf.constant(0.03),
                tf.constant(0.0075),
                tf.constant([0, 0], tf.int64),
            )
        results[name] = outcomes, x_adv.numpy()
    (single, single_adv), (mirrored, mirrored_adv) = results["default"], results["mirrored"]
    assert mirrored_adv.shape == single_adv.shape == images[:7].shape
    np.testing.assert_allclose(mirrored_adv, single_adv, atol=1e-6)
    # The attack moved the images (else the comparison would say little), the same way on both.
    assert np.abs(single_adv - images[:7]).max() > 0.02
    np.testing.assert_array_equal(mirrored.correct, single.correct)
    np.testing.assert_array_equal(mirrored.robust, single.robust)
    np.testing.assert_allclose(mirrored.distortion, single.distortion, atol=1e-6)


def test_runner_on_mirrored_writes_the_report_of_one_device(tmp_path, trained_dir):
    reports = {}
    for name in ("default", "mirrored"):
        request = runner.Request(
            "sweep",
            (str(trained_dir),),
            output=str(tmp_path / f"{name}.json"),
            with_checks=False,
            strategy=name,
        )
        config = eval_config(attack_steps=4, max_examples=21, batch_size=9)
        runner.run(request, config)
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    keys = ("num_examples", "clean_accuracy", "accuracy", "robust_accuracy", "mean_distortion")
    for key in keys:
        np.testing.assert_allclose(reports["mirrored"][key], reports["default"][key], atol=1e-6)
    assert reports["default"]["num_examples"] == 21
