"""White-box attacks on image classifiers, including stochastic (Bayesian) ones.

One module per concept: ``threats`` (the eps-balls: project, step, random start), ``eot`` (input
gradients averaged over weight draws), ``pgd`` (the projected steepest-ascent loop: PGD, FGSM
and the default step size), ``apgd``, ``cw`` and ``registry`` (attack name -> ``Attack``).
``inputs`` holds the argument checks they share. The functions are re-exported here, so
``attacks.pgd`` is the function (it shadows the ``pgd`` submodule as an attribute; import a
submodule's other names with ``from tfp_advbnn.attacks.pgd import ...``).

Conventions shared by every attack here:

- ``model_fn`` is any callable mapping float32 images ``[B, H, W, 3]`` in ``[0, 1]`` to float32
  logits ``[B, C]``. For a tf_keras model pass ``lambda x: model(x, training=False)`` so that batch
  normalization runs in inference mode. A stochastic model draws new weights on every call, and
  every attack step calls ``model_fn`` afresh (Adv-BNN paper, eqs. 3 and 21).
- ``images`` are float32 ``[B, H, W, 3]`` in ``[0, 1]`` (any shape ``[B, ...]`` works; norms are
  per example over all non-batch axes) and ``labels`` are integer class ids ``[B]``.
- ``eps`` is in the ``[0, 1]`` pixel scale: ``8 / 255`` is the usual CIFAR-10 L-inf budget. For
  the L2 threat it is the Euclidean norm of the whole per-example perturbation.
- Returned adversarial images have the shape and dtype of ``images`` and lie in ``[0, 1]`` and,
  for the eps-bounded attacks, in the eps-ball around ``images``.
- Only input gradients are computed (see ``eot``).
- The loops are ``tf.while_loop``s, so a caller that wraps an attack in ``tf.function`` gets the
  whole attack as one graph; called eagerly they run step by step.

``eps`` and ``step_size`` may be Python numbers or scalar float tensors (a tensor avoids
retracing a ``tf.function`` for every value of an eps sweep); ``num_steps`` and
``num_eot_samples`` are Python ints because they fix the structure of the graph.
"""

from tfp_advbnn.attacks.apgd import apgd, apgd_checkpoints
from tfp_advbnn.attacks.cw import cw_l2
from tfp_advbnn.attacks.pgd import default_step_size, fgsm, pgd
from tfp_advbnn.attacks.registry import ATTACKS, FAMILIES, SETTINGS, Attack, get
from tfp_advbnn.attacks.threats import NORMS, L2Threat, LinfThreat, make_threat, per_example_norm

__all__ = [
    "ATTACKS",
    "FAMILIES",
    "NORMS",
    "SETTINGS",
    "Attack",
    "L2Threat",
    "LinfThreat",
    "apgd",
    "apgd_checkpoints",
    "cw_l2",
    "default_step_size",
    "fgsm",
    "get",
    "make_threat",
    "per_example_norm",
    "pgd",
]
