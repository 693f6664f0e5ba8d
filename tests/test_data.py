"""Tests for tfp_advbnn.data: CIFAR-10 layouts, restricted unpickling, folders and pipelines."""

import os
import pathlib
import pickle
import struct
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn import data

N_TRAIN, N_TEST = 5085, 1017
RECORD = 3073


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures.


def _link_layout(src: pathlib.Path, dst: pathlib.Path, skip=()) -> pathlib.Path:
    """A writable copy of a batches dir made of symlinks, minus the names in `skip`."""
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if file.name not in skip:
            (dst / file.name).symlink_to(file)
    return dst


def _make_tarball(src: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        archive.add(src, arcname=src.name)
    return path


def _batches(dataset):
    return [(x, y) for x, y in dataset.as_numpy_iterator()]


@pytest.fixture(scope="module")
def reference(cifar_bin_dir):
    """Arrays decoded here, independently of the module, from the binary records."""

    def decode(name):
        raw = np.fromfile(cifar_bin_dir / name, dtype=np.uint8).reshape(-1, RECORD)
        images = np.empty((raw.shape[0], 32, 32, 3), np.uint8)
        for channel in range(3):
            start = 1 + 1024 * channel
            images[..., channel] = raw[:, start : start + 1024].reshape(-1, 32, 32)
        return images, raw[:, 0].astype(np.int32)

    train = [decode(f"data_batch_{i}.bin") for i in range(1, 6)]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), decode("test_batch.bin")


@pytest.fixture(scope="module")
def tarballs(cifar_bin_dir, cifar_py_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tarballs")
    return {
        "bin": _make_tarball(cifar_bin_dir, root / "cifar-10-binary.tar.gz"),
        "py": _make_tarball(cifar_py_dir, root / "cifar-10-python.tar.gz"),
    }


@pytest.fixture(scope="module")
def small(cifar_bin_dir):
    """64 training and 40 test examples: enough for pipeline checks, fast on 2 CPUs."""
    return data.load_data(
        "cifar10", data_dir=cifar_bin_dir, max_train_examples=64, max_test_examples=40
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10 layouts.


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
    (x_train, y_train), (x_test, y_test) = data.load_cifar10_arrays(path)
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
    (x_train, y_train), _ = data.load_cifar10_arrays(cifar_py_dir)
    index = (batch - 1) * 1017 + record
    assert y_train[index] == raw[offset]
    for row, col, channel in [(0, 0, 0), (5, 7, 1), (31, 31, 2), (16, 3, 0)]:
        expected = raw[offset + 1 + 1024 * channel + 32 * row + col]
        assert x_train[index, row, col, channel] == expected


def test_class_names_from_both_meta_files(cifar_bin_dir, cifar_py_dir, tarballs):
    expected = ("airplane", "automobile", "bird", "cat", "deer")
    expected += ("dog", "frog", "horse", "ship", "truck")
    for path in (cifar_bin_dir, cifar_py_dir, tarballs["py"]):
        spec = data.load_data("cifar10", data_dir=path, max_train_examples=8).spec
        assert spec.class_names == expected
        assert (spec.num_classes, spec.image_shape, spec.augmentation) == (
            10,
            (32, 32, 3),
            "crop_flip",
        )


# ---------------------------------------------------------------------------------------------
# Restricted unpickling.


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
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={file})
    payload = payload_cls(marker)
    if nested:  # Hidden inside an otherwise well-formed batch dict.
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]}
    (root / file).write_bytes(pickle.dumps(payload, protocol=2))
    forbidden = "global .io.open." if payload_cls is _OpenPayload else "global .(posix|os).system."
    with pytest.raises(data.UnsafePickleError, match=forbidden) as info:
        data.load_cifar10_arrays(root)
    assert file in str(info.value)
    assert not marker.exists()


def test_object_arrays_are_refused(cifar_py_dir, tmp_path):
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_1"})
    batch = {b"data": np.array([b"x"] * 3072, dtype=object)[None], b"labels": [0]}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.UnsafePickleError, match="object dtype"):
        data.load_cifar10_arrays(root)


