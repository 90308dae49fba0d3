"""Elementwise kernels: add (residual), mul (gating), scale.

Arrays of any shape are processed as flat views; ``a``, ``b`` and ``out`` share one shape.
Forward writes ``out``; backward accumulates (``+=``) into the gradient buffers.
"""

from __future__ import annotations

from numba import prange

from .._check import check_same_shape as _same_shape
from .._check import check_writeable
from .._check import flat_views as _flat
from ..config import kernel

_CHUNK = 1 << 14  # elements per parallel chunk


@kernel(parallel=True)
def _add_forward(out, a, b):
    """out = a + b; all (n,)."""
    n = out.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            out[i] = a[i] + b[i]


@kernel(parallel=True)
def _add_backward(da, db, dout):
    """da += dout; db += dout; all (n,)."""
    n = dout.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            da[i] += dout[i]
            db[i] += dout[i]


@kernel(parallel=True)
def _mul_forward(out, a, b):
    """out = a * b; all (n,)."""
    n = out.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            out[i] = a[i] * b[i]


@kernel(parallel=True)
def _mul_backward(da, db, dout, a, b):
    """da += dout * b; db += dout * a; all (n,)."""
    n = dout.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            g = dout[i]
            da[i] += g * b[i]
            db[i] += g * a[i]


@kernel(parallel=True)
def _scale_forward(out, a, s):
    """out = s * a; (n,), s a scalar."""
    n = out.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            out[i] = s * a[i]


@kernel(parallel=True)
def _scale_backward(da, dout, s):
    """da += s * dout; (n,), s a scalar."""
    n = dout.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            da[i] += s * dout[i]


def add_forward(out, a, b):
    """``out = a + b`` (any shape, all equal)."""
    _same_shape(out=out, a=a, b=b)
    check_writeable(out=out)
    _add_forward(*_flat(out, a, b))


def add_backward(da, db, dout):
    """``da += dout``, ``db += dout``."""
    _same_shape(da=da, db=db, dout=dout)
    check_writeable(da=da, db=db)
    _add_backward(*_flat(da, db, dout))


def mul_forward(out, a, b):
    """``out = a * b`` (any shape, all equal)."""
    _same_shape(out=out, a=a, b=b)
    check_writeable(out=out)
    _mul_forward(*_flat(out, a, b))


def mul_backward(da, db, dout, a, b):
    """``da += dout * b``, ``db += dout * a``."""
    _same_shape(da=da, db=db, dout=dout, a=a, b=b)
    check_writeable(da=da, db=db)
    _mul_backward(*_flat(da, db, dout, a, b))


def scale_forward(out, a, s: float):
    """``out = s * a``."""
    _same_shape(out=out, a=a)
    check_writeable(out=out)
    _scale_forward(*_flat(out, a), out.dtype.type(s))


def scale_backward(da, dout, s: float):
    """``da += s * dout``."""
    _same_shape(da=da, dout=dout)
    check_writeable(da=da)
    _scale_backward(*_flat(da, dout), da.dtype.type(s))
