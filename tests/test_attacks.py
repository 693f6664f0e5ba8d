"""Tests for tfp_advbnn.attacks: threat-model geometry, strength, EOT, graph mode, cleverhans."""

import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from tfp_advbnn import attacks

NUM_EVAL = 48


def _read_cifar_bin(path, num_examples):
    """First ``num_examples`` records of a CIFAR-10 binary batch: float32 NHWC in [0, 1], int32."""
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)[:num_examples]
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, raw[:, 0].astype(np.int32)


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    """A small conv net trained briefly on 1,000 real CIFAR-10 images.

    Returns (model, model_fn, images [NUM_EVAL, 32, 32, 3], labels [NUM_EVAL]) where the images are
    training images the model classifies with accuracy well above chance.
    """
    x, y = _read_cifar_bin(cifar_bin_dir / "data_batch_1.bin", 1000)
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((32, 32, 3)),
            tf_keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            tf_keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(10),
        ]
    )
    model.compile(
        tf_keras.optimizers.Adam(3e-3),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=50, epochs=15, verbose=0)

    def model_fn(images):
        return model(images, training=False)

    images, labels = x[:NUM_EVAL], y[:NUM_EVAL]
    assert _accuracy(model_fn, images, labels) >= 0.5
    return model, model_fn, images, labels


def _accuracy(model_fn, images, labels):
    return float(np.mean(np.argmax(model_fn(images), axis=1) == labels))


