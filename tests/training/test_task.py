"""The objective and train step (training/task.py): eq. 13, its gradient, the PGD examples,
the KL scope and warm-up, coupled weight decay, every defense, mirrored and mixed precision."""

import math

import numpy as np
import pytest
import tensorflow as tf
from run_support import tiny_config

from tfp_advbnn import attacks, layers, models
from tfp_advbnn.training.task import objective_kl
from tfp_advbnn.training.trainer import Trainer


def _zero_variance(model):
    """Sets every posterior log std to -30 so that draws equal the means."""
    for _, log_std in (
        pair
        for layer in model.layers
        for pair in getattr(layer, "posterior_parameters", {}).values()
    ):
        log_std.assign(tf.fill(log_std.shape, -30.0))


def _generator_states(model):
    return {
        layer.name: layer._generator.state.numpy().copy()
        for layer in model.layers
        if getattr(layer, "_generator", None) is not None
    }


def _reset_generators(model, states):
    """Rewinds every stochastic layer's generator, so the next calls repeat the same draws."""
    for layer in model.layers:
        if layer.name in states:
            layer._generator.reset(states[layer.name])


def _numpy_cross_entropy(logits, labels):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(len(labels)), np.asarray(labels)].mean())


def _numpy_kl(model, sigma_0, layer_names=None):
    """Eq. 6 summed over the (mu, s) variables of ``model``'s layers, matched by name."""
    total = 0.0
    for layer in model.layers:
        if layer_names is not None and layer.name not in layer_names:
            continue
        by_name = {
            v.name.split("/")[-1].split(":")[0]: v.numpy() for v in layer.trainable_variables
        }
        for name, mu in by_name.items():
            if name.endswith("_mu"):
                mu = mu.astype(np.float64)
                sigma = np.exp(by_name[name[:-3] + "_s"].astype(np.float64))
                total += np.sum(
                    np.log(sigma_0 / sigma) + (sigma**2 + mu**2) / (2 * sigma_0**2) - 0.5
                )
    return total


def _first_batch(data):
    return next(iter(data.train_dataset(batch_size=16, epoch=0, seed=1)))


def test_train_step_loss_is_cross_entropy_plus_scaled_kl(tmp_path, small_data):
    """Eq. 13 checked against an independent computation on a model with ~zero variance."""
    config = tiny_config(
        tmp_path,
        defense="bnn",
        alpha=0.7,
        optimizer="sgd",
        learning_rate=1e-9,
        weight_decay=0.0,
        momentum=0.0,
    )
    trainer = Trainer(config, image_data=small_data)
    _zero_variance(trainer.model)
    images, labels = next(iter(small_data.train_dataset(batch_size=16, epoch=0, seed=1)))
    logits = trainer.model(images, training=True)
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )
    kl = float(layers.model_kl(trainer.model))
    expected = float(cross_entropy) + 0.7 / small_data.spec.num_train * kl
    trainer.task.train_step(trainer.task.train_iterator(0))
    np.testing.assert_allclose(float(trainer.task.train_loss.result()), expected, rtol=1e-4)
    np.testing.assert_allclose(float(trainer.task.train_kl.result()), kl, rtol=1e-4)


def test_every_trainable_variable_gets_updated(tmp_path, small_data):
    trainer = Trainer(tiny_config(tmp_path, defense="adv_bnn"), image_data=small_data)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    trainer.task.train_step(trainer.task.train_iterator(0))
    after = [v.numpy() for v in trainer.model.trainable_variables]
    unchanged = [
        v.name
        for v, b, a in zip(trainer.model.trainable_variables, before, after, strict=True)
        if np.array_equal(b, a)
    ]
    assert unchanged == []


def test_every_defense_builds_a_trainer(tmp_path, small_data):
    for defense in models.DEFENSES:
        trainer = Trainer(tiny_config(tmp_path / defense, defense=defense), image_data=small_data)
        trainer.task.train_step(trainer.task.train_iterator(0))
        assert np.isfinite(float(trainer.task.train_loss.result())), defense


