"""White-box attacks on image classifiers, including stochastic (Bayesian) ones.

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
- Only input gradients are computed: every tape is created with
  ``watch_accessed_variables=False`` and watches the input alone, so weight sampling and other
  variable arithmetic are never recorded for backprop.
- The loops are ``tf.while_loop``s, so a caller that wraps an attack in ``tf.function`` gets the
  whole attack as one graph; called eagerly they run step by step.

``eps`` and ``step_size`` may be Python numbers or scalar float tensors (a tensor avoids
retracing a ``tf.function`` for every value of an eps sweep); ``num_steps`` and
``num_eot_samples`` are Python ints because they fix the structure of the graph.
"""

import dataclasses
import itertools
import math
import numbers

import numpy as np
import tensorflow as tf

NORMS = ("linf", "l2")

# Seed pair type accepted by the stateless random ops.
_SEED_DTYPE = tf.int64


def _example_axes(x):
    """All axes but the batch axis, as a tensor (works for unknown static rank too)."""
    return tf.range(1, tf.rank(x))


def _per_example_l2(x):
    """L2 norm of each example of ``x`` [B, ...], shaped [B, 1, ..., 1] to broadcast against x."""
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=_example_axes(x), keepdims=True))


def _broadcast_per_example(values, like):
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
        norm = tf.maximum(_per_example_l2(delta), 1e-12)
        scale = tf.minimum(1.0, self.eps / norm)
        return tf.clip_by_value(x + delta * scale, 0.0, 1.0)

    def step(self, x_adv, grad, step_size):
        """Steepest ascent step for the L2 norm: ``step_size`` along ``grad / ||grad||_2``.

        An example with a zero gradient does not move.
        """
        direction = tf.math.divide_no_nan(grad, _per_example_l2(grad))
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
        direction = tf.math.divide_no_nan(direction, _per_example_l2(direction))
        return x + _broadcast_per_example(radius, x) * direction


def make_threat(norm, eps):
    """Returns the threat model for ``norm`` in ``NORMS`` with radius ``eps`` (pixel scale)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    eps = _scalar("eps", eps, positive=False)
    return LinfThreat(eps) if norm == "linf" else L2Threat(eps)


def _scalar(name, value, *, positive):
    """Validates a non-negative (or positive) scalar and returns it as a float32 tensor.

    Python numbers and eager tensors are checked here with a ValueError; a symbolic tensor (inside
    tf.function) gets an in-graph assertion instead.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, tf.Tensor | tf.Variable):
        if value.shape.rank not in (None, 0):
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {value.shape}")
        if not value.dtype.is_floating and not value.dtype.is_integer:
            raise ValueError(f"{name} must be a real number, got dtype {value.dtype.name}")
        tensor = tf.cast(value, tf.float32)
        static = tf.get_static_value(tensor)
        if static is None:
            check = tf.debugging.assert_greater if positive else tf.debugging.assert_greater_equal
            with tf.control_dependencies([check(tensor, 0.0, message=f"{name} must be {bound}")]):
                return tf.identity(tensor)
        value = float(static)
    elif not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return tf.constant(value, tf.float32)


