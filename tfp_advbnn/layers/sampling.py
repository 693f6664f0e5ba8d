"""Randomness of the stochastic layers: derived seeds, per-layer generators, N(0, 1) draws.

Every stochastic layer draws fresh noise on every call, eagerly and inside ``tf.function``. Each
one owns a ``tf.random.Generator`` (``make_generator``, called in ``build``; seeded from ``seed``
when given, otherwise from non-deterministic state) and samples statelessly with seeds drawn
from it (``next_stateless_seed``), so the RNG state is a variable that ``tf.train.Checkpoint``
saves with the model and a fixed ``seed`` gives reproducible draws. Build under
``strategy.scope()`` for distributed training so that each replica gets its own stream.

``posterior_mean()`` turns the noise off: every layer then uses its posterior means (and the RSE
noise layers add nothing), the deterministic pass of the ``posterior_mean`` serving signature.
"""

import contextlib
import hashlib
import math

import tensorflow as tf

# How many posterior_mean() contexts are open. Process-wide rather than per thread, so that the
# replica threads of a tf.distribute strategy see it too.
_posterior_mean_depth = 0


def derive_seed(seed, *salt):
    """Returns a 31-bit int seed derived from ``seed`` and ``salt``, or None if ``seed`` is None.

    Different salts give unrelated seeds, so one user seed can seed several initializers and
    generators without them producing correlated values.
    """
    if seed is None:
        return None
    text = "/".join(str(part) for part in (seed, *salt))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def standard_normal(shape, seed, dtype=tf.float32):
    """Stateless N(0, 1) samples of ``shape`` by the Box-Muller transform of uniforms.

    Exact in distribution, and measured 1.4x faster on these CPUs than
    ``tf.random.stateless_normal`` for the 15M weights of VGG16, which a Bayesian model draws
    at every forward pass (every PGD step). ``seed`` is an int32 [2] stateless seed.

    Zeros inside ``posterior_mean()``: every draw ``loc + scale * noise`` is then its mean.
    """
    if _posterior_mean_depth:
        return tf.zeros(shape, dtype)
    size = tf.reduce_prod(shape)
    half = (size + 1) // 2
    uniform = tf.random.stateless_uniform(tf.stack([2, half]), seed=seed, dtype=tf.float32)
    # 1 - u lies in (0, 1], so the log is finite.
    radius = tf.sqrt(-2.0 * tf.math.log1p(-uniform[0]))
    angle = (2.0 * math.pi) * uniform[1]
    pairs = tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], axis=0)
    return tf.cast(tf.reshape(pairs[:size], shape), dtype)


@contextlib.contextmanager
def posterior_mean():
    """Within it, every stochastic layer uses its posterior means: the noise is zero.

    Each Bayesian weight ``mu + exp(s) * eps`` is then ``mu`` (Flipout's perturbation vanishes
    too) and ``RandomNoise`` adds nothing, so a model call is one deterministic pass with the
    weight means. It applies to calls made, and ``tf.function`` s traced, inside it: a function
    traced outside it keeps its noise. A deterministic model is unchanged.

    Example:
      >>> with posterior_mean():
      ...     logits = model(images, training=False)  # the same on every call
    """
    global _posterior_mean_depth
    _posterior_mean_depth += 1
    try:
        yield
    finally:
        _posterior_mean_depth -= 1


def make_generator(seed):
    """A per-layer RNG; its state variable is saved by checkpoints of the owning layer."""
    # init_scope: build() can run inside a function-building graph (e.g. a first call in
    # tf.function); the generator's state variable must live outside it, like the weights.
    with tf.init_scope():
        if seed is None:
            return tf.random.Generator.from_non_deterministic_state()
        return tf.random.Generator.from_seed(seed)


def next_stateless_seed(generator):
    """An int32 [2] seed for one stateless sampling op; advances ``generator``."""
    # TFP's samplers want int32 seeds; Generator.make_seeds returns int64 (key, 0) pairs whose
    # cast would keep only 32 bits, so draw 64 random bits directly.
    return generator.uniform_full_int([2], dtype=tf.int32)
