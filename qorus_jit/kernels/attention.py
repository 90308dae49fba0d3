"""Fused scaled dot-product attention: forward, backward, single-token decode and the KV-cache write.

Layouts (see docs/design.md): ``q`` and ``out`` are ``(B, T, H, D)``, ``k`` and ``v`` are
``(B, S, Hkv, D)`` with ``H % Hkv == 0``; query head ``h`` reads kv head ``h // (H // Hkv)``
(grouped-query attention; ``Hkv == H`` is plain multi-head attention). The KV cache is
``(B, T_max, Hkv, D)``.

Per query row ``t`` of head ``h``::

    out[t] = sum_s p[s] v[s],   p = softmax(scale * q[t] . k[s] over the attended keys s)

``causal`` lets query ``t`` attend keys ``s <= t + (S - T)``: the queries are the last ``T`` positions
of the ``S`` keys, so ``T == S`` is ordinary causal self-attention and ``T < S`` is chunked prefill after
``S - T`` cached positions. ``key_mask`` ``(B, S)`` (bool or integer, nonzero = attend) drops padding
keys. A row with no attended key gets ``out = 0``, ``lse = -inf`` and zero gradients.

The kernels never build a ``(T, S)`` score or mask matrix: each thread keeps the scores of one block of
``_R`` query rows over the keys, plus a transposed copy of the V rows (forward, one per call) or of a
block of K rows (backward) so that the long loops run over keys with contiguous loads. Backward
recomputes the probabilities from the saved per-row log-sum-exp ``lse`` (B, H, T), flash-attention style.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from .._check import (
    check_arrays,
    check_bool,
    check_disjoint,
    check_mask,
    check_nonnegative,
    check_positive,
    check_positive_float,
    check_writeable,
)
from ..config import kernel
from ._math import exp

_R = 4  # query rows per register block (the micro-kernels below are unrolled for 4)
_ROWS = 32  # query rows per forward work item
_KEYS = 64  # smallest key chunk per backward work item
_KB = 128  # keys per backward block (their K, dK, dV rows stay in L2 while all query rows pass)


# ---------------------------------------------------------------------------------------------------
# micro-kernels (serial; called inside the prange bodies)


@kernel
def _exp_row(x, n, scale, shift):
    """x[:n] = exp(scale * x[:n] - shift) (exp(-inf) = 0), returns their sum; x (>= n,)."""
    s = scale - scale
    for j in range(n):
        e = exp(scale * x[j] - shift)
        x[j] = e
        s += e
    return s


@kernel
def _row_max(x, n):
    """max(x[:n]) (-inf if n == 0), eight independent running maxima; x (>= n,)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -np.inf
    n8 = n - n % 8
    for j in range(0, n8, 8):
        m0, m1, m2, m3 = max(m0, x[j]), max(m1, x[j + 1]), max(m2, x[j + 2]), max(m3, x[j + 3])
        m4, m5, m6, m7 = max(m4, x[j + 4]), max(m5, x[j + 5]), max(m6, x[j + 6]), max(m7, x[j + 7])
    for j in range(n8, n):
        m0 = max(m0, x[j])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@kernel
def _dot4(sc, x0, x1, x2, x3, k, b, hk, s_lo, n, zero):
    """sc[r, j] = x_r . k[b, s_lo + j, hk] for r < 4, j < n; x_r (D,), k (B, S, Hkv, D), sc (4, >= n)."""
    D = x0.shape[0]
    for j in range(0, n, 2):
        j1 = min(j + 1, n - 1)  # two keys per pass; an odd tail repeats the last key
        kr, ks = k[b, s_lo + j, hk], k[b, s_lo + j1, hk]
        a0, a1, a2, a3 = zero, zero, zero, zero
        e0, e1, e2, e3 = zero, zero, zero, zero
        for d in range(D):
            kd, ke = kr[d], ks[d]
            a0 += x0[d] * kd
            a1 += x1[d] * kd
            a2 += x2[d] * kd
            a3 += x3[d] * kd
            e0 += x0[d] * ke
            e1 += x1[d] * ke
            e2 += x2[d] * ke
            e3 += x3[d] * ke
        sc[0, j], sc[1, j], sc[2, j], sc[3, j] = a0, a1, a2, a3
        sc[0, j1], sc[1, j1], sc[2, j1], sc[3, j1] = e0, e1, e2, e3


