"""Attention benchmark: fused forward + backward and decode against a NumPy implementation of the same math.

    python -m qorus_jit.bench.bench_attention [--quick] [--threads N]

The NumPy reference materializes the (T, S) scores and mask and runs the standard backward with
np.matmul (BLAS); both sides run in float32 in the same process with the same thread count, timed in pairs
(``_timing.paired_times``): rows report each side's median and the median of the pairs' ratios with their
spread. On a shared machine, ``--threads 1`` gives the steadier ratio.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from qorus_jit.bench._timing import paired_times, record, spread_text
from qorus_jit.core.numerics import get_num_threads, set_num_threads
from qorus_jit.kernels.attention import attention_backward, attention_decode, attention_forward


def numpy_forward(q, k, v, causal, scale):
    """Returns out (B, T, H, D) and the saved probabilities p (B, H, T, S)."""
    B, T, H, D = q.shape
    S, G = k.shape[1], H // k.shape[2]
    kh = np.repeat(k.transpose(0, 2, 1, 3), G, axis=1)
    vh = np.repeat(v.transpose(0, 2, 1, 3), G, axis=1)
    s = np.matmul(q.transpose(0, 2, 1, 3), kh.transpose(0, 1, 3, 2)) * scale
    if causal:
        mask = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)
        s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.matmul(p, vh).transpose(0, 2, 1, 3), p


def numpy_backward(dout, q, k, v, out, p, scale):
    """Returns dq (B, T, H, D), dk, dv (B, S, Hkv, D) from the saved probabilities p."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    kh = np.repeat(k.transpose(0, 2, 1, 3), G, axis=1)
    vh = np.repeat(v.transpose(0, 2, 1, 3), G, axis=1)
    do = dout.transpose(0, 2, 1, 3)
    dv = np.matmul(p.transpose(0, 1, 3, 2), do)
    dp = np.matmul(do, vh.transpose(0, 1, 3, 2))
    ds = p * (dp - (do * out.transpose(0, 2, 1, 3)).sum(-1, keepdims=True)) * scale
    dq = np.matmul(ds, kh)
    dk = np.matmul(ds.transpose(0, 1, 3, 2), q.transpose(0, 2, 1, 3))
    dk = dk.reshape(B, Hkv, G, S, D).sum(2).transpose(0, 2, 1, 3)
    dv = dv.reshape(B, Hkv, G, S, D).sum(2).transpose(0, 2, 1, 3)
    return dq.transpose(0, 2, 1, 3), dk, dv


def numpy_decode(q, k_cache, v_cache, length, scale):
    """Returns out (B, H, D) for one query per batch row over the first length cache rows."""
    B, H, D = q.shape
    G = H // k_cache.shape[1]
    kh = np.repeat(k_cache[:, :, :length], G, axis=1)
    vh = np.repeat(v_cache[:, :, :length], G, axis=1)
    s = np.matmul(kh, q[..., None])[..., 0] * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.matmul(p[:, :, None, :], vh)[:, :, 0]


