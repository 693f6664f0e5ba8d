"""Adv-BNN training: the objective and train step (``task``), the loop (``trainer``), its
checkpoints (``checkpointing``), clean stops (``preemption``), the optimizer and strategy
(``optim``), the default recipe (``recipe``), the catastrophic-overfitting guard (``guard``),
the periodic progress lines (``progress``) and the TensorBoard summaries (``summaries``).

Examples:
    >>> from tfp_advbnn import training
    >>> config = training.TrainConfig.from_flat(model_dir="runs/demo", **training.recipe_defaults(
    ...     "cifar10", "adv_bnn"))
    >>> metrics = training.train(config)
"""

from tfp_advbnn.config import (
    INIT_S,
    KL_SCOPES,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    TrainConfig,
)

# The model_dir layout lives in run_dir; these names stay here for the modules that still
# import them from training (evaluation, trainers/evaluate.py, benchmarks).
from tfp_advbnn.run_dir import (
    CHECKPOINT_DIRNAME,
    CONFIG_FILENAME,
    METRICS_FILENAME,
    MODEL_SPEC_FILENAME,
    TENSORBOARD_DIRNAME,
    read_config,
    read_model_spec,
    write_text_atomically,
)
from tfp_advbnn.training.checkpointing import (
    CheckpointMismatchError,
    checkpoint_paths,
    model_identity,
    restore_checked,
    restore_latest,
    restore_model,
)
from tfp_advbnn.training.optim import (
    StagedLearningRate,
    build_strategy,
    learning_rate_schedule,
    make_optimizer,
)
from tfp_advbnn.training.preemption import StopRequested
from tfp_advbnn.training.recipe import (
    DATASET_DEFAULTS,
    DEFENSE_DEFAULTS,
    STAGE_EPOCHS,
    recipe_defaults,
    with_recipe_defaults,
)
from tfp_advbnn.training.task import (
    Task,
    build_model_for,
    load_data_for,
    objective_kl,
    weight_decay_loss,
)
from tfp_advbnn.training.trainer import Trainer, train

__all__ = [
    "CHECKPOINT_DIRNAME",
    "CONFIG_FILENAME",
    "DATASET_DEFAULTS",
    "DEFENSE_DEFAULTS",
    "INIT_S",
    "KL_SCOPES",
    "METRICS_FILENAME",
    "MODEL_SPEC_FILENAME",
    "OPTIMIZERS",
    "PRECISIONS",
    "STAGE_EPOCHS",
    "STRATEGIES",
    "TENSORBOARD_DIRNAME",
    "CheckpointMismatchError",
    "StagedLearningRate",
    "StopRequested",
    "Task",
    "TrainConfig",
    "Trainer",
    "build_model_for",
    "build_strategy",
    "checkpoint_paths",
    "learning_rate_schedule",
    "load_data_for",
    "make_optimizer",
    "model_identity",
    "objective_kl",
    "read_config",
    "read_model_spec",
    "recipe_defaults",
    "restore_checked",
    "restore_latest",
    "restore_model",
    "train",
    "weight_decay_loss",
    "with_recipe_defaults",
    "write_text_atomically",
]
