"""Rotary position embeddings (RoPE) on attention tensors ``x`` of shape ``(B, T, H, D)``, ``D`` even.

Pair ``i`` (``0 <= i < D/2``) of the head vector at position ``p`` is rotated by the angle
``p * theta^(-2i/D)``, read from precomputed tables ``cos``, ``sin`` of shape ``(T_max, D/2)``.
Token ``t`` of ``x`` sits at position ``pos + t`` (``pos`` is the offset while decoding with a cache).

Two pairings:

- ``interleaved=False``: rotate-half, as Hugging Face Llama: pair ``i`` is ``(x[i], x[i + D/2])``.
- ``interleaved=True``: llama2.c / Meta: pair ``i`` is ``(x[2i], x[2i + 1])``.

Forward may run in place (``out is x``; the kernel always does: a separate ``out`` is first a copy of ``x``);
backward accumulates the rotation by ``-angle``. The bodies run over (batch, token) rows through
``numerics.for_rows``.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import (
    check_arrays,
    check_bool,
    check_float_dtype,
    check_nonnegative,
    check_positive,
    check_positive_float,
)
from qorus_jit.core.numerics import DTYPE, FASTMATH, for_rows, kernel
from qorus_jit.kernels._lowbit import LANES, lane_chunks, load_lanes, store_lanes


@kernel
def _rope_tables(cos, sin, theta):
    """cos, sin (T_max, D/2) = cos, sin of t * theta^(-2i/D), computed in float64."""
    T_max, half = cos.shape
    D = 2 * half
    for i in range(half):
        freq = theta ** (-2.0 * i / D)
        for t in range(T_max):
            cos[t, i] = math.cos(t * freq)
            sin[t, i] = math.sin(t * freq)


@intrinsic
def _rotate_halves_f32(typingctx, x, cp, sp):
    """:func:`_rotate_halves` of a float32 row in 16-lane vector IR (the loop ran at 8 lanes; each half of a
    W-train head, 16 pairs, is one vector here)."""
    def codegen(context, builder, sig, args):
        xp, cpp, spp = (context.make_array(t)(context, builder, a).data for t, a in zip(sig.args, args, strict=True))
        half = cgutils.unpack_tuple(builder, context.make_array(sig.args[1])(context, builder, args[1]).shape, 1)[0]
        vty = ir.VectorType(ir.FloatType(), LANES)
        hp = builder.gep(xp, [half])

        def chunk(off, n_valid):
            c, s = (load_lanes(builder, builder.gep(p, [off]), vty, n_valid) for p in (cpp, spp))
            x0, x1 = (load_lanes(builder, builder.gep(p, [off]), vty, n_valid) for p in (xp, hp))
            y0 = builder.fsub(builder.fmul(x0, c), builder.fmul(x1, s))
            y1 = builder.fadd(builder.fmul(x0, s), builder.fmul(x1, c))
            store_lanes(builder, y0, builder.gep(xp, [off]), n_valid)
            store_lanes(builder, y1, builder.gep(hp, [off]), n_valid)

        lane_chunks(builder, half, LANES, chunk)
        return context.get_dummy_value()

    return types.void(x, cp, sp), codegen


def _rotate_halves(x, cp, sp):
    """x (D,) rotated in place, rotate-half pairs (x[i], x[i + D/2]) by the angles of cp, sp (D/2,)."""


@overload(_rotate_halves, jit_options={"fastmath": set(FASTMATH)})
def _rotate_halves_impl(x, cp, sp):
    if x.dtype == cp.dtype == sp.dtype == types.float32 and x.layout == cp.layout == sp.layout == "C":
        return lambda x, cp, sp: _rotate_halves_f32(x, cp, sp)

    def loop(x, cp, sp):
        half = cp.shape[0]
        h0, h1 = x[:half], x[half:]
        for i in range(half):
            c, s, x0, x1 = cp[i], sp[i], h0[i], h1[i]
            h0[i] = x0 * c - x1 * s
            h1[i] = x0 * s + x1 * c
    return loop


@kernel
def _rope_rows(x, cos, sin, pos, interleaved, lo, hi):
    """x rotated in place, for the (batch, token) rows bt = b * T + t in lo..hi-1 (position pos + t).

    Each pair's two values are loaded before either is stored, through views that count from 0 (see
    docs/design.md, "Loops must count from 0"), so LLVM vectorizes the pairs. In place only: with a separate
    output, LLVM could not prove the output and the input distinct or equal and kept the scalar loop."""
    T, H, D = x.shape[1], x.shape[2], x.shape[3]
    half = D // 2
    for bt in range(lo, hi):
        b = bt // T
        t = bt % T
        cp, sp = cos[pos + t], sin[pos + t]
        for h in range(H):
            xr = x[b, t, h]
            if interleaved:
                e0, e1 = xr[0::2], xr[1::2]
                for i in range(half):
                    c, s, x0, x1 = cp[i], sp[i], e0[i], e1[i]
                    e0[i] = x0 * c - x1 * s
                    e1[i] = x0 * s + x1 * c
            else:
                _rotate_halves(xr, cp, sp)


@kernel(parallel=True)
def _rope_forward(x, cos, sin, pos, interleaved):
    """x (B, T, H, D) rotated in place at positions pos..pos+T-1; cos, sin (T_max, D/2)."""
    for_rows(_rope_rows, (x, cos, sin, pos, interleaved), x.shape[0] * x.shape[1], x.size)


@kernel
def _rope_backward_rows(dx, dout, cos, sin, pos, interleaved, lo, hi):
    """_rope_backward on the (batch, token) rows bt = b * T + t in lo..hi-1."""
    T, H, D = dout.shape[1], dout.shape[2], dout.shape[3]
    half = D // 2
    for bt in range(lo, hi):
        b = bt // T
        t = bt % T
        p = pos + t
        for h in range(H):
            # out0 = x0 * c - x1 * s; out1 = x0 * s + x1 * c
            if interleaved:
                for i in range(half):
                    c = cos[p, i]
                    s = sin[p, i]
                    g0 = dout[b, t, h, 2 * i]
                    g1 = dout[b, t, h, 2 * i + 1]
                    dx[b, t, h, 2 * i] += g0 * c + g1 * s
                    dx[b, t, h, 2 * i + 1] += g1 * c - g0 * s
            else:
                for i in range(half):
                    c = cos[p, i]
                    s = sin[p, i]
                    g0 = dout[b, t, h, i]
                    g1 = dout[b, t, h, i + half]
                    dx[b, t, h, i] += g0 * c + g1 * s
                    dx[b, t, h, i + half] += g1 * c - g0 * s


@kernel(parallel=True)
def _rope_backward(dx, dout, cos, sin, pos, interleaved):
    """dx (B, T, H, D) += dout (B, T, H, D) rotated by -angle at positions pos..pos+T-1."""
    for_rows(_rope_backward_rows, (dx, dout, cos, sin, pos, interleaved), dout.shape[0] * dout.shape[1], dout.size)


def rope_tables(cos, sin, theta: float = 10000.0):
    """Fill ``cos``, ``sin`` ``(T_max, D/2)`` with the rotation tables for head size ``D``."""
    check_arrays(cos=(cos, ("T_max", "half")), sin=(sin, ("T_max", "half")), writes=("cos", "sin"))
    check_positive_float(theta=theta)
    _rope_tables(cos, sin, float(theta))


def rope_cache(max_seq_len: int, head_dim: int, theta: float = 10000.0, dtype=DTYPE):
    """New ``(cos, sin)`` tables of shape ``(max_seq_len, head_dim // 2)`` in ``dtype``."""
    check_positive(max_seq_len=max_seq_len, head_dim=head_dim)
    if head_dim % 2:
        raise ValueError(f"head_dim: expected an even int, got {head_dim}")
    dt = check_float_dtype("dtype", dtype)
    half = int(head_dim) // 2
    _alloc.check_fits("rope table elements (cos and sin)", 2 * int(max_seq_len) * half, dt,
                      max_seq_len=max_seq_len, head_dim=head_dim)
    cos = np.empty((int(max_seq_len), half), dt)
    sin = np.empty_like(cos)
    rope_tables(cos, sin, theta)
    return cos, sin


def _check_rope(x_name, x, cos, sin, pos, interleaved, out_name, out):
    """Validate x (B, T, H, D) with D even, out (x's shape, written, may be x), tables (T_max, D/2),
    pos + T <= T_max and the flag."""
    spec = ("B", "T", "H", "D")
    dims = check_arrays(**{x_name: (x, spec), out_name: (out, spec)}, cos=(cos, ("T_max", "half")),
                        sin=(sin, ("T_max", "half")), writes=(out_name,), inplace={out_name: x_name})
    if dims["D"] % 2:
        raise ValueError(f"{x_name}: expected an even head size D, got shape {x.shape} (D = {dims['D']})")
    if dims["half"] != dims["D"] // 2:
        raise ValueError(f"cos: expected shape (T_max, {dims['D'] // 2}) for head size D = {dims['D']}, "
                         f"got {cos.shape}")
    check_nonnegative(pos=pos)
    if pos + dims["T"] > dims["T_max"]:
        raise ValueError(f"pos: expected pos + T <= T_max = {dims['T_max']} (T = {dims['T']}), "
                         f"got pos = {pos}")
    check_bool(interleaved=interleaved)


def rope_forward(out, x, cos, sin, pos: int = 0, interleaved: bool = False):
    """``out = rope(x)`` for tokens at positions ``pos .. pos + T - 1``; ``out`` may be ``x``."""
    _check_rope("x", x, cos, sin, pos, interleaved, "out", out)
    if out is not x:
        np.copyto(out, x)
    _rope_forward(out, cos, sin, int(pos), bool(interleaved))


def rope_backward(dx, dout, cos, sin, pos: int = 0, interleaved: bool = False):
    """``dx += rope(dout)`` rotated by ``-angle`` (the transpose of the forward rotation)."""
    _check_rope("dout", dout, cos, sin, pos, interleaved, "dx", dx)
    _rope_backward(dx, dout, cos, sin, int(pos), bool(interleaved))
