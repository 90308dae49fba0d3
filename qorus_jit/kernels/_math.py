"""Scalar math shared by the kernels: a vectorizable ``exp``, ``erf`` and ``sigmoid``; C's ``roundf``.

numba has no vector ``exp`` on machines without SVML, so a loop over ``np.exp`` stays scalar. ``exp``
here is plain arithmetic in float32 (LLVM vectorizes it to ymm FMAs) and ``np.exp`` in float64, where
the finite-difference tests need full precision. ``erf`` is the same split.

numba's cache only checks the file that defines a cached kernel: after editing this module, clear the
cache (``qorus clear-cache``) so kernels in other modules that inline these functions recompile.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def exp(x):
    """exp(x) of a float scalar inside kernels."""
    return np.exp(x)


def _exp_f32(x):
    # exp(x) = 2^k exp(r), k = round(x / ln2), |r| <= ln2 / 2 (Cephes expf): relative error < 4e-7;
    # 0 below -87 (and for -inf), x clamped at 88; NaN stays NaN.
    xc = np.minimum(np.maximum(x, np.float32(-87.0)), np.float32(88.0))
    xk = np.fmin(np.fmax(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(xk * np.float32(1.44269504088896341) + np.float32(0.5))
    r = xc - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    y = p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    return y * np.float32(x >= np.float32(-87.0))


def emit_exp(builder, x):
    """LLVM IR: exp of the lanes of float32 vector ``x`` as :func:`_exp_f32` computes each (the same constants,
    clamps and steps, with FMAs): for ``@intrinsic`` loops at the vector width numba's loops do not reach."""
    n = x.type.count
    vty = x.type

    def c(v):
        return ir.Constant(vty, [v] * n)

    def fn(name, k):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * k), f"{name}.v{n}f32")

    fma, floor = fn("llvm.fma", 3), fn("llvm.floor", 1)
    lo, hi = builder.fcmp_ordered("<", x, c(-87.0)), builder.fcmp_ordered(">", x, c(88.0))
    xc = builder.select(hi, c(88.0), builder.select(lo, c(-87.0), x))  # NaN passes through
    k = builder.call(floor, [builder.call(fma, [xc, c(1.44269504088896341), c(0.5)])])
    r = builder.call(fma, [k, c(-0.693359375), xc])
    r = builder.call(fma, [k, c(2.12194440e-4), r])
    p = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = builder.call(fma, [p, r, c(coef)])
    p = builder.fadd(builder.call(fma, [p, builder.fmul(r, r), r]), c(1.0))
    i32 = ir.VectorType(ir.IntType(32), n)
    e = builder.shl(builder.add(builder.fptosi(k, i32), ir.Constant(i32, [127] * n)), ir.Constant(i32, [23] * n))
    return builder.select(lo, c(0.0), builder.fmul(p, builder.bitcast(e, vty)))  # 0 below -87 and at -inf


def emit_sigmoid(builder, x):
    """LLVM IR: :func:`sigmoid` of the lanes of float32 vector ``x`` (exp of -|x| only, as the scalar one)."""
    n = x.type.count
    one = ir.Constant(x.type, [1.0] * n)
    neg = builder.fcmp_ordered("<", x, ir.Constant(x.type, [0.0] * n))
    e = emit_exp(builder, builder.select(neg, x, builder.fsub(ir.Constant(x.type, [0.0] * n), x)))
    r = builder.fdiv(one, builder.fadd(one, e))
    return builder.select(neg, builder.fmul(e, r), r)


@overload(exp, inline="always")
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _exp_f32
    return lambda x: np.exp(x)


def erf(x):
    """erf(x) of a float scalar inside kernels."""
    return math.erf(x)


def _erf_f32(x):
    # float32 erf within 1.5 ulp: x + x p(x^2) below 0.9277, else 1 - exp(q(|x|)) with the sign of x.
    # Both branches are computed and one selected, so loops vectorize.
    T = type(x)
    t = abs(x)
    s = x * x
    r = (T(-1.72853470e-5) * t + T(3.83197126e-4)) * s + (T(-3.88396438e-3) * t + T(2.42546219e-2))
    r = r * t + T(-1.06777877e-1)
    r = r * t + T(-6.34846687e-1)
    r = r * t + T(-1.28717512e-1)
    r = r * t - t
    big = T(1.0) - exp(r)
    big = big if x >= T(0.0) else -big
    p = T(-5.96761703e-4) * s + T(4.99119423e-3)
    p = p * s + T(-2.67681349e-2)
    p = p * s + T(1.12819925e-1)
    p = p * s + T(-3.76125336e-1)
    p = p * s + T(1.28379166e-1)
    small = p * x + x
    return big if t > T(0.927734375) else small


@overload(erf, inline="always")
def _erf_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _erf_f32
    return lambda x: math.erf(x)


def sigmoid(x):
    """1 / (1 + exp(-x)) of a float scalar; exp is only taken of -|x|, so nothing overflows."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    def impl(x):
        T = type(x)
        e = exp(-abs(x))
        r = T(1.0) / (T(1.0) + e)
        return r if x >= T(0.0) else e * r

    return impl


def roundf(v):
    """``v`` rounded to the nearest integer, halves away from zero (C's ``roundf``, ggml's rounding), in v's type."""
    a = abs(v)
    r = np.floor(a)
    if a - r >= 0.5:
        r += 1
    return r if v >= 0 else -r


@overload(roundf, inline="always")
def _roundf_overload(v):
    return roundf
