r"""Evaluates trained runs under attack: sweeps, comparisons, transfer and ablations.

  python -m trainers.evaluate --model_dir=runs/demo
  python -m trainers.evaluate --model_dir=runs/demo --protocol=adaptive
  python -m trainers.evaluate --mode=compare --model_dirs=runs/plain,runs/adv,runs/adv_bnn
  python -m trainers.evaluate --mode=transfer --model_dirs=runs/plain,runs/adv_bnn \
      --sweep_eps=0.035
  python -m trainers.evaluate --mode=ensemble_sweep --model_dir=runs/demo --sweep_sizes=1,5,20
  python -m trainers.evaluate --mode=steps_sweep --model_dir=runs/demo --sweep_steps=10,100,1000
  python -m trainers.evaluate --mode=detect --model_dir=runs/demo --sweep_eps=0.015,0.035

Two protocols: ``paper`` (default; PGD-20 with one weight draw per step, as the paper's Table 1)
and ``adaptive`` (AutoAttack's version for randomized defenses: APGD-CE then APGD-DLR, 100
iterations each, EOT over 20 draws per step on stochastic models, an example robust only if it
survives both, and the Square black-box check); quote the adaptive protocol's robust_accuracy.

--strategy=mirrored|multi_worker splits every batch across devices and workers, as training
does; a deterministic model and attack give the report of one device.

Each run is read from its latest checkpoint, or from its SavedModel's ``sample_logits`` when it
has no checkpoint, and evaluated on its own test set (its ``max_test_examples`` honoured). The
report JSON goes to --output (default ``<model_dir>/evaluation/<mode>_<attack>.json``; for
several runs, ``evaluation/`` beside them) and the figure to --plot (default: the JSON path with
``.png``); compare also writes its Markdown table beside the JSON (``.md``). A sweep report
holds model_dir, defense, protocol, attack, num_examples, pgd_steps, num_samples,
num_eot_samples, eps, clean_accuracy, accuracy (the paper's count), robust_accuracy (clean and
adversarial predictions both correct, with the same draws), each with a 95 % Wilson interval
(``*_interval``), mean_distortion, attacks (each attack alone), checks (the gradient-masking
checks of Carlini et al. 2019; a failed check is logged as a warning) and notes, plus the other
settings and timing. A detect report holds, per eps, adversarial_accuracy and auc: the ROC AUC
of clean vs attacked images scored by the ensemble's predictive entropy and by its mutual
information (nats; 0.5 is chance), with their clean_mean and adversarial_mean.
"""

import os
import re

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainers import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)

# isort: split

from absl import app, flags  # noqa: E402

from tfp_advbnn import config, evaluation  # noqa: E402
from tfp_advbnn.evaluation import reports, runner  # noqa: E402
from trainers import flags as training_flags  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "model_dir", None, "The run to evaluate (sweep, ensemble_sweep, steps_sweep, detect)."
)
flags.DEFINE_list("model_dirs", None, "Comma-separated runs, for --mode=compare and transfer.")
flags.DEFINE_enum("mode", "sweep", list(evaluation.MODES), "What to evaluate.")
flags.DEFINE_string("output", None, "Report JSON path.")
flags.DEFINE_string("plot", None, "Figure PNG path (default: --output with .png).")
flags.DEFINE_string("data_dir", None, "Test data location, overriding the run's data_dir.")
flags.DEFINE_list(
    "sweep_eps",
    None,
    "Radii for transfer, ensemble_sweep, steps_sweep and detect (default: the middle non-zero "
    "eps of the grid, 0.035 on CIFAR-10; transfer: 0.06; detect: every non-zero eps of the "
    "grid).",
)
flags.DEFINE_list("sweep_sizes", ["1", "2", "5", "10", "20"], "Ensemble sizes for ensemble_sweep.")
flags.DEFINE_list(
    "sweep_steps", ["10", "20", "50", "100", "200", "500", "1000"], "Step counts for steps_sweep."
)
flags.DEFINE_float(
    "fixed_step_size",
    0.007,
    "Step of every step count of --mode=steps_sweep, so more steps make a longer path (the "
    "reference's 0.007 for CIFAR-10); 0: the step rule of --pgd_step_size (2.5 * eps / steps).",
)
flags.DEFINE_bool("checks", True, "Run the gradient-masking checks (sweep and compare).")
flags.DEFINE_enum(
    "strategy",
    "default",
    list(config.STRATEGIES),
    "Where the attacks run, as in training: mirrored splits each batch across this machine's "
    "devices, multi_worker across every worker's (each runs the command with its TF_CONFIG; "
    "the chief writes the outputs).",
)
# The settings of the evaluation itself: one flag per EvalConfig field (tfp_advbnn.config).
RENAMED = {"attack_steps": "pgd_steps"}
training_flags.define_flags(config.EvalConfig, renames=RENAMED)

