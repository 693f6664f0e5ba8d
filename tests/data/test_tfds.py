"""Tests for tfp_advbnn.data.tfds: download on first use, and one clear error without network.

No test touches the network: the offline machine is simulated by a socket that cannot connect,
and the download itself by a stand-in for ``tfds.load`` that records its arguments.
"""

import re
import socket
import types

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from tfp_advbnn.data import DownloadUnavailableError, load_data
from tfp_advbnn.data import tfds as tfds_source

LOCAL_FILES = {
    "cifar10": r"cifar-10-batches-bin, cifar-10-batches-py or an official \.tar\.gz",
    "stl10": r"the official stl10_binary/ files",
}
SIDES = {"cifar10": 32, "stl10": 96}


@pytest.fixture
def offline(monkeypatch):
    """No host can be reached, and tfds.load fails the test if it is called at all."""

    def refuse(address, *args, **kwargs):
        raise OSError(101, "Network is unreachable")

    def no_load(*args, **kwargs):
        raise AssertionError("tfds.load was called on an offline machine")

    for name in tfds_source._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tfds, "load", no_load)


class _Connection:
    def close(self):
        pass


@pytest.fixture
def online(monkeypatch):
    """Every host answers; returns the list of (host, port) pairs probed."""
    probed = []

    def connect(address, *args, **kwargs):
        probed.append(address)
        return _Connection()

    for name in tfds_source._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", connect)
    return probed


def _fake_load(calls, side):
    """A stand-in for tfds.load(batch_size=-1, as_supervised=True, with_info=True)."""

    def load(name, **kwargs):
        calls.append((name, kwargs))
        x_train = np.full((4, side, side, 3), 7, np.uint8)
        x_test = np.full((2, side, side, 3), 9, np.uint8)
        splits = [
            (tf.constant(x_train), tf.constant([0, 1, 2, 9], tf.int64)),
            (tf.constant(x_test), tf.constant([3, 4], tf.int64)),
        ]
        label = types.SimpleNamespace(names=[f"c{i}" for i in range(10)])
        return splits, types.SimpleNamespace(features={"label": label})

    return load


@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_offline_gives_one_message_naming_the_local_alternatives(name, tmp_path, offline):
    (tmp_path / name).mkdir()  # A tfds data directory, recognised by the data set's folder.
    with pytest.raises(DownloadUnavailableError) as info:
        load_data(name, data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"no prepared '{name}'" in message and "cannot reach" in message
    assert "Network is unreachable" in message
    assert "--data_dir=<directory> holding" in message
    assert re.search(LOCAL_FILES[name], message)
    assert f"tfds build {name} --data_dir={tmp_path}" in message
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("name", ["cifar10", "stl10"])
def test_first_use_asks_tfds_to_download(name, tmp_path, online, monkeypatch):
    (tmp_path / name).mkdir()
    calls = []
    monkeypatch.setattr(tfds, "load", _fake_load(calls, SIDES[name]))
    loaded = load_data(name, data_dir=tmp_path)
    [(called_name, kwargs)] = calls
    assert called_name == name
    assert kwargs["download"] is True
    assert kwargs["data_dir"] == str(tmp_path)
    assert kwargs["split"] == ["train", "test"] and kwargs["as_supervised"] is True
    # The probe went to the official host of the data set, on the URL's port.
    host = {"cifar10": ("www.cs.toronto.edu", 443), "stl10": ("ai.stanford.edu", 80)}[name]
    assert online == [host]
    assert loaded.spec.num_train == 4 and loaded.spec.num_test == 2
    assert loaded.spec.class_names == tuple(f"c{i}" for i in range(10))
    _, labels = loaded.test_arrays()
    np.testing.assert_array_equal(labels, [3, 4])


def test_default_data_dir_is_tfds_own(online, monkeypatch, tmp_path):
    """Without --data_dir the download goes to tensorflow-datasets' default directory."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(tfds, "load", _fake_load(calls, 32))
    load_data("cifar10")
    [(_, kwargs)] = calls
    assert kwargs["data_dir"] is None and kwargs["download"] is True


def test_a_failed_download_gives_the_same_kind_of_message(tmp_path, online, monkeypatch):
    def fail(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Max retries exceeded with url: /x.tar.gz")

    monkeypatch.setattr(tfds, "load", fail)
    (tmp_path / "stl10").mkdir()
    with pytest.raises(DownloadUnavailableError, match="downloading it failed") as info:
        load_data("stl10", data_dir=tmp_path)
    message = str(info.value)
    assert "ConnectionError: Max retries exceeded" in message
    assert "--data_dir=<directory> holding the official stl10_binary/ files" in message


@pytest.mark.parametrize("name", ["stl10", "cifar10"])
def test_nodownload_reads_only_a_prepared_store(name, tmp_path, offline):
    # For cifar10 an (empty) tfds store is recognised by its cifar10/ folder.
    (tmp_path / name).mkdir()
    with pytest.raises(DownloadUnavailableError, match=r"downloading is disabled \(--nodownload\)"):
        load_data(name, data_dir=tmp_path, download=False)


@pytest.mark.parametrize("download", [True, False])
def test_a_directory_without_data_is_refused_not_downloaded_into(tmp_path, offline, download):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 data in.*downloads it on first use"):
        load_data("cifar10", data_dir=tmp_path, download=download)


def test_probe_against_a_local_port():
    """A listening port is reachable; the same port closed is reported with its address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        assert tfds_source.unreachable_reason([f"http://127.0.0.1:{port}/data.tar.gz"]) is None
    finally:
        server.close()
    reason = tfds_source.unreachable_reason([f"http://127.0.0.1:{port}/data.tar.gz"])
    assert reason.startswith(f"cannot reach 127.0.0.1:{port}")


def test_a_proxy_skips_the_probe(monkeypatch):
    """Behind a proxy only tfds's own request can tell; the probe must not refuse it."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")

    def refuse(*args, **kwargs):
        raise AssertionError("probed although a proxy is configured")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert tfds_source.unreachable_reason(["https://www.cs.toronto.edu/x.tar.gz"]) is None
