"""Fused scaled dot-product attention: forward, backward, single-token decode and the KV-cache write.

Layouts (see docs/design.md): ``q`` and ``out`` are ``(B, T, H, D)``, ``k`` and ``v`` are
``(B, S, Hkv, D)`` with ``H % Hkv == 0``; query head ``h`` reads kv head ``h // (H // Hkv)``
(grouped-query attention; ``Hkv == H`` is plain multi-head attention). The KV cache is
``(B, Hkv, T_max, D)``: each kv head's positions one after another, so that decoding reads them as one stream.

Per query row ``t`` of head ``h``::

    out[t] = sum_s p[s] v[s],   p = softmax(scale * q[t] . k[s] over the attended keys s)

``causal`` lets query ``t`` attend keys ``s <= t + (S - T)``: the queries are the last ``T`` positions
of the ``S`` keys, so ``T == S`` is ordinary causal self-attention and ``T < S`` is chunked prefill after
``S - T`` cached positions. ``key_mask`` ``(B, S)`` (bool or integer, nonzero = attend) drops padding
keys. A row with no attended key gets ``out = 0``, ``lse = -inf`` and zero gradients.

The kernels never build a ``(T, S)`` score or mask matrix. Every product (scores ``q k^T``, ``p v``, and in
backward ``dout v^T``, ``ds k``, ``p^T dout``, ``ds^T q``) runs through one register tile, :func:`_tile`:
``_R`` rows by ``_W`` columns of the result (8 x 32 with AVX-512, else 4 x 16) stay in registers over the
whole contraction, each step broadcasting ``_R`` values of one operand against ``_W`` consecutive values of
the other, vectorized along the result's columns (keys, or head dimensions), so no product needs a
horizontal sum. The operand read ``_W`` wide is packed first into zero-padded scratch: K^T in tiles of
``_W`` keys and V padded to whole tiles (forward, once per call), the same for a block of ``_KB`` keys
(backward), and q, dout packed per head (backward). When D is whole tiles, V (forward) and K (the dq tiles of
backward) need no padding and the tiles read them in place. ``DW``, ``SW`` and ``TR`` are D and S rounded up to
whole tiles of ``_W`` and T to whole tiles of ``_R``. Forward keeps the scores of ``_R`` query rows over
their keys; backward keeps p and ds of ``_TB`` query rows over a key block and
recomputes the probabilities from the saved per-row log-sum-exp ``lse`` (B, H, T), flash-attention style.

Each kernel's phases are serial kernels over a range of work items (``_forward_items``, ``_backward_items``,
``_decode_items``, ...) run through ``numerics.for_chunks``; the work that decides between the calling thread
and a parallel region is ``B * H * T * S * D`` (``B * H * length * D`` when decoding), and either way the
results are the same.
"""

from __future__ import annotations

import math

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import (
    check_arrays,
    check_bool,
    check_mask,
    check_nonnegative,
    check_positive,
    check_positive_float,
)
from qorus_jit.core.numerics import FASTMATH, copy_row, for_chunks, for_rows, kernel
from qorus_jit.kernels._lowbit import LANES, _hsum, _lanes_below, lane_chunks, load_lanes, max_lanes, splat, store_lanes
from qorus_jit.kernels._math import emit_exp, exp

# The register tile: _R rows (query rows, or keys in the dK, dV products) by _W columns (keys, or head
# dimensions). With AVX-512, 8 x 32 keeps 16 zmm accumulators busy (two FMA units of 4-cycle latency need at
# least 8 independent sums); with AVX2's 16 ymm registers, 4 x 16 (8 accumulators) is the largest that fits
# (docs/design.md, "Attention kernels").
_AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))
_R = 8 if _AVX512 else 4
_W = 32 if _AVX512 else 16
_ROWS = 32  # query rows per forward work item
_KEYS = 64  # smallest key chunk per backward work item
_KB = 64  # keys per backward block (their K, V, dK, dV rows stay in L1/L2 while the query rows pass)
_TB = 64  # query rows per backward block (the contraction length of the dK, dV tiles)


# ---------------------------------------------------------------------------------------------------
# register tile (the one place where the products are computed)


