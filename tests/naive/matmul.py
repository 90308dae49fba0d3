"""Float64 references for linear, matmul and bmm, written with einsum (no BLAS route, no tiling)."""

import numpy as np


def _f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


def linear(x, weight, bias=None):
    """x (N, I) @ weight (O, I).T + bias (O,)."""
    x, weight, bias = _f64(x, weight, bias)
    out = np.einsum("ni,oi->no", x, weight)
    return out if bias is None else out + bias


def linear_backward(dout, x, weight):
    """(dx, dweight, dbias) of sum(dout * linear(x, weight, bias))."""
    dout, x, weight = _f64(dout, x, weight)
    return np.einsum("no,oi->ni", dout, weight), np.einsum("no,ni->oi", dout, x), dout.sum(axis=0)


def matmul(a, b):
    """a (M, K) @ b (K, N)."""
    a, b = _f64(a, b)
    return np.einsum("mk,kn->mn", a, b)


def matmul_backward(dout, a, b):
    """(da, db) of sum(dout * matmul(a, b))."""
    dout, a, b = _f64(dout, a, b)
    return np.einsum("mn,kn->mk", dout, b), np.einsum("mk,mn->kn", a, dout)


def bmm(a, b, transpose_b=False):
    """a (G, M, K) @ b (G, K, N), or @ b (G, N, K) read transposed."""
    a, b = _f64(a, b)
    return np.einsum("gmk,gnk->gmn" if transpose_b else "gmk,gkn->gmn", a, b)


def bmm_backward(dout, a, b, transpose_b=False):
    """(da, db) of sum(dout * bmm(a, b, transpose_b))."""
    dout, a, b = _f64(dout, a, b)
    if transpose_b:
        return np.einsum("gmn,gnk->gmk", dout, b), np.einsum("gmn,gmk->gnk", dout, a)
    return np.einsum("gmn,gkn->gmk", dout, b), np.einsum("gmk,gmn->gkn", a, dout)
