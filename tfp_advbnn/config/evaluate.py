"""EvalConfig: the settings of one evaluation (its protocol, attacks, eps grid, ensemble, batches).

Two protocols fill in what is not set:

- ``paper``: the paper's evaluation, PGD-20 (L-inf) with one weight draw per attack step,
  scored by the ensemble of ``num_samples`` draws.
- ``adaptive``: AutoAttack's version for randomized defenses (Croce & Hein 2020,
  ``version='rand'``): APGD-CE then APGD-DLR, 100 iterations each, the gradient averaged over 20
  draws (EOT) at every step of a stochastic model, and an example robust only if it survives
  every attack; Square (black-box) checks the white-box result.
"""

from __future__ import annotations

import dataclasses

from tfp_advbnn import attacks, validation
from tfp_advbnn.config.declare import FlatConfig, setting

DEFAULT_EPS_GRIDS = {
    "cifar10": tuple(round(0.005 * i, 3) for i in range(15)),
    "stl10": tuple(round(0.005 * i, 3) for i in range(15)),
    "folder": tuple(round(0.002 * i, 3) for i in range(11)),
}
# The adaptive protocol costs ~4,000 gradient evaluations per image and radius, so it runs at
# the radii results are quoted at: the paper's 0.035 and the common 8/255 (ImageNet-143: the
# middle of its grid and 4/255).
ADAPTIVE_EPS_GRIDS = {
    "cifar10": (0.0, 0.035, 8 / 255),
    "stl10": (0.0, 0.035, 8 / 255),
    "folder": (0.0, 0.01, 4 / 255),
}
PROTOCOLS = ("paper", "adaptive")
# What each protocol fills in for a setting left unset (None). ``num_eot_samples`` also depends
# on whether the model is stochastic: see ``EvalConfig.eot_samples_for``.
PROTOCOL_DEFAULTS = {
    "paper": {"attack": "pgd_linf", "attack_steps": 20, "square_examples": 0},
    "adaptive": {"attack_steps": 100, "square_examples": 100},
}
# AutoAttack-rand's EOT draws; also the default of APGD on a stochastic model under ``paper``,
# whose step-size rule compares losses that single draws make noise.
ADAPTIVE_EOT_SAMPLES = 20
# How far a --square_eps value may lie from the grid radius it names (grids are 0.002 apart).
SQUARE_EPS_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class EvalConfig(FlatConfig):
    """Settings of one evaluation; validated on construction (ValueError naming the field).

    Settings left None take the protocol's value (``PROTOCOL_DEFAULTS``) on construction, except
    ``num_eot_samples``, which is resolved per model (``eot_samples_for``). ``pgd_step_size``
    None means ``attacks.default_step_size`` per eps (Madry et al.); APGD adapts its own step
    and FGSM steps by eps. Radii are in [0, 1] pixel scale.

    Examples:
      >>> EvalConfig().attack, EvalConfig().attack_steps
      ('pgd_linf', 20)
      >>> adaptive = EvalConfig(protocol="adaptive")
      >>> adaptive.attack_names, adaptive.attack_steps
      (('apgd', 'apgd_dlr'), 100)
      >>> adaptive.eot_samples_for("apgd", stochastic=True)
      20
    """

    protocol: str = setting(
        "paper",
        "paper: PGD-20, one draw per step (the paper's Table 1); adaptive: APGD-CE + APGD-DLR, "
        "100 iterations, EOT 20 on stochastic models, worst case per example, Square check.",
        choices=PROTOCOLS,
    )
    attack: str | None = setting(
        None,
        "The white-box attack of --protocol=paper (default pgd_linf); --protocol=adaptive runs "
        "--adaptive_attacks instead.",
        choices=attacks.ATTACKS,
    )
    adaptive_attacks: tuple[str, ...] = setting(
        ("apgd", "apgd_dlr"),
        "Comma-separated attacks of --protocol=adaptive, run in order; robust = survives all.",
    )
    eps_grid: tuple[float, ...] = setting(
        DEFAULT_EPS_GRIDS["cifar10"],
        "Comma-separated radii in [0, 1] pixel scale (L2 norms for pgd_l2 and cw). Default: the "
        "paper's grid for the run's dataset (0, 0.005, ..., 0.07; ImageNet-143: 0, 0.002, ..., "
        "0.02); --protocol=adaptive: 0, 0.035, 8/255.",
    )
    attack_steps: int | None = setting(
        None, "Iterations of PGD / APGD (C&W: Adam steps), >= 1; default 20 (adaptive: 100)."
    )
    pgd_step_size: float | None = setting(
        None, "PGD step size in (0, 1]; default 2.5 * eps / steps."
    )
    random_restarts: int = setting(
        0, "Extra attack runs from random starts; robust = survives all (>= 0)."
    )
    num_eot_samples: int | None = setting(
        None,
        "Weight draws averaged per attack gradient (EOT), >= 1. Default on a stochastic model: "
        "1 as the paper for PGD / FGSM / C&W, 20 for APGD and under --protocol=adaptive; 1 on a "
        "deterministic one.",
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
    square_examples: int | None = setting(
        None,
        "Examples the Square (black-box) check attacks, 0: no check; default 0 (adaptive: 100). "
        'Needs pip install -e ".[attacks]".',
    )
    square_queries: int = setting(1000, "Queries of the Square attack per example, >= 1.")
    square_eps: tuple[float, ...] | None = setting(
        None,
        "Comma-separated radii of the Square check, each a non-zero radius of --eps_grid to 1e-4 "
        "(0.0314 names 8/255; default: the middle non-zero eps of the grid, where the "
        "gradient-masking checks attack).",
    )
    cascade: bool = setting(
        False,
        "Attack as AutoAttack does: each attack, and each larger eps, only on the examples still "
        "robust (an example fooled at a smaller eps is fooled at a larger one). The same "
        "robust_accuracy for a fraction of the cost; accuracy then equals robust_accuracy (a "
        "clean-misclassified example is not attacked) and each attack's own figures are "
        "cumulative. Needs --nochecks.",
    )

    def __post_init__(self):
        validation.choice("protocol", self.protocol, PROTOCOLS)
        if self.protocol == "adaptive" and self.attack is not None:
            raise ValueError(
                f"attack: protocol=adaptive runs adaptive_attacks {list(self.adaptive_attacks)}; "
                f"attack={self.attack} applies to protocol=paper"
            )
        for name, value in PROTOCOL_DEFAULTS[self.protocol].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.attack is not None:
            attacks.get(self.attack)
        names = tuple(self.adaptive_attacks)
        if not names:
            raise ValueError("adaptive_attacks must name at least one attack")
        for name in names:
            validation.choice("adaptive_attacks", name, attacks.ATTACKS)
        if len({attacks.get(name).norm for name in names}) > 1:
            raise ValueError(f"adaptive_attacks must share one norm, got {list(names)}")
        object.__setattr__(self, "adaptive_attacks", names)
        object.__setattr__(self, "eps_grid", validation.unit_values("eps_grid", self.eps_grid))
        minimums = {
            "attack_steps": 1,
            "random_restarts": 0,
            "num_samples": 1,
            "batch_size": 1,
            "seed": 0,
            "check_examples": 1,
            "check_eot_samples": 2,
            "square_examples": 0,
            "square_queries": 1,
        }
        for name, minimum in minimums.items():
            validation.integer(name, getattr(self, name), minimum=minimum)
        validation.optional_integer("num_eot_samples", self.num_eot_samples, minimum=1)
        validation.optional_integer("max_examples", self.max_examples, minimum=1)
        if self.pgd_step_size is not None:
            validation.unit_interval("pgd_step_size", self.pgd_step_size, open_low=True)
        validation.non_negative("cw_c", self.cw_c)
        if self.square_eps is not None:
            # A radius typed to 4 digits (0.0314 for 8/255) names the grid's radius it rounds.
            radii = tuple(
                next((g for g in self.eps_grid if abs(g - e) <= SQUARE_EPS_TOLERANCE), e)
                for e in validation.unit_values("square_eps", self.square_eps)
            )
            outside = [e for e in radii if e not in self.eps_grid or e == 0.0]
            if outside:
                raise ValueError(
                    f"square_eps must be non-zero radii of eps_grid {list(self.eps_grid)}, got "
                    f"{list(radii)}"
                )
            if self.square_examples == 0:
                raise ValueError(
                    f"square_eps={list(radii)} sets the radii of the Square check, which "
                    "square_examples=0 turns off; give square_examples > 0"
                )
            object.__setattr__(self, "square_eps", radii)
        if not isinstance(self.cascade, bool):
            raise ValueError(f"cascade must be True or False, got {self.cascade!r}")

    @property
    def attack_names(self) -> tuple[str, ...]:
        """The attacks the protocol runs, in order: the paper's one, or the adaptive ones."""
        return self.adaptive_attacks if self.protocol == "adaptive" else (self.attack,)

    @property
    def label(self) -> str:
        """A short name of what runs, for file names: the attack, or "adaptive"."""
        return "adaptive" if self.protocol == "adaptive" else self.attack

    @property
    def norm(self) -> str:
        return attacks.get(self.attack_names[0]).norm

    def eot_samples_for(self, attack: str, stochastic: bool) -> int:
        """Draws averaged per gradient of ``attack``: ``num_eot_samples``, else the default.

        A deterministic model gets 1 (every draw is the same, more would only cost time); a
        stochastic one 20 under the adaptive protocol and for APGD (whose step-size rule needs
        losses that are not single-draw noise), else 1 as the paper.
        """
        if self.num_eot_samples is not None:
            return self.num_eot_samples
        return default_eot_samples(self.protocol, attack, stochastic)


def default_eot_samples(protocol: str, attack: str, stochastic: bool) -> int:
    """EOT draws when ``num_eot_samples`` is unset: see ``EvalConfig.eot_samples_for``."""
    if stochastic and (protocol == "adaptive" or attack.startswith("apgd")):
        return ADAPTIVE_EOT_SAMPLES
    return 1
