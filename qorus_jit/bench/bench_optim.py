"""The AdamW update kernel against the same update written in NumPy, in the same run.

``python -m qorus_jit.bench.bench_optim [--quick]`` prints medians and speedups (NumPy time / ours, the median of pairs
timed back to back: ``_timing.paired_times``); ``run`` returns the rows. One step of ``torch.optim.AdamW``
(decoupled weight decay, bias corrections) on float32 parameters, first and second moments and a gradient, in
place; NumPy uses one preallocated temporary and runs on one thread, the kernel on numba's threads.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from qorus_jit.bench._timing import paired_times, print_rows, record, thread_counts
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels import optim

SIZES = (1 << 20,)  # about a million parameters
HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=10)


def np_adamw_update(param, m, v, grad, tmp, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step in place, as ``qorus_jit.kernels.optim.adamw_update``; ``tmp`` is scratch of param's shape."""
    f = param.dtype.type
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    param *= f(1 - lr * weight_decay)
    np.subtract(grad, m, out=tmp)
    tmp *= f(1 - beta1)
    m += tmp
    v *= f(beta2)
    np.multiply(grad, grad, out=tmp)
    tmp *= f(1 - beta2)
    v += tmp
    np.sqrt(v, out=tmp)
    tmp *= f(1 / math.sqrt(bc2))
    tmp += f(eps)
    np.divide(m, tmp, out=tmp)
    tmp *= f(lr / bc1)
    param -= tmp


def adamw_rows(n, kw):
    """One row: an AdamW step on ``n`` float32 parameters, ours and NumPy's."""
    rng = np.random.default_rng(0)

    def state():
        p = rng.standard_normal(n).astype(np.float32)
        return p, p * 0.01, np.abs(p) * 1e-4, rng.standard_normal(n).astype(np.float32)

    ours, ref = state(), None
    ref = tuple(a.copy() for a in ours)
    tmp = np.empty(n, np.float32)
    optim.adamw_update(*ours, **HYPER)
    np_adamw_update(*ref, tmp, **HYPER)
    assert np.allclose(ours[0], ref[0], rtol=1e-5, atol=1e-6), "AdamW disagrees with the NumPy reference"
    t = paired_times(lambda: optim.adamw_update(*ours, **HYPER), lambda: np_adamw_update(*ref, tmp, **HYPER), **kw)
    return [record("adamw update", f"{n:,} float32 params", t, "numpy", threads=get_num_threads(),
                   gbytes_per_s=7 * 4 * n / t[0] / 1e9)]  # read param, m, v, grad; write param, m, v


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``_timing.record``) at numba's thread count and, unless quick, on one thread."""
    kw = dict(repeat=3, warmup=1, min_time=0.02) if quick else dict(repeat=9, warmup=2, min_time=0.1)
    rows = []
    for _ in thread_counts(quick):
        for n in SIZES:
            rows += adamw_rows(n, kw)
    return rows


def main(argv=None) -> None:
    """Run the benchmark (``--quick``) and print its table."""
    argv = sys.argv[1:] if argv is None else argv
    print_rows(run(quick="--quick" in argv), 14, 22)


if __name__ == "__main__":
    main()
