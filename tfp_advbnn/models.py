"""The model families of Adv-BNN: VGG-11/13/16/19 and the paper's STL-10 "model A".

``build_model`` returns a built tf_keras functional model from float32 images [B, H, W, 3] in
[0, 1] to float32 logits [B, num_classes], in one of five defenses:

- ``plain`` / ``adv``: ordinary tf_keras Conv2D, BatchNormalization and Dense layers (``adv``
  differs only in how it is trained).
- ``bnn`` / ``adv_bnn``: every conv, every batch normalization and the classifier is Bayesian
  (``tfp_advbnn.layers``); the model's KL (``model_kl(model)``) is the sum over all of them.
- ``rse``: the plain model with ``RandomNoise(noise_init)`` before the first conv and
  ``RandomNoise(noise_inner)`` before every other conv (Liu et al., ECCV 2018).

Batch normalization, ordinary and Bayesian, is synchronized across replicas under a
``tf.distribute`` strategy, so a step on R replicas normalizes with the statistics of the global
batch, as one device would.

Convs have biases in every defense (as in the reference implementation), so a Bayesian model has
exactly twice the trainable variables and scalars of its plain twin. Weights and biases of the
plain layers, and the means of the Bayesian ones, start uniform in +-1/sqrt(fan_in).
"""

import math

import tensorflow as tf
import tf_keras

from tfp_advbnn import validation
from tfp_advbnn.layers import (
    POSTERIORS,
    BayesBatchNormalization,
    BayesConv2D,
    BayesDense,
    RandomNoise,
    derive_seed,
)

ARCHITECTURES = ("vgg11", "vgg13", "vgg16", "vgg19", "model_a")
DEFENSES = ("plain", "bnn", "adv", "rse", "adv_bnn")

# Conv widths; "M" is a 2x2 max-pool. The standard VGG configurations A, B, D and E.
_VGG_PLANS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    ),
    "vgg19": (
        *(64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    ),
}
# Model A: four padded conv-BN-ReLU-maxpool blocks, then two unpadded convs and a 2x2 avg-pool.
_MODEL_A_BLOCKS = (32, 64, 128, 256)
_MODEL_A_HEAD = (256, 512)
# Smallest spatial size: VGG halves it five times; model A halves it four times, loses 4 pixels
# to the two unpadded convs and then needs 2x2 for the average pool: 16 * (2 + 4) = 96.
_MIN_SIZE = {"vgg": 32, "model_a": 96}

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def is_bayesian(defense):
    """True for defenses with Bayesian layers: "bnn" and "adv_bnn"."""
    return validation.choice("defense", defense, DEFENSES) in ("bnn", "adv_bnn")


def is_stochastic(defense):
    """True for defenses whose logits are random at inference: "bnn", "adv_bnn" and "rse"."""
    return validation.choice("defense", defense, DEFENSES) in ("bnn", "adv_bnn", "rse")


def is_adversarial(defense):
    """True for defenses trained on adversarial examples: "adv" and "adv_bnn"."""
    return validation.choice("defense", defense, DEFENSES) in ("adv", "adv_bnn")


def num_draws(defense, num_samples):
    """How many draws an ensemble prediction (eq. 18) of ``defense`` needs: the one place for it.

    ``num_samples`` for a stochastic defense, whose every call draws new weights (or noise);
    1 for a deterministic one, whose draws are all identical, so that one draw is the whole
    ensemble and averaging more would only repeat the same forward pass.

    Args:
      defense: one of ``DEFENSES``.
      num_samples: the requested number of draws, an int >= 1.

    Returns:
      An int >= 1.

    Examples:
        >>> num_draws("adv_bnn", 10), num_draws("adv", 10)
        (10, 1)
    """
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    return num_samples if is_stochastic(defense) else 1


