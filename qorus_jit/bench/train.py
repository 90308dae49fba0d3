"""W-train: seconds per training step and peak memory of a small Llama, ours beside PyTorch eager (and, with
``--compile``, beside ``torch.compile`` of the same model).

    python -m qorus_jit.bench.train [--steps 10] [--repeat 3] [--threads 2] [--compile] [--out perf/results/train.json]

Workload (the perf issue's W-train): Llama dim 256, 4 layers, 8 heads (head_dim 32), SwiGLU hidden 768,
vocab 256, seq 256, batch 8, untied head, AdamW; one step is forward + cross-entropy + backward + optimizer
update. The reference is ``transformers``' ``LlamaForCausalLM`` with ``torch.optim.AdamW`` (PyTorch eager,
same shapes, same batches, the same thread count).

Each side runs in its own fresh process (so each has its own peak RSS and thread settings), in ``--repeat``
pairs: one process of each side back to back, the side going first alternating (ours, torch, torch, ours, ...),
so that a busy stretch of the machine slows both sides of a pair. A process builds the model, takes two
warm-up steps, then times ``--steps`` steps; its figure is the median step. Reported: the median over the
repeats of each side's median step, the speed ratio (torch / ours: above 1 means ours is faster) as the median
of the pairs' ratios with their spread, tokens/s, and each side's peak RSS (``VmHWM`` of
``/proc/self/status``: interpreter, libraries, model, optimizer state and activations). Not ``ru_maxrss``:
Linux carries the parent's peak into a child across ``exec``, so under ``qorus bench`` (a large parent) both
sides read the parent's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from qorus_jit.bench._timing import rotation, spread, write_results

SHAPE = dict(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)
BATCH, SEQ = 8, 256

_COMMON = f"""
import json, resource, statistics, sys, time
import numpy as np
SHAPE = {SHAPE!r}
B, T, STEPS = {BATCH}, {SEQ}, int(sys.argv[1])
rng = np.random.default_rng(0)
batches = [(rng.integers(0, SHAPE["vocab_size"], (B, T)), rng.integers(0, SHAPE["vocab_size"], (B, T)))
           for _ in range(4)]

def time_steps(step):  # two warm-up steps, then STEPS timed; prints median, times and peak RSS as JSON
    times = []
    for i in range(2 + STEPS):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    times = times[2:]
    print(json.dumps({{"step_s": statistics.median(times), "steps": times,
                      "peak_rss_MB": peak_rss_MB()}}))

def peak_rss_MB():  # this process's own high-water mark (ru_maxrss would include the parent's, see above)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

OURS = _COMMON + """
from qorus_jit.core.numerics import set_num_threads
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.train.optim import AdamW
from qorus_jit.train.losses import CrossEntropyLoss

set_num_threads(int(sys.argv[2]))
model = Llama(LlamaConfig(**SHAPE, tie_embeddings=False), rng=0)
opt, loss_fn = AdamW(model, lr=1e-3, weight_decay=0.1), CrossEntropyLoss()

def step(i):
    x, y = batches[i % len(batches)]
    opt.zero_grad()
    loss, dlogits = loss_fn(model.forward(x), y)
    model.backward(dlogits)
    opt.step()
    return loss

time_steps(step)
"""

TORCH = _COMMON + """
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=SHAPE["dim"], num_hidden_layers=SHAPE["n_layers"], num_attention_heads=SHAPE["n_heads"],
                  num_key_value_heads=SHAPE["n_heads"], intermediate_size=SHAPE["hidden_dim"],
                  vocab_size=SHAPE["vocab_size"], max_position_embeddings=SHAPE["max_seq_len"],
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
model = LlamaForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

def step(i):
    x, y = tb[i % len(tb)]
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()

time_steps(step)
"""

