"""The named settings of an evaluation, and the one lookup from an attack's name to its call.

Evaluation names its attacks by the names of the attack registry (``attacks.ATTACKS``);
``AttackSpec`` is one setting of one of them (hashable, so it keys the engine's cache of traced
functions) and ``craft`` the only place that turns a spec into a call of the registered attack.
The eps grids of the paper, the display names of defenses and the radius the diagnoses attack
at live here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from tfp_advbnn import attacks, validation
from tfp_advbnn.config import DEFAULT_EPS_GRIDS, EvalConfig

MODES = ("sweep", "compare", "transfer", "ensemble_sweep", "steps_sweep")
DEFENSE_NAMES = {
    "plain": "No defense",
    "bnn": "BNN",
    "adv": "Adv. training",
    "rse": "RSE",
    "adv_bnn": "Adv-BNN",
}


def default_eps_grid(dataset: str) -> tuple[float, ...]:
    """The paper's eps grid for ``dataset`` ("cifar10", "stl10" or "folder" for ImageNet-143)."""
    return DEFAULT_EPS_GRIDS[validation.choice("dataset", dataset, sorted(DEFAULT_EPS_GRIDS))]


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
    def of(cls, config: EvalConfig, **overrides) -> AttackSpec:
        """The spec of ``config``'s attack, with some fields replaced."""
        values = dict(
            attack=config.attack,
            num_steps=config.attack_steps,
            num_eot_samples=config.num_eot_samples,
            step_size=config.pgd_step_size,
            cw_c=config.cw_c,
            selection_samples=config.num_samples,
        )
        values.update(overrides)
        return cls(**values)

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
