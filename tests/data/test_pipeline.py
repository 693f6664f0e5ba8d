"""Tests for tfp_advbnn.data.pipeline: batching, scaling, sharding and the splits."""

import numpy as np
import pytest
import tensorflow as tf
from data_samples import all_batches, decode_reference

from tfp_advbnn.data.registry import load_data


@pytest.fixture(scope="module")
def reference(cifar_bin_dir):
    return decode_reference(cifar_bin_dir)


@pytest.fixture(scope="module")
def small(cifar_bin_dir):
    """64 training and 40 test examples: enough for pipeline checks, fast on 2 CPUs."""
    return load_data("cifar10", data_dir=cifar_bin_dir, max_train_examples=64, max_test_examples=40)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": 8, "epoch": -1}])
def test_bad_pipeline_arguments(kwargs, small):
    with pytest.raises(ValueError, match="must be a"):
        small.train_dataset(**kwargs)


def test_test_data_is_unaugmented_and_scaled(small, reference):
    _, (x_test, y_test) = reference
    batches = all_batches(small.test_dataset(batch_size=16))
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


@pytest.mark.parametrize("drop_remainder,sizes", [(True, [16, 16]), (False, [16, 16, 8])])
def test_drop_remainder(drop_remainder, sizes, cifar_bin_dir):
    loaded = load_data("cifar10", data_dir=cifar_bin_dir, max_train_examples=40)
    batches = all_batches(loaded.train_dataset(batch_size=16, drop_remainder=drop_remainder))
    assert [len(y) for _, y in batches] == sizes


def test_input_context_shards_with_per_replica_batch(small):
    shards = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=4
        )
        batches = all_batches(
            small.train_dataset(
                batch_size=16, epoch=0, seed=3, augment=False, input_context=context
            )
        )
        assert [len(y) for _, y in batches] == [4] * 8  # 32 examples per shard, 16 / 4 each.
        shards.append(np.concatenate([x for x, _ in batches]).reshape(32, -1))
    full = np.concatenate(
        [x for x, _ in all_batches(small.train_dataset(batch_size=16, seed=3, augment=False))]
    )
    full = full.reshape(64, -1)
    # The shards interleave the unsharded epoch order: disjoint and together complete.
    np.testing.assert_array_equal(shards[0], full[0::2])
    np.testing.assert_array_equal(shards[1], full[1::2])
    test_context = tf.distribute.InputContext(2, 1, 2)
    test_sizes = [
        len(y) for _, y in all_batches(small.test_dataset(batch_size=8, input_context=test_context))
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


def test_no_validation_split_is_an_error(small):
    with pytest.raises(ValueError, match="no validation split"):
        small.validation_dataset(batch_size=4)
