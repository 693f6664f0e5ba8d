"""Single-step and free adversarial training (training/task.py) and the catastrophic-overfitting
guard (training/guard.py): the FGSM-RS formula on a linear model, free training's carried
perturbation and one backward pass, its epochs and schedule, the guard's collapse rule and its
rollback in a run, and the refused settings."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from run_support import tiny_config

from tfp_advbnn import run_dir
from tfp_advbnn.training import guard, optim
from tfp_advbnn.training.task import fgsm_rs_examples
from tfp_advbnn.training.trainer import Trainer

EPS = 8.0 / 255.0


def _numpy_input_gradient(images, labels, weights, bias):
    """d(sum CE)/dx of the linear model logits = flatten(x) @ W + b, in float64."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    logits = flat @ weights + bias
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    probabilities[np.arange(len(labels)), labels] -= 1.0
    return (probabilities @ weights.T).reshape(images.shape)


def test_fgsm_rs_equals_the_formula_on_a_linear_model():
    rng = np.random.default_rng(0)
    # Pixels at and near 0 and 1 too, so that both clips matter.
    images = rng.choice([0.0, 0.01, 0.5, 0.99, 1.0], size=(6, 4, 4, 3)).astype(np.float32)
    images += rng.uniform(-0.005, 0.005, images.shape).astype(np.float32)
    images = np.clip(images, 0, 1)
    labels = rng.integers(0, 5, size=6).astype(np.int32)
    weights = rng.normal(size=(48, 5))
    bias = rng.normal(size=5)

    def model_fn(x):
        flat = tf.reshape(x, (-1, 48))
        return flat @ tf.constant(weights, tf.float32) + tf.constant(bias, tf.float32)

    seed = tf.constant([3, 7], tf.int64)
    x_adv = fgsm_rs_examples(
        model_fn, images, labels, eps=EPS, step_size=1.25 * EPS, seed=seed
    ).numpy()

    # The start: U(-eps, eps) per pixel from the stateless seed, clipped to [0, 1].
    noise = tf.random.stateless_uniform(images.shape, seed, -EPS, EPS).numpy()
    start = np.clip(images + noise, 0, 1)
    grad = _numpy_input_gradient(start, labels, weights, bias)
    expected = np.clip(
        np.clip(start + 1.25 * EPS * np.sign(grad), images - EPS, images + EPS), 0, 1
    )
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    assert np.all(np.abs(x_adv - images) <= EPS + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # Not plain FGSM: the random start moves some pixels off the ball's corners.
    assert np.mean(np.isclose(np.abs(x_adv - images), EPS, atol=1e-6)) < 0.95


def test_fgsm_rs_examples_of_a_run_stay_in_the_ball(tmp_path, small_data):
    trainer = Trainer(
        tiny_config(tmp_path, train_attack="fgsm_rs", guard_examples=0), image_data=small_data
    )
    images, labels = next(iter(small_data.train_dataset(batch_size=16, epoch=0, seed=1)))
    x_adv = trainer.task.adversarial_examples(images, labels).numpy()
    eps = trainer.config.attack.train_eps
    assert np.all(np.abs(x_adv - images.numpy()) <= eps + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not np.allclose(x_adv, images.numpy())


def _free_trainer(model_dir, data, **overrides):
    values = dict(
        defense="adv",
        train_attack="free",
        free_replays=3,
        optimizer="sgd",
        learning_rate=1.0,
        momentum=0.0,
        weight_decay=0.0,
        guard_examples=0,
    )
    values.update(overrides)
    return Trainer(tiny_config(model_dir, **values), image_data=data)


def _separate_gradients(model, x_adv, labels):
    """The weight gradient of the mean CE and the input gradient, from two separate tapes."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=model(x_adv, training=True)
            )
        )
    weight_grad = tape.gradient(loss, model.trainable_variables)
    x = tf.constant(x_adv)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=model(x, training=True)
            )
        )
    return [g.numpy() for g in weight_grad], tape.gradient(loss, x).numpy()


def test_free_carries_delta_across_replays_and_one_backward_gives_both_gradients(
    tmp_path, small_data
):
    """Free training on a deterministic model (adv), SGD at lr 1: each replay's update equals
    the weight gradient at clip(x + delta), and delta follows eps * sign of the input gradient
    of the same point, carried from replay to replay; the 4th step is the next batch."""
    trainer = _free_trainer(tmp_path, small_data)
    task, model = trainer.task, trainer.model
    eps = trainer.config.attack.train_eps  # 8 / 256, the reference's training radius
    batches = list(small_data.train_dataset(batch_size=16, epoch=0, seed=1))
    images, labels = batches[0]
    images = images.numpy()
    iterator = task.train_iterator(0)
    delta = np.zeros_like(images)
    for replay in range(3):
        x_adv = np.clip(images + delta, 0, 1)
        before = [v.numpy().copy() for v in model.trainable_variables]
        expected_grad, input_grad = _separate_gradients(model, x_adv, labels)
        # The separate forward passes moved the batch-norm moving statistics, which the
        # step's training-mode forward does not read; the weights are as before.
        task.train_step(iterator)
        for b, v, g in zip(before, model.trainable_variables, expected_grad, strict=True):
            np.testing.assert_allclose(b - v.numpy(), g, rtol=2e-3, atol=2e-5, err_msg=v.name)
        delta = np.clip(np.clip(x_adv + eps * np.sign(input_grad), 0, 1) - images, -eps, eps)
        carried = task.free_delta.numpy()
        # Pixels whose input gradient is ~0 may take either sign: compare where it is clear.
        clear = np.abs(input_grad) > 1e-9
        np.testing.assert_allclose(carried[clear], delta[clear], atol=1e-6, err_msg=f"{replay}")
        delta = carried
    assert np.abs(delta).max() > 0
    # The next step takes the next batch, from the perturbation the last replay left.
    next_images, next_labels = batches[1]
    x_adv = np.clip(next_images.numpy() + delta, 0, 1)
    before = [v.numpy().copy() for v in model.trainable_variables]
    expected_grad, _ = _separate_gradients(model, x_adv, next_labels)
    task.train_step(iterator)
    for b, v, g in zip(before, model.trainable_variables, expected_grad, strict=True):
        np.testing.assert_allclose(b - v.numpy(), g, rtol=2e-3, atol=2e-5, err_msg=v.name)


def test_free_divides_the_epochs_and_keeps_the_schedule_in_equivalent_epochs(tmp_path, small_data):
    # 64 images / batch 16: 4 batches. 5 epochs with 3 replays: ceil(5 / 3) = 2 passes of 12.
    trainer = _free_trainer(tmp_path / "free", small_data, epochs=5)
    assert trainer.num_epochs == math.ceil(5 / 3)
    assert trainer.steps_per_epoch == 4 * 3
    pgd = tiny_config(tmp_path / "pgd", defense="adv", epochs=5, optimizer="sgd")
    # The learning rate falls after the same optimizer steps as the 5-epoch PGD run's.
    boundaries = trainer.optimizer.get_config()["learning_rate"]["config"]["boundaries"]
    assert boundaries == optim.learning_rate_schedule(pgd, 4).boundaries
    # The cifar10 stages as fractions of 5 epochs, rounded, times 4 optimizer steps an epoch.
    assert boundaries == [8, 16]


def test_mirrored_free_step_equals_single_device_step(tmp_path, small_data):
    """Two replicas each carry their half of the perturbation: replay by replay, the weights and
    the perturbation equal those of one device fed the same batch."""
    trainers = {
        strategy: _free_trainer(
            tmp_path / strategy, small_data, strategy=strategy, learning_rate=0.1
        )
        for strategy in ("default", "mirrored")
    }
    iterators = {strategy: t.task.train_iterator(0) for strategy, t in trainers.items()}
    mirrored = trainers["mirrored"]
    for replay in range(2):
        before = [v.numpy() for v in mirrored.model.trainable_variables]
        for strategy, trainer in trainers.items():
            trainer.task.train_step(iterators[strategy])
        # Within 0.1 % of the step's largest update: summation order differs on two devices,
        # and a replica fed the wrong half or the wrong perturbation is off by far more.
        update = max(
            np.abs(b - v.numpy()).max()
            for b, v in zip(before, mirrored.model.trainable_variables, strict=True)
        )
        for single, two in zip(
            trainers["default"].model.trainable_variables,
            mirrored.model.trainable_variables,
            strict=True,
        ):
            np.testing.assert_allclose(two.numpy(), single.numpy(), rtol=0, atol=1e-3 * update)
        halves = mirrored.strategy.experimental_local_results(mirrored.task.free_delta)
        delta_mirrored = np.concatenate([half.numpy() for half in halves])
        delta_single = trainers["default"].task.free_delta.numpy()
        assert delta_mirrored.shape == delta_single.shape
        assert np.abs(delta_single).max() > 0
        # Equal but where the input gradient is near 0 and the two devices' summation orders
        # give it different signs (under 1 % of pixels) ...
        agree = np.isclose(delta_mirrored, delta_single, atol=1e-6)
        assert agree.mean() > 0.99, (replay, agree.mean())
        # ... so the next replay starts both from the same perturbation, and the same weights:
        # a ReLU or max-pool that float noise tips the other way would make later steps differ.
        trainers["default"].task.free_delta.assign(delta_mirrored)
        for single, two in zip(
            trainers["default"].model.trainable_variables,
            mirrored.model.trainable_variables,
            strict=True,
        ):
            single.assign(two)


def test_collapse_rule_on_synthetic_accuracies():
    # A catastrophic collapse from 40 % to 2 % on 256 images fires.
    assert guard.collapsed(0.40, 0.02, 256, 0.5)
    # A fall within noise does not: 10 % -> 4.5 % on 100 images is < 3 standard errors (9 pts).
    assert not guard.collapsed(0.10, 0.045, 100, 0.5)
    # The same fall on 2,000 images (3 standard errors: 2 points) fires.
    assert guard.collapsed(0.10, 0.045, 2000, 0.5)
    # Not below guard_drop * best: no.
    assert not guard.collapsed(0.40, 0.25, 100000, 0.5)
    assert not guard.collapsed(None, 0.0, 256, 0.5)
    # A sequence: the best so far, and the first epoch that collapses from it.
    sequence = [0.05, 0.20, 0.35, 0.31, 0.38, 0.05, 0.40]
    best, fired_at = None, None
    for epoch, accuracy in enumerate(sequence):
        if guard.collapsed(best, accuracy, 256, 0.5):
            fired_at = epoch
            break
        best = accuracy if best is None else max(best, accuracy)
    assert (fired_at, best) == (5, 0.38)


def test_guard_fires_rolls_back_to_the_best_epoch_and_stays_stopped(
    tmp_path, small_data, monkeypatch
):
    """A run whose guard accuracy collapses after epoch 3 (patched: 50 %, 60 %, 5 % on 16
    images): the metrics say so, the weights are those after epoch 2, and rerunning the
    command trains no further."""
    accuracies = iter([0.5, 0.6, 0.05, 0.6])
    snapshots = []
    measured = guard.CollapseGuard.accuracy

    def patched(self):
        measured(self)  # the real attack runs too
        snapshots.append([v.numpy().copy() for v in self.task.model.variables])
        return next(accuracies)

    monkeypatch.setattr(guard.CollapseGuard, "accuracy", patched)
    config = tiny_config(tmp_path, train_attack="fgsm_rs", guard_examples=16, epochs=5)
    trainer = Trainer(config, image_data=small_data)
    last = trainer.fit(verbose=False, export=False)
    assert last["guard_fired"] and last["guard_rolled_back_to_epoch"] == 2
    lines = [json.loads(line) for line in (tmp_path / run_dir.METRICS_FILENAME).open()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["guard_accuracy"] for line in lines] == [0.5, 0.6, 0.05]
    assert [line["guard_fired"] for line in lines] == [False, False, True]
    assert [line["guard_best_epoch"] for line in lines] == [1, 2, 2]
    assert lines[2]["guard_rolled_back_to_epoch"] == 2
    now = [v.numpy() for v in trainer.model.variables]
    for value, best in zip(now, snapshots[1], strict=True):
        np.testing.assert_array_equal(value, best)
    assert any(not np.array_equal(b, c) for b, c in zip(snapshots[1], snapshots[2], strict=True))
    assert int(trainer.optimizer.iterations.numpy()) == 2 * trainer.steps_per_epoch

    rerun = Trainer(config, image_data=small_data)
    rerun.fit(verbose=False, export=False)
    assert len(snapshots) == 3  # no epoch trained, nothing measured
    for value, best in zip(rerun.model.variables, snapshots[1], strict=True):
        np.testing.assert_array_equal(value.numpy(), best)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(defense="bnn", train_attack="fgsm_rs"), "train_attack 'fgsm_rs'"),
        (dict(defense="plain", train_attack="free"), "train_attack 'free'"),
        (dict(train_attack="free", free_replays=0), "attack.free_replays"),
        (dict(train_attack="pgd", free_replays=4), "attack.free_replays 4"),
        (dict(train_attack="free", fgsm_step_scale=1.0), "attack.fgsm_step_scale 1.0"),
        (dict(train_attack="fgsm_rs", fgsm_step_scale=0.0), "attack.fgsm_step_scale"),
        (dict(train_attack="fgsm_rs", random_start=True), "attack.random_start"),
        (dict(train_attack="fgsm_rs", pgd_step_size=0.01), "attack.pgd_step_size"),
        (dict(train_attack="sgd"), "attack.train_attack"),
        (dict(guard_examples=-1), "attack.guard_examples"),
        (dict(train_attack="fgsm_rs", guard_drop=1.0), "attack.guard_drop must be .* < 1, got 1.0"),
        (dict(train_attack="free", guard_pgd_steps=0), "attack.guard_pgd_steps must be .*, got 0"),
        # The guard's settings are refused where the guard is off, not silently unused.
        (dict(guard_drop=0.3), "attack.guard_drop 0.3 applies only with the guard on"),
        (
            dict(train_attack="fgsm_rs", guard_examples=0, guard_pgd_steps=7),
            "attack.guard_pgd_steps 7 applies only with the guard on",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, overrides, named):
    with pytest.raises(ValueError, match=named):
        tiny_config(tmp_path, **overrides).validate()


def test_guard_larger_than_the_training_set_is_refused(tmp_path, small_data):
    with pytest.raises(ValueError, match="attack.guard_examples 65"):
        Trainer(tiny_config(tmp_path, train_attack="fgsm_rs", guard_examples=65), small_data)


def test_guard_defaults_on_for_single_step_attacks_only(tmp_path):
    assert tiny_config(tmp_path).attack.guard_size == 0
    assert tiny_config(tmp_path, train_attack="fgsm_rs").attack.guard_size == 256
    assert tiny_config(tmp_path, train_attack="free").attack.guard_size == 256
    assert tiny_config(tmp_path, train_attack="free").attack.replays == 8
    assert tiny_config(tmp_path, train_attack="fgsm_rs").attack.fgsm_step == 1.25 * 8 / 256
    guarded = tiny_config(tmp_path, train_attack="fgsm_rs").attack
    assert (guarded.guard_steps, guarded.guard_fraction) == (5, 0.5)
    # On with pgd when asked for, with its own settings.
    asked = tiny_config(tmp_path, guard_examples=32, guard_pgd_steps=3, guard_drop=0.2)
    asked.validate()
    assert (asked.attack.guard_size, asked.attack.guard_steps) == (32, 3)
    assert asked.attack.guard_fraction == 0.2
