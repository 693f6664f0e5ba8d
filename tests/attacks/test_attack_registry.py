"""Tests for tfp_advbnn.attacks.registry, and properties every registered attack shares."""

import re

import numpy as np
import pytest
import tensorflow as tf
from attack_problems import l2, linear_problem, linf, trained_cifar_model

from tfp_advbnn import attacks
from tfp_advbnn.attacks.apgd import apgd
from tfp_advbnn.attacks.cw import cw_l2
from tfp_advbnn.attacks.pgd import fgsm, pgd
from tfp_advbnn.attacks.registry import ATTACKS, FAMILIES, SETTINGS, Attack, get
from tfp_advbnn.attacks.threats import NORMS


@pytest.fixture(scope="module")
def cifar_model(cifar_bin_dir):
    return trained_cifar_model(cifar_bin_dir)


@pytest.mark.parametrize(
    "name, run",
    [
        (
            "pgd_linf",
            lambda f, x, y: pgd(f, x, y, eps=4 / 255, step_size=1 / 255, num_steps=5),
        ),
        (
            "pgd_l2",
            lambda f, x, y: pgd(
                f, x, y, eps=0.3, step_size=0.1, num_steps=5, norm="l2", random_start=True, seed=5
            ),
        ),
        ("fgsm", lambda f, x, y: fgsm(f, x, y, eps=4 / 255)),
        ("apgd", lambda f, x, y: apgd(f, x, y, eps=4 / 255, num_steps=5, seed=1)),
        ("cw", lambda f, x, y: cw_l2(f, x, y, num_steps=5)),
    ],
)
def test_tf_function_matches_eager(cifar_model, name, run):
    _, model_fn, images, labels = cifar_model
    x, y = images[:16], labels[:16]
    eager = run(model_fn, x, y).numpy()
    graph = tf.function(lambda a, b: run(model_fn, a, b))(tf.constant(x), tf.constant(y)).numpy()
    np.testing.assert_allclose(graph, eager, atol=1e-5, err_msg=name)
    assert np.abs(eager - x).max() > 0.0


def test_every_name_resolves_to_a_consistent_entry():
    assert ATTACKS == ("pgd_linf", "pgd_l2", "fgsm", "cw", "apgd", "apgd_dlr")
    assert attacks.ATTACKS is ATTACKS and attacks.get is get
    for name in ATTACKS:
        attack = get(name)
        assert isinstance(attack, Attack) and attack.name == name
        assert callable(attack.function)
        assert attack.norm in NORMS
        assert attack.family in FAMILIES
        assert set(attack.settings) <= set(SETTINGS)


def test_names_norms_and_captions_are_those_evaluation_reports():
    assert {name: get(name).norm for name in ATTACKS} == {
        "pgd_linf": "linf",
        "pgd_l2": "l2",
        "fgsm": "linf",
        "cw": "l2",
        "apgd": "linf",
        "apgd_dlr": "linf",
    }
    assert {name: get(name).display_name for name in ATTACKS} == {
        "pgd_linf": "PGD (L\u221e)",
        "pgd_l2": "PGD (L2)",
        "fgsm": "FGSM",
        "cw": "C&W (L2)",
        "apgd": "APGD-CE (L\u221e)",
        "apgd_dlr": "APGD-DLR (L\u221e)",
    }


def test_families_and_the_step_arguments_each_attack_takes():
    table = {
        name: (
            get(name).family,
            get(name).bounded,
            get(name).takes_steps,
            get(name).takes_step_size,
        )
        for name in ATTACKS
    }
    assert table == {
        "pgd_linf": ("iterative", True, True, True),
        "pgd_l2": ("iterative", True, True, True),
        "fgsm": ("single_step", True, False, False),
        "cw": ("optimization", False, True, False),
        "apgd": ("iterative", True, True, False),
        "apgd_dlr": ("iterative", True, True, False),
    }