@pytest.mark.parametrize("defense", ["plain", "adv"])
def test_mirrored_step_equals_single_device_step(tmp_path, small_data, defense):
    """Same global batch on 2 replicas and on 1 device: the same updated weights."""
    assert len(tf.config.list_logical_devices("CPU")) == 2
    weights = {}
    for strategy in ("default", "mirrored"):
        # Plain SGD: Adam's first step is lr * sign(gradient), which turns float noise in a
        # near-zero gradient into a full-size difference.
        config = tiny_config(
            tmp_path / strategy,
            defense=defense,
            strategy=strategy,
            optimizer="sgd",
            learning_rate=0.1,
            momentum=0.0,
            weight_decay=0.0,
        )
        trainer = Trainer(config, image_data=small_data)
        assert trainer.strategy.num_replicas_in_sync == (2 if strategy == "mirrored" else 1)
        trainer.task.train_step(trainer.task.train_iterator(0))
        weights[strategy] = [v.numpy() for v in trainer.model.trainable_variables]
        weights[strategy + "_loss"] = float(trainer.task.train_loss.result())
    np.testing.assert_allclose(weights["mirrored_loss"], weights["default_loss"], rtol=1e-4)
    for single, mirrored in zip(weights["default"], weights["mirrored"], strict=True):
        np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5)


def test_mirrored_counts_the_kl_once(tmp_path, small_data):
    """On 2 replicas the reported loss is still CE + alpha / N * KL, with the KL once."""
    reference = Trainer(
        tiny_config(tmp_path / "one", defense="bnn", alpha=0.7), image_data=small_data
    )
    _zero_variance(reference.model)
    images, labels = next(iter(small_data.train_dataset(batch_size=16, epoch=0, seed=1)))
    logits = reference.model(images, training=True)
    cross_entropy = float(
        tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    )
    kl = float(layers.model_kl(reference.model))

    mirrored = Trainer(
        tiny_config(tmp_path / "two", defense="bnn", alpha=0.7, strategy="mirrored"),
        image_data=small_data,
    )
    _zero_variance(mirrored.model)
    mirrored.task.train_step(mirrored.task.train_iterator(0))
    np.testing.assert_allclose(float(mirrored.task.train_kl.result()), kl, rtol=1e-4)
    expected = cross_entropy + 0.7 / small_data.spec.num_train * kl
    np.testing.assert_allclose(float(mirrored.task.train_loss.result()), expected, rtol=1e-4)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step_is_finite_and_keeps_float32_state(tmp_path, small_data, precision):
    config = tiny_config(tmp_path, defense="adv_bnn", precision=precision)
    trainer = Trainer(config, image_data=small_data)
    trainer.task.train_step(trainer.task.train_iterator(0))
    assert np.isfinite(float(trainer.task.train_loss.result()))
    assert np.isfinite(float(trainer.task.train_kl.result()))
    assert all(v.dtype == tf.float32 for v in trainer.model.trainable_variables)
    assert tf.keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("init_s", [0.01, 0.05])
