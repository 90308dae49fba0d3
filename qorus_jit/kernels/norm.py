"""Row-wise normalization kernels: RMSNorm and LayerNorm.

Kernels see ``x`` as rows ``(N, C)``; the public wrappers accept ``(..., C)`` and view it as rows.
Forward saves the per-row statistics (``rstd``, and ``mean`` for LayerNorm) for backward; backward
accumulates (``+=``) into ``dx``, ``dweight`` and ``dbias``. ``dweight`` and ``dbias`` sum over all
rows: each chunk of rows sums into its own row of a ``(n_chunks, C)`` scratch, reduced after the loop
over the chunks (``numerics.row_chunks``: fixed by ``N``, so the sums do not depend on the thread count). Each
kernel's body is a serial ``*_rows`` kernel over rows ``lo..hi-1`` (backward: ``*_chunks`` over chunks of
rows), run by ``numerics.for_rows`` or ``for_chunks``.
"""

from __future__ import annotations

import math

import numpy as np

from qorus_jit.core.check import check_arrays, check_min_ndim, check_positive_float
from qorus_jit.core.numerics import for_chunks, for_rows, kernel, row_chunks


@kernel
def _add_column_sums(d, part):
    """d (C,) += part (n, C) summed over its rows in order (the chunks' partial sums, reduced after)."""
    n, C = part.shape
    for j in range(C):
        s = d.dtype.type(0)
        for c in range(n):
            s += part[c, j]
        d[j] += s


@kernel
def _partials(n_chunks, C, like):
    """Zeroed (n_chunks, C) scratch of like's dtype (allocated here: np.zeros in a parallel kernel is a parfor)."""
    return np.zeros((n_chunks, C), like.dtype)


@kernel
def _rmsnorm_forward_rows(out, rstd, x, weight, eps, lo, hi):
    """_rmsnorm_forward on rows lo..hi-1."""
    C = x.shape[1]
    for i in range(lo, hi):
        ss = x.dtype.type(0)
        for j in range(C):
            ss += x[i, j] * x[i, j]
        r = x.dtype.type(1.0 / math.sqrt(ss / C + eps))
        rstd[i] = r
        for j in range(C):
            out[i, j] = x[i, j] * r * weight[j]


@kernel(parallel=True)
def _rmsnorm_forward(out, rstd, x, weight, eps):
    """out (N, C) = x * rstd * weight; rstd (N,) = 1 / sqrt(mean(x^2) + eps); x (N, C), weight (C,)."""
    N, C = x.shape
    for_rows(_rmsnorm_forward_rows, (out, rstd, x, weight, eps), N, N * C)


@kernel
def _rmsnorm_backward_rows(dx, dw, dout, x, weight, rstd, accumulate, base, lo, hi):
    """_rmsnorm_backward on rows lo..hi-1, their dweight terms summed into dw (C,)."""
    C = x.shape[1]
    add = base.shape[0] != 0
    for i in range(lo, hi):
        r = rstd[i]
        # out[j] = x[j] * r * w[j], r = (mean(x^2) + eps)^(-1/2), dr/dx[j] = -r^3 x[j] / C
        dot = dx.dtype.type(0)
        for j in range(C):
            dot += dout[i, j] * weight[j] * x[i, j]
        k = dx.dtype.type(dot * r * r * r / C)
        if accumulate:  # its own loop: dx[i, j] = dx[i, j] + ... through base would not vectorize (see _rope_rows)
            for j in range(C):
                dx[i, j] += r * dout[i, j] * weight[j] - k * x[i, j]
                dw[j] += dout[i, j] * x[i, j] * r
        elif add:
            for j in range(C):
                dx[i, j] = base[i, j] + r * dout[i, j] * weight[j] - k * x[i, j]
                dw[j] += dout[i, j] * x[i, j] * r
        else:
            for j in range(C):
                dx[i, j] = r * dout[i, j] * weight[j] - k * x[i, j]
                dw[j] += dout[i, j] * x[i, j] * r


@kernel
def _rmsnorm_backward_chunks(dx, dw_part, dout, x, weight, rstd, accumulate, base, rows, lo, hi):
    """_rmsnorm_backward on chunks lo..hi-1 (``rows`` rows each); chunk c sums its dweight terms into dw_part[c]."""
    N = x.shape[0]
    for c in range(lo, hi):
        _rmsnorm_backward_rows(dx, dw_part[c], dout, x, weight, rstd, accumulate, base, c * rows,
                               min(N, (c + 1) * rows))


