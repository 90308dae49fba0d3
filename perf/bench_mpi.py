"""Data-parallel W-train on one machine: 2 MPI processes x 1 thread against 1 process x 2 threads.

    python -m perf.bench_mpi [--rounds 5] [--steps 6] [--json PATH]
    python -m perf.bench_mpi --gpt2 [--steps 2]    # the compute time and allreduce of a 124M GPT-2 step
    python -m perf.bench_mpi --overlap [--rounds 5] # 2 x 1: the allreduce after the backward pass, or overlapped

W-train (qorus_jit/bench/train.py): Llama dim 256, 4 layers, 8 heads, SwiGLU hidden 768, vocab 256, seq 256,
untied head, AdamW; global batch 8. One side is one process with 2 threads and batch 8; the other is
``mpiexec -n 2``, each process 1 thread and micro-batch 4, the gradients averaged by
:func:`qorus_jit.core.distributed.allreduce` (4 MiB buckets) before the optimizer step. A step is forward +
cross-entropy + backward (+ allreduce) + AdamW; each process takes two warm-up steps, then ``--steps`` timed
ones (rank 0's clock; the ranks wait for each other in the allreduce, so their steps are the same length).

The sides alternate pair by pair, each in fresh processes (one, then two; the next pair two, then one), so a
busy moment of the shared machine slows both alike. Reported: each side's median step, the median over the
pairs of the ratio (1 process / 2 processes: above 1, the two processes are faster) with its spread (lowest
and highest pair), and the allreduce's share of a two-process step (median over its steps and rounds).

``--gpt2``: one process x 2 threads times a step of GPT-2 124M (dim 768, 12 layers, 12 heads, vocab 50257,
tied head) at batch 1 x 256 tokens, and ``mpiexec -n 2`` x 1 thread times the allreduce of its 124M-float
gradient: the figures the cost model of docs/distributed.md starts from.

``--overlap``: two two-process sides alternate: the allreduce after the backward pass (as the Trainer does)
against each transformer block's gradients (final once its backward returns) sent as one nonblocking
allreduce right then, the head, norm and embedding after the backward; the pending requests are tested at
each block boundary, the only moments MPICH advances them (no progress thread). Reported as the other ratio:
after / overlapped (above 1: overlapping is faster).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

WTRAIN = dict(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)
GPT2 = dict(dim=768, n_layers=12, n_heads=12, vocab_size=50257, max_seq_len=1024)
BATCH, SEQ = 8, 256


def overlap_hooks(model, grads: list):
    """Make each block of ``model`` start the allreduce of its gradients as its backward returns; returns
    ``finish()``, which starts the rest, waits for all, writes the means back and clears the requests."""
    import numpy as np
    from mpi4py import MPI

    comm, pending = MPI.COMM_WORLD, []

    def start(arrays):
        flat = np.concatenate([a.reshape(-1) for a in arrays])
        pending.append((comm.Iallreduce(MPI.IN_PLACE, flat, op=MPI.SUM), flat, arrays))
        MPI.Request.Testall([r for r, _, _ in pending])  # MPICH advances requests only inside MPI calls

    in_blocks = set()
    for block in model._blocks:
        own = list(block.gradients().values())
        in_blocks |= {id(g) for g in own}

        def hooked(*args, _backward=block.backward, _own=own, **kw):
            out = _backward(*args, **kw)
            start(_own)
            return out

        block.backward = hooked
    rest = [g for g in grads if id(g) not in in_blocks]

    def finish():
        start(rest)
        MPI.Request.Waitall([r for r, _, _ in pending])
        scale = np.float32(1.0 / comm.Get_size())
        for _, flat, arrays in pending:
            at = 0
            for a in arrays:
                a.reshape(-1)[:] = flat[at:at + a.size]
                a *= scale
                at += a.size
        pending.clear()

    return finish


def worker(model_name: str, threads: int, batch: int, seq: int, steps: int, overlap: bool = False) -> None:
    """One process of a side: time ``steps`` steps after two warm-ups; rank 0 prints the figures as JSON."""
    import numpy as np

    from qorus_jit.core import distributed as dist
    from qorus_jit.core.numerics import set_num_threads
    from qorus_jit.models import GPT2 as GPT2Model
    from qorus_jit.models import GPT2Config, Llama, LlamaConfig
    from qorus_jit.train.losses import CrossEntropyLoss
    from qorus_jit.train.optim import AdamW

    set_num_threads(threads)
    if model_name == "gpt2":
        model = GPT2Model(GPT2Config(**GPT2), rng=0)
    else:
        model = Llama(LlamaConfig(**WTRAIN, tie_embeddings=False), rng=0)
    opt, loss_fn = AdamW(model, lr=1e-3, weight_decay=0.1), CrossEntropyLoss()
    vocab, rank, size = model.config.vocab_size, dist.rank(), dist.size()
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, vocab, (batch * size, seq)), rng.integers(0, vocab, (batch * size, seq)))
               for _ in range(2)]
    grads = list(model.gradients().values())
    finish = overlap_hooks(model, grads) if overlap else None
    step_s, reduce_s = [], []
    for i in range(2 + steps):
        x, y = (a[rank * batch:(rank + 1) * batch] for a in batches[i % 2])
        t0 = time.perf_counter()
        opt.zero_grad()
        _, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits)
        t1 = time.perf_counter()
        if finish is not None:
            finish()
        else:
            dist.allreduce(grads)
        t2 = time.perf_counter()
        opt.step()
        if i >= 2:
            step_s.append(time.perf_counter() - t0)
            reduce_s.append(t2 - t1)
    if rank == 0:
        print(json.dumps({"step_s": statistics.median(step_s), "steps": step_s, "allreduce_s": reduce_s,
                          "grad_MB": sum(g.nbytes for g in grads) / 1e6, "processes": size, "threads": threads,
                          "tokens": batch * size * seq}))


def run_side(procs: int, threads: int, batch: int, steps: int, model: str = "wtrain", seq: int = SEQ,
             overlap: bool = False) -> dict:
    """Run one side in fresh processes (``mpiexec -n procs`` when procs > 1); returns rank 0's figures."""
    cmd = [sys.executable, "-m", "perf.bench_mpi", "--worker", model, str(threads), str(batch), str(seq), str(steps),
           str(int(overlap))]
    if procs > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(procs), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{procs}-process side failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(rounds: int, steps: int) -> dict:
    one, two, ratios, shares = [], [], [], []
    for r in range(rounds):
        sides = [(1, 2, BATCH), (2, 1, BATCH // 2)]
        got = {}
        for procs, threads, batch in (sides if r % 2 == 0 else sides[::-1]):
            got[procs] = run_side(procs, threads, batch, steps)
        one.append(got[1]["step_s"])
        two.append(got[2]["step_s"])
        ratios.append(got[1]["step_s"] / got[2]["step_s"])
        shares += [a / s for a, s in zip(got[2]["allreduce_s"], got[2]["steps"], strict=True)]
        print(f"round {r + 1}: 1x2 {got[1]['step_s'] * 1e3:.0f} ms, 2x1 {got[2]['step_s'] * 1e3:.0f} ms, "
              f"ratio {ratios[-1]:.3f}", file=sys.stderr)
    return {"one_process_2_threads_step_s": statistics.median(one),
            "two_processes_1_thread_step_s": statistics.median(two),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "allreduce_share_median": statistics.median(shares), "allreduce_share_max": max(shares),
            "grad_MB": got[2]["grad_MB"], "tokens_per_step": got[2]["tokens"], "rounds": rounds, "steps": steps}


def overlap(rounds: int, steps: int) -> dict:
    after, over, ratios = [], [], []
    for r in range(rounds):
        got = {}
        for kind in ((False, True) if r % 2 == 0 else (True, False)):
            got[kind] = run_side(2, 1, BATCH // 2, steps, overlap=kind)
        after.append(got[False]["step_s"])
        over.append(got[True]["step_s"])
        ratios.append(after[-1] / over[-1])
        print(f"round {r + 1}: after {after[-1] * 1e3:.0f} ms, overlapped {over[-1] * 1e3:.0f} ms, "
              f"ratio {ratios[-1]:.3f}", file=sys.stderr)
    return {"after_backward_step_s": statistics.median(after), "overlapped_step_s": statistics.median(over),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rounds": rounds, "steps": steps}


def gpt2(steps: int) -> dict:
    step = run_side(1, 2, 1, steps, "gpt2")
    reduce = run_side(2, 1, 1, steps, "gpt2")
    return {"gpt2_step_s_1x2": step["step_s"], "gpt2_tokens": step["tokens"], "grad_MB": step["grad_MB"],
            "allreduce_s_2x1": statistics.median(reduce["allreduce_s"]),
            "step_s_2x1": reduce["step_s"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, threads, batch, seq, steps, over = sys.argv[2], *map(int, sys.argv[3:8])
        worker(model, threads, batch, seq, steps, bool(over))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--gpt2", action="store_true", help="time a GPT-2 124M step and its allreduce instead")
    p.add_argument("--overlap", action="store_true", help="2 x 1: allreduce after the backward pass or overlapped")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args()
    if shutil.which("mpiexec") is None:
        raise SystemExit("error: mpiexec not found: pip install -e \".[mpi]\"")
    result = gpt2(a.steps) if a.gpt2 else overlap(a.rounds, a.steps) if a.overlap else compare(a.rounds, a.steps)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        from qorus_jit.core.files import atomic_write_text

        atomic_write_text(a.json, text + "\n")


if __name__ == "__main__":
    main()
