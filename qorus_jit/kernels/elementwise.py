"""Elementwise kernels: add (residual), mul (gating), scale.

Arrays of any shape are processed as flat views; ``a``, ``b`` and ``out`` share one shape.
Forward writes ``out``; backward accumulates (``+=``) into the gradient buffers. Each kernel's body is a
serial ``*_range`` kernel over elements ``lo..hi-1``, called once for up to ``config.SERIAL_WORK``
elements (no thread launch) and per chunk of ``_CHUNK`` elements in parallel above.
"""

from __future__ import annotations

from numba import prange

from qorus_jit.core.check import check_same_shape as _same_shape
from qorus_jit.core.check import check_writeable
from qorus_jit.core.check import flat_views as _flat
from qorus_jit.core.numerics import SERIAL_WORK, kernel

_CHUNK = 1 << 14  # elements per parallel chunk; up to SERIAL_WORK elements run on the calling thread


@kernel
def _add_forward_range(out, a, b, lo, hi):
    """_add_forward on elements lo..hi-1."""
    out, a, b = out[lo:hi], a[lo:hi], b[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        out[i] = a[i] + b[i]


@kernel(parallel=True)
def _add_forward(out, a, b):
    """out = a + b; all (n,)."""
    n = out.shape[0]
    if n <= SERIAL_WORK:
        _add_forward_range(out, a, b, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _add_forward_range(out, a, b, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@kernel
def _add_backward_range(da, db, dout, lo, hi):
    """_add_backward on elements lo..hi-1."""
    da, db, dout = da[lo:hi], db[lo:hi], dout[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        da[i] += dout[i]
        db[i] += dout[i]


@kernel(parallel=True)
def _add_backward(da, db, dout):
    """da += dout; db += dout; all (n,)."""
    n = dout.shape[0]
    if n <= SERIAL_WORK:
        _add_backward_range(da, db, dout, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _add_backward_range(da, db, dout, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@kernel
def _mul_forward_range(out, a, b, lo, hi):
    """_mul_forward on elements lo..hi-1."""
    out, a, b = out[lo:hi], a[lo:hi], b[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        out[i] = a[i] * b[i]


@kernel(parallel=True)
def _mul_forward(out, a, b):
    """out = a * b; all (n,)."""
    n = out.shape[0]
    if n <= SERIAL_WORK:
        _mul_forward_range(out, a, b, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _mul_forward_range(out, a, b, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@kernel
def _mul_backward_range(da, db, dout, a, b, lo, hi):
    """_mul_backward on elements lo..hi-1."""
    da, db, dout, a, b = da[lo:hi], db[lo:hi], dout[lo:hi], a[lo:hi], b[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        g = dout[i]
        da[i] += g * b[i]
        db[i] += g * a[i]


@kernel(parallel=True)
def _mul_backward(da, db, dout, a, b):
    """da += dout * b; db += dout * a; all (n,)."""
    n = dout.shape[0]
    if n <= SERIAL_WORK:
        _mul_backward_range(da, db, dout, a, b, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _mul_backward_range(da, db, dout, a, b, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@kernel
def _scale_forward_range(out, a, s, lo, hi):
    """_scale_forward on elements lo..hi-1."""
    out, a = out[lo:hi], a[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        out[i] = s * a[i]


@kernel(parallel=True)
def _scale_forward(out, a, s):
    """out = s * a; (n,), s a scalar."""
    n = out.shape[0]
    if n <= SERIAL_WORK:
        _scale_forward_range(out, a, s, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _scale_forward_range(out, a, s, c * _CHUNK, min(n, (c + 1) * _CHUNK))


@kernel
def _scale_backward_range(da, dout, s, lo, hi):
    """_scale_backward on elements lo..hi-1."""
    da, dout = da[lo:hi], dout[lo:hi]  # from 0: see kernels/activations.py
    for i in range(hi - lo):
        da[i] += s * dout[i]


@kernel(parallel=True)
def _scale_backward(da, dout, s):
    """da += s * dout; (n,), s a scalar."""
    n = dout.shape[0]
    if n <= SERIAL_WORK:
        _scale_backward_range(da, dout, s, 0, n)
    else:
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            _scale_backward_range(da, dout, s, c * _CHUNK, min(n, (c + 1) * _CHUNK))


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
