"""Training: losses, optimizers, schedules, the trainer, the run config of `qorus train`, plots and the
profiler.

The names a training script imports are exported here (``from qorus_jit.train import Trainer, AdamW``);
each module of the package imports from the module that defines a name, never from this one.
"""

from qorus_jit.train.losses import LOSSES, CrossEntropyLoss, MSELoss, make_loss
from qorus_jit.train.optim import SGD, Adam, AdamW, Optimizer, decay_groups
from qorus_jit.train.profiler import Profile, profile
from qorus_jit.train.run import ConfigError, Run, TrainConfig, resume_run, start_run
from qorus_jit.train.schedule import constant, cosine, linear, make_schedule, step_decay, warmup, warmup_cosine
from qorus_jit.train.trainer import Trainer, TrainingError

__all__ = [
    "LOSSES", "SGD", "Adam", "AdamW", "ConfigError", "CrossEntropyLoss", "MSELoss", "Optimizer", "Profile", "Run",
    "TrainConfig", "Trainer", "TrainingError", "constant", "cosine", "decay_groups", "linear", "make_loss",
    "make_schedule", "profile", "resume_run", "start_run", "step_decay", "warmup", "warmup_cosine",
]
