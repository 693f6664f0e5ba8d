"""APGD (Croce & Hein 2020): PGD with momentum and a step size that halves when progress stalls,
on the cross-entropy (APGD-CE) or the difference-of-logits ratio (APGD-DLR).

Its checkpoint schedule is ``apgd_checkpoints``. On a stochastic model the point it returns can
be chosen by a fresh ensemble of weight draws (``ensemble_pick``) instead of by the noisy
in-loop statistics.
"""

import itertools
import math

import numpy as np
import tensorflow as tf

from tfp_advbnn import validation
from tfp_advbnn.attacks.eot import LOSSES, eot_loss_grad
from tfp_advbnn.attacks.inputs import images_and_labels, seed_pair
from tfp_advbnn.attacks.threats import broadcast_per_example, make_threat


def apgd_checkpoints(num_steps):
    """APGD's step-size checkpoints ``w_j = ceil(p_j * num_steps)`` (Croce & Hein 2020, sec. 3).

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.

    Returns:
      sorted list of distinct ints in ``[0, num_steps)``, starting with 0.
    """
    num_steps = validation.integer("num_steps", num_steps, minimum=0)
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
    loss="ce",
):
    """APGD (Croce & Hein 2020, Algorithm 1), untargeted, with EOT gradients.

    ``loss="ce"`` is APGD-CE; ``loss="dlr"`` is APGD-DLR, the same loop on the
    difference-of-logits ratio (``eot.dlr``), which AutoAttack runs after APGD-CE.

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
      loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference-of-logits ratio, >= 3 classes).

    Returns:
      float32 tensor like ``images`` within the eps-ball and [0, 1]. With ``selection_samples``
      0: per example, the most recent iterate that was misclassified (by the mean probabilities
      of that step's draws) if any, else the iterate with the highest loss (as the reference
      implementation's ``x_best_adv``); otherwise the ensemble's pick described above.
    """
    threat = make_threat(norm, eps)
    num_steps = validation.integer("num_steps", num_steps, minimum=0)
    num_eot_samples = validation.integer("num_eot_samples", num_eot_samples, minimum=1)
    selection_samples = validation.integer("selection_samples", selection_samples, minimum=0)
    rho = validation.number("rho", rho, low=0, high=1)
    seed = seed_pair(seed)
    loss_fn = LOSSES[validation.choice("loss", loss, tuple(LOSSES))]
    images, labels = images_and_labels(images, labels)
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
        grad, losses, probs = eot_loss_grad(model_fn, x, labels, num_eot_samples, loss_fn)
        fooled = tf.argmax(probs, axis=1, output_type=tf.int32) != labels
        return grad, losses, fooled

    def per_example(mask):
        return broadcast_per_example(mask, images)

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
    return ensemble_pick(
        model_fn, [final["x_fooled"], final["x_max"], final["x"]], labels, selection_samples
    )


def ensemble_pick(model_fn, candidates, labels, num_draws):
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