@kernel
def _sdot4(o, w, xt, n, zero):
    """o[r, d] = sum_j w[r, j] * xt[d, j] over j < n; w (4, >= n), xt (D, >= n), o (4, D)."""
    D = xt.shape[0]
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for d in range(0, D, 2):
        d1 = min(d + 1, D - 1)  # two columns per pass; an odd tail repeats the last one
        xd, xe = xt[d], xt[d1]
        a0, a1, a2, a3 = zero, zero, zero, zero
        e0, e1, e2, e3 = zero, zero, zero, zero
        for j in range(n):
            x, y = xd[j], xe[j]
            a0 += w0[j] * x
            a1 += w1[j] * x
            a2 += w2[j] * x
            a3 += w3[j] * x
            e0 += w0[j] * y
            e1 += w1[j] * y
            e2 += w2[j] * y
            e3 += w3[j] * y
        o[0, d], o[1, d], o[2, d], o[3, d] = a0, a1, a2, a3
        o[0, d1], o[1, d1], o[2, d1], o[3, d1] = e0, e1, e2, e3


@kernel
def _rank4(acc, x0, x1, x2, x3, w, n):
    """acc[d, j] += sum_r x_r[d] * w[r, j] for j < n; acc (D, >= n), x_r (D,), w (4, >= n)."""
    D = acc.shape[0]
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for d in range(0, D - 1, 2):
        c0, c1, c2, c3 = x0[d], x1[d], x2[d], x3[d]
        f0, f1, f2, f3 = x0[d + 1], x1[d + 1], x2[d + 1], x3[d + 1]
        ad, ae = acc[d], acc[d + 1]
        for j in range(n):
            p0, p1, p2, p3 = w0[j], w1[j], w2[j], w3[j]
            ad[j] += c0 * p0 + c1 * p1 + c2 * p2 + c3 * p3
            ae[j] += f0 * p0 + f1 * p1 + f2 * p2 + f3 * p3
    if D % 2 == 1:
        c0, c1, c2, c3 = x0[D - 1], x1[D - 1], x2[D - 1], x3[D - 1]
        ad = acc[D - 1]
        for j in range(n):
            ad[j] += c0 * w0[j] + c1 * w1[j] + c2 * w2[j] + c3 * w3[j]


@kernel
def _transpose_rows(xt, x, b, hk, s_lo, n):
    """xt[d, j] = x[b, s_lo + j, hk, d] for j < n; x (B, S, Hkv, D), xt (D, >= n)."""
    for d in range(xt.shape[0]):
        for j in range(n):
            xt[d, j] = x[b, s_lo + j, hk, d]


@kernel
def _key_limit(t, T, S, causal):
    """Number of keys query row t attends before the padding mask: min(S, t + 1 + S - T) if causal."""
    return min(S, t + 1 + S - T) if causal else S


@kernel
def _mask_row(sc, r, n_r, n, mask, b):
    """sc[r, j] = -inf for the keys j in [n_r, n) beyond the causal limit and where mask[b, j] == 0."""
    for j in range(max(n_r, 0), n):
        sc[r, j] = -np.inf
    if mask.shape[0] > 0:
        mb = mask[b]
        for j in range(min(n_r, n)):
            if mb[j] == 0:
                sc[r, j] = -np.inf


# ---------------------------------------------------------------------------------------------------
# forward


