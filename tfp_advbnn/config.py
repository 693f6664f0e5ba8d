"""The settings of a run as nested frozen dataclasses: each setting is declared once, here.

A ``TrainConfig`` is its ``model_dir`` and seven sections: ``data``, ``network``, ``objective``
(the defense and its KL term), ``attack`` (the training attack), ``optim``, ``monitor``
(per-epoch evaluation and export) and ``runtime``. An ``EvalConfig`` holds the settings of one
evaluation. Every field is declared with ``setting(default, help, ...)``: its help text, its
choices, the defenses it applies to and whether the recipe (``training.recipe_defaults``) gives
its default live in the field's metadata. The command-line flags (``trainers/flags.py``) are
generated from these declarations, so no setting is written a second time.

Flat names: a field's name is unique across the sections of its config and is also its flag
name (``--alpha`` sets ``objective.alpha``). ``TrainConfig.from_flat(alpha=0.1, ...)`` and
``config.replace(alpha=0.1)`` take flat names; ``config.flat()`` gives them. Errors of
``validate()`` name the field by its path (``objective.alpha``); ``trainers/flags.py`` turns
the path into the flag. Units: radii and step sizes are in [0, 1] pixel scale;
``kl_warmup_epochs`` is in epochs (fractions allowed).

Examples:
    >>> config = TrainConfig.from_flat(model_dir="runs/a", defense="bnn", alpha=0.1)
    >>> config.objective.alpha
    0.1
    >>> config.replace(epochs=3).optim.epochs
    3
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from tfp_advbnn import attacks, data, models, validation

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
POSTERIORS = ("reparameterization", "flipout")
EVAL_SPLITS = ("test", "validation")
KL_SCOPES = ("all", "classifier")

# The initial posterior std of the Bayesian defenses, measured (not the paper's sigma_0): see
# the comment on ``training.recipe.DEFENSE_DEFAULTS``.
INIT_S = 0.002

# The paper's eps grids (Sec. 5): CIFAR-10 and STL-10 up to 0.07, ImageNet-143 ("folder") 0.02.
DEFAULT_EPS_GRIDS = {
    "cifar10": tuple(round(0.005 * i, 3) for i in range(15)),
    "stl10": tuple(round(0.005 * i, 3) for i in range(15)),
    "folder": tuple(round(0.002 * i, 3) for i in range(11)),
}

_BAYESIAN = ("bnn", "adv_bnn")
_ADVERSARIAL = ("adv", "adv_bnn")


def setting(default, help: str, *, choices=None, applies_to=None, recipe: bool = False):
    """Declares one setting: a dataclass field whose metadata the flags are generated from.

    Args:
      default: the value when nothing sets it (for ``recipe`` settings, CIFAR-10's Adv-BNN one).
      help: one line for ``--help``.
      choices: the accepted values of a string setting (the flag is then an enum).
      applies_to: the defenses that read the setting; None: all of them.
      recipe: the flag's default is the recipe's value for the run's dataset and defense.
    """
    metadata = {"help": help, "choices": choices, "applies_to": applies_to, "recipe": recipe}
    return dataclasses.field(default=default, metadata=metadata)


def _section(cls):
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


@dataclasses.dataclass(frozen=True)
class Setting:
    """One declared setting as seen from outside: its path, flat name and declaration."""

    path: str
    name: str
    field: dataclasses.Field

    @property
    def help(self) -> str:
        return self.field.metadata["help"]

    @property
    def choices(self):
        return self.field.metadata["choices"]

    @property
    def applies_to(self):
        return self.field.metadata["applies_to"]

    @property
    def recipe(self) -> bool:
        return self.field.metadata["recipe"]

    @property
    def default(self):
        return self.field.default

    @property
    def type(self) -> str:
        """The annotation as written, e.g. ``"int | None"`` or ``"tuple[float, ...]"``."""
        return str(self.field.type)


def settings_of(cls, prefix: str = "") -> Iterator[Setting]:
    """Every declared setting of the config class ``cls``, sections flattened, in order."""
    for field in dataclasses.fields(cls):
        section = field.metadata.get("section")
        if section is not None:
            yield from settings_of(section, f"{prefix}{field.name}.")
        elif "help" in field.metadata:
            yield Setting(f"{prefix}{field.name}", field.name, field)


class _Flat:
    """Flat-name construction and access for a config class (sections optional)."""

    @classmethod
    def flat_names(cls) -> tuple[str, ...]:
        return tuple(s.name for s in settings_of(cls)) + cls._plain_names()

    @classmethod
    def _plain_names(cls) -> tuple[str, ...]:
        """Fields declared without ``setting`` (a TrainConfig's model_dir)."""
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if "help" not in f.metadata and "section" not in f.metadata
        )

    @classmethod
    def path_of(cls, name: str) -> str:
        """The path of the flat name ``name`` (``"alpha"`` -> ``"objective.alpha"``)."""
        for setting_ in settings_of(cls):
            if setting_.name == name:
                return setting_.path
        return name

    @classmethod
    def from_flat(cls, **values):
        """The config whose fields take ``values`` (flat names); the others keep defaults."""
        unknown = sorted(set(values) - set(cls.flat_names()))
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {unknown}")
        arguments = {}
        for field in dataclasses.fields(cls):
            section = field.metadata.get("section")
            if section is not None:
                names = {f.name for f in dataclasses.fields(section)}
                arguments[field.name] = section(**{k: v for k, v in values.items() if k in names})
            elif field.name in values:
                arguments[field.name] = values[field.name]
        return cls(**arguments)

    def flat(self) -> dict:
        """Every field by its flat name."""
        values = {name: getattr(self, name) for name in self._plain_names()}
        for setting_ in settings_of(type(self)):
            values[setting_.name] = self.get(setting_.path)
        return values

    def get(self, path: str):
        """The value at ``path`` (``"objective.alpha"``) or of a flat name."""
        value = self
        for part in self.path_of(path).split("."):
            value = getattr(value, part)
        return value

    def replace(self, **values):
        """A copy with the fields of ``values`` (flat names) replaced."""
        return type(self).from_flat(**{**self.flat(), **values})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images, how many, and the held-out validation split."""

    dataset: str = setting("cifar10", "Dataset.", choices=data.DATASETS)
    data_dir: str | None = setting(
        None,
        "Local data: a CIFAR-10 directory (binary or python layout, or its .tar.gz), an image "
        "folder root (root/train/<class>/..., root/val/<class>/...), or the tfds data_dir.",
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
    """The L-inf PGD attack that adversarial training trains on."""

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

    @property
    def step_size(self) -> float:
        """PGD step size: the given one, else the rule of ``attacks.default_step_size``."""
        if self.pgd_step_size is not None:
            return self.pgd_step_size
        return attacks.default_step_size(self.train_eps, self.train_pgd_steps)


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
    """The evaluation after each epoch and the ensemble of the exported SavedModel."""

    eval_num_samples: int = setting(10, "Weight draws in the test ensemble (eq. 18).")
    eval_robust_examples: int = setting(
        0, "If > 0, PGD test accuracy on this many test images per epoch."
    )
    eval_pgd_steps: int = setting(20, "PGD steps of the per-epoch robust evaluation.")
    eval_split: str = setting("test", "Split of the per-epoch evaluation.", choices=EVAL_SPLITS)
    export_num_samples: int = setting(10, "Weight draws averaged by the SavedModel.")


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
class TrainConfig(_Flat):
    """Everything a training run needs: its model_dir and the seven sections.

    The defaults are those of CIFAR-10 and Adv-BNN; ``training.recipe_defaults(dataset,
    defense)`` gives them for the other datasets and defenses.
    """

    model_dir: str
    data: DataConfig = _section(DataConfig)
    network: NetworkConfig = _section(NetworkConfig)
    objective: ObjectiveConfig = _section(ObjectiveConfig)
    attack: AttackConfig = _section(AttackConfig)
    optim: OptimConfig = _section(OptimConfig)
    monitor: MonitorConfig = _section(MonitorConfig)
    runtime: RuntimeConfig = _section(RuntimeConfig)

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
        if self.data.dataset == "folder" and self.data.image_size is None:
            raise ValueError("data.image_size is required for dataset 'folder'")

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


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Flat):
    """Settings of one evaluation; validated on construction (ValueError naming the field).

    ``pgd_step_size`` None means ``attacks.default_step_size`` per eps (Madry et al.); APGD
    adapts its own step and FGSM steps by eps. Radii are in [0, 1] pixel scale.
    """

    attack: str = setting("pgd_linf", "The white-box attack.", choices=attacks.ATTACKS)
    eps_grid: tuple[float, ...] = setting(
        DEFAULT_EPS_GRIDS["cifar10"],
        "Comma-separated radii in [0, 1] pixel scale (L2 norms for pgd_l2 and cw). Default: the "
        "paper's grid for the run's dataset (0, 0.005, ..., 0.07; ImageNet-143: 0, 0.002, ..., "
        "0.02).",
    )
    attack_steps: int = setting(20, "Iterations of PGD / APGD (C&W: Adam steps), >= 1.")
    pgd_step_size: float | None = setting(
        None, "PGD step size in (0, 1]; default 2.5 * eps / steps."
    )
    random_restarts: int = setting(
        0, "Extra attack runs from random starts; robust = survives all (>= 0)."
    )
    num_eot_samples: int = setting(
        1, "Weight draws averaged per attack gradient (EOT), >= 1; 1 as the paper; try 10."
    )
    num_samples: int = setting(10, "Weight draws of the ensemble prediction (eq. 18), >= 1.")
    max_examples: int | None = setting(None, "Evaluate on the first N test examples only.")
    batch_size: int = setting(100, "Examples per graph call, >= 1.")
    seed: int = setting(0, "Seed of the random starts and of TensorFlow's global RNG.")
    cw_c: float = setting(1.0, "Weight of the C&W margin term (--attack=cw), >= 0.")
    check_examples: int = setting(500, "Examples the gradient-masking checks run on, >= 1.")
    check_eot_samples: int = setting(
        10, "EOT draws of the multi-draw attack in the EOT check, >= 2."
    )

    def __post_init__(self):
        attacks.get(self.attack)
        object.__setattr__(self, "eps_grid", validation.unit_values("eps_grid", self.eps_grid))
        minimums = {
            "attack_steps": 1,
            "random_restarts": 0,
            "num_eot_samples": 1,
            "num_samples": 1,
            "batch_size": 1,
            "seed": 0,
            "check_examples": 1,
            "check_eot_samples": 2,
        }
        for name, minimum in minimums.items():
            validation.integer(name, getattr(self, name), minimum=minimum)
        validation.optional_integer("max_examples", self.max_examples, minimum=1)
        if self.pgd_step_size is not None:
            validation.unit_interval("pgd_step_size", self.pgd_step_size, open_low=True)
        validation.non_negative("cw_c", self.cw_c)

    @property
    def norm(self) -> str:
        return attacks.get(self.attack).norm