def test_eq13_loss_and_its_gradient_at_a_realistic_posterior_std(tmp_path, small_data, init_s):
    """At init_s 0.01 and log(sigma_0) (the reference's start), with alpha set so the CE is
    half the loss: the step's loss equals a numpy CE + alpha / N * KL of the same weight draw,
    and its gradient for one mu and one s equals a central finite difference of that loss."""
    sigma_0 = 0.05
    probe = Trainer(
        tiny_config(tmp_path / "probe", defense="bnn", sigma_0=sigma_0, init_s=init_s),
        image_data=small_data,
    )
    num_train = small_data.spec.num_train
    alpha = 2.3 * num_train / _numpy_kl(probe.model, sigma_0)  # KL term ~ 2.3 ~ the CE
    config = tiny_config(
        tmp_path / "run",
        defense="bnn",
        sigma_0=sigma_0,
        init_s=init_s,
        alpha=alpha,
        optimizer="sgd",
        learning_rate=1.0,
        momentum=0.0,
    )
    trainer = Trainer(config, image_data=small_data)
    model = trainer.model
    images, labels = _first_batch(small_data)
    states = _generator_states(model)

    def numpy_loss():
        _reset_generators(model, states)
        logits = model(images, training=True).numpy()
        cross_entropy = _numpy_cross_entropy(logits, labels)
        return cross_entropy, cross_entropy + alpha / num_train * _numpy_kl(model, sigma_0)

    cross_entropy, expected = numpy_loss()
    assert cross_entropy > 0.3 * expected  # the CE is a significant part of the loss
    # Directional derivatives: random +-1 directions for the classifier's kernel means and the
    # last conv's log stds, all ones for the classifier's log stds (their summed gradient, the
    # KL part included). (Float32 finite differences through a conv's batch norm cancel too
    # much for a conv's means, or for an all-ones direction.)
    rng = np.random.default_rng(0)
    mu, s_classifier = model.get_layer("classifier").posterior_parameters["kernel"]
    _, s_conv = model.get_layer("conv8").posterior_parameters["kernel"]
    probes = [
        (mu, rng.choice([-1.0, 1.0], size=mu.shape)),
        (s_classifier, np.ones(s_classifier.shape)),
        (s_conv, rng.choice([-1.0, 1.0], size=s_conv.shape)),
    ]
    finite_differences = []
    for variable, direction in probes:
        h = 1e-3
        original = variable.numpy()
        values = []
        for sign in (1, -1):
            variable.assign((original + sign * h * direction).astype(np.float32))
            values.append(numpy_loss()[1])
        variable.assign(original)
        finite_differences.append((values[0] - values[1]) / (2 * h))
    before = [variable.numpy().copy() for variable, _ in probes]

    _reset_generators(model, states)
    trainer.task.train_step(trainer.task.train_iterator(0))
    np.testing.assert_allclose(float(trainer.task.train_loss.result()), expected, rtol=2e-4)
    np.testing.assert_allclose(
        float(trainer.task.train_cross_entropy.result()), cross_entropy, rtol=2e-4
    )
    # SGD with learning rate 1 and no momentum: the update is minus the gradient.
    gradients = [
        float(np.sum((old - variable.numpy()) * direction))
        for old, (variable, direction) in zip(before, probes, strict=True)
    ]
    assert min(abs(g) for g in gradients) > 1e-3  # every probed parameter gets a gradient
    np.testing.assert_allclose(gradients, finite_differences, rtol=0.05)


@pytest.mark.parametrize("defense", ["adv", "adv_bnn"])
def test_adversarial_defenses_take_their_step_on_the_pgd_examples(tmp_path, small_data, defense):
    """The update equals the SGD update computed on attacks.pgd's examples (same weight draws)
    and not the one computed on the clean images."""
    config = tiny_config(
        tmp_path / "run",
        defense=defense,
        alpha=0.05,
        train_pgd_steps=3,
        optimizer="sgd",
        learning_rate=0.5,
        momentum=0.0,
    )
    trainer = Trainer(config, image_data=small_data)
    twin = Trainer(config.replace(model_dir=str(tmp_path / "twin")), image_data=small_data)
    variables = trainer.model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    for mine, theirs in zip(before, twin.model.trainable_variables, strict=True):
        np.testing.assert_array_equal(mine, theirs.numpy())
    states = _generator_states(trainer.model)
    images, labels = _first_batch(small_data)

    def update_on(inputs):
        with tf.GradientTape() as tape:
            logits = twin.model(inputs, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            ) + config.objective.alpha / small_data.spec.num_train * layers.model_kl(twin.model)
        return [
            -config.optim.learning_rate * g.numpy()
            for g in tape.gradient(loss, twin.model.trainable_variables)
        ]

    _reset_generators(twin.model, states)
    adversarial = attacks.pgd(
        lambda x: twin.model(x, training=False),
        images,
        labels,
        eps=config.attack.train_eps,
        step_size=2.5 * config.attack.train_eps / 3,
        num_steps=3,
    )
    assert float(tf.reduce_max(tf.abs(adversarial - images))) > 0.5 * config.attack.train_eps
    pgd_update = update_on(adversarial)  # the draw right after PGD's three
    _reset_generators(twin.model, states)
    for _ in range(3):  # the same three attack draws, so the training draw matches again
        twin.model(images, training=False)
    clean_update = update_on(images)

    _reset_generators(trainer.model, states)
    trainer.task.train_step(trainer.task.train_iterator(0))
    step_update = [v.numpy() - b for v, b in zip(variables, before, strict=True)]

    def distance(a, b):
        return math.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True)))

    assert distance(step_update, pgd_update) < 0.05 * distance(step_update, clean_update)


