r"""Evaluates trained runs under attack: sweeps, comparisons, transfer and ablations.

  python -m trainers.evaluate --model_dir=runs/demo
  python -m trainers.evaluate --model_dir=runs/demo --attack=apgd --num_eot_samples=10
  python -m trainers.evaluate --mode=compare --model_dirs=runs/plain,runs/adv,runs/adv_bnn
  python -m trainers.evaluate --mode=transfer --model_dirs=runs/plain,runs/adv_bnn \
      --sweep_eps=0.035
  python -m trainers.evaluate --mode=ensemble_sweep --model_dir=runs/demo --sweep_sizes=1,5,20
  python -m trainers.evaluate --mode=steps_sweep --model_dir=runs/demo --sweep_steps=10,100,1000

Each run is read from its latest checkpoint, or from its SavedModel's ``sample_logits`` when it
has no checkpoint, and evaluated on its own test set (its ``max_test_examples`` honoured). The
report JSON goes to --output (default ``<model_dir>/evaluation/<mode>_<attack>.json``; for
several runs, ``evaluation/`` beside them) and the figure to --plot (default: the JSON path with
``.png``); compare also writes its Markdown table beside the JSON (``.md``). A sweep report
holds model_dir, defense, attack, num_examples, pgd_steps, num_samples, num_eot_samples,
clean_accuracy, eps, accuracy, mean_distortion and checks (the gradient-masking checks of
Carlini et al. 2019; a failed check is logged as a warning), plus the other settings and timing.
For a stronger adaptive evaluation of a stochastic model, raise --num_eot_samples (10 or more)
and --random_restarts, or use --attack=apgd with --num_eot_samples=10 or more (its step-size rule
compares losses, which single draws make noisy).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

MODES = ("sweep", "compare", "transfer", "ensemble_sweep", "steps_sweep")
ATTACKS = ("pgd_linf", "pgd_l2", "fgsm", "cw", "apgd")

flags.DEFINE_string("model_dir", None, "The run to evaluate (sweep, ensemble_sweep, steps_sweep).")
flags.DEFINE_list("model_dirs", None, "Comma-separated runs, for --mode=compare and transfer.")
flags.DEFINE_enum("mode", "sweep", list(MODES), "What to evaluate.")
flags.DEFINE_enum("attack", "pgd_linf", list(ATTACKS), "The white-box attack.")
flags.DEFINE_list(
    "eps_grid",
    None,
    "Comma-separated radii in [0, 1] pixel scale (L2 norms for pgd_l2 and cw). Default: the "
    "paper's grid for the run's dataset (0, 0.005, ..., 0.07; ImageNet-143: 0, 0.002, ..., 0.02).",
)
flags.DEFINE_integer("pgd_steps", 20, "Iterations of PGD / APGD (C&W: Adam steps), >= 1.")
flags.DEFINE_float("pgd_step_size", None, "PGD step size in (0, 1]; default 2.5 * eps / steps.")
flags.DEFINE_integer(
    "random_restarts", 0, "Extra attack runs from random starts; robust = survives all (>= 0)."
)
flags.DEFINE_integer(
    "num_eot_samples", 1, "Weight draws averaged per attack gradient (EOT), >= 1; try 10."
)
flags.DEFINE_integer("num_samples", 10, "Weight draws of the ensemble prediction (eq. 18), >= 1.")
flags.DEFINE_integer("max_examples", None, "Evaluate on the first N test examples only.")
flags.DEFINE_integer("batch_size", 100, "Examples per graph call, >= 1.")
flags.DEFINE_integer("seed", 0, "Seed of the random starts and of TensorFlow's global RNG.")
flags.DEFINE_string("output", None, "Report JSON path.")
flags.DEFINE_string("plot", None, "Figure PNG path (default: --output with .png).")
flags.DEFINE_string("data_dir", None, "Test data location, overriding the run's data_dir.")
flags.DEFINE_list(
    "sweep_eps",
    None,
    "Radii for transfer, ensemble_sweep and steps_sweep (default: the middle non-zero eps of "
    "the grid, 0.035 on CIFAR-10).",
)
flags.DEFINE_list("sweep_sizes", ["1", "2", "5", "10", "20"], "Ensemble sizes for ensemble_sweep.")
flags.DEFINE_list(
    "sweep_steps", ["10", "20", "50", "100", "200", "500", "1000"], "Step counts for steps_sweep."
)
flags.DEFINE_bool("checks", True, "Run the gradient-masking checks (sweep and compare).")
flags.DEFINE_float("cw_c", 1.0, "Weight of the C&W margin term (--attack=cw), >= 0.")
flags.DEFINE_integer("check_examples", 500, "Examples the gradient-masking checks run on, >= 1.")
flags.DEFINE_integer(
    "check_eot_samples", 10, "EOT draws of the multi-draw attack in the EOT check, >= 2."
)


def _parse_list(name: str, values, kind):
    """Parses a comma list flag into numbers; UsageError naming the flag when it cannot."""
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


def _model_dirs() -> list[str]:
    single = FLAGS.mode in ("sweep", "ensemble_sweep", "steps_sweep")
    if single:
        if FLAGS.model_dirs:
            raise app.UsageError(f"--mode={FLAGS.mode} takes --model_dir, not --model_dirs")
        if not FLAGS.model_dir:
            raise app.UsageError(f"--mode={FLAGS.mode} needs --model_dir")
        dirs = [FLAGS.model_dir]
    else:
        if FLAGS.model_dir:
            raise app.UsageError(f"--mode={FLAGS.mode} takes --model_dirs, not --model_dir")
        dirs = [d for d in (FLAGS.model_dirs or []) if d]
        minimum = 2 if FLAGS.mode == "transfer" else 1
        if len(dirs) < minimum:
            raise app.UsageError(
                f"--mode={FLAGS.mode} needs --model_dirs with at least {minimum} runs, got {dirs}"
            )
    for directory in dirs:
        if not os.path.isfile(os.path.join(directory, "config.json")):
            flag = "--model_dir" if single else "--model_dirs"
            raise app.UsageError(f"{flag}: {directory} is not a trained run (no config.json)")
    return dirs


def _default_output(model_dirs: list[str]) -> str:
    if len(model_dirs) == 1:
        base = model_dirs[0]
    else:
        base = os.path.commonpath([os.path.abspath(d) for d in model_dirs])
    return os.path.join(base, "evaluation", f"{FLAGS.mode}_{FLAGS.attack}.json")


def _labels(loaded, model_dirs: list[str]) -> list[str]:
    """Display names from the defenses; repeated ones get their run's directory name."""
    labels = [m.label for m in loaded]
    return [
        f"{m.label} ({os.path.basename(os.path.normpath(d))})"
        if labels.count(m.label) > 1
        else m.label
        for m, d in zip(loaded, model_dirs, strict=True)
    ]


