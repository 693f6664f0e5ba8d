r"""Trains one of the five defenses.

  python -m trainers.main --dataset=cifar10 --alpha=1.0
  python -m trainers.main --dataset=cifar10 --data_dir=../shared/data/cifar-10-batches-bin \
      --defense=adv_bnn --model=vgg16 --width_multiplier=0.25 --epochs=2 --model_dir=runs/demo

Rerunning with the same --model_dir resumes from its latest checkpoint. Ctrl-C or SIGTERM
saves a checkpoint before exiting (under --strategy=multi_worker: SIGTERM to any worker).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_training_flags() -> None:
    """Defines the flags shared by trainers.main and trainers.tune."""
    from tfp_advbnn import data, models, training

    flags.DEFINE_enum("dataset", "cifar10", list(data.DATASETS), "Dataset.")
    flags.DEFINE_string(
        "data_dir",
        None,
        "Local data: a CIFAR-10 directory (binary or python layout, or its .tar.gz), an image "
        "folder root (root/train/<class>/..., root/val/<class>/...), or the tfds data_dir.",
    )
    flags.DEFINE_integer("image_size", None, "Image side for --dataset=folder (default 64).")
    flags.DEFINE_integer("max_train_examples", None, "Use only the first N training images.")
    flags.DEFINE_integer("max_test_examples", None, "Use only the first N test images.")
    flags.DEFINE_enum("defense", "adv_bnn", list(models.DEFENSES), "Defense to train.")
    flags.DEFINE_enum(
        "model", None, list(models.ARCHITECTURES), "Architecture (default per dataset)."
    )
    flags.DEFINE_float("width_multiplier", 1.0, "Scales every conv width (> 0).")
    flags.DEFINE_enum(
        "posterior", "reparameterization", ["reparameterization", "flipout"], "Estimator."
    )
    flags.DEFINE_float(
        "alpha", None, "KL weight: loss = CE + alpha / N_train * KL (>= 0; default per dataset)."
    )
    flags.DEFINE_enum(
        "kl_scope",
        "all",
        list(training.KL_SCOPES),
        "KL of the loss: all Bayesian layers (eq. 13) or the classifier's alone (the reference's).",
    )
    flags.DEFINE_float(
        "kl_warmup_epochs", 0.0, "Ramp the KL weight linearly from 0 over this many epochs."
    )
    flags.DEFINE_float("sigma_0", None, "Prior std (default: the paper's per dataset).")
    flags.DEFINE_float(
        "init_s", None, "Initial posterior std; s starts at log(init_s) (default 0.002)."
    )
    flags.DEFINE_float("noise_init", 0.2, "RSE: std of the noise before the first conv.")
    flags.DEFINE_float("noise_inner", 0.1, "RSE: std of the noise before the other convs.")
    flags.DEFINE_float(
        "train_eps", None, "L-inf training radius in [0, 1] pixel scale (default per dataset)."
    )
    flags.DEFINE_integer("train_pgd_steps", 10, "PGD steps while training (>= 1).")
    flags.DEFINE_float("pgd_step_size", None, "PGD step size (default 2.5 * eps / steps).")
    flags.DEFINE_bool("random_start", False, "Start PGD at a random point of the eps-ball.")
    flags.DEFINE_integer("epochs", None, "Total epochs (default per dataset); stages scale.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.")
    flags.DEFINE_enum(
        "optimizer",
        None,
        list(training.OPTIMIZERS),
        "Optimizer (default: adam for bnn and adv_bnn, sgd for the others, as the reference).",
    )
    flags.DEFINE_float(
        "learning_rate",
        None,
        "Initial learning rate (> 0; default: 1e-4 for bnn, 1e-3 for adv_bnn, 0.01 else).",
    )
    flags.DEFINE_float("momentum", 0.9, "SGD momentum, or Adam's beta_1 (in [0, 1)).")
    flags.DEFINE_float(
        "weight_decay",
        None,
        "Coupled L2 (PyTorch's weight_decay) on non-Bayesian weights (default: 5e-4 for plain, "
        "adv and rse; 0 for bnn and adv_bnn, whose regularizer is the KL).",
    )
    flags.DEFINE_integer("eval_num_samples", 10, "Weight draws in the test ensemble (eq. 18).")
    flags.DEFINE_integer(
        "eval_robust_examples", 0, "If > 0, PGD test accuracy on this many test images per epoch."
    )
    flags.DEFINE_integer("eval_pgd_steps", 20, "PGD steps of the per-epoch robust evaluation.")
    flags.DEFINE_integer("seed", 0, "Seed of the weights, the draws and the data order.")
    flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES), "Distribution strategy.")
    flags.DEFINE_enum("precision", "float32", list(training.PRECISIONS), "Compute precision.")
    flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
    flags.DEFINE_bool(
        "deterministic",
        False,
        "TF op determinism: a resumed run matches an uninterrupted one bit for bit (same machine).",
    )
    flags.DEFINE_integer(
        "max_nonfinite_retries",
        3,
        "Rollbacks to the last checkpoint after a non-finite loss or gradient before stopping.",
    )


# Flags that only some defenses read: giving one to another defense is refused, not ignored.
DEFENSE_FLAGS = {
    ("bnn", "adv_bnn"): (
        "alpha",
        "kl_scope",
        "kl_warmup_epochs",
        "sigma_0",
        "init_s",
        "posterior",
    ),
    ("rse",): ("noise_init", "noise_inner"),
    ("adv", "adv_bnn"): ("train_pgd_steps", "pgd_step_size", "random_start"),
}


def check_flags_apply_to_the_defense() -> None:
    """Raises UsageError for a flag given on the command line that the defense does not use."""
    for defenses, names in DEFENSE_FLAGS.items():
        if FLAGS.defense in defenses:
            continue
        for name in names:
            if name in FLAGS and FLAGS[name].present:
                raise app.UsageError(
                    f"--{name} applies to --defense={' or '.join(defenses)} only; "
                    f"--defense={FLAGS.defense} does not use it"
                )


def config_from_flags(**overrides):
    """A validated TrainConfig from the parsed flags, with per-dataset defaults filled in."""
    from tfp_advbnn import training

    check_flags_apply_to_the_defense()
    defaults = training.recipe_defaults(FLAGS.dataset, FLAGS.defense)

    def flag_or_default(name):
        value = getattr(FLAGS, name)
        return defaults[name] if value is None else value

    values = dict(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        image_size=flag_or_default("image_size"),
        max_train_examples=FLAGS.max_train_examples,
        max_test_examples=FLAGS.max_test_examples,
        model=flag_or_default("model"),
        defense=FLAGS.defense,
        width_multiplier=FLAGS.width_multiplier,
        posterior=FLAGS.posterior,
        alpha=flag_or_default("alpha"),
        kl_scope=FLAGS.kl_scope,
        kl_warmup_epochs=FLAGS.kl_warmup_epochs,
        sigma_0=flag_or_default("sigma_0"),
        init_s=flag_or_default("init_s"),
        noise_init=FLAGS.noise_init,
        noise_inner=FLAGS.noise_inner,
        train_eps=flag_or_default("train_eps"),
        train_pgd_steps=FLAGS.train_pgd_steps,
        pgd_step_size=FLAGS.pgd_step_size,
        random_start=FLAGS.random_start,
        epochs=flag_or_default("epochs"),
        batch_size=FLAGS.batch_size,
        optimizer=flag_or_default("optimizer"),
        learning_rate=flag_or_default("learning_rate"),
        momentum=FLAGS.momentum,
        weight_decay=flag_or_default("weight_decay"),
        eval_num_samples=FLAGS.eval_num_samples,
        eval_robust_examples=FLAGS.eval_robust_examples,
        eval_pgd_steps=FLAGS.eval_pgd_steps,
        seed=FLAGS.seed,
        strategy=FLAGS.strategy,
        precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile,
        deterministic=FLAGS.deterministic,
        max_nonfinite_retries=FLAGS.max_nonfinite_retries,
    )
    values.update(overrides)
    config = training.TrainConfig(**values)
    try:
        config.validate()
    except ValueError as error:
        raise app.UsageError(f"--{error}") from None
    return config


def model_name() -> str:
    """The architecture of the run: --model, else the dataset's default."""
    from tfp_advbnn import training

    return FLAGS.model or training.recipe_defaults(FLAGS.dataset, FLAGS.defense)["model"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # TensorFlow's checkpoint and export INFO lines would drown the per-epoch metrics.
    logging.set_verbosity(logging.WARNING)
    model_dir = FLAGS.model_dir or os.path.join(
        "runs", f"{FLAGS.dataset}_{model_name()}_{FLAGS.defense}"
    )
    config = config_from_flags(
        model_dir=model_dir,
        export_num_samples=FLAGS.export_num_samples,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        keep_checkpoints=FLAGS.keep_checkpoints,
        validation_examples=FLAGS.validation_examples,
    )
    return run_training(config)


def run_training(config) -> int:
    """Trains ``config`` (resuming its model_dir) and returns the process exit code."""
    from tfp_advbnn import training

    try:
        metrics = training.train(config)
    except KeyboardInterrupt as interrupt:
        print(f"Interrupted: {interrupt}", file=sys.stderr)
        return 130
    print(f"Done. SavedModel at {os.path.join(config.model_dir, 'saved_model')}: {metrics}")
    return 0


if __name__ == "__main__":
    define_training_flags()
    flags.DEFINE_string(
        "model_dir", None, "Where checkpoints, logs and exports go (default runs/<run name>)."
    )
    flags.DEFINE_integer("export_num_samples", 10, "Weight draws averaged by the SavedModel.")
    flags.DEFINE_integer(
        "checkpoint_every_steps", 0, "Also checkpoint every N steps within an epoch (0: off)."
    )
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
    flags.DEFINE_integer(
        "validation_examples", 0, "Hold out the last N training images as a validation split."
    )
    app.run(main)
