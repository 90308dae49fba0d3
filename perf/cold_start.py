"""Cold start: seconds from a fresh process to the first finished call of each kernel family.

    python -m perf.cold_start [--out perf/results/cold_start.json]

Each family runs in its own fresh interpreter twice: once with an empty numba cache (every kernel it
touches compiles) and once with the cache that first run left (machine code loads from disk). The
import of numpy/numba is timed apart from the first call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from qorus_jit.bench._timing import write_results

# One forward and one backward call per family, on tiny float32 inputs.
SNIPPETS = {
    "elementwise": """
        from qorus_jit.kernels import elementwise as K
        a = np.ones((4, 8), np.float32); o = np.empty_like(a); d = np.zeros_like(a)
        K.add_forward(o, a, a); K.add_backward(d, d.copy(), a)
        K.mul_forward(o, a, a); K.mul_backward(d, d.copy(), a, a, a)
    """,
    "matmul": """
        from qorus_jit.kernels import matmul as K
        x = np.ones((4, 8), np.float32); w = np.ones((6, 8), np.float32); b = np.ones(6, np.float32)
        y = np.empty((4, 6), np.float32)
        K.linear_forward(y, x, w, b)
        K.linear_backward(np.zeros_like(x), np.zeros_like(w), np.zeros_like(b), y, x, w)
    """,
    "activations": """
        from qorus_jit.kernels import activations as K
        a = np.ones((4, 8), np.float32); o = np.empty_like(a); d = np.zeros_like(a)
        K.gelu_forward(o, a); K.gelu_backward(d, a, a)
        K.swiglu_forward(o, a, a); K.swiglu_backward(d, d.copy(), a, a, a)
    """,
    "softmax": """
        from qorus_jit.kernels import softmax as K
        a = np.ones((4, 8), np.float32); o = np.empty_like(a)
        K.softmax_forward(o, a); K.softmax_backward(np.zeros_like(a), a, o)
    """,
    "norm": """
        from qorus_jit.kernels import norm as K
        x = np.ones((4, 8), np.float32); w = np.ones(8, np.float32); o = np.empty_like(x)
        r = np.empty(4, np.float32)
        K.rmsnorm_forward(o, r, x, w, 1e-5)
        K.rmsnorm_backward(np.zeros_like(x), np.zeros_like(w), x, x, w, r)
    """,
    "rope": """
        from qorus_jit.kernels import rope as K
        cos, sin = K.rope_cache(16, 8)
        x = np.ones((1, 4, 2, 8), np.float32); o = np.empty_like(x)
        K.rope_forward(o, x, cos, sin, 0, False); K.rope_backward(np.zeros_like(x), x, cos, sin, 0, False)
    """,
    "attention": """
        from qorus_jit.kernels import attention as K
        q = np.ones((1, 4, 2, 8), np.float32); o = np.empty_like(q); lse = np.empty((1, 2, 4), np.float32)
        K.attention_forward(o, lse, q, q, q, True)
        K.attention_backward(np.zeros_like(q), np.zeros_like(q), np.zeros_like(q), o, q, q, q, o, lse, True)
    """,
    "embedding": """
        from qorus_jit.kernels import embedding as K
        w = np.ones((10, 8), np.float32); ids = np.zeros((1, 4), np.int64); o = np.empty((1, 4, 8), np.float32)
        K.embedding_forward(o, ids, w); K.embedding_backward(np.zeros_like(w), o, ids)
    """,
    "loss": """
        from qorus_jit.kernels import loss as K
        z = np.ones((4, 10), np.float32); t = np.zeros(4, np.int64); l = np.empty(4, np.float32)
        K.cross_entropy_forward(l, z, t); K.cross_entropy_backward(np.zeros_like(z), z, t)
    """,
    "optim": """
        from qorus_jit.kernels import optim as K
        p = np.ones(8, np.float32); m = np.zeros_like(p); v = np.zeros_like(p); g = np.ones_like(p)
        K.adamw_update(p, m, v, g, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1); K.clip_grad_norm([g], 1.0)
    """,
}

_TEMPLATE = """
import time
t0 = time.perf_counter()
import numpy as np
import qorus_jit
t1 = time.perf_counter()
{body}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def measure(family: str, cache_dir: str) -> tuple[float, float]:
    code = _TEMPLATE.format(body=textwrap.dedent(SNIPPETS[family]))
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    imp, first = (float(v) for v in out.stdout.split()[-2:])
    return imp, first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cold_start.json"))
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    chosen = [f for f in args.only.split(",") if f] or list(SNIPPETS)
    rows = []
    print(f"{'family':12s} {'import s':>9s} {'first call, empty cache s':>26s} {'first call, warm cache s':>25s}")
    for fam in chosen:
        with tempfile.TemporaryDirectory() as cache:
            imp, cold = measure(fam, cache)
            _, warm = measure(fam, cache)
        rows.append({"family": fam, "import_s": imp, "empty_cache_s": cold, "warm_cache_s": warm})
        print(f"{fam:12s} {imp:9.2f} {cold:26.2f} {warm:25.3f}", flush=True)
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
