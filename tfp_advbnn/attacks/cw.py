"""The Carlini-Wagner L2 attack (Carlini & Wagner 2017), with its Adam update on plain tensors.

An optimization attack: it minimises distortion plus a margin loss instead of ascending the
loss inside a ball, so its perturbation has no eps bound (evaluation cuts it at eps when it
scores it).
"""

import numpy as np
import tensorflow as tf

from tfp_advbnn import validation
from tfp_advbnn.attacks.inputs import images_and_labels, scalar_tensor
from tfp_advbnn.attacks.threats import broadcast_per_example, example_axes


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
    c = scalar_tensor("c", c, positive=False)
    kappa = scalar_tensor("kappa", kappa, positive=False)
    num_steps = validation.integer("num_steps", num_steps, minimum=0)
    learning_rate = scalar_tensor("learning_rate", learning_rate, positive=True)
    images, labels = images_and_labels(images, labels)

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
            dist = tf.reduce_sum(tf.square(x_adv - images), axis=example_axes(images))
            total = tf.reduce_sum(dist + c * margin)
        grad = tape.gradient(total, w)
        improved = (real < other) & (dist < best_dist)
        best_adv = tf.where(broadcast_per_example(improved, images), x_adv, best_adv)
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
    found = broadcast_per_example(tf.math.is_finite(best_dist), images)
    return tf.where(found, best_adv, to_image(w))
