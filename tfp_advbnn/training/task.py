"""The objective of Adv-BNN training and its train step: one tf.function for all five defenses.

Per batch (paper eq. 13):

    x_adv = PGD(x)            for adv and adv_bnn (fresh weight draw at every PGD step)
    x_adv = x                 for plain, bnn and rse
    loss  = CE(f(x_adv; w), y) + beta_t * alpha / N_train * KL(q || p)  [+ weight_decay / 2 * |w|^2]

``w ~ q`` is drawn in the forward pass. ``KL`` is the sum over every Bayesian layer
(``kl_scope="all"``, eq. 13) or the classifier's alone (``kl_scope="classifier"``, what the
reference PyTorch VGG returns and so what the paper's alpha = 1 was tuned with). ``beta_t`` ramps
linearly from 0 to 1 over ``kl_warmup_epochs`` (Sonderby et al. 2016; 1 when that is 0). The
weight-decay term is coupled L2 on the non-Bayesian weights, as PyTorch's ``weight_decay``
of the reference's SGD; Bayesian weights are regularized by the KL alone.

Under a ``tf.distribute`` strategy the cross-entropy is averaged over the global batch with
``tf.nn.compute_average_loss`` and the KL term goes through ``tf.nn.scale_regularization_loss``,
so after the gradients are summed across replicas the KL is counted once. Each replica draws its
own weights, so a step with R replicas averages R Monte Carlo weight samples.

The data order is a deterministic function of (seed, epoch) and the PGD random starts of
(seed, step, replica), so a resumed run replays exactly the batches and starts it skipped to.

``attack.train_attack`` picks the attack of adv and adv_bnn:

- ``pgd``: the PGD above.
- ``fgsm_rs`` (Wong, Rice, Kolter 2020): ``x0 = clip(x + U(-eps, eps), 0, 1)``, then one step
  ``x_adv = clip(clip(x0 + a * sign(grad_x CE(f(x0; w'))), x - eps, x + eps), 0, 1)`` with
  ``a = fgsm_step_scale * eps`` and a fresh draw ``w'`` (``fgsm_rs_examples``).
- ``free`` (Shafahi et al. 2019): every batch is replayed ``m = free_replays`` times, one
  optimizer step each. A per-replica perturbation ``delta`` (batch shape, carried over between
  replays and on to the next batch, as the paper does) gives ``x_adv = clip(x + delta, 0, 1)``;
  the ONE backward pass of the update gives both the weight gradient and ``g = grad_x loss``,
  and ``delta <- clip(clip(x_adv + eps * sign(g), 0, 1) - x, -eps, eps)``. To keep the work of
  the run comparable, its epochs are ``ceil(epochs / m)`` passes over the data of ``m`` steps
  per batch (``run_epochs``); the learning-rate schedule and the KL warm-up count one
  "equivalent epoch" per ``num_train // batch_size`` optimizer steps, so their stages fall at
  the same fraction of the run's optimizer steps as for the other attacks.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras

from tfp_advbnn import attacks, data, layers, models, validation
from tfp_advbnn.attacks.eot import eot_grad
from tfp_advbnn.config import EVAL_SPLITS, KL_SCOPES, TrainConfig


def objective_kl(model, kl_scope: str):
    """The KL of the objective: every Bayesian layer's (``"all"``, eq. 13) or the classifier
    layer's alone (``"classifier"``, the reference implementation's). float32 scalar, nats."""
    validation.choice("kl_scope", kl_scope, KL_SCOPES)
    if kl_scope == "classifier":
        return layers.model_kl(model.get_layer("classifier"))
    return layers.model_kl(model)


def weight_decay_loss(model, weight_decay: float):
    """``weight_decay / 2 * sum(w^2)`` over the trainable non-Bayesian weights (kernels,
    biases, batch-norm scales and offsets), whose gradient is PyTorch's coupled weight decay
    ``weight_decay * w``. float32 scalar; 0 when ``weight_decay`` is 0."""
    bayesian = {id(v) for v in layers.bayesian_variables(model)}
    weights = [v for v in model.trainable_variables if id(v) not in bayesian]
    if not weight_decay or not weights:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in weights])
    return 0.5 * weight_decay * total


def run_epochs(config: TrainConfig) -> int:
    """Passes over the training data the run makes: ``ceil(epochs / free_replays)`` for
    ``train_attack="free"`` (each pass replays every batch ``free_replays`` times), else
    ``epochs``.

    Examples:
        >>> config = TrainConfig.from_flat(
        ...     model_dir="r", defense="adv", train_attack="free", free_replays=8, epochs=20)
        >>> run_epochs(config)
        3
    """
    return math.ceil(config.optim.epochs / config.attack.replays)


def fgsm_rs_examples(model_fn, images, labels, *, eps: float, step_size: float, seed):
    """FGSM from a uniform random start (Wong, Rice, Kolter 2020), L-inf, [0, 1] pixel scale.

    ``x0 = clip(x + u, 0, 1)`` with ``u ~ U(-eps, eps)`` per pixel (stateless, from ``seed``);
    ``x_adv = clip(clip(x0 + step_size * sign(g), x - eps, x + eps), 0, 1)`` with ``g`` the
    input gradient of the summed cross-entropy at ``x0`` from one ``model_fn`` call (a fresh
    weight draw of a stochastic model).

    Args:
      model_fn: float32 images [B, H, W, 3] in [0, 1] -> float32 logits [B, C].
      images: float32 [B, H, W, 3] in [0, 1].
      labels: int [B].
      eps: the radius, a Python float in [0, 1].
      step_size: the FGSM step, a Python float > 0 (Wong et al.: 1.25 * eps).
      seed: int tensor [2], the stateless seed of ``u``.

    Returns:
      float32 [B, H, W, 3] within ``eps`` of ``images`` (L-inf) and in [0, 1].

    Examples:
        >>> x_adv = fgsm_rs_examples(lambda x: model(x, training=False), images, labels,
        ...                          eps=8 / 255, step_size=1.25 * 8 / 255, seed=[0, 1])
    """
    noise = tf.random.stateless_uniform(tf.shape(images), seed, -eps, eps, dtype=images.dtype)
    start = tf.clip_by_value(images + noise, 0.0, 1.0)
    grad = eot_grad(model_fn, start, labels, 1)
    stepped = start + step_size * tf.sign(grad)
    return tf.clip_by_value(tf.clip_by_value(stepped, images - eps, images + eps), 0.0, 1.0)


def free_update(images, x_adv, input_grad, eps: float):
    """Shafahi et al.'s perturbation update: ``clip(clip(x_adv + eps * sign(g), 0, 1) - x,
    -eps, eps)``; float32 like ``images``. A non-finite gradient entry (an overflowing
    float16 step) leaves that pixel's step at 0."""
    finite = tf.where(tf.math.is_finite(input_grad), input_grad, tf.zeros_like(input_grad))
    stepped = tf.clip_by_value(x_adv + eps * tf.sign(finite), 0.0, 1.0)
    return tf.clip_by_value(stepped - images, -eps, eps)