@kernel(parallel=True)
def _attention_forward(out, lse, q, k, v, mask, causal, scale):
    """out (B, T, H, D), lse (B, H, T) = attention of q (B, T, H, D) over k, v (B, S, Hkv, D); mask (B, S)."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    zero = scale - scale
    vt = np.empty((B, Hkv, D, S), q.dtype)  # v transposed once, read by every query row of the group
    for bh in prange(B * Hkv):
        _transpose_rows(vt[bh // Hkv, bh % Hkv], v, bh // Hkv, bh % Hkv, 0, S)
    nch = (T + _ROWS - 1) // _ROWS
    for it in prange(B * H * nch):
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
        sc = np.empty((_R, n_hi), q.dtype)
        o = np.empty((_R, D), q.dtype)
        m = np.empty(_R, q.dtype)
        lsum = np.empty(_R, q.dtype)
        for t0 in range(t_lo, t_hi, _R):
            t3 = min(t0 + 3, t_hi - 1)
            n = _key_limit(t3, T, S, causal)
            if n <= 0:
                for t in range(t0, t3 + 1):
                    out[b, t, h, :] = 0
                    lse[b, h, t] = -np.inf
                continue
            _dot4(sc, q[b, min(t0, t3), h], q[b, min(t0 + 1, t3), h], q[b, min(t0 + 2, t3), h], q[b, t3, h],
                  k, b, hk, 0, n, zero)
            for r in range(_R):
                _mask_row(sc, r, _key_limit(min(t0 + r, t3), T, S, causal), n, mask, b)
                mx = _row_max(sc[r], n)
                if mx == -np.inf:
                    sc[r, :n] = 0
                    m[r] = -np.inf
                    lsum[r] = 0
                else:
                    m[r] = scale * mx
                    lsum[r] = _exp_row(sc[r], n, scale, m[r])
            _sdot4(o, sc, vt[b, hk], n, zero)
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
def _backward_keys(g_dq, dk, dv, dout, q, k, v, out, lse, mask, causal, scale, b, hk, s_lo, s_hi):
    """g_dq (B, T, H, D), dk, dv (B, S, Hkv, D) += gradients via keys s_lo..s_hi-1 of kv head hk, batch b."""
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    S, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    zero = scale - scale
    nk = s_hi - s_lo
    kt = np.empty((D, nk), q.dtype)
    _transpose_rows(kt, k, b, hk, s_lo, nk)
    dkt = np.zeros((D, nk), q.dtype)
    dvt = np.zeros((D, nk), q.dtype)
    p = np.empty((_R, nk), q.dtype)
    ds = np.empty((_R, nk), q.dtype)
    dqb = np.empty((_R, D), q.dtype)
    t_min = max(0, s_lo - (S - T)) if causal else 0
    for h in range(hk * G, hk * G + G):
        for t0 in range(t_min, T, _R):
            t3 = min(t0 + 3, T - 1)
            n = min(s_hi, _key_limit(t3, T, S, causal)) - s_lo
            q0, q1, q2, q3 = q[b, t0, h], q[b, min(t0 + 1, t3), h], q[b, min(t0 + 2, t3), h], q[b, t3, h]
            g0, g1 = dout[b, t0, h], dout[b, min(t0 + 1, t3), h]
            g2, g3 = dout[b, min(t0 + 2, t3), h], dout[b, t3, h]
            _dot4(p, q0, q1, q2, q3, k, b, hk, s_lo, n, zero)
            _dot4(ds, g0, g1, g2, g3, v, b, hk, s_lo, n, zero)
            for r in range(_R):
                t = t0 + r
                if t > t3 or lse[b, h, t] == -np.inf:
                    p[r, :n] = 0
                    ds[r, :n] = 0
                    continue
                # D_t = dout[t] . out[t]
                di = zero
                for d in range(D):
                    di += dout[b, t, h, d] * out[b, t, h, d]
                # p = exp(scale * q.k - lse), 0 on masked keys
                n_r = _key_limit(t, T, S, causal) - s_lo
                for j in range(max(n_r, 0), n):
                    p[r, j] = -np.inf
                if mask.shape[0] > 0:
                    for j in range(min(n_r, n)):
                        if mask[b, s_lo + j] == 0:
                            p[r, j] = -np.inf
                _exp_row(p[r], n, scale, lse[b, h, t])
                # ds = p * (dp - D_t), times scale for dq and dk (the score is scale * q.k)
                for j in range(n):
                    ds[r, j] = scale * p[r, j] * (ds[r, j] - di)
            # dv[s] += sum_t p[t, s] dout[t];  dk[s] += sum_t ds[t, s] q[t];  dq[t] += sum_s ds[t, s] k[s]
            _rank4(dvt, g0, g1, g2, g3, p, n)
            _rank4(dkt, q0, q1, q2, q3, ds, n)
            _sdot4(dqb, ds, kt, n, zero)
            for r in range(t3 - t0 + 1):
                for d in range(D):
                    g_dq[b, t0 + r, h, d] += dqb[r, d]
    for j in range(nk):
        for d in range(D):
            dk[b, s_lo + j, hk, d] += dkt[d, j]
            dv[b, s_lo + j, hk, d] += dvt[d, j]


@kernel(parallel=True)
def _attention_backward(dq, dk, dv, dout, q, k, v, out, lse, mask, causal, scale, nj):
    """dq (B, T, H, D), dk, dv (B, S, Hkv, D) += gradients; dout, out (B, T, H, D), lse (B, H, T)."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    # work items (b, kv head, one of nj key chunks) own their dk, dv rows; if nj > 1 dq goes to per-chunk dqp
    bounds = _key_bounds(nj, T, S, causal)
    dqp = np.zeros((nj if nj > 1 else 0, B, T, H, D), q.dtype)
    for it in prange(B * Hkv * nj):
        b = it // (Hkv * nj)
        hk = (it // nj) % Hkv
        jc = it % nj
        g_dq = dqp[jc] if nj > 1 else dq
        for s_lo in range(bounds[jc], bounds[jc + 1], _KB):
            _backward_keys(g_dq, dk, dv, dout, q, k, v, out, lse, mask, causal, scale, b, hk,
                           s_lo, min(s_lo + _KB, bounds[jc + 1]))
    if nj > 1:
        for bt in prange(B * T):
            b, t = bt // T, bt % T
            for jc in range(nj):
                for h in range(H):
                    for d in range(D):
                        dq[b, t, h, d] += dqp[jc, b, t, h, d]


# ---------------------------------------------------------------------------------------------------
# decode and KV cache


@kernel(parallel=True)
def _attention_decode(out, q, k_cache, v_cache, length, mask, scale):
    """out (B, H, D) = attention of q (B, H, D) over rows < length of k_cache, v_cache (B, T_max, Hkv, D)."""
    B, H, D = q.shape
    Hkv = k_cache.shape[2]
    G = H // Hkv
    zero = scale - scale
    for it in prange(B * Hkv):
        b, hk = it // Hkv, it % Hkv
        h0 = hk * G
        sc = np.empty((G, length), q.dtype)
        o = np.zeros((G, D), q.dtype)
        live = np.ones(G, np.bool_)
        # scores of the G query heads sharing kv head hk: each cached key row is read once
        for j in range(length):
            kr = k_cache[b, j, hk]
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
            inv = 1 / _exp_row(sc[g], length, scale, scale * mx)
            for j in range(length):
                sc[g, j] *= inv
        for j in range(length):
            vr = v_cache[b, j, hk]
            for g in range(G):
                pg = sc[g, j]
                for d in range(D):
                    o[g, d] += pg * vr[d]
        for g in range(G):
            if live[g]:
                for d in range(D):
                    out[b, h0 + g, d] = o[g, d]


@kernel(parallel=True)
def _kv_cache_write(k_cache, v_cache, k, v, pos):
    """k_cache[:, pos:pos + T_new] = k, same for v; caches (B, T_max, Hkv, D), k, v (B, T_new, Hkv, D)."""
    B, T_new = k.shape[0], k.shape[1]
    for bt in prange(B * T_new):
        b, t = bt // T_new, bt % T_new
        k_cache[b, pos + t] = k[b, t]
        v_cache[b, pos + t] = v[b, t]


# ---------------------------------------------------------------------------------------------------
# public wrappers


def backward_chunks(B: int, Hkv: int, S: int) -> int:
    """Key chunks per (batch, kv head) for :func:`_attention_backward`: at least one work item per thread."""
    items = B * Hkv
    return min(max(1, (numba.get_num_threads() + items - 1) // items), max(1, S // _KEYS))


def _check_heads(dims, name):
    H, Hkv = dims["H"], dims["Hkv"]
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{name}: expected a kv head count Hkv >= 1 that divides the query head count "
                         f"H = {H}, got Hkv = {Hkv}")


def _scale(scale, D, dtype):
    if scale is None:
        return dtype.type(1.0 / math.sqrt(D))
    check_positive_float(scale=scale)
    return dtype.type(scale)


def _mask(key_mask, dims):
    if key_mask is None:
        return np.zeros((0, 0), np.uint8)  # (0, 0): no padding mask
    return check_mask("key_mask", key_mask, ("B", "S"), dims)


def _check_attention(causal, key_mask, scale, **arrays):
    dims = check_arrays(**arrays)
    _check_heads(dims, "k")
    check_bool(causal=causal)
    return dims, _mask(key_mask, dims), _scale(scale, dims["D"], arrays["q"][0].dtype)


def attention_forward(out, lse, q, k, v, causal: bool, key_mask=None, scale: float | None = None):
    """``out = softmax(scale * q k^T) v`` per (batch, head), saving the row log-sum-exp ``lse``.

    out, q (B, T, H, D); k, v (B, S, Hkv, D) with H % Hkv == 0; lse (B, H, T). ``causal``: query t
    attends keys s <= t + (S - T). ``key_mask`` (B, S), nonzero = attend. ``scale`` defaults to 1/sqrt(D).
    """
    dims, mask, scale = _check_attention(
        causal, key_mask, scale,
        q=(q, ("B", "T", "H", "D")), k=(k, ("B", "S", "Hkv", "D")), v=(v, ("B", "S", "Hkv", "D")),
        out=(out, ("B", "T", "H", "D")), lse=(lse, ("B", "H", "T")),
    )
    check_writeable(out=out, lse=lse)
    check_disjoint(dict(out=out, lse=lse), dict(q=q, k=k, v=v))
    _attention_forward(out, lse, q, k, v, mask, bool(causal), scale)


def attention_backward(dq, dk, dv, dout, q, k, v, out, lse, causal: bool, key_mask=None,
                       scale: float | None = None):
    """Accumulate (``+=``) the gradients of :func:`attention_forward` into dq, dk, dv.

    dq, dout, q, out (B, T, H, D); dk, dv, k, v (B, S, Hkv, D); lse (B, H, T) as saved by the forward
    with the same ``causal``, ``key_mask`` and ``scale``.
    """
    bthd, bshd = ("B", "T", "H", "D"), ("B", "S", "Hkv", "D")
    dims, mask, scale = _check_attention(
        causal, key_mask, scale,
        q=(q, bthd), k=(k, bshd), v=(v, bshd), out=(out, bthd), lse=(lse, ("B", "H", "T")),
        dout=(dout, bthd), dq=(dq, bthd), dk=(dk, bshd), dv=(dv, bshd),
    )
    check_writeable(dq=dq, dk=dk, dv=dv)
    check_disjoint(dict(dq=dq, dk=dk, dv=dv), dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse))
    _attention_backward(dq, dk, dv, dout, q, k, v, out, lse, mask, bool(causal), scale,
                        backward_chunks(dims["B"], dims["Hkv"], dims["S"]))


def attention_decode(out, q, k_cache, v_cache, length: int, key_mask=None, scale: float | None = None):
    """One new query per batch row attends the first ``length`` cache positions (all of them).

    out, q (B, H, D); k_cache, v_cache (B, T_max, Hkv, D) with H % Hkv == 0; 1 <= length <= T_max
    (the new token's k, v already written at position length - 1). ``key_mask`` (B, T_max) or
    (B, length), nonzero = attend; only its first ``length`` columns are read.
    """
    dims = check_arrays(q=(q, ("B", "H", "D")), k_cache=(k_cache, ("B", "T_max", "Hkv", "D")),
                        v_cache=(v_cache, ("B", "T_max", "Hkv", "D")), out=(out, ("B", "H", "D")))
    _check_heads(dims, "k_cache")
    check_writeable(out=out)
    check_disjoint(dict(out=out), dict(q=q, k_cache=k_cache, v_cache=v_cache))
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
    """Copy k, v (B, T_new, Hkv, D) into rows pos .. pos + T_new - 1 of k_cache, v_cache (B, T_max, Hkv, D).

    ``pos + T_new <= T_max`` is checked.
    """
    cache, new = ("B", "T_max", "Hkv", "D"), ("B", "T_new", "Hkv", "D")
    dims = check_arrays(k_cache=(k_cache, cache), v_cache=(v_cache, cache), k=(k, new), v=(v, new))
    check_writeable(k_cache=k_cache, v_cache=v_cache)
    check_disjoint(dict(k_cache=k_cache, v_cache=v_cache), dict(k=k, v=v))
    check_nonnegative(pos=pos)
    if pos + dims["T_new"] > dims["T_max"]:
        raise ValueError(f"pos: expected pos + T_new <= T_max = {dims['T_max']} (T_new = {dims['T_new']}), "
                         f"got pos = {pos}")
    _kv_cache_write(k_cache, v_cache, k, v, int(pos))
