"""The training engine: one tf.function train step for all five defenses.

Per batch (paper eq. 13):

    x_adv = PGD(x)            for adv and adv_bnn (fresh weight draw at every PGD step)
    x_adv = x                 for plain, bnn and rse
    loss  = CE(f(x_adv; w), y) + beta_t * alpha / N_train * KL(q || p)  [+ weight_decay / 2 * |w|^2]

``w ~ q`` is drawn in the forward pass. ``KL`` is the sum over every Bayesian layer
(``kl_scope="all"``, eq. 13) or the classifier's alone (``kl_scope="classifier"``, what the
reference PyTorch VGG returns and so what the paper's alpha = 1 was tuned with). ``beta_t`` ramps
linearly from 0 to 1 over ``kl_warmup_epochs`` (Sonderby et al. 2016; 1 when that is 0). The
weight-decay term is coupled L2 on the non-Bayesian weights, as PyTorch's ``weight_decay``
of the reference's SGD; Bayesian weights are regularized by the KL alone.

Under a ``tf.distribute`` strategy the cross-entropy is averaged over the global batch with
``tf.nn.compute_average_loss`` and the KL term goes through ``tf.nn.scale_regularization_loss``,
so after the gradients are summed across replicas the KL is counted once. Each replica draws its
own weights, so a step with R replicas averages R Monte Carlo weight samples.

A run leaves in ``model_dir``: ``config.json``, ``metrics.jsonl`` (one object per epoch),
``checkpoints/`` (``tf.train.CheckpointManager``), ``tensorboard/`` and ``saved_model/``.
Rerunning with the same ``model_dir`` resumes from the latest checkpoint, including mid-epoch:
the data order is a deterministic function of (seed, epoch), so the resumed run skips the
batches that were already trained on.

Under ``multi_worker`` only the chief writes ``model_dir``; every worker restores from it.
A SIGTERM on any worker makes all of them checkpoint after the same step and exit
(``tf.distribute.experimental.PreemptionCheckpointHandler``).

Reliability (see the README's "Reliability" section):

- The checkpoint holds the weights, the optimizer, the metrics, the per-layer weight-sampling
  generators, the position (epoch, step in epoch) and a canary step counter; the data order and
  the PGD random starts are functions of (seed, epoch, step). With ``deterministic`` (TF op
  determinism) a run killed at any point and rerun ends with the same bits as an uninterrupted
  one on the same CPU machine.
- Restoring tries the newest checkpoint first and falls back to older ones with a warning when
  it is unreadable; a checkpoint that does not fit this run's model is an error, never a partial
  restore.
- A non-finite loss or gradient rolls the run back to its last checkpoint (the first one is
  written before the first step) and retries, at most ``max_nonfinite_retries`` times; a
  checkpoint with non-finite values is never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from tfp_advbnn import attacks, data, export, layers, models

CONFIG_FILENAME = "config.json"
MODEL_SPEC_FILENAME = "model_spec.json"
METRICS_FILENAME = "metrics.jsonl"
CHECKPOINT_DIRNAME = "checkpoints"
TENSORBOARD_DIRNAME = "tensorboard"

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

KL_SCOPES = ("all", "classifier")

# The paper's Table 2 (eps, sigma_0, alpha, PGD-10 in training), the schedule length of the
# reference code, and its default model per dataset. ``folder`` stands for ImageNet-143 and
# other image folders.
DATASET_DEFAULTS = {
    "cifar10": {
        "train_eps": 8.0 / 256.0,
        "sigma_0": 0.05,
        "alpha": 1.0,
        "epochs": 200,
        "image_size": None,
        "model": "vgg16",
    },
    "stl10": {
        "train_eps": 8.0 / 256.0,
        "sigma_0": 0.15,
        "alpha": 1.0 / 50.0,
        "epochs": 120,
        "image_size": None,
        "model": "model_a",
    },
    "folder": {
        "train_eps": 0.01,
        "sigma_0": 0.15,
        "alpha": 1.0 / 50.0,
        "epochs": 80,
        "image_size": 64,
        "model": "vgg16",
    },
}

# Optimizers. Plain, adv and RSE: the reference's SGD at 0.01, momentum 0.9 and coupled weight
# decay 5e-4. BNN and Adv-BNN: Adam as the reference, but at 1e-4 (BNN) and 1e-3 (Adv-BNN)
# instead of its 0.01, and with the posterior std starting at 0.002 instead of sigma_0: Adam moves
# every mu and s by about the learning rate per step whatever the gradient's size, and the KL's
# per-weight gradient, tiny but larger than the CE's in VGG16's wide layers, then drives the 15M
# stds to sigma_0 and the means to 0 within a few hundred steps. Measured with
# benchmarks/recipe.py (README, "Training recipe").
_SGD = {"optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4}
DEFENSE_DEFAULTS = {
    "plain": _SGD,
    "adv": _SGD,
    "rse": _SGD,
    "bnn": {"optimizer": "adam", "learning_rate": 1e-4, "weight_decay": 0.0},
    "adv_bnn": {"optimizer": "adam", "learning_rate": 1e-3, "weight_decay": 0.0},
}
INIT_S = 0.002


def recipe_defaults(dataset: str, defense: str) -> dict:
    """The default settings of ``dataset`` and ``defense``: Table 2, the reference code, and the
    measured deviations of ``DEFENSE_DEFAULTS``.

    Returns a dict of TrainConfig field -> value for ``train_eps``, ``sigma_0``, ``alpha``,
    ``epochs``, ``image_size``, ``model``, ``optimizer``, ``learning_rate``, ``weight_decay``
    and ``init_s`` (read by the Bayesian defenses only).
    """
    _check_choice("dataset", dataset, DATASET_DEFAULTS)
    _check_choice("defense", defense, DEFENSE_DEFAULTS)
    return dict(DATASET_DEFAULTS[dataset], **DEFENSE_DEFAULTS[defense], init_s=INIT_S)


# The reference schedule: epochs per stage, learning rate divided by 10 at each stage.
STAGE_EPOCHS = {
    "cifar10": (80, 60, 40, 20),
    "stl10": (60, 40, 20),
    "folder": (30, 20, 20, 10),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Built from flags in ``trainers/main.py``.

    The defaults are those of CIFAR-10 and Adv-BNN; ``recipe_defaults(dataset, defense)`` gives
    them for the other datasets and defenses. Units: ``train_eps`` and ``pgd_step_size`` are
    L-inf radii in [0, 1] pixel scale; ``kl_warmup_epochs`` is in epochs (fractions allowed).
    """

    model_dir: str
    dataset: str = "cifar10"
    data_dir: str | None = None
    image_size: int | None = None
    max_train_examples: int | None = None
    max_test_examples: int | None = None
    validation_examples: int = 0
    model: str = "vgg16"
    defense: str = "adv_bnn"
    width_multiplier: float = 1.0
    posterior: str = "reparameterization"
    alpha: float = 1.0
    kl_scope: str = "all"
    kl_warmup_epochs: float = 0.0
    sigma_0: float = 0.05
    init_s: float = INIT_S
    noise_init: float = 0.2
    noise_inner: float = 0.1
    train_eps: float = 8.0 / 256.0
    train_pgd_steps: int = 10
    pgd_step_size: float | None = None
    random_start: bool = False
    epochs: int = 200
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_num_samples: int = 10
    eval_robust_examples: int = 0
    eval_pgd_steps: int = 20
    eval_split: str = "test"
    export_num_samples: int = 10
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    max_nonfinite_retries: int = 3
    deterministic: bool = False
    seed: int = 0
    strategy: str = "default"
    precision: str = "float32"
    jit_compile: bool = False

    @property
    def step_size(self) -> float:
        """PGD step size: the given one, else 2.5 * eps / steps (Madry et al.)."""
        if self.pgd_step_size is not None:
            return self.pgd_step_size
        return 2.5 * self.train_eps / max(self.train_pgd_steps, 1)

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field and its accepted range."""
        _check_choice("dataset", self.dataset, data.DATASETS)
        _check_choice("model", self.model, models.ARCHITECTURES)
        _check_choice("defense", self.defense, models.DEFENSES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("posterior", self.posterior, ("reparameterization", "flipout"))
        _check_choice("eval_split", self.eval_split, ("test", "validation"))
        _check_choice("kl_scope", self.kl_scope, KL_SCOPES)
        if self.weight_decay and models.is_bayesian(self.defense):
            raise ValueError(
                f"weight_decay {self.weight_decay} applies to non-Bayesian weights, and defense "
                f"{self.defense!r} has none (its KL term is the regularizer): set weight_decay 0"
            )
        if self.eval_split == "validation" and not self.validation_examples:
            raise ValueError("eval_split 'validation' needs validation_examples > 0")
        positive = {
            "width_multiplier": self.width_multiplier,
            "sigma_0": self.sigma_0,
            "init_s": self.init_s,
            "learning_rate": self.learning_rate,
        }
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        non_negative = {
            "alpha": self.alpha,
            "noise_init": self.noise_init,
            "noise_inner": self.noise_inner,
            "weight_decay": self.weight_decay,
            "kl_warmup_epochs": self.kl_warmup_epochs,
        }
        for name, value in non_negative.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.train_eps <= 1:
            raise ValueError(f"train_eps must be in [0, 1] (pixel scale), got {self.train_eps}")
        if self.pgd_step_size is not None and not 0 < self.pgd_step_size <= 1:
            raise ValueError(f"pgd_step_size must be in (0, 1], got {self.pgd_step_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        at_least = {
            "epochs": (self.epochs, 1),
            "batch_size": (self.batch_size, 1),
            "train_pgd_steps": (self.train_pgd_steps, 1),
            "eval_num_samples": (self.eval_num_samples, 1),
            "eval_pgd_steps": (self.eval_pgd_steps, 1),
            "export_num_samples": (self.export_num_samples, 1),
            "keep_checkpoints": (self.keep_checkpoints, 1),
            "max_nonfinite_retries": (self.max_nonfinite_retries, 0),
            "eval_robust_examples": (self.eval_robust_examples, 0),
            "checkpoint_every_steps": (self.checkpoint_every_steps, 0),
            "validation_examples": (self.validation_examples, 0),
            "seed": (self.seed, 0),
        }
        for name, (value, low) in at_least.items():
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        for name in ("max_train_examples", "max_test_examples", "image_size"):
            value = getattr(self, name)
            if value is not None and (int(value) != value or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 when given, got {value}")
        if self.dataset == "folder" and self.image_size is None:
            raise ValueError("image_size is required for dataset 'folder'")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        values = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.json has unknown fields {unknown}")
        return cls(**values)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


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
    """The reference staged schedule scaled to ``config.epochs``: rate / 10 at each stage."""
    stages = np.asarray(STAGE_EPOCHS[config.dataset], dtype=np.float64)
    cumulative = np.cumsum(stages)[:-1] / stages.sum()
    boundaries = sorted({int(round(f * config.epochs)) * steps_per_epoch for f in cumulative})
    boundaries = [b for b in boundaries if 0 < b < config.epochs * steps_per_epoch]
    return StagedLearningRate(config.learning_rate, boundaries)


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    """Adam (``momentum`` is its beta_1) or SGD with momentum, on the staged schedule.

    Weight decay is not the optimizer's: it is the coupled L2 term of the loss (see
    ``weight_decay_loss``), which is what PyTorch's ``SGD(weight_decay=...)`` of the reference
    computes, under either optimizer.
    """
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        # ``momentum`` is Adam's first-moment decay, so no setting goes unused.
        optimizer = tf_keras.optimizers.Adam(learning_rate=schedule, beta_1=config.momentum)
    else:
        optimizer = tf_keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    if config.precision == "mixed_float16":
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def objective_kl(model, kl_scope: str):
    """The KL of the objective: every Bayesian layer's (``"all"``, eq. 13) or the classifier
    layer's alone (``"classifier"``, the reference implementation's). float32 scalar, nats."""
    _check_choice("kl_scope", kl_scope, KL_SCOPES)
    if kl_scope == "classifier":
        return layers.model_kl(model.get_layer("classifier"))
    return layers.model_kl(model)


def weight_decay_loss(model, weight_decay: float):
    """``weight_decay / 2 * sum(w^2)`` over the trainable non-Bayesian weights (kernels,
    biases, batch-norm scales and offsets), whose gradient is PyTorch's coupled weight decay
    ``weight_decay * w``. float32 scalar; 0 when ``weight_decay`` is 0."""
    bayesian = {id(v) for v in layers.bayesian_variables(model)}
    weights = [v for v in model.trainable_variables if id(v) not in bayesian]
    if not weight_decay or not weights:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in weights])
    return 0.5 * weight_decay * total


def build_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy named by ``--strategy``."""
    _check_choice("strategy", name, STRATEGIES)
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