@intrinsic
def _tile(typingctx, C, ci, ldc, A, ai, a_rs, a_cs, B, bi, ldb, L, add):
    """One _R x _W tile of a product over flat element offsets into the data of C, A and B::

        C[ci + i * ldc + j] (+)= sum_{c < L} A[ai + i * a_rs + c * a_cs] * B[bi + c * ldb + j],  i < _R, j < _W

    (``+=`` if ``add``, else ``=``). The _R x _W sums stay in registers (16 zmm or 8 ymm for float32) over
    the whole contraction: each step loads _W consecutive B values, broadcasts _R A values and issues the fused
    multiply-adds, with no horizontal sum. LLVM's loop vectorizer (numba runs no SLP vectorizer) would
    rather vectorize such a loop along the contraction, so the tile is written in vector IR directly.
    Offsets are trusted: the caller pads its scratch so that every access is in bounds.
    """
    for t in (C, A, B):
        if not isinstance(t, types.Array) or not isinstance(t.dtype, types.Float) or t.dtype != C.dtype:
            raise TypingError(f"_tile: C, A and B must be float arrays of one dtype, got {C}, {A}, {B}")
    i64 = types.int64

    def codegen(context, builder, sig, args):
        c, ci, ldc, a, ai, a_rs, a_cs, b, bi, ldb, n, add = args
        cp, ap, bp = (context.make_array(t)(context, builder, v).data
                      for t, v in ((sig.args[0], c), (sig.args[3], a), (sig.args[7], b)))
        dtype = sig.args[0].dtype
        elt = context.get_value_type(dtype)
        vty = ir.VectorType(elt, _W)
        align = dtype.bitwidth // 8
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                             f"llvm.fmuladd.v{_W}f{dtype.bitwidth}")
        undef = ir.Constant(vty, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), _W), [0] * _W)
        zero32 = ir.Constant(ir.IntType(32), 0)

        def vec(base, off):
            return builder.bitcast(builder.gep(base, [off]), vty.as_pointer())

        acc, arow, crow = [], [], []
        for i in range(_R):
            ii = ir.Constant(ldc.type, i)
            crow.append(vec(cp, builder.add(ci, builder.mul(ldc, ii))))
            arow.append(builder.add(ai, builder.mul(a_rs, ii)))
            slot = cgutils.alloca_once(builder, vty)
            builder.store(builder.select(add, builder.load(crow[i], align=align), ir.Constant(vty, None)), slot)
            acc.append(slot)
        with cgutils.for_range(builder, n) as loop:
            y = builder.load(vec(bp, builder.add(bi, builder.mul(loop.index, ldb))), align=align)
            ac = builder.mul(loop.index, a_cs)
            for i in range(_R):
                x = builder.load(builder.gep(ap, [builder.add(arow[i], ac)]), align=align)
                xs = builder.shuffle_vector(builder.insert_element(undef, x, zero32), undef, splat)
                builder.store(builder.call(fma, [xs, y, builder.load(acc[i])]), acc[i])
        for i in range(_R):
            builder.store(builder.load(acc[i]), crow[i], align=align)
        return context.get_dummy_value()

    return types.void(C, i64, i64, A, i64, i64, i64, B, i64, i64, i64, types.boolean), codegen


# ---------------------------------------------------------------------------------------------------
# row helpers (serial; called by the work-item bodies)


@kernel
def _ceil(n, m):
    """n rounded up to a multiple of m."""
    return (n + m - 1) // m * m


# Row helpers of the softmax: float32 rows take 16-lane vector IR (_math.emit_exp: the arithmetic of its exp on
# zmm, where numba's loops ran at 8 lanes and took 45% of the forward at the W-train shape), float64 rows the
# loops (the finite-difference tests).
_V16 = ir.VectorType(ir.FloatType(), LANES)


def _row_io(context, builder, aty, arr):
    """(load, store) of 16 lanes at an element offset of 1-D array ``arr`` (masked past ``n_valid``)."""
    data = context.make_array(aty)(context, builder, arr).data

    def load(off, n_valid):
        return load_lanes(builder, builder.gep(data, [off]), _V16, n_valid)

    def store(v, off, n_valid):
        store_lanes(builder, v, builder.gep(data, [off]), n_valid)
    return load, store


@intrinsic
def _exp_shifted_f32(typingctx, x, n, scale, mx):
    """x[:n] = exp(scale * (x - mx)) of a float32 row, returning their sum (one vector accumulator, summed at
    the end)."""
    def codegen(context, builder, sig, args):
        load, store = _row_io(context, builder, sig.args[0], args[0])
        sc, mv = splat(builder, args[2]), splat(builder, args[3])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V16, None))

        def chunk(off, n_valid):
            e = emit_exp(builder, builder.fmul(sc, builder.fsub(load(off, n_valid), mv)))
            if n_valid is not None:  # the masked lanes read 0: keep them out of the sum
                e = builder.select(_lanes_below(builder, n_valid, LANES), e, ir.Constant(_V16, None))
            store(e, off, n_valid)
            builder.store(builder.fadd(builder.load(acc), e), acc)

        lane_chunks(builder, args[1], LANES, chunk)
        return _hsum(builder, builder.load(acc))

    return types.float32(x, types.int64, types.float32, types.float32), codegen


@intrinsic
def _row_max_f32(typingctx, x, n):
    """max(x[:n]) of a float32 row (-inf if n == 0; NaNs skipped, as ``max`` skips them after the first)."""
    def codegen(context, builder, sig, args):
        load, _ = _row_io(context, builder, sig.args[0], args[0])
        ninf = ir.Constant(_V16, [float("-inf")] * LANES)
        acc = cgutils.alloca_once_value(builder, ninf)

        def chunk(off, n_valid):
            v = load(off, n_valid)
            if n_valid is not None:
                v = builder.select(_lanes_below(builder, n_valid, LANES), v, ninf)
            m = builder.load(acc)
            builder.store(builder.select(builder.fcmp_ordered(">", v, m), v, m), acc)

        lane_chunks(builder, args[1], LANES, chunk)
        return max_lanes(builder, builder.load(acc))

    return types.float32(x, types.int64), codegen


@intrinsic
def _probs_ds_f32(typingctx, p, ds, n, scale, lse, dt):
    """p[:n] = exp(scale * p - lse) and ds[:n] = scale * p * (ds - dt), float32 rows, in one pass."""
    def codegen(context, builder, sig, args):
        load_p, store_p = _row_io(context, builder, sig.args[0], args[0])
        load_d, store_d = _row_io(context, builder, sig.args[1], args[1])
        sc, lv, dv = (splat(builder, a) for a in args[3:6])

        def chunk(off, n_valid):
            e = emit_exp(builder, builder.fsub(builder.fmul(sc, load_p(off, n_valid)), lv))
            store_p(e, off, n_valid)
            store_d(builder.fmul(builder.fmul(sc, e), builder.fsub(load_d(off, n_valid), dv)), off, n_valid)

        lane_chunks(builder, args[2], LANES, chunk)
        return context.get_dummy_value()

    return types.void(p, ds, types.int64, types.float32, types.float32, types.float32), codegen


