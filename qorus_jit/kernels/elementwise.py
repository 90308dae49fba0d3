"""Elementwise kernels: add (residual), mul (gating), scale.

Arrays of any shape are processed as flat views; ``a``, ``b`` and ``out`` share one shape.
Forward writes ``out``, which may be an input itself (in place); backward accumulates (``+=``) into the
gradient buffers, which overlap nothing else. Each kernel's body is a serial ``*_range`` kernel over elements
``lo..hi-1``, run by ``numerics.for_chunks`` in chunks of ``_CHUNK``.
"""

from __future__ import annotations

from qorus_jit.core.check import check_real
from qorus_jit.core.check import check_same_shape as _same_shape
from qorus_jit.core.check import flat_views as _flat
from qorus_jit.core.numerics import for_chunks, kernel

_CHUNK = 1 << 14  # elements per parallel chunk


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
    for_chunks(_add_forward_range, (out, a, b), n, _CHUNK, n)


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
    for_chunks(_add_backward_range, (da, db, dout), n, _CHUNK, n)


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
    for_chunks(_mul_forward_range, (out, a, b), n, _CHUNK, n)


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
    for_chunks(_mul_backward_range, (da, db, dout, a, b), n, _CHUNK, n)


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
    for_chunks(_scale_forward_range, (out, a, s), n, _CHUNK, n)


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
    for_chunks(_scale_backward_range, (da, dout, s), n, _CHUNK, n)


def add_forward(out, a, b):
    """``out = a + b`` (any shape, all equal)."""
    _same_shape(out=out, a=a, b=b, writes=("out",), inplace={"out": ("a", "b")})
    _add_forward(*_flat(out, a, b))


def add_backward(da, db, dout):
    """``da += dout``, ``db += dout``."""
    _same_shape(da=da, db=db, dout=dout, writes=("da", "db"))
    _add_backward(*_flat(da, db, dout))


def mul_forward(out, a, b):
    """``out = a * b`` (any shape, all equal)."""
    _same_shape(out=out, a=a, b=b, writes=("out",), inplace={"out": ("a", "b")})
    _mul_forward(*_flat(out, a, b))


def mul_backward(da, db, dout, a, b):
    """``da += dout * b``, ``db += dout * a``."""
    _same_shape(da=da, db=db, dout=dout, a=a, b=b, writes=("da", "db"))
    _mul_backward(*_flat(da, db, dout, a, b))


def scale_forward(out, a, s: float):
    """``out = s * a``."""
    _same_shape(out=out, a=a, writes=("out",), inplace={"out": "a"})
    _scale_forward(*_flat(out, a), out.dtype.type(check_real("s", s)))


def scale_backward(da, dout, s: float):
    """``da += s * dout``."""
    _same_shape(da=da, dout=dout, writes=("da",))
    _scale_backward(*_flat(da, dout), da.dtype.type(check_real("s", s)))
