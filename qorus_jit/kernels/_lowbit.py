"""What the quantized kernels (``kernels.quant``, portable; ``kernels.quant_x86``, x86 instructions) share: the
q8_0 group size, the quantizer of one token's activations for the integer dots, and two pieces of LLVM IR
their ``@intrinsic`` dots emit (a prefetch, a lane sum in a fixed order)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import cgutils

from qorus_jit.core.numerics import kernel
from qorus_jit.kernels._math import roundf

#: Weights per q8_0 group (one scale each), along the input dimension.
GROUP = 32

_PREFETCH = 1024  # bytes ahead of their loads that the row dots prefetch W (bf16 +25% from memory: docs/design.md)


@kernel
def _quantize_x_q8(xq, xs, x):
    """x (I,) float32 quantized per group of 32 for the integer dot: ``xs[g] = max|x_g| * (1/127)``, ``xq =
    roundf(x / xs[g])`` in [-127, 127] (0 where xs[g] is 0); xq (I,) int16 (the portable dot) or int8 (the x86
    paths' signed dot), xs (I/32,) float32."""
    for g in range(xs.shape[0]):
        xg, qg = x[g * GROUP:(g + 1) * GROUP], xq[g * GROUP:(g + 1) * GROUP]
        m = np.float32(0)
        for j in range(GROUP):
            m = max(m, abs(xg[j]))
        sc = m * np.float32(1 / 127)
        inv = np.float32(1) / sc if sc > 0 else np.float32(0)
        xs[g] = sc
        for j in range(GROUP):
            qg[j] = np.int32(roundf(xg[j] * inv))


def _prefetch(builder, ptr):
    """A prefetch (read, into L1) of the line _PREFETCH bytes after ``ptr``; ``llvm.prefetch`` never faults."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    ahead = builder.gep(builder.bitcast(ptr, i8p), [ir.Constant(ir.IntType(64), _PREFETCH)])
    builder.call(fn, [ahead, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])


def _hsum(builder, v):
    """The sum of the lanes of vector ``v`` in a fixed order (halves added pairwise), a scalar."""
    n = v.type.count
    while n > 1:
        n //= 2
        undef = ir.Constant(v.type, ir.Undefined)
        lo = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n))))
        hi = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
