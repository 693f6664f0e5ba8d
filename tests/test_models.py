"""Tests of tfp_advbnn.models: structure, parameter counts, KL, randomness and validation."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tfp_advbnn.layers import (
    BayesBatchNormalization,
    BayesConv2D,
    BayesDense,
    RandomNoise,
    bayesian_variables,
    model_kl,
)
from tfp_advbnn.models import (
    ARCHITECTURES,
    DEFENSES,
    build_model,
    ensemble_probabilities,
    is_adversarial,
    is_bayesian,
    is_stochastic,
    num_draws,
)

TINY = 0.0625
SIGMA_0 = 0.1
INIT_S = 0.05
SIZE = {"vgg11": 32, "vgg13": 32, "vgg16": 32, "vgg19": 32, "model_a": 96}


def _build(arch="vgg11", defense="bnn", **overrides):
    kwargs = dict(
        num_classes=10,
        input_shape=(SIZE.get(arch, 32), SIZE.get(arch, 32), 3),
        width_multiplier=TINY,
        sigma_0=SIGMA_0,
        init_s=INIT_S,
    )
    kwargs.update(overrides)
    return build_model(arch, defense, **kwargs)


def _images(model, batch=2, seed=0):
    shape = (batch, *model.input_shape[1:])
    return tf.constant(np.random.default_rng(seed).uniform(size=shape), tf.float32)


def _scalars(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_defense_predicates():
    assert [d for d in DEFENSES if is_bayesian(d)] == ["bnn", "adv_bnn"]
    assert [d for d in DEFENSES if is_stochastic(d)] == ["bnn", "rse", "adv_bnn"]
    assert [d for d in DEFENSES if is_adversarial(d)] == ["adv", "adv_bnn"]
    for predicate in (is_bayesian, is_stochastic, is_adversarial):
        with pytest.raises(ValueError, match="'bayes'"):
            predicate("bayes")


# Written out here rather than taken from models.is_stochastic, so that num_draws is checked
# against the paper's defenses and not against itself.
STOCHASTIC_DEFENSES = ("bnn", "rse", "adv_bnn")


@pytest.mark.parametrize("defense", DEFENSES)
def test_num_draws_is_num_samples_for_stochastic_defenses_and_one_otherwise(defense):
    expected = 7 if defense in STOCHASTIC_DEFENSES else 1
    assert num_draws(defense, 7) == expected
    draws = num_draws(defense, np.int64(7))
    assert draws == expected and type(draws) is int
    assert num_draws(defense, 1) == 1


@pytest.mark.parametrize(
    "defense, num_samples, bad",
    [("bayes", 3, "'bayes'"), ("plain", 0, "num_samples.*0"), ("bnn", 2.5, "2.5")],
)
def test_num_draws_rejects_bad_arguments(defense, num_samples, bad):
    with pytest.raises(ValueError, match=bad):
        num_draws(defense, num_samples)


@pytest.mark.parametrize(
    "arch, size, defense",
    [
        ("vgg11", 32, "adv_bnn"),
        ("vgg13", 32, "rse"),
        ("vgg16", 32, "bnn"),
        ("vgg19", 32, "plain"),
        ("vgg16", 64, "bnn"),
        ("vgg16", 96, "rse"),
        ("model_a", 96, "adv_bnn"),
        ("model_a", 128, "plain"),
    ],
)
def test_output_shape_and_name(arch, size, defense):
    model = _build(arch, defense, input_shape=(size, size, 3), num_classes=7)
    logits = model(_images(model, batch=3))
    assert logits.shape == (3, 7) and logits.dtype == tf.float32
    assert model.name == f"{arch}_{defense}"
    assert model.built and model.trainable_variables


def test_vgg_channel_plans_and_width_multiplier():
    expected = {
        "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
        "vgg13": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
        "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
        "vgg19": [64, 64, 128, 128, *[256] * 4, *[512] * 8],
    }
    for arch, widths in expected.items():
        model = _build(arch, "plain", width_multiplier=0.25)
        convs = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Conv2D)]
        assert [c.filters for c in convs] == [w // 4 for w in widths]
        pools = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.MaxPool2D)]
        assert len(pools) == 5
    tiny = _build("vgg11", "bnn", width_multiplier=0.001)
    assert {layer.filters for layer in tiny.layers if isinstance(layer, BayesConv2D)} == {1}


def test_model_a_structure():
    model = _build("model_a", "bnn")
    convs = [layer for layer in model.layers if isinstance(layer, BayesConv2D)]
    assert [c.filters for c in convs] == [2, 4, 8, 16, 16, 32]
    assert [c.padding for c in convs] == ["same"] * 4 + ["valid"] * 2
    assert model.get_layer("conv4").output.shape[1:3] == (12, 12)
    assert model.get_layer("conv5").output.shape[1:3] == (4, 4)
    assert model.get_layer("conv6").output.shape[1:3] == (2, 2)
    assert model.get_layer("avg_pool").output.shape[1:3] == (1, 1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bayesian_model_has_twice_the_trainables_of_its_plain_twin(arch):
    # adv, rse and adv_bnn share the plain / bnn code paths; checking them on two archs suffices.
    defenses = DEFENSES if arch in ("vgg11", "model_a") else ("plain", "bnn")
    built = {defense: _build(arch, defense) for defense in defenses}
    counts = {
        defense: (len(model.trainable_variables), _scalars(model.trainable_variables))
        for defense, model in built.items()
    }
    assert counts["bnn"] == (2 * counts["plain"][0], 2 * counts["plain"][1])
    if len(defenses) == len(DEFENSES):
        assert counts["adv_bnn"] == counts["bnn"]
        assert counts["adv"] == counts["rse"] == counts["plain"]

    # Every conv, every BN and the classifier of the plain twin has a Bayesian counterpart.
    kinds = {
        tf_keras.layers.Conv2D: BayesConv2D,
        tf_keras.layers.BatchNormalization: BayesBatchNormalization,
        tf_keras.layers.Dense: BayesDense,
    }
    for plain_kind, bayes_kind in kinds.items():
        plain_names = [la.name for la in built["plain"].layers if isinstance(la, plain_kind)]
        bayes_names = [la.name for la in built["bnn"].layers if isinstance(la, bayes_kind)]
        assert plain_names == bayes_names and plain_names
    assert not any(
        isinstance(la, tf_keras.layers.Conv2D | tf_keras.layers.Dense | RandomNoise)
        for la in built["bnn"].layers
    )


def _eq6_numpy(layer):
    values = {
        v.name.split("/")[-1].split(":")[0]: v.numpy().astype(np.float64)
        for v in layer.trainable_variables
    }
    total = 0.0
    for name, mu in values.items():
        if name.endswith("_mu"):
            sigma = np.exp(values[name[:-3] + "_s"])
            total += np.sum(np.log(SIGMA_0 / sigma) + (sigma**2 + mu**2) / (2 * SIGMA_0**2) - 0.5)
    return total


@pytest.mark.parametrize(
    "arch, posterior", [("vgg11", "reparameterization"), ("model_a", "flipout")]
)
def test_model_kl_is_the_sum_over_all_layers(arch, posterior):
    model = _build(arch, "bnn", posterior=posterior)
    # Give every layer a different posterior so that no layer's KL can stand in for another's.
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(v + rng.normal(scale=0.2, size=v.shape).astype(np.float32))
    model(_images(model), training=True)
    bayes_layers = [la for la in model.layers if la.trainable_variables]
    per_layer = [_eq6_numpy(la) for la in bayes_layers]
    np.testing.assert_allclose(float(model_kl(model)), sum(per_layer), rtol=1e-5)
    assert len(model.losses) == 2 * len(bayes_layers)
    # The reference PyTorch code returned only the last layer's KL.
    assert float(model_kl(model)) > 1.5 * max(per_layer)
    np.testing.assert_allclose(
        float(model_kl(model)), sum(float(model_kl(la)) for la in bayes_layers), rtol=1e-5
    )


@pytest.mark.parametrize("defense", DEFENSES)
def test_bayesian_variables_are_exactly_the_bayesian_trainables(defense):
    model = _build("model_a", defense)
    found = {id(v) for v in bayesian_variables(model)}
    assert len(found) == len(bayesian_variables(model))
    expected = {id(v) for v in model.trainable_variables} if is_bayesian(defense) else set()
    assert found == expected


@pytest.mark.parametrize("num_samples", [1, 4])
def test_ensemble_probabilities_average_the_softmax_of_each_draw(num_samples):
    calls = tf.Variable(0.0)

    def model_fn(images):
        # Draw i has logits (i * pixel_sum, 0, -i): a different prediction on every call.
        calls.assign_add(1.0)
        scale = tf.reduce_sum(images, axis=[1, 2, 3])
        return tf.stack(
            [calls * scale, tf.zeros_like(scale), -calls * tf.ones_like(scale)], axis=-1
        )

    images = tf.constant(np.random.default_rng(0).uniform(size=(3, 2, 2, 3)), tf.float32)
    scale = images.numpy().sum(axis=(1, 2, 3))
    expected = 0.0
    for i in range(1, num_samples + 1):
        logits = np.stack([i * scale, np.zeros_like(scale), -i * np.ones_like(scale)], axis=-1)
        expected += np.exp(logits) / np.exp(logits).sum(-1, keepdims=True) / num_samples
    for fn in (ensemble_probabilities, tf.function(ensemble_probabilities)):
        calls.assign(0.0)
        probabilities = fn(model_fn, images, num_samples)
        assert probabilities.dtype == tf.float32
        np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-5)
        assert float(calls) == num_samples


def test_model_kl_usable_after_ensemble_in_the_same_function():
    model = _build("vgg11", "bnn")
    x = _images(model)

    @tf.function
    def predict(images):
        probabilities = ensemble_probabilities(lambda t: model(t, training=False), images, 3)
        return probabilities, model_kl(model)

    probabilities, kl = predict(x)
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.numpy().sum(-1), 1.0, rtol=1e-5)
    model(x)
    np.testing.assert_allclose(float(kl), float(model_kl(model)), rtol=1e-6)


@pytest.mark.parametrize("bad", [0, 2.5, True])
def test_ensemble_probabilities_rejects_bad_num_samples(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        ensemble_probabilities(lambda x: x, tf.zeros([1, 2]), bad)


def test_plain_models_have_no_kl():
    for defense in ("plain", "adv", "rse"):
        model = _build("vgg11", defense)
        model(_images(model))
        assert float(model_kl(model)) == 0.0


@pytest.mark.parametrize("defense", DEFENSES)
def test_stochastic_models_give_fresh_logits_plain_ones_do_not(defense):
    model = _build("vgg11", defense)
    x = _images(model)
    fn = tf.function(lambda t: model(t, training=False))
    for call in (lambda t: model(t, training=False), fn):
        first, second = call(x).numpy(), call(x).numpy()
        if is_stochastic(defense):
            assert np.abs(first - second).max() > 1e-6
        else:
            np.testing.assert_array_equal(first, second)


def test_every_trainable_variable_gets_a_gradient():
    model = _build("vgg11", "adv_bnn", num_classes=3)
    x = _images(model, batch=4)
    labels = tf.constant([0, 1, 2, 1])
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        nll = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
        loss = nll + model_kl(model) / 1000.0
    grads = tape.gradient(loss, model.trainable_variables)
    for var, grad in zip(model.trainable_variables, grads, strict=True):
        assert grad is not None, var.name
        assert float(tf.reduce_max(tf.abs(grad))) > 0, var.name


@pytest.mark.parametrize("defense", ["plain", "bnn", "rse"])
def test_seeded_models_reproduce_and_different_seeds_differ(defense):
    models = [_build("vgg11", defense, seed=s) for s in (3, 3, 4)]
    x = _images(models[0])
    weights = [[v.numpy() for v in m.trainable_variables] for m in models]
    for a, b in zip(weights[0], weights[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - c).max() > 0 for a, c in zip(weights[0], weights[2], strict=True))
    draws = [[m(x, training=False).numpy() for _ in range(2)] for m in models]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert np.abs(draws[0][0] - draws[2][0]).max() > 1e-6


def test_layer_seeds_differ_within_a_model():
    model = _build("vgg11", "bnn", seed=0)
    seeds = [la.seed for la in model.layers if hasattr(la, "seed")]
    assert None not in seeds and len(set(seeds)) == len(seeds)
    assert _build("vgg11", "rse").get_layer("noise1").seed is None


@pytest.mark.parametrize("defense", ["bnn", "rse"])
def test_checkpoint_restores_rng_state(defense, tmp_path):
    model = _build("vgg11", defense)
    x = _images(model)
    model(x, training=False)
    checkpoint = tf.train.Checkpoint(model=model)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    after_save = [model(x, training=False).numpy() for _ in range(2)]

    clone = _build("vgg11", defense)
    tf.train.Checkpoint(model=clone).restore(path).assert_consumed()
    np.testing.assert_array_equal(clone(x, training=False).numpy(), after_save[0])
    checkpoint.restore(path).assert_consumed()
    after_restore = [model(x, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(after_save, after_restore)


def test_rse_noise_layers_precede_every_conv():
    model = _build("vgg13", "rse", noise_init=0.3, noise_inner=0.05)
    layers = model.layers
    convs = [i for i, la in enumerate(layers) if isinstance(la, tf_keras.layers.Conv2D)]
    noises = [la for la in layers if isinstance(la, RandomNoise)]
    assert len(noises) == len(convs) == 10
    assert all(isinstance(layers[i - 1], RandomNoise) for i in convs)
    assert [n.stddev for n in noises] == [0.3] + [0.05] * 9


def test_model_config_round_trip():
    model = _build("vgg11", "bnn", seed=5)
    custom = {cls.__name__: cls for cls in (BayesConv2D, BayesBatchNormalization, BayesDense)}
    clone = tf_keras.Model.from_config(model.get_config(), custom_objects=custom)
    x = _images(model)
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())


@pytest.mark.parametrize(
    "arch, defense, overrides, bad",
    [
        ("vgg12", "bnn", {}, "'vgg12'"),
        ("vgg11", "bayes", {}, "'bayes'"),
        ("vgg11", "bnn", {"num_classes": 1}, "num_classes.*1"),
        ("vgg11", "bnn", {"num_classes": 10.0}, "10.0"),
        ("vgg11", "bnn", {"input_shape": (32, 32)}, r"\(32, 32\)"),
        ("vgg11", "bnn", {"input_shape": (16, 16, 3)}, r"\(16, 16, 3\)"),
        ("model_a", "bnn", {"input_shape": (64, 64, 3)}, r"\(64, 64, 3\)"),
        ("vgg11", "bnn", {"width_multiplier": 0}, "width_multiplier.*0"),
        ("vgg11", "bnn", {"width_multiplier": -0.5}, "-0.5"),
        ("vgg11", "bnn", {"sigma_0": -0.1}, "sigma_0.*-0.1"),
        ("vgg11", "bnn", {"init_s": 0.0}, "init_s.*0.0"),
        ("vgg11", "rse", {"noise_init": -0.2}, "noise_init.*-0.2"),
        ("vgg11", "rse", {"noise_inner": float("inf")}, "noise_inner.*inf"),
        ("vgg11", "bnn", {"posterior": "local"}, "'local'"),
        ("vgg11", "bnn", {"seed": -1}, "seed.*-1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(arch, defense, overrides, bad):
    with pytest.raises(ValueError, match=bad):
        _build(arch, defense, **overrides)
