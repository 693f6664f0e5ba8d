"""Evaluating trained runs from their model_dirs: load them, check they fit together, write outputs.

``run(request, config)`` is what ``trainers.evaluate`` does: it loads each run (latest
checkpoint, else the SavedModel's ``sample_logits``), evaluates it on its own test set (its
``max_test_examples`` honoured) in the requested mode, adds what identifies the runs to the
report and writes the report JSON, its figure and (compare) its Markdown table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_advbnn import export, models, run_dir, training, validation
from tfp_advbnn.config import STRATEGIES, EvalConfig
from tfp_advbnn.evaluation.detection import detect
from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.protocols import (
    DEFENSE_NAMES,
    MODES,
    REFERENCE_STEP_SIZE,
    TRANSFER_EPS,
    default_eps_grid,
    diagnosis_eps,
)
from tfp_advbnn.evaluation.reports import write_json
from tfp_advbnn.evaluation.sweeps import ensemble_sweep, steps_sweep, sweep
from tfp_advbnn.evaluation.transfer import compare, transfer

SINGLE_RUN_MODES = ("sweep", "ensemble_sweep", "steps_sweep", "detect")
# The modes that run a protocol's several attacks; the others run the paper protocol's one.
PROTOCOL_MODES = ("sweep", "compare")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A trained run ready for evaluation.

    Attributes:
      model_fn: images -> logits of one fresh draw.
      config: the run's ``training.TrainConfig``.
      model_spec: ``num_classes``, ``image_shape`` and ``class_names``.
      source: "checkpoint" or "saved_model".
      label: a display name, from the defense.
    """

    model_fn: Callable
    config: training.TrainConfig
    model_spec: dict
    source: str
    label: str


def load_model(model_dir: str) -> LoadedModel:
    """The model of ``model_dir``: its latest checkpoint, else its SavedModel's sample_logits.

    Raises FileNotFoundError when ``model_dir`` has no config or has neither.
    """
    config = training.read_config(model_dir)
    label = DEFENSE_NAMES.get(config.objective.defense, config.objective.defense)
    if tf.train.latest_checkpoint(os.path.join(model_dir, training.CHECKPOINT_DIRNAME)):
        model, config, model_spec = training.restore_model(model_dir)

        def model_fn(images):
            return tf.cast(model(images, training=False), tf.float32)

        return LoadedModel(model_fn, config, model_spec, "checkpoint", label)
    path = os.path.join(model_dir, export.SAVED_MODEL_DIRNAME)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{model_dir} has neither a checkpoint in {training.CHECKPOINT_DIRNAME}/ nor a "
            f"SavedModel in {export.SAVED_MODEL_DIRNAME}/"
        )
    loaded = tf.saved_model.load(path)

    def saved_model_fn(images):
        # Reached through ``loaded``, which owns the variables the signature reads.
        return loaded.signatures["sample_logits"](images=images)["logits"]

    return LoadedModel(
        saved_model_fn, config, training.read_model_spec(model_dir), "saved_model", label
    )