def _print_sweep(report: dict) -> None:
    print(f"{report['label']}: clean accuracy {report['clean_accuracy']:.4f}")
    print("      eps  accuracy  mean_distortion")
    for eps, accuracy, distortion in zip(
        report["eps"], report["accuracy"], report["mean_distortion"], strict=True
    ):
        print(f"  {eps:7.4f}  {accuracy:8.4f}  {distortion:15.5f}")
    for check in report["checks"]:
        verdict = "pass" if check["passed"] else "FAIL"
        print(f"  check {check['name']}: {verdict}: {check['message']}")
    if report["stochastic"] and report["num_eot_samples"] == 1:
        print(
            "  Single-draw gradients, as the paper. For an adaptive evaluation of this "
            "stochastic model rerun with --num_eot_samples=10 (or more)."
        )
        if report["attack"] == "apgd":
            print(
                "  APGD halves its step when the loss stops rising; single-draw losses of a "
                "stochastic model are too noisy for that rule, so give APGD --num_eot_samples=10 "
                "or more here (AutoAttack's version for randomized defenses uses 20)."
            )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    eps_grid = _parse_list("eps_grid", FLAGS.eps_grid, float)
    sweep_eps = _parse_list("sweep_eps", FLAGS.sweep_eps, float)
    sweep_sizes = _parse_list("sweep_sizes", FLAGS.sweep_sizes, int)
    sweep_steps = _parse_list("sweep_steps", FLAGS.sweep_steps, int)
    model_dirs = _model_dirs()
    if FLAGS.plot and not FLAGS.plot.lower().endswith(".png"):
        raise app.UsageError(f"--plot must be a .png path, got {FLAGS.plot}")
    if FLAGS.output is not None and not FLAGS.output:
        raise app.UsageError("--output must be a file path when given")
    if FLAGS.data_dir and not os.path.exists(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir does not exist: {FLAGS.data_dir}")
    if FLAGS.mode == "steps_sweep" and FLAGS.attack == "fgsm":
        raise app.UsageError("--mode=steps_sweep needs an iterative --attack, not fgsm")

    import tf_keras

    from tfp_advbnn import evaluation, models, training

    try:
        sweep_eps = sweep_eps and evaluation.check_eps_values("sweep_eps", sweep_eps)
        sweep_sizes = evaluation.check_counts("sweep_sizes", sweep_sizes)
        sweep_steps = evaluation.check_counts("sweep_steps", sweep_steps)
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None

    # Settings are validated before any model is loaded, so a bad flag fails fast.
    dataset = training.read_config(model_dirs[0]).dataset
    try:
        config = evaluation.EvalConfig(
            attack=FLAGS.attack,
            eps_grid=eps_grid or evaluation.default_eps_grid(dataset),
            pgd_steps=FLAGS.pgd_steps,
            pgd_step_size=FLAGS.pgd_step_size,
            random_restarts=FLAGS.random_restarts,
            num_eot_samples=FLAGS.num_eot_samples,
            num_samples=FLAGS.num_samples,
            max_examples=FLAGS.max_examples,
            batch_size=FLAGS.batch_size,
            seed=FLAGS.seed,
            cw_c=FLAGS.cw_c,
            check_examples=FLAGS.check_examples,
            check_eot_samples=FLAGS.check_eot_samples,
        )
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None
    loaded = [evaluation.load_model(d) for d in model_dirs]
    run_config = loaded[0].config
    for model, directory in zip(loaded[1:], model_dirs[1:], strict=True):
        if (model.config.dataset, model.model_spec["image_shape"]) != (
            run_config.dataset,
            loaded[0].model_spec["image_shape"],
        ):
            raise app.UsageError(
                f"--model_dirs: {directory} was trained on {model.config.dataset} "
                f"{model.model_spec['image_shape']}, {model_dirs[0]} on {run_config.dataset} "
                f"{loaded[0].model_spec['image_shape']}; compare runs on the same data"
            )
    sweep_eps = sweep_eps or [evaluation.check_eps_of(config.eps_grid) or 0.0]

    tf_keras.utils.set_random_seed(FLAGS.seed)
    images, labels = evaluation.load_test_data(run_config, data_dir=FLAGS.data_dir)
    names = _labels(loaded, model_dirs)
    model_fns = dict(zip(names, [m.model_fn for m in loaded], strict=True))
    stochastic = {
        n: models.is_stochastic(m.config.defense) for n, m in zip(names, loaded, strict=True)
    }
    # Identifies the run in single-model reports.
    about = {
        "model_dir": model_dirs[0],
        "defense": run_config.defense,
        "dataset": run_config.dataset,
        "model_source": loaded[0].source,
    }

    first = names[0]
    if FLAGS.mode == "sweep":
        report = evaluation.sweep(
            model_fns[first],
            images,
            labels,
            config,
            label=first,
            with_checks=FLAGS.checks,
            stochastic=stochastic[first],
            progress=True,
        )
        report = {**about, **report}
    elif FLAGS.mode == "compare":
        report = evaluation.compare(
            model_fns,
            images,
            labels,
            config,
            with_checks=FLAGS.checks,
            stochastic=stochastic,
            progress=True,
        )
        for entry, model, directory in zip(report["models"], loaded, model_dirs, strict=True):
            entry.update(
                model_dir=directory, defense=model.config.defense, model_source=model.source
            )
        report = {"dataset": run_config.dataset, **report}
    elif FLAGS.mode == "transfer":
        report = evaluation.transfer(model_fns, images, labels, config, sweep_eps, progress=True)
        report = {
            "dataset": run_config.dataset,
            "model_dirs": model_dirs,
            "defenses": [m.config.defense for m in loaded],
            **report,
        }
    elif FLAGS.mode == "ensemble_sweep":
        report = evaluation.ensemble_sweep(
            model_fns[first],
            images,
            labels,
            config,
            sweep_eps,
            sweep_sizes,
            label=first,
            progress=True,
        )
        report = {**about, **report}
    else:
        report = evaluation.steps_sweep(
            model_fns[first],
            images,
            labels,
            config,
            sweep_eps,
            sweep_steps,
            label=first,
            progress=True,
        )
        report = {**about, **report}

    output = FLAGS.output or _default_output(model_dirs)
    plot = FLAGS.plot or os.path.splitext(output)[0] + ".png"
    evaluation.write_json(report, output)
    evaluation.plot_report(report, plot)
    written = [output, plot]
    if FLAGS.mode == "compare":
        table = os.path.splitext(output)[0] + ".md"
        training.write_text_atomically(table, report["table_markdown"])
        written.append(table)
        print(report["table_markdown"])
        for entry in report["models"]:
            _print_sweep(entry)
    elif FLAGS.mode == "sweep":
        _print_sweep(report)
    print("Wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    app.run(main)
