"""TrainConfig: the settings of a training run, in seven sections, and their accepted values."""

from __future__ import annotations

import dataclasses
import json

from tfp_advbnn import attacks, data, models, validation
from tfp_advbnn.config.declare import FlatConfig, section, setting, settings_of

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
POSTERIORS = ("reparameterization", "flipout")
EVAL_SPLITS = ("test", "validation")
KL_SCOPES = ("all", "classifier")
TRAIN_ATTACKS = ("pgd", "fgsm_rs", "free")
# Wong et al. 2020's FGSM step (1.25 eps), Shafahi et al. 2019's m = 8 replays (their CIFAR-10
# choice), and a guard batch of a few hundred images: 3 binomial standard errors of a 40 %
# accuracy on 256 images are 9 points, well below the collapse to ~0 that the guard looks for.
DEFAULT_FGSM_STEP_SCALE = 1.25
DEFAULT_FREE_REPLAYS = 8
DEFAULT_GUARD_EXAMPLES = 256
# Wong et al.'s guard attack (PGD-5); a fall to half the best is a collapse, not noise.
DEFAULT_GUARD_PGD_STEPS = 5
DEFAULT_GUARD_DROP = 0.5

# The initial posterior std of the Bayesian defenses, measured (not the paper's sigma_0): see
# the comment on ``training.recipe.DEFENSE_DEFAULTS``.
INIT_S = 0.002

