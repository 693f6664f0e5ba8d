"""Test set-up: oneDNN on and two logical CPUs, before TensorFlow is imported."""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices let MirroredStrategy tests run on one CPU; this must happen
# before any op initializes the runtime.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cifar_bin_dir():
    path = SHARED_DATA / "cifar-10-batches-bin"
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 subset not found at {path}; see the README there")
    return path


@pytest.fixture(scope="session")
def cifar_py_dir():
    path = SHARED_DATA / "cifar-10-batches-py"
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 subset not found at {path}; see the README there")
    return path


@pytest.fixture(scope="session")
def small_data(cifar_bin_dir):
    """The first 64 training and 32 test images of the subset, for short training runs."""
    from tfp_advbnn import data

    return data.load_data(
        "cifar10", data_dir=str(cifar_bin_dir), max_train_examples=64, max_test_examples=32
    )


@pytest.fixture(autouse=True)
def _op_determinism_off_after_each_test():
    """A deterministic Trainer turns TF op determinism on for the whole process (also inside a
    session fixture, before this one runs); later tests in the same worker, such as layers with
    non-deterministic seeds, need it off. A test that needs it builds its Trainer again."""
    from tensorflow.python.framework import config as tf_config

    yield
    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()
