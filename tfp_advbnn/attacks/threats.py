"""Threat models: the set an adversarial image may lie in, and how to move and stay inside it.

A threat model is a ball of radius ``eps`` (``[0, 1]`` pixel scale) around the clean image,
intersected with the ``[0, 1]`` box. Each one offers the three operations an attack loop needs
(as MadryLab/robustness's attack steps): ``project`` onto the set, a steepest ascent ``step``
for its norm, and a ``random_perturb`` starting point. Norms are per example, over all
non-batch axes.
"""

import dataclasses

import tensorflow as tf

from tfp_advbnn import validation
from tfp_advbnn.attacks.inputs import scalar_tensor

NORMS = ("linf", "l2")


def example_axes(x):
    """All axes but the batch axis, as a tensor (works for unknown static rank too)."""
    return tf.range(1, tf.rank(x))


def per_example_l2(x):
    """L2 norm of each example of ``x`` [B, ...], shaped [B, 1, ..., 1] to broadcast against x."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=example_axes(x), keepdims=True))


def per_example_norm(delta, norm):
    """L-inf or L2 norm of each example of ``delta`` [B, H, W, C] -> float32 [B].

    The size of a perturbation as reports measure it (``norm`` in ``NORMS``).
    """
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        return tf.reduce_max(tf.abs(flat), axis=1)
    return tf.norm(flat, axis=1)


def broadcast_per_example(values, like):
    """Reshapes per-example ``values`` [B] to [B, 1, ..., 1] with the rank of ``like``."""
    shape = tf.concat([tf.shape(values), tf.ones([tf.rank(like) - 1], tf.int32)], axis=0)
    result = tf.reshape(values, shape)
    if like.shape.rank is not None:
        # Keep the static shape so tf.while_loop sees loop variables of a fixed shape.
        result.set_shape(values.shape[:1].concatenate([1] * (like.shape.rank - 1)))
    return result


@dataclasses.dataclass(frozen=True)
class LinfThreat:
    """L-inf ball of radius ``eps`` (``[0, 1]`` pixel scale) intersected with the ``[0, 1]`` box.

    Attributes:
      eps: float or scalar float32 tensor, the radius; ``>= 0``.
    """

    eps: float | tf.Tensor

    def project(self, x_adv, x):
        """Projects ``x_adv`` onto the eps-ball around ``x``, then onto ``[0, 1]``.

        Clipping to the box only moves each pixel towards ``x`` (which is in the box), so the
        result stays in the ball.
        """
        delta = tf.clip_by_value(x_adv - x, -self.eps, self.eps)
        return tf.clip_by_value(x + delta, 0.0, 1.0)

    def step(self, x_adv, grad, step_size):
        """Steepest ascent step for the L-inf norm: ``x_adv + step_size * sign(grad)``.

        ``step_size`` is a scalar or per-example values broadcastable to ``x_adv``.
        """
        return x_adv + step_size * tf.sign(grad)

    def random_perturb(self, x, seed=None):
        """Uniform sample from the L-inf ball around ``x`` (not yet clipped to ``[0, 1]``).

        ``seed`` is ``None`` (fresh sample) or a stateless seed pair (int64 [2]).
        """
        shape = tf.shape(x)
        if seed is None:
            noise = tf.random.uniform(shape, -1.0, 1.0, dtype=x.dtype)
        else:
            noise = tf.random.stateless_uniform(shape, seed, -1.0, 1.0, dtype=x.dtype)
        return x + self.eps * noise


@dataclasses.dataclass(frozen=True)
class L2Threat:
    """Per-example L2 ball of radius ``eps`` intersected with the ``[0, 1]`` box.

    Attributes:
      eps: float or scalar float32 tensor, the radius of the ball over the whole example
        (all pixels and channels); ``>= 0``.
    """

    eps: float | tf.Tensor

    def project(self, x_adv, x):
        """Rescales each example's perturbation to norm ``<= eps``, then clips to ``[0, 1]``.

        Clipping moves every coordinate towards ``x``, so it never increases the norm.
        """
        delta = x_adv - x
        # The floor on the norm avoids 0 / 0 for an unperturbed example (any scale is fine there).
        norm = tf.maximum(per_example_l2(delta), 1e-12)
        scale = tf.minimum(1.0, self.eps / norm)
        return tf.clip_by_value(x + delta * scale, 0.0, 1.0)

    def step(self, x_adv, grad, step_size):
        """Steepest ascent step for the L2 norm: ``step_size`` along ``grad / ||grad||_2``.

        An example with a zero gradient does not move.
        """
        direction = tf.math.divide_no_nan(grad, per_example_l2(grad))
        return x_adv + step_size * direction

    def random_perturb(self, x, seed=None):
        """Uniform sample from the L2 ball around ``x`` (not yet clipped to ``[0, 1]``).

        The direction is a normalized Gaussian; the radius is ``eps * u ** (1 / d)`` with
        ``u ~ U(0, 1)`` and ``d`` the number of values per example, which makes the point
        uniform in the ball's volume. ``seed`` is ``None`` or a stateless seed pair.
        """
        shape = tf.shape(x)
        radius_shape = tf.shape(x)[:1]
        if seed is None:
            direction = tf.random.normal(shape, dtype=x.dtype)
            u = tf.random.uniform(radius_shape, dtype=x.dtype)
        else:
            direction_seed, radius_seed = tf.unstack(tf.random.split(seed, 2))
            direction = tf.random.stateless_normal(shape, direction_seed, dtype=x.dtype)
            u = tf.random.stateless_uniform(radius_shape, radius_seed, dtype=x.dtype)
        dim = tf.cast(tf.reduce_prod(shape[1:]), x.dtype)
        radius = self.eps * tf.pow(u, 1.0 / dim)
        direction = tf.math.divide_no_nan(direction, per_example_l2(direction))
        return x + broadcast_per_example(radius, x) * direction


def make_threat(norm, eps):
    """Returns the threat model for ``norm`` in ``NORMS`` with radius ``eps`` (pixel scale).

    ``eps`` is a number or a scalar tensor ``>= 0``; the threat holds it as a float32 tensor.

    Examples:
        >>> make_threat("l2", 0.5)
        L2Threat(eps=<tf.Tensor: shape=(), dtype=float32, numpy=0.5>)
    """
    validation.choice("norm", norm, NORMS)
    eps = scalar_tensor("eps", eps, positive=False)
    return LinfThreat(eps) if norm == "linf" else L2Threat(eps)
