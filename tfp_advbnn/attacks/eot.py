"""Loss gradients with respect to the input, and their expectation over weight draws (EOT).

A stochastic (Bayesian) model draws new weights on every call, so one call gives a one-draw
estimate of the loss and its gradient. Expectation over transformation (Athalye et al. 2018)
averages ``num_eot_samples`` separate calls. Only input gradients are computed: every tape is
created with ``watch_accessed_variables=False`` and watches the input alone, so weight sampling
and other variable arithmetic are never recorded for backprop.
"""

import tensorflow as tf


def cross_entropy(labels, logits):
    """Per-example cross-entropy, float32 [B], of int labels [B] and logits [B, C]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def dlr(labels, logits):
    """Per-example difference-of-logits ratio (Croce & Hein 2020, eq. 6), float32 [B].

    ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3) + 1e-12)`` with ``z_(k)`` the k-th largest
    logit: invariant to shifting and scaling the logits, so a model's logit scale cannot hide
    its gradient. Needs at least 3 classes.
    """
    num_classes = logits.shape[-1]
    if num_classes is not None and num_classes < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {num_classes}")
    true_logit = tf.gather(logits, labels, axis=1, batch_dims=1)
    others = tf.where(tf.one_hot(labels, tf.shape(logits)[1]) > 0, -float("inf"), logits)
    top = tf.math.top_k(logits, k=3).values
    return -(true_logit - tf.reduce_max(others, axis=1)) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES = {"ce": cross_entropy, "dlr": dlr}


def loss_grad(model_fn, x, labels, loss=cross_entropy):
    """One model call: input gradient of the summed ``loss``, per-example losses, probs.

    Summing over the batch keeps each example's gradient independent of the batch size.
    Returns (grad like x, loss float32 [B], probabilities float32 [B, C]).
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        logits = tf.cast(model_fn(x), tf.float32)
        losses = loss(labels, logits)
        total = tf.reduce_sum(losses)
    grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return grad, losses, tf.nn.softmax(logits)


def eot_loss_grad(model_fn, x, labels, num_eot_samples, loss=cross_entropy):
    """Expectation-over-transformation estimate from ``num_eot_samples`` model calls.

    Each call is an independent weight draw of a stochastic model (tiling the batch instead would
    share one draw). Returns the mean input gradient, the mean per-example loss [B] and the mean
    predicted probabilities [B, C] over the draws.
    """
    if num_eot_samples == 1:
        return loss_grad(model_fn, x, labels, loss)

    def body(i, grad_sum, loss_sum, probs):
        grad, losses, prob = loss_grad(model_fn, x, labels, loss)
        return i + 1, grad_sum + grad, loss_sum + losses, probs.write(i, prob)

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


def eot_grad(model_fn, x, labels, num_eot_samples):
    """Mean input gradient over ``num_eot_samples`` model calls (no statistics kept)."""
    if num_eot_samples == 1:
        return loss_grad(model_fn, x, labels)[0]

    def body(i, grad_sum):
        return i + 1, grad_sum + loss_grad(model_fn, x, labels)[0]

    _, grad_sum = tf.while_loop(
        lambda i, _: i < num_eot_samples,
        body,
        (tf.constant(0), tf.zeros_like(x)),
        parallel_iterations=1,
    )
    return grad_sum / float(num_eot_samples)