@pytest.mark.parametrize("protocol", [2, 4])
def test_pickles_written_by_current_numpy_load(protocol, cifar_py_dir, tmp_path):
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    pixels = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"x", b"data": pixels, b"labels": [7, 3]}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    _, (x_test, y_test) = data.load_cifar10_arrays(root)
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
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    (root / "test_batch").write_bytes(payload)
    _, (x_test, y_test) = data.load_cifar10_arrays(root)
    np.testing.assert_array_equal(y_test, [4, 0, 9])
    np.testing.assert_array_equal(x_test, pixels.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


def test_protocol5_array_pickles_are_outside_the_allow_list(cifar_py_dir, tmp_path):
    # Protocol 5 rebuilds arrays with numpy's _frombuffer, which no CIFAR-10 file needs.
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"test_batch"})
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=5))
    with pytest.raises(data.UnsafePickleError, match="_frombuffer"):
        data.load_cifar10_arrays(root)


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
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_4"})
    (root / "data_batch_4").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=message) as info:
        data.load_cifar10_arrays(root)
    assert "data_batch_4" in str(info.value)


def test_truncated_pickle_is_named(cifar_py_dir, tmp_path):
    root = _link_layout(cifar_py_dir, tmp_path / "cifar-10-batches-py", skip={"data_batch_3"})
    (root / "data_batch_3").write_bytes((cifar_py_dir / "data_batch_3").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="data_batch_3.*corrupt or truncated"):
        data.load_cifar10_arrays(root)


# ---------------------------------------------------------------------------------------------
# Corrupt and missing CIFAR-10 files.


@pytest.mark.parametrize("size", [0, RECORD * 1017 - 100, RECORD * 5 + 1])
def test_truncated_binary_batch_is_named(size, cifar_bin_dir, tmp_path):
    root = _link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"data_batch_2.bin"})
    (root / "data_batch_2.bin").write_bytes(
        (cifar_bin_dir / "data_batch_2.bin").read_bytes()[:size]
    )
    with pytest.raises(ValueError, match=f"data_batch_2.bin: truncated.*{size} bytes"):
        data.load_cifar10_arrays(root)


def test_binary_label_out_of_range_is_named(cifar_bin_dir, tmp_path):
    root = _link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"test_batch.bin"})
    raw = bytearray((cifar_bin_dir / "test_batch.bin").read_bytes())
    raw[5 * RECORD] = 10
    (root / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="test_batch.bin: label 10 of example 5 is out of range"):
        data.load_cifar10_arrays(root)


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_missing_batch_file_is_named(layout, cifar_bin_dir, cifar_py_dir, tmp_path):
    src = cifar_bin_dir if layout == "bin" else cifar_py_dir
    name = "data_batch_5.bin" if layout == "bin" else "data_batch_5"
    root = _link_layout(src, tmp_path / src.name, skip={name})
    with pytest.raises(FileNotFoundError, match=f"missing.*{name}"):
        data.load_cifar10_arrays(root)
    # The parent-directory form finds the same incomplete copy and reports the same file.
    with pytest.raises(FileNotFoundError, match=name):
        data.load_data("cifar10", data_dir=tmp_path)


def test_missing_member_of_tarball_is_named(cifar_bin_dir, tmp_path):
    root = _link_layout(cifar_bin_dir, tmp_path / "cifar-10-batches-bin", skip={"test_batch.bin"})
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz", compresslevel=1, dereference=True) as archive:
        archive.add(root, arcname=root.name)
    with pytest.raises(FileNotFoundError, match="c.tar.gz:cifar-10-batches-bin/test_batch.bin"):
        data.load_cifar10_arrays(tmp_path / "c.tar.gz")