@kernel(parallel=True)
def _rmsnorm_backward(dx, dweight, dout, x, weight, rstd, accumulate, base):
    """dx (N, C) (+)= the input gradient, plus base (N, C) unless base is (0, C); dweight (C,) += its
    gradient; of out = x * rstd * weight; dout, x (N, C), rstd (N,). base is not read when accumulating."""
    N, C = x.shape
    rows, n_chunks = row_chunks(N)
    dw_part = _partials(n_chunks, C, dweight)
    for_chunks(_rmsnorm_backward_chunks, (dx, dw_part, dout, x, weight, rstd, accumulate, base, rows), n_chunks, 1,
               N * C)
    _add_column_sums(dweight, dw_part)


@kernel
def _layernorm_forward_rows(out, mean, rstd, x, weight, bias, eps, lo, hi):
    """_layernorm_forward on rows lo..hi-1."""
    C = x.shape[1]
    has_bias = bias.shape[0] != 0
    for i in range(lo, hi):
        s = x.dtype.type(0)
        for j in range(C):
            s += x[i, j]
        m = x.dtype.type(s / C)
        v = x.dtype.type(0)
        for j in range(C):
            d = x[i, j] - m
            v += d * d
        r = x.dtype.type(1.0 / math.sqrt(v / C + eps))
        mean[i] = m
        rstd[i] = r
        if has_bias:
            for j in range(C):
                out[i, j] = (x[i, j] - m) * r * weight[j] + bias[j]
        else:
            for j in range(C):
                out[i, j] = (x[i, j] - m) * r * weight[j]


@kernel(parallel=True)
def _layernorm_forward(out, mean, rstd, x, weight, bias, eps):
    """out (N, C) = (x - mean) * rstd * weight + bias; mean, rstd (N,); bias (C,) or (0,) for none."""
    N, C = x.shape
    for_rows(_layernorm_forward_rows, (out, mean, rstd, x, weight, bias, eps), N, N * C)


@kernel
def _layernorm_backward_rows(dx, dw, db, dout, x, weight, mean, rstd, accumulate, base, lo, hi):
    """_layernorm_backward on rows lo..hi-1, their dweight and dbias terms summed into dw, db (C,) (db (0,): none)."""
    C = x.shape[1]
    has_bias = db.shape[0] != 0
    add = base.shape[0] != 0
    for i in range(lo, hi):
        m = mean[i]
        r = rstd[i]
        # xhat = (x - m) * r; out = xhat * w + b; dxhat = dout * w
        # dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        sg = dx.dtype.type(0)
        sgx = dx.dtype.type(0)
        for j in range(C):
            g = dout[i, j] * weight[j]
            sg += g
            sgx += g * (x[i, j] - m) * r
        mg = dx.dtype.type(sg / C)
        mgx = dx.dtype.type(sgx / C)
        if accumulate:
            for j in range(C):
                xhat = (x[i, j] - m) * r
                dx[i, j] += r * (dout[i, j] * weight[j] - mg - xhat * mgx)
                dw[j] += dout[i, j] * xhat
        elif add:
            for j in range(C):
                xhat = (x[i, j] - m) * r
                dx[i, j] = base[i, j] + r * (dout[i, j] * weight[j] - mg - xhat * mgx)
                dw[j] += dout[i, j] * xhat
        else:
            for j in range(C):
                xhat = (x[i, j] - m) * r
                dx[i, j] = r * (dout[i, j] * weight[j] - mg - xhat * mgx)
                dw[j] += dout[i, j] * xhat
        if has_bias:
            for j in range(C):
                db[j] += dout[i, j]


@kernel
def _layernorm_backward_chunks(dx, dw_part, db_part, dout, x, weight, mean, rstd, accumulate, base, rows, lo, hi):
    """_layernorm_backward on chunks lo..hi-1 (``rows`` rows each); chunk c sums into dw_part[c], db_part[c]."""
    N = x.shape[0]
    for c in range(lo, hi):
        _layernorm_backward_rows(dx, dw_part[c], db_part[c], dout, x, weight, mean, rstd, accumulate, base,
                                 c * rows, min(N, (c + 1) * rows))


@kernel(parallel=True)
def _layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd, accumulate, base):
    """dx (N, C) (+)= the input gradient plus base (as in _rmsnorm_backward), dweight (C,), dbias (C,) or (0,)
    for none += theirs, of LayerNorm; dout, x (N, C)."""
    N, C = x.shape
    rows, n_chunks = row_chunks(N)
    dw_part = _partials(n_chunks, C, dweight)
    db_part = _partials(n_chunks, dbias.shape[0], dweight)  # (n_chunks, 0) without bias
    for_chunks(_layernorm_backward_chunks, (dx, dw_part, db_part, dout, x, weight, mean, rstd, accumulate, base, rows),
               n_chunks, 1, N * C)
    _add_column_sums(dweight, dw_part)
    _add_column_sums(dbias, db_part)


