"""A tiny data-parallel training run for the MPI tests: ``mpiexec -n N python -m tests.distributed.mpi_train
RUN_DIR BATCH [--steps S] [--fail-rank R --fail-batch K] [--resume]``; alone (no launcher) it is one process.

The model, data and settings are fixed (a 2-block Llama on random tokens, AdamW, gradient accumulation 2, a
gradient-norm clip that is active): N processes with micro-batch b and one process with b*N must agree.
``--fail-rank R --fail-batch K``: rank R raises at its K-th micro-batch (a fault)."""

from __future__ import annotations

import argparse

import numpy as np

from qorus_jit.core import distributed as dist
from qorus_jit.data import TextDataset
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.train.optim import AdamW
from qorus_jit.train.trainer import Trainer

CLIP = 0.5


class FailingData(TextDataset):
    """A TextDataset whose ``fail_batch``-th draw raises on rank ``fail_rank``."""

    fail_rank = fail_batch = -1

    def train_batch(self, batch_size):
        if dist.rank() == self.fail_rank and self.batches_drawn == self.fail_batch:
            raise RuntimeError(f"injected fault at batch {self.batches_drawn}")
        return super().train_batch(batch_size)


def trainer(run_dir, batch_size: int, steps: int = 20, fail_rank: int = -1, fail_batch: int = -1,
            grad_accum: int = 2) -> Trainer:
    tokens = np.random.default_rng(0).integers(0, 64, 6000)
    data = FailingData(tokens, seq_len=16, val_fraction=0.1, seed=0)
    data.fail_rank, data.fail_batch = fail_rank, fail_batch
    model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=64, max_seq_len=16), rng=0)
    return Trainer(model, AdamW(model, lr=3e-3, weight_decay=0.1), data, steps=steps, batch_size=batch_size,
                   grad_accum=grad_accum, clip=CLIP, eval_every=10, eval_batches=2, ckpt_every=5, run_dir=run_dir,
                   progress=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("batch_size", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-batch", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    t = trainer(a.run_dir, a.batch_size, a.steps, a.fail_rank, a.fail_batch)
    if a.resume:
        t.resume(a.run_dir)
    t.fit()


if __name__ == "__main__":
    main()
