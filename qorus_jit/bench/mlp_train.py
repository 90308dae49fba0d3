"""MLP training throughput: samples/s of ``qorus_jit.models.MLP`` beside the same MLP in PyTorch eager.

    python -m qorus_jit.bench.mlp_train [--steps 50] [--repeat 3] [--threads 2]

Workload: an MLP [784, 256, 256, 10] with ReLU, batch 128 of random float32 inputs and labels, AdamW
(lr 1e-3, weight decay 0.01); one step is forward + cross-entropy + backward + optimizer update. The
reference is ``torch.nn.Sequential`` of the same layers with ``torch.optim.AdamW``, the same thread count.
Each side runs in its own fresh process (a process of ours and torch's OpenMP pools would share the cores;
see docs/design.md), in ``--repeat`` pairs of one process a side back to back, the side going first
alternating; a process takes 5 warm-up steps, then times ``--steps`` steps, and its figure is the median
step. :func:`measure` returns samples/s per repeat; the ratio is the median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import statistics

from qorus_jit.bench._timing import in_turn, spread
from qorus_jit.bench.train import run_side, torch_available

SIZES, BATCH = [784, 256, 256, 10], 128

_COMMON = f"""
import json, resource, statistics, sys, time
import numpy as np
SIZES, B, STEPS, WARMUP = {SIZES!r}, {BATCH}, int(sys.argv[1]), 5
rng = np.random.default_rng(0)
batches = [(rng.standard_normal((B, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], B))
           for _ in range(4)]

def timed(step):
    times = []
    for i in range(WARMUP + STEPS):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    print(json.dumps({{"step_s": statistics.median(times[WARMUP:]), "steps": times[WARMUP:]}}))
"""

OURS = _COMMON + """
from qorus_jit.core.numerics import set_num_threads
from qorus_jit.models import MLP
from qorus_jit.train.optim import AdamW
from qorus_jit.train.losses import CrossEntropyLoss

set_num_threads(int(sys.argv[2]))
model = MLP(SIZES, activation="relu", rng=0)
opt, loss_fn = AdamW(model, lr=1e-3, weight_decay=0.01), CrossEntropyLoss()

def step(i):
    x, y = batches[i % len(batches)]
    opt.zero_grad()
    loss, dlogits = loss_fn(model.forward(x), y)
    model.backward(dlogits)
    opt.step()

timed(step)
"""

TORCH = _COMMON + """
import torch

torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
layers = []
for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
    layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(SIZES) - 2 else [])
model = torch.nn.Sequential(*layers)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

def step(i):
    x, y = tb[i % len(tb)]
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

timed(step)
"""


def measure(steps: int = 50, repeat: int = 3, threads: int = 2, torch: bool | None = None) -> dict:
    """Samples/s of each side per repeat: pairs of fresh processes, one a side back to back, in turn first (the
    i-th of each side from the same pair); torch's only when importable."""
    torch = torch_available() if torch is None else torch
    res = {"sizes": SIZES, "batch": BATCH, "threads": threads, "ours_samples_per_s": []}
    if torch:
        res["torch_samples_per_s"] = []
    code = {"ours": OURS, "torch": TORCH}
    for i in range(repeat):
        for side in in_turn(i, "ours", "torch") if torch else ("ours",):
            res[f"{side}_samples_per_s"].append(BATCH / run_side(code[side], steps, threads)["step_s"])
    return res


def main(argv=None) -> int:
    """Run the MLP training benchmark (``--steps``, ``--repeat``, ``--threads``) and print its table; returns the exit
    status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    res = measure(args.steps, args.repeat, args.threads)
    for k, v in res.items():
        print(f"{k:20s} {v}")
    if "torch_samples_per_s" in res:
        ratios = [o / t for o, t in zip(res["ours_samples_per_s"], res["torch_samples_per_s"], strict=True)]
        lo, hi = spread(ratios)
        print(f"ours / torch: {statistics.median(ratios):.2f}x (median of the pairs; pairs {lo:.2f}-{hi:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
