"""The training loop of one run: epochs of ``Task.train_step``, ``Task.evaluate`` after each,
the checkpoints, and the SavedModel export at the end.

A run leaves in ``model_dir`` the files ``run_dir`` describes. Rerunning with the same
``model_dir`` resumes from the latest checkpoint, including mid-epoch: the data order is a
deterministic function of (seed, epoch), so the resumed run skips the batches already trained on.

Under ``multi_worker`` only the chief writes ``model_dir``; every worker restores from it.
A SIGTERM on any worker makes all of them checkpoint after the same step and exit
(``preemption``).

Reliability (see the README's "Reliability" section):

- The checkpoint holds the weights, the optimizer, the metrics, the per-layer weight-sampling
  generators, the position (epoch, step in epoch) and a canary step counter; the data order and
  the PGD random starts are functions of (seed, epoch, step). With ``deterministic`` (TF op
  determinism) a run killed at any point and rerun ends with the same bits as an uninterrupted
  one on the same CPU machine.
- Restoring tries the newest checkpoint first and falls back to older ones with a warning when
  it is unreadable; a checkpoint that does not fit this run's model is an error, never a partial
  restore (``checkpointing``).
- A non-finite loss or gradient rolls the run back to its last checkpoint (the first one is
  written before the first step) and retries, at most ``max_nonfinite_retries`` times; a
  checkpoint with non-finite values is never written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from tfp_advbnn import data, export, models, run_dir
from tfp_advbnn.config import TrainConfig
from tfp_advbnn.training import checkpointing, guard, optim, preemption, progress, summaries
from tfp_advbnn.training.task import Task, build_model_for, load_data_for, run_epochs


class Trainer:
    """Owns the model, optimizer, Task, metrics and checkpoints of one run, and its loop."""

    def __init__(self, config: TrainConfig, image_data: data.ImageData | None = None):
        config.validate()
        self.config = config
        if config.runtime.deterministic:
            # Process-wide and irreversible: every later op must have a deterministic kernel.
            tf.config.experimental.enable_op_determinism()
        self.strategy = optim.build_strategy(config.runtime.strategy)
        self.data = image_data if image_data is not None else load_data_for(config)
        spec = self.data.spec
        self.steps_per_epoch = spec.num_train // config.optim.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {config.optim.batch_size} is larger than the training set "
                f"({spec.num_train} examples)"
            )
        # The schedule and the KL warm-up count batches_per_epoch optimizer steps an epoch;
        # train_attack=free makes run_epochs passes of that many batches, each batch replayed.
        self.batches_per_epoch = self.steps_per_epoch
        self.steps_per_epoch *= config.attack.replays
        self.num_epochs = run_epochs(config)
        if self.num_epochs != config.optim.epochs:
            logging.info(
                "train_attack=free: %d passes over the data, %d steps each (every batch %d "
                "times), for epochs=%d",
                self.num_epochs,
                self.steps_per_epoch,
                config.attack.replays,
                config.optim.epochs,
            )
        self.identity = checkpointing.model_identity(config, spec.num_classes, spec.image_shape)
        # A string lives on the host only, so this one stays outside the strategy's devices.
        with tf.device("/cpu:0"):
            self.model_identity = tf.Variable(self.identity, trainable=False, name="model_identity")
        with self.strategy.scope():
            # The policy applies to the layers built under it; it is restored afterwards so
            # that building a trainer leaves no global state behind.
            previous_policy = tf_keras.mixed_precision.global_policy()
            tf_keras.mixed_precision.set_global_policy(config.runtime.precision)
            try:
                self.model = build_model_for(config, spec.num_classes, spec.image_shape)
            finally:
                tf_keras.mixed_precision.set_global_policy(previous_policy)
            self.optimizer = optim.make_optimizer(config, self.batches_per_epoch)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.task = Task(
                config, self.model, self.optimizer, self.strategy, self.data, self.batches_per_epoch
            )
            self.guard = guard.for_run(config, self.task, self.strategy, self.data)
            self.optimizer.build(self.model.trainable_variables)
            task = self.task
            self.checkpoint = tf.train.Checkpoint(
                model=self.model,
                optimizer=self.optimizer,
                epoch=self.epoch,
                step_in_epoch=self.step_in_epoch,
                canary_steps=task.canary_steps,
                model_identity=self.model_identity,
                **self.task.checkpoint_state(),
                **({} if self.guard is None else self.guard.checkpoint_state()),
                train_loss=task.train_loss,
                train_accuracy=task.train_accuracy,
                train_kl=task.train_kl,
                train_cross_entropy=task.train_cross_entropy,
                train_kl_term=task.train_kl_term,
            )
        self.checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIRNAME)
        # Under multi_worker every worker takes part in each checkpoint save and export (they
        # run collectives, e.g. to reduce sync-on-read variables), but only the chief writes
        # into model_dir: the others write into a scratch directory that they then delete.
        self.is_chief = self.strategy.extended.should_checkpoint
        self._write_dir = config.model_dir
        if not self.is_chief:
            task_id = self.strategy.cluster_resolver.task_id
            self._write_dir = os.path.join(config.model_dir, f".worker-{task_id}-tmp")
        self.checkpoint_manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(self._write_dir, run_dir.CHECKPOINT_DIRNAME),
            max_to_keep=config.runtime.keep_checkpoints,
        )

    # ----- checkpoints ----------------------------------------------------------------------

    def restore(self) -> bool:
        """Restores the newest readable checkpoint of ``model_dir``; returns whether there was one.

        An unreadable (truncated, corrupted) checkpoint is skipped with a warning for the one
        before it. Raises CheckpointMismatchError when no checkpoint can be restored, e.g. one
        written by another architecture or defense: every value of the checkpoint must find
        its variable and every variable its value.
        """
        return checkpointing.restore_latest(
            self.checkpoint, self.checkpoint_dir, self.identity, self.config
        )

    def save(self) -> str:
        """Saves a checkpoint; returns its path. Under multi_worker all workers must call it
        (the paths of the workers other than the chief are already deleted).

        Raises FloatingPointError, writing nothing, when a weight or optimizer value is not
        finite.
        """
        nonfinite = [
            v.name
            for v in (*self.model.variables, *self.optimizer.variables())
            if v.dtype.is_floating and not np.all(np.isfinite(v.numpy()))
        ]
        if nonfinite:
            raise FloatingPointError(
                f"refusing to save a checkpoint with non-finite values in {nonfinite[:5]}"
                + (f" and {len(nonfinite) - 5} more" if len(nonfinite) > 5 else "")
            )
        path = self.checkpoint_manager.save(checkpoint_number=self.optimizer.iterations)
        self._discard_scratch()
        return path

    def _discard_scratch(self) -> None:
        if not self.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)

    def _roll_back(self, epoch: int, step: int, retries: int) -> None:
        """Restores the last checkpoint after a non-finite step, or stops after too many."""
        limit = self.config.runtime.max_nonfinite_retries
        where = f"epoch {epoch + 1}, step {step + 1}"
        if retries > limit:
            raise FloatingPointError(
                f"non-finite loss or gradient at {where}, after {limit} rollbacks to the last "
                f"checkpoint in {self.checkpoint_dir} (max_nonfinite_retries={limit}); the "
                "checkpoints there are finite. Lower the learning rate or check the data."
            )
        self.restore()
        logging.warning(
            "Non-finite loss or gradient at %s: rolled back to epoch %d, step %d (retry %d of %d)",
            where,
            int(self.epoch.numpy()) + 1,
            int(self.step_in_epoch.numpy()),
            retries,
            limit,
        )

    # ----- the loop -------------------------------------------------------------------------

    def _start(self, verbose: bool) -> None:
        """Writes (or checks) the run's files, then restores its checkpoint or writes the
        first one, the first rollback target of the non-finite guard."""
        config, spec = self.config, self.data.spec
        if os.path.exists(config.model_dir) and not os.path.isdir(config.model_dir):
            raise NotADirectoryError(f"model_dir {config.model_dir} exists and is not a directory")
        os.makedirs(config.model_dir, exist_ok=True)
        run_dir.check_or_write_config(config, write=self.is_chief)
        if self.is_chief:
            run_dir.write_model_spec(
                config.model_dir,
                num_classes=spec.num_classes,
                image_shape=spec.image_shape,
                class_names=spec.class_names,
            )
        if not self.restore():
            self.save()
        elif verbose:
            print(
                f"Resumed from {tf.train.latest_checkpoint(self.checkpoint_dir)} at epoch "
                f"{int(self.epoch.numpy()) + 1}, step {int(self.step_in_epoch.numpy())}",
                flush=True,
            )

    def _train_epoch(self, epoch: int, start_step: int, stop, handler, verbose: bool):
        """Trains ``epoch`` from ``start_step``; returns the seconds it took, or None when a
        non-finite step rolled the run back (the loop then goes on from the restored state)."""
        task = self.task
        iterator = task.train_iterator(epoch, start_step)
        bar = progress.EpochProgress(
            epoch=epoch,
            epochs=self.num_epochs,
            steps_per_epoch=self.steps_per_epoch,
            start_step=start_step,
            batch_size=self.config.optim.batch_size,
            log_every_secs=self.config.monitor.log_every_secs,
            verbose=verbose,
        )
        started = time.time()
        for step in range(start_step, self.steps_per_epoch):
            if int(task.train_step(iterator)):
                self._nonfinite_retries += 1
                self._roll_back(epoch, step, self._nonfinite_retries)
                return None
            self.step_in_epoch.assign(step + 1)
            bar.update(step + 1, progress.step_metrics(task))
            if handler is not None:
                handler.save_checkpoint_if_preempted()
            elif stop:
                path = self.save()
                raise KeyboardInterrupt(
                    f"stopped by signal {stop.signal_number}; saved {path}. "
                    "Rerun the same command to resume."
                )
            every = self.config.runtime.checkpoint_every_steps
            if every and (step + 1) % every == 0 and step + 1 < self.steps_per_epoch:
                self.save()
        return time.time() - started

    def _epoch_metrics(self, epoch: int, start_step: int, train_seconds: float) -> dict:
        """The metrics line of a finished epoch, its evaluation included."""
        config, task = self.config, self.task
        schedule = optim.learning_rate_schedule(config, self.batches_per_epoch)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(task.train_loss.result()),
            "train_accuracy": float(task.train_accuracy.result()),
            "train_cross_entropy": float(task.train_cross_entropy.result()),
            "kl": float(task.train_kl.result()),
            "train_kl_term": float(task.train_kl_term.result()),
            "learning_rate": float(schedule(self.optimizer.iterations - 1)),
            "train_images_per_second": (
                (self.steps_per_epoch - start_step) * config.optim.batch_size / train_seconds
            ),
        }
        metrics.update(
            task.evaluate(config.monitor.eval_robust_examples, config.monitor.eval_split)
        )
        return metrics

    def fit(self, verbose: bool = True, export: bool = True) -> dict:
        """Trains to ``config.optim.epochs``, resuming from ``model_dir``; returns the last metrics.

        After every epoch it evaluates on ``config.monitor.eval_split``; at the end it exports the
        SavedModel unless ``export`` is False.
        """
        config = self.config
        self._start(verbose)
        if self.is_chief:
            writer = tf.summary.create_file_writer(
                os.path.join(config.model_dir, run_dir.TENSORBOARD_DIRNAME)
            )
        else:
            writer = tf.summary.create_noop_writer()
        # Under multi_worker a stop must happen on every worker after the same step: the
        # preemption handler arranges that, and handles SIGTERM itself.
        handler = None
        if config.runtime.strategy == "multi_worker":
            handler = preemption.preemption_handler(
                self.strategy, self.checkpoint, self.checkpoint_dir, self.save
            )
        last = {}
        self._nonfinite_retries = 0
        with preemption.StopRequested() if handler is None else contextlib.nullcontext() as stop:
            while int(self.epoch.numpy()) < self.num_epochs:
                epoch = int(self.epoch.numpy())
                start_step = int(self.step_in_epoch.numpy())
                if start_step == 0:
                    for metric in self.task.train_metrics:
                        metric.reset_state()
                train_seconds = self._train_epoch(epoch, start_step, stop, handler, verbose)
                if train_seconds is None:
                    continue
                expected = (epoch + 1) * self.steps_per_epoch
                canary = int(self.task.canary_steps.numpy())
                if canary != expected:
                    raise RuntimeError(
                        f"step canary is {canary} after epoch {epoch + 1}, "
                        f"expected {expected}: a step was lost or repeated"
                    )
                last = self._epoch_metrics(epoch, start_step, train_seconds)
                last.update(self.task.epoch_record(epoch))
                if self.guard is not None:
                    last.update(self.guard.check(epoch))
                # The metrics line goes first: a kill before the save below makes the resumed
                # run redo the end of the epoch and replace the line with the same values.
                if self.is_chief:
                    run_dir.write_epoch_metrics(config.model_dir, last)
                self.epoch.assign(epoch + 1)
                self.step_in_epoch.assign(0)
                self.save()
                with writer.as_default(step=epoch + 1):
                    for key, value in last.items():
                        if key != "epoch":
                            tf.summary.scalar(_summary_name(key), value)
                    summaries.write_posterior_histograms(self.model, epoch + 1)
                if verbose:
                    print(_format_metrics(last), flush=True)
                if self.guard is not None and self.guard.finish_epoch(self, last):
                    break
        if export:
            self.export()
        if handler is not None:
            preemption.wait_for_all_workers(self.strategy)
        return last

    def export(self) -> str:
        """Exports the SavedModel; returns its path. Under multi_worker all workers call it."""
        num_samples = models.num_draws(
            self.config.objective.defense, self.config.monitor.export_num_samples
        )
        path = export.export_saved_model(
            self.model,
            os.path.join(self._write_dir, export.SAVED_MODEL_DIRNAME),
            num_samples=num_samples,
            image_shape=tuple(self.data.spec.image_shape),
        )
        self._discard_scratch()
        return path


def _summary_name(key: str) -> str:
    for prefix in ("train", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


def _format_metrics(metrics: dict) -> str:
    parts = [f"epoch {metrics['epoch']}"]
    parts += [f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"]
    return "  ".join(parts)


def train(config: TrainConfig, verbose: bool = True) -> dict:
    """Trains (or resumes) the run described by ``config``; returns the last epoch's metrics."""
    return Trainer(config).fit(verbose=verbose)
