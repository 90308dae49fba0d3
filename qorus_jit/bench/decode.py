"""Decode and prefill speed of the llama2.c "stories15M" shape (or GPT-2 small's), beside transformers' generate
and the memory-bandwidth bound, all measured in the same run.

    python -m qorus_jit.bench.decode [--arch llama|gpt2] [--tokens 200] [--repeat 7] [--threads 2] [--out PATH]

Model (``--arch llama``, the default): Llama dim 288, 6 layers, 6 heads, SwiGLU hidden 768, vocab 32000, 256
positions, tied head; ``--arch gpt2``: GPT-2 small (dim 768, 12 layers, 12 heads, vocab 50257, 1024 positions,
tied head), which decodes node by node (a kernel call a layer). Random weights; greedy, batch 1. ``--repeat``
rounds, each one call of ours and one of transformers back to back (in turn first), so that a busy stretch of a
shared machine falls on both sides of a pair; speedups are the medians of the pairs' ratios, with their spread
(one earlier run, all of ours then all of transformers', reported 118x on the AMD EPYC, Zen 1, when the
reference's repeats fell in a busy stretch). Figures:

- ours: tokens/s of the decode phase of :func:`qorus_jit.infer.generate` (the prefill's token excluded);
- transformers: ``AutoModelForCausalLM.generate`` of the same weights (``do_sample=False``, KV cache), tokens/s
  over the whole call, torch with the same thread count, in a fresh process without qorus_jit's thread
  settings, which stays up and times one call per request (:class:`Reference`);
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

import numpy as np
from numba import prange

from qorus_jit.bench._timing import write_results
from qorus_jit.core.numerics import kernel, sum_in_order

#: Variables qorus_jit sets at import when unset (its thread settings; see qorus_jit/__init__.py).
QORUS_ENV = ("GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT")

SHAPE = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=768, vocab_size=32000, max_seq_len=256)
#: The config fields of each ``--arch``'s model.
SHAPES = {"llama": SHAPE, "gpt2": dict(dim=768, n_layers=12, n_heads=12, vocab_size=50257, max_seq_len=1024)}


def build(arch: str):
    """The random model (seed 0, tied head) of ``arch``'s shape in :data:`SHAPES`."""
    from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig

    if arch == "gpt2":
        return GPT2(GPT2Config(**SHAPES["gpt2"]), rng=0)
    return Llama(LlamaConfig(**SHAPES["llama"], norm_eps=1e-5, tie_embeddings=True), rng=0)


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
    parameters and the quantized layers' weights (a tied table counted once, as the head; of a table of learned
    positions, GPT-2's, one row)."""
    from qorus_jit.layers.quantized import quantized_layers

    c = model.config
    weights = 0
    for name, p in model.parameters().items():
        weights += p[0].nbytes if name.endswith("wpe.weight") else p.nbytes
    weights += sum(layer.weight_nbytes for layer in quantized_layers(model).values())
    kv_per_pos = 2 * c.n_layers * (getattr(c, "n_kv_heads", None) or c.n_heads) * (c.dim // c.n_heads) * 4
    mean_len = first_pos + (n + 1) / 2
    return weights + kv_per_pos * mean_len


def ours(model, n: int, repeat: int, warm: bool = True) -> tuple[list[float], list[int]]:
    """Decode tokens/s of each of ``repeat`` greedy generations of ``n`` tokens, and the last one's tokens;
    after a warm-up (kernels loaded, buffers sized) if ``warm``."""
    from qorus_jit.infer.generate import generate

    if warm:
        list(generate(model, [1], 8, temperature=0.0))
    rates, tokens = [], []
    for _ in range(repeat):
        gen = generate(model, [1], n, temperature=0.0)
        tokens = list(gen)
        rates.append(gen.decode_tokens_per_s)
    return rates, tokens


def prefill_prompt() -> list[int]:
    """The 255 token ids of the prefill figure."""
    return np.random.default_rng(0).integers(3, SHAPE["vocab_size"], 255).tolist()


def prefill(model, repeat: int, warm: bool = True) -> list[float]:
    """Prefill tokens/s of each of ``repeat`` generations from :func:`prefill_prompt` (after one warm-up if
    ``warm``)."""
    from qorus_jit.infer.generate import generate

    prompt = np.asarray(prefill_prompt(), np.int64)
    if warm:
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
folder, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt = torch.tensor([json.loads(sys.argv[4])])
torch.set_num_threads(threads)
ref = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
ids = torch.tensor([[1]])
kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
with torch.no_grad():
    ref.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
    ref(prompt, logits_to_keep=1)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:  # one timed call per request, so that the caller alternates it with its own
        t0 = time.perf_counter()
        if line.strip() == "decode":
            out = ref.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            rate, tokens = n / (time.perf_counter() - t0), out[0, 1:].tolist()
        else:
            ref(prompt, logits_to_keep=1)
            rate, tokens = prompt.shape[1] / (time.perf_counter() - t0), None
        print(json.dumps({"rate": rate, "tokens": tokens}), flush=True)
"""


class Reference:
    """transformers' generate on the same weights, in a fresh process started with the environment this one
    was started with (qorus_jit's thread settings, made at its import, left out), so each side runs as it would
    alone. The process stays up and times one call per request (:meth:`decode`, :meth:`prefill`), so that the
    caller alternates them with its own, pair by pair. A context manager; :func:`available` first."""

    def __init__(self, model, n: int, threads: int):
        from qorus_jit.models.registry import save_pretrained

        env = {k: v for k, v in os.environ.items() if k not in QORUS_ENV}
        self._tmp = tempfile.TemporaryDirectory()
        save_pretrained(model, self._tmp.name)
        args = [self._tmp.name, str(n), str(threads), json.dumps(prefill_prompt())]
        self._proc = subprocess.Popen([sys.executable, "-c", REFERENCE, *args], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._read()  # loaded and warmed up

    @staticmethod
    def available() -> bool:
        """Whether torch and transformers are importable."""
        import importlib.util

        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read()
            raise RuntimeError(f"transformers reference failed (exit {self._proc.wait()}):\n{err[-2000:]}")
        return json.loads(line)

    def _ask(self, what: str) -> dict:
        self._proc.stdin.write(what + "\n")
        self._proc.stdin.flush()
        return self._read()

    def decode(self) -> tuple[float, list[int]]:
        """Tokens/s of one greedy generation of ``n`` tokens after the token 1, and its tokens."""
        r = self._ask("decode")
        return r["rate"], r["tokens"]

    def prefill(self) -> float:
        """Tokens/s of one forward over :func:`prefill_prompt` (logits of the last position)."""
        return self._ask("prefill")["rate"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._proc.stdin.close()
        self._proc.wait()
        self._tmp.cleanup()


def measure(tokens: int = 200, repeat: int = 7, threads: int = 2, with_reference: bool = True,
            dram: bool = True, arch: str = "llama") -> dict:
    """Every figure of this module as a dict: medians, each repeat's rates (``*_runs``) and, when torch and
    transformers are importable and ``with_reference``, transformers' rates and our speedups over them: the
    medians of the ratios of ``repeat`` pairs, each pair one call of each side back to back (in turn first),
    with their spread. ``dram`` adds the read rate of a 1 GB array (for scale). ``arch``: the model
    (:func:`build`). Sets numba's and BLAS's threads to ``threads``."""
    import contextlib

    from qorus_jit.core.numerics import set_num_threads

    if arch not in SHAPES:
        raise ValueError(f"arch: expected one of {sorted(SHAPES)}, got {arch!r}")
    set_num_threads(threads)
    model = build(arch)
    per_token = bytes_per_token(model, 1, tokens - 1)
    ours(model, 8, 0)  # warm-ups: kernels loaded, buffers sized
    prefill(model, 0)
    use_ref = with_reference and Reference.available()
    bws, rates, toks, pre = [], [], [], []
    ref_rates, ref_pre, ref_toks = [], [], []
    with Reference(model, tokens, threads) if use_ref else contextlib.nullcontext() as ref:
        for r in range(repeat):
            # the bound measured beside each run: it moves with the machine's state as ours does
            bws.append(stream_bandwidth(int(per_token)))  # the bytes of one token: where the weights live
            for side in ((0, 1) if r % 2 == 0 else (1, 0)) if ref else (0,):
                if side == 0:
                    got, toks = ours(model, tokens, 1, warm=False)
                    rates += got
                else:
                    rate, ref_toks = ref.decode()
                    ref_rates.append(rate)
            for side in ((0, 1) if r % 2 == 0 else (1, 0)) if ref else (0,):
                if side == 0:
                    pre += prefill(model, 1, warm=False)
                else:
                    ref_pre.append(ref.prefill())
    bw = statistics.median(bws)
    med = statistics.median
    row = {
        "arch": arch, "shape": SHAPES[arch], "threads": threads, "new_tokens": tokens,
        "decode_tokens_per_s": med(rates), "prefill_tokens_per_s": med(pre),
        "bandwidth_GB_per_s": bw / 1e9,
    }
    if dram:
        row["bandwidth_1GB_array_GB_per_s"] = stream_bandwidth(1 << 30) / 1e9  # beyond any cache, for scale
    fractions = [rt * per_token / b for rt, b in zip(rates, bws, strict=True)]
    row.update(bytes_per_token_MB=per_token / 1e6, bound_tokens_per_s=bw / per_token,
               fraction_of_bound=med(fractions), fraction_of_bound_spread=[min(fractions), max(fractions)])
    if use_ref:
        speed = [a / b for a, b in zip(rates, ref_rates, strict=True)]
        pspeed = [a / b for a, b in zip(pre, ref_pre, strict=True)]
        row.update(transformers_tokens_per_s=med(ref_rates), speedup_vs_transformers=med(speed),
                   speedup_spread=[min(speed), max(speed)],
                   # the most any decoder reading float32 weights could reach over transformers on this machine
                   bound_over_transformers=bw / per_token / med(ref_rates),
                   same_tokens_as_transformers=ref_toks == toks,
                   transformers_prefill_tokens_per_s=med(ref_pre), prefill_speedup_vs_transformers=med(pspeed),
                   prefill_speedup_spread=[min(pspeed), max(pspeed)])
    row.update(decode_runs=rates, bound_runs=[b / per_token for b in bws], prefill_runs=pre)
    if use_ref:
        row.update(transformers_decode_runs=ref_rates, transformers_prefill_runs=ref_pre)
    return row


def main(argv=None) -> int:
    """Run the decode and prefill benchmark (``--tokens``, ``--repeat``, ``--threads``) and print its table; returns the
    exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(SHAPES), default="llama")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="the JSON to write, from the working directory (default: "
                    "perf/results/decode.json, decode_gpt2.json for --arch gpt2)")
    args = ap.parse_args(argv)

    row = measure(args.tokens, args.repeat, args.threads, arch=args.arch)
    out = args.out or ("perf/results/decode.json" if args.arch == "llama" else f"perf/results/decode_{args.arch}.json")
    for k, v in row.items():
        if isinstance(v, float):
            print(f"{k:34s} {v:.3f}")
        elif isinstance(v, list):
            print(f"{k:34s} " + " ".join(f"{x:.1f}" for x in v))
        else:
            print(f"{k:34s} {v}")
    write_results(out, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