def load_test_data(
    config: training.TrainConfig, *, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The run's test set (its ``max_test_examples`` honoured): float32 [N, H, W, 3], int32 [N].

    ``data_dir`` overrides the run's.
    """
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    return training.load_data_for(config).test_arrays()


class RequestError(ValueError):
    """Runs or settings of a request that do not fit together; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Request:
    """What to evaluate and where its outputs go; validated on construction (ValueError).

    Attributes:
      mode: one of ``MODES``.
      model_dirs: the trained runs: one for the single-run modes (``SINGLE_RUN_MODES``), at
        least one for compare, at least two for transfer.
      output: report JSON path (None: ``<model_dir>/evaluation/<mode>_<attack>.json``; for
        several runs, ``evaluation/`` in their common parent).
      plot: figure PNG path (None: ``output`` with ``.png``).
      data_dir: test data location, overriding the runs' own.
      sweep_eps: radii of transfer, ensemble_sweep, steps_sweep and detect (None: the
        ``diagnosis_eps`` of the eps grid; transfer on CIFAR-10 and STL-10: ``TRANSFER_EPS``,
        the reference's 0.06; detect: every non-zero eps of the grid); stored sorted and
        unique.
      sweep_sizes: ensemble sizes of ensemble_sweep.
      sweep_steps: step counts of steps_sweep.
      fixed_step_size: the step of every step count of steps_sweep (the reference's 0.007, so
        more steps make a longer path); None: the eval config's step rule.
      with_checks: run the gradient-masking checks (sweep and compare).
      strategy: where the attacks run, as in training (``STRATEGIES``): ``mirrored`` splits
        each batch across this machine's devices, ``multi_worker`` across every worker's (each
        runs the same command with its ``TF_CONFIG``; the chief writes the outputs). A
        deterministic model and attack give the report of one device.
    """

    mode: str
    model_dirs: tuple[str, ...]
    output: str | None = None
    plot: str | None = None
    data_dir: str | None = None
    sweep_eps: tuple[float, ...] | None = None
    sweep_sizes: tuple[int, ...] = (1, 2, 5, 10, 20)
    sweep_steps: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
    fixed_step_size: float | None = REFERENCE_STEP_SIZE
    with_checks: bool = True
    strategy: str = "default"

    def __post_init__(self):
        validation.choice("mode", self.mode, MODES)
        validation.choice("strategy", self.strategy, STRATEGIES)
        dirs = list(self.model_dirs)
        if self.mode in SINGLE_RUN_MODES and len(dirs) != 1:
            raise ValueError(f"model_dirs: mode={self.mode} takes one run, got {dirs}")
        minimum = 2 if self.mode == "transfer" else 1
        if len(dirs) < minimum:
            raise ValueError(
                f"model_dirs: mode={self.mode} needs at least {minimum} runs, got {dirs}"
            )
        for directory in dirs:
            if not os.path.isfile(os.path.join(directory, training.CONFIG_FILENAME)):
                raise ValueError(f"model_dirs: {directory} is not a trained run (no config.json)")
        object.__setattr__(self, "model_dirs", tuple(dirs))
        if self.plot and not self.plot.lower().endswith(".png"):
            raise ValueError(f"plot must be a .png path, got {self.plot}")
        if self.output is not None and not self.output:
            raise ValueError("output must be a file path when given")
        if self.data_dir and not os.path.exists(self.data_dir):
            raise ValueError(f"data_dir does not exist: {self.data_dir}")
        if self.sweep_eps is not None:
            sweep_eps = validation.unit_values("sweep_eps", self.sweep_eps)
            object.__setattr__(self, "sweep_eps", sweep_eps)
        sizes = validation.integer_values("sweep_sizes", self.sweep_sizes)
        object.__setattr__(self, "sweep_sizes", sizes)
        steps = validation.integer_values("sweep_steps", self.sweep_steps)
        object.__setattr__(self, "sweep_steps", steps)
        if self.fixed_step_size is not None:
            validation.unit_interval("fixed_step_size", self.fixed_step_size, open_low=True)


def default_eps_grid_of(model_dir: str, protocol: str = "paper") -> tuple[float, ...]:
    """The protocol's eps grid for the dataset the run in ``model_dir`` was trained on."""
    return default_eps_grid(training.read_config(model_dir).data.dataset, protocol)


def default_output(mode: str, attack: str, model_dirs) -> str:
    """``<model_dir>/evaluation/<mode>_<attack>.json``; several runs: in their common parent.

    ``attack`` is the eval config's ``label``: its attack, or "adaptive".
    """
    if len(model_dirs) == 1:
        base = model_dirs[0]
    else:
        base = os.path.commonpath([os.path.abspath(d) for d in model_dirs])
    return os.path.join(base, "evaluation", f"{mode}_{attack}.json")


def _labels(loaded, model_dirs) -> list[str]:
    """Display names from the defenses; repeated ones get their run's directory name."""
    labels = [m.label for m in loaded]
    return [
        f"{m.label} ({os.path.basename(os.path.normpath(d))})"
        if labels.count(m.label) > 1
        else m.label
        for m, d in zip(loaded, model_dirs, strict=True)
    ]


def _check_same_data(loaded, model_dirs) -> None:
    first = loaded[0]
    for model, directory in zip(loaded[1:], model_dirs[1:], strict=True):
        if (model.config.data.dataset, model.model_spec["image_shape"]) != (
            first.config.data.dataset,
            first.model_spec["image_shape"],
        ):
            raise RequestError(
                f"model_dirs: {directory} was trained on {model.config.data.dataset} "
                f"{model.model_spec['image_shape']}, {model_dirs[0]} on "
                f"{first.config.data.dataset} "
                f"{first.model_spec['image_shape']}; compare runs on the same data"
            )


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The outcome of ``run``: the report written and the paths written (JSON, PNG[, .md])."""

    report: dict
    written: tuple[str, ...]


def _evaluate(request: Request, config: EvalConfig, loaded, images, labels) -> dict:
    """The report of ``request.mode``, with what identifies the runs added."""
    dirs = request.model_dirs
    names = _labels(loaded, dirs)
    model_fns = dict(zip(names, [m.model_fn for m in loaded], strict=True))
    stochastic = {
        n: models.is_stochastic(m.config.objective.defense)
        for n, m in zip(names, loaded, strict=True)
    }
    first, run_config = names[0], loaded[0].config
    sweep_eps = request.sweep_eps or [diagnosis_eps(config.eps_grid) or 0.0]
    if request.mode == "transfer" and not request.sweep_eps:
        sweep_eps = [TRANSFER_EPS.get(run_config.data.dataset, sweep_eps[0])]
    # Identifies the run in single-run reports.
    about = {
        "model_dir": dirs[0],
        "defense": run_config.objective.defense,
        "dataset": run_config.data.dataset,
        "model_source": loaded[0].source,
    }
    if request.mode == "compare":
        report = compare(
            model_fns,
            images,
            labels,
            config,
            with_checks=request.with_checks,
            stochastic=stochastic,
            progress=True,
        )
        for entry, model, directory in zip(report["models"], loaded, dirs, strict=True):
            entry.update(
                model_dir=directory,
                defense=model.config.objective.defense,
                model_source=model.source,
            )
        return {"dataset": run_config.data.dataset, **report}
    if request.mode == "transfer":
        report = transfer(model_fns, images, labels, config, sweep_eps, progress=True)
        defenses = [m.config.objective.defense for m in loaded]
        return {
            "dataset": run_config.data.dataset,
            "model_dirs": list(dirs),
            "defenses": defenses,
            **report,
        }
    if request.mode == "sweep":
        report = sweep(
            model_fns[first],
            images,
            labels,
            config,
            label=first,
            with_checks=request.with_checks,
            stochastic=stochastic[first],
            progress=True,
        )
    elif request.mode == "detect":
        detect_eps = request.sweep_eps or [e for e in config.eps_grid if e > 0]
        report = detect(
            model_fns[first],
            images,
            labels,
            config,
            detect_eps,
            label=first,
            stochastic=stochastic[first],
            progress=True,
        )
    elif request.mode == "ensemble_sweep":
        sizes = request.sweep_sizes
        report = ensemble_sweep(
            model_fns[first], images, labels, config, sweep_eps, sizes, label=first, progress=True
        )
    else:
        steps = request.sweep_steps
        report = steps_sweep(
            model_fns[first],
            images,
            labels,
            config,
            sweep_eps,
            steps,
            step_size=request.fixed_step_size,
            label=first,
            progress=True,
        )
    return {**about, **report}


def run(request: Request, config: EvalConfig) -> Evaluation:
    """Evaluates the runs of ``request`` under ``config`` and writes the outputs.

    Raises RequestError (naming the field) when the attack does not suit the mode or the runs
    were trained on different data, before any evaluation.
    """
    if request.mode == "steps_sweep" and config.attack == "fgsm":
        raise RequestError("mode=steps_sweep needs an iterative attack, not fgsm")
    if config.protocol != "paper" and request.mode not in PROTOCOL_MODES:
        raise RequestError(
            f"protocol: --protocol={config.protocol} applies to mode={' or '.join(PROTOCOL_MODES)}"
            f"; mode={request.mode} runs one attack (--protocol=paper)"
        )
    if (
        request.mode == "steps_sweep"
        and request.fixed_step_size is not None
        and config.pgd_step_size is not None
    ):
        raise RequestError(
            "pgd_step_size: mode=steps_sweep takes its step from fixed_step_size "
            f"({request.fixed_step_size}); give fixed_step_size=0 to use pgd_step_size"
        )
    strategy = training.build_strategy(request.strategy)
    # Built and evaluated in the strategy's scope: the models' variables live on every
    # replica, and the Evaluators split their batches across them.
    with strategy.scope():
        loaded = [load_model(d) for d in request.model_dirs]
        _check_same_data(loaded, request.model_dirs)
        tf_keras.utils.set_random_seed(config.seed)
        images, labels = load_test_data(loaded[0].config, data_dir=request.data_dir)
        report = _evaluate(request, config, loaded, images, labels)

    output = request.output or default_output(request.mode, config.label, request.model_dirs)
    plot = request.plot or os.path.splitext(output)[0] + ".png"
    if not strategy.extended.should_checkpoint:
        # A multi_worker worker other than the chief: the chief writes the same report.
        return Evaluation(report, ())
    write_json(report, output)
    plot_report(report, plot)
    written = [output, plot]
    if request.mode == "compare":
        table = os.path.splitext(output)[0] + ".md"
        run_dir.write_text_atomically(table, report["table_markdown"])
        written.append(table)
    return Evaluation(report, tuple(written))
