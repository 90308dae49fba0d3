"""Softmax, causal softmax and activation kernels against NumPy implementations of the same math.

    python -m qorus_jit.bench.bench_softmax [--quick]

prints medians and speedups (NumPy time / ours, the median of pairs timed back to back:
``_timing.paired_times``); ``run`` returns the rows. NumPy's elementwise ops
run on one thread, the kernels on numba's threads; every row is measured again on one thread.
GB/s counts the bytes the op must move once (inputs read, outputs written, gradients read and written).
"""

from __future__ import annotations

import sys

import numpy as np

from qorus_jit.bench._timing import paired_times, record, spread_text, thread_counts
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels import activations as act
from qorus_jit.kernels import softmax as sm


def np_softmax_forward(out, x):
    """NumPy softmax over the last axis of (N, C), into ``out``."""
    np.subtract(x, x.max(-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(-1, keepdims=True)


def np_softmax_backward(dx, dout, out):
    """NumPy softmax backward from the saved output (accumulating)."""
    dx += out * (dout - np.einsum("ij,ij->i", dout, out)[:, None])


def np_causal_softmax_forward(out, x, above):
    """NumPy causal softmax of (R, T, T): -inf where the (T, T) mask ``above`` is set, then softmax."""
    np.copyto(out, x)
    out[:, above] = -np.inf
    out -= out.max(-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(-1, keepdims=True)


def np_causal_softmax_backward(dx, dout, out):
    """NumPy causal softmax backward (masked entries of ``out`` are 0, so the plain formula applies)."""
    dx += out * (dout - np.einsum("rij,rij->ri", dout, out)[..., None])


def np_silu(out, x):
    """NumPy reference: ``out = x * sigmoid(x)``, in place in ``out`` (same shape and dtype as ``x``)."""
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.divide(x, out, out=out)


def np_gelu(out, x, erf):
    """Exact GELU with ``erf`` from scipy.special (see :func:`scipy_erf`)."""
    np.multiply(x, np.float32(1 / np.sqrt(2)), out=out)
    erf(out, out=out)
    out += 1.0
    out *= x
    out *= 0.5


def np_gelu_tanh(out, x):
    """NumPy reference: ``out`` = the tanh form of GELU of ``x``, in place in ``out``."""
    np.multiply(x, x, out=out)
    out *= np.float32(0.044715)
    out += 1.0
    out *= x
    out *= np.float32(np.sqrt(2 / np.pi))
    np.tanh(out, out=out)
    out += 1.0
    out *= x
    out *= 0.5


def np_swiglu(out, a, b):
    """NumPy reference: ``out = silu(a) * b``, in place in ``out``."""
    np_silu(out, a)
    out *= b


def scipy_erf():
    """scipy.special.erf, the GELU reference, or None where scipy (a test extra) is not installed."""
    try:
        from scipy.special import erf
    except ImportError:
        return None
    return erf


def _both(f, g):
    def h():
        f()
        g()
    return h


def softmax_rows(N, C, kw):
    """Timing rows of the row softmax forward and forward+backward on ``(N, C)`` float32, ours against NumPy."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    dout = rng.standard_normal((N, C)).astype(np.float32)
    out, ref, dx = np.empty_like(x), np.empty_like(x), np.zeros_like(x)
    sm.softmax_forward(out, x)
    np_softmax_forward(ref, x)
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-6), "softmax disagrees with the NumPy reference"
    fwd = (lambda: sm.softmax_forward(out, x), lambda: np_softmax_forward(ref, x))
    bwd = (lambda: sm.softmax_backward(dx, dout, out), lambda: np_softmax_backward(dx, dout, ref))
    return _rows("softmax", f"({N}, {C})", x.nbytes, N, fwd, bwd, kw)


def causal_rows(R, T, kw):
    """Timing rows of the causal softmax forward and forward+backward on ``(R, T, T)`` float32 scores, ours against
    NumPy."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((R, T, T)) * 3).astype(np.float32)
    dout = rng.standard_normal((R, T, T)).astype(np.float32)
    above = np.triu(np.ones((T, T), bool), 1)
    out, ref, dx = np.empty_like(x), np.empty_like(x), np.zeros_like(x)
    sm.causal_softmax_forward(out, x)
    np_causal_softmax_forward(ref, x, above)
    assert np.allclose(out, ref, rtol=1e-4, atol=1e-6), "causal softmax disagrees with the NumPy reference"
    fwd = (lambda: sm.causal_softmax_forward(out, x), lambda: np_causal_softmax_forward(ref, x, above))
    bwd = (lambda: sm.causal_softmax_backward(dx, dout, out),
           lambda: np_causal_softmax_backward(dx, dout, ref))
    return _rows("causal softmax", f"({R}, {T}, {T})", x.nbytes, R * T, fwd, bwd, kw)


def _rows(name, shape, nbytes, nrows, fwd, bwd, kw):
    """Forward (x read, out written) and forward+backward (plus dout, out read, dx read and written)."""
    rows = []
    for what, ours, ref, moved in (("forward", fwd[0], fwd[1], 2),
                                   ("forward+backward", _both(fwd[0], bwd[0]), _both(fwd[1], bwd[1]), 6)):
        t = paired_times(ours, ref, **kw)
        rows.append(record(f"{name} {what}", shape, t, "numpy", threads=get_num_threads(),
                           gbytes_per_s=moved * nbytes / t[0] / 1e9, rows_per_s=nrows / t[0]))
    return rows


def activation_rows(N, C, kw):
    """Timing rows of the activation kernels (SiLU, GELU, SwiGLU...) on ``(N, C)`` float32, ours against the NumPy
    references of this module."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((N, C)) * 3).astype(np.float32)
    b = rng.standard_normal((N, C)).astype(np.float32)
    out, ref = np.empty_like(x), np.empty_like(x)
    erf = scipy_erf()
    cases = [
        ("silu forward", lambda: act.silu_forward(out, x), lambda: np_silu(ref, x), "numpy", 2),
        *([("gelu forward", lambda: act.gelu_forward(out, x), lambda: np_gelu(ref, x, erf), "scipy erf", 2)]
          if erf is not None else []),  # without scipy the row is left out (the suite reports it skipped)
        ("gelu tanh forward", lambda: act.gelu_forward(out, x, "tanh"), lambda: np_gelu_tanh(ref, x),
         "numpy", 2),
        ("swiglu forward", lambda: act.swiglu_forward(out, x, b), lambda: np_swiglu(ref, x, b), "numpy", 3),
    ]
    rows = []
    for name, ours, np_ref, ref_name, moved in cases:
        ours()
        np_ref()
        assert np.allclose(out, ref, rtol=1e-4, atol=1e-5), f"{name} disagrees with the NumPy reference"
        t = paired_times(ours, np_ref, **kw)
        rows.append(record(name, f"({N}, {C})", t, ref_name, threads=get_num_threads(),
                           gbytes_per_s=moved * x.nbytes / t[0] / 1e9, rows_per_s=N / t[0]))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``_timing.record``) at numba's thread count and, when that is more than one,
    again on one thread."""
    kw = dict(repeat=3, warmup=1, min_time=0.02) if quick else dict(repeat=9, warmup=2, min_time=0.1)
    rows = []
    for _ in thread_counts():
        for N, C in ((4096, 1024), (256, 32000)):
            rows += softmax_rows(N, C, kw)
        rows += causal_rows(48, 256, kw)
        rows += activation_rows(2048, 768, kw)
    return rows


def main(argv=None) -> None:
    """Run the benchmark (``--quick``) and print its table."""
    argv = sys.argv[1:] if argv is None else argv
    rows = run(quick="--quick" in argv)
    print(f"{'op':32s} {'shape':16s} {'threads':>7s} {'ours ms':>9s} {'ref ms':>9s} {'ref':>10s} "
          f"{'speedup':>8s} {'pairs':>11s} {'GB/s':>6s} {'Mrows/s':>8s}")
    for r in rows:
        print(f"{r['name']:32s} {r['shape']:16s} {r['threads']:7d} {r['ours_s'] * 1e3:9.3f} "
              f"{r['ref_s'] * 1e3:9.3f} {r['ref']:>10s} {r['speedup']:7.2f}x {spread_text(r):>11s} "
              f"{r['gbytes_per_s']:6.1f} {r['rows_per_s'] / 1e6:8.3f}")
    print("medians; speedup = reference / ours, the median of pairs timed back to back (pairs: min-max); "
          "NumPy elementwise runs on one thread")
    if scipy_erf() is None:
        print('gelu forward skipped: its reference needs scipy (pip install "qorus-jit[test]")')


if __name__ == "__main__":
    main()