def train_rows(B, T, H, Hkv, D, causal, rng, kw, tag):
    """Timing rows of attention forward and forward+backward, ours against the NumPy reference, for ``B`` sequences of
    ``T`` positions, ``H`` query and ``Hkv`` key/value heads of size ``D``; ``kw`` passes on to the timer, ``tag``
    ends the shape."""
    S = T
    q = rng.standard_normal((B, T, H, D)).astype(np.float32)
    k = rng.standard_normal((B, S, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((B, S, Hkv, D)).astype(np.float32)
    g = rng.standard_normal((B, T, H, D)).astype(np.float32)
    scale = 1.0 / math.sqrt(D)  # a Python float keeps the NumPy reference in float32
    out, lse = np.empty_like(q), np.empty((B, H, T), np.float32)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)

    def ours_fwd():
        attention_forward(out, lse, q, k, v, causal)

    def ours_fwd_bwd():
        attention_forward(out, lse, q, k, v, causal)
        attention_backward(dq, dk, dv, g, q, k, v, out, lse, causal)

    def ref_fwd():
        numpy_forward(q, k, v, causal, scale)

    def ref_fwd_bwd():
        o, p = numpy_forward(q, k, v, causal, scale)
        numpy_backward(g, q, k, v, o, p, scale)

    o_ref, _ = numpy_forward(q, k, v, causal, scale)
    ours_fwd_bwd()
    assert np.allclose(out, o_ref, atol=1e-4), "forward disagrees with the NumPy reference"
    shape = f"B{B} T{T} H{H} Hkv{Hkv} D{D}{' causal' if causal else ''}{tag}"
    flops = 2 * B * H * T * S * D * (0.5 if causal else 1.0)  # one product over the attended (T, S) part
    cases = [("attention fwd", ours_fwd, ref_fwd, 2), ("attention fwd+bwd", ours_fwd_bwd, ref_fwd_bwd, 7)]
    rows = []
    for name, ours, ref, n in cases:
        t = _paired(ours, ref, kw)
        rows.append(record(name, shape, t, "numpy", gflops=n * flops / t[0] / 1e9))
    return rows


def _paired(ours, ref, kw):
    """``paired_times`` of ours() and ref(), each sample after a pause that lets the other side's idle pool
    threads (OpenBLAS, OpenMP) stop spinning on the cores."""
    return paired_times(ours, ref, pause=0.05, **kw)


def decode_row(B, T_max, H, Hkv, D, length, rng, kw, tag):
    """The timing row of one decode step over a cache of ``length`` of ``T_max`` positions, ours against the NumPy
    reference."""
    q = rng.standard_normal((B, H, D)).astype(np.float32)
    kc = rng.standard_normal((B, Hkv, T_max, D)).astype(np.float32)
    vc = rng.standard_normal((B, Hkv, T_max, D)).astype(np.float32)
    out = np.empty_like(q)
    scale = 1.0 / math.sqrt(D)  # a Python float keeps the NumPy reference in float32
    attention_decode(out, q, kc, vc, length)
    assert np.allclose(out, numpy_decode(q, kc, vc, length, scale), atol=1e-4), "decode disagrees"
    t = _paired(lambda: attention_decode(out, q, kc, vc, length), lambda: numpy_decode(q, kc, vc, length, scale), kw)
    return record("attention decode", f"B{B} H{H} Hkv{Hkv} D{D} len{length}{tag}", t, "numpy",
                  tokens_per_s=B / t[0], ref_tokens_per_s=B / t[1])


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``_timing.record``) at the current thread count: medians of ours and of the NumPy
    reference, and the median of the paired ratios."""
    rng = np.random.default_rng(0)
    kw = dict(repeat=3, min_time=0.02) if quick else {}
    tag = f" {get_num_threads()}T"
    rows = []
    rows += train_rows(4, 256, 6, 6, 48, True, rng, kw, tag)
    rows += train_rows(1, 512, 8, 2, 64, True, rng, kw, tag)
    if not quick:
        rows += train_rows(2, 128, 4, 4, 64, False, rng, kw, tag)
    rows.append(decode_row(4, 1024, 6, 6, 48, 700, rng, kw, tag))
    rows.append(decode_row(1, 1024, 8, 2, 64, 1000, rng, kw, tag))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--threads", type=int, default=0, help="numba and BLAS threads (default: all)")
    args = ap.parse_args()
    if args.threads:
        set_num_threads(args.threads)
    for r in run(quick=args.quick):
        extra = (f"  {r['gflops']:6.1f} GFLOP/s" if "gflops" in r else
                 f"  {r['tokens_per_s']:9.0f} tok/s vs {r['ref_tokens_per_s']:8.0f}")
        print(f"{r['name']:18s} {r['shape']:36s} ours {r['ours_s'] * 1e3:8.3f} ms  "
              f"numpy {r['ref_s'] * 1e3:8.3f} ms  numpy/ours x{r['speedup']:5.2f} (pairs {spread_text(r)}){extra}",
              flush=True)
