"""Tests for tfp_advbnn.data.safe_pickle: tampered pickles are refused, real ones load."""

import os
import pickle
import struct

import numpy as np
import pytest
from data_samples import link_layout

from tfp_advbnn.data.cifar10 import load_cifar10_arrays
from tfp_advbnn.data.safe_pickle import UnsafePickleError


class _OpenPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_payload_runs_under_plain_pickle(tmp_path):
    # Control: proves the payloads used below really act when unpickled without restriction.
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_OpenPayload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("payload_cls", [_OpenPayload, _SystemPayload])
@pytest.mark.parametrize("file", ["data_batch_2", "test_batch", "batches.meta"])
@pytest.mark.parametrize("nested", [False, True])
def test_tampered_pickle_is_refused_and_never_runs(
    payload_cls, file, nested, cifar_py_dir, tmp_path
):
    marker = tmp_path / "marker"
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={file})
    payload = payload_cls(marker)
    if nested:  # Hidden inside an otherwise well-formed batch dict.
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]}
    (root / file).write_bytes(pickle.dumps(payload, protocol=2))
    forbidden = "global .io.open." if payload_cls is _OpenPayload else "global .(posix|os).system."
    with pytest.raises(UnsafePickleError, match=forbidden) as info:
        load_cifar10_arrays(root)
    assert file in str(info.value)
    assert not marker.exists()


def test_object_arrays_are_refused(cifar_py_dir, tmp_path):
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_1"})
    batch = {b"data": np.array([b"x"] * 3072, dtype=object)[None], b"labels": [0]}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UnsafePickleError, match="object dtype"):
        load_cifar10_arrays(root)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickles_written_by_current_numpy_load(protocol, cifar_py_dir, tmp_path):
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    pixels = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"x", b"data": pixels, b"labels": [7, 3]}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    _, (x_test, y_test) = load_cifar10_arrays(root)
    np.testing.assert_array_equal(y_test, [7, 3])
    np.testing.assert_array_equal(
        x_test[1, 2, 5], pixels[1, [2 * 32 + 5 + 1024 * c for c in range(3)]]
    )


def _python2_style_batch(pixels: np.ndarray, labels: list) -> bytes:
    """A batch pickled the way the official files were (Python 2, numpy.core, byte strings)."""

    def short_string(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text

    rows, cols = pixels.shape
    return b"".join(
        [
            b"\x80\x02}(",  # protocol 2, empty dict, mark
            short_string(b"data"),
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
            short_string(b"b") + b"\x87R(K\x01",  # _reconstruct(ndarray, (0,), "b"); state:
            b"K" + bytes([rows]) + b"M" + struct.pack("<H", cols) + b"\x86",  # shape
            b"cnumpy\ndtype\n" + short_string(b"u1") + b"K\x00K\x01\x87R(K\x03",
            short_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # dtype
            b"\x89T" + struct.pack("<i", pixels.size) + pixels.tobytes() + b"tb",  # raw bytes
            short_string(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels),
            b"eu.",
        ]
    )


def test_python2_pickles_like_the_official_files_load(cifar_py_dir, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    payload = _python2_style_batch(pixels, [4, 0, 9])
    # Control: the standard unpickler reads the crafted bytes as the official files read.
    plain = pickle.loads(payload, encoding="bytes")
    np.testing.assert_array_equal(plain[b"data"], pixels)
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    (root / "test_batch").write_bytes(payload)
    _, (x_test, y_test) = load_cifar10_arrays(root)
    np.testing.assert_array_equal(y_test, [4, 0, 9])
    np.testing.assert_array_equal(x_test, pixels.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


def test_protocol5_array_pickles_are_outside_the_allow_list(cifar_py_dir, tmp_path):
    # Protocol 5 rebuilds arrays with numpy's _frombuffer, which no CIFAR-10 file needs.
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    with pytest.raises(UnsafePickleError, match="_frombuffer"):
        load_cifar10_arrays(root)


def test_truncated_pickle_is_named(cifar_py_dir, tmp_path):
    root = link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_3"})
    (root / "data_batch_3").write_bytes((cifar_py_dir / "data_batch_3").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="data_batch_3.*corrupt or truncated"):
        load_cifar10_arrays(root)
