"""Embedding lookup: ``out[n] = weight[ids[n]]`` and its scatter-add backward.

Kernels see ``ids`` flat as ``(N,)`` and ``out``/``dout`` as ``(N, C)``; the public wrappers accept
``ids`` of any shape ``(...)`` (usually ``(B, T)``) with ``out`` of shape ``(..., C)``.
The same id may appear at many positions, so backward parallelises over blocks of columns: each
chunk owns disjoint columns of ``dweight`` and walks all rows in order (deterministic sums). The bodies
(``*_rows``, ``*_cols``) run through ``numerics.for_rows`` and ``for_chunks``.
"""

from __future__ import annotations

from qorus_jit.core.check import check_arrays, check_index, check_min_ndim
from qorus_jit.core.numerics import for_chunks, for_rows, kernel

_COLS = 64  # columns of dweight per parallel chunk in backward


@kernel
def _embedding_forward_rows(out, ids, weight, lo, hi):
    """_embedding_forward on rows lo..hi-1."""
    C = out.shape[1]
    for n in range(lo, hi):
        row = ids[n]
        for j in range(C):
            out[n, j] = weight[row, j]


@kernel(parallel=True)
def _embedding_forward(out, ids, weight):
    """out (N, C) = weight[ids]; ids (N,) in [0, V), weight (V, C)."""
    for_rows(_embedding_forward_rows, (out, ids, weight), out.shape[0], out.size)


@kernel
def _embedding_backward_cols(dweight, dout, ids, j0, j1):
    """_embedding_backward on columns j0..j1-1: all rows of dout in order."""
    for n in range(dout.shape[0]):
        # out[n, j] = weight[ids[n], j]; row views count from 0 and vectorize (see kernels/activations.py)
        dw, g = dweight[ids[n], j0:j1], dout[n, j0:j1]
        for j in range(j1 - j0):
            dw[j] += g[j]


@kernel(parallel=True)
def _embedding_backward(dweight, dout, ids):
    """dweight (V, C) += scatter of dout (N, C) to rows ids (N,) in [0, V)."""
    for_chunks(_embedding_backward_cols, (dweight, dout, ids), dout.shape[1], _COLS, dout.size)


def _check_embedding(out_name, out, ids, weight_name, weight, written):
    """Validate weight (V, C), out (*ids.shape, C), ids int32/int64 in [0, V) and that ``written`` (out or
    weight) shares memory with nothing else."""
    check_min_ndim("ids", ids, 1)
    dims = check_arrays(**{weight_name: (weight, ("V", "C")), out_name: (out, ids.shape + ("C",))},
                        writes=(written,), reads={"ids": ids})
    check_index("ids", ids, ids.shape, dims["V"])


def embedding_forward(out, ids, weight):
    """``out = weight[ids]``.

    ``ids``: ``(...)`` int32/int64 in ``[0, V)``; ``weight``: ``(V, C)``; ``out``: ``(..., C)``.
    """
    _check_embedding("out", out, ids, "weight", weight, "out")
    _embedding_forward(out.reshape(ids.size, out.shape[-1]), ids.reshape(-1), weight)  # not -1: C may be 0


def embedding_backward(dweight, dout, ids):
    """``dweight[ids[n]] += dout[n]`` for every position ``n`` (repeated ids add up)."""
    _check_embedding("dout", dout, ids, "dweight", dweight, "dweight")
    _embedding_backward(dweight, dout.reshape(ids.size, dout.shape[-1]), ids.reshape(-1))
