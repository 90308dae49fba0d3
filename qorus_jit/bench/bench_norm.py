"""RMSNorm, LayerNorm and RoPE kernels against NumPy implementations of the same math.

``python -m qorus_jit.bench.bench_norm [--quick]`` prints medians and speedups (NumPy time / ours, the median of
pairs timed back to back: ``_timing.paired_times``); ``run`` returns the rows. NumPy's elementwise ops run on
one thread, the kernels on numba's threads.
"""

from __future__ import annotations

import sys

import numpy as np

from qorus_jit.bench._timing import paired_times, print_rows, record, thread_counts
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels import norm, rope

EPS = 1e-5


def np_rmsnorm_forward(out, rstd, x, w, eps):
    """NumPy RMSNorm forward on (N, C) rows."""
    rstd[:] = 1.0 / np.sqrt(np.einsum("ij,ij->i", x, x) / x.shape[1] + eps)
    np.multiply(x, rstd[:, None], out=out)
    out *= w


def np_rmsnorm_backward(dx, dw, dout, x, w, rstd):
    """NumPy RMSNorm backward (accumulating)."""
    gw = dout * w
    k = np.einsum("ij,ij->i", gw, x) * rstd**3 / x.shape[1]
    dx += gw * rstd[:, None] - x * k[:, None]
    dw += np.einsum("ij,ij->j", dout, x * rstd[:, None])


def np_layernorm_forward(out, mean, rstd, x, w, b, eps):
    """NumPy LayerNorm forward on (N, C) rows (two-pass variance)."""
    mean[:] = x.mean(axis=1)
    np.subtract(x, mean[:, None], out=out)
    rstd[:] = 1.0 / np.sqrt(np.einsum("ij,ij->i", out, out) / x.shape[1] + eps)
    out *= rstd[:, None]
    out *= w
    out += b


def np_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd):
    """NumPy LayerNorm backward (accumulating)."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dout * w
    mg = g.mean(axis=1, keepdims=True)
    mgx = np.einsum("ij,ij->i", g, xhat)[:, None] / x.shape[1]
    dx += rstd[:, None] * (g - mg - xhat * mgx)
    dw += np.einsum("ij,ij->j", dout, xhat)
    db += dout.sum(axis=0)


def np_rope_forward(out, x, cos, sin, pos, interleaved):
    """NumPy RoPE forward on (B, T, H, D)."""
    T, half = x.shape[1], x.shape[3] // 2
    c, s = cos[pos:pos + T][None, :, None, :], sin[pos:pos + T][None, :, None, :]
    if interleaved:
        x0, x1, o0, o1 = x[..., 0::2], x[..., 1::2], out[..., 0::2], out[..., 1::2]
    else:
        x0, x1, o0, o1 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    a = x0 * c - x1 * s
    o1[...] = x0 * s + x1 * c
    o0[...] = a


def norm_rows(N, C, kw):
    """Timing rows of RMSNorm and LayerNorm forward and backward on ``(N, C)`` float32 rows, ours against NumPy; ``kw``
    passes on to the timer."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    dout = rng.standard_normal((N, C)).astype(np.float32)
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    out, dx = np.empty_like(x), np.zeros_like(x)
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    shape = f"({N}, {C})"
    threads = get_num_threads()
    rows = []

    def both(fwd, bwd):
        def f():
            fwd()
            bwd()
        return f

    cases = {
        "rmsnorm": (lambda: norm.rmsnorm_forward(out, rstd, x, w, EPS),
                    lambda: norm.rmsnorm_backward(dx, dw, dout, x, w, rstd),
                    lambda: np_rmsnorm_forward(out, rstd, x, w, EPS),
                    lambda: np_rmsnorm_backward(dx, dw, dout, x, w, rstd)),
        "layernorm": (lambda: norm.layernorm_forward(out, mean, rstd, x, w, b, EPS),
                      lambda: norm.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd),
                      lambda: np_layernorm_forward(out, mean, rstd, x, w, b, EPS),
                      lambda: np_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd)),
    }
    for name, (fwd, bwd, np_fwd, np_bwd) in cases.items():
        for what, ours, ref in (("forward", fwd, np_fwd),
                                ("forward+backward", both(fwd, bwd), both(np_fwd, np_bwd))):
            t = paired_times(ours, ref, **kw)
            rows.append(record(f"{name} {what}", shape, t, "numpy", threads=threads,
                               gbytes_per_s=x.nbytes * 2 / t[0] / 1e9))
    return rows


def rope_rows(B, T, H, D, kw):
    """Timing rows of RoPE forward on ``(B, T, H, D)`` float32, ours against NumPy; ``kw`` passes on to the timer."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, H, D)).astype(np.float32)
    out = np.empty_like(x)
    cos, sin = rope.rope_cache(2 * T, D)
    rows = []
    for interleaved in (False, True):
        t = paired_times(lambda il=interleaved: rope.rope_forward(out, x, cos, sin, 3, il),
                         lambda il=interleaved: np_rope_forward(out, x, cos, sin, 3, il), **kw)
        name = "rope forward " + ("interleaved" if interleaved else "rotate-half")
        rows.append(record(name, f"({B}, {T}, {H}, {D})", t, "numpy", threads=get_num_threads(),
                           gbytes_per_s=x.nbytes * 2 / t[0] / 1e9))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``_timing.record``) for the norm and RoPE kernels, at numba's thread count
    and, when that is more than one, again on one thread (robust to a busy machine)."""
    kw = dict(repeat=3, warmup=1, min_time=0.02) if quick else dict(repeat=9, warmup=2, min_time=0.1)
    rows = []
    for _ in thread_counts():
        for N, C in ((4096, 768), (16384, 288)):
            rows += norm_rows(N, C, kw)
        rows += rope_rows(4, 256, 8, 64, kw)
    return rows


def main(argv=None) -> None:
    """Run the benchmark (``--quick``) and print its table."""
    argv = sys.argv[1:] if argv is None else argv
    print_rows(run(quick="--quick" in argv), 34, 18)


if __name__ == "__main__":
    main()
