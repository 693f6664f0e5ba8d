"""EvalConfig: every bad setting is refused by a ValueError naming its field."""

import pytest

from tfp_advbnn.config import EvalConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("attack", "deepfool"),
        ("eps_grid", (0.0, 1.5)),
        ("eps_grid", ()),
        ("attack_steps", 0),
        ("pgd_step_size", 0.0),
        ("random_restarts", -1),
        ("num_eot_samples", 0),
        ("num_samples", 0),
        ("max_examples", 0),
        ("batch_size", 2.5),
        ("check_eot_samples", 1),
    ],
)
def test_eval_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})
