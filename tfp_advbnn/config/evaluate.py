"""EvalConfig: the settings of one evaluation (the attack, its eps grid, ensemble and batches)."""

from __future__ import annotations

import dataclasses

from tfp_advbnn import attacks, validation
from tfp_advbnn.config.declare import FlatConfig, setting

DEFAULT_EPS_GRIDS = {
    "cifar10": tuple(round(0.005 * i, 3) for i in range(15)),
    "stl10": tuple(round(0.005 * i, 3) for i in range(15)),
    "folder": tuple(round(0.002 * i, 3) for i in range(11)),
}


@dataclasses.dataclass(frozen=True)
class EvalConfig(FlatConfig):
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