def build_model_for(config: TrainConfig, num_classes: int, image_shape):
    """The model of ``config`` for ``num_classes`` classes and (H, W, 3) images."""
    return models.build_model(
        config.model,
        config.defense,
        num_classes=num_classes,
        input_shape=tuple(image_shape),
        width_multiplier=config.width_multiplier,
        sigma_0=config.sigma_0,
        init_s=config.init_s,
        noise_init=config.noise_init,
        noise_inner=config.noise_inner,
        posterior=config.posterior,
        seed=config.seed,
    )


def load_data_for(config: TrainConfig) -> data.ImageData:
    image_size = (config.image_size, config.image_size) if config.image_size else None
    return data.load_data(
        config.dataset,
        data_dir=config.data_dir,
        image_size=image_size,
        max_train_examples=config.max_train_examples,
        max_test_examples=config.max_test_examples,
        validation_examples=config.validation_examples,
        seed=config.seed,
    )


class _StopRequested:
    """Turns SIGINT / SIGTERM into a flag, so the loop can checkpoint before exiting."""

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


class Trainer:
    """Owns the model, optimizer, metrics, checkpoint and compiled steps of one run."""

    def __init__(self, config: TrainConfig, image_data: data.ImageData | None = None):
        config.validate()
        self.config = config
        if config.deterministic:
            # Process-wide and irreversible: every later op must have a deterministic kernel.
            tf.config.experimental.enable_op_determinism()
        self.strategy = build_strategy(config.strategy)
        self.data = image_data if image_data is not None else load_data_for(config)
        spec = self.data.spec
        self.num_train = spec.num_train
        self.global_batch_size = config.batch_size
        self.steps_per_epoch = self.num_train // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"batch_size {config.batch_size} is larger than the training set "
                f"({self.num_train} examples)"
            )
        # A string lives on the host only, so this one stays outside the strategy's devices.
        with tf.device("/cpu:0"):
            self.model_identity = tf.Variable(
                model_identity(config, spec.num_classes, spec.image_shape),
                trainable=False,
                name="model_identity",
            )
        with self.strategy.scope():
            # The policy applies to the layers built under it; it is restored afterwards so
            # that building a trainer leaves no global state behind.
            previous_policy = tf_keras.mixed_precision.global_policy()
            tf_keras.mixed_precision.set_global_policy(config.precision)
            try:
                self.model = build_model_for(config, spec.num_classes, spec.image_shape)
            finally:
                tf_keras.mixed_precision.set_global_policy(previous_policy)
            self.optimizer = make_optimizer(config, self.steps_per_epoch)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            # Incremented by the compiled step itself and saved with the weights it produced:
            # after any kill and resume it must equal the number of steps the loop has run.
            self.canary_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="canary")
            self.train_loss = tf_keras.metrics.Mean("train/loss")
            self.train_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("train/accuracy")
            self.train_kl = tf_keras.metrics.Mean("train/kl")
            self.train_cross_entropy = tf_keras.metrics.Mean("train/cross_entropy")
            self.train_kl_term = tf_keras.metrics.Mean("train/kl_term")
            self.test_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("test/accuracy")
            self.test_robust_accuracy = tf_keras.metrics.SparseCategoricalAccuracy(
                "test/robust_accuracy"
            )
            self.optimizer.build(self.model.trainable_variables)
            self.checkpoint = tf.train.Checkpoint(
                model=self.model,
                optimizer=self.optimizer,
                epoch=self.epoch,
                step_in_epoch=self.step_in_epoch,
                canary_steps=self.canary_steps,
                model_identity=self.model_identity,
                train_loss=self.train_loss,
                train_accuracy=self.train_accuracy,
                train_kl=self.train_kl,
                train_cross_entropy=self.train_cross_entropy,
                train_kl_term=self.train_kl_term,
            )
        self.checkpoint_dir = os.path.join(config.model_dir, CHECKPOINT_DIRNAME)
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
            os.path.join(self._write_dir, CHECKPOINT_DIRNAME),
            max_to_keep=config.keep_checkpoints,
        )
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # ----- compiled steps ---------------------------------------------------------------

    def _attack_fn(self):
        # BN runs in inference mode during the attack, as in the reference.
        return lambda images: tf.cast(self.model(images, training=False), tf.float32)

    def kl_weight(self, step):
        """The KL's weight in the loss at optimizer step ``step`` (0-based): alpha / N_train,
        ramped linearly from 1 / ramp to 1 of it over ``kl_warmup_epochs`` epochs."""
        weight = self.config.alpha / self.num_train
        ramp_steps = self.config.kl_warmup_epochs * self.steps_per_epoch
        if ramp_steps <= 0:
            return tf.constant(weight, tf.float32)
        progress = (tf.cast(step, tf.float32) + 1.0) / ramp_steps
        return weight * tf.minimum(progress, 1.0)

    def _make_train_step(self):
        config = self.config
        adversarial = models.is_adversarial(config.defense)
        loss_scaled = isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

        def step_fn(images, labels):
            if adversarial:
                # The random start is a function of (seed, step, replica), so it is replayed
                # exactly after a resume.
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                step = tf.cast(self.optimizer.iterations, tf.int64)
                offset = step * 1024 + tf.cast(replica, tf.int64)
                seed = tf.stack([tf.constant(config.seed, tf.int64), offset])
                images = attacks.pgd(
                    self._attack_fn(),
                    images,
                    labels,
                    eps=config.train_eps,
                    step_size=config.step_size,
                    num_steps=config.train_pgd_steps,
                    random_start=config.random_start,
                    seed=seed,
                )
            with tf.GradientTape() as tape:
                logits = tf.cast(self.model(images, training=True), tf.float32)
                per_example = tf_keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
                cross_entropy = tf.nn.compute_average_loss(
                    per_example, global_batch_size=self.global_batch_size
                )
                kl = objective_kl(self.model, config.kl_scope)
                kl_term = self.kl_weight(self.optimizer.iterations) * kl
                decay = weight_decay_loss(self.model, config.weight_decay)
                loss = cross_entropy + tf.nn.scale_regularization_loss(kl_term + decay)
                scaled = self.optimizer.get_scaled_loss(loss) if loss_scaled else loss
            variables = self.model.trainable_variables
            gradients = tape.gradient(scaled, variables)
            if loss_scaled:
                gradients = self.optimizer.get_unscaled_gradients(gradients)
            # The loss scaler skips overflowing float16 steps by design; only a non-finite loss
            # is a fault then. In float32 any non-finite gradient is one.
            checked = [loss] if loss_scaled else [loss, *[g for g in gradients if g is not None]]
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in checked])
            # Applied even when non-finite: the loop then restores the last checkpoint.
            self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
            replicas = self.strategy.num_replicas_in_sync
            # `loss` is this replica's share; times the replica count it is the global value.
            self.train_loss.update_state(loss * replicas)
            self.train_cross_entropy.update_state(cross_entropy * replicas)
            self.train_kl.update_state(kl)
            self.train_kl_term.update_state(kl_term)
            self.train_accuracy.update_state(labels, logits)
            return tf.cast(tf.logical_not(finite), tf.int32)

        @tf.function(jit_compile=config.jit_compile or None)
        def train_step(iterator):
            """One global step; returns the number of replicas that saw a non-finite value."""
            faults = self.strategy.run(step_fn, args=next(iterator))
            self.canary_steps.assign_add(1)
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, faults, axis=None)

        return train_step

    def _make_eval_step(self):
        config = self.config
        # Draws of a deterministic model are identical: one is the whole ensemble.
        num_samples = config.eval_num_samples if models.is_stochastic(config.defense) else 1

        def step_fn(images, labels, robust):
            predict = self._attack_fn()
            metric = self.test_accuracy
            if robust:
                metric = self.test_robust_accuracy
                images = attacks.pgd(
                    predict,
                    images,
                    labels,
                    eps=config.train_eps,
                    step_size=2.5 * config.train_eps / config.eval_pgd_steps,
                    num_steps=config.eval_pgd_steps,
                )
            metric.update_state(labels, models.ensemble_probabilities(predict, images, num_samples))

        @tf.function
        def clean_step(batch):
            self.strategy.run(step_fn, args=(*batch, False))

        @tf.function
        def robust_step(batch):
            self.strategy.run(step_fn, args=(*batch, True))

        return {False: clean_step, True: robust_step}

    # ----- datasets -----------------------------------------------------------------------

    def _train_metrics(self):
        return (
            self.train_loss,
            self.train_accuracy,
            self.train_cross_entropy,
            self.train_kl,
            self.train_kl_term,
        )

    def _train_iterator(self, epoch: int, skip: int):
        """The batches of ``epoch`` from its step ``skip`` on.

        An input pipeline yields per-replica batches, and each global step takes one per
        replica it feeds, so skipping ``skip`` steps skips ``skip`` times that many elements.
        """

        def dataset_fn(context):
            dataset = self.data.train_dataset(
                batch_size=self.global_batch_size,
                epoch=epoch,
                seed=self.config.seed,
                input_context=context,
            )
            replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            return dataset.skip(skip * replicas_per_pipeline)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _eval_dataset(self, max_examples: int | None, split: str):
        make = {"test": self.data.test_dataset, "validation": self.data.validation_dataset}
        _check_choice("split", split, make)

        def dataset_fn(context):
            dataset = make[split](batch_size=self.global_batch_size, input_context=context)
            if max_examples:
                per_replica = context.get_per_replica_batch_size(self.global_batch_size)
                dataset = dataset.unbatch().take(max_examples // context.num_input_pipelines)
                dataset = dataset.batch(per_replica)
            return dataset

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ----- the loop -------------------------------------------------------------------------

    def evaluate(self, robust_examples: int = 0, split: str = "test") -> dict:
        """Ensemble accuracy (eq. 18) on ``split`` ("test" or "validation"), and the ensemble
        accuracy under PGD-``eval_pgd_steps`` at ``train_eps`` on its first
        ``robust_examples`` images when that is > 0.

        Returns ``{"<split>_accuracy": ..., "<split>_robust_accuracy": ...}``.
        """
        self.test_accuracy.reset_state()
        for batch in self._eval_dataset(None, split):
            self._eval_step[False](batch)
        results = {f"{split}_accuracy": float(self.test_accuracy.result())}
        if robust_examples:
            self.test_robust_accuracy.reset_state()
            for batch in self._eval_dataset(robust_examples, split):
                self._eval_step[True](batch)
            results[f"{split}_robust_accuracy"] = float(self.test_robust_accuracy.result())
        return results

    def restore(self) -> bool:
        """Restores the newest readable checkpoint of ``model_dir``; returns whether there was one.

        An unreadable (truncated, corrupted) checkpoint is skipped with a warning for the one
        before it. Raises CheckpointMismatchError when no checkpoint can be restored, e.g. one
        written by another architecture or defense: every value of the checkpoint must find
        its variable and every variable its value.
        """
        paths = checkpoint_paths(self.checkpoint_dir)
        if not paths:
            return False
        expected = model_identity(
            self.config, self.data.spec.num_classes, self.data.spec.image_shape
        )
        failures = []
        for path in paths:
            try:
                _check_identity(path, expected)
                self.checkpoint.restore(path).assert_consumed()
            # A damaged file surfaces as one of many error types (OpError, IndexError from a
            # short read, ...); each is recorded and the next checkpoint tried.
            except Exception as error:
                failures.append(f"{path}: {_first_line(error)}")
                continue
            if failures:
                logging.warning(
                    "Skipped unreadable checkpoints (%s); resumed from %s",
                    "; ".join(failures),
                    path,
                )
            return True
        config = self.config
        raise CheckpointMismatchError(
            f"no checkpoint in {self.checkpoint_dir} can be restored into this run's model "
            f"({config.model} x{config.width_multiplier:g}, defense {config.defense}, "
            f"posterior {config.posterior}): " + "; ".join(failures)
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

    def _preemption_handler(self):
        """A handler that, on a SIGTERM to any worker, saves on all workers after the same
        step (through ``save``) and then raises KeyboardInterrupt, as ``_StopRequested`` does.
        """

        def stop():
            raise KeyboardInterrupt(
                "preempted; saved a checkpoint. Rerun the same command on every worker to resume."
            )

        return tf.distribute.experimental.PreemptionCheckpointHandler(
            self.strategy.cluster_resolver,
            # Read-only here: the handler restores from it when created, so all workers start
            # from the chief's checkpoint with the same step count, and saves through save_fn.
            tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir, max_to_keep=None),
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=stop, save_fn=self.save
            ),
        )

    def fit(self, verbose: bool = True, export: bool = True) -> dict:
        """Trains to ``config.epochs``, resuming from ``model_dir``; returns the last metrics.

        After every epoch it evaluates on ``config.eval_split``; at the end it exports the
        SavedModel unless ``export`` is False.
        """
        config = self.config
        os.makedirs(config.model_dir, exist_ok=True)
        _check_or_write_config(config, write=self.is_chief)
        if self.is_chief:
            write_text_atomically(
                os.path.join(config.model_dir, MODEL_SPEC_FILENAME),
                json.dumps(
                    {
                        "num_classes": self.data.spec.num_classes,
                        "image_shape": list(self.data.spec.image_shape),
                        "class_names": list(self.data.spec.class_names),
                    },
                    indent=2,
                )
                + "\n",
            )
        resumed = self.restore()
        if not resumed:
            # The first rollback target of the non-finite guard.
            self.save()
        elif verbose:
            print(
                f"Resumed from {tf.train.latest_checkpoint(self.checkpoint_dir)} at epoch "
                f"{int(self.epoch.numpy()) + 1}, step {int(self.step_in_epoch.numpy())}",
                flush=True,
            )
        if self.is_chief:
            writer = tf.summary.create_file_writer(
                os.path.join(config.model_dir, TENSORBOARD_DIRNAME)
            )
        else:
            writer = tf.summary.create_noop_writer()
        # Under multi_worker a stop must happen on every worker after the same step: the
        # preemption handler arranges that, and handles SIGTERM itself.
        preemption = self._preemption_handler() if config.strategy == "multi_worker" else None
        last = {}
        retries = 0
        with _StopRequested() if preemption is None else contextlib.nullcontext() as stop:
            while int(self.epoch.numpy()) < config.epochs:
                epoch = int(self.epoch.numpy())
                start_step = int(self.step_in_epoch.numpy())
                if start_step == 0:
                    for metric in self._train_metrics():
                        metric.reset_state()
                iterator = self._train_iterator(epoch, start_step)
                progress = tf_keras.utils.Progbar(
                    self.steps_per_epoch,
                    stateful_metrics=["loss", "accuracy", "kl"],
                    verbose=1 if verbose and sys.stdout.isatty() else 0,
                )
                started = time.time()
                rolled_back = False
                for step in range(start_step, self.steps_per_epoch):
                    if int(self._train_step(iterator)):
                        retries += 1
                        self._roll_back(epoch, step, retries)
                        rolled_back = True
                        break
                    self.step_in_epoch.assign(step + 1)
                    progress.update(
                        step + 1,
                        [
                            ("loss", float(self.train_loss.result())),
                            ("accuracy", float(self.train_accuracy.result())),
                            ("kl", float(self.train_kl.result())),
                        ],
                    )
                    if preemption is not None:
                        preemption.save_checkpoint_if_preempted()
                    elif stop:
                        path = self.save()
                        raise KeyboardInterrupt(
                            f"stopped by signal {stop.signal_number}; saved {path}. "
                            "Rerun the same command to resume."
                        )
                    every = config.checkpoint_every_steps
                    if every and (step + 1) % every == 0 and step + 1 < self.steps_per_epoch:
                        self.save()
                if rolled_back:
                    continue
                expected = (epoch + 1) * self.steps_per_epoch
                if int(self.canary_steps.numpy()) != expected:
                    raise RuntimeError(
                        f"step canary is {int(self.canary_steps.numpy())} after epoch {epoch + 1}, "
                        f"expected {expected}: a step was lost or repeated"
                    )
                train_seconds = time.time() - started
                last = {
                    "epoch": epoch + 1,
                    "train_loss": float(self.train_loss.result()),
                    "train_accuracy": float(self.train_accuracy.result()),
                    "train_cross_entropy": float(self.train_cross_entropy.result()),
                    "kl": float(self.train_kl.result()),
                    "train_kl_term": float(self.train_kl_term.result()),
                    "learning_rate": float(
                        learning_rate_schedule(config, self.steps_per_epoch)(
                            self.optimizer.iterations - 1
                        )
                    ),
                    "train_images_per_second": (
                        (self.steps_per_epoch - start_step) * config.batch_size / train_seconds
                    ),
                }
                last.update(self.evaluate(config.eval_robust_examples, config.eval_split))
                # The metrics line goes first: a kill before the save below makes the resumed
                # run redo the end of the epoch and replace the line with the same values.
                if self.is_chief:
                    _write_epoch_metrics(config.model_dir, last)
                self.epoch.assign(epoch + 1)
                self.step_in_epoch.assign(0)
                self.save()
                with writer.as_default(step=epoch + 1):
                    for key, value in last.items():
                        if key != "epoch":
                            tf.summary.scalar(_summary_name(key), value)
                if verbose:
                    print(_format_metrics(last), flush=True)
        if export:
            self.export()
        if preemption is not None:
            # The chief hosts the cluster's coordination service, so no worker may exit while
            # another is still working (e.g. exporting): an all-reduce is the barrier.
            @tf.function
            def barrier():
                ones = self.strategy.run(tf.ones, args=([],))
                return self.strategy.reduce("SUM", ones, axis=None)

            barrier()
        return last

    def _roll_back(self, epoch: int, step: int, retries: int) -> None:
        """Restores the last checkpoint after a non-finite step, or stops after too many."""
        limit = self.config.max_nonfinite_retries
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

    def export(self) -> str:
        """Exports the SavedModel; returns its path. Under multi_worker all workers call it."""
        num_samples = (
            self.config.export_num_samples if models.is_stochastic(self.config.defense) else 1
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


def _check_or_write_config(config: TrainConfig, write: bool = True) -> None:
    """Checks that a resumed run matches the config.json in model_dir, then writes it if
    ``write`` (multi_worker: only the chief writes)."""
    path = os.path.join(config.model_dir, CONFIG_FILENAME)
    if os.path.exists(path):
        with open(path) as f:
            existing = TrainConfig.from_json(f.read())
        resumable = {
            "epochs",
            "model_dir",
            "data_dir",
            "checkpoint_every_steps",
            "strategy",
            "max_nonfinite_retries",
            "keep_checkpoints",
            "deterministic",
        }
        mismatched = {
            field.name: (getattr(existing, field.name), getattr(config, field.name))
            for field in dataclasses.fields(TrainConfig)
            if field.name not in resumable
            and getattr(existing, field.name) != getattr(config, field.name)
        }
        if mismatched:
            details = ", ".join(
                f"{k}: {a!r} in model_dir vs {b!r} now" for k, (a, b) in sorted(mismatched.items())
            )
            raise ValueError(
                f"model_dir {config.model_dir} holds a run with a different configuration "
                f"({details}); use a new --model_dir or the original flags"
            )
    if write:
        write_text_atomically(path, config.to_json() + "\n")


def _write_epoch_metrics(model_dir: str, metrics: dict) -> None:
    """Records one epoch in metrics.jsonl (atomically), replacing any earlier line of it or of
    a later epoch (left by a run that was rolled back or killed before its checkpoint)."""
    path = os.path.join(model_dir, METRICS_FILENAME)
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("epoch", 0) < metrics["epoch"]]
    kept.append(json.dumps(metrics, sort_keys=True) + "\n")
    write_text_atomically(path, "".join(kept))


