"""TrainConfig (config.py): its checks name the bad field, and its JSON form."""

import json

import pytest
from run_support import tiny_config

from tfp_advbnn.config import TrainConfig


@pytest.mark.parametrize(
    "field, value",
    [
        ("defense", "madry"),
        ("model", "resnet50"),
        ("train_eps", 8.0),
        ("batch_size", 0),
        ("alpha", -1.0),
        ("sigma_0", 0.0),
        ("learning_rate", float("nan")),
        ("train_pgd_steps", 0),
        ("optimizer", "rmsprop"),
        ("eval_num_samples", 0),
    ],
)
def test_bad_config_names_the_field(field, value):
    config = tiny_config("unused", **{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weight_decay_on_a_bayesian_defense_is_refused(optimizer):
    config = tiny_config("unused", defense="bnn", optimizer=optimizer, weight_decay=5e-4)
    with pytest.raises(ValueError, match="weight_decay 0.0005.*bnn"):
        config.validate()


def test_json_round_trip_and_unknown_fields_refused():
    config = tiny_config("runs/x", dataset="folder", image_size=16, pgd_step_size=0.01)
    assert TrainConfig.from_json(config.to_json()) == config
    text = json.dumps({**json.loads(config.to_json()), "learning_rat": 0.1})
    with pytest.raises(ValueError, match=r"unknown fields \['learning_rat'\]"):
        TrainConfig.from_json(text)


def test_pgd_step_size_defaults_to_madrys_rule():
    assert tiny_config(
        "unused", train_eps=0.04, train_pgd_steps=5
    ).attack.step_size == pytest.approx(0.02)
    assert tiny_config("unused", pgd_step_size=0.003).attack.step_size == 0.003
