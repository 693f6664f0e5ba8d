"""Tests for tfp_advbnn.attacks.cw: C&W's strength, the best iterate, the fallback iterate."""

import numpy as np
import pytest
from attack_problems import l2, linear_problem, trained_cifar_model

from tfp_advbnn.attacks.cw import cw_l2


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


def test_cw_reduces_accuracy_with_small_l2_perturbations(cifar_model):
    _, model_fn, images, labels = cifar_model
    x_adv = cw_l2(model_fn, images, labels, c=1.0, num_steps=50).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    correct = np.argmax(model_fn(images), axis=1) == labels
    fooled = correct & (np.argmax(model_fn(x_adv), axis=1) != labels)
    assert fooled.sum() >= 0.8 * correct.sum()
    # Successful perturbations are a small fraction of the images' own L2 norm (about 30).
    distortion = l2(x_adv - images)[fooled]
    assert distortion.max() < 2.0 and np.median(distortion) < 0.5
    assert np.median(distortion) < 0.05 * np.median(l2(images))


def test_cw_returns_the_smallest_successful_iterate():
    # An eager model_fn logs every iterate it sees; the attack must return, per example, the
    # least distorted logged iterate that was misclassified.
    base_fn, _, _, images, _ = linear_problem(num_classes=3, batch=8)
    labels = np.argmax(base_fn(images), axis=1).astype(np.int32)
    seen = []

    def model_fn(x):
        logits = base_fn(x)
        seen.append((x.numpy(), np.argmax(logits.numpy(), axis=1)))
        return logits

    x_adv = cw_l2(model_fn, images, labels, c=0.5, num_steps=30, learning_rate=0.05)
    iterates = np.stack([x for x, _ in seen])
    fooled = np.stack([pred != labels for _, pred in seen])
    assert len(seen) == 30 and fooled.any(axis=0).all()
    distortion = np.sqrt(np.sum((iterates - images) ** 2, axis=(2, 3, 4)))
    best = np.argmin(np.where(fooled, distortion, np.inf), axis=0)
    # Later successful iterates are larger here, so returning the last success would differ.
    last_success = np.array([np.flatnonzero(column).max() for column in fooled.T])
    assert np.any(best != last_success)
    np.testing.assert_allclose(x_adv, iterates[best, np.arange(len(labels))], atol=1e-7)


def test_cw_without_success_returns_the_last_iterate():
    # With c = 0 nothing pushes towards misclassification. The last iterate of a 10-step run is
    # the 11th point that an 11-step run evaluates, which an eager model_fn can log.
    base_fn, _, _, images, _ = linear_problem(num_classes=3)
    labels = np.argmax(base_fn(images), axis=1).astype(np.int32)
    seen = []

    def model_fn(x):
        seen.append(x.numpy())
        return base_fn(x)

    cw_l2(model_fn, images, labels, c=0.0, num_steps=11)
    x_adv = cw_l2(base_fn, images, labels, c=0.0, num_steps=10).numpy()
    np.testing.assert_allclose(x_adv, seen[10], atol=1e-7)
    assert np.all(np.argmax(base_fn(x_adv), axis=1) == labels)
    # Adam's normalized steps move even a zero-margin problem, so this is not just the input.
    assert np.abs(x_adv - images).max() > 1e-4