# The paper's eps grids (Sec. 5): CIFAR-10 and STL-10 up to 0.07, ImageNet-143 ("folder") 0.02.
_BAYESIAN = ("bnn", "adv_bnn")
_ADVERSARIAL = ("adv", "adv_bnn")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images, how many, and the held-out validation split."""

    dataset: str = setting("cifar10", "Dataset.", choices=data.DATASETS)
    data_dir: str | None = setting(
        None,
        "Local data: a CIFAR-10 directory (binary or python layout, or its .tar.gz), STL-10's "
        "stl10_binary directory (or one holding it), an image folder root "
        "(root/train/<class>/..., root/val/<class>/...), or the tfds data_dir.",
    )
    download: bool = setting(
        True,
        "cifar10 and stl10 without local files: tensorflow-datasets downloads and prepares "
        "them on first use (--nodownload: only a prepared store is read).",
    )
    image_size: int | None = setting(
        None, "Image side for --dataset=folder (default 64).", recipe=True
    )
    max_train_examples: int | None = setting(None, "Use only the first N training images.")
    max_test_examples: int | None = setting(None, "Use only the first N test images.")
    validation_examples: int = setting(
        0, "Hold out the last N training images as a validation split."
    )


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """The architecture, and the prior, posterior and noise of its stochastic layers."""

    model: str = setting(
        "vgg16", "Architecture (default per dataset).", choices=models.ARCHITECTURES, recipe=True
    )
    width_multiplier: float = setting(1.0, "Scales every conv width (> 0).")
    posterior: str = setting(
        "reparameterization", "Estimator.", choices=POSTERIORS, applies_to=_BAYESIAN
    )
    sigma_0: float = setting(
        0.05, "Prior std (default: the paper's per dataset).", applies_to=_BAYESIAN, recipe=True
    )
    init_s: float = setting(
        INIT_S,
        "Initial posterior std; s starts at log(init_s) (default 0.002).",
        applies_to=_BAYESIAN,
        recipe=True,
    )
    noise_init: float = setting(
        0.2, "RSE: std of the noise before the first conv.", applies_to=("rse",)
    )
    noise_inner: float = setting(
        0.1, "RSE: std of the noise before the other convs.", applies_to=("rse",)
    )


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """The defense, and the weight and scope of its KL term (eq. 13)."""

    defense: str = setting("adv_bnn", "Defense to train.", choices=models.DEFENSES)
    alpha: float = setting(
        1.0,
        "KL weight: loss = CE + alpha / N_train * KL (>= 0; default per dataset).",
        applies_to=_BAYESIAN,
        recipe=True,
    )
    kl_scope: str = setting(
        "all",
        "KL of the loss: all Bayesian layers (eq. 13) or the classifier's alone (the reference's).",
        choices=KL_SCOPES,
        applies_to=_BAYESIAN,
    )
    kl_warmup_epochs: float = setting(
        0.0, "Ramp the KL weight linearly from 0 over this many epochs.", applies_to=_BAYESIAN
    )


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The L-inf attack that adversarial training trains on, and the catastrophic-overfitting
    guard of the single-step attacks (``training/guard.py``)."""

    train_eps: float = setting(
        8.0 / 256.0,
        "L-inf training radius in [0, 1] pixel scale (default per dataset).",
        recipe=True,
    )
    train_pgd_steps: int = setting(10, "PGD steps while training (>= 1).", applies_to=_ADVERSARIAL)
    pgd_step_size: float | None = setting(
        None, "PGD step size (default 2.5 * eps / steps).", applies_to=_ADVERSARIAL
    )
    random_start: bool = setting(
        False, "Start PGD at a random point of the eps-ball.", applies_to=_ADVERSARIAL
    )
    train_attack: str = setting(
        "pgd",
        "Training attack: pgd (PGD-train_pgd_steps), fgsm_rs (one FGSM step of "
        "fgsm_step_scale * eps from a uniform random start, Wong et al. 2020) or free (each "
        "batch replayed free_replays times, the perturbation carried over, Shafahi et al. 2019; "
        "the run then has ceil(epochs / free_replays) epochs).",
        choices=TRAIN_ATTACKS,
        applies_to=_ADVERSARIAL,
    )
    fgsm_step_scale: float | None = setting(
        None,
        "fgsm_rs step size in units of eps (> 0; default 1.25); fgsm_rs only.",
        applies_to=_ADVERSARIAL,
    )
    free_replays: int | None = setting(
        None, "free: replays m of each batch (>= 1; default 8); free only.", applies_to=_ADVERSARIAL
    )
    guard_examples: int | None = setting(
        None,
        "Catastrophic-overfitting guard: PGD accuracy on this many fixed training images after "
        "each epoch; a collapse stops the run at its best epoch (0: off; default 256 for "
        "fgsm_rs and free, 0 for pgd).",
        applies_to=_ADVERSARIAL,
    )
    guard_pgd_steps: int | None = setting(
        None,
        "PGD steps of the guard's attack (>= 1; default 5, Wong et al.'s); guard on only.",
        applies_to=_ADVERSARIAL,
    )
    guard_drop: float | None = setting(
        None,
        "The guard fires when its accuracy falls below guard_drop * its best (in (0, 1); "
        "default 0.5) and by more than 3 binomial standard errors; guard on only.",
        applies_to=_ADVERSARIAL,
    )

    @property
    def step_size(self) -> float:
        """PGD step size: the given one, else the rule of ``attacks.default_step_size``."""
        if self.pgd_step_size is not None:
            return self.pgd_step_size
        return attacks.default_step_size(self.train_eps, self.train_pgd_steps)

    @property
    def fgsm_step(self) -> float:
        """The fgsm_rs step in pixel scale: ``fgsm_step_scale * train_eps`` (scale 1.25 unset)."""
        scale = DEFAULT_FGSM_STEP_SCALE if self.fgsm_step_scale is None else self.fgsm_step_scale
        return scale * self.train_eps

    @property
    def replays(self) -> int:
        """Optimizer steps per batch: ``free_replays`` (8 unset) for free, else 1."""
        if self.train_attack != "free":
            return 1
        return DEFAULT_FREE_REPLAYS if self.free_replays is None else self.free_replays

    @property
    def guard_size(self) -> int:
        """Images the guard attacks: ``guard_examples``, else 256 (fgsm_rs, free) or 0 (pgd)."""
        if self.guard_examples is not None:
            return self.guard_examples
        return 0 if self.train_attack == "pgd" else DEFAULT_GUARD_EXAMPLES

    @property
    def guard_steps(self) -> int:
        """The guard's PGD steps: ``guard_pgd_steps``, else 5."""
        return DEFAULT_GUARD_PGD_STEPS if self.guard_pgd_steps is None else self.guard_pgd_steps

    @property
    def guard_fraction(self) -> float:
        """The guard's collapse ratio: ``guard_drop``, else 0.5."""
        return DEFAULT_GUARD_DROP if self.guard_drop is None else self.guard_drop


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer, its schedule's length and the batch."""

    epochs: int = setting(200, "Total epochs (default per dataset); stages scale.", recipe=True)
    batch_size: int = setting(128, "Global batch size.")
    optimizer: str = setting(
        "adam",
        "Optimizer (default: adam for bnn and adv_bnn, sgd for the others, as the reference).",
        choices=OPTIMIZERS,
        recipe=True,
    )
    learning_rate: float = setting(
        1e-3,
        "Initial learning rate (> 0; default: 1e-4 for bnn, 1e-3 for adv_bnn, 0.01 else).",
        recipe=True,
    )
    momentum: float = setting(0.9, "SGD momentum, or Adam's beta_1 (in [0, 1)).")
    weight_decay: float = setting(
        0.0,
        "Coupled L2 (PyTorch's weight_decay) on non-Bayesian weights (default: 5e-4 for plain, "
        "adv and rse; 0 for bnn and adv_bnn, whose regularizer is the KL).",
        recipe=True,
    )


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """The evaluation after each epoch, the progress lines and the SavedModel's ensemble."""

    eval_num_samples: int = setting(10, "Weight draws in the test ensemble (eq. 18).")
    eval_robust_examples: int = setting(
        0, "If > 0, PGD test accuracy on this many test images per epoch."
    )
    eval_pgd_steps: int = setting(20, "PGD steps of the per-epoch robust evaluation.")
    eval_split: str = setting("test", "Split of the per-epoch evaluation.", choices=EVAL_SPLITS)
    export_num_samples: int = setting(10, "Weight draws averaged by the SavedModel.")
    log_every_secs: float = setting(
        60.0,
        "When stdout is not a terminal: a progress line (step, ETA, loss, CE and KL terms, "
        "images/s) every this many seconds (> 0); a terminal shows a progress bar instead.",
    )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Devices, precision, seeds, checkpoints and recovery."""

    checkpoint_every_steps: int = setting(
        0, "Also checkpoint every N steps within an epoch (0: off)."
    )
    keep_checkpoints: int = setting(3, "Checkpoints to keep.")
    max_nonfinite_retries: int = setting(
        3, "Rollbacks to the last checkpoint after a non-finite loss or gradient before stopping."
    )
    deterministic: bool = setting(
        False,
        "TF op determinism: a resumed run matches an uninterrupted one bit for bit (same machine).",
    )
    seed: int = setting(0, "Seed of the weights, the draws and the data order.")
    strategy: str = setting("default", "Distribution strategy.", choices=STRATEGIES)
    precision: str = setting("float32", "Compute precision.", choices=PRECISIONS)
    jit_compile: bool = setting(False, "Compile the train step with XLA.")


@dataclasses.dataclass(frozen=True)
class TrainConfig(FlatConfig):
    """Everything a training run needs: its model_dir and the seven sections.

    The defaults are those of CIFAR-10 and Adv-BNN; ``training.recipe_defaults(dataset,
    defense)`` gives them for the other datasets and defenses.
    """

    model_dir: str
    data: DataConfig = section(DataConfig)
    network: NetworkConfig = section(NetworkConfig)
    objective: ObjectiveConfig = section(ObjectiveConfig)
    attack: AttackConfig = section(AttackConfig)
    optim: OptimConfig = section(OptimConfig)
    monitor: MonitorConfig = section(MonitorConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)

    def validate(self) -> None:
        """Raises ValueError naming the first invalid field (by its path) and its range."""
        for setting_ in settings_of(TrainConfig):
            if setting_.choices is not None:
                validation.choice(setting_.path, self.get(setting_.path), setting_.choices)
        defense = self.objective.defense
        if self.optim.weight_decay and models.is_bayesian(defense):
            raise ValueError(
                f"optim.weight_decay {self.optim.weight_decay} applies to non-Bayesian weights, "
                f"and defense {defense!r} has none (its KL term is the regularizer): set it to 0"
            )
        if self.monitor.eval_split == "validation" and not self.data.validation_examples:
            raise ValueError("monitor.eval_split 'validation' needs data.validation_examples > 0")
        for path in ("network.width_multiplier", "network.sigma_0", "network.init_s"):
            validation.positive(path, self.get(path))
        validation.positive("optim.learning_rate", self.optim.learning_rate)
        validation.positive("monitor.log_every_secs", self.monitor.log_every_secs)
        for path in (
            "objective.alpha",
            "network.noise_init",
            "network.noise_inner",
            "optim.weight_decay",
            "objective.kl_warmup_epochs",
        ):
            validation.non_negative(path, self.get(path))
        validation.unit_interval("attack.train_eps", self.attack.train_eps)
        if self.attack.pgd_step_size is not None:
            validation.unit_interval(
                "attack.pgd_step_size", self.attack.pgd_step_size, open_low=True
            )
        validation.number("optim.momentum", self.optim.momentum, low=0, high=1, high_open=True)
        minimums = {
            "optim.epochs": 1,
            "optim.batch_size": 1,
            "attack.train_pgd_steps": 1,
            "monitor.eval_num_samples": 1,
            "monitor.eval_pgd_steps": 1,
            "monitor.export_num_samples": 1,
            "runtime.keep_checkpoints": 1,
            "runtime.max_nonfinite_retries": 0,
            "monitor.eval_robust_examples": 0,
            "runtime.checkpoint_every_steps": 0,
            "data.validation_examples": 0,
            "runtime.seed": 0,
        }
        for path, minimum in minimums.items():
            validation.integer(path, self.get(path), minimum=minimum)
        for path in ("data.max_train_examples", "data.max_test_examples", "data.image_size"):
            validation.optional_integer(path, self.get(path), minimum=1)
        self._validate_train_attack()
        if self.data.dataset == "folder" and self.data.image_size is None:
            raise ValueError("data.image_size is required for dataset 'folder'")

    def _validate_train_attack(self) -> None:
        """The training attack's settings: each given only where it is read, in range."""
        attack, defense = self.attack, self.objective.defense
        if attack.train_attack != "pgd" and defense not in _ADVERSARIAL:
            raise ValueError(
                f"attack.train_attack {attack.train_attack!r} applies to defense 'adv' or "
                f"'adv_bnn' only; defense {defense!r} trains on clean images"
            )
        only_for = {
            "pgd_step_size": ("pgd", attack.pgd_step_size is not None),
            "random_start": ("pgd", attack.random_start),
            "fgsm_step_scale": ("fgsm_rs", attack.fgsm_step_scale is not None),
            "free_replays": ("free", attack.free_replays is not None),
        }
        for name, (wanted, given) in only_for.items():
            if given and attack.train_attack != wanted:
                raise ValueError(
                    f"attack.{name} {getattr(attack, name)!r} applies to train_attack "
                    f"{wanted!r} only; train_attack is {attack.train_attack!r}"
                )
        if attack.fgsm_step_scale is not None:
            validation.positive("attack.fgsm_step_scale", attack.fgsm_step_scale)
        validation.optional_integer("attack.free_replays", attack.free_replays, minimum=1)
        validation.optional_integer("attack.guard_examples", attack.guard_examples, minimum=0)
        for name in ("guard_pgd_steps", "guard_drop"):
            value = getattr(attack, name)
            if value is not None and attack.guard_size == 0:
                raise ValueError(
                    f"attack.{name} {value!r} applies only with the guard on; it is off "
                    f"(guard_examples {attack.guard_size}, train_attack {attack.train_attack!r})"
                )
        validation.optional_integer("attack.guard_pgd_steps", attack.guard_pgd_steps, minimum=1)
        if attack.guard_drop is not None:
            validation.number(
                "attack.guard_drop", attack.guard_drop, low=0, high=1, low_open=True, high_open=True
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Reads ``to_json``'s nested form, or the flat form of runs written before sections."""
        values = json.loads(text)
        sections = {f.name for f in dataclasses.fields(cls) if "section" in f.metadata}
        if not sections & set(values):
            return cls.from_flat(**_known(values, cls.flat_names()))
        flat = {k: v for k, v in values.items() if k not in sections}
        for name in sections & set(values):
            flat.update(values[name])
        return cls.from_flat(**_known(flat, cls.flat_names()))


def _known(values: dict, names) -> dict:
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"config.json has unknown fields {unknown}")
    return values