def _count(name, value, *, minimum):
    """Validates a Python int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _seed_pair(seed):
    """Turns ``seed`` (None, an int, or an int tensor of shape [2]) into a stateless seed pair."""
    if seed is None:
        return None
    if isinstance(seed, bool):
        raise ValueError(f"seed must be None, an int or a shape-[2] int tensor, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        return tf.constant([int(seed), 0], _SEED_DTYPE)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer or seed.shape != (2,):
        raise ValueError(f"seed must be None, an int or a shape-[2] int tensor, got {seed!r}")
    return tf.cast(seed, _SEED_DTYPE)


def _inputs(images, labels):
    """Converts and checks ``images`` (float32, [B, ...] in [0, 1]) and ``labels`` (int, [B])."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        raise ValueError(f"images must be float32 in [0, 1], got dtype {images.dtype.name}")
    if images.shape.rank is not None and images.shape.rank < 2:
        raise ValueError(f"images must have shape [B, H, W, 3], got shape {images.shape}")
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype.name}")
    if labels.shape.rank is not None and labels.shape.rank != 1:
        raise ValueError(f"labels must have shape [B], got shape {labels.shape}")
    labels = tf.cast(labels, tf.int32)
    if tf.executing_eagerly():
        low, high = float(tf.reduce_min(images)), float(tf.reduce_max(images))
        if images.shape.num_elements() and (low < 0.0 or high > 1.0):
            raise ValueError(f"images must lie in [0, 1], got values in [{low}, {high}]")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images and labels disagree on the batch size: {images.shape} vs {labels.shape}"
            )
    else:
        checks = [
            tf.debugging.assert_greater_equal(images, 0.0, message="images must lie in [0, 1]"),
            tf.debugging.assert_less_equal(images, 1.0, message="images must lie in [0, 1]"),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
    return images, labels


def _loss_grad(model_fn, x, labels):
    """One model call: input gradient of the summed cross-entropy, per-example losses, probs.

    Summing over the batch keeps each example's gradient independent of the batch size.
    Returns (grad like x, loss float32 [B], probabilities float32 [B, C]).
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        total = tf.reduce_sum(losses)
    grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grad, losses, tf.nn.softmax(logits)


def _eot_loss_grad(model_fn, x, labels, num_eot_samples):
    """Expectation-over-transformation estimate from ``num_eot_samples`` model calls.

    Each call is an independent weight draw of a stochastic model (tiling the batch instead would
    share one draw). Returns the mean input gradient, the mean per-example loss [B] and the mean
    predicted probabilities [B, C] over the draws.
    """
    if num_eot_samples == 1:
        return _loss_grad(model_fn, x, labels)

    def body(i, grad_sum, loss_sum, probs):
        grad, loss, prob = _loss_grad(model_fn, x, labels)
        return i + 1, grad_sum + grad, loss_sum + loss, probs.write(i, prob)

    # The class count is unknown until model_fn runs, so probabilities go to a TensorArray.
    probs = tf.TensorArray(
        tf.float32,
        size=num_eot_samples,
        element_shape=labels.shape[:1].concatenate([None]),
        infer_shape=False,
    )
    init = (tf.constant(0), tf.zeros_like(x), tf.zeros(tf.shape(labels), tf.float32), probs)
    _, grad_sum, loss_sum, probs = tf.while_loop(
        lambda i, *_: i < num_eot_samples, body, init, parallel_iterations=1
    )
    n = float(num_eot_samples)
    return grad_sum / n, loss_sum / n, tf.reduce_mean(probs.stack(), axis=0)


def _eot_grad(model_fn, x, labels, num_eot_samples):
    """Mean input gradient over ``num_eot_samples`` model calls (no statistics kept)."""
    if num_eot_samples == 1:
        return _loss_grad(model_fn, x, labels)[0]

    def body(i, grad_sum):
        return i + 1, grad_sum + _loss_grad(model_fn, x, labels)[0]

    _, grad_sum = tf.while_loop(
        lambda i, _: i < num_eot_samples,
        body,
        (tf.constant(0), tf.zeros_like(x)),
        parallel_iterations=1,
    )
    return grad_sum / float(num_eot_samples)


def _iterative_attack(
    model_fn, images, labels, threat, *, step_size, num_steps, random_start, num_eot_samples, seed
):
    """The projected steepest-ascent loop shared by PGD and FGSM (arguments already checked)."""
    x_adv = images
    if random_start:
        x_adv = threat.project(threat.random_perturb(images, seed), images)

    def body(i, x_adv):
        grad = _eot_grad(model_fn, x_adv, labels, num_eot_samples)
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
      step_size: step length in the same scale, ``> 0``.
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
    step_size = _scalar("step_size", step_size, positive=True)
    num_steps = _count("num_steps", num_steps, minimum=0)
    num_eot_samples = _count("num_eot_samples", num_eot_samples, minimum=1)
    seed = _seed_pair(seed)
    images, labels = _inputs(images, labels)
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
    num_eot_samples = _count("num_eot_samples", num_eot_samples, minimum=1)
    images, labels = _inputs(images, labels)
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


def _adam_update(param, grad, m, v, t, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """One Adam step (Kingma & Ba 2015) on plain tensors, so no optimizer variables are created.

    ``t`` is the 1-based step number as a float32 scalar. Returns (param, m, v) updated.
    """
    m = beta1 * m + (1.0 - beta1) * grad
    v = beta2 * v + (1.0 - beta2) * tf.square(grad)
    m_hat = m / (1.0 - tf.pow(beta1, t))
    v_hat = v / (1.0 - tf.pow(beta2, t))
    return param - learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v


def cw_l2(model_fn, images, labels, *, c=1.0, kappa=0.0, num_steps=100, learning_rate=0.01):
    """Carlini-Wagner L2 attack (Carlini & Wagner 2017), untargeted, with a fixed ``c``.

    Like the Adv-BNN reference's ``cw``, it runs Adam on the perturbation to minimise, per example,
    ``||x_adv - images||_2^2 + c * max(Z_y - max_{i != y} Z_i, -kappa)`` where ``Z`` are the
    logits. Unlike the reference, ``x_adv = (tanh(w) + 1) / 2`` is parametrised in tanh space so
    it always stays in [0, 1], and the best adversarial iterate is kept. There is no binary
    search over ``c``: sweep ``c`` outside to trade distortion for success. Each Adam step calls
    ``model_fn`` once (one weight draw of a stochastic model).

    Args:
      model_fn: callable, float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C].
      images: float32 [B, H, W, 3] in [0, 1].
      labels: int [B], the true classes.
      c: weight of the margin term, ``>= 0``.
      kappa: confidence margin in logits, ``>= 0``.
      num_steps: Python int ``>= 0``, Adam steps.
      learning_rate: Adam step size in tanh space, ``> 0``.

    Returns:
      float32 tensor like ``images`` in [0, 1]: for each example, the iterate with the smallest
      L2 distortion among those the model misclassified when it was evaluated, or the last
      iterate if none was misclassified. The distortion is unbounded (no eps).
    """
    c = _scalar("c", c, positive=False)
    kappa = _scalar("kappa", kappa, positive=False)
    num_steps = _count("num_steps", num_steps, minimum=0)
    learning_rate = _scalar("learning_rate", learning_rate, positive=True)
    images, labels = _inputs(images, labels)

    # Shrink slightly so that pixels at exactly 0 or 1 have a finite arctanh.
    w0 = tf.atanh((2.0 * images - 1.0) * (1.0 - 1e-6))
    batch = tf.shape(labels)

    def to_image(w):
        return 0.5 * (tf.tanh(w) + 1.0)

    def body(i, w, m, v, best_adv, best_dist):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(w)
            x_adv = to_image(w)
            logits = tf.cast(model_fn(x_adv), tf.float32)
            is_true = tf.one_hot(labels, tf.shape(logits)[1], on_value=True, off_value=False)
            real = tf.reduce_sum(tf.where(is_true, logits, 0.0), axis=1)
            other = tf.reduce_max(tf.where(is_true, -np.inf, logits), axis=1)
            margin = tf.maximum(real - other, -kappa)
            dist = tf.reduce_sum(tf.square(x_adv - images), axis=_example_axes(images))
            total = tf.reduce_sum(dist + c * margin)
        grad = tape.gradient(total, w)
        improved = (real < other) & (dist < best_dist)
        best_adv = tf.where(_broadcast_per_example(improved, images), x_adv, best_adv)
        best_dist = tf.where(improved, dist, best_dist)
        step = tf.cast(i + 1, tf.float32)
        w, m, v = _adam_update(w, grad, m, v, step, learning_rate)
        return i + 1, w, m, v, best_adv, best_dist

    init = (
        tf.constant(0),
        w0,
        tf.zeros_like(w0),
        tf.zeros_like(w0),
        images,
        tf.fill(batch, np.float32(np.inf)),
    )
    _, w, _, _, best_adv, best_dist = tf.while_loop(
        lambda i, *_: i < num_steps, body, init, parallel_iterations=1
    )
    found = _broadcast_per_example(tf.math.is_finite(best_dist), images)
    return tf.where(found, best_adv, to_image(w))


def apgd_checkpoints(num_steps):
    """APGD's step-size checkpoints ``w_j = ceil(p_j * num_steps)`` (Croce & Hein 2020, sec. 3).

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    Returns:
      sorted list of distinct ints in ``[0, num_steps)``, starting with 0.
    """
    num_steps = _count("num_steps", num_steps, minimum=0)
    fractions = [0.0, 0.22]
    while fractions[-1] < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    # The small offset stops float error (0.22 * 100 = 22.000000000000004) from rounding up.
    points = {math.ceil(p * num_steps - 1e-9) for p in fractions}
    return sorted(w for w in points if w < num_steps)


def apgd(
    model_fn,
    images,
    labels,
    *,
    eps,
    num_steps,
    norm="linf",
    num_eot_samples=1,
    selection_samples=0,
    rho=0.75,
    seed=None,
):
    """APGD-CE (Croce & Hein 2020, Algorithm 1), untargeted, with EOT gradients.

    Starting from a uniform random point of the ball, each step takes a steepest ascent step
    (sign for L-inf, normalized gradient for L2) of per-example size ``eta`` (initially
    ``2 * eps``) on the cross-entropy and adds momentum 0.75:
    ``z = P(x_k + eta * step(g_k))``, ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``
    (no momentum on the first step). At each checkpoint ``apgd_checkpoints(num_steps)``, an
    example's ``eta`` is halved and it restarts from its highest-loss point when (1) fewer than
    ``rho`` of its steps since the last checkpoint increased the loss, or (2) its ``eta`` was not
    halved at the last checkpoint and its best loss has not improved since. Gradients and losses
    average ``num_eot_samples`` ``model_fn`` calls (independent weight draws), so there are
    ``(num_steps + 1) * num_eot_samples`` calls.

    On a stochastic model the in-loop statistics come from only ``num_eot_samples`` draws, so the
    "misclassified" iterate may have fooled one lucky draw and the "highest-loss" iterate may be
    a noise peak. With ``selection_samples > 0``, the returned point is instead chosen per example
    among three candidates (the last misclassified iterate, the highest-loss iterate and the
    final iterate) by an ensemble of ``selection_samples`` fresh draws: a candidate the ensemble
    misclassifies wins, ties going to the higher ensemble loss. That costs
    ``3 * selection_samples`` forward passes. Leave it 0 for a deterministic model, where the
    in-loop statistics are exact.

    Args:
      model_fn: callable, float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C].
      images: float32 [B, H, W, 3] in [0, 1].
      labels: int [B], the true classes.
      eps: radius of the threat ball in the [0, 1] pixel scale, ``>= 0``.
      num_steps: Python int ``>= 0``, iterations after the random start.
      norm: ``"linf"`` or ``"l2"``.
      num_eot_samples: Python int ``>= 1``, model calls averaged per step.
      selection_samples: Python int ``>= 0``, ensemble draws that pick the returned candidate
        (0: the in-loop choice below).
      rho: fraction in ``[0, 1]`` for condition (1).
      seed: ``None`` (fresh random start) or int / int tensor of shape [2] (reproducible start).

    Returns:
      float32 tensor like ``images`` within the eps-ball and [0, 1]. With ``selection_samples``
      0: per example, the most recent iterate that was misclassified (by the mean probabilities
      of that step's draws) if any, else the iterate with the highest loss (as the reference
      implementation's ``x_best_adv``); otherwise the ensemble's pick described above.
    """
    threat = make_threat(norm, eps)
    num_steps = _count("num_steps", num_steps, minimum=0)
    num_eot_samples = _count("num_eot_samples", num_eot_samples, minimum=1)
    selection_samples = _count("selection_samples", selection_samples, minimum=0)
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be a number in [0, 1], got {rho!r}")
    seed = _seed_pair(seed)
    images, labels = _inputs(images, labels)
    alpha = 0.75

    checkpoints = apgd_checkpoints(num_steps)
    # Python-side schedule as tensors indexed by the step number k = 0..num_steps.
    # Step 0 (the start point) acts as checkpoint w_0: it resets the counters but never halves.
    is_checkpoint = np.zeros(num_steps + 1, bool)
    is_checkpoint[0] = True
    window = np.ones(num_steps + 1, np.float32)
    for previous, current in itertools.pairwise(checkpoints):
        is_checkpoint[current] = True
        window[current] = current - previous
    is_checkpoint = tf.constant(is_checkpoint)
    window = tf.constant(window)

    def evaluate(x):
        grad, loss, probs = _eot_loss_grad(model_fn, x, labels, num_eot_samples)
        fooled = tf.argmax(probs, axis=1, output_type=tf.int32) != labels
        return grad, loss, fooled

    def per_example(mask):
        return _broadcast_per_example(mask, images)

    x0 = threat.project(threat.random_perturb(images, seed), images)
    batch = tf.shape(labels)
    # Iteration k = 0 only evaluates the start point, so model_fn is traced at a single call site
    # (one copy of the model in the graph); -inf losses make that first evaluation the best.
    state = {
        "k": tf.constant(0),
        "x": x0,
        "x_prev": x0,
        "grad": tf.zeros_like(images),
        "loss": tf.fill(batch, -np.inf),
        "x_max": x0,
        "grad_max": tf.zeros_like(images),
        "loss_max": tf.fill(batch, -np.inf),
        "x_fooled": x0,
        "fooled": tf.zeros(batch, tf.bool),
        "eta": tf.fill(batch, 2.0 * threat.eps),
        "increases": tf.zeros(batch, tf.float32),
        "loss_max_at_check": tf.fill(batch, -np.inf),
        "halved_at_check": tf.zeros(batch, tf.bool),
    }

    def body(s):
        k = s["k"]
        x = s["x"]
        z = threat.project(threat.step(x, s["grad"], per_example(s["eta"])), images)
        momentum = tf.where(k <= 1, 1.0, alpha)
        x_new = x + momentum * (z - x) + (1.0 - momentum) * (x - s["x_prev"])
        x_new = tf.where(k > 0, threat.project(x_new, images), x)
        grad, loss, fooled = evaluate(x_new)

        x_fooled = tf.where(per_example(fooled), x_new, s["x_fooled"])
        increases = s["increases"] + tf.cast(loss > s["loss"], tf.float32)
        better = loss > s["loss_max"]
        x_max = tf.where(per_example(better), x_new, s["x_max"])
        grad_max = tf.where(per_example(better), grad, s["grad_max"])
        loss_max = tf.where(better, loss, s["loss_max"])

        at_check = tf.gather(is_checkpoint, k)
        too_few_increases = increases < rho * tf.gather(window, k)
        stalled = ~s["halved_at_check"] & (loss_max <= s["loss_max_at_check"])
        halve = at_check & (k > 0) & (too_few_increases | stalled)
        # A halved example restarts from its best point with no momentum carried over.
        restart = per_example(halve)
        return {
            "k": k + 1,
            "x": tf.where(restart, x_max, x_new),
            "x_prev": tf.where(restart, x_max, x),
            "grad": tf.where(restart, grad_max, grad),
            "loss": tf.where(halve, loss_max, loss),
            "x_max": x_max,
            "grad_max": grad_max,
            "loss_max": loss_max,
            "x_fooled": x_fooled,
            "fooled": s["fooled"] | fooled,
            "eta": tf.where(halve, 0.5 * s["eta"], s["eta"]),
            "increases": tf.where(at_check, tf.zeros_like(increases), increases),
            "loss_max_at_check": tf.where(at_check, loss_max, s["loss_max_at_check"]),
            "halved_at_check": tf.where(at_check, halve, s["halved_at_check"]),
        }

    final = tf.while_loop(
        lambda s: s["k"] <= num_steps, lambda s: (body(s),), (state,), parallel_iterations=1
    )[0]
    if selection_samples == 0:
        return tf.where(per_example(final["fooled"]), final["x_fooled"], final["x_max"])
    return _ensemble_pick(
        model_fn, [final["x_fooled"], final["x_max"], final["x"]], labels, selection_samples
    )


def _ensemble_pick(model_fn, candidates, labels, num_draws):
    """Per example, the candidate an ensemble of ``num_draws`` draws finds most adversarial.

    Args:
      candidates: list of K float32 tensors [B, ...], alternative adversarial images.
      labels: int32 [B].

    Returns:
      float32 [B, ...]: for each example, a candidate whose mean probabilities over the draws
      misclassify it if one does, the one with the highest ensemble cross-entropy
      ``-log mean_draws p(label)`` among those; else the highest-loss candidate.
    """
    num = len(candidates)
    # One batch of all candidates: each draw scores them all, and the graph holds one call site.
    x = tf.concat(candidates, axis=0)
    tiled_labels = tf.tile(labels, [num])

    def probabilities():
        return tf.nn.softmax(tf.cast(model_fn(x), tf.float32))

    probs_sum = tf.while_loop(
        lambda i, _: i < num_draws,
        lambda i, total: (i + 1, total + probabilities()),
        (tf.constant(1), probabilities()),
        parallel_iterations=1,
    )[1]
    probs = probs_sum / float(num_draws)
    true_prob = tf.gather(probs, tiled_labels, axis=1, batch_dims=1)
    loss = -tf.math.log(tf.maximum(true_prob, 1e-12))
    fooled = tf.argmax(probs, axis=1, output_type=tf.int32) != tiled_labels
    # Misclassification dominates: the loss is at most -log(1e-12) < 28.
    score = loss + tf.where(fooled, 100.0, 0.0)
    scores = tf.transpose(tf.reshape(score, [num, -1]))
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    stacked = tf.stack(candidates, axis=1)
    return tf.gather(stacked, best, axis=1, batch_dims=1)