class CheckpointMismatchError(ValueError):
    """No checkpoint of a model_dir fits the model of the run restoring it."""


def checkpoint_paths(directory: str) -> list[str]:
    """The checkpoints recorded in ``directory``'s state file, newest first."""
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return []
    return list(reversed(state.all_model_checkpoint_paths))


def model_identity(config: TrainConfig, num_classes: int, image_shape) -> str:
    """What a checkpoint's variables are shaped by, as JSON; saved in every checkpoint."""
    return json.dumps(
        {
            "model": config.model,
            "width_multiplier": config.width_multiplier,
            "defense": config.defense,
            "posterior": config.posterior,
            "num_classes": int(num_classes),
            "image_shape": [int(d) for d in image_shape],
        },
        sort_keys=True,
    )


def _check_identity(path: str, expected: str) -> None:
    """Raises ValueError when the checkpoint at ``path`` records another model identity."""
    reader = tf.train.load_checkpoint(path)
    key = "model_identity/.ATTRIBUTES/VARIABLE_VALUE"
    if reader.has_tensor(key):
        found = reader.get_tensor(key)
        found = found.decode() if isinstance(found, bytes) else str(found)
        if found != expected:
            raise ValueError(f"it was written by the model {found}, this run builds {expected}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def write_text_atomically(path: str, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path`` and renames it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def read_config(model_dir: str) -> TrainConfig:
    path = os.path.join(model_dir, CONFIG_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a tfp_advbnn model_dir")
    with open(path) as f:
        return TrainConfig.from_json(f.read())


def read_model_spec(model_dir: str) -> dict:
    """``num_classes``, ``image_shape`` and ``class_names`` of the run in ``model_dir``."""
    path = os.path.join(model_dir, MODEL_SPEC_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a tfp_advbnn model_dir")
    with open(path) as f:
        return json.load(f)


def restore_model(model_dir: str):
    """Rebuilds the model of ``model_dir`` and restores its latest checkpoint.

    Returns:
      (model, config, model_spec). Raises FileNotFoundError when there is no config or
      checkpoint, and an error when the checkpoint does not match the model (never a silent
      partial restore).
    """
    config = read_config(model_dir)
    model_spec = read_model_spec(model_dir)
    model = build_model_for(config, model_spec["num_classes"], model_spec["image_shape"])
    directory = os.path.join(model_dir, CHECKPOINT_DIRNAME)
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    try:
        _check_identity(
            path, model_identity(config, model_spec["num_classes"], model_spec["image_shape"])
        )
        # Partial on purpose (the optimizer and metrics stay unread), but every model
        # variable must be found in the checkpoint.
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as error:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model of {model_dir}/{CONFIG_FILENAME} "
            f"({config.model} x{config.width_multiplier:g}, defense {config.defense}): "
            f"{_first_line(error)}"
        ) from None
    return model, config, model_spec


def train(config: TrainConfig, verbose: bool = True) -> dict:
    """Trains (or resumes) the run described by ``config``; returns the last epoch's metrics."""
    return Trainer(config).fit(verbose=verbose)