def build_model_for(config: TrainConfig, num_classes: int, image_shape):
    """The model of ``config`` for ``num_classes`` classes and (H, W, 3) images."""
    return models.build_model(
        config.network.model,
        config.objective.defense,
        num_classes=num_classes,
        input_shape=tuple(image_shape),
        width_multiplier=config.network.width_multiplier,
        sigma_0=config.network.sigma_0,
        init_s=config.network.init_s,
        noise_init=config.network.noise_init,
        noise_inner=config.network.noise_inner,
        posterior=config.network.posterior,
        seed=config.runtime.seed,
    )


def load_data_for(config: TrainConfig) -> data.ImageData:
    """The dataset of ``config``: its source, image size, subsets and validation split."""
    image_size = (
        (config.data.image_size, config.data.image_size) if config.data.image_size else None
    )
    return data.load_data(
        config.data.dataset,
        data_dir=config.data.data_dir,
        image_size=image_size,
        max_train_examples=config.data.max_train_examples,
        max_test_examples=config.data.max_test_examples,
        validation_examples=config.data.validation_examples,
        seed=config.runtime.seed,
        download=config.data.download,
    )


class Task:
    """The objective of one run, its compiled train step and its evaluation.

    Create it under ``strategy.scope()``: it makes the metrics and the step counter there.
    ``train_step(train_iterator(epoch))`` runs one global step; ``evaluate`` measures the
    ensemble accuracy, clean and under PGD.

    Args:
      config: the validated TrainConfig.
      model: the model of ``config`` (``build_model_for``), built under the strategy.
      optimizer: its optimizer (``optim.make_optimizer``).
      strategy: the ``tf.distribute`` strategy the step runs under.
      image_data: the training data; ``config.optim.batch_size`` is the global batch size.
      steps_per_epoch: global batches per epoch, ``num_train // batch_size`` (the KL warm-up is
        counted in epochs of that many optimizer steps, also for ``free``, whose passes over
        the data take ``free_replays`` times as many).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: tf_keras.Model,
        optimizer,
        strategy: tf.distribute.Strategy,
        image_data: data.ImageData,
        steps_per_epoch: int,
    ):
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.data = image_data
        self.num_train = image_data.spec.num_train
        self.global_batch_size = config.optim.batch_size
        self.steps_per_epoch = steps_per_epoch
        # Incremented by the compiled step itself and saved with the weights it produced:
        # after any kill and resume it must equal the number of steps the loop has run.
        self.canary_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="canary")
        self.train_loss = tf_keras.metrics.Mean("train/loss")
        self.train_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("train/accuracy")
        self.train_kl = tf_keras.metrics.Mean("train/kl")
        self.train_cross_entropy = tf_keras.metrics.Mean("train/cross_entropy")
        self.train_kl_term = tf_keras.metrics.Mean("train/kl_term")
        self.test_accuracy = tf_keras.metrics.SparseCategoricalAccuracy("test/accuracy")
        self.test_robust_accuracy = tf_keras.metrics.SparseCategoricalAccuracy(
            "test/robust_accuracy"
        )
        self._loss_scaled = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
        # XLA compiles the replica's computation only: the iterator's next() is a host op that
        # XLA cannot compile, so it stays in the outer function, as Keras's fit does.
        self._replica_update = (
            tf.function(self._replica_step, jit_compile=True)
            if config.runtime.jit_compile
            else self._replica_step
        )
        self._compiled_step = tf.function(self._global_step)
        # ``robust`` is a Python bool: one trace per value, as two functions would have.
        self._compiled_eval_step = tf.function(self._global_eval_step)
        self.free_delta = None
        if self._free:
            # One perturbation per replica, of its batch's shape; reading it in a replica
            # context gives that replica's own. Checkpointed (``checkpoint_state``) so that a
            # resumed run carries on with the same one (exactly so on one replica).
            per_replica = self.global_batch_size // strategy.num_replicas_in_sync
            self.free_delta = tf.Variable(
                tf.zeros((per_replica, *image_data.spec.image_shape), tf.float32),
                trainable=False,
                name="free_delta",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )

    @property
    def _free(self) -> bool:
        return (
            models.is_adversarial(self.config.objective.defense)
            and self.config.attack.train_attack == "free"
        )

    def checkpoint_state(self) -> dict:
        """The Task's own values a checkpoint keeps besides the metrics: ``free_delta`` for
        ``train_attack="free"``, else none (so other runs keep their checkpoint layout)."""
        return {"free_delta": self.free_delta} if self._free else {}

    def epoch_record(self, epoch: int) -> dict:
        """What a metrics line says of the schedule after pass ``epoch`` (0-based): for free,
        its replays and the equivalent epochs done (passes times replays); else nothing."""
        if not self._free:
            return {}
        replays = self.config.attack.replays
        return {"free_replays": replays, "equivalent_epochs": (epoch + 1) * replays}

    @property
    def train_metrics(self) -> tuple:
        """The metrics ``train_step`` updates: loss, accuracy, cross-entropy, KL, KL term."""
        return (
            self.train_loss,
            self.train_accuracy,
            self.train_cross_entropy,
            self.train_kl,
            self.train_kl_term,
        )

    def inference_logits(self, images):
        """float32 logits of one weight draw with batch norm in inference mode, as the attacks
        of the reference see the model."""
        return tf.cast(self.model(images, training=False), tf.float32)

    def kl_weight(self, step):
        """The KL's weight in the loss at optimizer step ``step`` (0-based): alpha / N_train,
        ramped linearly from 1 / ramp to 1 of it over ``kl_warmup_epochs`` epochs."""
        weight = self.config.objective.alpha / self.num_train
        ramp_steps = self.config.objective.kl_warmup_epochs * self.steps_per_epoch
        if ramp_steps <= 0:
            return tf.constant(weight, tf.float32)
        progress = (tf.cast(step, tf.float32) + 1.0) / ramp_steps
        return weight * tf.minimum(progress, 1.0)

    def adversarial_examples(self, images, labels):
        """The ``train_attack`` examples at ``train_eps`` (L-inf, [0, 1] pixel scale) of a
        replica's batch, called in a replica context: PGD-``train_pgd_steps`` with a fresh
        weight draw at every PGD step, or ``fgsm_rs_examples`` (one draw). ``free`` makes its
        examples in the update itself (``_replica_step``). The random start is a function of
        (seed, optimizer step, replica), so it is replayed exactly after a resume."""
        config = self.config
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        step = tf.cast(self.optimizer.iterations, tf.int64)
        offset = step * 1024 + tf.cast(replica, tf.int64)
        seed = tf.stack([tf.constant(config.runtime.seed, tf.int64), offset])
        if config.attack.train_attack == "fgsm_rs":
            return fgsm_rs_examples(
                self.inference_logits,
                images,
                labels,
                eps=config.attack.train_eps,
                step_size=config.attack.fgsm_step,
                seed=seed,
            )
        return attacks.pgd(
            self.inference_logits,
            images,
            labels,
            eps=config.attack.train_eps,
            step_size=config.attack.step_size,
            num_steps=config.attack.train_pgd_steps,
            random_start=config.attack.random_start,
            seed=seed,
        )

    def train_iterator(self, epoch: int, skip: int = 0):
        """The distributed batches of ``epoch`` from its step ``skip`` on.

        An input pipeline yields per-replica batches, and each global step takes one per
        replica it feeds, so skipping ``skip`` steps skips ``skip`` times that many elements.
        """

        def dataset_fn(context):
            dataset = self.data.train_dataset(
                batch_size=self.global_batch_size,
                epoch=epoch,
                seed=self.config.runtime.seed,
                input_context=context,
            )
            replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            replays = self.config.attack.replays if self._free else 1
            if replays > 1:
                # free: each global batch ``replays`` times in a row, one global step each. A
                # step takes one element per replica this pipeline feeds, in turn, so the
                # group of those elements is what repeats (each replica replays its own part).
                dataset = dataset.window(replicas_per_pipeline, drop_remainder=True).flat_map(
                    lambda x, y: tf.data.Dataset.zip((x, y)).repeat(replays)
                )
            return dataset.skip(skip * replicas_per_pipeline)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def train_step(self, iterator) -> tf.Tensor:
        """One global step on ``next(iterator)`` (a ``train_iterator``): the update of eq. 13
        on every replica, the training metrics, and ``canary_steps`` + 1.

        Returns the number of replicas that saw a non-finite loss or gradient (int32 scalar);
        the update is applied even then, and the Trainer rolls back to its last checkpoint.
        """
        return self._compiled_step(iterator)

    def _global_step(self, iterator):
        faults = self.strategy.run(self._replica_update, args=next(iterator))
        self.canary_steps.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, faults, axis=None)

    def _replica_step(self, images, labels):
        config = self.config
        free = self._free
        if free:
            clean = images
            size = tf.shape(images)[0]
            # The carried perturbation, cut to this batch (a smaller one takes its first rows).
            carried = self.free_delta[:size]
            images = tf.clip_by_value(clean + carried, 0.0, 1.0)
        elif models.is_adversarial(config.objective.defense):
            images = self.adversarial_examples(images, labels)
        with tf.GradientTape() as tape:
            if free:
                tape.watch(images)
            logits = tf.cast(self.model(images, training=True), tf.float32)
            per_example = tf_keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
            cross_entropy = tf.nn.compute_average_loss(
                per_example, global_batch_size=self.global_batch_size
            )
            kl = objective_kl(self.model, config.objective.kl_scope)
            kl_term = self.kl_weight(self.optimizer.iterations) * kl
            decay = weight_decay_loss(self.model, config.optim.weight_decay)
            loss = cross_entropy + tf.nn.scale_regularization_loss(kl_term + decay)
            scaled = self.optimizer.get_scaled_loss(loss) if self._loss_scaled else loss
        variables = self.model.trainable_variables
        if free:
            # The one backward pass of free training: the input and the weight gradients.
            input_grad, *gradients = tape.gradient(scaled, [images, *variables])
            delta = free_update(clean, images, input_grad, config.attack.train_eps)
            self.free_delta.assign(tf.concat([delta, self.free_delta[size:]], axis=0))
        else:
            gradients = tape.gradient(scaled, variables)
        if self._loss_scaled:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        # The loss scaler skips overflowing float16 steps by design; only a non-finite loss
        # is a fault then. In float32 any non-finite gradient is one.
        checked = [loss] if self._loss_scaled else [loss, *[g for g in gradients if g is not None]]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in checked])
        # Applied even when non-finite: the loop then restores the last checkpoint.
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        replicas = self.strategy.num_replicas_in_sync
        # `loss` is this replica's share; times the replica count it is the global value.
        self.train_loss.update_state(loss * replicas)
        self.train_cross_entropy.update_state(cross_entropy * replicas)
        self.train_kl.update_state(kl)
        self.train_kl_term.update_state(kl_term)
        self.train_accuracy.update_state(labels, logits)
        return tf.cast(tf.logical_not(finite), tf.int32)

    # ----- evaluation -----------------------------------------------------------------------

    def evaluate(self, robust_examples: int = 0, split: str = "test") -> dict:
        """Ensemble accuracy (eq. 18) on ``split`` ("test" or "validation"), and the ensemble
        accuracy under PGD-``eval_pgd_steps`` at ``train_eps`` on its first
        ``robust_examples`` images when that is > 0.

        Returns ``{"<split>_accuracy": ..., "<split>_robust_accuracy": ...}``.
        """
        self.test_accuracy.reset_state()
        for batch in self._eval_dataset(None, split):
            self._compiled_eval_step(batch, False)
        results = {f"{split}_accuracy": float(self.test_accuracy.result())}
        if robust_examples:
            self.test_robust_accuracy.reset_state()
            for batch in self._eval_dataset(robust_examples, split):
                self._compiled_eval_step(batch, True)
            results[f"{split}_robust_accuracy"] = float(self.test_robust_accuracy.result())
        return results

    def _eval_dataset(self, max_examples: int | None, split: str):
        make = {"test": self.data.test_dataset, "validation": self.data.validation_dataset}
        validation.choice("split", split, EVAL_SPLITS)

        def dataset_fn(context):
            dataset = make[split](batch_size=self.global_batch_size, input_context=context)
            if max_examples:
                per_replica = context.get_per_replica_batch_size(self.global_batch_size)
                dataset = dataset.unbatch().take(max_examples // context.num_input_pipelines)
                dataset = dataset.batch(per_replica)
            return dataset

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _global_eval_step(self, batch, robust: bool):
        self.strategy.run(self._replica_eval_step, args=(*batch, robust))

    def _replica_eval_step(self, images, labels, robust: bool):
        config = self.config
        num_samples = models.num_draws(config.objective.defense, config.monitor.eval_num_samples)
        metric = self.test_accuracy
        if robust:
            metric = self.test_robust_accuracy
            images = attacks.pgd(
                self.inference_logits,
                images,
                labels,
                eps=config.attack.train_eps,
                step_size=attacks.default_step_size(
                    config.attack.train_eps, config.monitor.eval_pgd_steps
                ),
                num_steps=config.monitor.eval_pgd_steps,
            )
        probabilities = models.ensemble_probabilities(self.inference_logits, images, num_samples)
        metric.update_state(labels, probabilities)
