"""The default recipe (training/recipe.py): the schedule spans each dataset's epochs, unknown
names are refused, and only missing settings take the recipe's value."""

import pytest

from tfp_advbnn.training import recipe


@pytest.mark.parametrize("dataset", list(recipe.DATASET_DEFAULTS))
def test_the_reference_stages_add_up_to_the_default_epochs(dataset):
    assert sum(recipe.STAGE_EPOCHS[dataset]) == recipe.DATASET_DEFAULTS[dataset]["epochs"]


@pytest.mark.parametrize(
    "field, dataset, defense", [("dataset", "mnist", "bnn"), ("defense", "cifar10", "madry")]
)
def test_recipe_of_an_unknown_name_is_refused_naming_it(field, dataset, defense):
    with pytest.raises(ValueError, match=f"^{field} must be one of .*, got '(mnist|madry)'"):
        recipe.recipe_defaults(dataset, defense)


def test_only_missing_or_none_settings_take_the_recipe_value():
    values = {"dataset": "stl10", "defense": "bnn", "sigma_0": 0.2, "alpha": None, "seed": 3}
    expected = {**recipe.recipe_defaults("stl10", "bnn"), **values, "alpha": 1.0 / 50.0}
    assert recipe.with_recipe_defaults(values) == expected
    assert expected["sigma_0"] == 0.2 and expected["model"] == "model_a"
    assert values["alpha"] is None  # the argument is left alone
