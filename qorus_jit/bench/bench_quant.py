"""bf16 and q8_0 weights against float32: decode (matrix-vector products) and prefill (linear products).

``python -m qorus_jit.bench.bench_quant [--repeat R] [--threads T] [--shapes stories15M,stories110M]`` prints,
per model shape, a "token": one matrix-vector product by every weight matrix of the model (per block
wq, wk, wv, wo, w_gate, w_up, w_down, then the head), as a decode step reads them, through the kernels of
``kernels.trusted`` (fp32 ``K.matvec``, ``K.matvec_bf16``, ``K.matvec_q8_0``). The formats run in alternation,
one token each per round, and figures are medians over the rounds:

- ms per token and GB/s of weight bytes read (q8_0 counts its float32 scales too: 36 bytes per 32 weights);
- speedup: fp32 time / this format's time (the issue's goals: int8 >= 2.5x, bf16 >= 1.7x);
- bound: a streaming read of as many bytes as the format's token (``bench.decode.stream_bandwidth``), and the
  fraction of it reached (goal for int8: >= 0.8).

Then prefill: ``K.linear_*`` on N rows against the fp32 ``K.linear_forward`` (BLAS) on the model's largest
matrices. ``run`` returns the rows. A run takes about 40 s at the default 15 rounds (2 threads, AMD EPYC Zen 1);
it is not in the perf gate's quick suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from qorus_jit.bench._timing import sample_time
from qorus_jit.bench.decode import stream_bandwidth
from qorus_jit.core.numerics import get_num_threads, set_num_threads
from qorus_jit.kernels import quant
from qorus_jit.kernels import trusted as K

#: (dim, hidden, layers, vocab) of the llama2.c models.
SHAPES = {"stories15M": (288, 768, 6, 32000), "stories110M": (768, 2048, 12, 32000)}
FORMATS = ("fp32", "bf16", "q8_0")
PREFILL_N = (16, 64)


def model_weights(dim: int, hidden: int, layers: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    """float32 (out, in) matrices of a Llama of these sizes, in the order a decode step reads them."""
    rng = np.random.default_rng(seed)
    shapes = [(dim, dim)] * 4 + [(hidden, dim)] * 2 + [(dim, hidden)]
    ws = [(rng.standard_normal(s, dtype=np.float32) * 0.02) for _ in range(layers) for s in shapes]
    return ws + [rng.standard_normal((vocab, dim), dtype=np.float32) * 0.02]


def _token_fn(fmt: str, ws: list[np.ndarray]):
    """(a function running one token's matrix-vector products in ``fmt``, the weight bytes it reads)."""
    rng = np.random.default_rng(1)
    xs = {w.shape[1]: rng.standard_normal(w.shape[1], dtype=np.float32) for w in ws}
    outs = [np.empty(w.shape[0], np.float32) for w in ws]
    if fmt == "fp32":
        calls = [(K.matvec, (o, w, xs[w.shape[1]])) for o, w in zip(outs, ws, strict=True)]
        nbytes = sum(w.nbytes for w in ws)
    elif fmt == "bf16":
        w16s = [quant.quantize_bf16(w) for w in ws]
        calls = [(K.matvec_bf16, (o, w, xs[w.shape[1]])) for o, w in zip(outs, w16s, strict=True)]
        nbytes = sum(w.nbytes for w in w16s)
    else:
        q = [quant.quantize_q8_0(w) for w in ws]
        calls = [(K.matvec_q8_0, (o, qs, d, xs[qs.shape[1]])) for o, (qs, d) in zip(outs, q, strict=True)]
        nbytes = sum(qs.nbytes + d.nbytes for qs, d in q)

    def token():
        for f, args in calls:
            f(*args)

    return token, nbytes


def _alternate(fns: dict, repeat: int, min_time: float = 0.02) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeat`` rounds of one sample each back to back, the order rotating
    from round to round (so no side is always first); per function its list of samples, round by round."""
    for f in fns.values():
        f()
    samples = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeat):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            samples[k].append(sample_time(fns[k], min_time))
    return samples


def _paired(samples: dict[str, list[float]], fmt: str) -> tuple[float, float, float]:
    """Median of the rounds' ratios fp32 time / ``fmt`` time, and their min and max."""
    ratios = [a / b for a, b in zip(samples["fp32"], samples[fmt], strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def decode_rows(name: str, repeat: int = 15) -> list[dict]:
    """One row per format: a whole token's matrix-vector products of the model shape ``name``."""
    ws = model_weights(*SHAPES[name])
    fns, nbytes = {}, {}
    for fmt in FORMATS:
        fns[fmt], nbytes[fmt] = _token_fn(fmt, ws)
    del ws
    samples = _alternate(fns, repeat)
    rows = []
    for fmt in FORMATS:
        bw = statistics.median(stream_bandwidth(nbytes[fmt]) for _ in range(3))
        t = statistics.median(samples[fmt])
        gbs = nbytes[fmt] / t / 1e9
        speedup, lo, hi = _paired(samples, fmt)
        rows.append({"shape": name, "format": fmt, "path": "fp32" if fmt == "fp32" else
                     quant.kernel_paths()["bf16" if fmt == "bf16" else "q8_0"],
                     "ms_per_token": t * 1e3, "weight_MB": nbytes[fmt] / 1e6, "GB_per_s": gbs,
                     "speedup_vs_fp32": speedup, "speedup_spread": [lo, hi], "bound_GB_per_s": bw / 1e9,
                     "fraction_of_bound": gbs * 1e9 / bw})
    return rows


def prefill_rows(name: str, repeat: int = 7) -> list[dict]:
    """``K.linear_*`` against fp32 ``K.linear_forward`` on the head and the MLP's up matrix, N rows."""
    dim, hidden, _, vocab = SHAPES[name]
    rng = np.random.default_rng(2)
    rows = []
    for O, I in ((hidden, dim), (vocab, dim)):
        w = rng.standard_normal((O, I), dtype=np.float32) * 0.02
        b = rng.standard_normal(O, dtype=np.float32)
        w16, (qs, d) = quant.quantize_bf16(w), quant.quantize_q8_0(w)
        for N in PREFILL_N:
            x = rng.standard_normal((N, I), dtype=np.float32)
            out = np.empty((N, O), np.float32)
            samples = _alternate({"fp32": lambda a=(out, x, w, b): K.linear_forward(*a),
                                  "bf16": lambda a=(out, x, w16, b): K.linear_bf16(*a),
                                  "q8_0": lambda a=(out, x, qs, d, b): K.linear_q8_0(*a)}, repeat)
            for fmt in FORMATS[1:]:
                speedup, lo, hi = _paired(samples, fmt)
                rows.append({"shape": f"{name} ({N}, {I}) x ({O}, {I})", "format": fmt,
                             "ms": statistics.median(samples[fmt]) * 1e3,
                             "fp32_ms": statistics.median(samples["fp32"]) * 1e3, "speedup_vs_fp32": speedup,
                             "speedup_spread": [lo, hi]})
    return rows


def run(shapes=tuple(SHAPES), repeat: int = 15, threads: int = 2, prefill: bool = True) -> dict:
    """{"decode": rows, "prefill": rows} at ``threads`` threads (restored afterwards)."""
    old = get_num_threads()
    set_num_threads(threads)
    try:
        decode = [r for s in shapes for r in decode_rows(s, repeat)]
        pre = [r for s in shapes for r in prefill_rows(s)] if prefill else []
    finally:
        set_num_threads(old)
    return {"decode": decode, "prefill": pre}


def main(argv=None) -> int:
    """Run the benchmark (``--repeat``, ``--threads``, ``--shapes``) and print its table; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--no-prefill", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = run(tuple(args.shapes.split(",")), args.repeat, args.threads, not args.no_prefill)
    print(f"{'shape':12s} {'format':6s} {'path':9s} {'ms/token':>9s} {'MB':>7s} {'GB/s':>6s} {'vs fp32':>8s} "
          f"{'bound':>6s} {'of bound':>8s}")
    for r in res["decode"]:
        print(f"{r['shape']:12s} {r['format']:6s} {r['path']:9s} {r['ms_per_token']:9.3f} {r['weight_MB']:7.1f} "
              f"{r['GB_per_s']:6.1f} {r['speedup_vs_fp32']:7.2f}x {r['bound_GB_per_s']:6.1f} "
              f"{r['fraction_of_bound']:8.2f}")
    for r in res["prefill"]:
        print(f"prefill {r['shape']:38s} {r['format']:6s} {r['ms']:8.3f} ms  fp32 {r['fp32_ms']:8.3f} ms  "
              f"{r['speedup_vs_fp32']:5.2f}x")
    print(f"threads {args.threads}; x fp32: medians of the ratios of {args.repeat} rounds, the order rotating; "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
