"""Progress lines (training/progress.py) and TensorBoard summaries (training/summaries.py).

The lines are checked against ETAs and rates worked out by hand from a scripted clock; a short
real run, whose stdout is a pipe here, must print them. Its TensorBoard file is read back with
``summary_iterator``; the posterior histograms must bucket exactly exp(s) and |mu| / exp(s) of
the trained layers' variables (TensorBoard's rule: 30 equal buckets from min to max).
"""

import io
import pathlib
import re

import numpy as np
import pytest
import tensorflow as tf
from run_support import tiny_config

from tfp_advbnn import layers, models
from tfp_advbnn.training import progress, summaries
from tfp_advbnn.training.trainer import Trainer

METRICS = {"loss": 2.5, "ce": 2.25, "kl_term": 0.25, "accuracy": 0.125, "kl": 12345.5}


class ScriptedClock:
    """Time 0 at creation; the first step ends at 10 s (tracing), each later one 1 s after."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run_steps(steps, **kwargs):
    clock, stream = ScriptedClock(), io.StringIO()
    bar = progress.EpochProgress(
        epoch=0,
        epochs=3,
        steps_per_epoch=20,
        start_step=0,
        batch_size=8,
        log_every_secs=2.5,
        verbose=True,
        stream=stream,
        clock=clock,
        **kwargs,
    )
    printed = {}
    for step in range(1, steps + 1):
        clock.now = 10.0 + (step - 1)
        line = bar.update(step, METRICS)
        if line is not None:
            printed[step] = line
    return printed, stream.getvalue()


def test_plain_lines_every_interval_with_eta_and_rate():
    printed, text = _run_steps(8, terminal=False)
    # At 10 s (step 1), then at the first step >= 2.5 s later: 13 s (step 4), 16 s (step 7).
    assert sorted(printed) == [1, 4, 7]
    assert text.splitlines() == [printed[1], printed[4], printed[7]]
    # Step 1: only the traced step is known, 10 s a step: 19 steps left in this epoch, 40 in
    # the two epochs after it; 8 images in 10 s.
    assert printed[1] == (
        "epoch 1/3  step 1/20 (5.0%)  ETA epoch 3m10s, run 9m50s  loss=2.5000 ce=2.2500 "
        "kl_term=0.2500 accuracy=0.1250 kl=12345.5  0.8 images/s"
    )
    # Step 4: 1 s a step once the traced step is left out; 3 steps of 8 images in 3 s.
    assert "step 4/20 (20.0%)  ETA epoch 16s, run 56s" in printed[4]
    assert printed[4].endswith("  8.0 images/s")
    assert "step 7/20 (35.0%)  ETA epoch 13s, run 53s" in printed[7]


@pytest.mark.parametrize("kwargs", [{"terminal": True}, {"terminal": False, "verbose": False}])
def test_no_plain_lines_on_a_terminal_or_when_quiet(kwargs):
    verbose = kwargs.pop("verbose", True)
    clock, stream = ScriptedClock(), io.StringIO()
    bar = progress.EpochProgress(
        epoch=0,
        epochs=1,
        steps_per_epoch=5,
        start_step=0,
        batch_size=4,
        log_every_secs=1e-9,
        verbose=verbose,
        stream=stream,
        clock=clock,
        **kwargs,
    )
    for step in range(1, 6):
        clock.now = float(step)
        assert bar.update(step, METRICS) is None
    assert stream.getvalue() == ""


def test_a_resumed_epoch_counts_from_its_start_step():
    clock, stream = ScriptedClock(), io.StringIO()
    bar = progress.EpochProgress(
        epoch=1,
        epochs=2,
        steps_per_epoch=10,
        start_step=6,
        batch_size=2,
        log_every_secs=3.0,
        verbose=True,
        terminal=False,
        stream=stream,
        clock=clock,
    )
    clock.now = 4.0
    line = bar.update(7, METRICS)
    # One step done in 4 s: 3 left in the last epoch; 2 images in 4 s.
    assert "epoch 2/2  step 7/10 (70.0%)  ETA epoch 12s, run 12s" in line
    assert line.endswith("  0.5 images/s")


@pytest.mark.parametrize(
    "seconds,text",
    [(0, "0s"), (59.9, "59s"), (252, "4m12s"), (46920, "13h02m"), (2 * 86400 + 3 * 3600, "2d03h")],
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def _events(directory: pathlib.Path):
    """tag -> [(step, value ndarray)] of every event file under ``directory``."""
    found = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def _tensorboard_buckets(values: np.ndarray, count: int = 30) -> np.ndarray:
    """TensorBoard's histogram rule, written out: equal buckets over [min, max], max in the last."""
    values = values.astype(np.float64)
    low, high = values.min(), values.max()
    if low == high:  # One value: every count in the last bucket.
        return np.eye(count, dtype=int)[-1] * values.size
    index = np.minimum(np.floor((values - low) / ((high - low) / count)).astype(int), count - 1)
    return np.bincount(index, minlength=count)


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, small_data):
    """A 1-epoch Adv-BNN run (4 steps) with progress lines after every step, stdout captured."""
    model_dir = tmp_path_factory.mktemp("progress") / "run"
    config = tiny_config(
        model_dir,
        epochs=1,
        log_every_secs=1e-6,
        eval_robust_examples=8,
        eval_pgd_steps=1,
        train_pgd_steps=1,
    )
    trainer = Trainer(config, image_data=small_data)
    with pytest.MonkeyPatch.context() as patch:
        stream = io.StringIO()  # Not a terminal, as a log file or a pipe.
        patch.setattr("sys.stdout", stream)
        metrics = trainer.fit(verbose=True, export=False)
    return model_dir, trainer, metrics, stream.getvalue()


