"""The setting declarations: flat names, paths and the flat round trip."""

import dataclasses
import json

import pytest

from tfp_advbnn import config


@pytest.mark.parametrize("config_cls", [config.TrainConfig, config.EvalConfig])
def test_every_setting_has_one_flat_name_and_a_help_line(config_cls):
    settings = list(config.settings_of(config_cls))
    names = [s.name for s in settings]
    assert len(names) == len(set(names))
    assert all(s.help.strip() for s in settings)
    # Every dataclass field of every section is declared with ``setting``.
    sections = [
        f.metadata["section"] for f in dataclasses.fields(config_cls) if "section" in f.metadata
    ]
    declared = sum(len(dataclasses.fields(s)) for s in sections) if sections else len(names)
    assert len(names) == declared


def test_flat_names_reach_the_fields_of_their_sections():
    train = config.TrainConfig.from_flat(model_dir="m", alpha=0.3, epochs=7, seed=4, model="vgg11")
    assert (train.objective.alpha, train.optim.epochs, train.runtime.seed) == (0.3, 7, 4)
    assert train.network.model == "vgg11" and train.model_dir == "m"
    assert config.TrainConfig.path_of("alpha") == "objective.alpha"
    assert train.get("objective.alpha") == train.get("alpha") == 0.3
    # The untouched fields keep the declared defaults.
    assert train.attack == config.AttackConfig() and train.data == config.DataConfig()
    assert config.TrainConfig.from_flat(**train.flat()) == train
    assert train.replace(alpha=0.5).objective.alpha == 0.5 and train.objective.alpha == 0.3


def test_unknown_flat_names_are_refused_by_name():
    with pytest.raises(ValueError, match="learning_rat"):
        config.TrainConfig.from_flat(model_dir="m", learning_rat=0.1)


def test_a_flat_config_json_of_an_older_run_reads_as_the_nested_config():
    train = config.TrainConfig.from_flat(model_dir="m", defense="bnn", sigma_0=0.1)
    assert config.TrainConfig.from_json(json.dumps(train.flat())) == train
    nested = json.loads(train.to_json())
    assert nested["network"]["sigma_0"] == 0.1 and nested["objective"]["defense"] == "bnn"
