"""Tests tfp_advbnn.attacks.apgd against an independent float64 NumPy APGD-CE (L-inf).

The reference follows Croce & Hein 2020, Algorithm 1, with the conventions of apgd's docstring:
random start, first step of size 2 eps without momentum, momentum 0.75, step halving with a
restart from the best point at the checkpoints. The case is one whose trajectory those details
change: the same reference with other momenta, or halving without the restart, returns points
far from the right one, so an apgd with either detail wrong fails the comparison.
"""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf

from tfp_advbnn.attacks.apgd import apgd

# EPS is a power of two and RHO has two binary digits, so 2 * EPS, its halvings, EPS * noise and
# RHO * window (condition 1) are exact in float32 as in float64.
EPS = 0.125
RHO = 0.75
MOMENTUM = 0.75
NUM_STEPS = 30
BATCH = 8
IMAGE_SHAPE = (2, 2, 3)
# On these eps-balls float32 computes the loss to within about 1.5e-7 and each gradient component
# to within about 6e-7 of float64 (measured), so loss comparisons decided by more than LOSS_MARGIN
# and gradient signs of components above GRAD_MARGIN come out the same in both.
LOSS_MARGIN = 1e-6
GRAD_MARGIN = 5e-6


class SineNet:
    """logits = W2^T sin(W1^T (x - 0.5) + b1) + b2 on flattened [2, 2, 3] images, three classes.

    Each hidden unit turns through several radians across the eps-ball, so the cross-entropy has
    interior maxima there: sign steps overshoot them, the loss oscillates, and APGD's halving,
    restarts and momentum all shape the trajectory. Class 0's bias exceeds the most any other
    class can gain from the hidden layer, ``||W2[:, 0] - W2[:, c]||_1``, so class 0 always wins:
    with label 0 no iterate is misclassified and apgd returns its highest-loss iterate.
    """

    def __init__(self, rng):
        dim = int(np.prod(IMAGE_SHAPE))
        self.w1 = 2.0 * rng.normal(size=(dim, 6))
        self.b1 = 0.5 * rng.normal(size=6)
        self.w2 = 0.5 * rng.normal(size=(6, 3))
        self.b2 = np.zeros(3)
        self.b2[0] = np.abs(self.w2 - self.w2[:, :1]).sum(axis=0).max() + 0.5

    def loss_grad(self, x):
        """Cross-entropy for label 0 of one image x (float64) and its analytic input gradient."""
        pre = (x.reshape(-1) - 0.5) @ self.w1 + self.b1
        logits = np.sin(pre) @ self.w2 + self.b2
        shifted = np.exp(logits - logits.max())
        loss = np.log(shifted.sum()) + logits.max() - logits[0]
        dloss_dlogits = shifted / shifted.sum() - np.eye(3)[0]
        grad = self.w1 @ (np.cos(pre) * (self.w2 @ dloss_dlogits))
        return loss, grad.reshape(x.shape)

    def tf_model(self):
        """The same network as a float32 TensorFlow model_fn."""
        w1, b1, w2, b2 = (tf.constant(v, tf.float32) for v in (self.w1, self.b1, self.w2, self.b2))

        def model_fn(x):
            flat = tf.reshape(x, [tf.shape(x)[0], -1]) - 0.5
            return tf.sin(flat @ w1 + b1) @ w2 + b2

        return model_fn


