"""Timing helpers of the benchmarks: medians of repeated runs, ratios against a reference in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

from qorus_jit.core.numerics import get_num_threads, set_num_threads


def sample_time(fn, min_time: float) -> float:
    """One sample: seconds per call of ``fn()``, called until ``min_time`` has passed."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def median_time(fn, *, repeat: int = 7, warmup: int = 2, min_time: float = 0.05) -> float:
    """Median seconds per call of ``fn()``; each sample loops until ``min_time`` has passed."""
    for _ in range(warmup):
        fn()
    return statistics.median(sample_time(fn, min_time) for _ in range(repeat))


def record(name: str, shape: str, ours_s: float, ref_s: float, ref: str, **extra) -> dict:
    """One benchmark row: our and the reference's median seconds and the speed ratio (ref / ours)."""
    row = {"name": name, "shape": shape, "ours_s": ours_s, "ref_s": ref_s, "ref": ref,
           "speedup": ref_s / ours_s}
    row.update(extra)
    return row


def thread_counts(quick: bool = False) -> Iterator[int]:
    """Yield numba's (and BLAS's) current thread count, then 1 unless ``quick`` or already 1, setting each
    in turn; the current count is restored afterwards. One thread is the steadier figure on a busy machine."""
    threads = get_num_threads()
    try:
        for n in [threads] if quick else sorted({threads, 1}, reverse=True):
            set_num_threads(n)
            yield n
    finally:
        set_num_threads(threads)


def print_rows(rows: list[dict], name_width: int = 32, shape_width: int = 14) -> None:
    """Print benchmark rows (:func:`record` rows with ``threads`` and ``gbytes_per_s``) as a table."""
    print(f"{'op':{name_width}s} {'shape':{shape_width}s} {'threads':>7s} {'ours ms':>9s} {'numpy ms':>9s} "
          f"{'speedup':>8s} {'GB/s':>6s}")
    for r in rows:
        print(f"{r['name']:{name_width}s} {r['shape']:{shape_width}s} {r['threads']:7d} {r['ours_s'] * 1e3:9.3f} "
              f"{r['ref_s'] * 1e3:9.3f} {r['speedup']:7.2f}x {r['gbytes_per_s']:6.1f}")
    print("medians; speedup = numpy / ours; NumPy elementwise runs on one thread")