@pytest.mark.parametrize("name", [n for n in ATTACKS if get(n).bounded])
def test_norm_matches_the_threat_the_function_uses(name):
    # An L2 ball of radius eps lies inside the L-inf ball of the same radius, and on this linear
    # model an L-inf attack moves every pixel: so an L-inf attack leaves the L2 ball, and an L2
    # attack (eps 0.5) stays far inside the L2 norm an L-inf one would reach (about 2).
    model_fn, _, _, images, labels = linear_problem(num_classes=3)
    attack = get(name)
    eps = 0.05 if attack.norm == "linf" else 0.5
    x_adv = attack(
        model_fn,
        images,
        labels,
        eps=eps,
        step_size=eps / 2,
        num_steps=5,
        random_start=False,
        num_eot_samples=1,
        selection_samples=0,
        seed=0,
        c=1.0,
    ).numpy()
    delta = x_adv - images
    if attack.norm == "linf":
        assert np.all(linf(delta) <= eps + 1e-6)
        assert np.all(l2(delta) > eps)
    else:
        assert np.all(l2(delta) <= eps + 1e-5)
        assert np.all(l2(delta) > 0.5 * eps)


def test_the_unbounded_attack_is_cw_measured_in_l2():
    # C&W minimises the squared L2 distortion, so evaluation measures (and cuts) it in L2.
    assert [name for name in ATTACKS if not get(name).bounded] == ["cw"]
    assert get("cw").function is cw_l2 and get("cw").norm == "l2"


def test_a_registered_call_is_the_direct_call_with_the_settings_it_takes():
    model_fn, _, _, images, labels = linear_problem(num_classes=3)
    seed = tf.constant([0, 1], tf.int64)
    settings = dict(
        eps=0.05,
        step_size=0.01,
        num_steps=3,
        random_start=True,
        num_eot_samples=2,
        selection_samples=2,
        seed=seed,
        c=0.5,
    )
    common = dict(eps=0.05, num_eot_samples=2)
    pgd_args = dict(common, step_size=0.01, num_steps=3, random_start=True, seed=seed)
    direct = {
        "pgd_linf": lambda: pgd(model_fn, images, labels, norm="linf", **pgd_args),
        "pgd_l2": lambda: pgd(model_fn, images, labels, norm="l2", **pgd_args),
        "fgsm": lambda: fgsm(model_fn, images, labels, **common),
        "apgd": lambda: apgd(
            model_fn,
            images,
            labels,
            num_steps=3,
            norm="linf",
            selection_samples=2,
            seed=seed,
            **common,
        ),
        "apgd_dlr": lambda: apgd(
            model_fn,
            images,
            labels,
            num_steps=3,
            norm="linf",
            selection_samples=2,
            seed=seed,
            loss="dlr",
            **common,
        ),
        "cw": lambda: cw_l2(model_fn, images, labels, c=0.5, num_steps=3),
    }
    assert set(direct) == set(ATTACKS)
    for name in ATTACKS:
        registered = get(name)(model_fn, images, labels, **settings)
        np.testing.assert_array_equal(registered, direct[name](), err_msg=name)


def test_a_call_forwards_only_the_settings_the_attack_takes():
    received = []

    def record(model_fn, images, labels, **arguments):
        received.append(arguments)
        return images

    attack = Attack("probe", record, "l2", "Probe", "iterative", ("eps", "seed"), takes_norm=True)
    attack(None, "x", "y", eps=0.1, seed=3, num_steps=7, c=2.0)
    assert received == [{"eps": 0.1, "seed": 3, "norm": "l2"}]
    with pytest.raises(TypeError, match="num_step"):
        attack(None, "x", "y", eps=0.1, num_step=7)


@pytest.mark.parametrize("name", ["pgd", "PGD_LINF", "", None, "cw_l2"])
def test_unknown_names_raise_value_error_naming_the_value_and_the_choices(name):
    with pytest.raises(ValueError, match=re.escape(repr(name))) as raised:
        get(name)
    message = str(raised.value)
    assert message.startswith("attack must be one of")
    assert all(repr(choice) in message for choice in ATTACKS)


def test_describe_names_the_attack_and_its_budget():
    assert get("fgsm").describe(num_steps=20) == "FGSM"
    assert get("cw").describe(num_steps=100) == "C&W (L2), 100 steps"
    assert (
        get("pgd_linf").describe(num_steps=20, num_eot_samples=10, random_restarts=1)
        == "PGD (L\u221e), 20 steps, EOT 10, 1 random restart"
    )
    assert (
        get("apgd").describe(num_steps=40, num_eot_samples=1, random_restarts=3)
        == "APGD-CE (L\u221e), 40 steps, 3 random restarts"
    )
