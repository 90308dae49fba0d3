"""Single-token decoding kernels: a matrix-vector product, and a whole pre-norm Llama block for one token.

Decoding one token reads every weight once and does little arithmetic per byte, so its speed is set by
memory bandwidth and by per-call overhead. ``_llama_block_decode`` runs a whole block (RMSNorm, q/k/v
projections, rotate-half RoPE, KV-cache append, grouped-query attention over the cache, output projection,
residual, RMSNorm, SwiGLU MLP, residual) in one call, with a parallel loop per matrix-vector product and
over heads, instead of about fifteen kernel calls from Python. Layers validate once and call these
kernels directly (:class:`~qorus_jit.layers.TransformerBlock` for batch 1 and one new token).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ..config import kernel
from ._math import exp

_ROWS = 16  # rows of a matrix-vector product per parallel work item


@kernel
def _matvec_rows(out, w, x, lo, hi):
    """out[i] = w[i] . x for lo <= i < hi; w (N, K), x (K,); four rows share each load of x."""
    K = w.shape[1]
    zero = x.dtype.type(0)
    i = lo
    while i + 4 <= hi:
        s0 = s1 = s2 = s3 = zero
        for k in range(K):
            xk = x[k]
            s0 += w[i, k] * xk
            s1 += w[i + 1, k] * xk
            s2 += w[i + 2, k] * xk
            s3 += w[i + 3, k] * xk
        out[i], out[i + 1], out[i + 2], out[i + 3] = s0, s1, s2, s3
        i += 4
    while i < hi:
        s = zero
        for k in range(K):
            s += w[i, k] * x[k]
        out[i] = s
        i += 1


@kernel(parallel=True)
def _matvec(out, w, x):
    """out (N,) = w (N, K) @ x (K,), rows split over threads in blocks of _ROWS."""
    N = w.shape[0]
    for c in prange((N + _ROWS - 1) // _ROWS):
        _matvec_rows(out, w, x, c * _ROWS, min(N, (c + 1) * _ROWS))


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
def _rope_half_vec(x, cos, sin, p, H, D):
    """Rotate-half RoPE in place at position p for x (H * D,) seen as H heads of D; cos, sin (T_max, D/2)."""
    half = D // 2
    for h in range(H):
        o = h * D
        for i in range(half):
            c = cos[p, i]
            s = sin[p, i]
            x0 = x[o + i]
            x1 = x[o + i + half]
            x[o + i] = x0 * c - x1 * s
            x[o + i + half] = x0 * s + x1 * c


@kernel(parallel=True)
def _llama_block_decode(x, attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down, k_cache, v_cache, pos,
                        cos, sin, eps, scale, h, q, k, v, att, scores, g, u):
    """One token through a pre-norm Llama block, ``x (C,)`` updated in place (both residuals).

    Weights in ``nn.Linear`` layout: wq (H*D, C), wk, wv (Hkv*D, C), wo (C, H*D), w_gate, w_up (F, C),
    w_down (C, F); norms (C,). k_cache, v_cache (T_max, Hkv, D): the token's key and value are written at
    row ``pos`` and attention reads rows 0..pos. cos, sin (T_max, D/2). Scratch: h (C,), q, att (H*D,),
    k, v (Hkv*D,), scores (H, T_max), g, u (F,).
    """
    C = x.shape[0]
    Hkv, D = k_cache.shape[1], k_cache.shape[2]
    H = q.shape[0] // D
    G = H // Hkv
    L = pos + 1
    # attention: h = rmsnorm(x); q, k, v = W h; RoPE; cache append
    _rmsnorm_vec(h, x, attn_norm, eps)
    nq = (wq.shape[0] + _ROWS - 1) // _ROWS
    nk = (wk.shape[0] + _ROWS - 1) // _ROWS
    for c in prange(nq + nk):  # q, k and v in one parallel region
        if c < nq:
            _matvec_rows(q, wq, h, c * _ROWS, min(wq.shape[0], (c + 1) * _ROWS))
        else:
            lo, hi = (c - nq) * _ROWS, min(wk.shape[0], (c - nq + 1) * _ROWS)
            _matvec_rows(k, wk, h, lo, hi)
            _matvec_rows(v, wv, h, lo, hi)
    _rope_half_vec(q, cos, sin, pos, H, D)
    _rope_half_vec(k, cos, sin, pos, Hkv, D)
    for hk in range(Hkv):
        for d in range(D):
            k_cache[pos, hk, d] = k[hk * D + d]
            v_cache[pos, hk, d] = v[hk * D + d]
    # softmax(q k^T * scale) v per head, over the L cached positions
    for hh in prange(H):
        hk = hh // G
        qo = hh * D
        m = -np.inf
        for j in range(L):
            a = x.dtype.type(0)
            for d in range(D):
                a += q[qo + d] * k_cache[j, hk, d]
            a *= scale
            scores[hh, j] = a
            m = max(m, a)
        total = x.dtype.type(0)
        for j in range(L):
            e = exp(scores[hh, j] - m)
            scores[hh, j] = e
            total += e
        inv = 1 / total
        for d in range(D):
            att[qo + d] = 0
        for j in range(L):
            p = scores[hh, j] * inv
            for d in range(D):
                att[qo + d] += p * v_cache[j, hk, d]
    # x += wo att
    for c in prange((C + _ROWS - 1) // _ROWS):
        lo, hi = c * _ROWS, min(C, (c + 1) * _ROWS)
        _matvec_rows(h, wo, att, lo, hi)
        for i in range(lo, hi):
            x[i] += h[i]
    # x += w_down (silu(w_gate h) * w_up h), h = rmsnorm(x)
    _rmsnorm_vec(h, x, mlp_norm, eps)
    F = w_gate.shape[0]
    for c in prange((F + _ROWS - 1) // _ROWS):
        lo, hi = c * _ROWS, min(F, (c + 1) * _ROWS)
        _matvec_rows(g, w_gate, h, lo, hi)
        _matvec_rows(u, w_up, h, lo, hi)
        for i in range(lo, hi):
            g[i] = g[i] / (1 + exp(-g[i])) * u[i]
    for c in prange((C + _ROWS - 1) // _ROWS):
        lo, hi = c * _ROWS, min(C, (c + 1) * _ROWS)
        _matvec_rows(h, w_down, g, lo, hi)
        for i in range(lo, hi):
            x[i] += h[i]
