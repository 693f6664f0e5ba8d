"""Adversarial detection by uncertainty: the rank AUC against scikit-learn, the report against
an independent recomputation (PGD from the attack library, entropy in numpy, AUC by sklearn),
a deterministic model's zero mutual information, refused settings, and the plot."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from eval_support import assert_png, eval_config
from sklearn.metrics import roc_auc_score

from tfp_advbnn import attacks, layers
from tfp_advbnn.evaluation.detection import detect, plot_detection, roc_auc

SHAPE = (8, 8, 3)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    negatives = rng.normal(size=17)
    positives = rng.normal(0.7, size=11)
    if seed % 2:
        # Coarse scores: many ties within and across the two classes.
        negatives, positives = np.round(negatives), np.round(positives)
    truth = np.r_[np.zeros(17), np.ones(11)]
    expected = roc_auc_score(truth, np.r_[negatives, positives])
    assert roc_auc(negatives, positives) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_extremes_and_bad_input():
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc([np.nan], [1.0])


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
    return images, rng.integers(0, 10, n).astype(np.int32)


def _linear_fn(seed=1):
    """A deterministic linear classifier of 8x8 images, logits of a few units."""
    model = tf_keras.Sequential(
        [
            tf_keras.Input(SHAPE),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(
                10, kernel_initializer=tf_keras.initializers.RandomNormal(0, 0.3, seed=seed)
            ),
        ]
    )
    return lambda x: model(x, training=False)


def _bayes_fn(seed=2):
    """A Bayesian linear classifier: fresh weights on every call."""
    model = tf_keras.Sequential(
        [
            tf_keras.Input(SHAPE),
            tf_keras.layers.Flatten(),
            layers.BayesDense(10, sigma_0=0.1, init_s=0.2, seed=seed),
        ]
    )
    return lambda x: model(x, training=False)


def _entropy(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    return -(p * np.log(p)).sum(axis=-1), p.argmax(axis=-1)


def test_report_matches_an_independent_recomputation():
    images, labels = _data()
    model_fn = _linear_fn()
    config = eval_config(attack_steps=5, batch_size=8)
    eps_values = (0.01, 0.05)
    report = detect(model_fn, images, labels, config, eps_values)
    assert report["mode"] == "detect"
    assert report["eps"] == list(eps_values)
    assert report["stochastic"] is False and report["ensemble_draws"] == 1
    clean_entropy, clean_pred = _entropy(model_fn(tf.constant(images)).numpy())
    assert report["clean_accuracy"] == pytest.approx(np.mean(clean_pred == labels))
    assert report["clean_mean"]["entropy"] == pytest.approx(clean_entropy.mean(), rel=1e-5)
    assert report["clean_mean"]["mutual_information"] == 0.0
    for e, eps in enumerate(eps_values):
        x_adv = np.concatenate(
            [
                attacks.pgd(
                    model_fn,
                    tf.constant(images[s : s + 8]),
                    tf.constant(labels[s : s + 8]),
                    eps=eps,
                    step_size=attacks.default_step_size(eps, 5),
                    num_steps=5,
                ).numpy()
                for s in range(0, len(images), 8)
            ]
        )
        adv_entropy, adv_pred = _entropy(model_fn(tf.constant(x_adv)).numpy())
        assert report["adversarial_accuracy"][e] == pytest.approx(np.mean(adv_pred == labels))
        truth = np.r_[np.zeros(len(images)), np.ones(len(images))]
        expected = roc_auc_score(truth, np.r_[clean_entropy, adv_entropy])
        assert report["auc"]["entropy"][e] == pytest.approx(expected, abs=1e-9)
        # A deterministic model: mutual information 0 everywhere, every score tied.
        assert report["auc"]["mutual_information"][e] == 0.5
    # The attack works.
    assert report["adversarial_accuracy"][-1] < report["clean_accuracy"]


def test_a_bayesian_model_has_positive_mutual_information_below_the_entropy(tmp_path):
    images, labels = _data(16, seed=3)
    config = eval_config(attack_steps=3, batch_size=16, num_samples=4)
    report = detect(_bayes_fn(), images, labels, config, (0.0, 0.03))
    assert report["stochastic"] is True and report["ensemble_draws"] == 4
    clean = report["clean_mean"]
    assert 0.0 < clean["mutual_information"] < clean["entropy"] <= np.log(10)
    for name in ("entropy", "mutual_information"):
        assert all(0.0 <= auc <= 1.0 for auc in report["auc"][name])
        assert len(report["adversarial_mean"][name]) == 2
    path = plot_detection(report, str(tmp_path / "detect.png"))
    assert_png(path)


@pytest.mark.parametrize(
    "overrides, eps, message",
    [
        (dict(random_restarts=1), (0.01,), "random_restarts"),
        (dict(protocol="adaptive"), (0.01,), "protocol"),
        (dict(attack="cw"), (0.01,), "bounded"),
        ({}, (1.5,), "eps"),
        ({}, (), "at least one eps"),
    ],
)
def test_refused_settings_name_themselves(overrides, eps, message):
    images, labels = _data(4)
    with pytest.raises(ValueError, match=message):
        detect(_linear_fn(), images, labels, eval_config(**overrides), eps)


def test_plot_refuses_another_report(tmp_path):
    with pytest.raises(ValueError, match="detect"):
        plot_detection({"mode": "sweep"}, str(tmp_path / "x.png"))
