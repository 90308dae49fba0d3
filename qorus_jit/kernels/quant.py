"""Reduced-precision weights: bf16 and q8_0 (int8 in groups of 32) formats, their matrix-vector products
(decoding) and linear products (prefill).

Formats (docs/formats.md; the layouts the layers, the safetensors folders and GGUF files share):

- **bf16**: ``w16 (O, I) uint16``, the upper half of each float32 after round-to-nearest-even (a NaN stays a
  quiet NaN, +-inf stay, values past the largest bf16 round to +-inf). Value: ``(w16 << 16)`` as float32.
- **q8_0** (ggml's Q8_0): ``qs (O, I) int8`` and ``d (O, I // 32) float32`` holding values exact in float16;
  value ``qs[o, i] * d[o, i // 32]``. Quantizing follows ggml's ``quantize_row_q8_0_ref`` bit for bit: per
  group ``amax = max|w|``, ``d = amax / 127`` (float32), ``id = 1 / d`` (0 if d is 0), ``qs = roundf(w * id)``
  (half away from zero), then ``d`` rounded to float16 (nearest even). So our q8_0 of a tensor equals the
  ``gguf`` package's. Weights must be finite (an inf or NaN has no int8 value): refused.

Kernels take float32 activations. ``matvec_*`` (one token) reads every weight once: its speed is memory
bandwidth, so fewer bytes per weight is the whole gain, as long as unpacking them keeps up (docs/design.md,
"Reduced-precision weights"). ``matvec_q8_0`` quantizes x per group of 32 itself (``_quantize_x_q8``, as
llama.cpp does) for an integer dot: faster here than int8 -> float32 conversions, at an error about 1.4x that
of the weights' rounding alone. ``linear_*`` (prefill, N rows) dequantizes W into float32 scratch and
multiplies it with x in float32 (tiles and the serial numba product, or panels and MKL's product), or where MKL
has a bf16 product and the CPU AVX512_BF16, takes that (``prompt_route``).

Instruction paths: the public functions and the ``kernels.trusted`` entries go through the dispatchers
``_matvec_bf16`` and ``_matvec_q8_0``, which pick the path of ``_path(kind)`` (chosen by ``_choose_path`` once
per process, and again by ``kernel_paths()``): ``"portable"`` (the numba kernels here, AVX2 or anything LLVM
targets) or a path of ``kernels.quant_x86``; ``QORUS_PORTABLE=1`` forces the portable paths. ``_linear_bf16``
and ``_linear_q8_0`` take the dequantized tiles on every CPU. The portable kernels' signatures are fixed (the row bodies
``_matvec_*_rows(out, ..., lo, hi)`` are serial kernels that compiled code such as a fused decode may call).
"""

from __future__ import annotations

import os
import threading

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import check_arrays
from qorus_jit.core.numerics import for_chunks, for_rows, kernel
from qorus_jit.kernels._blas import BF16_GEMM, BLAS_SOURCE
from qorus_jit.kernels._lowbit import GROUP, _hsum, _prefetch, _quantize_x_q8, _row_stride
from qorus_jit.kernels._math import roundf
from qorus_jit.kernels.matmul import _gemm_numba_serial, _linear_forward

_CHUNK = 1 << 16  # elements per parallel work item of the element-wise conversions
_TILE_ROWS = 64  # rows of W per dequantized tile in linear_* (64 x 768 float32: 192 KiB, in L2)
_PANEL_BYTES = 8 << 20  # float32 bytes of W dequantized at once for the BLAS product of several tokens
PANEL_TOKENS = 32  # the fewest tokens that take the BLAS product where MKL serves (fewer: the tiles)
_scratch = threading.local()  # each thread's float32 panel, grown as needed

# ---------------------------------------------------------------------------------------------------
# instruction paths


_PATHS: dict[str, str] = {}  # kind -> path, filled at the first call (reading the environment costs 2 us)


def _choose_path(kind: str) -> str:
    """The instruction path for ``kind`` ("q8_0" or "bf16"): the fastest of ``kernels.quant_x86`` that this CPU
    (and numba's target) can run, else "portable"; the one place a path is picked. ``QORUS_PORTABLE=1`` forces
    "portable"."""
    if os.environ.get("QORUS_PORTABLE", "") not in ("", "0"):
        return "portable"
    return _x86().best_paths()[kind] or "portable"


def _path(kind: str) -> str:
    """The path of ``kind`` the dispatchers use: :func:`_choose_path`'s, chosen once per process (and again by
    :func:`kernel_paths`, so that a changed ``QORUS_PORTABLE`` takes effect)."""
    path = _PATHS.get(kind)
    if path is None:
        path = _PATHS[kind] = _choose_path(kind)
    return path