def _linear_problem(num_classes=2, batch=6, seed=0):
    """A fixed linear model on [B, 4, 4, 3] images kept away from the box edges."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(48, num_classes)).astype(np.float32)
    bias = rng.normal(size=(num_classes,)).astype(np.float32)
    images = rng.uniform(0.3, 0.7, size=(batch, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch).astype(np.int32)

    def model_fn(x):
        return tf.reshape(x, [-1, 48]) @ weights + bias

    return model_fn, weights, bias, images, labels


def _linf(delta):
    return np.max(np.abs(delta), axis=(1, 2, 3))


def _l2(delta):
    return np.sqrt(np.sum(np.square(delta), axis=(1, 2, 3)))


def _run(attack, model_fn, images, labels, *, eps, norm, **kwargs):
    if attack == "pgd":
        kwargs.setdefault("step_size", max(eps, 1e-3) / 4)
        kwargs.setdefault("random_start", True)
        return attacks.pgd(model_fn, images, labels, eps=eps, norm=norm, **kwargs)
    return attacks.apgd(model_fn, images, labels, eps=eps, norm=norm, **kwargs)


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
@pytest.mark.parametrize(
    "norm, eps", [("linf", 0.0), ("linf", 2 / 255), ("linf", 0.1), ("l2", 0.0), ("l2", 0.5)]
)
def test_perturbation_stays_in_ball_and_box(cifar_model, attack, norm, eps):
    _, model_fn, images, labels = cifar_model
    x_adv = _run(attack, model_fn, images[:16], labels[:16], eps=eps, norm=norm, num_steps=3)
    x_adv = x_adv.numpy()
    assert x_adv.shape == images[:16].shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = (_linf if norm == "linf" else _l2)(x_adv - images[:16])
    assert np.all(size <= eps + 1e-6)
    if eps == 0.0:
        np.testing.assert_array_equal(x_adv, images[:16])
    else:
        assert np.all(size > 0.0)


def test_pgd_reduces_accuracy_and_more_steps_are_stronger(cifar_model):
    _, model_fn, images, labels = cifar_model
    eps = 2 / 255
    clean = _accuracy(model_fn, images, labels)
    robust = [
        _accuracy(
            model_fn,
            attacks.pgd(model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=steps),
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
    model_fn, weights, _, images, labels = _linear_problem()
    eps = 0.05
    x_adv = attacks.pgd(
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
    model_fn, weights, _, images, labels = _linear_problem()
    eps = 0.5
    x_adv = attacks.pgd(
        model_fn, images, labels, eps=eps, step_size=0.2, num_steps=5, norm="l2"
    ).numpy()
    direction = (weights[:, 1 - labels] - weights[:, labels]).T
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    np.testing.assert_allclose(x_adv, images + eps * direction.reshape(images.shape), atol=1e-5)


def test_apgd_returns_highest_loss_point_when_the_label_cannot_change():
    # A bias of 8 for each example's own class makes misclassification impossible within eps
    # (the logit margin moves by at most eps * ||w_1 - w_0||_1, about 3), so
    # APGD must return its highest-loss point: the analytic optimum eps * sign(w_other - w_y).
    model_fn, weights, _, images, labels = _linear_problem()
    onehot = tf.one_hot(labels, 2)

    def confident_fn(x):
        return model_fn(x) + 8.0 * onehot

    eps = 0.05
    x_adv = attacks.apgd(confident_fn, images, labels, eps=eps, num_steps=10, seed=0)
    assert np.all(np.argmax(confident_fn(x_adv), axis=1) == labels)
    direction = np.sign(weights[:, 1 - labels] - weights[:, labels]).T.reshape(images.shape)
    np.testing.assert_allclose(x_adv, images + eps * direction, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("l2", 0.5), ("linf", 0.1)])
def test_apgd_step_halving_converges_to_an_interior_maximum(norm, eps):
    # The loss peaks at a point strictly inside the ball. Steps of the initial size 2 * eps keep
    # jumping over it (as PGD with that fixed step shows), so APGD gets close only by halving.
    rng = np.random.default_rng(5)
    images = np.full((4, 4, 4, 3), 0.5, np.float32)
    if norm == "l2":
        direction = rng.normal(size=images.shape)
        direction /= np.sqrt(np.sum(direction**2, axis=(1, 2, 3), keepdims=True))
        peak = images + 0.5 * eps * direction
    else:
        peak = images + rng.uniform(-0.5 * eps, 0.5 * eps, size=images.shape)
    peak = peak.astype(np.float32)
    labels = np.zeros(4, np.int32)

    def model_fn(x):
        # Class 0 always wins (no misclassified point), and the loss grows as x nears the peak.
        sq_dist = tf.reduce_sum(tf.square(x - peak), axis=[1, 2, 3])
        return tf.stack([tf.zeros_like(sq_dist), -10.0 * sq_dist - 0.1], axis=1)

    start_dist = _l2(images - peak)
    x_apgd = attacks.apgd(model_fn, images, labels, eps=eps, num_steps=40, norm=norm, seed=0)
    x_pgd = attacks.pgd(
        model_fn,
        images,
        labels,
        eps=eps,
        step_size=2 * eps,
        num_steps=40,
        norm=norm,
        random_start=True,
        seed=0,
    )
    assert np.all(_l2(x_apgd.numpy() - peak) < 0.1 * start_dist)
    assert np.all(_l2(x_pgd.numpy() - peak) > 0.5 * start_dist)


def _noisy_margin_model(noise_std, seed):
    """Two classes; the class-1 logit is the image mean scaled by 20, plus fresh noise per call.

    Without noise an image of mean m is class 1 when m > 0 and its class-0 cross-entropy grows
    with m. The noise is independent of x, so gradients are exact but single-draw losses and
    single-draw predictions are noisy.
    """
    generator = tf.random.Generator.from_seed(seed)

    def model_fn(x):
        signal = 20.0 * tf.reduce_mean(x, axis=[1, 2, 3]) - 10.0
        noise = noise_std * generator.normal(tf.shape(signal))
        return tf.stack([tf.zeros_like(signal), signal + noise], axis=1)

    return model_fn


def test_ensemble_pick_prefers_what_fools_the_ensemble_over_single_draw_luck():
    # Three candidates per example with noise-free margins -1 (robust), +0.5 (fools the
    # ensemble) and -0.2 (robust, higher loss than the first); in random order per example.
    # Single draws with noise std 3 flip about 40% of predictions, but 400 draws must pick the
    # +0.5 candidate every time, and among robust ones the higher-loss one.
    model_fn = _noisy_margin_model(noise_std=3.0, seed=3)
    rng = np.random.default_rng(0)
    margins = np.array([-1.0, 0.5, -0.2], np.float32)
    order = np.stack([rng.permutation(3) for _ in range(12)])
    candidates = [
        np.broadcast_to(((margins[order[:, k]] + 10.0) / 20.0)[:, None, None, None], (12, 2, 2, 3))
        for k in range(3)
    ]
    labels = np.zeros(12, np.int32)

    def picked_margin(cands):
        x = attacks._ensemble_pick(model_fn, [tf.constant(c) for c in cands], labels, 400)
        return 20.0 * np.mean(x.numpy(), axis=(1, 2, 3)) - 10.0

    np.testing.assert_allclose(picked_margin(candidates), 0.5, atol=1e-4)
    np.testing.assert_allclose(
        picked_margin([np.where(np.isclose(c, 0.525), 0.45, c) for c in candidates]),
        -0.2,
        atol=1e-4,
    )


def test_apgd_ensemble_selection_costs_three_candidates_per_draw():
    model_fn, calls, _ = _counting_model()
    images = np.random.default_rng(2).uniform(size=(4, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0], np.int32)
    batch_sizes = []

    def recording_fn(x):
        batch_sizes.append(x.shape[0])
        return model_fn(x)

    attacks.apgd(recording_fn, images, labels, eps=0.1, num_steps=5, selection_samples=7)
    # 6 attack calls on the batch, then 7 ensemble draws on the 3 stacked candidates.
    assert int(calls.numpy()) == 6 + 7
    assert batch_sizes[-7:] == [12] * 7


def test_apgd_checkpoints_follow_croce_hein_schedule():
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99, 1.05 (spacing shrinks by .03 down to .06).
    assert attacks.apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(10) == [0, 3, 5, 6, 7, 8, 9]
    assert attacks.apgd_checkpoints(1) == [0]


def _counting_model():
    """A stochastic linear model_fn that logs each call and the scalar weight noise it drew.

    logits = flat(x) @ (W + s * V) with s ~ N(0, 1) drawn on every call. ``calls`` counts the
    calls and ``draws[i]`` holds the noise of call i, as variables so graph runs update them.
    """
    rng = np.random.default_rng(1)
    weights = tf.constant(rng.normal(size=(48, 3)), tf.float32)
    shift = tf.constant(rng.normal(size=(48, 3)), tf.float32)
    calls = tf.Variable(0)
    draws = tf.Variable(tf.zeros([64]))
    # A generator, as the project's Bayesian layers use, so draws do not depend on global seeds.
    generator = tf.random.Generator.from_seed(7)

    def model_fn(x):
        noise = generator.normal([])
        draws.scatter_nd_update([[calls]], [noise])
        calls.assign_add(1)
        return tf.reshape(x, [-1, 48]) @ (weights + noise * shift)

    return model_fn, calls, draws


@pytest.mark.parametrize("in_graph", [False, True])
@pytest.mark.parametrize(
    "attack, num_eot_samples, expected_calls",
    [
        ("pgd", 1, 5),
        ("pgd", 3, 15),
        ("fgsm", 4, 4),
        ("apgd", 1, 6),
        ("apgd", 2, 12),
        ("cw", 1, 5),
    ],
)
def test_every_step_draws_fresh_weights(in_graph, attack, num_eot_samples, expected_calls):
    model_fn, calls, draws = _counting_model()
    images = np.random.default_rng(2).uniform(size=(4, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0], np.int32)

    def run(x, y):
        if attack == "pgd":
            return attacks.pgd(
                model_fn,
                x,
                y,
                eps=0.1,
                step_size=0.02,
                num_steps=5,
                num_eot_samples=num_eot_samples,
            )
        if attack == "fgsm":
            return attacks.fgsm(model_fn, x, y, eps=0.1, num_eot_samples=num_eot_samples)
        if attack == "apgd":
            return attacks.apgd(
                model_fn, x, y, eps=0.1, num_steps=5, num_eot_samples=num_eot_samples
            )
        return attacks.cw_l2(model_fn, x, y, num_steps=5)

    if in_graph:
        run = tf.function(run)
    run(images, labels)
    assert int(calls.numpy()) == expected_calls
    noises = draws.numpy()[:expected_calls]
    assert len(np.unique(noises)) == expected_calls


def test_eot_gradient_is_the_mean_over_separate_draws():
    # The model cycles through three weight matrices, one per call, so FGSM with three EOT samples
    # must step along the sign of the mean of the three input gradients.
    rng = np.random.default_rng(4)
    all_weights = rng.normal(size=(3, 48, 3)).astype(np.float32)
    calls = tf.Variable(0)

    def model_fn(x):
        w = tf.gather(all_weights, calls % 3)
        calls.assign_add(1)
        return tf.reshape(x, [-1, 48]) @ w

    images = rng.uniform(0.3, 0.7, size=(5, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=5).astype(np.int32)
    x = tf.constant(images)
    grads = []
    for w in all_weights:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.reshape(x, [-1, 48]) @ w
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        grads.append(tape.gradient(loss, x).numpy())
    eps = 0.05
    expected = images + eps * np.sign(np.mean(grads, axis=0))
    x_adv = attacks.fgsm(model_fn, images, labels, eps=eps, num_eot_samples=3)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    # A single draw follows the first matrix only, which differs from the average.
    single = attacks.fgsm(model_fn, images, labels, eps=eps)
    np.testing.assert_allclose(single, images + eps * np.sign(grads[0]), atol=1e-6)
    assert not np.allclose(single, expected)


@pytest.mark.parametrize("attack", ["pgd", "apgd", "cw"])
def test_attacks_compute_only_input_gradients(attack):
    # spy() marks the weight read. Its backward function runs only if a tape recorded the read,
    # i.e. if the tape watched the variable, so it counts weight-gradient work.
    spy_backward_calls = []

    @tf.custom_gradient
    def spy(value):
        def grad(upstream):
            spy_backward_calls.append(1)
            return upstream

        return tf.identity(value), grad

    model_fn_plain, weights, bias, images, labels = _linear_problem(num_classes=3)
    variable = tf.Variable(weights)

    def model_fn(x):
        return tf.reshape(x, [-1, 48]) @ spy(variable) + bias

    # Control: a default tape watches the variable and the probe fires.
    with tf.GradientTape() as tape:
        x = tf.constant(images)
        tape.watch(x)
        loss = tf.reduce_sum(model_fn(x))
    tape.gradient(loss, x)
    assert spy_backward_calls

    spy_backward_calls.clear()
    if attack == "pgd":
        x_adv = attacks.pgd(model_fn, images, labels, eps=0.05, step_size=0.01, num_steps=3)
    elif attack == "apgd":
        x_adv = attacks.apgd(model_fn, images, labels, eps=0.05, num_steps=3, seed=0)
    else:
        x_adv = attacks.cw_l2(model_fn, images, labels, num_steps=3)
    assert not spy_backward_calls
    assert np.abs(x_adv.numpy() - images).max() > 0.0


@pytest.mark.parametrize(
    "name, run",
    [
        (
            "pgd_linf",
            lambda f, x, y: attacks.pgd(f, x, y, eps=4 / 255, step_size=1 / 255, num_steps=5),
        ),
        (
            "pgd_l2",
            lambda f, x, y: attacks.pgd(
                f, x, y, eps=0.3, step_size=0.1, num_steps=5, norm="l2", random_start=True, seed=5
            ),
        ),
        ("fgsm", lambda f, x, y: attacks.fgsm(f, x, y, eps=4 / 255)),
        ("apgd", lambda f, x, y: attacks.apgd(f, x, y, eps=4 / 255, num_steps=5, seed=1)),
        ("cw", lambda f, x, y: attacks.cw_l2(f, x, y, num_steps=5)),
    ],
)
def test_tf_function_matches_eager(cifar_model, name, run):
    _, model_fn, images, labels = cifar_model
    x, y = images[:16], labels[:16]
    eager = run(model_fn, x, y).numpy()
    graph = tf.function(lambda a, b: run(model_fn, a, b))(tf.constant(x), tf.constant(y)).numpy()
    np.testing.assert_allclose(graph, eager, atol=1e-5, err_msg=name)
    assert np.abs(eager - x).max() > 0.0


def test_eps_can_be_a_tensor_without_retracing(cifar_model):
    _, model_fn, images, labels = cifar_model
    traces = []

    @tf.function
    def run(x, y, eps):
        traces.append(1)
        return attacks.pgd(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=5)

    x, y = tf.constant(images[:8]), tf.constant(labels[:8])
    for eps in (1 / 255, 4 / 255):
        x_adv = run(x, y, tf.constant(eps))
        np.testing.assert_allclose(_linf(x_adv.numpy() - images[:8]), eps, atol=1e-6)
        eager = attacks.pgd(model_fn, x, y, eps=eps, step_size=eps / 4, num_steps=5)
        np.testing.assert_allclose(x_adv, eager, atol=1e-5)
    assert len(traces) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="eps must be >= 0"):
        run(x, y, tf.constant(-0.1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_reproducible_with_a_seed(norm):
    model_fn, _, _, images, labels = _linear_problem()

    def start_tensor(seed):
        return attacks.pgd(
            model_fn,
            images,
            labels,
            eps=0.1,
            step_size=0.01,
            num_steps=0,
            norm=norm,
            random_start=True,
            seed=seed,
        )

    def start(seed):
        return start_tensor(seed).numpy()

    first, again, other = start(1), start(1), start(2)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert np.abs(start(None) - start(None)).max() > 1e-3
    in_graph = tf.function(lambda: start_tensor(tf.constant([1, 0])))
    np.testing.assert_allclose(in_graph(), first, atol=1e-7)
    assert np.all(np.abs(first - images).max(axis=(1, 2, 3)) > 0.0)


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
    ours = attacks.pgd(model_fn, images, labels, eps=eps, step_size=eps_iter, num_steps=nb_iter)
    fooled_theirs = correct & (np.argmax(model_fn(theirs), axis=1) != labels)
    fooled_ours = correct & (np.argmax(model_fn(ours), axis=1) != labels)
    assert fooled_theirs.sum() > 0
    assert fooled_ours.sum() >= fooled_theirs.sum()
    assert _linf(ours.numpy() - images).max() <= eps + 1e-6


def test_fgsm_is_one_signed_gradient_step(cifar_model):
    _, model_fn, images, labels = cifar_model
    eps = 3 / 255
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model_fn(x))
    expected = np.clip(images + eps * np.sign(tape.gradient(loss, x).numpy()), 0.0, 1.0)
    x_fgsm = attacks.fgsm(model_fn, images, labels, eps=eps).numpy()
    np.testing.assert_allclose(x_fgsm, expected, atol=1e-6)
    one_step = attacks.pgd(model_fn, images, labels, eps=eps, step_size=eps, num_steps=1)
    np.testing.assert_array_equal(x_fgsm, one_step.numpy())
    assert _accuracy(model_fn, x_fgsm, labels) < _accuracy(model_fn, images, labels)


@pytest.mark.parametrize("norm, eps", [("linf", 2 / 255), ("l2", 0.25)])
def test_apgd_is_at_least_as_strong_as_pgd(cifar_model, norm, eps):
    _, model_fn, images, labels = cifar_model
    steps = 10
    x_pgd = attacks.pgd(
        model_fn, images, labels, eps=eps, step_size=eps / 4, num_steps=steps, norm=norm
    )
    x_apgd = attacks.apgd(model_fn, images, labels, eps=eps, num_steps=steps, norm=norm, seed=0)
    clean = _accuracy(model_fn, images, labels)
    assert _accuracy(model_fn, x_apgd, labels) <= _accuracy(model_fn, x_pgd, labels) < clean
    size = (_linf if norm == "linf" else _l2)(x_apgd.numpy() - images)
    assert np.all(size <= eps + 1e-6)


def test_cw_reduces_accuracy_with_small_l2_perturbations(cifar_model):
    _, model_fn, images, labels = cifar_model
    x_adv = attacks.cw_l2(model_fn, images, labels, c=1.0, num_steps=50).numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    correct = np.argmax(model_fn(images), axis=1) == labels
    fooled = correct & (np.argmax(model_fn(x_adv), axis=1) != labels)
    assert fooled.sum() >= 0.8 * correct.sum()
    # Successful perturbations are a small fraction of the images' own L2 norm (about 30).
    distortion = _l2(x_adv - images)[fooled]
    assert distortion.max() < 2.0 and np.median(distortion) < 0.5
    assert np.median(distortion) < 0.05 * np.median(_l2(images))


def test_cw_returns_the_smallest_successful_iterate():
    # An eager model_fn logs every iterate it sees; the attack must return, per example, the
    # least distorted logged iterate that was misclassified.
    base_fn, _, _, images, _ = _linear_problem(num_classes=3, batch=8)
    labels = np.argmax(base_fn(images), axis=1).astype(np.int32)
    seen = []

    def model_fn(x):
        logits = base_fn(x)
        seen.append((x.numpy(), np.argmax(logits.numpy(), axis=1)))
        return logits

    x_adv = attacks.cw_l2(model_fn, images, labels, c=0.5, num_steps=30, learning_rate=0.05)
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
    base_fn, _, _, images, _ = _linear_problem(num_classes=3)
    labels = np.argmax(base_fn(images), axis=1).astype(np.int32)
    seen = []

    def model_fn(x):
        seen.append(x.numpy())
        return base_fn(x)

    attacks.cw_l2(model_fn, images, labels, c=0.0, num_steps=11)
    x_adv = attacks.cw_l2(base_fn, images, labels, c=0.0, num_steps=10).numpy()
    np.testing.assert_allclose(x_adv, seen[10], atol=1e-7)
    assert np.all(np.argmax(base_fn(x_adv), axis=1) == labels)
    # Adam's normalized steps move even a zero-margin problem, so this is not just the input.
    assert np.abs(x_adv - images).max() > 1e-4


def _call(attack, **overrides):
    model_fn, _, _, images, labels = _linear_problem()
    defaults = {
        "pgd": {"eps": 0.1, "step_size": 0.01, "num_steps": 2},
        "fgsm": {"eps": 0.1},
        "apgd": {"eps": 0.1, "num_steps": 2},
        "cw_l2": {"num_steps": 2},
    }[attack]
    return getattr(attacks, attack)(model_fn, images, labels, **{**defaults, **overrides})


@pytest.mark.parametrize(
    "attack, overrides, named",
    [
        ("pgd", {"eps": -0.1}, "-0.1"),
        ("pgd", {"eps": float("nan")}, "nan"),
        ("pgd", {"step_size": 0.0}, "0.0"),
        ("pgd", {"num_steps": -1}, "-1"),
        ("pgd", {"num_steps": 2.5}, "2.5"),
        ("pgd", {"num_eot_samples": 0}, "0"),
        ("pgd", {"norm": "l1"}, "'l1'"),
        ("pgd", {"seed": "abc"}, "'abc'"),
        ("fgsm", {"eps": -1.0}, "-1.0"),
        ("apgd", {"norm": "inf"}, "'inf'"),
        ("apgd", {"rho": 1.5}, "1.5"),
        ("apgd", {"num_eot_samples": 0}, "0"),
        ("apgd", {"selection_samples": -1}, "-1"),
        ("cw_l2", {"c": -2.0}, "-2.0"),
        ("cw_l2", {"learning_rate": 0.0}, "0.0"),
        ("cw_l2", {"kappa": -1.0}, "-1.0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(attack, overrides, named):
    name = next(iter(overrides))
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(named)}"):
        _call(attack, **overrides)


def test_bad_inputs_raise_value_error():
    model_fn, _, _, images, labels = _linear_problem()
    with pytest.raises(ValueError, match=r"\[0, 1\], got values in \[76"):
        attacks.pgd(model_fn, images * 255, labels, eps=0.1, step_size=0.1, num_steps=1)
    with pytest.raises(ValueError, match="float64"):
        attacks.fgsm(model_fn, images.astype(np.float64), labels, eps=0.1)
    with pytest.raises(ValueError, match="float32"):
        attacks.fgsm(model_fn, images, labels.astype(np.float32), eps=0.1)
