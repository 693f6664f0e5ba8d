"""What the evaluation tests share: a tiny trained run, its training images, tiny models, settings.

Test modules load it with ``pytest_plugins = ["eval_support"]``, which registers its fixtures once
per session, so the run is trained once for all of them (as the single test module of the flat
layout did), and import its helpers by name. Those imports load it before pytest registers it,
too late for assertion rewriting, hence PYTEST_DONT_REWRITE (its asserts stay plain asserts).
"""

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn import data, models, training
from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import runner

IMAGE_SHAPE = (32, 32, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHECK_NAMES = [
    "accuracy_monotonic_in_eps",
    "unbounded_attack",
    "iterative_at_least_single_step",
    "more_steps_converged",
    "nonzero_gradient",
    "eot_at_least_single_draw",
]


@pytest.fixture(scope="session")
def eval_data(cifar_bin_dir):
    """64 training and 40 test images of the subset: the data of the tiny run."""
    return data.load_data(
        "cifar10", data_dir=str(cifar_bin_dir), max_train_examples=64, max_test_examples=40
    )


@pytest.fixture(scope="session")
def fit_set(cifar_bin_dir):
    """The 64 training images the tiny run memorises: float32 [64, 32, 32, 3], int32 [64].

    Robustness tests need a model that is right on most of its inputs, which a 64-image run
    only is on the images it was trained on.
    """
    (x_train, y_train), _ = data.load_cifar10_arrays(str(cifar_bin_dir))
    return x_train[:64].astype(np.float32) / 255.0, y_train[:64].astype(np.int32)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, eval_data, cifar_bin_dir):
    """A plain (deterministic) tiny VGG-11 run trained on 64 CIFAR-10 images."""
    model_dir = tmp_path_factory.mktemp("runs") / "plain"
    config = training.TrainConfig.from_flat(
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
    training.Trainer(config, image_data=eval_data).fit(verbose=False)
    return model_dir


@pytest.fixture(scope="session")
def trained(trained_dir):
    return runner.load_model(str(trained_dir))


def tiny_fn(defense, seed=3):
    """images -> logits of an untrained tiny VGG-11 of ``defense`` (one draw per call)."""
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


def eval_config(**overrides):
    """A short EvalConfig for the tiny models, with some fields replaced."""
    values = dict(
        eps_grid=(0.0, 0.01, 0.03),
        attack_steps=8,
        num_samples=2,
        batch_size=24,
        check_examples=32,
        check_eot_samples=2,
    )
    values.update(overrides)
    return EvalConfig(**values)


def assert_png(path):
    with open(path, "rb") as f:
        content = f.read()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 10_000  # a drawn figure, not an empty canvas


LINEAR_SHAPE = (4, 4, 3)


def linear_problem(num=64, seed=0, shape=LINEAR_SHAPE):
    """A linear model ``logits = 100 [0, w . x, -1]`` and images in [0.3, 0.7] (no box clipping).

    The third class, never predicted, is there for the DLR loss, which needs three.

    Returns model_fn, images float32 [N, 4, 4, 3], labels int32 [N] (the clean prediction, so
    every example is correct when clean) and the clean margins ``|w . x|``.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(size=int(np.prod(shape))).astype(np.float32)
    w /= np.abs(w).sum()  # ||w||_1 = 1: an L-inf perturbation of size d moves w . x by at most d
    images = rng.uniform(0.3, 0.7, size=(num, *shape)).astype(np.float32)
    # Centre the scores so the margins spread over [0, ~0.05].
    bias = float(np.median(images.reshape(num, -1) @ w))
    scores = images.reshape(num, -1) @ w - bias
    labels = (scores > 0).astype(np.int32)
    w_t = tf.constant(w)

    def model_fn(x):
        score = tf.reshape(x, [tf.shape(x)[0], -1]) @ w_t[:, None] - bias
        return tf.concat([tf.zeros_like(score), score, tf.zeros_like(score) - 1.0], 1) * 100.0

    return model_fn, images, labels, np.abs(scores)
