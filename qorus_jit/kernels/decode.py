"""Single-token decoding kernels: a matrix-vector product and a whole Llama in one call.

Decoding one token reads every weight once and does little arithmetic per byte, so its speed is set by
memory bandwidth and by per-call overhead. ``_llama_decode`` takes one token through a whole Llama (per block:
RMSNorm, q/k/v projections, rotate-half RoPE, KV-cache append, grouped-query attention over the cache, output
projection, residual, RMSNorm, SwiGLU MLP, residual; then the final norm and the head, each thread taking the
argmax of the rows it writes) with float32, bf16 or q8_0 weights, in one call instead of about fifteen kernel
calls a block from Python. With at least as many kv heads as threads the whole token is one parallel region
whose phases' items the threads claim (``_token_part``, kernels._sync): per block of kv heads their q, k, v
rows, RoPE, cache append and attention; the output projection by rows; per slice of the hidden units gate, up
and (by column slices, or by rows where float32 W is read a row at a time, :func:`one_row`) the down projection.
With fewer, ``_llama_block_decode`` runs a block in a few regions. :class:`~qorus_jit.models.Llama` makes that
one call per token (through ``kernels.trusted``), having checked its arguments once per cache.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from qorus_jit.core.numerics import FASTMATH, copy_row, kernel
from qorus_jit.kernels import quant_x86
from qorus_jit.kernels._lowbit import (
    _EXACT,
    _PREFETCH,
    LANES,
    _hsum,
    _hsum_rows,
    _prefetch_at,
    _row_stride,
    lane_chunks,
    load_lanes,
    splat,
    store_lanes,
)
from qorus_jit.kernels._math import exp
from qorus_jit.kernels._sync import claim, done, phase_counters, wait_done  # noqa: F401 - phase_counters: callers
from qorus_jit.kernels.activations import _gelu_forward_range, _gelu_tanh_forward_range, _swiglu_forward_range
from qorus_jit.kernels.quant import GROUP, _matvec_bf16_rows, _matvec_q8_0_rows, _quantize_x_q8, _split_even_odd
from qorus_jit.kernels.quant_x86 import _split_bf16, one_row, one_row_float32  # noqa: F401 - one_row_float32: callers

_ROWS = 16  # rows of a matrix-vector product per parallel work item
# the head's parts (one a participant, each in one call) come in whole 64s of rows; in calls of 64 rows a stories110M
# float32 token took 1.01 of the time on 1 and 2 threads of the Intel Xeon with AMX (docs/design.md)
_HEAD_ROWS = 64
# cache rows the attention's key prefetch runs ahead of its scores where the cache comes from memory: a stories110M
# float32 token 0.984-0.994 of the time without it on 1 and 2 threads of the Intel Xeon with AMX, an int8 token
# 1.01-1.04 (docs/design.md, "The cache from memory")
_KV_AHEAD = 16
# the decoder's ``form`` (int64 flags): LayerNorm rather than RMSNorm, the MLP's activation (ACT_*), rotary positions,
# biases on every linear layer and norm, a table of learned positions
FORM_LAYER_NORM, FORM_ACT, FORM_ROPE, FORM_BIAS, FORM_POSITIONS = range(5)
ACT_SWIGLU, ACT_GELU_TANH, ACT_GELU = range(3)


# ---------------------------------------------------------------------------------------------------
# The blocks' arrays by address
#
# Passing every block's arrays as tuples cost numba's dispatcher about 0.1 us per array on every call: a
# stories15M int8 token passed 147, and its call cost 32 us more than in a compiled loop (about 7% of the token;
# 11 us now). The decoder takes the first block's arrays (their shapes and dtypes: every block's are alike) and
# a table of every block's addresses instead, which this module views; the caller (models.decoder) keeps the
# arrays alive.


def block_table(blocks: list[tuple[np.ndarray, ...]]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``(first, addresses)`` for the decoder: ``first`` the first block's arrays, ``addresses (n_blocks, n)``
    int64 the data address of every block's arrays. Every block's j-th array must be C-contiguous with the
    first's shape and dtype (a ValueError names the one that is not); the caller keeps them alive while the
    table is in use."""
    first = blocks[0]
    for i, block in enumerate(blocks):
        if len(block) != len(first):
            raise ValueError(f"blocks[{i}]: expected {len(first)} arrays, got {len(block)}")
        for j, (a, f) in enumerate(zip(block, first, strict=True)):
            if not (isinstance(a, np.ndarray) and a.shape == f.shape and a.dtype == f.dtype
                    and a.flags.c_contiguous and a.size):
                raise ValueError(f"blocks[{i}][{j}]: expected a non-empty C-contiguous {f.dtype} array of shape "
                                 f"{f.shape}, got {getattr(a, 'dtype', type(a).__name__)} "
                                 f"{getattr(a, 'shape', '')}")
    return first, np.array([[a.ctypes.data for a in block] for block in blocks], np.int64).reshape(len(blocks), -1)


@intrinsic
def _pointer(typingctx, address, like):
    """``address`` (an int64) as a pointer to ``like``'s dtype."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))
    return sig, codegen


@kernel
def _at(address, like):
    """The C-contiguous array of ``like``'s shape and dtype at ``address`` (from :func:`block_table`)."""
    return carray(_pointer(address, like), like.shape)


@kernel
def _prefetch_rows(w, r0, r1, c0, c1):
    """Prefetch the lines of w[r, c0:c1] for r0 <= r < min(r1, rows of w)."""
    step = 64 // w.itemsize
    for r in range(r0, min(r1, w.shape[0])):
        for c in range(c0, c1, step):
            _prefetch_at(w, r, c)


# W read from memory (``one_row``) goes a row at a time on AMD CPUs and two rows sharing each load of x elsewhere,
# half the rows apart, neither prefetched: on an Intel Xeon with AMX two adjacent rows took 0.93-0.95 of one row's
# time for a stories110M token, rows half apart 0.97 of adjacent ones', and those two in 512-bit lanes
# (:func:`_make_row_dots`) 0.98 of numba's 256-bit loop (docs/design.md, "A row at a time from memory on other CPUs
# too"). Read while typed.
_PAIRS = not one_row()
_F16 = ir.VectorType(ir.FloatType(), LANES)


def _lane_dots(builder, xp, rows, n):
    """LLVM IR: for each row pointer of ``rows``, the 16 lanes whose sum is row[:n] . xp[:n] (float32 pointers, n an
    i64): the rows share each load of x and add into one accumulator each by FMA, 16 lanes at a time, the last
    chunk masked."""
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F16, [_F16] * 3), "llvm.fma.v16f32")
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_F16, None)) for _ in rows]

    def chunk(off, n_valid):
        xv = load_lanes(builder, builder.gep(xp, [off]), _F16, n_valid)
        for row, acc in zip(rows, accs, strict=True):
            wv = load_lanes(builder, builder.gep(row, [off]), _F16, n_valid)
            builder.store(builder.call(fma, [wv, xv, builder.load(acc)]), acc)

    lane_chunks(builder, n, LANES, chunk)
    return [builder.load(a) for a in accs]