def test_truncated_tarball_is_named(tarballs, tmp_path):
    broken = tmp_path / "cifar-10-binary.tar.gz"
    broken.write_bytes(tarballs["bin"].read_bytes()[:200_000])
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz: unreadable or truncated"):
        data.load_cifar10_arrays(broken)


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        data.load_cifar10_arrays(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data_dir does not exist"):
        data.load_data("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"no CIFAR-10 data in {tmp_path}"):
        data.load_data("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["stl10", "cifar10"])
def test_missing_tfds_dataset_gives_clear_error(name, tmp_path):
    # For cifar10 an (empty) tfds store is recognised by its cifar10/ folder.
    (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError, match=f"no prepared '{name}'.*--data_dir.*tfds build"):
        data.load_data(name, data_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Argument validation.


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "imagenet"}, "unknown data set 'imagenet'"),
        ({"max_train_examples": 0}, "max_train_examples must be a positive integer"),
        ({"max_test_examples": -3}, "max_test_examples must be a positive integer"),
        ({"max_train_examples": True}, "max_train_examples"),
        ({"validation_examples": -1}, "validation_examples must be a non-negative"),
        ({"max_train_examples": 10, "validation_examples": 10}, "leaves no training examples"),
        ({"image_size": (64, 64)}, "differs from the native"),
        ({"seed": -1}, "seed must be a non-negative"),
    ],
)
def test_bad_arguments(kwargs, message, cifar_bin_dir):
    kwargs = {"name": "cifar10", "data_dir": cifar_bin_dir, **kwargs}
    with pytest.raises(ValueError, match=message):
        data.load_data(kwargs.pop("name"), **kwargs)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 8, "epoch": -1}])
def test_bad_pipeline_arguments(kwargs, small):
    with pytest.raises(ValueError, match="must be a"):
        small.train_dataset(**kwargs)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 pipelines.


def test_test_data_is_unaugmented_and_scaled(small, reference):
    _, (x_test, y_test) = reference
    batches = _batches(small.test_dataset(batch_size=16))
    assert [len(y) for _, y in batches] == [16, 16, 8]  # Remainder kept.
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    assert images.dtype == np.float32 and labels.dtype == np.int32
    expected = x_test[:40].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, y_test[:40])
    arrays = small.test_arrays()
    np.testing.assert_array_equal(arrays[0], expected)
    np.testing.assert_array_equal(arrays[1], y_test[:40])
    assert small.spec.num_test == 40


def _find_crop_flip(augmented: np.ndarray, source: np.ndarray):
    """(dy, dx, flipped) such that augmented is that crop of the zero-padded source, or None."""
    padded = np.pad(source, ((4, 4), (4, 4), (0, 0)))
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + 32, dx : dx + 32]
            for flipped in (False, True):
                if np.array_equal(crop[:, ::-1] if flipped else crop, augmented):
                    return dy, dx, flipped
    return None


def test_train_augmentation_is_pad_crop_flip_of_the_same_examples(small, reference):
    (x_train, y_train), _ = reference
    plain = _batches(small.train_dataset(batch_size=16, epoch=3, seed=5, augment=False))
    augmented = _batches(small.train_dataset(batch_size=16, epoch=3, seed=5))
    plain_x = np.concatenate([x for x, _ in plain])
    aug_x = np.concatenate([x for x, _ in augmented])
    assert aug_x.dtype == np.float32 and aug_x.min() >= 0.0 and aug_x.max() <= 1.0
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in plain]), np.concatenate([y for _, y in augmented])
    )
    # The unaugmented order is a permutation of the first 64 training examples.
    source_uint8 = np.rint(plain_x * 255).astype(np.uint8)
    flat = x_train[:64].reshape(64, -1)
    positions = [int(np.flatnonzero((flat == s.reshape(-1)).all(1))[0]) for s in source_uint8]
    assert sorted(positions) == list(range(64))
    transforms = [
        _find_crop_flip(np.rint(a * 255).astype(np.uint8), s)
        for a, s in zip(aug_x, source_uint8, strict=True)
    ]
    assert None not in transforms
    # Offsets and flips vary: the augmentation is really random across examples.
    assert len({t[:2] for t in transforms}) > 10
    assert 10 < sum(t[2] for t in transforms) < 54


