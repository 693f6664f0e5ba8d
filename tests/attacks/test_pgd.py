"""Tests for tfp_advbnn.attacks.pgd: PGD's strength and optima, FGSM, the default step size."""

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import accuracy, linear_problem, linf, trained_cifar_model
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfp_advbnn.attacks.pgd import default_step_size, fgsm, pgd


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


def test_pgd_reduces_accuracy_and_more_steps_are_stronger(cifar_model):
    _, model_fn, images, labels = cifar_model
    eps = 2 / 255
    clean = accuracy(model_fn, images, labels)
    robust = [
        accuracy(
            model_fn,
            pgd(model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=steps),
            labels,
        )
        for steps in (1, 4, 12)
    ]
    assert robust[0] < clean
    assert robust[2] <= robust[1] <= robust[0]
    assert robust[2] <= clean - 0.1


@pytest.mark.parametrize("random_start", [False, True])
def test_linf_pgd_reaches_analytic_optimum_of_linear_model(random_start):
    # With two classes the loss gradient is a positive multiple of w_other - w_y for every x, so
    # the best L-inf perturbation is eps * sign(w_other - w_y).
    model_fn, weights, _, images, labels = linear_problem()
    eps = 0.05
    x_adv = pgd(
        model_fn,
        images,
        labels,
        eps=eps,
        step_size=eps / 4,
        num_steps=10,
        random_start=random_start,
        seed=3,
    )
    direction = np.sign(weights[:, 1 - labels] - weights[:, labels]).T.reshape(images.shape)
    np.testing.assert_allclose(x_adv, images + eps * direction, atol=1e-6)


def test_l2_pgd_reaches_analytic_optimum_of_linear_model():
    model_fn, weights, _, images, labels = linear_problem()
    eps = 0.5
    x_adv = pgd(model_fn, images, labels, eps=eps, step_size=0.2, num_steps=5, norm="l2").numpy()
    direction = (weights[:, 1 - labels] - weights[:, labels]).T
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    np.testing.assert_allclose(x_adv, images + eps * direction.reshape(images.shape), atol=1e-5)


def test_pgd_finds_at_least_as_many_adversarial_examples_as_cleverhans(cifar_model):
    _, model_fn, images, labels = cifar_model
    correct = np.argmax(model_fn(images), axis=1) == labels
    eps, eps_iter, nb_iter = 2 / 255, 0.5 / 255, 10
    theirs = projected_gradient_descent(
        model_fn,
        tf.constant(images),
        eps,
        eps_iter,
        nb_iter,
        np.inf,
        clip_min=0.0,
        clip_max=1.0,
        y=tf.constant(labels),
        rand_init=False,
        sanity_checks=False,
    )
    ours = pgd(model_fn, images, labels, eps=eps, step_size=eps_iter, num_steps=nb_iter)
    fooled_theirs = correct & (np.argmax(model_fn(theirs), axis=1) != labels)
    fooled_ours = correct & (np.argmax(model_fn(ours), axis=1) != labels)
    assert fooled_theirs.sum() > 0
    assert fooled_ours.sum() >= fooled_theirs.sum()
    assert linf(ours.numpy() - images).max() <= eps + 1e-6


def test_fgsm_is_one_signed_gradient_step(cifar_model):
    _, model_fn, images, labels = cifar_model
    eps = 3 / 255
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model_fn(x))
    expected = np.clip(images + eps * np.sign(tape.gradient(loss, x).numpy()), 0.0, 1.0)
    x_fgsm = fgsm(model_fn, images, labels, eps=eps).numpy()
    np.testing.assert_allclose(x_fgsm, expected, atol=1e-6)
    one_step = pgd(model_fn, images, labels, eps=eps, step_size=eps, num_steps=1)
    np.testing.assert_array_equal(x_fgsm, one_step.numpy())
    assert accuracy(model_fn, x_fgsm, labels) < accuracy(model_fn, images, labels)


@pytest.mark.parametrize(
    "eps, num_steps", [(8 / 255, 10), (8 / 256, 7), (0.03, 20), (1.0, 50), (0.5, 1), (0, 3)]
)
def test_default_step_size_is_madry_rule(eps, num_steps):
    # Bit for bit the expression the trainer and the evaluation used before the rule moved here.
    step = default_step_size(eps, num_steps)
    assert isinstance(step, float)
    assert step == 2.5 * eps / num_steps


@pytest.mark.parametrize(
    "eps, num_steps, named",
    [
        (-0.1, 10, "eps.*-0.1"),
        (float("nan"), 10, "eps.*nan"),
        (0.1, 0, "num_steps.*0"),
        (0.1, 2.5, "num_steps.*2.5"),
        (0.1, True, "num_steps.*True"),
    ],
)
def test_default_step_size_rejects_bad_arguments_naming_the_value(eps, num_steps, named):
    with pytest.raises(ValueError, match=named):
        default_step_size(eps, num_steps)