def _make_row_dots(R):
    """An intrinsic ``dots(out, w, x, p, h, c0, c1)``: out[p + r h] = w[p + r h, c0:c1] . x[:c1 - c0] for r < R (w
    2-D by its rows' stride, out and x C-contiguous), 16 lanes at a time (a zmm; two ymm where the CPU has no
    AVX-512) with the last chunk masked, one accumulator a row (:func:`_lane_dots`). The R rows share each load of
    x; a row's sum is the same whatever R. Half the instructions a byte of numba's 256-bit loop: W read from memory
    went 10% faster alone (docs/design.md)."""

    @intrinsic
    def dots(typingctx, out, w, x, p, h, c0, c1):
        def codegen(context, builder, sig, args):
            wp, stride = _row_stride(context, builder, sig.args[1], args[1])
            xp = context.make_array(sig.args[2])(context, builder, args[2]).data
            op = context.make_array(sig.args[0])(context, builder, args[0]).data
            p, h, c0, c1 = args[3:]
            at = [builder.add(p, builder.mul(h, ir.Constant(h.type, r))) for r in range(R)]
            rows = [builder.gep(wp, [builder.add(builder.mul(i, stride), c0)]) for i in at]
            for i, v in zip(at, _lane_dots(builder, xp, rows, builder.sub(c1, c0)), strict=True):
                builder.store(_hsum(builder, v), builder.gep(op, [i]))
            return context.get_dummy_value()

        i64 = types.int64
        return types.void(out, w, x, i64, i64, i64, i64), codegen

    return dots


_row_dots2, _row_dots1 = _make_row_dots(2), _make_row_dots(1)


