"""Square Attack through ART: strength against the exact L-inf optimum of a linear model, the
eps-ball and the box, the ensemble it queries, seeding, bad input and the missing-extra error."""

import importlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn.attacks import square
from tfp_advbnn.attacks.square import ensemble_classifier, square_attack

SIDE = 8  # Square's first square must be smaller than the image: round(sqrt(0.8 * 64)) = 7
DIM = SIDE * SIDE * 3
NUM_CLASSES = 3


def linear_problem(num=40, low=0.1, high=0.9, seed=0):
    """A fixed linear 3-class model on [N, 8, 8, 3] images, labelled with its own predictions."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(DIM, NUM_CLASSES)).astype(np.float32)
    bias = rng.normal(size=(NUM_CLASSES,)).astype(np.float32)
    images = rng.uniform(low, high, size=(num, SIDE, SIDE, 3)).astype(np.float32)

    def model_fn(x):
        return tf.reshape(x, [-1, DIM]) @ weights + bias

    labels = np.argmax(images.reshape(num, DIM) @ weights + bias, axis=1).astype(np.int32)
    return model_fn, weights, bias, images, labels


def optimally_attackable(weights, bias, images, labels, eps):
    """bool [N]: some L-inf perturbation of size eps flips the linear model's prediction.

    The margin of class y over j falls by at most eps * ||w_y - w_j||_1, reached by
    delta = -eps * sign(w_y - w_j); the images lie at least eps inside the box, so it is feasible.
    """
    logits = images.reshape(len(images), -1) @ weights + bias
    attackable = np.zeros(len(images), bool)
    for n, y in enumerate(labels):
        for j in range(weights.shape[1]):
            if j != y:
                diff = weights[:, y] - weights[:, j]
                attackable[n] |= logits[n, y] - logits[n, j] < eps * np.abs(diff).sum()
    return attackable


def predictions(model_fn, images):
    return np.argmax(model_fn(tf.constant(images)).numpy(), axis=1)


def test_square_approaches_the_exact_optimum_of_a_linear_model():
    model_fn, weights, bias, images, labels = linear_problem()
    eps = 0.02
    attackable = optimally_attackable(weights, bias, images, labels, eps)
    assert 0.25 <= attackable.mean() <= 0.75  # the problem separates a strong attack from none

    x_adv = square_attack(
        model_fn, images, labels, eps=eps, num_samples=1, max_queries=300, seed=0, batch_size=64
    )

    assert x_adv.dtype == np.float32 and x_adv.shape == images.shape
    assert np.abs(x_adv - images).max() <= eps + 1e-6
    fooled = predictions(model_fn, x_adv) != labels
    # No attack fools an example that no perturbation of size eps can flip ...
    assert not np.any(fooled & ~attackable)
    # ... and Square finds most of those that some perturbation flips.
    assert fooled[attackable].mean() >= 0.6


def test_square_stays_in_the_box_and_leaves_misclassified_examples_alone():
    model_fn, _, _, images, _ = linear_problem(low=0.0, high=1.0, seed=1)
    images[:, :2] = 0.0
    images[:, -2:] = 1.0
    labels = predictions(model_fn, images)
    labels[:5] = (labels[:5] + 1) % NUM_CLASSES  # already wrong: nothing to attack
    eps = 0.1

    x_adv = square_attack(
        model_fn, images, labels, eps=eps, num_samples=1, max_queries=50, seed=0, batch_size=64
    )

    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - images).max() <= eps + 1e-6
    np.testing.assert_array_equal(x_adv[:5], images[:5])
    assert np.mean(predictions(model_fn, x_adv)[5:] == labels[5:]) < 0.5


def test_eps_zero_returns_the_clean_images():
    model_fn, _, _, images, labels = linear_problem(num=4)
    x_adv = square_attack(model_fn, images, labels, eps=0.0, num_samples=1, seed=0)
    np.testing.assert_array_equal(x_adv, images)


def test_the_classifier_returns_the_mean_softmax_of_num_samples_fresh_draws_in_batches():
    # Draw k of the model adds k to the logit of class 0, so the ensemble of n draws is
    # mean_k softmax(z + k e_0), k = calls so far ...: computed here with numpy.
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(DIM, NUM_CLASSES)).astype(np.float32)
    images = rng.uniform(size=(5, SIDE, SIDE, 3)).astype(np.float32)
    calls = tf.Variable(0.0)

    def model_fn(x):
        shift = calls.assign_add(1.0) - 1.0
        return tf.reshape(x, [-1, DIM]) @ weights + shift * tf.one_hot(0, NUM_CLASSES)

    classifier = ensemble_classifier(
        model_fn, (SIDE, SIDE, 3), NUM_CLASSES, num_samples=3, batch_size=2
    )
    got = classifier.predict(images, batch_size=2)

    logits = images.reshape(5, DIM) @ weights
    expected = np.zeros((5, NUM_CLASSES))
    for batch, rows in enumerate([slice(0, 2), slice(2, 4), slice(4, 5)]):
        for k in range(3 * batch, 3 * batch + 3):
            shifted = logits[rows] + k * np.eye(NUM_CLASSES)[0]
            soft = np.exp(shifted - shifted.max(axis=1, keepdims=True))
            expected[rows] += soft / soft.sum(axis=1, keepdims=True) / 3
    assert calls.numpy() == 9  # three batches of two, two and one image, three draws each
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_seed_fixes_the_proposals_and_the_global_generator_is_left_as_it_was():
    model_fn, _, _, images, labels = linear_problem(num=12)
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    run = dict(eps=0.02, num_samples=1, max_queries=30, batch_size=16)
    first = square_attack(model_fn, images, labels, seed=5, **run)
    assert np.random.random() == expected_next
    again = square_attack(model_fn, images, labels, seed=5, **run)
    other = square_attack(model_fn, images, labels, seed=6, **run)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "change, needle",
    [
        (dict(eps=1.5), "eps"),
        (dict(num_samples=0), "num_samples"),
        (dict(max_queries=0), "max_queries"),
        (dict(p_init=1.0), "p_init"),
        (dict(p_init=0.95), "p_init=0.95"),
        (dict(batch_size=0), "batch_size"),
        (dict(labels=np.array([0, 1, 2, 3])), r"labels must lie in \[0, 3\)"),
        (dict(labels=np.array([0, 1])), "labels must have shape"),
        (dict(images=np.full((4, SIDE, SIDE, 3), 2.0, np.float32)), "images must lie in"),
    ],
)
def test_bad_arguments_are_refused_by_name(change, needle):
    model_fn, _, _, images, labels = linear_problem(num=4)
    arguments = dict(images=images, labels=labels, eps=0.02, num_samples=1, seed=0)
    arguments.update(change)
    with pytest.raises(ValueError, match=needle):
        square_attack(model_fn, **arguments)


def test_without_art_the_package_imports_and_the_error_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "art" or m.startswith("art.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "art", None)
    importlib.reload(square)  # the module itself must not need ART
    model_fn, _, _, images, labels = linear_problem(num=4)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[attacks\]"'):
        square.square_attack(model_fn, images, labels, eps=0.02, num_samples=1, seed=0)