def ensemble_probabilities(model_fn, images, num_samples):
    """Paper eq. 18: the softmax averaged over ``num_samples`` calls (weight draws) of ``model_fn``.

    Args:
      model_fn: callable float32 images [B, H, W, C] -> logits [B, num_classes]; a stochastic
        model draws new weights (or noise) on every call.
      images: float32 [B, H, W, C] in [0, 1].
      num_samples: Python int >= 1; use 1 for deterministic models.

    Returns:
      float32 [B, num_classes] class probabilities. Works eagerly and inside ``tf.function``,
      where the draws after the first run in a ``tf.while_loop``, so the graph does not grow
      with ``num_samples``.
    """
    validation.integer("num_samples", num_samples, minimum=1)

    def probabilities():
        return tf.nn.softmax(tf.cast(model_fn(images), tf.float32), axis=-1)

    total = probabilities()
    if num_samples > 1:
        _, total = tf.while_loop(
            lambda i, _: i < num_samples - 1,
            lambda i, acc: (i + 1, acc + probabilities()),
            (tf.constant(0), total),
        )
    return total / float(num_samples)


class _LayerFactory:
    """Creates the layers of one model, numbering them and deriving their seeds."""

    def __init__(self, defense, *, sigma_0, init_s, noise_init, noise_inner, posterior, seed):
        self.bayesian = is_bayesian(defense)
        self.rse = defense == "rse"
        self.sigma_0 = sigma_0
        self.init_s = init_s
        self.noise_init = noise_init
        self.noise_inner = noise_inner
        self.posterior = posterior
        self.seed = seed
        self.num_convs = 0
        self._num_seeded = 0

    def _next_seed(self):
        """Per-layer seed ``seed * 1000 + i`` (None when the model is unseeded)."""
        self._num_seeded += 1
        if self.seed is None:
            return None
        return self.seed * 1000 + self._num_seeded

    def _bayes_kwargs(self):
        return dict(sigma_0=self.sigma_0, init_s=self.init_s, seed=self._next_seed())

    def _plain_initializers(self, fan_in):
        """PyTorch's default init, as for the Bayesian means: U(+-1/sqrt(fan_in))."""
        seed = self._next_seed()
        bound = 1.0 / math.sqrt(fan_in)
        return dict(
            kernel_initializer=tf_keras.initializers.RandomUniform(
                -bound, bound, seed=derive_seed(seed, "kernel")
            ),
            bias_initializer=tf_keras.initializers.RandomUniform(
                -bound, bound, seed=derive_seed(seed, "bias")
            ),
        )

    def conv_bn_relu(self, x, filters, *, padding):
        """[noise ->] 3x3 conv -> BN -> ReLU, each a named layer."""
        self.num_convs += 1
        index = self.num_convs
        if self.rse:
            stddev = self.noise_init if index == 1 else self.noise_inner
            x = RandomNoise(stddev, seed=self._next_seed(), name=f"noise{index}")(x)
        if self.bayesian:
            x = BayesConv2D(
                filters,
                3,
                padding=padding,
                posterior=self.posterior,
                name=f"conv{index}",
                **self._bayes_kwargs(),
            )(x)
            x = BayesBatchNormalization(
                momentum=_BN_MOMENTUM,
                epsilon=_BN_EPSILON,
                name=f"bn{index}",
                **self._bayes_kwargs(),
            )(x)
        else:
            fan_in = 9 * int(x.shape[-1])
            x = tf_keras.layers.Conv2D(
                filters, 3, padding=padding, name=f"conv{index}", **self._plain_initializers(fan_in)
            )(x)
            x = tf_keras.layers.BatchNormalization(
                momentum=_BN_MOMENTUM,
                epsilon=_BN_EPSILON,
                synchronized=True,
                name=f"bn{index}",
            )(x)
        return tf_keras.layers.ReLU(name=f"relu{index}")(x)

    def classifier(self, x, num_classes):
        if self.bayesian:
            return BayesDense(
                num_classes, posterior=self.posterior, name="classifier", **self._bayes_kwargs()
            )(x)
        return tf_keras.layers.Dense(
            num_classes, name="classifier", **self._plain_initializers(int(x.shape[-1]))
        )(x)


def _width(channels, width_multiplier):
    return max(1, int(round(channels * width_multiplier)))


