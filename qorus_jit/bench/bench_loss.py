"""Cross-entropy forward + backward (the fused kernel training uses) against NumPy in the same run.

``python -m qorus_jit.bench.bench_loss [--quick]`` prints medians and speedups (NumPy time / ours, the median of pairs
timed back to back: ``_timing.paired_times``); ``run`` returns the rows. Both sides write the loss and
``dlogits = (softmax - onehot) / N`` from float32 logits into preallocated buffers; NumPy's elementwise ops run
on one thread, the kernel on numba's threads.
"""

from __future__ import annotations

import sys

import numpy as np

from qorus_jit.bench._timing import paired_times, print_rows, record, thread_counts
from qorus_jit.core.numerics import get_num_threads
from qorus_jit.kernels import loss

#: (N, V): a byte-level model's batch of 8 x 256 positions, and a 32000-token vocabulary.
SHAPES = ((2048, 256), (512, 32000))


def np_cross_entropy_forward_backward(dlogits, logits, targets):
    """Mean loss of ``logits (N, V)`` against ``targets (N,)``; ``dlogits = (softmax - onehot) / N``."""
    n = logits.shape[0]
    rows = np.arange(n)
    m = logits.max(axis=1, keepdims=True)
    np.subtract(logits, m, out=dlogits)
    np.exp(dlogits, out=dlogits)
    s = dlogits.sum(axis=1, keepdims=True)
    mean = float(np.mean(np.log(s[:, 0]) + m[:, 0] - logits[rows, targets]))
    dlogits /= s
    dlogits[rows, targets] -= 1.0
    dlogits *= np.float32(1.0 / n)
    return mean


def cross_entropy_rows(N, V, kw):
    """One row: the fused forward + backward on (N, V) logits, ours and NumPy's."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((N, V)) * 2).astype(np.float32)
    targets = rng.integers(0, V, N)
    d_ours, d_ref = np.empty_like(logits), np.empty_like(logits)
    got = loss.cross_entropy_forward_backward(d_ours, logits, targets)
    want = np_cross_entropy_forward_backward(d_ref, logits, targets)
    assert abs(got - want) < 1e-4 * abs(want) and np.allclose(d_ours, d_ref, atol=1e-7), "disagrees with NumPy"
    t = paired_times(lambda: loss.cross_entropy_forward_backward(d_ours, logits, targets),
                     lambda: np_cross_entropy_forward_backward(d_ref, logits, targets), **kw)
    return [record("cross-entropy forward+backward", f"({N}, {V})", t, "numpy",
                   threads=get_num_threads(), gbytes_per_s=2 * logits.nbytes / t[0] / 1e9)]


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (``_timing.record``) at numba's thread count and, unless quick, on one thread."""
    kw = dict(repeat=3, warmup=1, min_time=0.02) if quick else dict(repeat=9, warmup=2, min_time=0.1)
    rows = []
    for _ in thread_counts(quick):
        for N, V in SHAPES:
            rows += cross_entropy_rows(N, V, kw)
    return rows


def main(argv=None) -> None:
    """Run the benchmark (``--quick``) and print its table."""
    argv = sys.argv[1:] if argv is None else argv
    print_rows(run(quick="--quick" in argv), 32, 14)


if __name__ == "__main__":
    main()
