"""Projected gradient descent and FGSM: the one projected steepest-ascent loop, and its step rule.

Every iterative eps-bounded attack here is this loop (as in MadryLab/robustness): start at the
clean image or a random point of the threat ball, then repeat "EOT gradient, steepest ascent
step for the norm, project onto the ball and the box". FGSM is one step of size eps. The default
step size of PGD lives here too (``default_step_size``), for training and evaluation alike.
"""

import tensorflow as tf

from tfp_advbnn import validation
from tfp_advbnn.attacks.eot import eot_grad
from tfp_advbnn.attacks.inputs import images_and_labels, scalar_tensor, seed_pair
from tfp_advbnn.attacks.threats import make_threat


def default_step_size(eps, num_steps):
    """The default PGD step size ``2.5 * eps / num_steps`` (Madry et al. 2018).

    Args:
      eps: radius in the [0, 1] pixel scale, a Python number ``>= 0``.
      num_steps: Python int ``>= 1``, the attack's steps.

    Returns:
      float, in the pixel scale; 0.0 when ``eps`` is 0 (``pgd`` needs a step ``> 0``, and any
      one gives the same result on a radius-0 ball, so a caller picks one there).

    Examples:
        >>> default_step_size(8 / 255, 10)
        0.00784313725490196
    """
    eps = validation.non_negative("eps", eps)
    num_steps = validation.integer("num_steps", num_steps, minimum=1)
    # The steps cover 2.5 radii in all: enough to reach the boundary of the ball from any start
    # and still move along it.
    return 2.5 * eps / num_steps


def _iterative_attack(
    model_fn, images, labels, threat, *, step_size, num_steps, random_start, num_eot_samples, seed
):
    """The projected steepest-ascent loop shared by PGD and FGSM (arguments already checked)."""
    x_adv = images
    if random_start:
        x_adv = threat.project(threat.random_perturb(images, seed), images)

    def body(i, x_adv):
        grad = eot_grad(model_fn, x_adv, labels, num_eot_samples)
        x_adv = threat.project(threat.step(x_adv, grad, step_size), images)
        return i + 1, x_adv

    _, x_adv = tf.while_loop(
        lambda i, _: i < num_steps, body, (tf.constant(0), x_adv), parallel_iterations=1
    )
    return x_adv


def pgd(
    model_fn,
    images,
    labels,
    *,
    eps,
    step_size,
    num_steps,
    norm="linf",
    random_start=False,
    num_eot_samples=1,
    seed=None,
):
    """Projected gradient descent (Madry et al. 2018; Adv-BNN eq. 2), untargeted.

    Each of the ``num_steps`` steps ascends the cross-entropy: ``x + step_size * sign(g)`` for
    L-inf, ``x + step_size * g / ||g||_2`` for L2, then projects onto the eps-ball around
    ``images`` and onto ``[0, 1]``. ``g`` is the input gradient averaged over ``num_eot_samples``
    separate ``model_fn`` calls (expectation over transformation: for a stochastic model each
    call is a fresh weight draw, so ``num_steps * num_eot_samples`` calls happen in all).

    Args:
      model_fn: callable, float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C].
      images: float32 [B, H, W, 3] in [0, 1].
      labels: int [B], the true classes (the loss pushes away from them).
      eps: radius of the threat ball in the [0, 1] pixel scale (L-inf: per pixel; L2: over the
        whole example), ``>= 0``.
      step_size: step length in the same scale, ``> 0`` (``default_step_size`` gives the usual
        one).
      num_steps: Python int ``>= 0``; 0 returns the starting point.
      norm: ``"linf"`` or ``"l2"``.
      random_start: start from a uniform sample in the ball (clipped to [0, 1]) instead of
        ``images``.
      num_eot_samples: Python int ``>= 1``, model calls averaged per gradient.
      seed: ``None`` (a fresh random start every call) or an int / int tensor of shape [2] that
        makes the random start reproducible (stateless sampling). It does not seed the model.

    Returns:
      float32 tensor like ``images``: adversarial images within the eps-ball and [0, 1].
    """
    threat = make_threat(norm, eps)
    step_size = scalar_tensor("step_size", step_size, positive=True)
    num_steps = validation.integer("num_steps", num_steps, minimum=0)
    num_eot_samples = validation.integer("num_eot_samples", num_eot_samples, minimum=1)
    seed = seed_pair(seed)
    images, labels = images_and_labels(images, labels)
    return _iterative_attack(
        model_fn,
        images,
        labels,
        threat,
        step_size=step_size,
        num_steps=num_steps,
        random_start=bool(random_start),
        num_eot_samples=num_eot_samples,
        seed=seed,
    )


def fgsm(model_fn, images, labels, *, eps, num_eot_samples=1):
    """Fast gradient sign method (Goodfellow et al. 2015): one L-inf step of size ``eps``.

    Identical to ``pgd(..., norm="linf", step_size=eps, num_steps=1, random_start=False)``.

    Args:
      model_fn: callable, float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C].
      images: float32 [B, H, W, 3] in [0, 1].
      labels: int [B], the true classes.
      eps: L-inf radius in the [0, 1] pixel scale, ``>= 0`` (0 returns ``images``).
      num_eot_samples: Python int ``>= 1``, model calls averaged for the gradient.

    Returns:
      float32 tensor like ``images``: ``clip(images + eps * sign(grad), 0, 1)``.
    """
    threat = make_threat("linf", eps)
    num_eot_samples = validation.integer("num_eot_samples", num_eot_samples, minimum=1)
    images, labels = images_and_labels(images, labels)
    return _iterative_attack(
        model_fn,
        images,
        labels,
        threat,
        step_size=threat.eps,
        num_steps=1,
        random_start=False,
        num_eot_samples=num_eot_samples,
        seed=None,
    )
