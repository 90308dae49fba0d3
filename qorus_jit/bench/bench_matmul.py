"""Matmul, linear and bmm kernels (BLAS route and numba route) against NumPy's ``@`` in the same run.

``python -m qorus_jit.bench.bench_matmul [--quick]`` prints GFLOP/s and the ratio ours / numpy (= numpy time / ours);
``run`` returns the rows. Each route is timed against numpy ``@`` in pairs (``_timing.paired_times``: one
sample of each back to back, in turn first), so a busy stretch slows both sides of a pair; the ratio is the
median of the pairs' ratios. A short pause before each sample lets the previous candidate's thread pool
(numpy's OpenBLAS or numba's) go idle.
NumPy's ``@`` and our BLAS route call the same OpenBLAS (numpy's, see qorus_jit/kernels/_blas.py); each row
names the library on each side. Rows come at numba's thread count and, unless quick, on one thread
(``qorus_jit.core.numerics.set_num_threads`` sets numba and both BLAS copies together).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np

from qorus_jit.bench._timing import paired_times, record, spread_text, thread_counts
from qorus_jit.kernels import matmul
from qorus_jit.kernels._blas import BLAS_SOURCE

SQUARE = (512, 1024, 2048)
TRANSFORMER = (2048, 256, 768)  # M, K, N: x (2048, 256) @ W (768, 256).T
ATTENTION = (32, 256, 64)  # G = batch * heads, T, head dim


def _blas_libs() -> dict[str, str]:
    """'numpy' (and 'scipy' if loaded) -> 'openblas 0.3.x, arch, file' from threadpoolctl."""
    from threadpoolctl import threadpool_info

    libs = {}
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        path = lib.get("filepath", "")
        folder = Path(path).parent.name
        who = "scipy" if folder.startswith("scipy") else "numpy" if folder.startswith("numpy") else path
        libs[who] = f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}, {path}"
    return libs


def _cases(quick: bool):
    """(name, shape, flops, make) per case, ``make()`` allocating the arrays and returning the candidates
    {'blas', 'numba', 'numpy'}: functions of no argument. Quick: the first square and the transformer shapes."""
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def square(n):
        a, b, c = r(n, n), r(n, n), np.empty((n, n), np.float32)
        return {"blas": lambda: matmul.matmul_forward(c, a, b),
                "numba": lambda: matmul.matmul_forward(c, a, b, route="numba"),
                "numpy": lambda: np.matmul(a, b, out=c)}

    for n in SQUARE[:1] if quick else SQUARE:
        yield "matmul forward", f"({n}, {n}) @ ({n}, {n})", 2 * n**3, lambda n=n: square(n)

    M, K, N = TRANSFORMER

    def transformer_matmul():
        a, b, c = r(M, K), r(K, N), np.empty((M, N), np.float32)
        return {"blas": lambda: matmul.matmul_forward(c, a, b),
                "numba": lambda: matmul.matmul_forward(c, a, b, route="numba"),
                "numpy": lambda: np.matmul(a, b, out=c)}

    def linear_forward():
        x, w, bias, out = r(M, K), r(N, K), r(N), np.empty((M, N), np.float32)
        return {"blas": lambda: matmul.linear_forward(out, x, w, bias),
                "numba": lambda: matmul.linear_forward(out, x, w, bias, route="numba"),
                "numpy": lambda: np.add(np.matmul(x, w.T, out=out), bias, out=out)}

    def linear_backward():
        x, w, dout = r(M, K), r(N, K), r(M, N)
        dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros(N, np.float32)

        def np_linear_backward():
            dx[...] += dout @ w
            dw[...] += dout.T @ x
            db[...] += dout.sum(0)

        return {"blas": lambda: matmul.linear_backward(dx, dw, db, dout, x, w),
                "numba": lambda: matmul.linear_backward(dx, dw, db, dout, x, w, route="numba"),
                "numpy": np_linear_backward}

    yield "matmul forward", f"({M}, {K}) @ ({K}, {N})", 2 * M * K * N, transformer_matmul
    yield "linear forward", f"x ({M}, {K}) @ W ({N}, {K}).T + b", 2 * M * K * N, linear_forward
    yield "linear backward", f"dout ({M}, {N}), x ({M}, {K}), W ({N}, {K})", 4 * M * K * N, linear_backward
    if quick:
        return
    G, T, D = ATTENTION

    def bmm_qk():
        q, k, s = r(G, T, D), r(G, T, D), np.empty((G, T, T), np.float32)
        return {"blas": lambda: matmul.bmm_forward(s, q, k, True),
                "numba": lambda: matmul.bmm_forward(s, q, k, True, route="numba"),
                "numpy": lambda: np.matmul(q, k.transpose(0, 2, 1), out=s)}

    def bmm_pv():
        p, v, o = r(G, T, T), r(G, T, D), np.empty((G, T, D), np.float32)
        return {"blas": lambda: matmul.bmm_forward(o, p, v),
                "numba": lambda: matmul.bmm_forward(o, p, v, route="numba"),
                "numpy": lambda: np.matmul(p, v, out=o)}

    def bmm_backward():
        q, k, s = r(G, T, D), r(G, T, D), r(G, T, T)
        dq, dk = np.zeros_like(q), np.zeros_like(k)

        def np_bmm_backward():
            dq[...] += s @ k
            dk[...] += s.transpose(0, 2, 1) @ q

        return {"blas": lambda: matmul.bmm_backward(dq, dk, s, q, k, True),
                "numba": lambda: matmul.bmm_backward(dq, dk, s, q, k, True, route="numba"),
                "numpy": np_bmm_backward}

    yield "bmm forward q @ k.T", f"({G}, {T}, {D}) @ ({G}, {T}, {D}).T", 2 * G * T * T * D, bmm_qk
    yield "bmm forward p @ v", f"({G}, {T}, {T}) @ ({G}, {T}, {D})", 2 * G * T * T * D, bmm_pv
    yield "bmm backward q @ k.T", f"({G}, {T}, {D}) @ ({G}, {T}, {D}).T", 4 * G * T * T * D, bmm_backward


def _default_route(name: str) -> str:
    """The route a public function uses when none is given, e.g. 'blas' for ``linear forward``."""
    fn = getattr(matmul, "_".join(name.split()[:2]))
    return inspect.signature(fn).parameters["route"].default


def run(quick: bool = False, select=None, routes=matmul.ROUTES, one_count: bool | None = None) -> list[dict]:
    """Rows (``_timing.record``) for the BLAS and numba routes, each against numpy ``@``.

    ``select(name, shape) -> bool`` keeps some cases of the full list (``quick`` then sets only the repeats);
    ``routes`` names the routes timed; ``one_count`` times at numba's thread count only, not again on one
    thread (default: when quick)."""
    repeat, min_time, pause = (3, 0.05, 0.1) if quick else (7, 0.2, 0.15)
    libs = _blas_libs()
    rows = []
    for n in thread_counts(quick if one_count is None else one_count):
        for name, shape, flops, make in _cases(quick and select is None):
            if select is not None and not select(name, shape):
                continue
            fns = make()
            for route in routes:
                t = paired_times(fns[route], fns["numpy"], repeat=repeat, warmup=1, min_time=min_time, pause=pause)
                rows.append(record(
                    f"{name} [{route}]", shape, t, "numpy @", route=route,
                    default=route == _default_route(name), threads=n, gflops=flops / t[0] / 1e9,
                    ref_gflops=flops / t[1] / 1e9,
                    ours_blas=f"{BLAS_SOURCE}: {libs.get('numpy')}" if route == "blas" else "none (numba kernel)",
                    ref_blas=libs.get("numpy")))
    return rows


def main(argv=None) -> None:
    """Run the benchmark (``--quick``) and print its table."""
    argv = sys.argv[1:] if argv is None else argv
    rows = run(quick="--quick" in argv)
    print(f"{'op':30s} {'shape':46s} {'threads':>7s} {'ours GF/s':>9s} {'numpy GF/s':>10s} "
          f"{'ours/numpy':>10s} {'pairs':>11s}")
    for r in rows:
        print(f"{r['name']:30s} {r['shape']:46s} {r['threads']:7d} {r['gflops']:9.1f} "
              f"{r['ref_gflops']:10.1f} {r['speedup']:9.2f}x {spread_text(r):>11s}"
              f"{'  (default)' if r['default'] else ''}")
    print("float32; medians; ours/numpy = numpy time / ours, the median of pairs timed back to back (pairs: "
          "min-max); threads = numba's and both BLAS copies'")
    print(f"ours, blas route: {rows[0]['ours_blas']}")
    print(f"numpy @:          {rows[0]['ref_blas']}")


if __name__ == "__main__":
    main()