def build_model(
    arch,
    defense,
    *,
    num_classes,
    input_shape,
    width_multiplier=1.0,
    sigma_0,
    init_s,
    noise_init=0.2,
    noise_inner=0.1,
    posterior="reparameterization",
    seed=None,
):
    """Builds one of the paper's models for one defense.

    Args:
      arch: one of ``ARCHITECTURES``. ``vgg*``: 3x3 conv-BN-ReLU blocks and 2x2 max-pools with the
        standard VGG channel plan, global average pooling, one linear classifier; needs H, W >= 32.
        ``model_a``: the paper's STL-10 model; needs H, W >= 96.
      defense: one of ``DEFENSES``.
      num_classes: number of logits, an int >= 2.
      input_shape: (H, W, C) of one image.
      width_multiplier: scales every conv width (rounded, at least 1 channel); > 0.
      sigma_0: prior standard deviation of the Bayesian layers (used by "bnn" and "adv_bnn").
      init_s: initial posterior standard deviation of the Bayesian layers.
      noise_init: stddev of the RSE noise before the first conv, in [0, 1] pixel units.
      noise_inner: stddev of the RSE noise before every other conv.
      posterior: "reparameterization" or "flipout" for the Bayesian conv and dense layers.
      seed: None or a non-negative int; layer i gets seed ``seed * 1000 + i`` for its
        initializers and its random generator, so a fixed seed gives a reproducible model and
        reproducible draws.

    Returns:
      A built ``tf_keras.Model`` named ``f"{arch}_{defense}"``, float32 [B, H, W, C] in [0, 1] ->
      float32 logits [B, num_classes]. For Bayesian defenses its ``losses`` after a call are the
      per-layer KL terms (eq. 6); ``tfp_advbnn.layers.model_kl`` sums them.

    Raises:
      ValueError: naming the bad value, for any invalid argument.
    """
    validation.choice("arch", arch, ARCHITECTURES)
    validation.choice("defense", defense, DEFENSES)
    num_classes = validation.integer("num_classes", num_classes, minimum=2)
    if (
        not isinstance(input_shape, tuple | list)
        or len(input_shape) != 3
        or not all(validation.is_int(d) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be (height, width, channels) ints, got {input_shape!r}")
    min_size = _MIN_SIZE["model_a" if arch == "model_a" else "vgg"]
    if min(input_shape[:2]) < min_size:
        raise ValueError(
            f"{arch} needs height and width >= {min_size}, got input_shape {tuple(input_shape)}"
        )
    width_multiplier = validation.positive("width_multiplier", width_multiplier)
    sigma_0 = validation.positive("sigma_0", sigma_0)
    init_s = validation.positive("init_s", init_s)
    noise_init = validation.non_negative("noise_init", noise_init)
    noise_inner = validation.non_negative("noise_inner", noise_inner)
    validation.choice("posterior", posterior, POSTERIORS)
    seed = validation.seed("seed", seed)

    factory = _LayerFactory(
        defense,
        sigma_0=sigma_0,
        init_s=init_s,
        noise_init=noise_init,
        noise_inner=noise_inner,
        posterior=posterior,
        seed=seed,
    )
    inputs = tf_keras.Input(shape=tuple(int(d) for d in input_shape), name="images")
    x = inputs
    num_pools = 0
    if arch == "model_a":
        for channels in _MODEL_A_BLOCKS:
            x = factory.conv_bn_relu(x, _width(channels, width_multiplier), padding="same")
            num_pools += 1
            x = tf_keras.layers.MaxPool2D(2, name=f"pool{num_pools}")(x)
        for channels in _MODEL_A_HEAD:
            x = factory.conv_bn_relu(x, _width(channels, width_multiplier), padding="valid")
        x = tf_keras.layers.AveragePooling2D(2, name="avg_pool")(x)
    else:
        for item in _VGG_PLANS[arch]:
            if item == "M":
                num_pools += 1
                x = tf_keras.layers.MaxPool2D(2, name=f"pool{num_pools}")(x)
            else:
                x = factory.conv_bn_relu(x, _width(item, width_multiplier), padding="same")
    # For model A at 96x96 this is a plain flatten of the 1x1 map; larger inputs are averaged.
    x = tf_keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    logits = factory.classifier(x, num_classes)
    return tf_keras.Model(inputs, logits, name=f"{arch}_{defense}")
