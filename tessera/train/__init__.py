"""Training infrastructure shared by every part: runtime, checkpoints, optimiser, logs and the generic loop."""

from tessera.train.checkpoint import Checkpoint, CheckpointError, load_latest, save_checkpoint
from tessera.train.loop import FitResult, StepOutput, Task, TrainConfig, fit, move_to_device
from tessera.train.optim import OptimConfig, build_optimizer, default_param_groups, warmup_cosine
from tessera.train.runtime import Runtime, autocast, init_runtime, seed_everything
from tessera.train.sampling import EpochSampler

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "load_latest",
    "save_checkpoint",
    "FitResult",
    "StepOutput",
    "Task",
    "TrainConfig",
    "fit",
    "move_to_device",
    "OptimConfig",
    "build_optimizer",
    "default_param_groups",
    "warmup_cosine",
    "Runtime",
    "autocast",
    "init_runtime",
    "seed_everything",
    "EpochSampler",
]