def test_train_batches_are_a_function_of_seed_and_epoch(small):
    def epoch_of(**kwargs):
        return _batches(small.train_dataset(batch_size=16, **kwargs))

    first = epoch_of(epoch=1, seed=7)
    again = epoch_of(epoch=1, seed=7)
    tf.random.set_seed(1234)  # The global TF seed must not matter.
    third = epoch_of(epoch=1, seed=7)
    for (x1, y1), (x2, y2), (x3, _) in zip(first, again, third, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x3)
    for other in (epoch_of(epoch=2, seed=7), epoch_of(epoch=1, seed=8)):
        x_first = np.concatenate([x for x, _ in first])
        x_other = np.concatenate([x for x, _ in other])
        assert not np.array_equal(
            np.concatenate([y for _, y in first]), np.concatenate([y for _, y in other])
        )
        assert not np.array_equal(x_first, x_other)
    # skip() into an epoch gives the tail of the same epoch (resume).
    tail = _batches(small.train_dataset(batch_size=16, epoch=1, seed=7).skip(2))
    np.testing.assert_array_equal(tail[0][0], first[2][0])


@pytest.mark.parametrize("drop_remainder,sizes", [(True, [16, 16]), (False, [16, 16, 8])])
def test_drop_remainder(drop_remainder, sizes, cifar_bin_dir):
    loaded = data.load_data("cifar10", data_dir=cifar_bin_dir, max_train_examples=40)
    batches = _batches(loaded.train_dataset(batch_size=16, drop_remainder=drop_remainder))
    assert [len(y) for _, y in batches] == sizes


def test_input_context_shards_with_per_replica_batch(small):
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4
        )
        batches = _batches(
            small.train_dataset(
                batch_size=16, epoch=0, seed=3, augment=False, input_context=context
            )
        )
        assert [len(y) for _, y in batches] == [4] * 8  # 32 examples per shard, 16 / 4 each.
        shards.append(np.concatenate([x for x, _ in batches]).reshape(32, -1))
    full = np.concatenate(
        [x for x, _ in _batches(small.train_dataset(batch_size=16, seed=3, augment=False))]
    )
    full = full.reshape(64, -1)
    # The shards interleave the unsharded epoch order: disjoint and together complete.
    np.testing.assert_array_equal(shards[0], full[0::2])
    np.testing.assert_array_equal(shards[1], full[1::2])
    test_context = tf.distribute.InputContext(2, 1, 2)
    test_sizes = [
        len(y) for _, y in _batches(small.test_dataset(batch_size=8, input_context=test_context))
    ]
    assert test_sizes == [4] * 5


def test_mirrored_strategy_gets_per_replica_batches(small):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    distributed = strategy.distribute_datasets_from_function(
        lambda context: small.train_dataset(batch_size=16, input_context=context)
    )
    images, labels = next(iter(distributed))
    shapes = [tuple(t.shape) for t in strategy.experimental_local_results(images)]
    assert shapes == [(8, 32, 32, 3)] * 2
    assert all(t.dtype == tf.int32 for t in strategy.experimental_local_results(labels))


def test_validation_split_is_the_tail_of_the_capped_train_set(cifar_bin_dir, reference):
    (x_train, y_train), _ = reference
    loaded = data.load_data(
        "cifar10", data_dir=cifar_bin_dir, max_train_examples=60, validation_examples=12
    )
    spec = loaded.spec
    assert (spec.num_train, spec.num_validation, spec.num_test) == (48, 12, N_TEST)
    val_x, val_y = loaded.validation_arrays()
    np.testing.assert_array_equal(val_x, x_train[48:60].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(val_y, y_train[48:60])
    streamed = np.concatenate([x for x, _ in _batches(loaded.validation_dataset(batch_size=5))])
    np.testing.assert_array_equal(streamed, val_x)
    train_x = np.concatenate(
        [x for x, _ in _batches(loaded.train_dataset(batch_size=8, augment=False))]
    )
    train_keys = {row.tobytes() for row in np.rint(train_x * 255).astype(np.uint8)}
    assert train_keys == {row.tobytes() for row in x_train[:48]}
    assert train_keys.isdisjoint(row.tobytes() for row in x_train[48:60])


def test_no_validation_split_is_an_error(small):
    with pytest.raises(ValueError, match="no validation split"):
        small.validation_dataset(batch_size=4)


# ---------------------------------------------------------------------------------------------
# Image folders.

_COLORS = {"emu": (200, 30, 30), "ant": (20, 180, 40), "cat": (40, 60, 220)}


def _write_image(path: pathlib.Path, pixels: np.ndarray):
    encode = tf.io.encode_png if path.suffix == ".png" else tf.io.encode_jpeg
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(pixels).numpy())