def checkpoint_schedule(num_steps):
    """Croce & Hein's checkpoints w_j = ceil(p_j * num_steps) below num_steps, w_0 = 0 included.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), kept in integer
    hundredths so that the ceiling is exact.
    """
    hundredths = [0, 22]
    while hundredths[-1] < 100:
        hundredths.append(hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6))
    ceilings = {-(-p * num_steps // 100) for p in hundredths}
    return {w for w in ceilings if w < num_steps}


@dataclasses.dataclass
class Run:
    """A reference run: the returned point, every iterate's loss and gradient, the halvings."""

    x_best: np.ndarray
    losses: list
    grads: list
    # Differences of freshly computed losses that decide an increase or a new best.
    loss_gaps: list
    halvings: list


def reference_apgd(net, image, x0, *, momentum=MOMENTUM, restart=True):
    """APGD-CE on one image from the start point x0, in float64.

    Step k = 1..NUM_STEPS goes from x_k to x_{k+1} with z = P(x_k + eta sign(grad f(x_k))) and
    x_{k+1} = P(x_k + momentum (z - x_k) + (1 - momentum) (x_k - x_{k-1})), except the first
    step, x_1 = z. A step counts as an increase when its loss exceeds the previous iterate's.
    At a checkpoint w_j > 0 (after its step), eta halves when fewer than RHO of the steps since
    w_{j-1} were increases, or when eta did not halve at w_{j-1} and the best loss has not grown
    since. A halving restarts (unless ``restart`` is off) from the best point: its gradient, no
    momentum (x_{k-1} := x_k := x_best), and the best loss as the one the next step must beat.

    Returns:
      Run; ``x_best`` is the highest-loss iterate (apgd's point, as none is misclassified).
    """
    checkpoints = checkpoint_schedule(NUM_STEPS)

    def project(v):
        return np.clip(np.clip(v, image - EPS, image + EPS), 0.0, 1.0)

    x = x_before = x0
    loss, grad = net.loss_grad(x)
    run = Run(x_best=x, losses=[loss], grads=[grad], loss_gaps=[], halvings=[])
    loss_best, grad_best = loss, grad
    loss_before = loss
    eta = 2.0 * EPS
    increases = 0
    last_checkpoint, loss_best_at_checkpoint, halved_at_checkpoint = 0, loss_best, False
    for k in range(1, NUM_STEPS + 1):
        z = project(x + eta * np.sign(grad))
        if k == 1:
            x_next = z
        else:
            x_next = project(x + momentum * (z - x) + (1.0 - momentum) * (x - x_before))
        loss, grad = net.loss_grad(x_next)
        run.losses.append(loss)
        run.grads.append(grad)
        run.loss_gaps += [loss - loss_before, loss - loss_best]
        increases += loss > loss_before
        if loss > loss_best:
            run.x_best, loss_best, grad_best = x_next, loss, grad
        x_before, x, loss_before = x, x_next, loss
        if k in checkpoints:
            too_few_increases = increases < RHO * (k - last_checkpoint)
            stalled = not halved_at_checkpoint and loss_best <= loss_best_at_checkpoint
            halve = too_few_increases or stalled
            if halve:
                eta /= 2.0
                run.halvings.append(k)
                if restart:
                    x = x_before = run.x_best
                    grad, loss_before = grad_best, loss_best
            last_checkpoint, increases = k, 0
            loss_best_at_checkpoint, halved_at_checkpoint = loss_best, halve
    return run


@functools.cache
def case(seed):
    """(net, float32 images [BATCH, 2, 2, 3], float64 start points x0) for apgd's ``seed``."""
    rng = np.random.default_rng(0)
    net = SineNet(rng)
    # Pixels in [0.2, 0.8] keep the eps-ball inside [0, 1], so only the ball constrains.
    images = rng.uniform(0.2, 0.8, size=(BATCH, *IMAGE_SHAPE)).astype(np.float32)
    # apgd's random start: the stateless uniform noise of its seed pair [seed, 0], scaled by eps.
    noise = tf.random.stateless_uniform(images.shape, [seed, 0], -1.0, 1.0).numpy()
    x0 = images.astype(np.float64) + EPS * noise.astype(np.float64)
    return net, images, x0


def reference_runs(seed, **variant):
    net, images, x0 = case(seed)
    return [
        reference_apgd(net, image.astype(np.float64), start, **variant)
        for image, start in zip(images, x0, strict=True)
    ]


def best_points(runs):
    return np.stack([run.x_best for run in runs])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_trajectory_depends_on_momentum_and_restarts(seed):
    # Evidence that the comparison below has teeth: every example halves, and the reference with
    # no momentum (1.0), another momentum (0.5) or halving without the restart returns a point
    # at least eps / 4 away (in some pixel) from the right one, for several examples.
    runs = reference_runs(seed)
    assert all(run.halvings for run in runs)
    right = best_points(runs)
    for variant in [{"momentum": 1.0}, {"momentum": 0.5}, {"restart": False}]:
        wrong = best_points(reference_runs(seed, **variant))
        moved = np.max(np.abs(wrong - right), axis=(1, 2, 3)) > EPS / 4
        assert np.sum(moved) >= 2, variant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apgd_matches_float64_reference(seed):
    net, images, _ = case(seed)
    runs = reference_runs(seed)
    # float32 apgd takes the reference's discrete decisions (gradient signs, loss comparisons)
    # only if none is a near tie; this case keeps every one clear of float32 error.
    assert min(np.min(np.abs(g)) for run in runs for g in run.grads) > GRAD_MARGIN
    assert min(abs(gap) for run in runs for gap in run.loss_gaps) > LOSS_MARGIN

    labels = np.zeros(BATCH, np.int32)
    x_adv = apgd(net.tf_model(), images, labels, eps=EPS, num_steps=NUM_STEPS, seed=seed)
    x_adv = x_adv.numpy()
    np.testing.assert_allclose(x_adv, best_points(runs), atol=1e-5)
    # The returned point is the highest-loss iterate.
    for point, run in zip(x_adv, runs, strict=True):
        assert net.loss_grad(point.astype(np.float64))[0] >= max(run.losses) - LOSS_MARGIN
