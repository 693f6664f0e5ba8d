"""Progress within an epoch: a progress bar on a terminal, plain periodic lines elsewhere.

On a terminal the Keras progress bar redraws one line in place. In a log file (nohup, a cluster
job, CI, a pipe) a redrawn bar is useless, so instead a plain line is printed every
``log_every_secs`` seconds::

    epoch 3/200  step 120/390 (30.8%)  ETA epoch 4m12s, run 13h02m  loss=2.1034 \
ce=2.0987 kl_term=0.0047 accuracy=0.2100 kl=51234.0  1234.5 images/s

``loss``, ``ce`` (the cross-entropy), ``kl_term`` (alpha / N_train * KL, warm-up included),
``accuracy`` and ``kl`` (nats) are means over the epoch so far, as in ``metrics.jsonl``.
images/s is the throughput since the previous line. The ETAs extrapolate the mean step time
of this epoch, its first step left out when there are others (it includes tracing the train
step); the run's ETA counts training steps only, not the per-epoch evaluation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import tf_keras

# The names the bar and the lines show, in order, and the Task metric each reads.
_METRICS = {
    "loss": "train_loss",
    "ce": "train_cross_entropy",
    "kl_term": "train_kl_term",
    "accuracy": "train_accuracy",
    "kl": "train_kl",
}


def step_metrics(task) -> dict[str, float]:
    """The running epoch means of a ``Task``'s training metrics, by their progress names."""
    return {name: float(getattr(task, attr).result()) for name, attr in _METRICS.items()}


def format_duration(seconds: float) -> str:
    """Seconds as "45s", "4m12s", "13h02m" or "2d03h" (rounded down)."""
    seconds = max(0, int(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


class EpochProgress:
    """Shows the progress of one epoch, from ``start_step`` (a resumed epoch) to its end.

    Args:
      epoch: the 0-based epoch.
      epochs: the run's number of epochs.
      steps_per_epoch: steps in a full epoch.
      start_step: steps of this epoch already done before (0, or where a resumed run starts).
      batch_size: global images per step.
      log_every_secs: seconds between two plain lines (> 0).
      verbose: show anything at all.
      terminal: whether the output is a terminal (None: ``sys.stdout.isatty()``).
      stream: where the plain lines go (None: ``sys.stdout`` at each line).
      clock: seconds, monotonic (injected by tests).

    Example:
      >>> progress = EpochProgress(epoch=0, epochs=10, steps_per_epoch=390, start_step=0,
      ...                          batch_size=128, log_every_secs=60.0, verbose=True)
      >>> progress.update(1, {"loss": 2.3, "ce": 2.3, "kl_term": 0.0})
    """

    def __init__(
        self,
        *,
        epoch: int,
        epochs: int,
        steps_per_epoch: int,
        start_step: int,
        batch_size: int,
        log_every_secs: float,
        verbose: bool,
        terminal: bool | None = None,
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if terminal is None:
            terminal = sys.stdout.isatty()
        self.epoch, self.epochs = epoch, epochs
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.log_every_secs = float(log_every_secs)
        self._lines = bool(verbose) and not terminal
        self._stream = stream
        self._clock = clock
        self._bar = tf_keras.utils.Progbar(
            steps_per_epoch,
            stateful_metrics=list(_METRICS),
            verbose=1 if verbose and terminal else 0,
        )
        self._started = clock()
        self._start_step = start_step
        # (step, time) after the first step of this process, the origin of the mean step time.
        self._first = None
        self._last_line = (start_step, self._started)

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        """Records that ``step`` steps of the epoch are done; returns the plain line if printed.

        Args:
          step: steps of this epoch done, 1 to ``steps_per_epoch``.
          metrics: name -> value, shown in the given order (see ``step_metrics``).
        """
        self._bar.update(step, list(metrics.items()))
        now = self._clock()
        if self._first is None:
            self._first = (step, now)
        if not self._lines or now - self._last_line[1] < self.log_every_secs:
            return None
        line = self._line(step, now, metrics)
        self._last_line = (step, now)
        print(line, file=self._stream or sys.stdout, flush=True)
        return line

    def seconds_per_step(self, step: int, now: float) -> float:
        """The mean step time of this epoch so far, the first step left out when possible."""
        first_step, first_time = self._first
        if step > first_step and now > first_time:
            return (now - first_time) / (step - first_step)
        return (now - self._started) / max(step - self._start_step, 1)

    def _line(self, step: int, now: float, metrics: dict[str, float]) -> str:
        per_step = self.seconds_per_step(step, now)
        epoch_left = (self.steps_per_epoch - step) * per_step
        run_left = epoch_left + (self.epochs - self.epoch - 1) * self.steps_per_epoch * per_step
        last_step, last_time = self._last_line
        images = (step - last_step) * self.batch_size
        rate = images / (now - last_time) if now > last_time else float("nan")
        values = " ".join(f"{name}={_format_value(v)}" for name, v in metrics.items())
        return (
            f"epoch {self.epoch + 1}/{self.epochs}  step {step}/{self.steps_per_epoch} "
            f"({step / self.steps_per_epoch:.1%})  ETA epoch {format_duration(epoch_left)}, "
            f"run {format_duration(run_left)}  {values}  {rate:.1f} images/s"
        )