def _make_folder(root: pathlib.Path, classes=tuple(_COLORS), train_per_class=4):
    """Train images: class colour plus +-20 noise at varied sizes; val: solid class colour."""
    rng = np.random.default_rng(0)
    sizes = [(20, 24), (30, 18), (24, 24), (17, 29)]
    for name in classes:
        color = np.array(_COLORS[name], np.int32)
        for i in range(train_per_class):
            height, width = sizes[i % len(sizes)]
            noise = rng.integers(-20, 21, (height, width, 3))
            pixels = np.clip(color + noise, 0, 255).astype(np.uint8)
            _write_image(root / "train" / name / f"img{i}.png", pixels)
        _write_image(root / "val" / name / "a.png", np.full((12, 14, 3), color, np.uint8))
        _write_image(root / "val" / name / "b.jpg", np.full((16, 16, 3), color, np.uint8))
    return root


def _colors_of(labels, class_names):
    return np.array([_COLORS[class_names[i]] for i in labels], np.float32) / 255


@pytest.fixture
def folder(tmp_path):
    return _make_folder(tmp_path / "images")


def test_folder_spec_and_unaugmented_val(folder):
    loaded = data.load_data("folder", data_dir=folder, image_size=(8, 10))
    spec = loaded.spec
    assert spec.class_names == ("ant", "cat", "emu")  # Sorted, not creation order.
    assert (spec.num_classes, spec.num_train, spec.num_test) == (3, 12, 6)
    assert (spec.image_shape, spec.augmentation) == ((8, 10, 3), "resized_crop_flip")
    images, labels = loaded.test_arrays()
    assert images.shape == (6, 8, 10, 3) and images.dtype == np.float32
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    error = np.abs(images - _colors_of(labels, spec.class_names)[:, None, None, :]).max((1, 2, 3))
    # Solid colours: the 3 PNGs resize exactly, the lossy JPEGs to within a few levels.
    assert (error < 1e-6).sum() >= 3 and error.max() < 4 / 255
    streamed = _batches(loaded.test_dataset(batch_size=4))
    assert [len(y) for _, y in streamed] == [4, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in streamed]), images)


def test_folder_train_labels_and_augmentation(folder):
    loaded = data.load_data("folder", data_dir=folder, image_size=(16, 16))
    first = _batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1))
    again = _batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1))
    other = _batches(loaded.train_dataset(batch_size=4, epoch=1, seed=1))
    images = np.concatenate([x for x, _ in first])
    labels = np.concatenate([y for _, y in first])
    assert images.shape == (12, 16, 16, 3) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # Each image's mean colour is its class colour: labels travel with their images.
    np.testing.assert_allclose(
        images.mean(axis=(1, 2)), _colors_of(labels, loaded.spec.class_names), atol=0.03
    )
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(images, np.concatenate([x for x, _ in other]))
    # Augmented crops differ from the plain resize of the same files.
    plain = _batches(loaded.train_dataset(batch_size=4, epoch=0, seed=1, augment=False))
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in plain]))
    assert not np.allclose(images, np.concatenate([x for x, _ in plain]), atol=0.05)


def test_folder_converts_grey_images_to_rgb_and_skips_other_files(folder):
    _write_image(folder / "val" / "ant" / "c.png", np.full((9, 9, 1), 77, np.uint8))
    (folder / "val" / "ant" / "notes.txt").write_text("not an image")
    (folder / "val" / "ant" / "._c.png").write_bytes(b"macOS resource fork")
    images, labels = data.load_data("folder", data_dir=folder, image_size=(4, 4)).test_arrays()
    assert images.shape == (7, 4, 4, 3) and (labels == 0).sum() == 3
    grey = np.abs(images - 77 / 255).max((1, 2, 3)) < 1e-6
    assert grey.sum() == 1 and labels[grey][0] == 0


