"""Decoding with bf16 and int8 (q8_0) weights against our fp32, end to end, at the llama2.c stories shapes.

    python -m perf.bench_quant_decode [--shapes 15M,110M] [--tokens 128] [--pairs 7] [--threads 2] [--json PATH]

Models: random Llamas (``rng=0``) of the stories15M shape (dim 288, 6 layers, 6 heads, hidden 768, vocab 32000,
256 positions, tied head) and the stories110M shape (dim 768, 12 layers, 12 heads, hidden 2048, 1024 positions),
each built three times from the same seed: fp32, and quantized with ``quantize_model`` to bf16 and int8.

Timed in one process, ``pairs`` rounds, the three dtypes one after the other in each round (in a rotating
order), so that a busy moment of the shared machine falls on all of them alike:

- decode: tokens/s of ``generate``'s decode phase (greedy, ``tokens`` new tokens after a one-token prompt);
- bound: the streaming-read bandwidth measured just before each dtype's run, over an array of that dtype's
  bytes per token (``qorus_jit.bench.decode.bytes_per_token``: every weight read once, the KV cache), divided
  by those bytes: the most any decoder reading those weights could reach at that moment. Its rate in GB/s is
  reported beside the memory's (a read of ``MEMORY_BYTES``, too large for any cache to keep a useful part of,
  once a round): where the bound reads faster than memory, the last level cache held part of its array from
  one read to the next (the AMD EPYC's shared 32 MB L3 with a 62 MB stories15M token), and how much it holds
  moves with what else the machine runs;
- prefill: tokens/s of the prefill of a 128-token prompt (one forward, the ``linear_*`` kernels);
- kernel ceiling: tokens/s if every weight byte went at the rate one thread's decode row kernel (the
  one-call decoder's, on this machine's path) reads a 64-row matrix of the model's width that stays in cache,
  times the threads: the most the arithmetic allows when memory costs nothing. Where it is below the bound
  (int8 on a CPU whose vector multiplier is narrow, as the AMD EPYC's), the kernel, not the bandwidth, sets
  the limit; ``of_limit`` is decode over the lower of the two.

Reported per dtype: the median of the rounds' paired ratios to fp32 (decode and prefill) with their spread, and
the median fraction of its own bound. Goals (issue 17): int8 >= 2.5x fp32, bf16 >= 1.7x, int8 at >= 0.8 of
its bound, prefill no slower than fp32.

Peak RSS: one fresh process a dtype loads the model from a folder (``save_pretrained`` for fp32, ``qorus
quantize``'s ``save_quantized`` for bf16 / int8) with ``load_pretrained`` and generates 16 tokens; reported:
its ``VmHWM`` (the whole process: interpreter, numba, the kernels' machine code, the model) and the model's part
(``VmHWM`` minus the RSS before the load, the kernels loaded first). Goal: int8 <= 0.35x fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from qorus_jit.bench._timing import write_results
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels.decode import _matvec_rows, _prep, _rows, one_row

SHAPES = {
    "15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=768, vocab_size=32000, max_seq_len=256),
    "110M": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, hidden_dim=2048, vocab_size=32000,
                 max_seq_len=1024),
}
DTYPES = ("fp32", "bf16", "int8")
PROMPT = 128  # prefill tokens
# the memory's read: 16 times the AMD EPYC's 32 MB L3 (a CPU whose cache holds it reports the cache's rate)
MEMORY_BYTES = 512 * 2**20


def build(shape: dict, dtype: str):
    """The random Llama of ``shape`` (seed 0, tied head) with ``dtype`` weights."""
    from qorus_jit.models import Llama, LlamaConfig
    from qorus_jit.models.quantize import quantize_model

    return quantize_model(Llama(LlamaConfig(**shape, norm_eps=1e-5, tie_embeddings=True), rng=0), dtype)


def decode_rate(model, tokens: int) -> float:
    from qorus_jit.infer.generate import generate

    gen = generate(model, [1], tokens, temperature=0.0)
    list(gen)
    return gen.decode_tokens_per_s


def prefill_rate(model, prompt: np.ndarray) -> float:
    from qorus_jit.infer.generate import generate

    gen = generate(model, prompt, 1, temperature=0.0)
    list(gen)
    return gen.prefill_tokens_per_s


@numba.njit(cache=False)
def _repeat_rows(n, out, w, ws, xa, xb, x):
    _prep(xa, xb, x)
    for _ in range(n):
        _rows(out, w, ws, xa, xb, 0, out.shape[0])


@numba.njit(cache=False)
def _repeat_rows_f32(n, out, w, x, one_row):
    for _ in range(n):
        _matvec_rows(out, w, x, 0, out.shape[0], one_row)


def kernel_rate(dtype: str, cols: int, rows: int = 64, calls: int = 2000) -> float:
    """Weight bytes per second one thread's decode row kernel for ``dtype`` reads from a ``rows x cols`` matrix
    that stays in cache (median of 7 runs of ``calls`` calls; x prepared once, as the decoder prepares it)."""
    from qorus_jit.kernels import quant

    rng = np.random.default_rng(0)
    w, x, out = rng.standard_normal((rows, cols)).astype(np.float32), rng.standard_normal(cols).astype(np.float32), \
        np.empty(rows, np.float32)
    if dtype == "fp32":
        args, fn, nbytes = (out, w, x, one_row()), _repeat_rows_f32, w.nbytes  # as this CPU's decoder reads W
    elif dtype == "bf16":
        w16 = quant.quantize_bf16(w)  # scratch as the decoder's: bf16 bits where it runs vdpbf16ps, else x's halves
        xa = np.empty(cols // 2, np.float32) if quant.active_path("bf16") == "portable" else np.empty(cols, np.uint16)
        args, fn, nbytes = (out, w16.view(np.uint32), np.zeros((1, 1), np.float32), xa, xa.copy(), x), \
            _repeat_rows, w16.nbytes
    else:
        qs, d = quant.quantize_q8_0(w)
        xq = np.empty(cols, np.int16 if quant.active_path("q8_0") == "portable" else np.int8)  # as the decoder
        args, fn, nbytes = (out, qs, d, xq, np.empty(cols // 32, np.float32), x), _repeat_rows, qs.nbytes + d.nbytes
    fn(10, *args)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        fn(calls, *args)
        times.append(time.perf_counter() - t0)
    return nbytes * calls / statistics.median(times)


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def time_shape(name: str, tokens: int, pairs: int, memory_bytes: int = MEMORY_BYTES) -> dict:
    """The timed rounds of one shape: every dtype's decode, bound and prefill per round, the memory's rate once
    a round; paired ratios."""
    from qorus_jit.bench.decode import bytes_per_token, stream_bandwidth

    shape = SHAPES[name]
    models = {d: build(shape, d) for d in DTYPES}
    prompt = np.random.default_rng(0).integers(3, shape["vocab_size"], PROMPT)
    per_token = {d: bytes_per_token(m, 1, tokens - 1) for d, m in models.items()}
    for m in models.values():  # warm-up: kernels loaded, buffers sized
        decode_rate(m, 8)
        prefill_rate(m, prompt)
    rows = {d: {"decode": [], "bound": [], "prefill": [], "ceiling": []} for d in DTYPES}
    memory = []
    threads = get_num_threads()
    for r in range(pairs):
        memory.append(stream_bandwidth(memory_bytes, repeat=3))
        for d in DTYPES[r % 3:] + DTYPES[:r % 3]:
            rows[d]["bound"].append(stream_bandwidth(int(per_token[d])) / per_token[d])
            rows[d]["ceiling"].append(threads * kernel_rate(d, shape["dim"]) / per_token[d])
            rows[d]["decode"].append(decode_rate(models[d], tokens))
            rows[d]["prefill"].append(prefill_rate(models[d], prompt))
    out = {"shape": shape, "tokens": tokens, "pairs": pairs, "memory_GBps": spread([m / 1e9 for m in memory]),
           "bytes_per_token_MB": {d: per_token[d] / 1e6 for d in DTYPES}}
    for d in DTYPES:
        rw = rows[d]
        out[d] = {"decode_tokens_per_s": spread(rw["decode"]), "prefill_tokens_per_s": spread(rw["prefill"]),
                  "bound_tokens_per_s": spread(rw["bound"]),
                  "bound_GBps": spread([b * per_token[d] / 1e9 for b in rw["bound"]]),
                  "fraction_of_bound": spread([a / b for a, b in zip(rw["decode"], rw["bound"], strict=True)]),
                  "kernel_ceiling_tokens_per_s": spread(rw["ceiling"]),
                  "of_limit": spread([a / min(b, c) for a, b, c in zip(rw["decode"], rw["bound"], rw["ceiling"],
                                                                          strict=True)])}
        if d != "fp32":
            fp = rows["fp32"]
            out[d]["decode_over_fp32"] = spread([a / b for a, b in zip(rw["decode"], fp["decode"], strict=True)])
            out[d]["prefill_over_fp32"] = spread([a / b for a, b in zip(rw["prefill"], fp["prefill"], strict=True)])
    return out


# -- peak RSS, a fresh process a dtype ----------------------------------------------------------------------


def rss_worker(folder: str, threads: int) -> dict:
    """Load ``folder`` and generate 16 tokens, the kernels loaded first on a tiny model of the same dtype."""
    from perf.bench_finetune import peak_rss_mb, status_mb
    from qorus_jit.core.numerics import set_num_threads
    from qorus_jit.models.registry import load_pretrained

    set_num_threads(threads)
    hf = json.loads((Path(folder) / "config.json").read_text())
    fmt = hf.get("quantization", {}).get("format", "fp32")
    tiny = dict(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=64, vocab_size=64, max_seq_len=32)
    warm = build(tiny, {"q8_0": "int8"}.get(fmt, fmt))
    decode_rate(warm, 4)
    prefill_rate(warm, np.arange(3, 20))
    del warm
    before = status_mb("VmRSS")
    model = load_pretrained(folder)
    decode_rate(model, 16)
    peak = peak_rss_mb()
    return {"format": fmt, "rss_before_load_MB": before, "peak_rss_MB": peak, "model_peak_MB": peak - before}


def peak_rss(name: str, threads: int) -> dict:
    from qorus_jit.models.quantize import save_quantized
    from qorus_jit.models.registry import save_pretrained

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d in DTYPES:
            folder = Path(tmp) / d
            model = build(SHAPES[name], d)
            (save_pretrained if d == "fp32" else save_quantized)(model, folder)
            del model
            cmd = [sys.executable, "-m", "perf.bench_quant_decode", "--rss-worker", str(folder), "--threads",
                   str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
            if res.returncode:
                raise RuntimeError(f"peak RSS of {d}: process failed:\n{res.stderr[-3000:]}")
            out[d] = json.loads(res.stdout.strip().splitlines()[-1])
    for d in ("bf16", "int8"):
        out[d]["peak_over_fp32"] = out[d]["peak_rss_MB"] / out["fp32"]["peak_rss_MB"]
        out[d]["model_over_fp32"] = out[d]["model_peak_MB"] / out["fp32"]["model_peak_MB"]
    return out


# -- the run ---------------------------------------------------------------------------------------------------


def run(shapes=("15M", "110M"), tokens: int = 128, pairs: int = 7, threads: int = 2, rss: bool = True) -> dict:
    from perf.bench_finetune import machine
    from qorus_jit.core.numerics import set_num_threads
    from qorus_jit.kernels.quant import kernel_paths

    set_num_threads(threads)
    res = {"machine": machine(), "threads": threads, "paths": kernel_paths(), "shapes": {}}
    for name in shapes:
        res["shapes"][name] = time_shape(name, tokens, pairs)
        if rss:
            res["shapes"][name]["peak_rss"] = peak_rss(name, threads)
    res["loadavg_after"] = list(__import__("os").getloadavg())
    return res


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"CPU: {m['cpu']} ({', '.join(m['simd'])}), {m['cpus']} CPUs, threads {res['threads']}, quantized "
             f"paths {res['paths']}, load {m['loadavg'][0]:.1f} -> {res['loadavg_after'][0]:.1f}", "",
             "| shape | dtype | decode tok/s | / fp32 (pairs) | of its bound (pairs) | bound GB/s (memory) | "
             "kernel ceiling / bound | of min(bound, ceiling) | prefill / fp32 (pairs) | peak RSS MB (model part) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(s, fmt="{:.2f}"):
        return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"

    for name, sh in res["shapes"].items():
        for d in DTYPES:
            r = sh[d]
            rss = sh.get("peak_rss", {}).get(d)
            rss_txt = f"{rss['peak_rss_MB']:.0f} ({rss['model_peak_MB']:.0f})" if rss else "-"
            if rss and d != "fp32":
                rss_txt += f", {rss['peak_over_fp32']:.2f}x ({rss['model_over_fp32']:.2f}x)"
            lines.append(f"| {name} | {d} | {r['decode_tokens_per_s']['median']:.0f} | "
                         f"{f(r['decode_over_fp32']) if d != 'fp32' else '1'} | {f(r['fraction_of_bound'])} | "
                         f"{r['bound_GBps']['median']:.1f} ({sh['memory_GBps']['median']:.1f}) | "
                         f"{r['kernel_ceiling_tokens_per_s']['median'] / r['bound_tokens_per_s']['median']:.2f} | "
                         f"{f(r['of_limit'])} | "
                         f"{f(r['prefill_over_fp32']) if d != 'fp32' else '1'} | {rss_txt} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="15M,110M")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    ap.add_argument("--json", default="perf/results/quant_decode.json")
    ap.add_argument("--rss-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_worker, args.threads)))
        return 0
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"--shapes: unknown {unknown[0]!r} (expected some of {', '.join(SHAPES)})")
    res = run(shapes, args.tokens, args.pairs, args.threads, rss=not args.no_rss)
    print(table(res))
    write_results(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
