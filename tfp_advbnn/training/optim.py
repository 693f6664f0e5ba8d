"""How a run updates its weights and where it runs: the staged learning-rate schedule, the
optimizer, and the ``tf.distribute`` strategy.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_advbnn import validation
from tfp_advbnn.config import STRATEGIES, TrainConfig
from tfp_advbnn.training.recipe import STAGE_EPOCHS


class StagedLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
    """``initial`` divided by 10 at each boundary (in optimizer steps).

    Always a schedule, even with no boundaries, so the optimizer's checkpointed state has the
    same structure whatever ``--epochs`` is and a run can be resumed with more epochs.
    """

    def __init__(self, initial: float, boundaries: list[int]):
        self.initial = float(initial)
        self.boundaries = [int(b) for b in boundaries]

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        stage = tf.zeros([], tf.int64)
        for boundary in self.boundaries:
            stage += tf.cast(step >= boundary, tf.int64)
        return self.initial * tf.pow(0.1, tf.cast(stage, tf.float32))

    def get_config(self):
        return {"initial": self.initial, "boundaries": self.boundaries}


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> StagedLearningRate:
    """The reference staged schedule scaled to ``config.optim.epochs``: rate / 10 at each stage."""
    stages = np.asarray(STAGE_EPOCHS[config.data.dataset], dtype=np.float64)
    cumulative = np.cumsum(stages)[:-1] / stages.sum()
    boundaries = sorted({int(round(f * config.optim.epochs)) * steps_per_epoch for f in cumulative})
    boundaries = [b for b in boundaries if 0 < b < config.optim.epochs * steps_per_epoch]
    return StagedLearningRate(config.optim.learning_rate, boundaries)


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """Adam (``momentum`` is its beta_1) or SGD with momentum, on the staged schedule.

    Weight decay is not the optimizer's: it is the coupled L2 term of the loss (see
    ``task.weight_decay_loss``), which is what PyTorch's ``SGD(weight_decay=...)`` of the
    reference computes, under either optimizer.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optim.optimizer == "adam":
        # ``momentum`` is Adam's first-moment decay, so no setting goes unused.
        optimizer = tf_keras.optimizers.Adam(learning_rate=schedule, beta_1=config.optim.momentum)
    else:
        optimizer = tf_keras.optimizers.SGD(learning_rate=schedule, momentum=config.optim.momentum)
    if config.runtime.precision == "mixed_float16":
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def build_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy named by ``--strategy``."""
    validation.choice("strategy", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        # Collective all-reduce across CPU devices was seen to abort on Bayesian models
        # (mismatched collective shapes); reducing on one device is also the cheap choice there.
        return tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    return tf.distribute.MultiWorkerMirroredStrategy()
