"""Under load: the default thread policy against the best fixed thread count while other processes keep every
core busy.

    python -m qorus_jit.bench.load [--rounds 7] [--tokens 200] [--steps 16] [--out perf/results/load.json]

The benchmark starts one busy process per core itself (a Python loop each, killed at the end and stopping by
itself after ``--limit`` seconds), then measures in ``--rounds`` rounds, the configurations in each round in
turn (the order rotating from round to round, so that no configuration always follows another):

- decode: tokens/s of :func:`qorus_jit.infer.generate` on the stories15M shape (as ``qorus_jit.bench.decode``),
  ``--tokens`` new tokens, greedy;
- train: seconds per step of a :class:`qorus_jit.train.Trainer` run of ``--steps`` steps on W-train's Llama
  (dim 256, 4 layers, batch 2 x 256), each run a fresh model, optimizer and trainer;

each with the default policy (``auto``, :mod:`qorus_jit.core.threads`), with 1 thread and with every core.
The best fixed count is the one with the better median over the rounds; the figure is the median of the
rounds' ratios default / that count in the same round (goal: >= 0.9), with their spread. Nothing here is a
test: the figures depend on the load the busy processes make on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from qorus_jit.bench._timing import rotation, write_results

BUSY_LOOP = "import sys, time\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"
TRAIN_SHAPE = dict(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)


class BusyCores:
    """One busy process per core for the ``with`` block (each stops by itself after ``limit`` seconds)."""

    def __init__(self, n: int | None = None, limit: float = 1800.0):
        self.n, self.limit, self.procs = n or os.cpu_count() or 1, limit, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(self.limit)]) for _ in range(self.n)]
        time.sleep(0.5)  # running before the first measurement
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def _decode_run(model, tokens: int) -> float:
    from qorus_jit.infer.generate import generate

    gen = generate(model, [1], tokens, temperature=0.0)
    for _ in gen:
        pass
    return gen.decode_tokens_per_s


def _train_run(steps: int) -> float:
    import numpy as np

    from qorus_jit.data import TextDataset
    from qorus_jit.models import Llama, LlamaConfig
    from qorus_jit.train import AdamW, Trainer

    model = Llama(LlamaConfig(**TRAIN_SHAPE, tie_embeddings=False), rng=0)
    data = TextDataset(np.random.default_rng(0).integers(0, 256, 200_000), seq_len=256, seed=0)
    trainer = Trainer(model, AdamW(model, lr=1e-3), data, steps=steps, batch_size=2, progress=False)
    t0 = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - t0) / steps


def _configs(top: int) -> list:
    return ["auto", 1, top] if top > 1 else ["auto"]


def _with_threads(config, fn, *args):
    from qorus_jit.core.numerics import set_num_threads

    set_num_threads(config)
    try:
        return fn(*args)
    finally:
        set_num_threads("auto")


def _figure(runs: dict, higher_is_better: bool) -> dict:
    """The best fixed count (by median) and default / best, round by round (oriented: above 1, default wins)."""
    fixed = [c for c in runs if c != "auto"]
    pick = max if higher_is_better else min
    best = pick(fixed, key=lambda c: statistics.median(runs[c]))
    ratios = [(a / b if higher_is_better else b / a) for a, b in zip(runs["auto"], runs[best], strict=True)]
    return {"best_fixed": best, "ratio": statistics.median(ratios), "spread": [min(ratios), max(ratios)],
            "ratios": ratios, "medians": {str(c): statistics.median(v) for c, v in runs.items()},
            "runs": {str(c): v for c, v in runs.items()}}


def measure(rounds: int = 7, tokens: int = 200, steps: int = 16, which=("decode", "train"),
            limit: float = 1800.0, log=None) -> dict:
    """The figures as a dict per workload (see the module's text); ``which`` picks the workloads."""
    from qorus_jit.bench.decode import SHAPE as DECODE_SHAPE
    from qorus_jit.bench.decode import ours
    from qorus_jit.core.numerics import max_threads, set_num_threads
    from qorus_jit.core.threads import cpu_sample, other_cpu
    from qorus_jit.models import Llama, LlamaConfig

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    set_num_threads("auto")
    configs = _configs(max_threads())
    work = {}
    if "decode" in which:
        model = Llama(LlamaConfig(**DECODE_SHAPE, norm_eps=1e-5, tie_embeddings=True), rng=0)
        ours(model, 8, 0)  # kernels loaded, buffers sized
        work["decode"] = (lambda: _decode_run(model, tokens), True)
    if "train" in which:
        _train_run(1)  # kernels loaded
        work["train"] = (lambda: _train_run(steps), False)
    out = {"cores": os.cpu_count(), "configs": [str(c) for c in configs], "rounds": rounds}
    with BusyCores(limit=limit) as busy:
        out["busy_processes"] = busy.n
        for name, (fn, higher) in work.items():
            runs = {c: [] for c in configs}
            cpu0 = cpu_sample()
            for r in range(rounds):
                for c in rotation(r, configs):
                    runs[c].append(_with_threads(c, fn))
                log(f"load.{name} round {r + 1}/{rounds}: " + ", ".join(f"{c} {runs[c][-1]:.3g}" for c in configs))
            out[name] = _figure(runs, higher) | {"unit": "tok/s" if higher else "s/step",
                                                  "other_cpu": other_cpu(cpu0, cpu_sample())}
    return out


def main(argv=None) -> int:
    """Run the under-load benchmark and print its figures; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--only", choices=("decode", "train"), default=None)
    ap.add_argument("--limit", type=float, default=1800.0, help="seconds after which the busy processes stop")
    ap.add_argument("--out", default="perf/results/load.json")
    args = ap.parse_args(argv)
    res = measure(args.rounds, args.tokens, args.steps, (args.only,) if args.only else ("decode", "train"),
                  args.limit)
    for name in ("decode", "train"):
        if name in res:
            f = res[name]
            med = ", ".join(f"{c}: {v:.3g}" for c, v in f["medians"].items())
            print(f"{name:7s} default / best fixed ({f['best_fixed']} threads) = {f['ratio']:.2f} "
                  f"({f['spread'][0]:.2f}-{f['spread'][1]:.2f}); medians {f['unit']} {med}")
    write_results(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
