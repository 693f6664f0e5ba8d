"""Tests for tfp_advbnn.data.tfds: an unprepared store gives an error saying what to do."""

import pytest

from tfp_advbnn.data.registry import load_data


@pytest.mark.parametrize("name", ["stl10", "cifar10"])
def test_missing_tfds_dataset_gives_clear_error(name, tmp_path):
    # For cifar10 an (empty) tfds store is recognised by its cifar10/ folder.
    (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError, match=f"no prepared '{name}'.*--data_dir.*tfds build"):
        load_data(name, data_dir=tmp_path)