@kernel
def _matvec_cols(out, w, x, c0, c1, one_row):
    """out[i] = w[i, c0:c1] . x for every row i of w (N, K); x (c1 - c0,). ``one_row`` (:func:`one_row`): W as
    it streams from memory, one row after another with no software prefetch (two rows half the rows apart sharing
    each load of x where ``_PAIRS``, :func:`_make_row_dots`). Else four rows share each load of x, and the rows
    about _PREFETCH bytes ahead (whole fours, at least four) are prefetched first: +8-13% at the stories110M shape
    from memory on the Intel Xeon (Emerald Rapids; docs/design.md, "Decoding one token")."""
    if one_row:
        if _PAIRS:  # rows p and h + p: two streams half the rows apart
            h = w.shape[0] // 2
            for p in range(h):
                _row_dots2(out, w, x, p, h, c0, c1)
            if w.shape[0] % 2:
                _row_dots1(out, w, x, w.shape[0] - 1, 0, c0, c1)
            return
        for i in range(w.shape[0]):
            r = w[i, c0:c1]
            s = x.dtype.type(0)
            for k in range(c1 - c0):
                s += r[k] * x[k]
            out[i] = s
        return
    N = w.shape[0]
    zero = x.dtype.type(0)
    n = c1 - c0
    ahead = max(4, (_PREFETCH // (n * w.itemsize) + 3) // 4 * 4)
    i = 0
    while i + 4 <= N:
        _prefetch_rows(w, i + ahead, i + ahead + 4, c0, c1)
        r0, r1, r2, r3 = w[i, c0:c1], w[i + 1, c0:c1], w[i + 2, c0:c1], w[i + 3, c0:c1]
        s0 = s1 = s2 = s3 = zero
        for k in range(n):
            xk = x[k]
            s0 += r0[k] * xk
            s1 += r1[k] * xk
            s2 += r2[k] * xk
            s3 += r3[k] * xk
        out[i], out[i + 1], out[i + 2], out[i + 3] = s0, s1, s2, s3
        i += 4
    while i < N:
        r = w[i, c0:c1]
        s = zero
        for k in range(n):
            s += r[k] * x[k]
        out[i] = s
        i += 1


@kernel
def _matvec_rows(out, w, x, lo, hi, one_row):
    """out[i] = w[i] . x for lo <= i < hi; w (N, K), x (K,); ``one_row`` as in :func:`_matvec_cols`."""
    _matvec_cols(out[lo:hi], w[lo:hi], x, 0, w.shape[1], one_row)


@kernel
def _matvec_rows_streamed(out, w, x, lo, hi, one_row):
    """out[i] = w[i] . x for lo <= i < hi, a row at a time (LLVM's own interleaved sums): for a matrix read
    from memory rather than cache, such as the head's. On the AMD EPYC (Zen 1) it streamed a 37 MB head at 10.9 /
    14.2 GB/s on 1 / 2 threads against 8.4 / 10.1 for four rows sharing each load of x, which wins in cache
    (docs/design.md, "Decoding one token"). Rows about _PREFETCH bytes ahead are prefetched first; ``one_row``
    (:func:`one_row`): read as :func:`_matvec_cols` reads W from memory instead (two rows at a time where
    ``_PAIRS``: a stories110M token 0.976-0.98 of the time on the Intel Xeon with AMX)."""
    n = w.shape[1]
    if one_row:
        _matvec_cols(out[lo:hi], w[lo:hi], x, 0, n, True)
        return
    ahead = max(1, _PREFETCH // (n * w.itemsize))  # rows, prefetched first as in _matvec_cols
    for i in range(lo, hi):
        _prefetch_rows(w, i + ahead, i + ahead + 1, 0, n)
        r = w[i]
        s = x.dtype.type(0)
        for k in range(n):
            s += r[k] * x[k]
        out[i] = s


@kernel
def _add_parts(x, parts, lo, hi):
    """x (C,) += parts[p] for lo <= p < hi; parts (P, C)."""
    for p in range(lo, hi):
        pr = parts[p]
        for i in range(x.shape[0]):
            x[i] += pr[i]


@kernel
def _scan_best(v, lo, hi, bi, bv):
    """``(bi, bv)`` carried over v[lo:hi] as NumPy's argmax scans in order: the index and value of the first
    NaN, else of the first maximum (``bi < 0``: none seen yet)."""
    for j in range(lo, hi):
        vj = v[j]
        if bi < 0 or vj > bv or (vj != vj and bv == bv):
            bi, bv = j, vj
    return bi, bv


@kernel
def _join_best(logits, best, n):
    """best[0] = NumPy's argmax of ``logits`` from the parts' results best[1 .. n] (each the argmax of its
    contiguous slice, in order; -1 for an empty slice)."""
    bi, bv = -1, logits.dtype.type(0)
    for p in range(1, n + 1):
        i = best[p]
        if i >= 0:
            bi, bv = _scan_best(logits, i, i + 1, bi, bv)
    best[0] = bi


@kernel(parallel=True)
def _matvec(out, w, x, one_row):
    """out (N,) = w (N, K) @ x (K,), rows split over threads in blocks of _ROWS; ``one_row`` as in
    :func:`_matvec_cols` (:func:`one_row` gives this CPU's)."""
    N = w.shape[0]
    for c in prange((N + _ROWS - 1) // _ROWS):
        _matvec_rows(out, w, x, c * _ROWS, min(N, (c + 1) * _ROWS), one_row)


@kernel
def _rmsnorm_vec(out, x, weight, eps):
    """out (C,) = x / sqrt(mean(x^2) + eps) * weight; x, weight (C,)."""
    C = x.shape[0]
    ss = x.dtype.type(0)
    for j in range(C):
        ss += x[j] * x[j]
    r = x.dtype.type(1.0 / math.sqrt(ss / C + eps))
    for j in range(C):
        out[j] = x[j] * r * weight[j]


@kernel
def _layernorm_vec(out, x, weight, bias, eps):
    """out (C,) = (x - mean) / sqrt(var + eps) * weight + bias, as the LayerNorm layer computes it."""
    C = x.shape[0]
    s = x.dtype.type(0)
    for j in range(C):
        s += x[j]
    m = x.dtype.type(s / C)
    v = x.dtype.type(0)
    for j in range(C):
        d = x[j] - m
        v += d * d
    r = x.dtype.type(1.0 / math.sqrt(v / C + eps))
    for j in range(C):
        out[j] = (x[j] - m) * r * weight[j] + bias[j]


@kernel
def _norm_vec(out, x, weight, bias, eps, form):
    """The block's norm of x into out: LayerNorm with its bias where ``form`` says so, else RMSNorm."""
    if form[FORM_LAYER_NORM]:
        _layernorm_vec(out, x, weight, bias, eps)
    else:
        _rmsnorm_vec(out, x, weight, eps)


@kernel
def _add_span(x, y, lo, hi):
    """x[lo:hi] += y[lo:hi] (a bias on a span of a layer's output)."""
    xs, ys = x[lo:hi], y[lo:hi]  # views: indices from 0 vectorize
    for i in range(hi - lo):
        xs[i] += ys[i]


@kernel
def _rope_half_head(x, cos, sin, p, o, D):
    """Rotate-half RoPE in place at position p for the head x[o:o + D]; cos, sin (T_max, D/2)."""
    half = D // 2
    x0s, x1s, cp, sp = x[o:o + half], x[o + half:o + D], cos[p], sin[p]  # views: indices from 0 vectorize
    for i in range(half):
        c = cp[i]
        s = sp[i]
        x0 = x0s[i]
        x1 = x1s[i]
        x0s[i] = x0 * c - x1 * s
        x1s[i] = x0 * s + x1 * c


@kernel
def _rope_cache_append(q, k, v, k_cache, v_cache, cos, sin, pos, hk, G):
    """RoPE on kv head hk's key and its G query heads at position pos; its key and value into cache row pos."""
    D = k_cache.shape[2]
    o = hk * D
    _rope_half_head(k, cos, sin, pos, o, D)
    for hh in range(hk * G, hk * G + G):
        _rope_half_head(q, cos, sin, pos, hh * D, D)
    _cache_append(k, v, k_cache, v_cache, pos, hk)


@kernel
def _cache_append(k, v, k_cache, v_cache, pos, hk):
    """Kv head hk's key and value into cache row pos."""
    D = k_cache.shape[2]
    o = hk * D
    copy_row(k_cache[hk, pos], k[o:o + D])
    copy_row(v_cache[hk, pos], v[o:o + D])


def _cache_row(context, builder, aty, arr, j, hk):
    """(pointer to cache[hk, j, 0], D) of a C-contiguous (Hkv, T, D) cache: a kv head's rows D elements apart."""
    a = context.make_array(aty)(context, builder, arr)
    _, T, D = cgutils.unpack_tuple(builder, a.shape, 3)
    return builder.gep(a.data, [builder.mul(builder.add(builder.mul(hk, T), j), D)]), D


def _make_scores(R):
    """An intrinsic ``scores(sc, q, k_cache, hh, hk, j, scale)``: sc[j + r] = (q[hh D:(hh + 1) D] . k_cache[hk,
    j + r]) * scale for r < R. The R rows share each load of q, each adds into one vector by FMA (D in chunks of
    16 lanes, the last masked), and the R sums share one transposing lane sum and one store."""

    @intrinsic
    def scores(typingctx, sc, q, k_cache, hh, hk, j, scale):
        def codegen(context, builder, sig, args):
            kp, D = _cache_row(context, builder, sig.args[2], args[2], args[5], args[4])
            qp = builder.gep(context.make_array(sig.args[1])(context, builder, args[1]).data, [builder.mul(args[3], D)])
            sp = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[5]])
            rows = [builder.gep(kp, [builder.mul(D, ir.Constant(D.type, r))]) for r in range(R)]
            vals = _lane_dots(builder, qp, rows, D)
            if R == 1:
                builder.store(builder.fmul(_hsum(builder, vals[0]), args[6], flags=_EXACT), sp)
            else:
                v = builder.fmul(_hsum_rows(builder, vals), splat(builder, args[6], R), flags=_EXACT)
                builder.store(v, builder.bitcast(sp, v.type.as_pointer()), align=4)
            return context.get_dummy_value()

        return types.void(sc, q, k_cache, types.int64, types.int64, types.int64, k_cache.dtype), codegen

    return scores


_scores8, _scores1 = _make_scores(8), _make_scores(1)


@intrinsic
def _mix_values(typingctx, ah, s, v_cache, hk, L, inv):
    """ah (D,) = inv * sum over j < L of s[j] v_cache[hk, j]: the rows in order, each read once, four at a time
    into ah (D in chunks of 16 lanes, the last masked), then ah scaled."""
    def codegen(context, builder, sig, args):
        ap = context.make_array(sig.args[0])(context, builder, args[0]).data
        sp = context.make_array(sig.args[1])(context, builder, args[1]).data
        vp, D = _cache_row(context, builder, sig.args[2], args[2], ir.Constant(ir.IntType(64), 0), args[3])
        L, i64 = args[4], D.type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F16, [_F16] * 3), "llvm.fma.v16f32")

        def c(v):
            return ir.Constant(i64, v)

        def zero(off, n_valid):
            store_lanes(builder, ir.Constant(_F16, None), builder.gep(ap, [off]), n_valid)

        lane_chunks(builder, D, LANES, zero)

        def rows(j0, n_rows):
            ps = [splat(builder, builder.load(builder.gep(sp, [builder.add(j0, c(r))]))) for r in range(n_rows)]
            base = builder.gep(vp, [builder.mul(j0, D)])

            def chunk(off, n_valid):
                acc = load_lanes(builder, builder.gep(ap, [off]), _F16, n_valid)
                for r in range(n_rows):
                    vv = load_lanes(builder, builder.gep(base, [builder.add(builder.mul(c(r), D), off)]), _F16,
                                    n_valid)
                    acc = builder.call(fma, [ps[r], vv, acc])
                store_lanes(builder, acc, builder.gep(ap, [off]), n_valid)

            lane_chunks(builder, D, LANES, chunk)

        quads = builder.udiv(L, c(4))
        with cgutils.for_range(builder, quads) as loop:
            rows(builder.mul(loop.index, c(4)), 4)
        with cgutils.for_range_slice(builder, builder.mul(quads, c(4)), L, c(1)) as (jr, _):
            rows(jr, 1)

        def scale(off, n_valid):
            p = builder.gep(ap, [off])
            store_lanes(builder, builder.fmul(load_lanes(builder, p, _F16, n_valid), splat(builder, args[5]),
                                              flags=_EXACT), p, n_valid)

        lane_chunks(builder, D, LANES, scale)
        return context.get_dummy_value()

    return types.void(ah, s, v_cache, types.int64, types.int64, v_cache.dtype), codegen


