"""Decode and prefill speed of the llama2.c "stories15M" shape, beside transformers' generate and the
memory-bandwidth bound, all measured in the same run.

    python -m qorus_jit.bench.decode [--tokens 200] [--repeat 5] [--threads 2] [--out perf/results/decode.json]

Model: Llama dim 288, 6 layers, 6 heads, SwiGLU hidden 768, vocab 32000, 256 positions, tied head, random
weights; greedy, batch 1. Figures (medians of ``--repeat`` runs):

- ours: tokens/s of the decode phase of :func:`qorus_jit.infer.generate` (the prefill's token excluded);
- transformers: ``LlamaForCausalLM.generate`` of the same weights (``do_sample=False``, KV cache), tokens/s
  over the whole call, torch with the same thread count, in a fresh process without qorus_jit's thread
  settings;
- bound: a streaming-read bandwidth measured here divided by the bytes a decode step must read: every
  weight once (the tied embedding as the output head; one embedding row is negligible) plus the keys and
  values cached so far, averaged over the decoded positions. The bandwidth is that of a parallel sum over
  an array of those same bytes, read over and over as the weights are (so from the same level of the
  memory hierarchy: on a CPU with a large L3 cache, 62 MB stay there); the rate over a 1 GB array is
  reported beside it;
- bound_over_transformers: the bound divided by transformers' rate, the ceiling of the speedup on this
  machine for a decoder that reads the float32 weights once per token;
- prefill: tokens/s of one forward over a 255-token prompt, logits of the last position only, as generation
  needs (ours: the prefill of :func:`qorus_jit.infer.generate`; transformers: one ``LlamaForCausalLM`` forward of
  the same prompt with ``logits_to_keep=1``, in the process above).

:func:`measure` returns the figures (with each repeat's rate, for the suite of ``qorus bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import prange

from qorus_jit.core.numerics import kernel, sum_in_order

#: Variables qorus_jit sets at import when unset (its thread settings; see qorus_jit/__init__.py).
QORUS_ENV = ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")

SHAPE = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=768, vocab_size=32000, max_seq_len=256)


@kernel(parallel=True)
def _stream_read(x, part):
    """part[c] = the sum of chunk c of x (n,): every byte of x read once, chunks over threads."""
    n, nc = x.shape[0], part.shape[0]
    per = (n + nc - 1) // nc
    for c in prange(nc):
        part[c] = sum_in_order(x[c * per:min(n, (c + 1) * per)])


def stream_bandwidth(n_bytes: int, repeat: int = 9) -> float:
    """Bytes per second of a parallel read of an ``n_bytes`` float32 array read over and over (median of
    ``repeat``): the rate at which bytes come from wherever an array of that size lives between reads."""
    x = np.ones(n_bytes // 4, np.float32)
    part = np.zeros(64, np.float32)
    _stream_read(x, part)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _stream_read(x, part)
        times.append(time.perf_counter() - t0)
    return x.nbytes / statistics.median(times)


def bytes_per_token(model, first_pos: int, n: int) -> float:
    """Weight bytes plus the mean KV-cache bytes read by the decode steps at positions first_pos ...: the float32
    parameters and the quantized layers' weights (a tied table counted once, as the head)."""
    from qorus_jit.layers.quantized import quantized_layers

    c = model.config
    weights = sum(p.nbytes for p in model.parameters().values())
    weights += sum(layer.weight_nbytes for layer in quantized_layers(model).values())
    kv_per_pos = 2 * c.n_layers * (c.n_kv_heads or c.n_heads) * (c.dim // c.n_heads) * 4
    mean_len = first_pos + (n + 1) / 2
    return weights + kv_per_pos * mean_len


def ours(model, n: int, repeat: int) -> tuple[list[float], list[int]]:
    """Decode tokens/s of each of ``repeat`` greedy generations of ``n`` tokens, and the last one's tokens."""
    from qorus_jit.infer.generate import generate

    list(generate(model, [1], 8, temperature=0.0))  # warm up (kernels loaded, buffers sized)
    rates, tokens = [], []
    for _ in range(repeat):
        gen = generate(model, [1], n, temperature=0.0)
        tokens = list(gen)
        rates.append(gen.decode_tokens_per_s)
    return rates, tokens


def prefill_prompt() -> list[int]:
    """The 255 token ids of the prefill figure."""
    return np.random.default_rng(0).integers(3, SHAPE["vocab_size"], 255).tolist()


def prefill(model, repeat: int) -> list[float]:
    """Prefill tokens/s of each of ``repeat`` generations from :func:`prefill_prompt` (after one warm-up)."""
    from qorus_jit.infer.generate import generate

    prompt = np.asarray(prefill_prompt(), np.int64)
    list(generate(model, prompt, 1, temperature=0.0))
    rates = []
    for _ in range(repeat):
        gen = generate(model, prompt, 1, temperature=0.0)
        list(gen)
        rates.append(gen.prefill_tokens_per_s)
    return rates


REFERENCE = """
import json, sys, time
import torch, transformers
folder, n, repeat, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompt = torch.tensor([json.loads(sys.argv[5])])
torch.set_num_threads(threads)
ref = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
ids = torch.tensor([[1]])
kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
with torch.no_grad():
    ref.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = ref.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        rates.append(n / (time.perf_counter() - t0))
    ref(prompt, logits_to_keep=1)
    prefill = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ref(prompt, logits_to_keep=1)
        prefill.append(prompt.shape[1] / (time.perf_counter() - t0))
print(json.dumps({"rates": rates, "tokens": out[0, 1:].tolist(), "prefill_rates": prefill}))
"""


def reference(model, n: int, repeat: int, threads: int) -> dict | None:
    """transformers' generate on the same weights, in a fresh process with the environment this one was
    started with (qorus_jit's thread settings, made at its import, left out), so each side runs as it would
    alone: {'rates': decode tokens/s per repeat, 'tokens': the last run's, 'prefill_rates': tokens/s of a
    forward over :func:`prefill_prompt` per repeat}. None without torch and transformers."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        return None
    from qorus_jit.models.registry import save_pretrained

    env = {k: v for k, v in os.environ.items() if k not in QORUS_ENV}
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        args = [folder, str(n), str(repeat), str(threads), json.dumps(prefill_prompt())]
        out = subprocess.run([sys.executable, "-c", REFERENCE, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"transformers reference failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(tokens: int = 200, repeat: int = 5, threads: int = 2, with_reference: bool = True,
            dram: bool = True) -> dict:
    """Every figure of this module as a dict: medians, each repeat's rates (``*_runs``) and, when torch and
    transformers are importable and ``with_reference``, transformers' rates and our speedups over them.
    ``dram`` adds the read rate of a 1 GB array (for scale). Sets numba's and BLAS's threads to ``threads``."""
    from qorus_jit.core.numerics import set_num_threads
    from qorus_jit.models import Llama, LlamaConfig

    set_num_threads(threads)
    model = Llama(LlamaConfig(**SHAPE, norm_eps=1e-5, tie_embeddings=True), rng=0)
    per_token = bytes_per_token(model, 1, tokens - 1)
    bws, rates, toks = [], [], []
    for _ in range(repeat):  # the bound measured beside each run: it moves with the machine's state as ours does
        bws.append(stream_bandwidth(int(per_token)))  # the bytes of one token: where the weights live between tokens
        got, toks = ours(model, tokens, 1)
        rates += got
    bw = statistics.median(bws)
    pre = prefill(model, repeat)
    ref = reference(model, tokens, repeat, threads) if with_reference else None
    med = statistics.median
    row = {
        "shape": SHAPE, "threads": threads, "new_tokens": tokens,
        "decode_tokens_per_s": med(rates), "prefill_tokens_per_s": med(pre),
        "bandwidth_GB_per_s": bw / 1e9,
    }
    if dram:
        row["bandwidth_1GB_array_GB_per_s"] = stream_bandwidth(1 << 30) / 1e9  # beyond any cache, for scale
    row.update(bytes_per_token_MB=per_token / 1e6, bound_tokens_per_s=bw / per_token,
               fraction_of_bound=med(rates) * per_token / bw)
    if ref is not None:
        row.update(transformers_tokens_per_s=med(ref["rates"]), speedup_vs_transformers=med(rates) / med(ref["rates"]),
                   # the most any decoder reading float32 weights could reach over transformers on this machine
                   bound_over_transformers=bw / per_token / med(ref["rates"]),
                   same_tokens_as_transformers=ref["tokens"] == toks,
                   transformers_prefill_tokens_per_s=med(ref["prefill_rates"]),
                   prefill_speedup_vs_transformers=med(pre) / med(ref["prefill_rates"]))
    row.update(decode_runs=rates, bound_runs=[b / per_token for b in bws], prefill_runs=pre)
    if ref is not None:
        row.update(transformers_decode_runs=ref["rates"], transformers_prefill_runs=ref["prefill_rates"])
    return row


def main(argv=None) -> int:
    """Run the decode and prefill benchmark (``--tokens``, ``--repeat``, ``--threads``) and print its table; returns the
    exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="perf/results/decode.json",
                    help="the JSON to write, from the working directory (default: %(default)s)")
    args = ap.parse_args(argv)

    row = measure(args.tokens, args.repeat, args.threads)
    for k, v in row.items():
        if isinstance(v, float):
            print(f"{k:34s} {v:.3f}")
        elif isinstance(v, list):
            print(f"{k:34s} " + " ".join(f"{x:.1f}" for x in v))
        else:
            print(f"{k:34s} {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