def test_classifier_kl_scope_is_the_classifier_layers_kl_alone(tmp_path, small_data):
    config = tiny_config(tmp_path, defense="bnn", kl_scope="classifier", alpha=0.3)
    trainer = Trainer(config, image_data=small_data)
    model = trainer.model
    expected = _numpy_kl(model, config.network.sigma_0, layer_names={"classifier"})
    everything = _numpy_kl(model, config.network.sigma_0)
    assert expected < 0.5 * everything
    np.testing.assert_allclose(float(objective_kl(model, "classifier")), expected, rtol=1e-5)
    np.testing.assert_allclose(float(objective_kl(model, "all")), everything, rtol=1e-5)
    trainer.task.train_step(trainer.task.train_iterator(0))
    # The metric holds the KL of the weights before the update.
    np.testing.assert_allclose(float(trainer.task.train_kl.result()), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(trainer.task.train_kl_term.result()),
        0.3 / small_data.spec.num_train * expected,
        rtol=1e-5,
    )


def test_weight_decay_is_the_coupled_l2_of_pytorch_sgd(tmp_path, small_data):
    """SGD with weight_decay wd and no momentum: w <- w - lr * (dCE/dw + wd * w) for every
    trainable weight (kernels, biases, BN scales and offsets), as torch.optim.SGD does."""
    lr, wd = 0.1, 0.05
    config = tiny_config(
        tmp_path, defense="plain", optimizer="sgd", learning_rate=lr, momentum=0.0, weight_decay=wd
    )
    trainer = Trainer(config, image_data=small_data)
    images, labels = _first_batch(small_data)
    variables = trainer.model.trainable_variables
    with tf.GradientTape() as tape:
        logits = trainer.model(images, training=True)
        cross_entropy = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
    gradients = tape.gradient(cross_entropy, variables)
    expected = [
        v.numpy() - lr * (g.numpy() + wd * v.numpy())
        for v, g in zip(variables, gradients, strict=True)
    ]
    trainer.task.train_step(trainer.task.train_iterator(0))
    for variable, value in zip(variables, expected, strict=True):
        np.testing.assert_allclose(
            variable.numpy(), value, rtol=1e-4, atol=1e-6, err_msg=variable.name
        )


def test_kl_warmup_ramps_the_kl_weight_linearly_over_its_epochs(tmp_path, small_data):
    config = tiny_config(tmp_path, defense="bnn", alpha=0.4, kl_warmup_epochs=1.5)
    trainer = Trainer(config, image_data=small_data)
    full = 0.4 / small_data.spec.num_train
    ramp = 1.5 * trainer.steps_per_epoch
    for step in range(int(ramp) + 3):
        expected = full * min(1.0, (step + 1) / ramp)
        np.testing.assert_allclose(float(trainer.task.kl_weight(step)), expected, rtol=1e-6)


def test_jit_compiled_step_equals_the_plain_step(tmp_path, small_data):
    """--jit_compile: XLA runs the replica's attack and update (the iterator stays outside it)
    and gives the weights of the uncompiled step."""
    weights = {}
    for jit in (False, True):
        config = tiny_config(
            tmp_path / str(jit),
            defense="adv",
            jit_compile=jit,
            optimizer="sgd",
            learning_rate=0.1,
            momentum=0.0,
            weight_decay=0.0,
        )
        trainer = Trainer(config, image_data=small_data)
        faults = trainer.task.train_step(trainer.task.train_iterator(0))
        assert int(faults) == 0
        weights[jit] = [v.numpy() for v in trainer.model.trainable_variables]
    for plain, compiled in zip(weights[False], weights[True], strict=True):
        np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5)
