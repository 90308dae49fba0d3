"""Run every kernel benchmark and write the figures as JSON.

    python -m perf.run [--quick] [--only matmul,attention] [--out perf/results/kernels.json]

The benchmarks are the kernel families' ``qorus_jit/bench/bench_<family>.py`` and ``perf/bench_graph.py``
(:data:`FAMILIES`; the other ``bench_*`` modules have runners of their own); each exposes
``run(quick=False) -> list[dict]`` whose rows hold our median time, the reference's median time in the same
run, and the speedup (reference / ours): the median of the ratios of pairs timed back to back
(``qorus_jit.bench._timing.paired_times``), with their spread.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

from qorus_jit.bench._timing import spread_text

HERE = Path(__file__).parent
#: The families whose benchmark module has ``run(quick) -> rows``: the package's, then perf/'s graph overhead.
FAMILIES = ("attention", "loss", "matmul", "norm", "optim", "softmax", "graph")


def modules() -> dict[str, str]:
    """family -> the module of its benchmark, e.g. 'norm' -> 'qorus_jit.bench.bench_norm'."""
    return {f: f"{'perf' if f == 'graph' else 'qorus_jit.bench'}.bench_{f}" for f in FAMILIES}


def families() -> list[str]:
    return sorted(modules())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--only", default="", help="comma-separated families (default: all)")
    ap.add_argument("--out", default=str(HERE / "results" / "kernels.json"))
    args = ap.parse_args(argv)

    from qorus_jit.sysinfo import collect

    chosen = [f for f in args.only.split(",") if f] or families()
    unknown = set(chosen) - set(families())
    if unknown:
        ap.error(f"--only: unknown families {sorted(unknown)}; known: {families()}")
    rows = []
    for fam in chosen:
        mod = importlib.import_module(modules()[fam])
        t0 = time.perf_counter()
        got = mod.run(quick=args.quick)
        for r in got:
            r.setdefault("family", fam)
            print(f"{fam:10s} {r['name']:34s} {r['shape']:28s} ours {r['ours_s'] * 1e3:9.3f} ms  "
                  f"{r['ref']:>10s} {r['ref_s'] * 1e3:9.3f} ms  x{r['speedup']:6.2f} ({spread_text(r)})"
                  + (f"  {r['gflops']:7.1f} GFLOP/s" if "gflops" in r else ""), flush=True)
        rows.extend(got)
        print(f"# {fam}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": collect(), "node": platform.node(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
