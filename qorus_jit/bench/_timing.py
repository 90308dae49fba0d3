"""Timing helpers of the benchmarks: ours and a reference timed pair by pair in the same run, and the ratio
the median of the pairs' ratios.

Timing all of one side, then all of the other, lets a busy stretch of a shared machine fall on one side only
(one such run reported 118x on the AMD EPYC, Zen 1). So each repeat is a pair: one sample of each side back to
back, the side going first alternating from pair to pair; a busy stretch then slows both sides of a pair, and the
median of the pairs' ratios, with their spread, is the figure.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from qorus_jit.core.files import atomic_write_text


def sample_time(fn, min_time: float) -> float:
    """One sample: seconds per call of ``fn()``, called until ``min_time`` has passed."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def in_turn(i: int, first, second) -> tuple:
    """The two sides of pair ``i`` in the order they run: as given when ``i`` is even, swapped when odd."""
    return tuple(rotation(i, [first, second]))


def rotation(i: int, items: list) -> list:
    """``items`` in the order round ``i`` runs them: turned by ``i`` places, so that none always follows another."""
    k = i % len(items)
    return list(items[k:]) + list(items[:k])


def paired_times(ours, ref, *, repeat: int = 7, warmup: int = 2, min_time: float = 0.05,
                 pause: float = 0.0) -> tuple[float, float, list[float]]:
    """``ours()`` and ``ref()`` timed in ``repeat`` pairs, each one :func:`sample_time` of each side back to back
    (ours first in even pairs, the reference first in odd ones), after ``warmup`` untimed calls of each.
    Returns the median seconds per call of ours and of the reference, and each pair's ratio ref / ours.
    ``pause``: seconds slept before each sample, so that the other side's idle pool threads stop spinning."""
    for _ in range(warmup):
        ours()
        ref()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeat):
        for side in in_turn(i, 0, 1):
            if pause:
                time.sleep(pause)
            times[side].append(sample_time((ours, ref)[side], min_time))
    ratios = [r / o for o, r in zip(*times, strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), ratios


def spread(ratios: list[float]) -> list[float]:
    """[min, max] of paired ratios."""
    return [min(ratios), max(ratios)]


def record(name: str, shape: str, timed: tuple[float, float, list[float]], ref: str, **extra) -> dict:
    """One benchmark row from :func:`paired_times`' result ``timed``: our and the reference's median seconds,
    the speed ratio (ref / ours) as the median of the pairs' ratios, their spread [min, max] and the ratios."""
    ours_s, ref_s, ratios = timed
    row = {"name": name, "shape": shape, "ours_s": ours_s, "ref_s": ref_s, "ref": ref,
           "speedup": statistics.median(ratios), "speedup_spread": spread(ratios), "pair_ratios": ratios}
    row.update(extra)
    return row


def spread_text(row: dict) -> str:
    """A row's pair spread for a table, e.g. '1.92-2.31'."""
    lo, hi = row["speedup_spread"]
    return f"{lo:.2f}-{hi:.2f}"


def thread_counts(quick: bool = False) -> Iterator[int]:
    """Yield numba's (and BLAS's) current thread count, then 1 unless ``quick`` or already 1, setting each
    in turn; the current count is restored afterwards. One thread is the steadier figure on a busy machine."""
    from qorus_jit.core.numerics import get_num_threads, set_num_threads  # here: the rest needs no numba

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
          f"{'speedup':>8s} {'pairs':>11s} {'GB/s':>6s}")
    for r in rows:
        print(f"{r['name']:{name_width}s} {r['shape']:{shape_width}s} {r['threads']:7d} {r['ours_s'] * 1e3:9.3f} "
              f"{r['ref_s'] * 1e3:9.3f} {r['speedup']:7.2f}x {spread_text(r):>11s} {r['gbytes_per_s']:6.1f}")
    print("medians; speedup = numpy / ours, the median of pairs timed back to back (pairs: min-max); "
          "NumPy elementwise runs on one thread")


def write_results(path, data) -> Path:
    """A benchmark's results as indented JSON at ``path`` (its folder made if missing), written atomically;
    says where on stdout."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return out
