"""Robustness evaluation: accuracy-vs-eps sweeps, gradient-masking checks, comparisons, transfer.

Every function here takes a ``model_fn``: any callable from float32 images [B, H, W, 3] in
[0, 1] to float32 logits [B, C], where one call is one weight draw of a stochastic model (for a
tf_keras model, ``lambda x: model(x, training=False)``). Predictions are the ensemble of paper
eq. 18, ``models.ensemble_probabilities(model_fn, x, num_samples)``; attacks come from
``tfp_advbnn.attacks``.

Conventions:

- ``eps`` is a radius in the [0, 1] pixel scale: per pixel for the L-inf attacks (``pgd_linf``,
  ``fgsm``, ``apgd``), over the whole example for the L2 ones (``pgd_l2``, ``cw``).
- Accuracies are fractions in [0, 1]. ``mean_distortion`` is the mean over examples of the
  measured norm (L-inf or L2, as the attack) of ``x_adv - x``.
- Work is batched and runs in graph mode: per batch, one ``tf.function`` crafts the adversarial
  images and another scores them with the ensemble. ``eps`` and the step size are passed as
  tensors, so one trace serves every batch and every eps.
- With ``random_restarts = r`` every example is attacked ``1 + r`` times: first from the clean
  image (as the paper's PGD), then ``r`` times from uniform random points of the eps-ball (APGD
  always starts at a random point). An example counts as robust only if the ensemble classifies
  it correctly after every run.
- ``cw`` minimises the distortion without a budget; at radius ``eps`` an example counts as
  attacked only if the C&W image is misclassified and within ``eps`` (otherwise the clean image
  is scored), which turns its single run into a whole accuracy-vs-eps curve.

Reports are plain dicts ready for JSON (``write_json``); ``plot_report`` draws the figure of any
report: accuracy vs eps (paper Fig. 2), transfer heatmaps (Fig. 3), accuracy vs ensemble size
and vs attack steps (Fig. 4).

Modules: ``config`` (EvalConfig), ``protocols`` (attack names, eps grids, the attack lookup),
``engine`` (traced functions and per-example outcomes), ``checks`` (gradient-masking checks),
``sweeps`` (one model; Fig. 4 ablations), ``transfer`` (compare and transfer), ``blackbox``
(Square through ART), ``detection`` (uncertainty as a detector of attacks), ``reports``
(report settings, Markdown, JSON, console text), ``plots`` (figures) and ``runner`` (runs
loaded from their model_dirs, as ``trainers.evaluate`` evaluates them). Here ``checks`` and
``transfer`` are the functions; their modules are reached as ``from
tfp_advbnn.evaluation.checks import ...`` (and likewise for ``transfer``).
"""

from tfp_advbnn.config import EvalConfig
from tfp_advbnn.evaluation.checks import (
    SIGNIFICANCE_Z,
    UNBOUNDED_MAX_ACCURACY,
    UNBOUNDED_MIN_STEPS,
    ZERO_GRADIENT_MAX_FRACTION,
    check_eot,
    check_iterative_vs_single_step,
    check_monotonic,
    check_more_steps,
    check_unbounded,
    checks,
)
from tfp_advbnn.evaluation.engine import SweepResult, draws_differ
from tfp_advbnn.evaluation.plots import plot_report
from tfp_advbnn.evaluation.protocols import (
    DEFAULT_EPS_GRIDS,
    DEFENSE_NAMES,
    MODES,
    AttackSpec,
    default_eps_grid,
    diagnosis_eps,
)
from tfp_advbnn.evaluation.reports import markdown_table, write_json
from tfp_advbnn.evaluation.runner import LoadedModel, load_model, load_test_data
from tfp_advbnn.evaluation.sweeps import ensemble_sweep, run_sweep, steps_sweep, sweep
from tfp_advbnn.evaluation.transfer import AFFINITY_DEFINITION, compare, transfer

__all__ = [
    "AFFINITY_DEFINITION",
    "AttackSpec",
    "DEFAULT_EPS_GRIDS",
    "DEFENSE_NAMES",
    "EvalConfig",
    "LoadedModel",
    "MODES",
    "SIGNIFICANCE_Z",
    "SweepResult",
    "UNBOUNDED_MAX_ACCURACY",
    "UNBOUNDED_MIN_STEPS",
    "ZERO_GRADIENT_MAX_FRACTION",
    "check_eot",
    "check_iterative_vs_single_step",
    "check_monotonic",
    "check_more_steps",
    "check_unbounded",
    "checks",
    "compare",
    "default_eps_grid",
    "diagnosis_eps",
    "draws_differ",
    "ensemble_sweep",
    "load_model",
    "load_test_data",
    "markdown_table",
    "plot_report",
    "run_sweep",
    "steps_sweep",
    "sweep",
    "transfer",
    "write_json",
]