# Library errors start with the field they name; these fields are set by flags of other names.
FLAG_OF_FIELD = {**RENAMED, "with_checks": "checks"}
LISTS = {"sweep_eps": float, "sweep_sizes": int, "sweep_steps": int}
CONFIG_LISTS = {"eps_grid": float, "adaptive_attacks": str, "square_eps": float}


def _parse_list(name: str, kind):
    """Parses a comma list flag into numbers; UsageError naming the flag when it cannot."""
    values = FLAGS[name].value
    if values is None:
        return None
    try:
        parsed = [kind(v) for v in values if v.strip()]
    except ValueError:
        raise app.UsageError(
            f"--{name} must be a comma-separated list of {kind.__name__}s, got {','.join(values)}"
        ) from None
    if not parsed:
        raise app.UsageError(f"--{name} must not be empty")
    return parsed


def _single_run() -> bool:
    return FLAGS.mode in runner.SINGLE_RUN_MODES


def _model_dirs() -> tuple[str, ...]:
    """The run of --model_dir (single-run modes) or the runs of --model_dirs."""
    given, other = ("model_dir", "model_dirs") if _single_run() else ("model_dirs", "model_dir")
    if FLAGS[other].value:
        raise app.UsageError(f"--mode={FLAGS.mode} takes --{given}, not --{other}")
    if _single_run() and not FLAGS.model_dir:
        raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir")
    return (FLAGS.model_dir,) if _single_run() else tuple(d for d in FLAGS.model_dirs or [] if d)


def _checked(build, errors=ValueError):
    """``build()``, its library errors turned into UsageErrors naming the flag, not the field."""
    try:
        return build()
    except errors as error:
        flag_of = {**FLAG_OF_FIELD, "model_dirs": "model_dir" if _single_run() else "model_dirs"}
        field = re.match(r"\w*", str(error)).group()
        raise app.UsageError(f"--{flag_of.get(field, field)}{str(error)[len(field) :]}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lists = {name: _parse_list(name, kind) for name, kind in LISTS.items()}
    config_lists = {name: _parse_list(name, kind) for name, kind in CONFIG_LISTS.items()}
    model_dirs = _model_dirs()
    paths = dict(output=FLAGS.output, plot=FLAGS.plot, data_dir=FLAGS.data_dir)
    fixed_step_size = FLAGS.fixed_step_size or None
    request = _checked(
        lambda: runner.Request(
            FLAGS.mode,
            model_dirs,
            with_checks=FLAGS.checks,
            fixed_step_size=fixed_step_size,
            strategy=FLAGS.strategy,
            **paths,
            **lists,
        )
    )
    # Settings are validated before any model is loaded, so a bad flag fails fast.
    settings = {
        name: FLAGS[RENAMED.get(name, name)].value
        for name in config.EvalConfig.flat_names()
        if name not in CONFIG_LISTS
    }
    settings.update({name: value for name, value in config_lists.items() if value is not None})
    if "eps_grid" not in settings:
        settings["eps_grid"] = runner.default_eps_grid_of(model_dirs[0], FLAGS.protocol)
    eval_config = _checked(lambda: config.EvalConfig(**settings))
    evaluated = _checked(lambda: runner.run(request, eval_config), runner.RequestError)
    summary = reports.summary(evaluated.report)
    if summary is not None:
        print(summary)
    if evaluated.written:  # empty on a multi_worker worker other than the chief
        print("Wrote " + ", ".join(evaluated.written))
    return 0


if __name__ == "__main__":
    cli.run(main)