def active_path(kind: str) -> str:
    """The instruction path the ``kind`` ("q8_0" or "bf16") products run now (chosen once per process; see
    :func:`kernel_paths`): what the one-call decoder matches its scratch to."""
    if kind not in ("q8_0", "bf16"):
        raise ValueError(f"kind: expected 'q8_0' or 'bf16', got {kind!r}")
    return _path(kind)


def kernel_paths() -> dict[str, str]:
    """{"q8_0": path, "bf16": path}: the instruction paths the quantized kernels use on this machine, chosen
    afresh (``QORUS_PORTABLE`` read again)."""
    _PATHS.clear()
    return {"q8_0": _path("q8_0"), "bf16": _path("bf16")}


# ---------------------------------------------------------------------------------------------------
# bf16


@kernel
def _bf16_from_f32_range(w16, bits, lo, hi):
    """w16[i] = bf16 of the float32 whose bits are bits[i] (round to nearest even, NaN kept quiet) for lo <= i <
    hi; flat (n,), bits uint32 (the float32 array viewed as uint32)."""
    w16, bits = w16[lo:hi], bits[lo:hi]
    for i in range(hi - lo):
        u = np.int64(bits[i])
        if (u & 0x7FFFFFFF) > 0x7F800000:
            w16[i] = np.uint16((u >> 16) | 0x40)
        else:
            w16[i] = np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@kernel
def _f32_from_bf16_range(bits, w16, lo, hi):
    """bits[i] = w16[i] << 16 for lo <= i < hi: the float32 of bf16 ``w16`` written through its uint32 view
    ``bits`` (integers only, which LLVM vectorizes; a scalar view as float32 per element did not); flat (n,)."""
    bits, w16 = bits[lo:hi], w16[lo:hi]
    for i in range(hi - lo):
        bits[i] = np.uint32(w16[i]) << 16


@kernel(parallel=True)
def _quantize_bf16(w16, bits):
    """w16 (n,) uint16 = bf16 of the float32 array (n,) viewed as uint32 ``bits``."""
    n = bits.shape[0]
    for_chunks(_bf16_from_f32_range, (w16, bits), n, _CHUNK, n)


@kernel(parallel=True)
def _dequantize_bf16(bits, w16):
    """bits (n,) uint32 = the float32 of w16 (n,) bf16, as bits (a float32 array viewed as uint32)."""
    n = bits.shape[0]
    for_chunks(_f32_from_bf16_range, (bits, w16), n, _CHUNK, n)


@kernel
def _split_even_odd(xe, xo, x):
    """xe = x[0::2], xo = x[1::2]; x (2 n,), xe, xo (n,)."""
    for k in range(xe.shape[0]):
        xe[k] = x[2 * k]
        xo[k] = x[2 * k + 1]


_BF16_STEP = 16  # bf16 pairs per step of _bf16_dot: two vectors of 8 (one 64-byte line), four accumulators


