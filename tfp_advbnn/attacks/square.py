"""Square Attack (Andriushchenko et al. 2020), a score-based black-box attack, through ART.

Gradient-masking checks need an attack that never looks at a gradient: if such an attack fools
examples that the white-box attacks could not, those attacks were misled (Carlini et al. 2019;
AutoAttack's ``check_square_sr``). Square only queries the model's scores. It is not
implemented here: ``square_attack`` runs the Adversarial Robustness Toolbox's ``SquareAttack``
on an ART ``TensorFlowV2Classifier`` whose scores are the ``num_samples``-draw ensemble's mean
softmax (paper eq. 18), the prediction the defense actually makes.

ART is an optional extra (``pip install -e ".[attacks]"``) and is imported only when an attack
runs, so the package imports without it; ``require_art`` raises an ImportError naming the extra.
"""

import importlib
import math
import warnings

import numpy as np
import tensorflow as tf

from tfp_advbnn import models, validation

# The extra that installs ART, as the error message and the README name it.
ART_EXTRA = 'pip install -e ".[attacks]"'
ART_REQUIREMENT = "adversarial-robustness-toolbox==1.20.*"


def require_art(module: str):
    """Imports ``art.<module>`` (e.g. ``"attacks.evasion"``), or says how to install ART.

    Raises:
      ImportError: when ART is not installed, naming the ``[attacks]`` extra.

    Examples:
        >>> require_art("attacks.evasion").SquareAttack.__name__  # doctest: +SKIP
        'SquareAttack'
    """
    try:
        with warnings.catch_warnings():
            # ART warns on import that PyTorch is missing; its TensorFlow parts do not need it.
            warnings.filterwarnings("ignore", message="PyTorch not found", category=UserWarning)
            return importlib.import_module(f"art.{module}")
    except ImportError as error:
        raise ImportError(
            "the Square attack and the independent-implementation benchmark need the Adversarial "
            f"Robustness Toolbox ({ART_REQUIREMENT}), which is not installed: {ART_EXTRA} "
            f"(or pip install {ART_REQUIREMENT!r})"
        ) from error


def ensemble_classifier(model_fn, image_shape, num_classes, *, num_samples, batch_size):
    """An ART ``TensorFlowV2Classifier`` scoring images with the ``num_samples``-draw ensemble.

    Its ``predict(x)`` maps float32 images [B, H, W, 3] in [0, 1] to the mean softmax over
    ``num_samples`` calls of ``model_fn`` (``models.ensemble_probabilities``): float32
    [B, num_classes]. Every ``predict`` draws afresh. ART's ``TensorFlowV2Classifier.predict``
    runs all of ``x`` at once whatever its ``batch_size``; this one runs ``batch_size`` images
    at a time, so memory does not grow with the number of examples.

    Args:
      model_fn: float32 images [B, H, W, 3] -> logits [B, num_classes], one draw per call.
      image_shape: (H, W, 3).
      num_classes: int >= 2.
      num_samples: int >= 1, draws averaged per prediction.
      batch_size: int >= 1, images per model call.
    """
    classification = require_art("estimators.classification")
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    batch_size = validation.integer("batch_size", batch_size, minimum=1)

    def ensemble(images, training=False):
        # ART passes its training-mode flag; an ensemble prediction is always inference.
        del training
        return models.ensemble_probabilities(model_fn, tf.cast(images, tf.float32), num_samples)

    class BatchedClassifier(classification.TensorFlowV2Classifier):
        def predict(self, x, batch_size=batch_size, training_mode=False, **kwargs):
            parent = super().predict
            parts = [
                parent(x[start : start + batch_size], training_mode=training_mode, **kwargs)
                for start in range(0, max(len(x), 1), batch_size)
            ]
            return np.concatenate(parts)

    return BatchedClassifier(
        model=ensemble,
        nb_classes=int(num_classes),
        input_shape=tuple(int(d) for d in image_shape),
        clip_values=(0.0, 1.0),
    )


def _check_inputs(images, labels):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have shape [{images.shape[0]}], got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(
            f"images must lie in [0, 1], got values in [{images.min()}, {images.max()}]"
        )
    return images.astype(np.float32), labels.astype(np.int64)


