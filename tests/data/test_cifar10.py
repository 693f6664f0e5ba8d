"""Tests for tfp_advbnn.data.cifar10: every layout, class names, corrupt and missing files."""

import pickle
import tarfile

import numpy as np
import pytest
from data_samples import N_TEST, N_TRAIN, RECORD, decode_reference, link_layout, make_tarball

from tfp_advbnn.data.cifar10 import load_cifar10_arrays
from tfp_advbnn.data.registry import load_data


@pytest.fixture(scope="module")
def reference(cifar_bin_dir):
    return decode_reference(cifar_bin_dir)


@pytest.fixture(scope="module")
def tarballs(cifar_bin_dir, cifar_py_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tarballs")
    return {
        "bin": make_tarball(cifar_bin_dir, root / "cifar-10-binary.tar.gz"),
        "py": make_tarball(cifar_py_dir, root / "cifar-10-python.tar.gz"),
    }


@pytest.mark.parametrize(
    "where", ["bin_dir", "py_dir", "parent_dir", "bin_tar", "py_tar", "dir_holding_tar"]
)
def test_every_layout_loads_identical_arrays(
    where, reference, cifar_bin_dir, cifar_py_dir, tarballs
):
    path = {
        "bin_dir": cifar_bin_dir,
        "py_dir": cifar_py_dir,
        "parent_dir": cifar_bin_dir.parent,
        "bin_tar": tarballs["bin"],
        "py_tar": tarballs["py"],
        "dir_holding_tar": tarballs["py"].parent,
    }[where]
    (x_train, y_train), (x_test, y_test) = load_cifar10_arrays(path)
    (rx_train, ry_train), (rx_test, ry_test) = reference
    assert x_train.shape == (N_TRAIN, 32, 32, 3) and x_test.shape == (N_TEST, 32, 32, 3)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int32
    np.testing.assert_array_equal(x_train, rx_train)
    np.testing.assert_array_equal(y_train, ry_train)
    np.testing.assert_array_equal(x_test, rx_test)
    np.testing.assert_array_equal(y_test, ry_test)


@pytest.mark.parametrize("batch,record", [(1, 0), (3, 123), (5, 1016)])
def test_known_pixels_match_hand_parsed_records(batch, record, cifar_bin_dir, cifar_py_dir):
    raw = (cifar_bin_dir / f"data_batch_{batch}.bin").read_bytes()
    offset = record * RECORD
    (x_train, y_train), _ = load_cifar10_arrays(cifar_py_dir)
    index = (batch - 1) * 1017 + record
    assert y_train[index] == raw[offset]
    for row, col, channel in [(0, 0, 0), (5, 7, 1), (31, 31, 2), (16, 3, 0)]:
        expected = raw[offset + 1 + 1024 * channel + 32 * row + col]
        assert x_train[index, row, col, channel] == expected


def test_class_names_from_both_meta_files(cifar_bin_dir, cifar_py_dir, tarballs):
    expected = ("airplane", "automobile", "bird", "cat", "deer")
    expected += ("dog", "frog", "horse", "ship", "truck")
    for path in (cifar_bin_dir, cifar_py_dir, tarballs["py"]):
        spec = load_data("cifar10", data_dir=path, max_train_examples=8).spec
        assert spec.class_names == expected
        assert (spec.num_classes, spec.image_shape, spec.augmentation) == (
            10,
            (32, 32, 3),
            "crop_flip",
        )


@pytest.mark.parametrize(
    "batch,message",
    [
        ({b"labels": [0]}, "missing keys"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 11]}, "label 11"),
        ([1, 2, 3], "expected a pickled dict"),
    ],
)
def test_corrupt_python_batches_are_named(batch, message, cifar_py_dir, tmp_path):
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_4"})
    (root / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=message) as info:
        load_cifar10_arrays(root)
    assert "data_batch_4" in str(info.value)


@pytest.mark.parametrize("size", [0, RECORD * 1017 - 100, RECORD * 5 + 1])
def test_truncated_binary_batch_is_named(size, cifar_bin_dir, tmp_path):
    root = link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"data_batch_2.bin"})
    (root / "data_batch_2.bin").write_bytes(
        (cifar_bin_dir / "data_batch_2.bin").read_bytes()[:size]
    )
    with pytest.raises(ValueError, match=f"data_batch_2.bin: truncated.*{size} bytes"):
        load_cifar10_arrays(root)


def test_binary_label_out_of_range_is_named(cifar_bin_dir, tmp_path):
    root = link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"test_batch.bin"})
    raw = bytearray((cifar_bin_dir / "test_batch.bin").read_bytes())
    raw[5 * RECORD] = 10
    (root / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="test_batch.bin: label 10 of example 5 is out of range"):
        load_cifar10_arrays(root)


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_missing_batch_file_is_named(layout, cifar_bin_dir, cifar_py_dir, tmp_path):
    src = cifar_bin_dir if layout == "bin" else cifar_py_dir
    name = "data_batch_5.bin" if layout == "bin" else "data_batch_5"
    root = link_layout(src, tmp_path / src.name, skip={name})
    with pytest.raises(FileNotFoundError, match=f"missing.*{name}"):
        load_cifar10_arrays(root)
    # The parent-directory form finds the same incomplete copy and reports the same file.
    with pytest.raises(FileNotFoundError, match=name):
        load_data("cifar10", data_dir=tmp_path)


def test_missing_member_of_tarball_is_named(cifar_bin_dir, tmp_path):
    root = link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"test_batch.bin"})
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz", compresslevel=1, dereference=True) as archive:
        archive.add(root, arcname=root.name)
    with pytest.raises(FileNotFoundError, match="c.tar.gz:cifar-10-batches-bin/test_batch.bin"):
        load_cifar10_arrays(tmp_path / "c.tar.gz")


def test_truncated_tarball_is_named(tarballs, tmp_path):
    broken = tmp_path / "cifar-10-binary.tar.gz"
    broken.write_bytes(tarballs["bin"].read_bytes()[:200_000])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz: unreadable or truncated"):
        load_cifar10_arrays(broken)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        load_cifar10_arrays(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_dir does not exist"):
        load_data("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"no CIFAR-10 data in {tmp_path}"):
        load_data("cifar10", data_dir=tmp_path)
