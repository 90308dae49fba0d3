"""Softmax kernels over the last axis: plain softmax of ``(..., C)`` and causal softmax of ``(..., T, T)``.

The wrappers view their arrays as rows: ``(N, C)`` with ``N`` the product of the leading axes, and
``(R, T, T)`` for the causal form. Each row subtracts its max before ``exp``. Backward uses the saved
output: ``dx += out * (dout - sum(dout * out))``. The bodies (``*_rows``, ``*_steps``) run through
``numerics.for_rows``.

``-inf`` entries of ``x`` get probability 0. A row whose entries are all ``-inf`` (fully masked) gives
all zeros and a zero gradient, where torch gives NaN. ``+inf`` or NaN entries give NaN, as in torch.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import check_arrays, check_min_ndim
from qorus_jit.core.numerics import for_rows, kernel
from qorus_jit.kernels._math import exp


@kernel
def _softmax_row(o, x):
    """o = exp(x - max x) / sum; (C,). All -inf gives zeros."""
    C = x.shape[0]
    T = x.dtype.type
    m = x[0]
    for j in range(C):
        v = x[j]
        m = v if v > m else m
    if m == -np.inf:
        for j in range(C):
            o[j] = T(0.0)
        return
    s = T(0.0)
    for j in range(C):
        e = exp(x[j] - m)
        o[j] = e
        s += e
    inv = T(1.0) / s
    for j in range(C):
        o[j] *= inv


@kernel
def _softmax_row_backward(dx, dout, o):
    """dx += o * (dout - sum(dout * o)); (C,)."""
    C = o.shape[0]
    dot = dx.dtype.type(0.0)
    for j in range(C):
        dot += dout[j] * o[j]
    for j in range(C):
        dx[j] += o[j] * (dout[j] - dot)


@kernel
def _softmax_rows(out, x, lo, hi):
    """_softmax_forward on rows lo..hi-1."""
    for n in range(lo, hi):
        _softmax_row(out[n], x[n])


@kernel(parallel=True)
def _softmax_forward(out, x):
    """out[n] = softmax(x[n]); out, x (N, C)."""
    for_rows(_softmax_rows, (out, x), x.shape[0], x.size)


@kernel
def _softmax_backward_rows(dx, dout, out, lo, hi):
    """_softmax_backward on rows lo..hi-1."""
    for n in range(lo, hi):
        _softmax_row_backward(dx[n], dout[n], out[n])


@kernel(parallel=True)
def _softmax_backward(dx, dout, out):
    """dx[n] += out[n] * (dout[n] - <dout[n], out[n]>); all (N, C)."""
    for_rows(_softmax_backward_rows, (dx, dout, out), out.shape[0], out.size)


@kernel
def _causal_row(out, x, r, t):
    """out[r, t, :t+1] = softmax(x[r, t, :t+1]); out[r, t, t+1:] = 0; out, x (R, T, T)."""
    _softmax_row(out[r, t, : t + 1], x[r, t, : t + 1])
    o = out[r, t]
    for j in range(t + 1, o.shape[0]):
        o[j] = out.dtype.type(0.0)


@kernel
def _causal_forward_steps(out, x, lo, hi):
    """Steps lo..hi-1 of _causal_softmax_forward: step p does rows t and T-1-t of matrix r (p = r * half + t)."""
    T = x.shape[1]
    half = (T + 1) // 2
    for p in range(lo, hi):
        r, t = p // half, p % half
        _causal_row(out, x, r, t)
        if T - 1 - t != t:
            _causal_row(out, x, r, T - 1 - t)


@kernel(parallel=True)
def _causal_softmax_forward(out, x):
    """out[r, t] = softmax over columns <= t of x[r, t], 0 above the diagonal; out, x (R, T, T).

    Each parallel step does rows t and T-1-t of one matrix, so every step costs about T + 1.
    """
    for_rows(_causal_forward_steps, (out, x), x.shape[0] * ((x.shape[1] + 1) // 2), x.size)


@kernel
def _causal_backward_steps(dx, dout, out, lo, hi):
    """Steps lo..hi-1 of _causal_softmax_backward: step p does rows t and T-1-t of matrix r."""
    T = out.shape[1]
    half = (T + 1) // 2
    for p in range(lo, hi):
        r, t = p // half, p % half
        _softmax_row_backward(dx[r, t, : t + 1], dout[r, t, : t + 1], out[r, t, : t + 1])
        u = T - 1 - t
        if u != t:
            _softmax_row_backward(dx[r, u, : u + 1], dout[r, u, : u + 1], out[r, u, : u + 1])


@kernel(parallel=True)
def _causal_softmax_backward(dx, dout, out):
    """dx[r, t, :t+1] += softmax backward of row t over columns <= t (masked dx unchanged); all (R, T, T)."""
    for_rows(_causal_backward_steps, (dx, dout, out), out.shape[0] * ((out.shape[1] + 1) // 2), out.size)


def _rows(square: bool, writes, inplace=None, **arrays):
    """Validate arrays of one shape, ``(..., C)`` or with ``square`` ``(..., T, T)``, the first one written
    (``writes``, ``inplace`` as in ``check_arrays``); view them as ``(N, C)`` or ``(R, T, T)``. Returns the
    views, or None when the arrays are empty."""
    first_name, first = next(iter(arrays.items()))
    check_min_ndim(first_name, first, 2 if square else 1)
    lead = tuple(f"d{i}" for i in range(first.ndim - (2 if square else 1)))
    spec = lead + (("T", "T") if square else ("C",))
    check_arrays(**{k: (v, spec) for k, v in arrays.items()}, writes=writes, inplace=inplace)
    if first.size == 0:
        return None
    shape = (-1,) + first.shape[-2:] if square else (-1, first.shape[-1])
    return [a.reshape(shape) for a in arrays.values()]


def softmax_forward(out, x):
    """``out = softmax(x)`` over the last axis; ``out`` (may be ``x``), ``x`` (..., C). All -inf rows give
    zeros."""
    views = _rows(False, ("out",), {"out": "x"}, out=out, x=x)
    if views is not None:
        _softmax_forward(*views)


def softmax_backward(dx, dout, out):
    """``dx += out * (dout - sum(dout * out, -1))`` with ``out`` the saved forward output; all (..., C)."""
    views = _rows(False, ("dx",), dx=dx, dout=dout, out=out)
    if views is not None:
        _softmax_backward(*views)


def causal_softmax_forward(out, x):
    """Row ``t`` of each ``(T, T)`` matrix of ``x`` (..., T, T) is softmaxed over columns ``<= t``;
    the entries above the diagonal of ``out`` are exactly 0 (``x`` there is never read). ``out`` may be ``x``."""
    views = _rows(True, ("out",), {"out": "x"}, out=out, x=x)
    if views is not None:
        _causal_softmax_forward(*views)


def causal_softmax_backward(dx, dout, out):
    """Softmax backward of each row over columns ``<= t``; ``dx`` above the diagonal is left as is."""
    views = _rows(True, ("dx",), dx=dx, dout=dout, out=out)
    if views is not None:
        _causal_softmax_backward(*views)