@intrinsic
def _bf16_dot(typingctx, out, w32, xe, xo, i):
    """out[i] = W[i] . x for bf16 pairs ``w32 (O, n) uint32`` (element 2k in the low half of w32[:, k], 2k + 1 in
    the high half) and x as its even and odd elements xe, xo (n,) float32; n a multiple of _BF16_STEP. w32 may be a
    window of columns (rows read by their stride).

    Vector IR: the low elements are ``u << 16``, the high ones ``u & 0xFFFF0000``, one instruction each where
    unpacking a uint16 takes a widening load and a shift; four accumulators hide the latency of the FMAs. Each
    step prefetches the line _PREFETCH bytes ahead (``llvm.prefetch`` never faults, past the end included)."""

    def codegen(context, builder, sig, args):
        op, ep, dp = (context.make_array(sig.args[j])(context, builder, args[j]).data for j in (0, 2, 3))
        wp, ws = _row_stride(context, builder, sig.args[1], args[1])
        i = args[4]
        n = cgutils.unpack_tuple(builder, context.make_array(sig.args[1])(context, builder, args[1]).shape, 2)[1]
        i64 = ir.IntType(64)
        vf, vi32 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(ir.IntType(32), 8)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fmuladd.v8f32")
        shift, mask = ir.Constant(vi32, [16] * 8), ir.Constant(vi32, [-65536] * 8)  # -65536 = 0xFFFF0000

        def load(base, off, vty):
            return builder.load(builder.bitcast(builder.gep(base, [off]), vty.as_pointer()), align=4)

        acc = []
        for _ in range(4):
            slot = cgutils.alloca_once(builder, vf)
            builder.store(ir.Constant(vf, None), slot)
            acc.append(slot)
        row = builder.mul(i, ws)
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(i64, _BF16_STEP))) as loop:
            k0 = builder.mul(loop.index, ir.Constant(i64, _BF16_STEP))
            _prefetch(builder, builder.gep(wp, [builder.add(row, k0)]))
            for u in range(2):
                k = builder.add(k0, ir.Constant(i64, 8 * u))
                w = load(wp, builder.add(row, k), vi32)
                lo, hi = builder.bitcast(builder.shl(w, shift), vf), builder.bitcast(builder.and_(w, mask), vf)
                builder.store(builder.call(fma, [lo, load(ep, k, vf), builder.load(acc[2 * u])]), acc[2 * u])
                builder.store(builder.call(fma, [hi, load(dp, k, vf), builder.load(acc[2 * u + 1])]), acc[2 * u + 1])
        total = builder.fadd(builder.fadd(builder.load(acc[0]), builder.load(acc[1])),
                             builder.fadd(builder.load(acc[2]), builder.load(acc[3])))
        builder.store(_hsum(builder, total), builder.gep(op, [i]), align=4)
        return context.get_dummy_value()

    return types.void(out, w32, xe, xo, types.int64), codegen


@kernel
def _matvec_bf16_rows(out, w32, xe, xo, lo, hi):
    """out[i] = W[i] . x for lo <= i < hi, W in bf16 pairs ``w32 (O, I/2) uint32`` (``w16.view(np.uint32)``), x
    as its even and odd elements xe, xo (I/2,); I a multiple of 32. One row at a time (:func:`_bf16_dot`): one
    sequential stream through W, which the hardware prefetcher follows better than four rows at once."""
    for i in range(lo, hi):
        _bf16_dot(out, w32, xe, xo, i)


@kernel(parallel=True)
def _matvec_bf16_portable(out, w16, x):
    """out (O,) = w16 (O, I) @ x (I,), bf16 weights (I even), float32 activations; rows over threads."""
    O, n = w16.shape[0], w16.shape[1] // 2
    xe = np.empty(n, np.float32)
    xo = np.empty(n, np.float32)
    _split_even_odd(xe, xo, x)
    for_rows(_matvec_bf16_rows, (out, w16.view(np.uint32), xe, xo), O, O * x.shape[0])


# ---------------------------------------------------------------------------------------------------
# q8_0


@kernel
def _group_amax_range(amax, w, lo, hi):
    """amax[g] = max |w[32 g: 32 g + 32]| for lo <= g < hi, NaN if the group holds a NaN; w flat (32 G,)."""
    for g in range(lo, hi):
        wg = w[g * GROUP:(g + 1) * GROUP]
        m = np.float32(0)
        for j in range(GROUP):
            a = abs(wg[j])
            if a > m or a != a:
                m = a
            if m != m:
                break
        amax[g] = m