def square_attack(
    model_fn,
    images,
    labels,
    *,
    eps,
    num_samples,
    max_queries=5000,
    p_init=0.8,
    seed=None,
    batch_size=128,
) -> np.ndarray:
    """Untargeted L-inf Square Attack on the ensemble's probabilities, run by ART.

    ART's ``SquareAttack`` starts from vertical stripes of +-eps, then for ``max_queries``
    iterations proposes, per example still classified correctly, a random square of +-2 eps
    (clipped to the eps-ball and [0, 1]) whose side shrinks on the schedule set by ``p_init``
    (the fraction of pixels of the first squares), and keeps it when the margin loss
    ``p_y - max_{j != y} p_j`` of the ensemble falls. An example is left alone once the ensemble
    misclassifies it. Each iteration scores the current and the proposed images, so it costs
    about ``3 * num_samples`` model calls per example still being attacked: AutoAttack's 5,000
    queries with a 10-draw ensemble are ~150,000 forward passes per robust image.

    On a stochastic model every prediction is a fresh ensemble, so the loss Square compares is
    noisy; score the result with a fresh ensemble (``evaluation.blackbox.square_outcomes``).

    Args:
      model_fn: callable, float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C]; one
        weight draw per call.
      images: float32 [N, H, W, 3] in [0, 1].
      labels: int [N], the true classes in [0, C).
      eps: L-inf radius in the [0, 1] pixel scale, in [0, 1]; 0 returns ``images``.
      num_samples: int >= 1, draws in the ensemble that scores every query (1 for a
        deterministic model).
      max_queries: int >= 1, Square iterations (the paper's query budget; AutoAttack's is 5000).
      p_init: float in (0, 1), the initial fraction of pixels a square covers (AutoAttack's 0.8).
        ``round(sqrt(p_init * H * W))`` must be smaller than H and W.
      seed: None or int >= 0: seeds the attack's random proposals (ART draws them from NumPy's
        global generator, which is restored afterwards). The model's own weight draws are not
        affected.
      batch_size: int >= 1, images per ensemble prediction.

    Returns:
      float32 np.ndarray [N, H, W, 3], adversarial images within ``eps`` of ``images`` (L-inf)
      and in [0, 1].

    Raises:
      ImportError: ART is not installed (the message names the ``[attacks]`` extra).
      ValueError: naming the bad argument.

    Examples:
        >>> x_adv = square_attack(
        ...     lambda x: model(x, training=False), images, labels,
        ...     eps=8 / 255, num_samples=10, max_queries=1000, seed=0)  # doctest: +SKIP
    """
    eps = validation.unit_interval("eps", eps)
    num_samples = validation.integer("num_samples", num_samples, minimum=1)
    max_queries = validation.integer("max_queries", max_queries, minimum=1)
    p_init = validation.number("p_init", p_init, low=0, high=1, low_open=True, high_open=True)
    seed = validation.seed("seed", seed)
    batch_size = validation.integer("batch_size", batch_size, minimum=1)
    images, labels = _check_inputs(images, labels)
    height, width = images.shape[1:3]
    # ART draws a square's corner with randint(0, side - tile), which fails for a full tile.
    first_tile = max(round(math.sqrt(p_init * height * width)), 1)
    if first_tile >= min(height, width):
        raise ValueError(
            f"p_init={p_init} makes Square's first square {first_tile} pixels wide, which must be "
            f"smaller than the {height}x{width} image; lower p_init"
        )
    evasion = require_art("attacks.evasion")
    if eps == 0.0 or len(images) == 0:
        return images.copy()

    num_classes = int(model_fn(tf.constant(images[:1])).shape[-1])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]"
        )
    classifier = ensemble_classifier(
        model_fn, images.shape[1:], num_classes, num_samples=num_samples, batch_size=batch_size
    )
    attack = evasion.SquareAttack(
        classifier,
        norm=np.inf,
        eps=eps,
        max_iter=max_queries,
        p_init=p_init,
        nb_restarts=1,
        batch_size=batch_size,
        verbose=False,
    )
    state = np.random.get_state()
    try:
        if seed is not None:
            np.random.seed(seed)
        x_adv = attack.generate(images, labels)
    finally:
        np.random.set_state(state)
    return np.asarray(x_adv, np.float32)
