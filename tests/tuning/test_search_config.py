"""What a search searches and how trials are scored (tuning/search_config.py): the log-uniform
space, bad settings named by their flag or field, and the objectives."""

import math

import numpy as np
import pytest
from run_support import tiny_search

from tfp_advbnn.tuning.search_config import TUNED, SearchConfig, SearchSpace, trial_metrics
from tfp_advbnn.tuning.tuner import make_oracle


def test_search_space_samples_log_uniformly_within_bounds_and_keeps_fixed_values():
    space = SearchSpace(alpha=(1e-3, 1.0), sigma_0=(0.02, 0.05), init_s=0.07)
    space.validate()
    hp = space.hyperparameters()
    samples = {p.name: [p.random_sample(seed) for seed in range(400)] for p in hp.space}
    assert set(samples) == set(TUNED)
    assert all(v == 0.07 for v in samples["init_s"])
    for name, (low, high) in [
        ("alpha", (1e-3, 1.0)),
        ("sigma_0", (0.02, 0.05)),
        ("learning_rate", (1e-4, 1e-2)),
    ]:
        values = np.asarray(samples[name])
        assert values.min() >= low and values.max() <= high, name
        # Log-uniform: log(value) is uniform, so its median is the geometric midpoint
        # (for alpha 0.032, where a uniform draw would have a median of 0.5).
        midpoint = math.sqrt(low * high)
        assert abs(math.log(np.median(values) / midpoint)) < 0.15 * math.log(high / low), name


@pytest.mark.parametrize(
    "space, flag",
    [
        (SearchSpace(alpha=(0.5, 0.1)), "alpha_min"),
        (SearchSpace(sigma_0=(0.0, 0.3)), "sigma_0_min"),
        (SearchSpace(init_s=(0.01, math.inf)), "init_s_min"),
        (SearchSpace(learning_rate=-1e-3), "fix_learning_rate"),
        (SearchSpace(alpha=-0.1), "fix_alpha"),
        (SearchSpace(sigma_0=0.0), "fix_sigma_0"),
    ],
)
def test_bad_search_space_is_rejected_naming_the_flag(space, flag):
    with pytest.raises(ValueError, match=f"^{flag}"):
        space.validate()


def test_a_fixed_alpha_of_zero_is_allowed():
    SearchSpace(alpha=0.0).validate()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(max_trials=0), "max_trials"),
        (dict(epochs_per_trial=0), "epochs_per_trial"),
        (dict(combined_weight=1.5), "combined_weight"),
        (dict(objective="accuracy"), "objective"),
        (dict(tuner="grid"), "tuner"),
        (dict(hyperband_factor=1), "hyperband_factor"),
        (dict(validation_examples=0), "validation_examples"),
        (dict(space=SearchSpace(alpha=(1.0, 1.0))), "alpha_min"),
    ],
)
def test_bad_search_settings_are_rejected_naming_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        tiny_search(tmp_path, "unused", **overrides).validate()


def test_objectives_are_computed_from_the_validation_accuracies(tmp_path):
    metrics = trial_metrics(clean_accuracy=0.8, robust_accuracy=0.3, combined_weight=0.25)
    assert metrics == pytest.approx(
        {"val_accuracy": 0.8, "val_robust_accuracy": 0.3, "val_combined": 0.25 * 0.3 + 0.75 * 0.8}
    )
    assert trial_metrics(0.8, 0.3, 0.0)["val_combined"] == pytest.approx(0.8)
    assert trial_metrics(0.8, 0.3, 1.0)["val_combined"] == pytest.approx(0.3)
    for objective, name in [
        ("clean", "val_accuracy"),
        ("robust", "val_robust_accuracy"),
        ("combined", "val_combined"),
    ]:
        oracle = make_oracle(tiny_search(tmp_path, "unused", objective=objective))
        assert (oracle.objective.name, oracle.objective.direction) == (name, "max")
    assert SearchConfig.objective == "robust"  # the default objective
