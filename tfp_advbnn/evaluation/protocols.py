"""The named settings of an evaluation, and the one lookup from an attack's name to its call.

Evaluation names its attacks by the names of the attack registry (``attacks.ATTACKS``);
``AttackSpec`` is one setting of one of them (hashable, so it keys the engine's cache of traced
functions), ``attack_plan`` the attacks a protocol runs on one model, and ``craft`` the only
place that turns a spec into a call of the registered attack. The eps grids of the paper and of
the adaptive protocol, the display names of defenses and the radius the diagnoses attack at
live here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from tfp_advbnn import attacks, validation
from tfp_advbnn.config import ADAPTIVE_EPS_GRIDS, DEFAULT_EPS_GRIDS, EvalConfig

MODES = ("sweep", "compare", "transfer", "ensemble_sweep", "steps_sweep", "detect")
DEFENSE_NAMES = {
    "plain": "No defense",
    "bnn": "BNN",
    "adv": "Adv. training",
    "rse": "RSE",
    "adv_bnn": "Adv-BNN",
}


def default_eps_grid(dataset: str, protocol: str = "paper") -> tuple[float, ...]:
    """The eps grid of ``protocol`` for ``dataset`` ("cifar10", "stl10", "folder": ImageNet-143).

    The paper's full grid, or the two radii results are quoted at for the adaptive protocol.
    """
    grids = ADAPTIVE_EPS_GRIDS if protocol == "adaptive" else DEFAULT_EPS_GRIDS
    return grids[validation.choice("dataset", dataset, sorted(grids))]


# The reference's transfer experiment (transfer_attack.py of xuanqing94/BayesianDefense) attacks
# at 0.06 on CIFAR-10 and STL-10; ImageNet-143 has no transfer experiment there.
TRANSFER_EPS = {"cifar10": 0.06, "stl10": 0.06}
# The reference's Linf PGD takes steps of 0.007 whatever the radius and the step count: its
# Fig. 4 (right) adds steps at that size, so more steps make a longer path.
REFERENCE_STEP_SIZE = 0.007


def diagnosis_eps(eps_values: Sequence[float]) -> float | None:
    """The radius the checks attack at: the middle non-zero eps (0.035 on the CIFAR-10 grid).

    Also the default radius of transfer and of the Fig. 4 ablations; None when no eps is > 0.
    """
    nonzero = sorted(e for e in eps_values if e > 0)
    if not nonzero:
        return None
    return nonzero[(len(nonzero) - 1) // 2]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack setting; hashable, so it keys the cache of traced functions.

    Attributes:
      attack: one of ``attacks.ATTACKS``.
      num_steps: iterations (PGD and APGD steps, C&W's Adam steps; FGSM ignores it).
      num_eot_samples: model calls averaged per attack gradient.
      step_size: PGD step size in pixel scale; None: ``2.5 * eps / num_steps``.
      cw_c: weight of the C&W margin term.
      selection_samples: draws of APGD's ensemble pick of its returned point.
    """

    attack: str
    num_steps: int
    num_eot_samples: int
    step_size: float | None
    cw_c: float
    selection_samples: int

    @classmethod
    def of(cls, config: EvalConfig, *, stochastic: bool, **overrides) -> AttackSpec:
        """The spec of ``config``'s (first) attack on a model, with some fields replaced.

        ``num_eot_samples`` is ``config.eot_samples_for`` the attack (after overrides) unless
        overridden.
        """
        values = dict(
            attack=config.attack_names[0],
            num_steps=config.attack_steps,
            step_size=config.pgd_step_size,
            cw_c=config.cw_c,
            selection_samples=config.num_samples,
        )
        values.update(overrides)
        values.setdefault("num_eot_samples", config.eot_samples_for(values["attack"], stochastic))
        return cls(**values)

    def describe(self, random_restarts: int = 0) -> str:
        """E.g. "APGD-CE (L∞), 100 steps, EOT 20"."""
        return attacks.get(self.attack).describe(
            num_steps=self.num_steps,
            num_eot_samples=self.num_eot_samples,
            random_restarts=random_restarts,
        )

    def settings(self) -> dict:
        """What ran, for reports: the attack, its steps, EOT draws and step size."""
        return {
            "attack": self.attack,
            "num_steps": self.num_steps,
            "num_eot_samples": self.num_eot_samples,
            "step_size": self.step_size,
            "description": self.describe(),
        }

    @property
    def norm(self) -> str:
        return attacks.get(self.attack).norm

    @property
    def thresholded(self) -> bool:
        """Unbounded attacks are cut at eps when scored (see the package docstring)."""
        return not attacks.get(self.attack).bounded

    def step_size_for(self, eps: float) -> float:
        if self.step_size is not None:
            return self.step_size
        if eps == 0.0:
            # The projection onto a radius-0 ball returns x whatever the step; PGD wants > 0.
            return 1.0
        return attacks.default_step_size(eps, self.num_steps)


def attack_plan(config: EvalConfig, stochastic: bool) -> tuple[AttackSpec, ...]:
    """The attacks ``config``'s protocol runs on a model, in order.

    ``paper``: its one attack; ``adaptive``: each of ``config.adaptive_attacks``. Each gets
    ``config.eot_samples_for`` draws per gradient (20 on a stochastic model under ``adaptive``).
    """
    return tuple(
        AttackSpec.of(config, stochastic=stochastic, attack=name) for name in config.attack_names
    )


def craft(
    spec: AttackSpec,
    model_fn: Callable,
    images,
    labels,
    *,
    eps,
    step_size,
    seed,
    random_start: bool,
    selection_samples: int,
):
    """Adversarial images of ``spec``'s attack: float32 [B, H, W, 3] in [0, 1].

    Args:
      spec: the attack and its settings.
      model_fn: images -> logits, one draw per call.
      images, labels: float32 [B, H, W, 3] in [0, 1] and int32 [B].
      eps, step_size: float32 scalars in pixel scale (C&W has no budget and ignores both).
      seed: int64 [2], the stateless seed of random starts.
      random_start: PGD starts from a uniform point of the eps-ball, not from ``images``.
      selection_samples: APGD's ensemble pick of its returned point (0: no pick).
    """
    return attacks.get(spec.attack)(
        model_fn,
        images,
        labels,
        eps=eps,
        step_size=step_size,
        num_steps=spec.num_steps,
        random_start=random_start,
        num_eot_samples=spec.num_eot_samples,
        selection_samples=selection_samples,
        seed=seed,
        c=spec.cw_c,
    )
