"""Start-up of a jitclass layer against a plain Python class over the same cached kernels.

    python -m perf.jitclass_startup plain|jitclass      (each run is a fresh process)

A block of RMSNorm + Linear holds its parameters, gradients and buffers and calls the private cached
kernels in forward and backward. The jitclass cannot be cached by numba, so its constructor and methods
compile in every process; the plain class only loads the cached kernels. Figures: docs/design.md.
"""

import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402  (timed import)
from numba import float32  # noqa: E402
from numba.experimental import jitclass  # noqa: E402

from qorus_jit.kernels.matmul import _linear_backward, _linear_forward  # noqa: E402
from qorus_jit.kernels.norm import _rmsnorm_backward, _rmsnorm_forward  # noqa: E402

SPEC = [(name, float32[:, ::1]) for name in ("w", "dw", "h", "y", "no_base")] + [
    (name, float32[::1]) for name in ("b", "db", "g", "dg", "rstd")]


class Block:
    """rmsnorm -> linear; x (N, C) -> y (N, O)."""

    def __init__(self, w, b, g, h, y, rstd):
        self.w, self.b, self.g = w, b, g
        self.dw, self.db, self.dg = np.zeros_like(w), np.zeros_like(b), np.zeros_like(g)
        self.h, self.y, self.rstd = h, y, rstd
        self.no_base = np.empty((0, 0), np.float32)  # the norm's backward adds no residual (it accumulates)

    def forward(self, x):
        _rmsnorm_forward(self.h, self.rstd, x, self.g, np.float32(1e-5))
        _linear_forward(self.y, self.h, self.w, self.b)
        return self.y

    def backward(self, dx, dy, x):
        dh = np.zeros_like(self.h)
        _linear_backward(dh, self.dw, self.db, dy, self.h, self.w)
        _rmsnorm_backward(dx, self.dg, dh, x, self.g, self.rstd, True, self.no_base)


def main(mode: str) -> None:
    t1 = time.perf_counter()
    cls = jitclass(SPEC)(Block) if mode == "jitclass" else Block
    N, C, O = 64, 32, 48
    x = np.ones((N, C), np.float32)
    blk = cls(np.ones((O, C), np.float32), np.ones(O, np.float32), np.ones(C, np.float32),
              np.empty((N, C), np.float32), np.empty((N, O), np.float32), np.empty(N, np.float32))
    t2 = time.perf_counter()
    y = blk.forward(x)
    blk.backward(np.zeros_like(x), np.ones_like(y), x)
    t3 = time.perf_counter()
    reps = 2000
    for _ in range(reps):
        blk.forward(x)
    t4 = time.perf_counter()
    print(f"{mode}: import {t1 - T0:.2f} s, construct {t2 - t1:.2f} s, first forward+backward {t3 - t2:.2f} s, "
          f"then {(t4 - t3) / reps * 1e6:.1f} us per forward")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "plain")