@kernel(parallel=True)
def _group_amax(amax, w):
    """amax (G,) = max |w| over each group of 32 of w (32 G,) (NaN for a group with a NaN)."""
    G = amax.shape[0]
    for_chunks(_group_amax_range, (amax, w), G, _CHUNK // GROUP, w.shape[0])


@kernel
def _q8_0_from_f32_range(qs, w, inv, lo, hi):
    """qs[32 g + j] = roundf(w[32 g + j] * inv[g]) (half away from zero) for lo <= g < hi; flat."""
    for g in range(lo, hi):
        wg, qg, s = w[g * GROUP:(g + 1) * GROUP], qs[g * GROUP:(g + 1) * GROUP], inv[g]
        for j in range(GROUP):
            qg[j] = np.int8(roundf(wg[j] * s))


@kernel(parallel=True)
def _q8_0_from_f32(qs, w, inv):
    """qs (32 G,) int8 = roundf(w * inv[g]) over each group g of 32; w (32 G,), inv (G,)."""
    G = inv.shape[0]
    for_chunks(_q8_0_from_f32_range, (qs, w, inv), G, _CHUNK // GROUP, w.shape[0])


@intrinsic
def _f32_from_q8_0_group(typingctx, w, qs, d, g):
    """w[32 g + j] = qs[32 g + j] * d[g] for j < 32; w, qs, d flat. Vector IR: numba's loop over a group of 32
    (a constant trip count, unrolled and left scalar with no SLP vectorizer) ran at a fifth of this speed."""

    def codegen(context, builder, sig, args):
        wp, qp, dp = (context.make_array(t)(context, builder, v).data
                      for t, v in zip(sig.args[:3], args[:3], strict=True))
        g = args[3]
        i64 = ir.IntType(64)
        vf = ir.VectorType(ir.FloatType(), 8)
        vi8, vi32 = ir.VectorType(ir.IntType(8), 8), ir.VectorType(ir.IntType(32), 8)
        sc = builder.load(builder.gep(dp, [g]), align=4)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), sc, ir.Constant(i64, 0)),
                                       ir.Constant(vf, ir.Undefined), ir.Constant(vi32, [0] * 8))
        for k in range(GROUP // 8):
            o = builder.add(builder.mul(g, ir.Constant(i64, GROUP)), ir.Constant(i64, 8 * k))
            q = builder.load(builder.bitcast(builder.gep(qp, [o]), vi8.as_pointer()), align=1)
            v = builder.fmul(builder.sitofp(builder.sext(q, vi32), vf), splat)
            builder.store(v, builder.bitcast(builder.gep(wp, [o]), vf.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(w, qs, d, types.int64), codegen


@kernel
def _f32_from_q8_0_range(w, qs, d, lo, hi):
    """w[32 g + j] = qs[32 g + j] * d[g] for lo <= g < hi; flat."""
    for g in range(lo, hi):
        _f32_from_q8_0_group(w, qs, d, g)


@kernel(parallel=True)
def _dequantize_q8_0(w, qs, d):
    """w (32 G,) float32 = qs (32 G,) int8 * d (G,) per group of 32."""
    G = d.shape[0]
    for_chunks(_f32_from_q8_0_range, (w, qs, d), G, _CHUNK // GROUP, w.shape[0])


@intrinsic
def _q8_0_dot(typingctx, out, qs, d, xq, xs, i):
    """out[i] = sum_g d[i, g] * xs[g] * (qs[i, 32 g:32 g + 32] . xq[32 g:32 g + 32]); qs (O, 32 G) int8, d (O, G),
    xq (32 G,) int16, xs (G,) float32; qs, d may be windows of whole groups (rows read by their stride).

    Written in target-independent vector IR (numba runs no SLP vectorizer, and LLVM's loop vectorizer would
    reduce every group to a scalar): the products of each group are sign-extended to int32 and summed in
    adjacent pairs, the shape LLVM turns into ``vpmaddwd`` on x86 (16 products per instruction; the pairs of
    int8 x int8 fit int16 sums); the group's 8 int32 lanes become float32 and are added times the group's
    scale into 8 float lanes, summed once per row. Two groups per step (one 64-byte line of qs, prefetched
    _PREFETCH bytes ahead) into two accumulators: one would wait on the FMA's latency every group."""

    def codegen(context, builder, sig, args):
        op, xp, sp = (context.make_array(sig.args[j])(context, builder, args[j]).data for j in (0, 3, 4))
        qp, qstride = _row_stride(context, builder, sig.args[1], args[1])
        dp, dstride = _row_stride(context, builder, sig.args[2], args[2])
        i = args[5]
        G = cgutils.unpack_tuple(builder, context.make_array(sig.args[2])(context, builder, args[2]).shape, 2)[1]
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vf, v8i32 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(i32, 8)
        v16i8, v16i16, v16i32 = (ir.VectorType(ir.IntType(b), 16) for b in (8, 16, 32))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fmuladd.v8f32")
        even, odd = ir.Constant(v8i32, list(range(0, 16, 2))), ir.Constant(v8i32, list(range(1, 16, 2)))

        def c(v):
            return ir.Constant(i64, v)

        def load(base, off, vty, align):
            return builder.load(builder.bitcast(builder.gep(base, [off]), vty.as_pointer()), align=align)

        row_q, row_d = builder.mul(i, qstride), builder.mul(i, dstride)

        def group(g, slot):
            """slot += float32(qs_g . xq_g) * d[i, g] * xs[g]"""
            o = builder.mul(g, c(GROUP))
            tot = None
            for h in range(2):
                xv = builder.sext(load(xp, builder.add(o, c(16 * h)), v16i16, 2), v16i32)
                qv = builder.sext(load(qp, builder.add(builder.add(row_q, o), c(16 * h)), v16i8, 1), v16i32)
                p = builder.mul(qv, xv)
                u = ir.Constant(v16i32, ir.Undefined)
                pair = builder.add(builder.shuffle_vector(p, u, even), builder.shuffle_vector(p, u, odd))
                tot = pair if tot is None else builder.add(tot, pair)
            sc = builder.fmul(builder.load(builder.gep(dp, [builder.add(row_d, g)]), align=4),
                              builder.load(builder.gep(sp, [g]), align=4))
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), sc, c(0)),
                                           ir.Constant(vf, ir.Undefined), ir.Constant(v8i32, [0] * 8))
            builder.store(builder.call(fma, [builder.sitofp(tot, vf), splat, builder.load(slot)]), slot)

        acc = []
        for _ in range(2):
            slot = cgutils.alloca_once(builder, vf)
            builder.store(ir.Constant(vf, None), slot)
            acc.append(slot)
        with cgutils.for_range(builder, builder.udiv(G, c(2))) as loop:
            g = builder.mul(loop.index, c(2))
            _prefetch(builder, builder.gep(qp, [builder.add(row_q, builder.mul(g, c(GROUP)))]))
            group(g, acc[0])
            group(builder.add(g, c(1)), acc[1])
        with builder.if_then(builder.icmp_unsigned("!=", builder.urem(G, c(2)), c(0))):
            group(builder.sub(G, c(1)), acc[0])
        total = builder.fadd(builder.load(acc[0]), builder.load(acc[1]))
        builder.store(_hsum(builder, total), builder.gep(op, [i]), align=4)
        return context.get_dummy_value()

    return types.void(out, qs, d, xq, xs, types.int64), codegen


@kernel
def _matvec_q8_0_rows(out, qs, d, xq, xs, lo, hi):
    """out[i] = W[i] . x for lo <= i < hi, W = q8_0 (qs (O, I) int8, d (O, I/32)), x quantized by
    :func:`_quantize_x_q8` into xq (I,) int16, xs (I/32,). One row at a time: a single sequential stream through
    W streams from memory 1.6-1.9x faster than four rows side by side (docs/design.md), at the same speed in cache."""
    for i in range(lo, hi):
        _q8_0_dot(out, qs, d, xq, xs, i)


@kernel(parallel=True)
def _matvec_q8_0_portable(out, qs, d, x):
    """out (O,) = W x with W = q8_0 (qs (O, I) int8, d (O, I/32)), x (I,) float32 quantized per group of 32
    (:func:`_quantize_x_q8`) for an integer dot; rows over threads."""
    O, I = qs.shape[0], qs.shape[1]
    xq = np.empty(I, np.int16)
    xs = np.empty(I // GROUP, np.float32)
    _quantize_x_q8(xq, xs, x)
    for_rows(_matvec_q8_0_rows, (out, qs, d, xq, xs), O, O * I)


# ---------------------------------------------------------------------------------------------------
# linear (prefill): dequantized tiles of W times x, tiles over threads


@kernel
def _dequant_rows_bf16(tile, w16, lo, a, b):
    """tile[a:b] = float32 of w16[lo + a:lo + b]; tile (>= b, I)."""
    bits = tile.view(np.uint32)
    for i in range(a, b):
        _f32_from_bf16_range(bits[i], w16[lo + i], 0, w16.shape[1])


@kernel
def _dequant_rows_q8_0(tile, qs, d, lo, a, b):
    """tile[a:b] = float32 of the q8_0 rows lo + a..lo + b - 1; tile (>= b, I)."""
    for i in range(a, b):
        _f32_from_q8_0_range(tile[i], qs[lo + i], d[lo + i], 0, d.shape[1])


@kernel
def _dequant_rows(tile, wq, d, lo, a, b):
    """tile[a:b] = float32 of the rows lo + a..lo + b - 1 of W: bf16 ``wq`` if d is None, else q8_0 (wq, d)."""
    if d is None:
        _dequant_rows_bf16(tile, wq, lo, a, b)
    else:
        _dequant_rows_q8_0(tile, wq, d, lo, a, b)


@kernel
def _linear_tiles_range(out, x, bias, wq, d, t0, t1):
    """Tiles t0..t1-1 of :func:`_linear_tiles`: rows ``_TILE_ROWS t ..`` of W dequantized into a float32 scratch,
    ``out[:, rows] = x @ tile.T (+ bias[rows])`` by the serial numba product."""
    O, I = wq.shape[0], wq.shape[1]
    tile = np.empty((_TILE_ROWS, I), np.float32)
    for t in range(t0, t1):
        lo = t * _TILE_ROWS
        hi = min(O, lo + _TILE_ROWS)
        _dequant_rows(tile, wq, d, lo, 0, hi - lo)
        c = out[:, lo:hi]
        _gemm_numba_serial(c, x, tile[:hi - lo], False, True, False)
        if bias is not None:
            bs = bias[lo:hi]
            for n in range(out.shape[0]):
                cn = c[n]
                for j in range(hi - lo):
                    cn[j] += bs[j]


@kernel(parallel=True)
def _linear_tiles(out, x, bias, wq, d):
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = bf16 ``wq`` (O, I) uint16 if d is None, else q8_0
    (``wq`` int8, d): tiles of _TILE_ROWS rows of W over threads, each dequantized and multiplied on its thread.

    One parallel region per call. Dequantizing a tile over threads and multiplying it by BLAS (two regions per
    tile) ran at 0.5-0.8x the fp32 BLAS product on a busy machine; this runs at 1.4-3.4x (docs/design.md)."""
    O = wq.shape[0]
    for_rows(_linear_tiles_range, (out, x, bias, wq, d), (O + _TILE_ROWS - 1) // _TILE_ROWS,
             out.shape[0] * O * wq.shape[1])


@kernel(parallel=True)
def _dequant_panel(tile, wq, d, lo, hi):
    """tile[:hi - lo] = float32 of rows lo..hi - 1 of W (as :func:`_dequant_rows` takes it); rows over threads."""
    for_rows(_dequant_rows, (tile, wq, d, lo), hi - lo, (hi - lo) * wq.shape[1])


def _linear_panels(out, x, bias, wq, d, pairs=False):
    """:func:`_linear_tiles` by BLAS, panels of W (at most _PANEL_BYTES) at a time: each dequantized over threads
    to float32 and multiplied by the BLAS product float32 weights take (``matmul._linear_forward``), or with
    ``pairs`` (q8_0 only) each row split into two bf16 numbers a weight side by side, ``[wh | wl]``, against
    ``[bf16(x) | bf16(x)]`` in one bf16 product of depth 2 I (``quant_x86.bf16_product``)."""
    O, I = wq.shape
    rows = min(O, max(_TILE_ROWS, _PANEL_BYTES // (4 * I)))
    panel = getattr(_scratch, "panel", None)
    if panel is None or panel.size < rows * I:
        panel = _scratch.panel = np.empty(rows * I, np.float32)
    if pairs:
        x86, xh = _x86(), np.empty(x.size, np.uint16)
        _quantize_bf16(xh, x.reshape(-1).view(np.uint32))
        xx = np.concatenate([xh.reshape(x.shape)] * 2, axis=1)  # [bf16(x) | bf16(x)] meets [wh | wl]
        w2 = panel[:rows * I].view(np.uint16).reshape(rows, 2 * I)

        def product(c, lo, hi, b):
            x86.split_q8_0_panel(w2, wq, d, lo, hi)
            x86.bf16_product(c, xx, w2[:hi - lo])
            if b is not None:
                c += b
    else:
        tile = panel[:rows * I].reshape(rows, I)

        def product(c, lo, hi, b):
            _dequant_panel(tile, wq, d, lo, hi)
            _linear_forward(c, x, tile[:hi - lo], b)
    if rows == O:  # one panel: the product straight into out
        product(out, 0, O, bias)
        return
    part = np.empty((out.shape[0], rows), np.float32)  # a panel's columns of out, contiguous for BLAS
    for lo in range(0, O, rows):
        hi = min(O, lo + rows)
        c = part if hi - lo == rows else np.empty((out.shape[0], hi - lo), np.float32)
        product(c, lo, hi, None if bias is None else bias[lo:hi])
        out[:, lo:hi] = c


# ---------------------------------------------------------------------------------------------------
# dispatchers (unchecked; ``kernels.trusted`` exports them): the path of ``_path`` for each call


def _x86():
    from qorus_jit.kernels import quant_x86

    return quant_x86


def _matvec_bf16(out, w16, x):
    """out (O,) = w16 (O, I) bf16 @ x (I,) float32, on the path of ``_path("bf16")``."""
    path = _path("bf16")
    if path == "portable":
        _matvec_bf16_portable(out, w16, x)
    else:
        _x86().matvec_bf16(out, w16, x, path=path)


def _matvec_q8_0(out, qs, d, x):
    """out (O,) = W x, W = q8_0 (qs (O, I) int8, d (O, I/32) float32), x (I,) float32, on ``_path("q8_0")``."""
    path = _path("q8_0")
    if path == "portable":
        _matvec_q8_0_portable(out, qs, d, x)
    else:
        _x86().matvec_q8_0(out, qs, d, x, path=path)


# Several tokens (prefill, training's forward) take float32 activations against W dequantized to float32, so the
# same numbers everywhere (and faster than the instruction paths' row dots even where VNNI and AVX512_BF16 run,
# docs/design.md, "Instruction paths of the quantized kernels"): with Intel MKL as the BLAS, 32 tokens or more
# take dequantized panels and MKL's product (0.8-1.1x the float32 product on the Intel Xeon, where the tiles ran
# at 0.35-0.7x); otherwise the tiles and the serial numba product (1.4-3.4x the panels' forerunner on the AMD EPYC).
# Where MKL has its bf16 product and the CPU AVX512_BF16 (MKL runs it on AMX where there is AMX), bf16 weights
# skip the copy (x split into two bf16 numbers, two products), and large q8_0 products take panels of W as two
# bf16 numbers a weight against x rounded to bf16, one product (docs/design.md, "Prefill on the Intel Xeon").
PAIR_WORK = 1 << 25  # multiply-adds (tokens x O x I) from which q8_0 takes the bf16 product: smaller ran slower


def prompt_route(tokens: int, fmt: str = "q8_0", weights: int | None = None) -> str:
    """How the products of ``tokens`` tokens take ``fmt`` ("q8_0", "bf16") weights, ``weights`` of them (O * I;
    None: many): "bf16 products" (MKL's bf16 product), "panels" (MKL's float32 product on dequantized panels) or
    "tiles" (numba)."""
    if tokens < PANEL_TOKENS or BLAS_SOURCE != "Intel MKL":
        return "tiles"
    if (BF16_GEMM and _x86().available()["avx512-bf16"]
            and (fmt == "bf16" or weights is None or tokens * weights >= PAIR_WORK)):
        return "bf16 products"
    return "panels"


def _linear_wq(out, x, bias, wq, d):
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None; W = bf16 ``wq`` if d is None, else q8_0 (wq, d)."""
    if not out.shape[0]:
        return
    route = prompt_route(out.shape[0], "bf16" if d is None else "q8_0", wq.size)
    if route == "bf16 products" and d is None:
        _x86().linear_bf16(out, x, wq, bias)
    elif route != "tiles":
        _linear_panels(out, x, bias, wq, d, pairs=route == "bf16 products")
    else:
        _linear_tiles(out, x, bias, wq, d)


def _linear_bf16(out, x, w16, bias):
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = w16 (O, I) bf16."""
    _linear_wq(out, x, bias, w16, None)


def _linear_q8_0(out, x, qs, d, bias):
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = q8_0 (qs, d)."""
    _linear_wq(out, x, bias, qs, d)


# ---------------------------------------------------------------------------------------------------
# public functions: validate, then call the kernels


def _check_weights(name, wq, dtype):
    """A weight array of the integer ``dtype`` (w16 uint16, qs int8), (O, I) with I a positive multiple of 32
    (q8_0 groups; bf16 shares the rule so both formats fit the same layers); returns (O, I)."""
    dims = check_arrays(dtype=dtype, **{name: (wq, ("out", "in"))})
    if dims["in"] < GROUP or dims["in"] % GROUP:
        raise ValueError(f"{name}: expected in_features (axis 1) a positive multiple of {GROUP}, got {dims['in']}")
    return dims["out"], dims["in"]


def _check_flat(name, a, dtype):
    """Any shape, ``dtype``, C-contiguous."""
    check_arrays(dtype=dtype, **{name: (a, None)})
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides} (use np.ascontiguousarray)")


def quantize_bf16(w: np.ndarray) -> np.ndarray:
    """bf16 of float32 ``w`` (any shape, C-contiguous): a uint16 array of its shape (round to nearest even; NaN
    stays a quiet NaN, +-inf stay, magnitudes past the largest bf16 round to +-inf)."""
    _check_flat("w", w, np.float32)
    w16 = _alloc.weights(w.shape, np.uint16)  # weights to keep: on huge pages (core/alloc.py)
    if w.size:
        _quantize_bf16(w16.reshape(-1), w.reshape(-1).view(np.uint32))
    return w16


def dequantize_bf16(w16: np.ndarray) -> np.ndarray:
    """float32 values of bf16 ``w16`` (uint16, any shape, C-contiguous); exact."""
    _check_flat("w16", w16, np.uint16)
    w = np.empty(w16.shape, np.float32)
    if w.size:
        _dequantize_bf16(w.reshape(-1).view(np.uint32), w16.reshape(-1))
    return w


def quantize_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """q8_0 of float32 ``w`` (O, I), I a positive multiple of 32: ``(qs (O, I) int8, d (O, I/32) float32)``, bit
    for bit ggml's ``quantize_row_q8_0_ref`` (the module docstring). Non-finite weights: ValueError."""
    O, I = _check_weights("w", w, np.float32)
    G = O * (I // GROUP)
    amax = np.empty(G, np.float32)
    if G:
        _group_amax(amax, w.reshape(-1))
    if not np.isfinite(amax).all():
        g = int(np.flatnonzero(~np.isfinite(amax))[0])
        raise ValueError(f"w: expected finite values (q8_0 has no inf or NaN), got {amax[g]} in row "
                         f"{g // (I // GROUP)}")
    # ggml's scale in float32 division (not the kernels' fastmath, which may use a reciprocal), then fp16
    d = amax / np.float32(127)
    with np.errstate(over="ignore"):
        d16 = d.astype(np.float16)
    if np.isinf(d16).any():
        g = int(np.flatnonzero(np.isinf(d16))[0])
        raise ValueError(f"w: expected |values| below 127 * 65520 (q8_0 scales are float16), got {amax[g]} in row "
                         f"{g // (I // GROUP)}")
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = _alloc.weights((O, I), np.int8)  # weights to keep: on huge pages (core/alloc.py)
    if G:
        _q8_0_from_f32(qs.reshape(-1), w.reshape(-1), inv)
    return qs, d16.astype(np.float32).reshape(O, I // GROUP)


def _check_q8_0(qs, d):
    """qs (O, I) int8, I a positive multiple of 32, and d (O, I/32) float32; returns (O, I)."""
    O, I = _check_weights("qs", qs, np.int8)
    check_arrays(dtype=np.float32, d=(d, (O, I // GROUP)))
    return O, I


def dequantize_q8_0(qs: np.ndarray, d: np.ndarray) -> np.ndarray:
    """float32 (O, I) values of q8_0 ``qs`` (O, I) int8, ``d`` (O, I/32) float32: ``qs * d`` per group; exact."""
    O, I = _check_q8_0(qs, d)
    w = np.empty((O, I), np.float32)
    if w.size:
        _dequantize_q8_0(w.reshape(-1), qs.reshape(-1), d.reshape(-1))
    return w


def matvec_bf16(out: np.ndarray, w16: np.ndarray, x: np.ndarray) -> None:
    """out (O,) = W x, W = bf16 ``w16`` (O, I) uint16, x (I,) float32; out float32, written."""
    O, I = _check_weights("w16", w16, np.uint16)
    check_arrays(dtype=np.float32, out=(out, (O,)), x=(x, (I,)), writes=("out",), reads={"w16": w16})
    _matvec_bf16(out, w16, x)


def matvec_q8_0(out: np.ndarray, qs: np.ndarray, d: np.ndarray, x: np.ndarray) -> None:
    """out (O,) = W x, W = q8_0 (qs (O, I) int8, d (O, I/32) float32), x (I,) float32; out float32, written."""
    O, I = _check_q8_0(qs, d)
    check_arrays(dtype=np.float32, out=(out, (O,)), d=(d, (O, I // GROUP)), x=(x, (I,)), writes=("out",),
                 reads={"qs": qs})
    _matvec_q8_0(out, qs, d, x)


def linear_bf16(out: np.ndarray, x: np.ndarray, w16: np.ndarray, bias: np.ndarray | None) -> None:
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = bf16 ``w16`` (O, I); float32 out, x, bias."""
    O, I = _check_weights("w16", w16, np.uint16)
    check_arrays(dtype=np.float32, out=(out, ("N", O)), x=(x, ("N", I)), bias=(bias, (O,)), optional=("bias",),
                 writes=("out",), reads={"w16": w16})
    _linear_bf16(out, x, w16, bias)


def linear_q8_0(out: np.ndarray, x: np.ndarray, qs: np.ndarray, d: np.ndarray, bias: np.ndarray | None) -> None:
    """out (N, O) = x (N, I) @ W.T + bias (O,) or None, W = q8_0 (qs (O, I) int8, d (O, I/32)); float32."""
    O, I = _check_q8_0(qs, d)
    check_arrays(dtype=np.float32, out=(out, ("N", O)), x=(x, ("N", I)), d=(d, (O, I // GROUP)),
                 bias=(bias, (O,)), optional=("bias",), writes=("out",), reads={"qs": qs})
    _linear_q8_0(out, x, qs, d, bias)
