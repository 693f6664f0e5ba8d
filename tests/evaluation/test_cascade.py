"""The cascade (AutoAttack's order): the same worst case, attacking only what is still robust.

On the linear model of ``test_honest_counting`` an example is robust at eps exactly when it is
correct when clean and its margin exceeds eps, so the cascade's outcome and the examples each
of its attacks receives are known in advance.
"""

import numpy as np
import pytest
from eval_support import linear_problem

from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation import engine
from tfp_advbnn.evaluation.detection import detect
from tfp_advbnn.evaluation.sweeps import run_sweep, steps_sweep, sweep

GRID = (0.0, 0.01, 0.02)


def adaptive(**values):
    defaults = dict(
        protocol="adaptive",
        eps_grid=GRID,
        attack_steps=10,
        num_samples=1,
        batch_size=32,
        square_examples=0,
        cascade=True,
    )
    return EvalConfig(**{**defaults, **values})


def flipped_problem():
    """The linear problem with its first 16 labels flipped: wrong when clean."""
    model_fn, images, labels, margins = linear_problem()
    labels = labels.copy()
    labels[:16] = 1 - labels[:16]
    clean = np.arange(len(labels)) >= 16
    return model_fn, images, labels, clean, margins


def test_cascade_finds_the_worst_case_of_attacking_everything():
    model_fn, images, labels, clean, margins = flipped_problem()
    cascade = run_sweep(model_fn, images, labels, adaptive(), stochastic=False)
    full = run_sweep(model_fn, images, labels, adaptive(cascade=False), stochastic=False)
    for e, eps in enumerate(GRID):
        expected = clean & (margins > eps)
        np.testing.assert_array_equal(cascade.robust[e], expected)
        np.testing.assert_array_equal(full.robust[e], expected)
    # Clean-misclassified examples are not attacked and count as wrong.
    np.testing.assert_array_equal(cascade.correct, cascade.robust)
    # Each attack's outcome is cumulative: the last one is the worst case.
    np.testing.assert_array_equal(cascade.attacks[-1].robust, cascade.robust)
    assert np.all(cascade.attacks[0].robust >= cascade.attacks[1].robust)


def test_each_attack_receives_only_the_examples_still_robust(monkeypatch):
    model_fn, images, labels, clean, margins = flipped_problem()
    calls = []
    attack_outcomes = engine.attack_outcomes

    def recording(source, targets, images, labels, spec, eps_values, **kwargs):
        calls.append((spec.attack, tuple(eps_values), len(images)))
        return attack_outcomes(source, targets, images, labels, spec, eps_values, **kwargs)

    monkeypatch.setattr(engine, "attack_outcomes", recording)
    run_sweep(model_fn, images, labels, adaptive(), stochastic=False)
    survivors = {eps: int(np.sum(clean & (margins > eps))) for eps in GRID}
    # Both APGD losses reach the boundary of this linear model: the second attack at a radius
    # finds nothing new, and the next radius starts from the survivors of the smaller one.
    assert calls == [
        ("apgd", (0.0,), int(clean.sum())),
        ("apgd", (0.01,), survivors[0.0]),
        ("apgd_dlr", (0.01,), survivors[0.01]),
        ("apgd", (0.02,), survivors[0.01]),
        ("apgd_dlr", (0.02,), survivors[0.02]),
    ]


def test_the_report_says_the_cascade_ran_and_what_its_counts_mean():
    model_fn, images, labels, _, _ = flipped_problem()
    report = sweep(model_fn, images, labels, adaptive(), with_checks=False, stochastic=False)
    assert report["cascade"] is True
    assert report["accuracy"] == report["robust_accuracy"]
    assert any(note.startswith("cascade:") for note in report["notes"])
    plain = sweep(
        model_fn, images, labels, adaptive(cascade=False), with_checks=False, stochastic=False
    )
    assert plain["cascade"] is False
    assert plain["robust_accuracy"] == report["robust_accuracy"]


@pytest.mark.parametrize(
    "run",
    [
        lambda f, x, y: sweep(f, x, y, adaptive(), with_checks=True, stochastic=False),
        lambda f, x, y: steps_sweep(f, x, y, adaptive(protocol="paper"), [0.01], [1, 2]),
        lambda f, x, y: detect(f, x, y, adaptive(protocol="paper"), [0.01], stochastic=False),
    ],
    ids=["with_checks", "steps_sweep", "detect"],
)
def test_the_cascade_is_refused_where_it_would_be_ignored(run):
    model_fn, images, labels, _ = linear_problem(num=8)
    with pytest.raises(ValueError, match="^cascade"):
        run(model_fn, images, labels)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(square_eps=(0.015,)), "square_eps must be non-zero radii of eps_grid"),
        (dict(square_eps=(0.0,)), "square_eps must be non-zero radii of eps_grid"),
        (dict(square_eps=(0.01,), square_examples=0), "square_examples=0 turns off"),
        (dict(cascade="yes"), "cascade must be True or False"),
    ],
)
def test_bad_square_radii_and_cascade_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        adaptive(**{"square_examples": 4, **values})


def test_a_square_radius_typed_to_four_digits_names_the_grid_radius():
    config = adaptive(eps_grid=(0.0, 0.035, 8 / 255), square_examples=4, square_eps=(0.0314,))
    assert config.square_eps == (8 / 255,)
    with pytest.raises(ValueError, match="square_eps must be non-zero radii"):
        adaptive(eps_grid=(0.0, 0.035, 8 / 255), square_examples=4, square_eps=(0.0312,))


def test_the_square_check_runs_at_each_of_its_radii():
    pytest.importorskip("art")
    # Square's first square must be smaller than the image: 8 x 8 pixels, not the usual 4 x 4.
    model_fn, images, labels, _ = linear_problem(num=16, shape=(8, 8, 3))
    config = adaptive(square_examples=8, square_eps=(0.01, 0.02), square_queries=20)
    report = sweep(model_fn, images, labels, config, with_checks=False, stochastic=False)
    square = [c for c in report["checks"] if c["name"] == "black_box_not_stronger"]
    assert [c["eps"] for c in square] == [0.01, 0.02]
    assert all(c["passed"] for c in square)
