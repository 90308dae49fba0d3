"""W-train breakdown: where the time of one training step goes, per layer and per kernel.

    python -m qorus_jit.bench.breakdown [--steps 5] [--threads 2]

The workload of ``qorus_jit.bench.train`` (Llama dim 256, 4 layers, 8 heads, SwiGLU hidden 768, vocab 256, seq 256,
batch 8, untied head, AdamW; one step is forward + cross-entropy + backward + optimizer update) runs two
warm-up steps, then ``--steps`` steps under :func:`qorus_jit.train.profiler.profile`. Printed: the step split
into forward, backward, loss and optimizer (each into kernel time and the rest: Python, the graph, NumPy
glue), the layer tree with inclusive times and the kernels under each layer (the four blocks folded into
``model.layers.*``), and every kernel by calling layer. Times are per step, from one process on a shared
machine: read the shares, not the absolute figures. ``qorus bench --breakdown`` prints the same table.
"""

from __future__ import annotations

import argparse
import time

from qorus_jit.bench.train import BATCH, SEQ, SHAPE
from qorus_jit.core.numerics import set_num_threads
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.train.losses import CrossEntropyLoss
from qorus_jit.train.optim import AdamW
from qorus_jit.train.profiler import Profile, profile


def measure(threads: int = 2, steps: int = 5, warmup: int = 2, *, shape: dict | None = None, batch: int = BATCH,
            seq: int = SEQ) -> tuple[Profile, float]:
    """Run the W-train loop (or ``shape``/``batch``/``seq`` instead) with ``threads`` threads: ``warmup``
    plain steps, then ``steps`` profiled ones. Returns the profile and the last warm-up step's seconds
    (a step without the profiler, for comparison)."""
    import numpy as np

    for name, value, low in (("threads", threads, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    set_num_threads(threads)
    shape = dict(SHAPE if shape is None else shape)
    model = Llama(LlamaConfig(**shape, tie_embeddings=False), rng=0)
    opt, loss_fn = AdamW(model, lr=1e-3, weight_decay=0.1), CrossEntropyLoss()
    rng = np.random.default_rng(0)
    V = shape["vocab_size"]
    batches = [(rng.integers(0, V, (batch, seq)), rng.integers(0, V, (batch, seq))) for _ in range(4)]

    def step(i):
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        loss, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits)
        opt.step()
        return loss

    plain_s = float("nan")
    for i in range(warmup):
        t0 = time.perf_counter()
        step(i)
        plain_s = time.perf_counter() - t0
    with profile(model, optimizer=opt, loss=loss_fn, steps=steps) as prof:
        for i in range(steps):
            step(warmup + i)
    return prof, plain_s


def main_table(threads: int = 2, steps: int = 5) -> str:
    """The breakdown of the W-train step as printable text (what ``qorus bench --breakdown`` shows)."""
    warmup = 2
    prof, plain_s = measure(threads, steps, warmup)
    s = SHAPE
    head = (f"W-train step breakdown: Llama dim {s['dim']}, {s['n_layers']} layers, {s['n_heads']} heads, SwiGLU "
            f"hidden {s['hidden_dim']}, vocab {s['vocab_size']}, batch {BATCH} x seq {SEQ}, untied head, AdamW; "
            f"{threads} thread{'s' if threads != 1 else ''}, {warmup} warm-up steps, then {steps} profiled.\n"
            f"Last warm-up step without the profiler: {1e3 * plain_s:.1f} ms. Times below are ms per profiled step; "
            "'other' is time outside kernels (Python, the graph, NumPy glue).")
    return head + "\n\n" + prof.table(("step", "path", "kernel"))


def main(argv=None) -> int:
    """Profile the W-train step (``--steps``, ``--threads``) and print where its time goes; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="numba and BLAS threads (default 2)")
    args = ap.parse_args(argv)
    try:
        table = main_table(args.threads, args.steps)
    except ValueError as e:
        ap.error(str(e))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
