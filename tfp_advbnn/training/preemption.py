"""Stopping a run cleanly: a signal (Ctrl-C, SIGTERM, a preemption) makes the training loop
save a checkpoint after the current step and exit, so that a rerun resumes there.

On one worker ``StopRequested`` turns the signal into a flag the loop polls. Under
``multi_worker`` the stop must happen on every worker after the same step:
``preemption_handler`` wraps ``tf.distribute.experimental.PreemptionCheckpointHandler``, which
arranges that and handles SIGTERM itself.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import tensorflow as tf


class StopRequested:
    """Turns SIGINT / SIGTERM into a flag, so the loop can checkpoint before exiting.

    A context manager: inside it ``bool(stop)`` is True once a signal arrived, and
    ``stop.signal_number`` says which. The previous handlers are restored on exit.
    """

    def __init__(self):
        self.signal_number = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal_number = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def __bool__(self):
        return self.signal_number is not None


def preemption_handler(
    strategy: tf.distribute.Strategy,
    checkpoint: tf.train.Checkpoint,
    checkpoint_dir: str,
    save: Callable[[], str],
) -> tf.distribute.experimental.PreemptionCheckpointHandler:
    """A handler that, on a SIGTERM to any worker, saves on all workers after the same step
    (through ``save``) and then raises KeyboardInterrupt, as ``StopRequested`` makes the loop
    do.
    """

    def stop():
        raise KeyboardInterrupt(
            "preempted; saved a checkpoint. Rerun the same command on every worker to resume."
        )

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver,
        # Read-only here: the handler restores from it when created, so all workers start
        # from the chief's checkpoint with the same step count, and saves through save_fn.
        tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=None),
        termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=stop, save_fn=save),
    )


def wait_for_all_workers(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker got here.

    The chief hosts the cluster's coordination service, so no worker may exit while another
    is still working (e.g. exporting): an all-reduce is the barrier.
    """

    @tf.function
    def barrier():
        ones = strategy.run(tf.ones, args=([],))
        return strategy.reduce("SUM", ones, axis=None)

    barrier()