def test_piped_run_prints_periodic_lines_with_eta(piped_run):
    _, trainer, _, output = piped_run
    lines = [line for line in output.splitlines() if " ETA " in line]
    steps = trainer.steps_per_epoch
    assert steps == 4
    pattern = (
        r"epoch 1/1  step (\d)/4 \(\d+\.\d%\)  ETA epoch \w+, run \w+  loss=\S+ ce=\S+ "
        r"kl_term=\S+ accuracy=\S+ kl=\S+  \d+\.\d images/s"
    )
    assert [int(re.fullmatch(pattern, line).group(1)) for line in lines] == [1, 2, 3, 4]
    assert "\r" not in output and "\x1b" not in output  # No progress bar redraws in a log.


def test_tensorboard_has_the_terms_apart_the_learning_rate_and_robust_accuracy(piped_run):
    model_dir, _, metrics, _ = piped_run
    events = _events(model_dir / "tensorboard")
    for tag, key in {
        "train/cross_entropy": "train_cross_entropy",
        "train/kl_term": "train_kl_term",
        "train/learning_rate": "learning_rate",
        "test/robust_accuracy": "test_robust_accuracy",
    }.items():
        [(step, value)] = events[tag]
        assert step == 1
        np.testing.assert_allclose(float(value), metrics[key], rtol=1e-6)


def test_histograms_of_posterior_std_and_snr_match_the_variables(piped_run):
    model_dir, trainer, _, _ = piped_run
    events = _events(model_dir / "tensorboard")
    bayesian = [m for m in trainer.model.submodules if isinstance(m, layers.BayesianLayer)]
    assert bayesian
    expected_tags = set()
    for layer in bayesian:
        for weight, (mu, s) in layer.posterior_parameters.items():
            sigma = np.exp(s.numpy().astype(np.float64)).astype(np.float32).ravel()
            snr = (np.abs(mu.numpy().astype(np.float64)).ravel() / sigma).astype(np.float32)
            for kind, values in (("posterior_std", sigma), ("posterior_snr", snr)):
                tag = f"{kind}/{layer.name}/{weight}"
                expected_tags.add(tag)
                [(step, buckets)] = events[tag]
                assert step == 1 and buckets.shape == (30, 3)
                np.testing.assert_allclose(buckets[0, 0], values.min(), rtol=1e-6)
                np.testing.assert_allclose(buckets[-1, 1], values.max(), rtol=1e-6)
                expected = _tensorboard_buckets(values)
                assert buckets[:, 2].sum() == values.size
                # Values on a bucket edge may fall either side of it (float rounding of the edge).
                drift = np.abs(np.cumsum(buckets[:, 2]) - np.cumsum(expected)).max()
                assert drift <= max(2, 0.02 * values.size)
    assert expected_tags == {t for t in events if t.startswith("posterior_")}
    # Every Bayesian weight is there: conv and dense kernels and biases, BN gammas and betas.
    roles = {tag.rsplit("/", 1)[1] for tag in expected_tags}
    assert {"kernel", "bias"} <= roles


def test_a_model_without_bayesian_layers_has_no_histograms():
    model = models.build_model(
        "vgg11",
        "plain",
        num_classes=10,
        input_shape=(32, 32, 3),
        width_multiplier=0.0625,
        sigma_0=0.1,
        init_s=0.01,
    )
    assert summaries.posterior_statistics(model) == {}
