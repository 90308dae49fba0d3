"""Training: losses, optimizers, schedules, the trainer, the run config of `qorus train`, plots and the
profiler."""
