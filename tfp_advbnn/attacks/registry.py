"""The attack registry: from an attack's name to its function, norm, caption and settings.

Evaluation configs and the command lines name an attack by a string (``"pgd_linf"``); this is
the one table that says what each name means. ``get(name)`` returns an ``Attack`` that runs
the attack from one uniform set of settings and describes it for tables and plots; ``ATTACKS``
lists the names. Adding an attack is one entry here.
"""

import dataclasses
import functools
from collections.abc import Callable

from tfp_advbnn import validation
from tfp_advbnn.attacks.apgd import apgd
from tfp_advbnn.attacks.cw import cw_l2
from tfp_advbnn.attacks.pgd import fgsm, pgd

# How an attack searches: one gradient step, repeated projected steps inside the eps-ball, or
# an optimization of distortion plus a margin with no eps bound.
FAMILIES = ("single_step", "iterative", "optimization")

# Every setting a caller may pass to ``Attack.__call__``; each attack takes a subset of them.
SETTINGS = (
    "eps",
    "step_size",
    "num_steps",
    "random_start",
    "num_eot_samples",
    "selection_samples",
    "seed",
    "c",
)


@dataclasses.dataclass(frozen=True)
class Attack:
    """A registered attack: how to run it by name, and how to name it in reports.

    Attributes:
      name: the registry key, e.g. ``"pgd_linf"``.
      function: the attack, ``(model_fn, images, labels, **arguments) -> adversarial images``.
      norm: ``"linf"`` or ``"l2"``: the norm its perturbations are measured in (and, for an
        eps-bounded attack, bounded in).
      display_name: the attack in tables and plot titles, e.g. ``"PGD (L\u221e)"``.
      family: one of ``FAMILIES``.
      settings: the ``SETTINGS`` that ``function`` takes.
      takes_norm: whether ``function`` has a ``norm`` argument; it is then given ``norm``.
    """

    name: str
    function: Callable
    norm: str
    display_name: str
    family: str
    settings: tuple[str, ...]
    takes_norm: bool = False

    @property
    def bounded(self) -> bool:
        """Whether the perturbation stays in the eps-ball (C&W's does not: it takes no eps)."""
        return "eps" in self.settings

    @property
    def takes_steps(self) -> bool:
        """Whether a step count (``num_steps``) sets the attack's length (FGSM has one step)."""
        return "num_steps" in self.settings

    @property
    def takes_step_size(self) -> bool:
        """Whether the attack takes a step size (APGD adapts its own, FGSM steps by eps)."""
        return "step_size" in self.settings

    def __call__(self, model_fn, images, labels, **settings):
        """Runs the attack with the ``settings`` it takes; the others are ignored.

        One call site can thus run any attack with the full set of settings. ``settings`` keys
        must be in ``SETTINGS`` (TypeError otherwise); shapes, dtypes and units are those of
        ``function``.
        """
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown attack settings {unknown}; expected some of {SETTINGS}")
        arguments = {key: value for key, value in settings.items() if key in self.settings}
        if self.takes_norm:
            arguments["norm"] = self.norm
        return self.function(model_fn, images, labels, **arguments)

    def describe(self, *, num_steps: int, num_eot_samples: int = 1, random_restarts: int = 0):
        """The attack and its budget in words, e.g. ``"PGD (L2), 20 steps, EOT 10"``.

        The step count appears for attacks that take one, EOT when it averages more than one
        draw, restarts when there are any.
        """
        parts = [self.display_name]
        if self.takes_steps:
            parts.append(f"{num_steps} steps")
        if num_eot_samples > 1:
            parts.append(f"EOT {num_eot_samples}")
        if random_restarts:
            parts.append(f"{random_restarts} random restart{'s' if random_restarts > 1 else ''}")
        return ", ".join(parts)


_PGD_SETTINGS = ("eps", "step_size", "num_steps", "random_start", "num_eot_samples", "seed")

_REGISTRY = {
    attack.name: attack
    for attack in (
        Attack("pgd_linf", pgd, "linf", "PGD (L\u221e)", "iterative", _PGD_SETTINGS, True),
        Attack("pgd_l2", pgd, "l2", "PGD (L2)", "iterative", _PGD_SETTINGS, True),
        Attack("fgsm", fgsm, "linf", "FGSM", "single_step", ("eps", "num_eot_samples")),
        Attack("cw", cw_l2, "l2", "C&W (L2)", "optimization", ("c", "num_steps")),
        Attack(
            "apgd",
            apgd,
            "linf",
            "APGD-CE (L\u221e)",
            "iterative",
            ("eps", "num_steps", "num_eot_samples", "selection_samples", "seed"),
            True,
        ),
        Attack(
            "apgd_dlr",
            functools.partial(apgd, loss="dlr"),
            "linf",
            "APGD-DLR (L\u221e)",
            "iterative",
            ("eps", "num_steps", "num_eot_samples", "selection_samples", "seed"),
            True,
        ),
    )
}

# The attack names, in the order the command lines list them.
ATTACKS = tuple(_REGISTRY)


def get(name: str) -> Attack:
    """The registered attack called ``name`` (one of ``ATTACKS``).

    Raises:
      ValueError: naming ``name`` and listing ``ATTACKS`` when it is not registered.

    Examples:
        >>> get("pgd_l2").norm
        'l2'
    """
    return _REGISTRY[validation.choice("attack", name, ATTACKS)]
