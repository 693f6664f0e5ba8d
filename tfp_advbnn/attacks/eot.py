"""Loss gradients with respect to the input, and their expectation over weight draws (EOT).

A stochastic (Bayesian) model draws new weights on every call, so one call gives a one-draw
estimate of the loss and its gradient. Expectation over transformation (Athalye et al. 2018)
averages ``num_eot_samples`` separate calls. Only input gradients are computed: every tape is
created with ``watch_accessed_variables=False`` and watches the input alone, so weight sampling
and other variable arithmetic are never recorded for backprop.
"""

import tensorflow as tf


def loss_grad(model_fn, x, labels):
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


def eot_loss_grad(model_fn, x, labels, num_eot_samples):
    """Expectation-over-transformation estimate from ``num_eot_samples`` model calls.

    Each call is an independent weight draw of a stochastic model (tiling the batch instead would
    share one draw). Returns the mean input gradient, the mean per-example loss [B] and the mean
    predicted probabilities [B, C] over the draws.
    """
    if num_eot_samples == 1:
        return loss_grad(model_fn, x, labels)

    def body(i, grad_sum, loss_sum, probs):
        grad, loss, prob = loss_grad(model_fn, x, labels)
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