def _probs_ds_row(p, ds, n, scale, lse, dt):
    """The backward's row of a query over its keys: p[:n] = exp(scale * p[:n] - lse) (the probabilities from the
    scores and the saved log-sum-exp), ds[:n] = scale * p * (ds[:n] - dt) (from dp = dout . v and dt)."""


@overload(_probs_ds_row, jit_options={"fastmath": set(FASTMATH)})
def _probs_ds_row_impl(p, ds, n, scale, lse, dt):
    if p.dtype == types.float32:
        return lambda p, ds, n, scale, lse, dt: _probs_ds_f32(p, ds, n, np.float32(scale), np.float32(lse),
                                                              np.float32(dt))

    def loop(p, ds, n, scale, lse, dt):
        for j in range(n):
            e = exp(scale * p[j] - lse)
            p[j] = e
            ds[j] = scale * e * (ds[j] - dt)
    return loop


def _exp_max_row(x, n, scale, mx):
    """x[:n] = exp(scale * (x[:n] - mx)) (exp(-inf) = 0), returns their sum; x (>= n,), mx = max(x[:n]) finite.

    Subtracting the max before scaling keeps every exponent <= 0, exactly 0 at the max, for any finite scale
    (scale * x - scale * mx would cancel two large products, contracted into an FMA, to their rounding error)."""


@overload(_exp_max_row, jit_options={"fastmath": set(FASTMATH)})
def _exp_max_row_impl(x, n, scale, mx):
    if x.dtype == types.float32:
        return lambda x, n, scale, mx: _exp_shifted_f32(x, n, np.float32(scale), np.float32(mx))

    def loop(x, n, scale, mx):
        s = scale - scale
        for j in range(n):
            e = exp(scale * (x[j] - mx))
            x[j] = e
            s += e
        return s
    return loop


def _row_max(x, n):
    """max(x[:n]) (-inf if n == 0); x (>= n,)."""


@overload(_row_max, jit_options={"fastmath": set(FASTMATH)})
def _row_max_impl(x, n):
    if x.dtype == types.float32:
        return lambda x, n: _row_max_f32(x, n)

    def loop(x, n):  # eight independent running maxima, in x's dtype
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = type(x[0])(-np.inf)
        n8 = n - n % 8
        for j in range(0, n8, 8):
            m0, m1, m2, m3 = max(m0, x[j]), max(m1, x[j + 1]), max(m2, x[j + 2]), max(m3, x[j + 3])
            m4, m5, m6, m7 = max(m4, x[j + 4]), max(m5, x[j + 5]), max(m6, x[j + 6]), max(m7, x[j + 7])
        for j in range(n8, n):
            m0 = max(m0, x[j])
        return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    return loop


@kernel
def _key_limit(t, T, S, causal):
    """Number of keys query row t attends before the padding mask: min(S, t + 1 + S - T) if causal."""
    return min(S, t + 1 + S - T) if causal else S


@kernel
def _mask_row(sc, r, n_r, n, mask, b):
    """sc[r, j] = -inf for the keys j in [n_r, n) beyond the causal limit and where mask[b, j] == 0."""
    sc[r, max(n_r, 0):n] = -np.inf  # a slice assignment: a loop from n_r would vectorize with scatters
    if mask.shape[0] > 0:
        mb = mask[b]
        for j in range(min(n_r, n)):
            if mb[j] == 0:
                sc[r, j] = -np.inf