@kernel
def _head_attention(att, scores, q, k_cache, v_cache, hh, hk, L, scale, prefetch):
    """att[hh*D:(hh+1)*D] = softmax(q_hh k^T * scale) v over cache rows 0..L-1 of kv head hk; q, att (H*D,),
    k_cache, v_cache (Hkv, T_max, D) C-contiguous float32; scores (H, T_max) scratch. The scores eight cache rows
    at a time (:func:`_make_scores`), the weighted sum of the values by :func:`_mix_values`: 3.6 ns a position
    at D = 48 in L1 against 10.9 for the loops numba vectorized (Intel Xeon, docs/design.md). With ``prefetch``
    (:func:`_cache_cold`: the weights streamed through the caches since the last token) the keys are prefetched
    _KV_AHEAD rows ahead of the scores and the values as their keys are scored."""
    D = k_cache.shape[2]
    ah, sc = att[hh * D:hh * D + D], scores[hh]
    kh, vh = k_cache[hk], v_cache[hk]
    if prefetch:
        _prefetch_rows(kh, 0, min(L, _KV_AHEAD), 0, D)
    j = 0
    while j + 8 <= L:
        if prefetch:
            _prefetch_rows(kh, j + _KV_AHEAD, min(L, j + _KV_AHEAD + 8), 0, D)
            _prefetch_rows(vh, j, j + 8, 0, D)
        _scores8(sc, q, k_cache, hh, hk, j, scale)
        j += 8
    if prefetch:
        _prefetch_rows(vh, j, L, 0, D)
    while j < L:
        _scores1(sc, q, k_cache, hh, hk, j, scale)
        j += 1
    s = sc[:L]
    m = q.dtype.type(-np.inf)  # float32: a float64 max would make exp a scalar libm call per score
    for j in range(L):
        m = max(m, s[j])
    total = q.dtype.type(0)
    for j in range(L):
        e = exp(s[j] - m)
        s[j] = e
        total += e
    _mix_values(ah, s, v_cache, hk, L, 1 / total)


@kernel
def _greedy_next(logits, best, toks, stops, t):
    """After token t of a greedy run: toks[t] = its argmax (``best[0]``), and (that argmax, t + 1, whether the run
    goes on): it stops at ``toks``' end, after an id of ``stops`` (int64) and after an argmax whose logit is not
    finite (NaN or inf: the caller reports it)."""
    nxt = best[0]
    toks[t] = nxt
    more = t + 1 < toks.shape[0] and np.isfinite(logits[nxt])
    for s in stops:
        if s == nxt:
            more = False
    return nxt, t + 1, more


# ---------------------------------------------------------------------------------------------------
# A whole Llama token, float32, bf16 or q8_0 weights (kernels.quant's formats)
#
# One kernel written once for the three formats: the helpers below are numba overloads that pick, at typing
# time from the weight's dtype, the format's code (float32 W; q8_0: ``qs`` int8 with its scales; bf16: ``w16``
# viewed as uint32 pairs; ``ws`` unused but for q8_0), and from the scratch's dtype the dot: float32 W takes a
# float32 copy of x in xa and, in a bool xb (1,), how W is read (:func:`one_row`: given at run time, so that the
# tests run both ways on every CPU); q8_0 activations in int16 scratch and bf16 ones in float32 scratch take the
# portable dots; int8 scratch (q8_0) or uint16 scratch (bf16 bits) the dot of the fastest x86 path of numba's
# target CPU (kernels.quant_x86.cpu_path, picked while typing: numba keys cached code by the target's features).
# The output projection goes by rows (the heads' columns are not whole groups of q8_0's 32); the down projection
# by column slices of whole groups, each slice's after its gate and up rows, except where float32 W is read a
# row at a time (AMD CPUs), where it goes by rows too: a slice of columns read from memory went at a third of
# whole rows' rate on the AMD EPYC (Zen 4; docs/design.md, "One row at a time on AMD CPUs").


def _prep(xa, xb, x):
    """x (I,) made ready for ``_rows``: float32 copies it (xa float32 (>= I,); xb bool (1,), :func:`one_row`);
    q8_0 quantizes it per group (xa int16 or int8 (>= I,), xb (>= I/32,)); bf16 splits its even and odd
    elements (xa, xb float32 (>= I/2,)) or, in uint16 scratch, x into two bf16 numbers xa + xb (>= I,) for
    ``vdpbf16ps``."""


def _rows(out, w, ws, xa, xb, lo, hi):
    """out[i] = W[i] . x for lo <= i < hi, x as ``_prep`` left it in xa, xb (which may be longer: the dots read
    as many elements as W has columns); W = float32 (w (O, I)), q8_0 (w int8 (O, I), ws (O, I/32)) or bf16 pairs
    (w uint32 (O, I/2))."""


def _embed_row(x, w, ws, tok):
    """x (C,) = row ``tok`` of an embedding table held as W above (or float32, ws unused)."""


def _prep_span(xa, xb, x, lo, hi):
    """``_prep`` of x[lo:hi] alone, into the places a ``_prep`` of the whole x puts it (lo, hi multiples of 32):
    threads prepare their own slices of one vector."""


def _cols(out, w, ws, xa, xb, lo, hi):
    """out[i] = W[i, lo:hi] . x[lo:hi] for every row i of W (lo, hi multiples of 32), x as ``_prep`` or
    ``_prep_span`` left it: a thread's slice of the columns, by the dot ``_rows`` takes, on windows of W."""


def _head_rows(out, w, ws, xa, xb, lo, hi):
    """``_rows`` for the head, which is read from memory: float32 by :func:`_matvec_rows_streamed`."""


def _cache_cold(xa, xb):
    """Whether the attention finds the KV cache in memory rather than the caches, so that prefetching it pays: float32
    W read as it streams from memory (:func:`one_row_float32`, the model's bytes against the L3). Not for the
    quantized weights, whose smaller tokens left the cache warmer: an int8 stories110M token took 1.01-1.04 of the
    time with the prefetch."""


def _down_by_rows(xa, xb):
    """Whether the down projection goes by rows rather than by column slices: float32 W read a row at a time, and
    the x86 q8_0 rows where :func:`one_row` (a stories110M int8 token 0.78 of its time on 2 threads of the AMD
    EPYC Zen 4; docs/design.md, "One row at a time on AMD CPUs")."""