@pytest.mark.parametrize("height,width,num_sides", [(37, 37, 3), (60, 50, 2), (10, 100, 1)])
def test_random_square_crop_covers_80_to_90_percent(height, width, num_sides):
    image = tf.reshape(tf.range(height * width, dtype=tf.float32), (height, width, 1))
    area = height * width
    sides, corners = set(), set()
    for i in range(60):
        crop = data._random_square_crop(image, tf.constant([11, i], tf.int64)).numpy()
        side = crop.shape[0]
        assert crop.shape == (side, side, 1) and side <= min(height, width)
        # side = round(sqrt(u * area)), u in [0.8, 0.9], clamped to the shorter image side.
        assert (side - 0.5) ** 2 <= 0.9 * area
        assert side == min(height, width) or (side + 0.5) ** 2 >= 0.8 * area
        top, left = divmod(int(crop[0, 0, 0]), width)
        np.testing.assert_array_equal(crop, image.numpy()[top : top + side, left : left + side])
        sides.add(side)
        corners.add((top, left))
    assert len(sides) == num_sides
    assert len(corners) > 5


def test_folder_caps_and_validation(folder):
    loaded = data.load_data(
        "folder",
        data_dir=folder,
        image_size=(8, 8),
        max_train_examples=10,
        max_test_examples=3,
        validation_examples=4,
    )
    assert (loaded.spec.num_train, loaded.spec.num_validation, loaded.spec.num_test) == (6, 4, 3)
    val_x, val_y = loaded.validation_arrays()
    np.testing.assert_allclose(
        val_x.mean(axis=(1, 2)), _colors_of(val_y, loaded.spec.class_names), atol=0.03
    )
    train_x = np.concatenate(
        [x for x, _ in _batches(loaded.train_dataset(batch_size=2, augment=False))]
    )
    assert not any(np.array_equal(t, v) for t in train_x for v in val_x)


@pytest.mark.parametrize(
    "bad_file", ["train/cat/img9.png", "val/ant/0_first.png", "val/emu/z_last.jpg"]
)
def test_corrupt_image_error_names_the_file(bad_file, folder):
    (folder / bad_file).write_bytes(b"this is not an image")
    loaded = data.load_data("folder", data_dir=folder, image_size=(8, 8))
    split = bad_file.split("/")[0]
    dataset = (
        loaded.train_dataset(batch_size=2)
        if split == "train"
        else loaded.test_dataset(batch_size=2)
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=bad_file):
        _batches(dataset)


def test_class_mismatch_between_train_and_val(tmp_path):
    root = _make_folder(tmp_path / "images")
    (root / "val" / "dog").mkdir()
    _write_image(root / "val" / "dog" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"classes differ.*only in train \[\].*only in val \['dog'\]"
    ):
        data.load_data("folder", data_dir=root, image_size=(8, 8))


def test_empty_class_folder_is_named(folder):
    (folder / "train" / "yak").mkdir()
    (folder / "train" / "yak" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty image folder: .*train/yak"):
        data.load_data("folder", data_dir=folder, image_size=(8, 8))


@pytest.mark.parametrize(
    "layout,error,message",
    [
        ("no_root", FileNotFoundError, "image folder root does not exist"),
        ("no_val", FileNotFoundError, "split directory is missing: .*val"),
        ("no_classes", ValueError, "has no class subdirectories"),
    ],
)
def test_folder_structure_errors(layout, error, message, tmp_path):
    root = tmp_path / "images"
    if layout != "no_root":
        (root / "train").mkdir(parents=True)
        _write_image(root / "train" / "cat" / "a.png", np.zeros((4, 4, 3), np.uint8))
        if layout == "no_classes":
            (root / "val").mkdir()
    with pytest.raises(error, match=message):
        data.load_data("folder", data_dir=root, image_size=(8, 8))


@pytest.mark.parametrize("image_size", [None, (0, 8), (8,), (8.0, 8), "8x8"])
def test_folder_image_size_is_validated(image_size, folder):
    with pytest.raises(ValueError, match="image_size"):
        data.load_data("folder", data_dir=folder, image_size=image_size)