#: The same with ``torch.compile`` (inductor; it compiles in the warm-up steps, which are not timed).
TORCH_COMPILE = TORCH.replace("model = LlamaForCausalLM(cfg).float().train()\n",
                              "model = torch.compile(LlamaForCausalLM(cfg).float().train())\n")
assert TORCH_COMPILE != TORCH


def run_side(code: str, steps: int, threads: int) -> dict:
    """Run one side in a fresh interpreter; returns its median step, the step times and its peak RSS."""
    out = subprocess.run([sys.executable, "-c", code, str(steps), str(threads)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"W-train process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_available() -> bool:
    """Whether PyTorch and transformers can be imported (the reference side of the figures)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def measure(steps: int = 10, repeat: int = 3, threads: int = 2, torch: bool | None = None,
            compile: bool = False) -> dict:
    """``repeat`` rounds of fresh processes, one of each side back to back, the order turning round by round;
    returns each round's figures (the i-th of each side from the same round).

    ``torch=None`` runs the reference when PyTorch and transformers are importable; ``compile`` adds
    ``torch.compile`` of the reference as a third side."""
    torch = torch_available() if torch is None else torch
    code = {"ours": OURS, "torch": TORCH, "compile": TORCH_COMPILE}
    sides = ["ours"] + (["torch"] if torch else []) + (["compile"] if torch and compile else [])
    got = {side: [] for side in sides}
    for i in range(repeat):
        for side in rotation(i, sides):
            got[side].append(run_side(code[side], steps, threads))
    res = {"shape": dict(SHAPE, batch=BATCH, seq=SEQ), "threads": threads, "tokens_per_step": BATCH * SEQ}
    for side in sides:
        res[f"{side}_step_s"] = [r["step_s"] for r in got[side]]
        res[f"{side}_peak_rss_MB"] = [r["peak_rss_MB"] for r in got[side]]
    return res


def summary(res: dict) -> dict:
    """Medians of :func:`measure`'s figures, tokens/s and the speed ratios (reference step / our step, torch
    eager's and, when measured, torch.compile's): the medians of the rounds' ratios, with their spread."""
    med = statistics.median
    out = {"ours_step_s": med(res["ours_step_s"]), "ours_peak_rss_MB": med(res["ours_peak_rss_MB"])}
    out["ours_tokens_per_s"] = res["tokens_per_step"] / out["ours_step_s"]
    if "torch_step_s" in res:
        out["torch_step_s"] = med(res["torch_step_s"])
        out["torch_peak_rss_MB"] = med(res["torch_peak_rss_MB"])
        out["torch_tokens_per_s"] = res["tokens_per_step"] / out["torch_step_s"]
        ratios = [t / o for o, t in zip(res["ours_step_s"], res["torch_step_s"], strict=True)]
        out["speedup_vs_torch"] = med(ratios)
        out["speedup_min"], out["speedup_max"] = spread(ratios)
        out["rss_ratio_ours_over_torch"] = out["ours_peak_rss_MB"] / out["torch_peak_rss_MB"]
    if "compile_step_s" in res:
        out["compile_step_s"] = med(res["compile_step_s"])
        ratios = [t / o for o, t in zip(res["ours_step_s"], res["compile_step_s"], strict=True)]
        out["speedup_vs_compile"] = med(ratios)
        out["speedup_vs_compile_min"], out["speedup_vs_compile_max"] = spread(ratios)
    return out


def main(argv=None) -> int:
    """Run the W-train benchmark (``--steps``, ``--repeat``, ``--threads``) and print its table; returns the exit
    status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the reference")
    ap.add_argument("--out", default="perf/results/train.json",
                    help="the JSON to write, from the working directory (default: %(default)s)")
    args = ap.parse_args(argv)
    res = measure(args.steps, args.repeat, args.threads, compile=args.compile)
    res["summary"] = summary(res)
    for k, v in res.items():
        if k != "summary":
            print(f"{k:22s} {v}")
    for k, v in res["summary"].items():
        print(f"{k:26s} {v:.4g}")
    write_results(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
