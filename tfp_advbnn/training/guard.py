"""The catastrophic-overfitting guard of single-step adversarial training (Wong et al. 2020).

FGSM training can overfit "catastrophically": within an epoch the model stops being robust to
PGD while staying robust to FGSM. Wong, Rice and Kolter stop early on the PGD accuracy of a
fixed training batch; this guard does the same after every epoch:

1. ``check``: PGD-``guard_pgd_steps`` (L-inf, ``train_eps``, no random start, a fresh weight
   draw at every step) on a fixed set of ``guard_examples`` training images (the first ones of
   epoch 0's shuffled order under the run's seed, unaugmented; still trained on, as Wong et
   al.'s batch is), then the accuracy of one weight draw with batch norm in inference mode.
2. ``collapsed``: the guard fires when that accuracy falls below ``guard_drop`` times the best
   one so far AND by more than 3 binomial standard errors of the best, so that the noise of a
   few hundred images does not fire it.
3. ``finish_epoch``: a new best epoch's state is saved to ``model_dir/guard_best/``; when the
   guard fires, the run restores that state, marks itself finished (its epoch counter is set
   to the last epoch, so rerunning the command exports and stops) and saves it as its latest
   checkpoint. Every metrics line carries ``guard_accuracy``, ``guard_best_accuracy``,
   ``guard_best_epoch`` and ``guard_fired``; the line of the epoch that fired also
   ``guard_rolled_back_to_epoch``.

Examples:
    >>> collapsed(best=0.40, accuracy=0.02, num_examples=256, drop=0.5)
    True
    >>> collapsed(best=0.40, accuracy=0.30, num_examples=256, drop=0.5)
    False
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from tfp_advbnn import attacks, data, models
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training import checkpointing

GUARD_DIRNAME = "guard_best"
# How far below its best the guard's accuracy must fall, in binomial standard errors of the
# best, besides the ``guard_drop`` ratio: 3 of them leave a false alarm per epoch at ~0.1 %.
NOISE_STANDARD_ERRORS = 3.0


def collapsed(best: float | None, accuracy: float, num_examples: int, drop: float) -> bool:
    """Whether ``accuracy`` (in [0, 1], on ``num_examples`` images) is a collapse from ``best``:
    below ``drop * best`` and more than ``NOISE_STANDARD_ERRORS`` binomial standard errors
    ``sqrt(best * (1 - best) / num_examples)`` below it. False while there is no best (None)."""
    if best is None:
        return False
    noise = NOISE_STANDARD_ERRORS * math.sqrt(best * (1.0 - best) / num_examples)
    return accuracy < drop * best and best - accuracy > noise


def guard_images(config: TrainConfig, image_data: data.ImageData) -> tuple[np.ndarray, ...]:
    """The guard's fixed images: (float32 [N, H, W, 3] in [0, 1], int32 [N]), the first
    ``N = attack.guard_size`` of epoch 0's order under the run's seed, unaugmented."""
    size = config.attack.guard_size
    if size > image_data.spec.num_train:
        raise ValueError(
            f"attack.guard_examples {size} is more than the {image_data.spec.num_train} "
            "training images"
        )
    dataset = image_data.train_dataset(
        batch_size=size, epoch=0, seed=config.runtime.seed, augment=False, drop_remainder=False
    )
    images, labels = next(iter(dataset))
    return images.numpy(), labels.numpy()


class CollapseGuard:
    """The guard of one run; create it under ``strategy.scope()`` (it makes its variables
    there) and add ``checkpoint_state()`` to the run's checkpoint.

    Args:
      config: the run's validated TrainConfig, with ``attack.guard_size > 0``.
      task: the run's ``Task`` (its ``inference_logits`` is attacked).
      strategy: the run's ``tf.distribute`` strategy.
      image_data: the training data.
    """

    def __init__(self, config: TrainConfig, task, strategy: tf.distribute.Strategy, image_data):
        self.config = config
        self.task = task
        self.strategy = strategy
        self.images, self.labels = guard_images(config, image_data)
        # -1: no epoch measured yet. Checkpointed, so a resumed run keeps its best.
        self.best_accuracy = tf.Variable(-1.0, trainable=False, name="guard_best_accuracy")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="guard_best_epoch")
        self._new_best = False
        self._compiled_count = tf.function(self._count_correct)

    def checkpoint_state(self) -> dict:
        """The guard's values that the run's checkpoint keeps."""
        return {"guard_best_accuracy": self.best_accuracy, "guard_best_epoch": self.best_epoch}

    def accuracy(self) -> float:
        """PGD accuracy on the guard's images (one weight draw per prediction), in [0, 1]."""
        dataset = tf.data.Dataset.from_tensor_slices((self.images, self.labels))
        dataset = dataset.batch(self.config.optim.batch_size)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = dataset.with_options(options)
        correct = 0
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            correct += int(self._compiled_count(batch))
        return correct / len(self.labels)

    def _count_correct(self, batch):
        per_replica = self.strategy.run(self._replica_correct, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _replica_correct(self, images, labels):
        attack = self.config.attack
        # Any step does on a radius-0 ball; ``pgd`` needs one > 0.
        step = attacks.default_step_size(attack.train_eps, attack.guard_steps) or 1.0
        x_adv = attacks.pgd(
            self.task.inference_logits,
            images,
            labels,
            eps=attack.train_eps,
            step_size=step,
            num_steps=attack.guard_steps,
        )
        predictions = tf.argmax(self.task.inference_logits(x_adv), axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.int32))

    def check(self, epoch: int) -> dict:
        """Measures the guard after ``epoch`` (0-based) and updates its best; returns the
        metrics-line entries (``guard_fired`` True when it collapsed)."""
        accuracy = self.accuracy()
        best = float(self.best_accuracy.numpy())
        fired = collapsed(
            best if best >= 0 else None,
            accuracy,
            len(self.labels),
            self.config.attack.guard_fraction,
        )
        self._new_best = not fired and accuracy > best
        if self._new_best:
            self.best_accuracy.assign(accuracy)
            self.best_epoch.assign(epoch + 1)
        entries = {
            "guard_accuracy": accuracy,
            "guard_best_accuracy": float(self.best_accuracy.numpy()),
            "guard_best_epoch": int(self.best_epoch.numpy()),
            "guard_fired": fired,
        }
        if fired:
            entries["guard_rolled_back_to_epoch"] = entries["guard_best_epoch"]
        return entries

    def finish_epoch(self, trainer, metrics: dict) -> bool:
        """After the epoch's checkpoint: saves a new best epoch, or rolls ``trainer`` back to
        the best one when ``metrics["guard_fired"]``. Returns whether the run must stop.

        ``trainer`` is the run's ``Trainer`` (its checkpoint, save, model_dir and epoch).
        """
        if not metrics["guard_fired"]:
            if self._new_best:
                manager = tf.train.CheckpointManager(
                    trainer.checkpoint,
                    os.path.join(trainer._write_dir, GUARD_DIRNAME),
                    max_to_keep=1,
                )
                manager.save(checkpoint_number=trainer.optimizer.iterations)
                trainer._discard_scratch()
            return False
        best_dir = os.path.join(trainer.config.model_dir, GUARD_DIRNAME)
        path = tf.train.latest_checkpoint(best_dir)
        if path is None:
            raise FileNotFoundError(f"the guard fired but {best_dir} holds no best checkpoint")
        checkpointing.restore_checked(trainer.checkpoint, path, trainer.identity)
        best_epoch = int(self.best_epoch.numpy())
        logging.warning(
            "Catastrophic-overfitting guard: PGD accuracy %.3f after epoch %d, best %.3f after "
            "epoch %d; rolled back to epoch %d and stopped",
            metrics["guard_accuracy"],
            metrics["epoch"],
            float(self.best_accuracy.numpy()),
            best_epoch,
            best_epoch,
        )
        trainer.epoch.assign(trainer.num_epochs)
        trainer.step_in_epoch.assign(0)
        trainer.save()
        return True


def for_run(config: TrainConfig, task, strategy, image_data) -> CollapseGuard | None:
    """The run's guard, or None when ``attack.guard_size`` is 0 or the defense trains on
    clean images. Call it under ``strategy.scope()``."""
    if not models.is_adversarial(config.objective.defense) or config.attack.guard_size == 0:
        return None
    return CollapseGuard(config, task, strategy, image_data)