@overload(_head_rows, jit_options={"fastmath": set(FASTMATH)})
def _head_rows_impl(out, w, ws, xa, xb, lo, hi):
    if w.dtype == types.float32:
        return lambda out, w, ws, xa, xb, lo, hi: _matvec_rows_streamed(out, w, xa, lo, hi, xb[0])
    return lambda out, w, ws, xa, xb, lo, hi: _rows(out, w, ws, xa, xb, lo, hi)


@overload(_cache_cold, jit_options={"fastmath": set(FASTMATH)})
def _cache_cold_impl(xa, xb):
    if xb.dtype == types.boolean:
        return lambda xa, xb: xb[0]
    return lambda xa, xb: False


@overload(_down_by_rows, jit_options={"fastmath": set(FASTMATH)})
def _down_by_rows_impl(xa, xb):
    if xb.dtype == types.boolean:
        return lambda xa, xb: xb[0]
    rows = xa.dtype == types.int8 and one_row()  # the x86 q8_0 dot (int16 activations: the portable one)
    return lambda xa, xb: rows


@overload(_prep, jit_options={"fastmath": set(FASTMATH)})
def _prep_impl(xa, xb, x):
    def prep(xa, xb, x):
        _prep_span(xa, xb, x, 0, x.shape[0])
    return prep