@kernel
def _pack_t(xt, x, b, hk, s_lo, n):
    """xt (ceil(n / _W), D, _W) = rows s_lo..s_lo+n-1 of x[b, :, hk] (B, S, Hkv, D) transposed in tiles of _W
    rows, zero padded: xt[j // _W, d, j % _W] = x[b, s_lo + j, hk, d]."""
    D = x.shape[3]
    for j0 in range(0, n, _W):
        xj, xs = xt[j0 // _W], x[b, s_lo + j0:s_lo + min(n, j0 + _W), hk]
        for d in range(D):  # stores along the tile's keys, whose rows of x stay in L1 over the d loop
            xd = xj[d]
            for j in range(xs.shape[0]):
                xd[j] = xs[j, d]
    if n % _W != 0:
        xt[n // _W, :, n % _W:] = 0


@kernel
def _pack_rows(xp, x, b, hk, s_lo, n):
    """xp[j, :D] = x[b, s_lo + j, hk] for j < n and xp[j, D:] = 0; xp (>= n, >= D), x (B, S, Hkv, D)."""
    D = x.shape[3]
    for j in range(n):
        xr, xj = x[b, s_lo + j, hk], xp[j]
        for d in range(D):
            xj[d] = xr[d]
        xj[D:] = 0


# ---------------------------------------------------------------------------------------------------
# forward


@kernel
def _pack_kv(kt, vp, k, v, lo, hi):
    """kt[b, hk] = K^T in tiles of _W keys, vp[b, hk] = V padded to DW (unless D is whole tiles, D == DW: the
    tiles then read v itself), for items bh = b * Hkv + hk in lo..hi-1."""
    S, Hkv = k.shape[1], k.shape[2]
    for bh in range(lo, hi):
        b, hk = bh // Hkv, bh % Hkv
        _pack_t(kt[b, hk], k, b, hk, 0, S)
        if k.shape[3] < vp.shape[3]:
            _pack_rows(vp[b, hk], v, b, hk, 0, S)


@kernel
def _forward_items(out, lse, q, kt, vp, v, mask, causal, scale, lo, hi):
    """Work items lo..hi-1 of _attention_forward: item it = (b * H + h) * nch + c, a chunk of _ROWS query rows."""
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    S, Hkv, DW = v.shape[1], v.shape[2], vp.shape[3]
    G = H // Hkv
    nch = (T + _ROWS - 1) // _ROWS
    for it in range(lo, hi):
        b = it // (H * nch)
        h = (it // nch) % H
        c = it % nch
        c = c // 2 if c % 2 == 0 else nch - 1 - c // 2  # alternate short and long causal chunks
        hk = h // G
        t_lo = c * _ROWS
        t_hi = min(T, t_lo + _ROWS)
        n_hi = _key_limit(t_hi - 1, T, S, causal)
        if n_hi <= 0:
            for t in range(t_lo, t_hi):
                out[b, t, h, :] = 0
                lse[b, h, t] = -np.inf
            continue
        ktb = kt[b, hk]
        ld = _ceil(n_hi, _W)
        qs = np.zeros((_ROWS, D), q.dtype)  # the chunk's query rows; rows past t_hi stay zero
        for t in range(t_lo, t_hi):
            copy_row(qs[t - t_lo], q[b, t, h])
        sc = np.empty((_R, ld), q.dtype)
        o = np.empty((_R, DW), q.dtype)
        m = np.empty(_R, q.dtype)
        lsum = np.empty(_R, q.dtype)
        for t0 in range(t_lo, t_hi, _R):
            t3 = min(t0 + _R - 1, t_hi - 1)
            n = _key_limit(t3, T, S, causal)
            if n <= 0:
                for t in range(t0, t3 + 1):
                    out[b, t, h, :] = 0
                    lse[b, h, t] = -np.inf
                continue
            for j0 in range(0, n, _W):  # scores of the _R rows: sc = q K^T
                _tile(sc, j0, ld, qs, (t0 - t_lo) * D, D, 1, ktb, j0 * D, _W, D, False)
            nw = _ceil(n, _W)  # the rows run over whole tiles (no scalar remainder loops); -inf past n
            for r in range(_R):
                _mask_row(sc, r, _key_limit(min(t0 + r, t3), T, S, causal), nw, mask, b)
                mx = _row_max(sc[r], nw)
                if mx == -np.inf:
                    sc[r, :n] = 0
                    m[r] = -np.inf
                    lsum[r] = 0
                else:
                    m[r] = scale * mx
                    lsum[r] = _exp_max_row(sc[r], nw, scale, mx)
            for d0 in range(0, D, _W):  # o = p V, V's rows read in place when D is whole tiles
                if D < DW:
                    _tile(o, d0, DW, sc, 0, ld, 1, vp[b, hk], d0, DW, n, False)
                else:
                    _tile(o, d0, DW, sc, 0, ld, 1, v, (b * S * Hkv + hk) * D + d0, Hkv * D, n, False)
            for r in range(t3 - t0 + 1):
                t = t0 + r
                if lsum[r] > 0:
                    inv = 1 / lsum[r]
                    for d in range(D):
                        out[b, t, h, d] = o[r, d] * inv
                    lse[b, h, t] = m[r] + math.log(lsum[r])
                else:
                    out[b, t, h, :] = 0
                    lse[b, h, t] = -np.inf


@kernel(parallel=True)
def _attention_forward(out, lse, q, k, v, mask, causal, scale, kt, vp):
    """out (B, T, H, D), lse (B, H, T) = attention of q (B, T, H, D) over k, v (B, S, Hkv, D); mask (B, S).

    Scratch (written here): kt (B, Hkv, SW / _W, D, _W) and vp (B, Hkv, S, DW), per (batch, kv head)
    K^T in tiles of _W keys and V padded to DW, read by every query row of the group; vp (B, Hkv, 0, DW) when
    D is whole tiles (D == DW): the tiles then read v in place.
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    items = B * H * ((T + _ROWS - 1) // _ROWS)
    work = B * H * T * S * D if items > 1 else 0  # a single work item: both phases on the calling thread
    for_chunks(_pack_kv, (kt, vp, k, v), B * Hkv, 1, work)
    for_chunks(_forward_items, (out, lse, q, kt, vp, v, mask, causal, scale), items, 1, work)


# ---------------------------------------------------------------------------------------------------
# backward


@kernel
def _key_bounds(nj, T, S, causal):
    """(nj + 1,) int64: S keys cut into nj contiguous chunks of about equal work (query rows attending)."""
    bounds = np.full(nj + 1, S, np.int64)
    bounds[0] = 0
    total = 0
    for s in range(S):
        total += max(0, T - max(0, s - (S - T))) if causal else T
    j, acc = 1, 0
    for s in range(S):
        acc += max(0, T - max(0, s - (S - T))) if causal else T
        if j < nj and acc * nj >= j * total and s + 1 - bounds[j - 1] >= _KEYS:
            bounds[j] = s + 1
            j += 1
    return bounds


@kernel
def _backward_keys(g_dq, dk, dv, qp, dop, di, q, dout, k, v, lse, mask, causal, scale, b, hk, s_lo, s_hi,
                   accumulate):
    """g_dq (B, T, H, D) += gradients via keys s_lo..s_hi-1 of kv head hk, batch b; dk, dv (B, S, Hkv, D)
    of those keys += them if ``accumulate``, else = them.

    qp, dop (B, H, TR, DW): q and dout packed per head, zero padded, or (B, H, 0, DW): the tiles read q and
    dout (B, T, H, D) in place (D and T whole tiles); di (B, H, TR): D_t = dout[t] . out[t].
    """
    H, T = lse.shape[1], lse.shape[2]
    D = k.shape[3]
    S, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    DW = qp.shape[3]
    nk = s_hi - s_lo
    ld = _ceil(nk, _W)
    # the block's keys: K^T and V^T (score and dp tiles run along keys), K padded to DW (dq tiles)
    kt = np.empty((ld // _W, D, _W), qp.dtype)
    vt = np.empty((ld // _W, D, _W), qp.dtype)
    kp = np.empty((nk if D < DW else 0, DW), qp.dtype)  # with D whole tiles the dq tiles read k in place
    _pack_t(kt, k, b, hk, s_lo, nk)
    _pack_t(vt, v, b, hk, s_lo, nk)
    if D < DW:
        _pack_rows(kp, k, b, hk, s_lo, nk)
    dka = np.zeros((ld, DW), qp.dtype)  # dk, dv of the block's keys, rows padded to whole tiles
    dva = np.zeros((ld, DW), qp.dtype)
    p = np.empty((_TB, ld), qp.dtype)  # probabilities and ds of a row block over the block's keys
    ds = np.empty((_TB, ld), qp.dtype)
    dqs = np.empty((_R, DW), qp.dtype)
    t_min = max(0, s_lo - (S - T)) if causal else 0
    t_min -= t_min % _R  # whole _R-row tiles stay inside the TR packed rows
    packed = qp.shape[2] > 0
    qa, da = (qp, dop) if packed else (q, dout)  # the rows of q and dout the tiles read, rs apart
    rs = DW if packed else H * D
    for h in range(hk * G, hk * G + G):
        base = (b * H + h) * qp.shape[2] * DW if packed else b * T * H * D + h * D  # row 0 of head h
        dih = di[b, h]
        for tb in range(t_min, T, _TB):
            nt = min(T, tb + _TB) - tb
            for r0 in range(0, nt, _R):
                n = min(nk, _key_limit(min(tb + r0 + _R - 1, T - 1), T, S, causal) - s_lo)
                if n <= 0:
                    p[r0:r0 + _R] = 0
                    ds[r0:r0 + _R] = 0
                    continue
                a0 = base + (tb + r0) * rs
                for j0 in range(0, n, _W):  # scores q K^T and dp = dout V^T of the _R rows
                    _tile(p, r0 * ld + j0, ld, qa, a0, rs, 1, kt, j0 * D, _W, D, False)
                    _tile(ds, r0 * ld + j0, ld, da, a0, rs, 1, vt, j0 * D, _W, D, False)
                for r in range(r0, r0 + _R):
                    t = tb + r
                    pr, dr = p[r], ds[r]
                    n_r = 0 if r >= nt or lse[b, h, t] == -np.inf else min(n, _key_limit(t, T, S, causal) - s_lo)
                    if n_r > 0:
                        # p = exp(scale * q.k - lse); ds = p * (dp - D_t), times scale for dq and dk; over whole
                        # tiles (no scalar remainder loops), the columns from n_r are zeroed below
                        _probs_ds_row(pr, dr, _ceil(n, _W), scale, lse[b, h, t], dih[t])
                        if mask.shape[0] > 0:
                            mb = mask[b]
                            for j in range(n_r):
                                if mb[s_lo + j] == 0:
                                    pr[j] = 0
                                    dr[j] = 0
                    pr[max(n_r, 0):] = 0
                    dr[max(n_r, 0):] = 0
                for d0 in range(0, D, _W):  # dq = ds K
                    if D < DW:
                        _tile(dqs, d0, DW, ds, r0 * ld, ld, 1, kp, d0, DW, n, False)
                    else:
                        _tile(dqs, d0, DW, ds, r0 * ld, ld, 1, k, ((b * S + s_lo) * Hkv + hk) * D + d0, Hkv * D, n,
                              False)
                for r in range(min(_R, nt - r0)):
                    gr, qr = g_dq[b, tb + r0 + r, h], dqs[r]
                    for d in range(D):
                        gr[d] += qr[d]
            # dv += p^T dout, dk += ds^T q over the row block, _R keys by _W columns per tile
            for j0 in range(0, nk, _R):
                r_lo = max(0, s_lo + j0 - (S - T) - tb) if causal else 0  # rows before r_lo miss these keys
                if r_lo >= nt:
                    continue
                b0 = base + (tb + r_lo) * rs
                for d0 in range(0, D, _W):
                    c0, a0 = j0 * DW + d0, r_lo * ld + j0
                    _tile(dva, c0, DW, p, a0, 1, ld, da, b0 + d0, rs, nt - r_lo, True)
                    _tile(dka, c0, DW, ds, a0, 1, ld, qa, b0 + d0, rs, nt - r_lo, True)
    for j in range(nk):
        dkr, dvr = dk[b, s_lo + j, hk], dv[b, s_lo + j, hk]
        if accumulate:
            for d in range(D):
                dkr[d] += dka[j, d]
                dvr[d] += dva[j, d]
        else:
            for d in range(D):
                dkr[d] = dka[j, d]
                dvr[d] = dva[j, d]


@kernel
def _pack_heads(qp, dop, di, q, dout, out, scale, lo, hi):
    """qp, dop (unless they hold no rows: the tiles read q and dout in place) and di of _attention_backward for
    the (batch, head) items bh = b * H + h in lo..hi-1."""
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    for bh in range(lo, hi):
        b, h = bh // H, bh % H
        for t in range(T):
            gr, orow = dout[b, t, h], out[b, t, h]
            a = scale - scale
            for d in range(D):
                a += gr[d] * orow[d]
            di[b, h, t] = a
        di[b, h, T:] = 0
        if qp.shape[2] > 0:
            qb, db = qp[b, h], dop[b, h]
            for t in range(T):
                qr, gr, qo, go = q[b, t, h], dout[b, t, h], qb[t], db[t]
                for d in range(D):
                    qo[d] = qr[d]
                    go[d] = gr[d]
                qo[D:] = 0
                go[D:] = 0
            qb[T:] = 0
            db[T:] = 0


@kernel
def _backward_items(dq, dqp, dk, dv, qp, dop, di, q, dout, k, v, lse, mask, causal, scale, bounds, accumulate, lo,
                    hi):
    """Work items lo..hi-1 of _attention_backward: item it = (b * Hkv + hk) * nj + jc, key chunk jc.

    The item owns the dk, dv rows of its keys, and its query heads' rows of dq (nj == 1) or of dqp[jc]."""
    T, H = dq.shape[1], dq.shape[2]
    Hkv = k.shape[2]
    G = H // Hkv
    nj = bounds.shape[0] - 1
    for it in range(lo, hi):
        b = it // (Hkv * nj)
        hk = (it // nj) % Hkv
        jc = it % nj
        g_dq = dqp[jc] if nj > 1 else dq
        if nj > 1 or not accumulate:
            for t in range(T):
                g_dq[b, t, hk * G:hk * G + G] = 0
        for s_lo in range(bounds[jc], bounds[jc + 1], _KB):
            _backward_keys(g_dq, dk, dv, qp, dop, di, q, dout, k, v, lse, mask, causal, scale, b, hk,
                           s_lo, min(s_lo + _KB, bounds[jc + 1]), accumulate)


@kernel
def _add_dq_parts(dq, dqp, accumulate, lo, hi):
    """dq[b, t] (+)= sum over the key chunks jc of dqp[jc, b, t], for the rows bt = b * T + t in lo..hi-1."""
    T, H, D = dq.shape[1], dq.shape[2], dq.shape[3]
    for bt in range(lo, hi):
        b, t = bt // T, bt % T
        if not accumulate:
            dq[b, t] = 0
        for jc in range(dqp.shape[0]):
            for h in range(H):
                for d in range(D):
                    dq[b, t, h, d] += dqp[jc, b, t, h, d]


@kernel(parallel=True)
def _attention_backward(dq, dk, dv, dout, q, k, v, out, lse, mask, causal, scale, accumulate, qp, dop, di, dqp):
    """dq (B, T, H, D), dk, dv (B, S, Hkv, D) (+)= gradients; dout, out (B, T, H, D), lse (B, H, T).

    Scratch (written here): qp, dop (B, H, TR, DW) q and dout rows packed per head (the tiles' operands; no
    rows when D and T are whole tiles: the tiles read q and dout in place), di (B, H, TR) D_t = dout[t] .
    out[t], and dqp (nj, B, T, H, D) or (0, ...): the work items (b, kv head, one of nj key chunks) own their
    dk, dv rows, and with nj > 1 chunks each adds its dq part to dqp[jc].
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    nj = max(1, dqp.shape[0])
    bounds = _key_bounds(nj, T, S, causal)
    items = B * Hkv * nj
    work = B * H * T * S * D if items > 1 else 0  # a single work item: every phase on the calling thread
    for_chunks(_pack_heads, (qp, dop, di, q, dout, out, scale), B * H, 1, work)
    for_chunks(_backward_items, (dq, dqp, dk, dv, qp, dop, di, q, dout, k, v, lse, mask, causal, scale, bounds,
                                 accumulate), items, 1, work)
    if nj > 1:
        for_chunks(_add_dq_parts, (dq, dqp, accumulate), B * T, 1, work)


# ---------------------------------------------------------------------------------------------------
# decode and KV cache


@kernel
def _decode_items(out, q, k_cache, v_cache, length, mask, scale, lo, hi):
    """_attention_decode for the (batch, kv head) items it = b * Hkv + hk in lo..hi-1."""
    H, D = q.shape[1], q.shape[2]
    Hkv = k_cache.shape[1]
    G = H // Hkv
    zero = scale - scale
    for it in range(lo, hi):
        b, hk = it // Hkv, it % Hkv
        h0 = hk * G
        sc = np.empty((G, length), q.dtype)
        o = np.zeros((G, D), q.dtype)
        live = np.ones(G, np.bool_)
        # scores of the G query heads sharing kv head hk: each cached key row is read once
        for j in range(length):
            kr = k_cache[b, hk, j]
            for g in range(G):
                qg = q[b, h0 + g]
                a = zero
                for d in range(D):
                    a += qg[d] * kr[d]
                sc[g, j] = a
        for g in range(G):
            _mask_row(sc, g, length, length, mask, b)
            mx = _row_max(sc[g], length)
            if mx == -np.inf:
                out[b, h0 + g, :] = 0
                sc[g, :] = 0
                live[g] = False
                continue
            inv = 1 / _exp_max_row(sc[g], length, scale, mx)
            for j in range(length):
                sc[g, j] *= inv
        for j in range(length):
            vr = v_cache[b, hk, j]
            for g in range(G):
                pg = sc[g, j]
                for d in range(D):
                    o[g, d] += pg * vr[d]
        for g in range(G):
            if live[g]:
                for d in range(D):
                    out[b, h0 + g, d] = o[g, d]


@kernel(parallel=True)
def _attention_decode(out, q, k_cache, v_cache, length, mask, scale):
    """out (B, H, D) = attention of q (B, H, D) over positions < length of k_cache, v_cache (B, Hkv, T_max, D)."""
    B, H, D = q.shape
    for_chunks(_decode_items, (out, q, k_cache, v_cache, length, mask, scale), B * k_cache.shape[1], 1,
               B * H * length * D)


@kernel
def _kv_cache_write_rows(k_cache, v_cache, k, v, pos, lo, hi):
    """_kv_cache_write for the (batch, token) rows bt = b * T_new + t in lo..hi-1."""
    T_new = k.shape[1]
    for bt in range(lo, hi):
        b, t = bt // T_new, bt % T_new
        for hk in range(k.shape[2]):
            copy_row(k_cache[b, hk, pos + t], k[b, t, hk])
            copy_row(v_cache[b, hk, pos + t], v[b, t, hk])


@kernel(parallel=True)
def _kv_cache_write(k_cache, v_cache, k, v, pos):
    """k_cache[:, :, pos:pos + T_new] = k, same for v; caches (B, Hkv, T_max, D), k, v (B, T_new, Hkv, D)."""
    for_rows(_kv_cache_write_rows, (k_cache, v_cache, k, v, pos), k.shape[0] * k.shape[1], k.size)


# ---------------------------------------------------------------------------------------------------
# public wrappers


def backward_chunks(B: int, Hkv: int, S: int) -> int:
    """Key chunks per (batch, kv head) for :func:`_attention_backward`: at least one work item per thread."""
    check_nonnegative(B=B, Hkv=Hkv, S=S)
    B, Hkv, S = int(B), int(Hkv), int(S)
    items = max(1, B * Hkv)  # an empty batch has no work item
    return min(max(1, (numba.get_num_threads() + items - 1) // items), max(1, S // _KEYS))


def _check_heads(dims, name):
    H, Hkv = dims["H"], dims["Hkv"]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: expected a kv head count Hkv >= 1 that divides the query head count "
                         f"H = {H}, got Hkv = {Hkv}")


def _scale(scale, D, dtype):
    if D == 0:
        raise ValueError("q: expected a head size D >= 1, got D = 0")
    if scale is None:
        return dtype.type(1.0 / math.sqrt(D))
    check_positive_float(scale=scale)
    return dtype.type(scale)


def _mask(key_mask, dims):
    if key_mask is None:
        return np.zeros((0, 0), np.uint8)  # (0, 0): no padding mask
    return check_mask("key_mask", key_mask, ("B", "S"), dims)


def _check_attention(causal, key_mask, scale, writes, **arrays):
    dims = check_arrays(optional=("work",), **arrays, writes=writes, reads={"key_mask": key_mask})
    _check_heads(dims, "k")
    check_bool(causal=causal)
    return dims, _mask(key_mask, dims), _scale(scale, dims["D"], arrays["q"][0].dtype)


def _check_lse(lse):
    """The backward recomputes p = exp(scale * q.k - lse) from the saved lse, whose rounding error (eps / 2 of
    |lse|) enters the exponent: beyond |lse| = 2^-8 / (eps / 2) (65536 in float32, reached only by a huge scale
    or huge q, k) p would be off by more than 2^-8 relative, and by any factor for a huge scale. Rows with no
    key (lse = -inf) are skipped."""
    limit = 2.0**-8 / (np.finfo(lse.dtype).eps / 2)
    big = float(np.max(np.abs(lse), where=lse > -np.inf, initial=0.0))
    if big > limit:
        raise ValueError(f"scale: expected scale * (q . k) small enough that the saved {lse.dtype} lse keeps the "
                         f"probabilities' precision (|lse| <= {limit:g}), got lse up to {big:g} in magnitude")


def _up(n, m):
    """n rounded up to a multiple of m (plain Python: the wrappers run per call)."""
    return -(-n // m) * m


def _work_shapes(B, T, S, H, Hkv, D, nj):
    """Shapes of the scratch arrays of :func:`_attention_forward` (kt, vp) and :func:`_attention_backward`
    (qp, dop, di, dqp)."""
    SW, TR, DW = _up(S, _W), _up(T, _R), _up(D, _W)
    forward = ((B, Hkv, SW // _W, D, _W), (B, Hkv, S if D < DW else 0, DW))  # no V copy when D is whole tiles
    rows = TR if D < DW or T < TR else 0  # q, dout rows packed, or none: the tiles read them in place
    backward = ((B, H, rows, DW), (B, H, rows, DW), (B, H, TR), (nj if nj > 1 else 0, B, T, H, D))
    return forward, backward


def _size(shape):
    return _up(math.prod(shape), _W)  # whole tiles of _W elements per array: each view stays 64-byte aligned


def _shape4(name, shape, spec) -> tuple[int, ...]:
    """A shape argument: a tuple or list of 4 non-negative ints (NumPy ints too), as Python ints."""
    ok = isinstance(shape, (tuple, list)) and len(shape) == 4 and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 0 for n in shape)
    if not ok:
        raise ValueError(f"{name}: expected a shape {spec} of 4 non-negative ints, got {shape!r}")
    return tuple(int(n) for n in shape)


def attention_work_size(q_shape, k_shape) -> int:
    """Elements of the ``work`` scratch array that :func:`attention_forward` and :func:`attention_backward`
    need for q (B, T, H, D) and k (B, S, Hkv, D) at the current thread count (one array serves both)."""
    B, T, H, D = _shape4("q_shape", q_shape, "(B, T, H, D)")
    S, Hkv = _shape4("k_shape", k_shape, "(B, S, Hkv, D)")[1:3]
    return max(sum(_size(s) for s in shapes)
               for shapes in _work_shapes(B, T, S, H, Hkv, D, backward_chunks(B, Hkv, S)))


def _carve(work, shapes, dtype):
    """Views of ``shapes`` cut one after another from the flat scratch ``work`` (allocated when None; checked
    as an array by the caller)."""
    need = sum(_size(s) for s in shapes)
    if work is None:
        work = _alloc.empty(need, dtype)
    elif work.size < need:
        raise ValueError(f"work: expected at least {need} elements (attention_work_size), got {work.size}")
    views, at = [], 0
    for s in shapes:
        views.append(work[at:at + math.prod(s)].reshape(s))
        at += _size(s)
    return views


def attention_forward(out, lse, q, k, v, causal: bool, key_mask=None, scale: float | None = None, work=None):
    """``out = softmax(scale * q k^T) v`` per (batch, head), saving the row log-sum-exp ``lse``.

    out, q (B, T, H, D); k, v (B, S, Hkv, D) with H % Hkv == 0; lse (B, H, T). ``causal``: query t
    attends keys s <= t + (S - T). ``key_mask`` (B, S), nonzero = attend. ``scale`` defaults to 1/sqrt(D).
    ``work``: optional 1-D scratch of :func:`attention_work_size` elements in q's dtype, reused across calls
    (allocated per call when None).
    """
    dims, mask, scale = _check_attention(
        causal, key_mask, scale, ("out", "lse", "work"),
        q=(q, ("B", "T", "H", "D")), k=(k, ("B", "S", "Hkv", "D")), v=(v, ("B", "S", "Hkv", "D")),
        out=(out, ("B", "T", "H", "D")), lse=(lse, ("B", "H", "T")), work=(work, ("W",)),
    )
    shapes, _ = _work_shapes(*(dims[n] for n in ("B", "T", "S", "H", "Hkv", "D")), 1)
    _attention_forward(out, lse, q, k, v, mask, bool(causal), scale, *_carve(work, shapes, q.dtype))


def attention_backward(dq, dk, dv, dout, q, k, v, out, lse, causal: bool, key_mask=None,
                       scale: float | None = None, accumulate: bool = True, work=None):
    """Add (``accumulate``, the default) or write the gradients of :func:`attention_forward` into dq, dk, dv.

    dq, dout, q, out (B, T, H, D); dk, dv, k, v (B, S, Hkv, D); lse (B, H, T) as saved by the forward
    with the same ``causal``, ``key_mask`` and ``scale``. ``work`` as in :func:`attention_forward`.
    """
    bthd, bshd = ("B", "T", "H", "D"), ("B", "S", "Hkv", "D")
    dims, mask, scale = _check_attention(
        causal, key_mask, scale, ("dq", "dk", "dv", "work"),
        q=(q, bthd), k=(k, bshd), v=(v, bshd), out=(out, bthd), lse=(lse, ("B", "H", "T")),
        dout=(dout, bthd), dq=(dq, bthd), dk=(dk, bshd), dv=(dv, bshd), work=(work, ("W",)),
    )
    check_bool(accumulate=accumulate)
    _check_lse(lse)
    B, S, Hkv = dims["B"], dims["S"], dims["Hkv"]
    _, shapes = _work_shapes(B, dims["T"], S, dims["H"], Hkv, dims["D"], backward_chunks(B, Hkv, S))
    _attention_backward(dq, dk, dv, dout, q, k, v, out, lse, mask, bool(causal), scale, bool(accumulate),
                        *_carve(work, shapes, q.dtype))


def attention_decode(out, q, k_cache, v_cache, length: int, key_mask=None, scale: float | None = None):
    """One new query per batch row attends the first ``length`` cache positions (all of them).

    out, q (B, H, D); k_cache, v_cache (B, Hkv, T_max, D) with H % Hkv == 0; 1 <= length <= T_max
    (the new token's k, v already written at position length - 1). ``key_mask`` (B, T_max) or
    (B, length), nonzero = attend; only its first ``length`` columns are read.
    """
    dims = check_arrays(q=(q, ("B", "H", "D")), k_cache=(k_cache, ("B", "Hkv", "T_max", "D")),
                        v_cache=(v_cache, ("B", "Hkv", "T_max", "D")), out=(out, ("B", "H", "D")),
                        writes=("out",), reads={"key_mask": key_mask})
    _check_heads(dims, "k_cache")
    check_positive(length=length)
    if length > dims["T_max"]:
        raise ValueError(f"length: expected length <= T_max = {dims['T_max']}, got {length}")
    if key_mask is None:
        mask = np.zeros((0, 0), np.uint8)
    else:
        width = "T_max" if np.ndim(key_mask) == 2 and np.shape(key_mask)[1] == dims["T_max"] else length
        mask = check_mask("key_mask", key_mask, ("B", width), dims)
    _attention_decode(out, q, k_cache, v_cache, int(length), mask, _scale(scale, dims["D"], q.dtype))


def kv_cache_write(k_cache, v_cache, k, v, pos: int):
    """Copy k, v (B, T_new, Hkv, D) into positions pos .. pos + T_new - 1 of k_cache, v_cache (B, Hkv, T_max, D).

    ``pos + T_new <= T_max`` is checked.
    """
    cache, new = ("B", "Hkv", "T_max", "D"), ("B", "T_new", "Hkv", "D")
    dims = check_arrays(k_cache=(k_cache, cache), v_cache=(v_cache, cache), k=(k, new), v=(v, new),
                        writes=("k_cache", "v_cache"))
    check_nonnegative(pos=pos)
    if pos + dims["T_new"] > dims["T_max"]:
        raise ValueError(f"pos: expected pos + T_new <= T_max = {dims['T_max']} (T_new = {dims['T_new']}), "
                         f"got pos = {pos}")
    _kv_cache_write(k_cache, v_cache, k, v, int(pos))


#: The compiled kernels of training and decoding by name: what qorus_jit.precompile looks up in numba's cache.
DISPATCHERS = {"forward": _attention_forward, "backward": _attention_backward, "decode": _attention_decode}
