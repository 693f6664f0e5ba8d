"""The reliability contract across modules, in one place because each case crosses them:
every bad input (data files, configs, evaluation settings, attack arguments) gets an error
naming it; the SavedModel refuses bad requests by name; the same seed gives the same weight
draws and PGD starts, another seed other ones. Per-module behaviour is tested beside each module.
"""

import os
import pickle
import shutil

import numpy as np
import pytest
import tensorflow as tf
from run_support import deterministic_config

from tfp_advbnn import attacks, data, evaluation, export, models

pytest_plugins = ["run_support"]


RECORD = 3073  # bytes of one CIFAR-10 binary record


class _Payload:
    """Pickles into a call that would create ``marker``: a loader must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _copy_bin(cifar_bin_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(cifar_bin_dir, target)
    return target


def _truncated_batch(cifar_bin_dir, tmp_path):
    target = _copy_bin(cifar_bin_dir, tmp_path)
    path = target / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[: RECORD * 10 + 17])
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "data_batch_3.bin"


def _label_out_of_range(cifar_bin_dir, tmp_path):
    target = _copy_bin(cifar_bin_dir, tmp_path)
    path = target / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[RECORD * 4] = 10
    path.write_bytes(bytes(raw))
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "test_batch.bin"


def _tampered_pickle(cifar_py_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_py_dir, target)
    marker = tmp_path / "payload-ran"
    (target / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(str(marker))}))

    def load():
        try:
            data.load_cifar10_arrays(str(target))
        finally:
            assert not marker.exists()

    return load, data.UnsafePickleError, "data_batch_1"


def _corrupt_image(cifar_bin_dir, tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            directory = root / split / name
            directory.mkdir(parents=True)
            for i in range(2):
                image = rng.integers(0, 255, (12, 12, 3), np.uint8)
                tf.io.write_file(str(directory / f"{i}.png"), tf.io.encode_png(image))
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    def load():
        loaded = data.load_data("folder", data_dir=str(root), image_size=(8, 8))
        for _ in loaded.train_dataset(batch_size=5, drop_remainder=False):
            pass

    return load, tf.errors.InvalidArgumentError, "broken.png"


def _wrong_image_size(cifar_py_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_py_dir, target)
    batch = {b"data": np.zeros((10, 2000), np.uint8), b"labels": [0] * 10}
    (target / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    return lambda: data.load_cifar10_arrays(str(target)), ValueError, "data_batch_2"


def _empty_data_dir(cifar_bin_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return lambda: data.load_cifar10_arrays(str(empty)), FileNotFoundError, str(empty)


def _missing_data_dir(cifar_bin_dir, tmp_path):
    missing = tmp_path / "nowhere"
    return (
        lambda: data.load_data("cifar10", data_dir=str(missing)),
        FileNotFoundError,
        str(missing),
    )


def _bad_train_config(cifar_bin_dir, tmp_path):
    return (
        lambda: deterministic_config(tmp_path, train_eps=8.0).validate(),
        ValueError,
        "train_eps must be a finite number >= 0 and <= 1, got 8.0",
    )


def _bad_eval_config(cifar_bin_dir, tmp_path):
    return (
        lambda: evaluation.EvalConfig(eps_grid=(0.0, -0.1)),
        ValueError,
        "eps_grid",
    )


def _bad_attack_argument(cifar_bin_dir, tmp_path):
    images = np.zeros((2, 4, 4, 3), np.float32)
    return (
        lambda: attacks.pgd(
            lambda x: tf.zeros([2, 10]), images, [0, 1], eps=0.1, step_size=0.0, num_steps=1
        ),
        ValueError,
        "step_size",
    )


BAD_INPUTS = {
    "truncated batch file": _truncated_batch,
    "label out of range": _label_out_of_range,
    "tampered pickle, never executed": _tampered_pickle,
    "corrupt image file": _corrupt_image,
    "images of the wrong size": _wrong_image_size,
    "empty data directory": _empty_data_dir,
    "missing data directory": _missing_data_dir,
    "train config value": _bad_train_config,
    "evaluation config value": _bad_eval_config,
    "attack argument": _bad_attack_argument,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_an_error_naming_it(case, cifar_bin_dir, cifar_py_dir, tmp_path):
    python_layout = case.startswith(("tampered", "images of the wrong size"))
    source = cifar_py_dir if python_layout else cifar_bin_dir
    run, error, named = BAD_INPUTS[case](source, tmp_path)
    with pytest.raises(error) as raised:
        run()
    assert named in str(raised.value)


def _tiny_model(defense, seed):
    return models.build_model(
        "vgg11",
        defense,
        num_classes=10,
        input_shape=(32, 32, 3),
        width_multiplier=0.0625,
        sigma_0=0.05,
        init_s=0.05,
        seed=seed,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = _tiny_model("plain", 0)
    path = str(tmp_path_factory.mktemp("served") / "saved_model")
    export.export_saved_model(model, path, num_samples=1, image_shape=(32, 32, 3))
    return tf.saved_model.load(path).signatures["serving_default"]


@pytest.mark.parametrize(
    "images, named",
    [
        (tf.zeros([32, 32, 3]), "rank-4"),
        (tf.zeros([1, 28, 28, 3]), "shape"),
        (tf.fill([1, 32, 32, 3], 255.0), "[0, 1]"),
    ],
)
def test_saved_model_rejects_bad_requests_by_name(served, images, named):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as raised:
        served(images=images)
    assert named in str(raised.value)


def test_saved_model_rejects_a_wrong_dtype(served):
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        served(images=tf.zeros([1, 32, 32, 3], tf.uint8))


def _draws(seed):
    model = _tiny_model("adv_bnn", seed)
    images = tf.constant(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), tf.float32)
    return np.stack([model(images, training=False).numpy() for _ in range(3)])


def test_same_seed_same_weight_draws_and_other_seed_other_draws():
    first, again, other = _draws(5), _draws(5), _draws(6)
    np.testing.assert_array_equal(first, again)
    # Successive calls are fresh draws, and another seed draws differently.
    assert not np.array_equal(first[0], first[1])
    assert not np.allclose(first, other)


def test_same_seed_same_pgd_perturbation_and_other_seed_other_perturbation():
    def perturbation(seed):
        model_fn = _tiny_model("adv_bnn", seed)
        images = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
        x_adv = attacks.pgd(
            lambda x: model_fn(x, training=False),
            images,
            np.array([0, 1, 2, 3], np.int32),
            eps=0.03,
            step_size=0.01,
            num_steps=3,
            random_start=True,
            seed=seed,
        )
        return x_adv.numpy() - images

    first, again, other = perturbation(7), perturbation(7), perturbation(8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