@overload(_prep_span, jit_options={"fastmath": set(FASTMATH)})
def _prep_span_impl(xa, xb, x, lo, hi):
    if xb.dtype == types.boolean:  # float32: a copy
        def f32(xa, xb, x, lo, hi):
            copy_row(xa[lo:hi], x[lo:hi])
        return f32
    if xa.dtype in (types.int16, types.int8):
        def q8_0(xa, xb, x, lo, hi):
            _quantize_x_q8(xa[lo:hi], xb[lo // GROUP:hi // GROUP], x[lo:hi])
        return q8_0
    if xa.dtype == types.uint16:
        def bf16_x86(xa, xb, x, lo, hi):
            n = hi - lo
            _split_bf16(x[lo:hi].reshape(1, n), xa[lo:hi].reshape(1, n), xb[lo:hi].reshape(1, n))
        return bf16_x86

    def bf16(xa, xb, x, lo, hi):
        _split_even_odd(xa[lo // 2:hi // 2], xb[lo // 2:hi // 2], x[lo:hi])
    return bf16


@overload(_rows, jit_options={"fastmath": set(FASTMATH)})
def _rows_impl(out, w, ws, xa, xb, lo, hi):
    if w.dtype == types.float32:
        def f32(out, w, ws, xa, xb, lo, hi):
            _matvec_rows(out, w, xa, lo, hi, xb[0])
        return f32
    if w.dtype == types.int8 and xa.dtype == types.int8:  # the x86 signed dot of the target's fastest path
        path = quant_x86.cpu_path("q8_0")
        if path is None:
            raise TypingError("_rows: int8 activations need an x86 q8_0 path this CPU lacks (give int16 scratch)")
        rows, one = quant_x86.TOKEN_ROWS[path], one_row()

        def q8_0_x86(out, w, ws, xa, xb, lo, hi):
            rows(out, w, ws, xa, xb, one, lo, hi)
        return q8_0_x86
    if w.dtype == types.uint32 and xa.dtype == types.uint16:  # bf16 bits: vdpbf16ps where the target has it
        path = quant_x86.cpu_path("bf16")
        if path is None:
            raise TypingError("_rows: bf16 activations need AVX512_BF16, which this CPU lacks (give float32 scratch)")
        rows16 = quant_x86.TOKEN_ROWS_BF16[path]

        def bf16_x86(out, w, ws, xa, xb, lo, hi):
            rows16(out, w.view(np.uint16), xa, xb, lo, hi)
        return bf16_x86
    if w.dtype == types.int8:
        def q8_0(out, w, ws, xa, xb, lo, hi):
            _matvec_q8_0_rows(out, w, ws, xa, xb, lo, hi)
        return q8_0

    def bf16(out, w, ws, xa, xb, lo, hi):
        _matvec_bf16_rows(out, w, xa, xb, lo, hi)
    return bf16


@overload(_cols, jit_options={"fastmath": set(FASTMATH)})
def _cols_impl(out, w, ws, xa, xb, lo, hi):
    if w.dtype == types.float32:
        def f32(out, w, ws, xa, xb, lo, hi):
            _matvec_cols(out, w, xa[lo:hi], lo, hi, xb[0])
        return f32
    if w.dtype == types.int8:
        def q8_0(out, w, ws, xa, xb, lo, hi):
            g0, g1 = lo // GROUP, hi // GROUP
            _rows(out, w[:, lo:hi], ws[:, g0:g1], xa[lo:hi], xb[g0:g1], 0, w.shape[0])
        return q8_0
    if xa.dtype == types.uint16:  # bf16 bits: the window of the uint16 view (a window has no view of its own)
        path = quant_x86.cpu_path("bf16")
        if path is None:
            raise TypingError("_cols: bf16 activations need AVX512_BF16, which this CPU lacks (give float32 scratch)")
        rows16 = quant_x86.TOKEN_ROWS_BF16[path]

        def bf16_x86(out, w, ws, xa, xb, lo, hi):
            rows16(out, w.view(np.uint16)[:, lo:hi], xa[lo:hi], xb[lo:hi], 0, w.shape[0])
        return bf16_x86

    def bf16(out, w, ws, xa, xb, lo, hi):
        _rows(out, w[:, lo // 2:hi // 2], ws, xa[lo // 2:hi // 2], xb[lo // 2:hi // 2], 0, w.shape[0])
    return bf16


@overload(_embed_row, jit_options={"fastmath": set(FASTMATH)})
def _embed_row_impl(x, w, ws, tok):
    if w.dtype == types.int8:
        def q8_0(x, w, ws, tok):
            r, s = w[tok], ws[tok]
            for j in range(x.shape[0]):
                x[j] = r[j] * s[j // GROUP]
        return q8_0
    if w.dtype == types.uint32:
        def bf16(x, w, ws, tok):
            r, bits = w[tok], x.view(np.uint32)
            for j in range(r.shape[0]):
                bits[2 * j] = r[j] << 16
                bits[2 * j + 1] = r[j] & 0xFFFF0000
        return bf16

    def f32(x, w, ws, tok):
        r = w[tok]
        for j in range(x.shape[0]):
            x[j] = r[j]
    return f32


@kernel(parallel=True)
def _add_product(x, h, w, ws, xa, xb):
    """x (C,) += W a, with a as ``_prep`` left it in xa, xb and W as ``_rows`` takes it (w, ws); h (C,) scratch;
    rows over threads."""
    C = x.shape[0]
    for c in prange((C + _ROWS - 1) // _ROWS):
        lo, hi = c * _ROWS, min(C, (c + 1) * _ROWS)
        _rows(h, w, ws, xa, xb, lo, hi)
        xs, hs = x[lo:hi], h[lo:hi]  # views: indices from 0 vectorize
        for i in range(hi - lo):
            xs[i] += hs[i]


@kernel
def _kv_heads(h0, h1, q, k, v, k_cache, v_cache, wq, sq, wk, sk, wv, sv, xa, xb, att, scores, cos, sin, pos, scale,
              bq, bk, bv, form):
    """kv heads h0..h1-1: their rows of k, v and of their query heads' q (W a, with a as ``_prep`` left it in xa,
    xb; one call a matrix) and their biases where ``form`` has them, RoPE where it has it, cache append, and their
    query heads' attention into ``att``."""
    Hkv, D = k_cache.shape[0], k_cache.shape[2]
    G = q.shape[0] // D // Hkv
    _rows(k, wk, sk, xa, xb, h0 * D, h1 * D)
    _rows(v, wv, sv, xa, xb, h0 * D, h1 * D)
    _rows(q, wq, sq, xa, xb, h0 * G * D, h1 * G * D)
    if form[FORM_BIAS]:
        _add_span(k, bk, h0 * D, h1 * D)
        _add_span(v, bv, h0 * D, h1 * D)
        _add_span(q, bq, h0 * G * D, h1 * G * D)
    for hk in range(h0, h1):
        if form[FORM_ROPE]:
            _rope_cache_append(q, k, v, k_cache, v_cache, cos, sin, pos, hk, G)
        else:
            _cache_append(k, v, k_cache, v_cache, pos, hk)
        for hh in range(hk * G, hk * G + G):
            _head_attention(att, scores, q, k_cache, v_cache, hh, hk, pos + 1, scale, _cache_cold(xa, xb))


@kernel
def _kv_blocks(Hkv, n):
    """How many blocks of consecutive kv heads the attention phase of ``n`` participants claims: two a participant
    where that divides the heads evenly, else one, else a head each. A block's q, k and v rows are one stream a
    matrix: a stories110M float32 token took 0.985 of the time of a head at a time on 1 and 2 threads of the Intel
    Xeon with AMX (docs/design.md, "A row at a time from memory on other CPUs too")."""
    for m in (2 * n, n):
        if Hkv % m == 0:
            return m
    return Hkv


@kernel
def _mlp_slice(c, n, pc, g, u, wg, sg, wu, su, wd, sd, xa, xb, ya, yb, by_cols, bg, bu, form):
    """Slice c of n of the hidden units, whole groups of 32 (q8_0's scales): its gate and up rows and SwiGLU
    into g (where ``form``'s activation is GELU: its up rows and GELU, no gate), with their biases where ``form``
    has them; if ``by_cols``, the slice prepared into ya, yb and its columns of w_down into ``pc`` (C,) (zeros for
    an empty slice)."""
    F = wu.shape[0]
    step = (F // n + GROUP - 1) // GROUP * GROUP
    lo, hi = min(F, c * step), min(F, (c + 1) * step)
    if c == n - 1:
        hi = F
    if hi > lo:
        act = form[FORM_ACT]
        if act == ACT_SWIGLU:
            _rows(g, wg, sg, xa, xb, lo, hi)
        _rows(u, wu, su, xa, xb, lo, hi)
        if form[FORM_BIAS]:
            if act == ACT_SWIGLU:
                _add_span(g, bg, lo, hi)
            _add_span(u, bu, lo, hi)
        if act == ACT_SWIGLU:
            _swiglu_forward_range(g, g, u, lo, hi)  # the layers' 16-lane SwiGLU: 1/12 of the time of a scalar loop
        elif act == ACT_GELU_TANH:
            _gelu_tanh_forward_range(g, u, lo, hi)
        else:
            _gelu_forward_range(g, u, lo, hi)
        if by_cols:
            _prep_span(ya, yb, g, lo, hi)
            _cols(pc, wd, sd, ya, yb, lo, hi)
    elif by_cols:
        for i in range(pc.shape[0]):
            pc[i] = 0


@kernel(parallel=True)
def _llama_block_decode(x, attn_norm, wq, sq, wk, sk, wv, sv, wo, so, mlp_norm, wg, sg, wu, su, wd, sd, k_cache,
                        v_cache, pos, cos, sin, eps, scale, h, q, k, v, att, scores, g, u, xa, xb, ya, yb, parts,
                        n_parts, form):
    """One token through a pre-norm Llama block, ``x (C,)`` updated in place (both residuals), for fewer kv heads
    than threads (with more, :func:`_token_part` runs the whole token in one region).

    Weights in ``nn.Linear`` layout, each as ``_rows`` takes it with its scales beside it: wq (H*D, C), wk, wv
    (Hkv*D, C), wo (C, H*D), wg, wu (F, C), wd (C, F); norms (C,). k_cache, v_cache (Hkv, T_max, D): the token's
    key and value are written at row ``pos`` and attention reads rows 0..pos. cos, sin (T_max, D/2). Scratch: h
    (C,), q, att (H*D,), k, v (Hkv*D,), scores (H, T_max), g, u (F,), xa, xb, ya, yb as ``_prep`` takes them,
    parts (>= n_parts, C). ``form``: a Llama's (RMSNorm, RoPE, SwiGLU, no biases; see :func:`_llama_decode`).

    Parallel regions: the q, k, v projections by rows, attention by query head, the output projection by rows,
    and per slice of the hidden units (``n_parts``, give it the thread count; at most ``parts``' rows)
    :func:`_mlp_slice`, whose partial sums are added on the calling thread (or, with the down projection by rows,
    a region of its own)."""
    Hkv, D = k_cache.shape[0], k_cache.shape[2]
    H = q.shape[0] // D
    G = H // Hkv
    _rmsnorm_vec(h, x, attn_norm, eps)
    _prep(xa, xb, h)
    nq = (wq.shape[0] + _ROWS - 1) // _ROWS
    nk = (wk.shape[0] + _ROWS - 1) // _ROWS
    for c in prange(nq + nk):
        if c < nq:
            _rows(q, wq, sq, xa, xb, c * _ROWS, min(wq.shape[0], (c + 1) * _ROWS))
        else:
            lo, hi = (c - nq) * _ROWS, min(wk.shape[0], (c - nq + 1) * _ROWS)
            _rows(k, wk, sk, xa, xb, lo, hi)
            _rows(v, wv, sv, xa, xb, lo, hi)
    for hk in range(Hkv):
        _rope_cache_append(q, k, v, k_cache, v_cache, cos, sin, pos, hk, G)
    for hh in prange(H):
        _head_attention(att, scores, q, k_cache, v_cache, hh, hh // G, pos + 1, scale, _cache_cold(xa, xb))
    _prep(xa, xb, att)
    _add_product(x, h, wo, so, xa, xb)  # x += wo att
    # x += w_down (silu(w_gate h) * w_up h), h = rmsnorm(x): each slice of the hidden units in one region
    _rmsnorm_vec(h, x, mlp_norm, eps)
    _prep(xa, xb, h)
    n = min(n_parts, parts.shape[0])
    rows = _down_by_rows(xa, xb)
    for c in prange(n):
        _mlp_slice(c, n, parts[c], g, u, wg, sg, wu, su, wd, sd, xa, xb, ya, yb, not rows, g, g, form)
    if rows:
        _prep(xa, xb, g)
        _add_product(x, h, wd, sd, xa, xb)
    else:
        _add_parts(x, parts, 0, n)


@kernel
def _head_part(logits, best, head_w, head_s, xa, xb, it, n):
    """Part ``it`` of ``n`` of the head (whole chunks of _HEAD_ROWS rows): logits = W a there (a as ``_prep``
    left it in xa, xb), and best[it + 1] its argmax (:func:`_scan_best`; -1 for an empty part)."""
    V = head_w.shape[0]
    step = ((V + _HEAD_ROWS - 1) // _HEAD_ROWS + n - 1) // n * _HEAD_ROWS  # rows a part
    bi, bv = -1, logits.dtype.type(0)
    lo, hi = min(V, it * step), min(V, (it + 1) * step)
    if hi > lo:
        _head_rows(logits, head_w, head_s, xa, xb, lo, hi)
        bi, bv = _scan_best(logits, lo, hi, bi, bv)
    best[it + 1] = bi


@kernel
def _spread(c, m, n):
    """The item of the c-th claim of m items among n participants: when n divides m, claims taken in turn give
    each participant a contiguous block (0, m/n, 1, m/n + 1, ...), so its rows of wo or w_down are one stream
    (:func:`_rows_phase`; when the attention phase claimed single heads this way, a stories15M int8 token's took
    71-78 us instead of 85-89, docs/design.md); otherwise c itself."""
    if m % n != 0:
        return c
    return (c % n) * (m // n) + c // n


@kernel
def _rows_phase(counters, ph, n, out, w, ws, xa, xb):
    """Phase ``ph`` of ``n`` participants: out (C,) = W a by rows (W as ``_rows`` takes it, a as ``_prep`` left it
    in xa, xb), in 2n items of whole fours (two a participant: balance); returns once every item is done."""
    C = out.shape[0]
    nb = 2 * n
    rs = (C // nb + 3) // 4 * 4
    while True:
        c = claim(counters, ph)
        if c >= nb:
            break
        c = _spread(c, nb, n)
        lo, hi = min(C, c * rs), min(C, (c + 1) * rs)
        if c == nb - 1:
            hi = C
        if hi > lo:
            _rows(out, w, ws, xa, xb, lo, hi)
        done(counters, ph)
    wait_done(counters, ph, nb)


@kernel
def _token_part(p, n, counters, logits, best, xs, hs, xas, xbs, tok, embed, embed_s, b, addresses, pos, eps, scale,
                q, k, v, scores, u, ya, yb, atts, outs, gs, partss, norm_w, norm_eps, head_w, head_s, norm_b, form,
                wpe):
    """Participant ``p`` of ``n`` in one token through a whole Llama in one parallel region (:func:`_llama_decode`
    with ``by_kv_head``). Each block is three or four phases whose work items are claimed from ``counters``
    (kernels._sync), every participant waiting for all of a phase's items before the next: per block of kv heads
    (:func:`_kv_blocks`) their q, k, v rows, RoPE, cache append and attention into ``atts[i]``; the output
    projection by rows into ``outs[i, 0]``; per slice of the hidden units its gate and up rows and SwiGLU into
    ``gs[i]`` and, unless the down projection goes by rows (:func:`_down_by_rows`), its columns of w_down into
    ``partss[i]``; else the down projection by rows into ``outs[i, 1]``. The head is a last phase. Each
    participant keeps its own residual stream, normed input and prepared activations (``xs[p], hs[p], xas[p],
    xbs[p]``): all add the same sums in the same order, so the copies agree and need no phase of their own.

    What all participants read after a phase (att, the projections, g, the partial sums) is block i's own: a
    phase is not a barrier (a participant may do every item of the next phases while another is still reading),
    so a later block must not write where an earlier one's results are read. Scratch used only inside an item
    (q, k, v, scores, u, ya, yb) is shared."""
    x, h, xa, xb = xs[p], hs[p], xas[p], xbs[p]
    _embed_row(x, embed, embed_s, tok)
    if form[FORM_POSITIONS]:
        _add_span(x, wpe[pos], 0, x.shape[0])
    Hkv = b[16].shape[0]
    nh = _kv_blocks(Hkv, n)
    per = Hkv // nh
    ph = 0
    for i in range(addresses.shape[0]):
        a = addresses[i]
        att, o, parts, g = atts[i], outs[i], partss[i], gs[i]
        wq, sq, wk, sk = _at(a[1], b[1]), _at(a[2], b[2]), _at(a[3], b[3]), _at(a[4], b[4])
        wv, sv, wo, so = _at(a[5], b[5]), _at(a[6], b[6]), _at(a[7], b[7]), _at(a[8], b[8])
        k_cache, v_cache, cos, sin = _at(a[16], b[16]), _at(a[17], b[17]), _at(a[18], b[18]), _at(a[19], b[19])
        bq, bk, bv, bo = _at(a[22], b[22]), _at(a[23], b[23]), _at(a[24], b[24]), _at(a[25], b[25])
        _norm_vec(h, x, _at(a[0], b[0]), _at(a[20], b[20]), eps[i], form)
        _prep(xa, xb, h)
        while True:  # attention, per block of kv heads
            c = claim(counters, ph)
            if c >= nh:
                break
            _kv_heads(c * per, c * per + per, q, k, v, k_cache, v_cache, wq, sq, wk, sk, wv, sv, xa, xb, att,
                      scores, cos, sin, pos, scale, bq, bk, bv, form)
            done(counters, ph)
        wait_done(counters, ph, nh)
        ph += 1
        _prep(xa, xb, att)
        _rows_phase(counters, ph, n, o[0], wo, so, xa, xb)
        ph += 1
        _add_parts(x, o, 0, 1)
        if form[FORM_BIAS]:
            _add_span(x, bo, 0, x.shape[0])
        wg, sg, wu, su = _at(a[10], b[10]), _at(a[11], b[11]), _at(a[12], b[12]), _at(a[13], b[13])
        wd, sd = _at(a[14], b[14]), _at(a[15], b[15])
        _norm_vec(h, x, _at(a[9], b[9]), _at(a[21], b[21]), eps[i], form)
        _prep(xa, xb, h)
        rows = _down_by_rows(xa, xb)
        bg, bu = _at(a[26], b[26]), _at(a[27], b[27])
        while True:  # the feed-forward, per slice of the hidden units
            c = claim(counters, ph)
            if c >= n:
                break
            _mlp_slice(c, n, parts[c], g, u, wg, sg, wu, su, wd, sd, xa, xb, ya, yb, not rows, bg, bu, form)
            done(counters, ph)
        wait_done(counters, ph, n)
        ph += 1
        if rows:
            _prep(xa, xb, g)
            _rows_phase(counters, ph, n, o[1], wd, sd, xa, xb)
            ph += 1
            _add_parts(x, o, 1, 2)
        else:
            _add_parts(x, parts, 0, n)
        if form[FORM_BIAS]:
            _add_span(x, _at(a[28], b[28]), 0, x.shape[0])
    _norm_vec(h, x, norm_w, norm_b, norm_eps, form)
    _prep(xa, xb, h)
    while True:  # the head, no wait: the region's end is one
        it = claim(counters, ph)
        if it >= n:
            break
        _head_part(logits, best, head_w, head_s, xa, xb, it, n)


@kernel(parallel=True)
def _llama_decode(logits, best, x, toks, stops, tok, embed, embed_s, blocks, addresses, pos, eps, scale, h, q, k, v,
                  att, scores, g, u, xa, xb, ya, yb, parts, xs, hs, xas, xbs, atts, outs, gs, partss, counters,
                  by_kv_head, n_parts, norm_w, norm_eps, head_w, head_s, norm_b, form, wpe):
    """``logits (V,)`` of token ``tok`` at position ``pos`` through a whole Llama in one call: ``x (C,) =
    embed[tok]``, every block, the final RMSNorm, ``logits = head_w @ x``, and ``best[0]`` their argmax as NumPy's
    (the first NaN, else the first maximum), taken by each participant from the rows it just wrote (``best (>=
    n_parts + 1,)`` int64; reading the logits again afterwards cost a greedy token 7.5 us of 1,200 at the
    stories15M shape).

    Every linear weight and the head as ``_rows`` takes them (float32, bf16 or q8_0), each with its scales
    (``s*``: q8_0's ``d``; any float32 matrix for the other formats, unused). ``blocks``: the first block's
    (attn_norm, wq, sq, wk, sk, wv, sv, wo, so, mlp_norm, wg, sg, wu, su, wd, sd, k_cache, v_cache, cos, sin,
    attn_norm_b, mlp_norm_b, bq, bk, bv, bo, bg, bu, bd), ``addresses`` every block's (:func:`block_table`);
    ``eps (n_blocks,)``. ``form`` (int64, ``FORM_*``) says what the blocks are: a Llama's (RMSNorm, RoPE from
    the cos, sin tables, SwiGLU, no biases) or GPT-2's (LayerNorm with the norms' biases, a bias after every
    product, no RoPE, GELU of the up rows with no gate, ``wpe[pos]`` added to the embedding); what a form does
    not use may be any array of the right kind (one element). ``norm_b``: the final norm's bias. ``embed`` (V0,
    C) float32, or quantized as the head (``embed_s``). Scratch shared by the blocks: h (C,), q, att (H*D,), k, v
    (Hkv*D,), scores (H, T_max), g, u (F,), xa, xb, ya, yb as ``_prep`` takes them for the widest input (the
    hidden size), parts (>= n_parts, C) float32.

    With ``by_kv_head`` (give it ``Hkv >= threads``) the whole token is one parallel region of ``n_parts``
    participants (:func:`_token_part`; at most the rows of ``xs`` and ``best`` allow): xs, hs (>= n_parts, C)
    float32 and xas, xbs (>= n_parts, ...) as xa, xb are each participant's own; atts (n_blocks, H*D), outs
    (n_blocks, 2, C), gs (n_blocks, F) and partss (n_blocks, >= n_parts, C) float32 each block's; counters (>=
    4 * n_blocks + 1 phases) from :func:`phase_counters`. Starting and joining numba's threads costs about 1.8 us
    a region, and a stories15M int8 token took 19 (docs/design.md, "Decoding one token"). Otherwise
    :func:`_llama_block_decode` block by block (``n_parts`` its slices), then the head: a Llama's form only (a
    ValueError otherwise).

    A greedy run (:func:`_greedy_next`): up to ``toks.shape[0]`` tokens from ``tok`` at ``pos`` on, each the argmax
    of the one before, written to ``toks``; returns how many ran. ``logits`` are the last one's. A step is a run
    of one; the loop is here, not in a kernel of its own, which would have no parallel region to carry the start
    of numba's threads in its cached code."""
    b = blocks
    t = 0
    while True:  # tokens of a greedy run
        at = pos + t
        nb = addresses.shape[0]
        if by_kv_head and counters.shape[0] > 4 * nb and min(atts.shape[0], outs.shape[0], gs.shape[0],
                                                             partss.shape[0]) >= nb:
            n = min(n_parts, xs.shape[0], partss.shape[1], best.shape[0] - 1)  # the whole token in one region
            for i in range(counters.shape[0]):  # loops: an array expression would be a parallel region of its own
                ci = counters[i]
                for j in range(ci.shape[0]):
                    ci[j] = 0
            for p in prange(n):
                _token_part(p, n, counters, logits, best, xs, hs, xas, xbs, tok, embed, embed_s, b, addresses, at,
                            eps, scale, q, k, v, scores, u, ya, yb, atts, outs, gs, partss, norm_w, norm_eps, head_w,
                            head_s, norm_b, form, wpe)
            x0 = xs[0]
            for j in range(x.shape[0]):
                x[j] = x0[j]
            _join_best(logits, best, n)
        else:
            if (form[FORM_LAYER_NORM] or form[FORM_BIAS] or form[FORM_POSITIONS] or not form[FORM_ROPE]
                    or form[FORM_ACT] != ACT_SWIGLU):
                raise ValueError("llama_decode: block by block only for a Llama's form (give by_kv_head)")
            _embed_row(x, embed, embed_s, tok)
            for i in range(addresses.shape[0]):
                a = addresses[i]
                _llama_block_decode(x, _at(a[0], b[0]), _at(a[1], b[1]), _at(a[2], b[2]), _at(a[3], b[3]),
                                    _at(a[4], b[4]), _at(a[5], b[5]), _at(a[6], b[6]), _at(a[7], b[7]), _at(a[8], b[8]),
                                    _at(a[9], b[9]), _at(a[10], b[10]), _at(a[11], b[11]), _at(a[12], b[12]),
                                    _at(a[13], b[13]), _at(a[14], b[14]), _at(a[15], b[15]), _at(a[16], b[16]),
                                    _at(a[17], b[17]), at, _at(a[18], b[18]), _at(a[19], b[19]), eps[i], scale, h, q,
                                    k, v, att, scores, g, u, xa, xb, ya, yb, parts, n_parts, form)
            _rmsnorm_vec(h, x, norm_w, norm_eps)
            _prep(xa, xb, h)
            n = min(n_parts, best.shape[0] - 1)
            for p in prange(n):
                _head_part(logits, best, head_w, head_s, xa, xb, p, n)
            _join_best(logits, best, n)
        tok, t, more = _greedy_next(logits, best, toks, stops, t)
        if not more:
            return t