def _row_specs(x, stats):
    """Shape specs of a (..., C) tensor and of its per-row statistics: (...) or flat (N,)."""
    check_min_ndim("x", x, 2)
    lead = tuple(f"n{i}" for i in range(x.ndim - 1))
    flat = isinstance(stats, np.ndarray) and stats.ndim == 1 and x.ndim > 2
    return lead + ("C",), (math.prod(x.shape[:-1]),) if flat else lead


def _check_width(x):
    """The statistics are means over the last axis: it needs at least one element."""
    if x.shape[-1] == 0:
        raise ValueError(f"x: expected a last axis (C) of at least 1 to normalize over, got shape {x.shape}")


def _as_rows(a):
    """A C-contiguous (..., C) array as its (N, C) view."""
    return a.reshape(-1, a.shape[-1])


def rmsnorm_forward(out, rstd, x, weight, eps: float = 1e-5):
    """``out = x * rstd * weight`` with ``rstd = 1 / sqrt(mean(x^2) + eps)`` over the last axis.

    ``x``, ``out`` (may be ``x``): ``(..., C)``; ``weight``: ``(C,)``; ``rstd``: ``x.shape[:-1]`` or
    ``(N,)`` (saved for backward).
    """
    xs, ss = _row_specs(x, rstd)
    check_arrays(x=(x, xs), out=(out, xs), rstd=(rstd, ss), weight=(weight, ("C",)),
                 writes=("out", "rstd"), inplace={"out": "x"})
    _check_width(x)
    check_positive_float(eps=eps)
    _rmsnorm_forward(_as_rows(out), rstd.reshape(-1), _as_rows(x), weight, x.dtype.type(eps))


def rmsnorm_backward(dx, dweight, dout, x, weight, rstd):
    """``dx += d out / d x``, ``dweight += d out / d weight`` (contracted with ``dout``)."""
    xs, ss = _row_specs(x, rstd)
    check_arrays(x=(x, xs), dx=(dx, xs), dweight=(dweight, ("C",)), dout=(dout, xs),
                 weight=(weight, ("C",)), rstd=(rstd, ss), writes=("dx", "dweight"))
    _check_width(x)
    _rmsnorm_backward(_as_rows(dx), dweight, _as_rows(dout), _as_rows(x), weight, rstd.reshape(-1), True,
                      np.empty((0, 0), x.dtype))


def layernorm_forward(out, mean, rstd, x, weight, bias, eps: float = 1e-5):
    """``out = (x - mean) * rstd * weight + bias`` over the last axis; ``bias`` may be None.

    ``x``, ``out`` (may be ``x``): ``(..., C)``; ``weight``, ``bias``: ``(C,)``; ``mean``, ``rstd``:
    ``x.shape[:-1]`` or ``(N,)`` (saved for backward).
    """
    xs, ss = _row_specs(x, rstd)
    check_arrays(x=(x, xs), out=(out, xs), mean=(mean, ss), rstd=(rstd, ss), weight=(weight, ("C",)),
                 bias=(bias, ("C",)), optional=("bias",), writes=("out", "mean", "rstd"), inplace={"out": "x"})
    _check_width(x)
    check_positive_float(eps=eps)
    b = np.empty(0, x.dtype) if bias is None else bias
    _layernorm_forward(_as_rows(out), mean.reshape(-1), rstd.reshape(-1), _as_rows(x), weight, b,
                       x.dtype.type(eps))


def layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd):
    """``dx``, ``dweight``, ``dbias`` += LayerNorm gradients; ``dbias`` is None when there is no bias."""
    xs, ss = _row_specs(x, rstd)
    check_arrays(x=(x, xs), dx=(dx, xs), dweight=(dweight, ("C",)), dbias=(dbias, ("C",)),
                 dout=(dout, xs), weight=(weight, ("C",)), mean=(mean, ss), rstd=(rstd, ss), optional=("dbias",),
                 writes=("dx", "dweight", "dbias"))
    _check_width(x)
    db = np.empty(0, x.dtype) if dbias is None else dbias
    _layernorm_backward(_as_rows(dx), dweight, db, _as_rows(dout), _as_rows(x), weight,
                        mean.reshape(-1), rstd.reshape(-1), True, np.empty((0, 0), x.dtype))
