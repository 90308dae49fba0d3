"""Matrix products: linear (``nn.Linear`` layout), matmul and batched matmul (bmm), forward and backward.

Every product has two routes, chosen by the public functions' ``route=`` keyword:

- ``"blas"`` (default of linear and matmul): ``sgemm``/``dgemm`` of Intel MKL when the ``mkl`` extra is
  installed, else of NumPy's own OpenBLAS (``_blas.py``, ``QORUS_BLAS``), called from numba by ``_gemm_blas``
  with ``beta = 1`` where backward accumulates, so nothing is allocated. A transposed operand is passed as an
  F-contiguous view (``weight.T``), which BLAS reads as transposed, no copy.
- ``"numba"`` (default of bmm): pure numba. For K >= 128, ``_gemm_nt`` computes ``c = a @ bt.T`` with
  both operands contiguous along K: each 4x3 tile of ``c`` keeps 12 accumulators that LLVM vectorizes
  along K (one ``vfmadd`` on ymm registers each) and reduces once per K block. For smaller K,
  ``_gemm_nn`` adds rank-4 updates to two rows of ``c`` at a time. Operands in another layout are
  transposed into scratch first. Blocks of ``c`` (bmm: the matrices of the batch) run in parallel.

On one thread the BLAS route matches NumPy's ``@`` and the numba route comes close to it on large products;
on the many small products of a bmm the numba route, one parallel region for the whole batch, is steadier on
several threads than one BLAS thread team per matrix (``qorus_jit/bench/bench_matmul.py``; figures in
docs/design.md, "Matrix products").

Forward writes ``out``; backward accumulates (``+=``) into the gradient buffers, any of which but
``dweight`` may be ``None`` (no gradient wanted). Layers may call the private kernels directly. Both
routes start threads (BLAS's or numba's), so inside a prange body call only ``_gemm_numba_serial``.

The numba route picks its kernels in Python (``_gemm_numba``), not in a serial kernel around the parallel
ones: numba caches such a caller without the start of its thread pool when the parallel kernels came from
the cache, and a later process that loads it first segfaults (docs/design.md, "Kernels that call parallel
kernels"). Compiled code may call the BLAS route's kernels and ``_gemm_numba_serial``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from qorus_jit.core.check import check_arrays, check_bool, check_choice, check_disjoint, check_writeable
from qorus_jit.core.numerics import copy_row, kernel
from qorus_jit.kernels._blas import gemm as _blas_gemm

ROUTES = ("blas", "numba")

# ---------------------------------------------------------------------------------------------------
# BLAS route

@kernel
def _gemm_blas(c, a, b, beta):
    """c (M, N) = a (M, K) @ b (K, N) + beta * c by BLAS; a, b C- or F-contiguous (e.g. ``w.T``)."""
    M, N = c.shape
    if M == 0 or N == 0:
        return
    if a.shape[1] == 0:
        if beta == 0:
            c[:] = 0
        else:
            c *= beta
        return
    _blas_gemm(c, a, b, beta)


@kernel
def _fill_rows(out, bias):
    """out[n, :] = bias for every row n; out (N, O), bias (O,)."""
    for n in range(out.shape[0]):
        copy_row(out[n], bias)


@kernel
def _bias_grad(dbias, dout):
    """dbias (O,) += dout (N, O).sum(0)."""
    for n in range(dout.shape[0]):
        row = dout[n]
        for o in range(dout.shape[1]):
            dbias[o] += row[o]


@kernel
def _linear_forward(out, x, weight, bias):
    """out (N, O) = x (N, I) @ weight (O, I).T + bias (O,) or None; BLAS route."""
    if bias is not None:
        _fill_rows(out, bias)
        _gemm_blas(out, x, weight.T, 1.0)
    else:
        _gemm_blas(out, x, weight.T, 0.0)


@kernel
def _linear_backward_into(dx, dweight, dbias, dout, x, weight, dx_beta):
    """dx (N, I) = dout (N, O) @ weight (O, I) + dx_beta * dx; dweight += dout.T @ x; dbias (O,) += dout.sum(0).

    Forward: out = x @ weight.T + bias. dx and dbias may be None. ``dx_beta`` 0 writes dx without reading it
    (no zero fill needed before), 1 accumulates into it.
    """
    if dx is not None:
        _gemm_blas(dx, dout, weight, dx_beta)
    _gemm_blas(dweight, dout.T, x, 1.0)
    if dbias is not None:
        _bias_grad(dbias, dout)


@kernel
def _linear_backward(dx, dweight, dbias, dout, x, weight):
    """dx (N, I) += dout (N, O) @ weight (O, I); dweight += dout.T @ x; dbias (O,) += dout.sum(0); BLAS route.

    Forward: out = x @ weight.T + bias. dx and dbias may be None.
    """
    _linear_backward_into(dx, dweight, dbias, dout, x, weight, 1.0)


@kernel
def _matmul_forward(out, a, b):
    """out (M, N) = a (M, K) @ b (K, N); BLAS route."""
    _gemm_blas(out, a, b, 0.0)


@kernel
def _matmul_backward(da, db, dout, a, b):
    """da (M, K) += dout (M, N) @ b.T; db (K, N) += a.T @ dout; BLAS route. da, db may be None."""
    if da is not None:
        _gemm_blas(da, dout, b.T, 1.0)
    if db is not None:
        _gemm_blas(db, a.T, dout, 1.0)


@kernel
def _bmm_forward(out, a, b, transpose_b):
    """out (G, M, N) = a (G, M, K) @ b (G, K, N), or @ b (G, N, K) transposed if transpose_b; BLAS route."""
    for g in range(out.shape[0]):
        if transpose_b:
            _gemm_blas(out[g], a[g], b[g].T, 0.0)
        else:
            _gemm_blas(out[g], a[g], b[g], 0.0)


@kernel
def _bmm_backward(da, db, dout, a, b, transpose_b):
    """da (G, M, K) += dout @ op(b).T; db += a.T @ dout (or dout.T @ a if transpose_b); BLAS route.

    Forward: out[g] = a[g] @ op(b[g]), op(b) = b.T if transpose_b else b. da, db may be None.
    """
    for g in range(dout.shape[0]):
        if transpose_b:
            if da is not None:
                _gemm_blas(da[g], dout[g], b[g], 1.0)
            if db is not None:
                _gemm_blas(db[g], dout[g].T, a[g], 1.0)
        else:
            if da is not None:
                _gemm_blas(da[g], dout[g], b[g].T, 1.0)
            if db is not None:
                _gemm_blas(db[g], a[g].T, dout[g], 1.0)


# ---------------------------------------------------------------------------------------------------
# numba route: register-tiled c = a @ bt.T (both operands contiguous along K), rank-4 row updates
# c += a @ b for small K

_MR = 4  # rows of a register tile of c
_NR = 3  # columns of a register tile: 12 vector accumulators, 4 + 3 loads per K step, 16 ymm registers
_KC_BYTES = 8192  # K block (2048 float32, 1024 float64): 7 rows of a K block stay in L1/L2
_MB = 128  # rows of c per parallel block, at most
_NB = 48  # columns of c per panel: its 48 rows of bt stay in L2 while the row tiles go by
_CHUNKS = 8  # parallel blocks to aim for
_PAD = 16  # extra elements per row of transposed scratch (avoids 4 KiB cache-set aliasing)
_K_NT = 128  # from this K on the tiled kernel beats the rank-4 row updates of _gemm_nn
_NJ = 512  # columns of c per pass of _gemm_nn_rows: 2 rows of c and 4 of b stay in L1
_SERIAL_WORK = 1 << 18  # M * N * K below which a product runs on one thread


@kernel
def _tile(c, a, bt, i0, j0, k0, k1, add):
    """c[i0:i0+4, j0:j0+3] (+)= a[i0:i0+4, k0:k1] @ bt[j0:j0+3, k0:k1].T; assigns unless add."""
    a0 = a[i0, k0:k1]
    a1 = a[i0 + 1, k0:k1]
    a2 = a[i0 + 2, k0:k1]
    a3 = a[i0 + 3, k0:k1]
    b0 = bt[j0, k0:k1]
    b1 = bt[j0 + 1, k0:k1]
    b2 = bt[j0 + 2, k0:k1]
    z = c.dtype.type(0)
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = z
    for k in range(k1 - k0):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        y0 = b0[k]
        y1 = b1[k]
        y2 = b2[k]
        s00 += x0 * y0
        s01 += x0 * y1
        s02 += x0 * y2
        s10 += x1 * y0
        s11 += x1 * y1
        s12 += x1 * y2
        s20 += x2 * y0
        s21 += x2 * y1
        s22 += x2 * y2
        s30 += x3 * y0
        s31 += x3 * y1
        s32 += x3 * y2
    c0 = c[i0, j0:j0 + 3]
    c1 = c[i0 + 1, j0:j0 + 3]
    c2 = c[i0 + 2, j0:j0 + 3]
    c3 = c[i0 + 3, j0:j0 + 3]
    if add:
        s00 += c0[0]
        s01 += c0[1]
        s02 += c0[2]
        s10 += c1[0]
        s11 += c1[1]
        s12 += c1[2]
        s20 += c2[0]
        s21 += c2[1]
        s22 += c2[2]
        s30 += c3[0]
        s31 += c3[1]
        s32 += c3[2]
    c0[0] = s00
    c0[1] = s01
    c0[2] = s02
    c1[0] = s10
    c1[1] = s11
    c1[2] = s12
    c2[0] = s20
    c2[1] = s21
    c2[2] = s22
    c3[0] = s30
    c3[1] = s31
    c3[2] = s32


@kernel
def _dots(c, a, bt, i0, i1, j0, j1, k0, k1, add):
    """c[i0:i1, j0:j1] (+)= a[i0:i1, k0:k1] @ bt[j0:j1, k0:k1].T, one dot product per entry (edges)."""
    for i in range(i0, i1):
        x = a[i, k0:k1]
        for j in range(j0, j1):
            y = bt[j, k0:k1]
            s = c.dtype.type(0)
            for k in range(k1 - k0):
                s += x[k] * y[k]
            if add:
                c[i, j] += s
            else:
                c[i, j] = s


@kernel
def _gemm_nt_block(c, a, bt, K, accumulate, i_lo, i_hi, j_lo, j_hi):
    """c[i_lo:i_hi, j_lo:j_hi] (+)= a[i_lo:i_hi, :K] @ bt[j_lo:j_hi, :K].T; a (M, >= K), bt (N, >= K)."""
    KC = _KC_BYTES // c.itemsize
    for k0 in range(0, K, KC):
        k1 = min(K, k0 + KC)
        add = accumulate or k0 > 0
        for jp in range(j_lo, j_hi, _NB):
            jp1 = min(j_hi, jp + _NB)
            j_full = jp + (jp1 - jp) // _NR * _NR
            for i0 in range(i_lo, i_hi, _MR):
                if i0 + _MR <= i_hi:
                    for j0 in range(jp, j_full, _NR):
                        _tile(c, a, bt, i0, j0, k0, k1, add)
                    _dots(c, a, bt, i0, i0 + _MR, j_full, jp1, k0, k1, add)
                else:
                    _dots(c, a, bt, i0, i_hi, jp, jp1, k0, k1, add)


@kernel(parallel=True)
def _gemm_nt(c, a, bt, K, accumulate):
    """c (M, N) (+)= a[:, :K] @ bt[:, :K].T; a (M, >= K), bt (N, >= K); blocks of c in parallel."""
    M, N = c.shape
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            c[:] = 0
        return
    mb = _MB if M >= _CHUNKS * _MB else ((M + _CHUNKS - 1) // _CHUNKS + _MR - 1) // _MR * _MR
    n_ib = (M + mb - 1) // mb
    n_jb = 1 if n_ib >= _CHUNKS else min((N + _NR - 1) // _NR, (_CHUNKS + n_ib - 1) // n_ib)
    nb = ((N + n_jb - 1) // n_jb + _NR - 1) // _NR * _NR
    n_jb = (N + nb - 1) // nb
    for t in prange(n_ib * n_jb):
        ib = t // n_jb
        jb = t - ib * n_jb
        i_hi = min(M, (ib + 1) * mb)
        _gemm_nt_block(c, a, bt, K, accumulate, ib * mb, i_hi, jb * nb, min(N, (jb + 1) * nb))


@kernel
def _gemm_nn_rows(c, a, b, accumulate, i_lo, i_hi):
    """c[i_lo:i_hi] (+)= a[i_lo:i_hi] @ b; a (M, K), b (K, N), both row-major: rank-4 updates of rows of c.

    For small K, where ``_gemm_nt``'s per-tile reductions would dominate: two rows of c take four rows
    of b per pass, so each vector of c is loaded and stored once per four k-steps.
    """
    K = a.shape[1]
    N = c.shape[1]
    K4 = K - K % 4
    for j0 in range(0, N, _NJ):
        j1 = min(N, j0 + _NJ)
        n = j1 - j0
        for i in range(i_lo, i_hi, 2):
            two = i + 1 < i_hi
            c0 = c[i, j0:j1]
            c1 = c[i + 1 if two else i, j0:j1]
            a0 = a[i]
            a1 = a[i + 1 if two else i]
            if not accumulate:
                c0[:] = 0
                c1[:] = 0
            for k in range(0, K4, 4):
                b0 = b[k, j0:j1]
                b1 = b[k + 1, j0:j1]
                b2 = b[k + 2, j0:j1]
                b3 = b[k + 3, j0:j1]
                x0, x1, x2, x3 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
                if two:
                    y0, y1, y2, y3 = a1[k], a1[k + 1], a1[k + 2], a1[k + 3]
                    for j in range(n):
                        p0, p1, p2, p3 = b0[j], b1[j], b2[j], b3[j]
                        c0[j] += x0 * p0 + x1 * p1 + x2 * p2 + x3 * p3
                        c1[j] += y0 * p0 + y1 * p1 + y2 * p2 + y3 * p3
                else:
                    for j in range(n):
                        c0[j] += x0 * b0[j] + x1 * b1[j] + x2 * b2[j] + x3 * b3[j]
            for k in range(K4, K):
                bk = b[k, j0:j1]
                x0 = a0[k]
                y0 = a1[k] if two else c.dtype.type(0)
                for j in range(n):
                    c0[j] += x0 * bk[j]
                if two:
                    for j in range(n):
                        c1[j] += y0 * bk[j]


@kernel(parallel=True)
def _gemm_nn(c, a, b, accumulate):
    """c (M, N) (+)= a (M, K) @ b (K, N), both row-major, by ``_gemm_nn_rows`` over row blocks in parallel."""
    M = c.shape[0]
    mb = max(2, ((M + _CHUNKS - 1) // _CHUNKS + 1) // 2 * 2)
    for t in prange((M + mb - 1) // mb):
        _gemm_nn_rows(c, a, b, accumulate, t * mb, min(M, (t + 1) * mb))


@kernel
def _transpose_rows(dst, src, r0, r1):
    """dst[:, r0:r1] = src[r0:r1].T; src (R, C), dst (C, >= R); 16-row strips."""
    C = src.shape[1]
    for s0 in range(r0, r1, 16):
        s1 = min(r1, s0 + 16)
        for j in range(C):
            d = dst[j, s0:s1]
            for r in range(s1 - s0):
                d[r] = src[s0 + r, j]


@kernel(parallel=True)
def _transpose(dst, src):
    """dst[:, :R] = src.T; src (R, C), dst (C, >= R); strips of 64 rows in parallel."""
    R = src.shape[0]
    for t in prange((R + 63) // 64):
        _transpose_rows(dst, src, t * 64, min(R, (t + 1) * 64))


def _transposed(src, pad):
    """New scratch (C, R + pad) holding src (R, C).T in its first R columns; parallel."""
    dst = np.empty((src.shape[1], src.shape[0] + pad), src.dtype)
    _transpose(dst, src)
    return dst


@kernel
def _transposed_serial(src, pad):
    """``_transposed`` on one thread."""
    dst = np.empty((src.shape[1], src.shape[0] + pad), src.dtype)
    _transpose_rows(dst, src, 0, src.shape[0])
    return dst


def _gemm_numba(c, a, b, trans_a, trans_b, accumulate):
    """c (M, N) (+)= op(a) @ op(b); op(a) (M, K) is a.T if trans_a else a, op(b) (K, N) is b.T if trans_b.

    Operands in the wrong layout are transposed into scratch first. K >= 128 runs the register-tiled
    ``_gemm_nt`` (a and b.T contiguous along K), smaller K ``_gemm_nn`` (a and b row-major); both run
    blocks of c in parallel. Products too small to pay for starting the threads run serially. Python, so
    that no cached serial kernel calls the parallel ones (module docstring).
    """
    M, N = c.shape
    K = a.shape[0] if trans_a else a.shape[1]
    if M * N * K < _SERIAL_WORK:
        _gemm_numba_serial(c, a, b, trans_a, trans_b, accumulate)
        return
    if K < _K_NT:
        ar = _transposed(a, 0) if trans_a else a
        br = _transposed(b, 0) if trans_b else b
        _gemm_nn(c, ar, br, accumulate)
    else:
        at = _transposed(a, _PAD) if trans_a else a
        bt = b if trans_b else _transposed(b, _PAD)
        _gemm_nt(c, at, bt, K, accumulate)


@kernel
def _gemm_numba_serial(c, a, b, trans_a, trans_b, accumulate):
    """``_gemm_numba`` on one thread, for a caller's prange body."""
    M, N = c.shape
    K = a.shape[0] if trans_a else a.shape[1]
    if M == 0 or N == 0:
        return
    if K == 0:
        if not accumulate:
            c[:] = 0
        return
    if K < _K_NT:
        ar = _transposed_serial(a, 0) if trans_a else a
        br = _transposed_serial(b, 0) if trans_b else b
        _gemm_nn_rows(c, ar, br, accumulate, 0, M)
    else:
        at = _transposed_serial(a, _PAD) if trans_a else a
        bt = b if trans_b else _transposed_serial(b, _PAD)
        _gemm_nt_block(c, at, bt, K, accumulate, 0, M, 0, N)


def _linear_forward_numba(out, x, weight, bias):
    """out (N, O) = x (N, I) @ weight (O, I).T + bias (O,) or None; numba route."""
    if bias is not None:
        _fill_rows(out, bias)
    _gemm_numba(out, x, weight, False, True, bias is not None)


def _linear_backward_numba(dx, dweight, dbias, dout, x, weight):
    """dx (N, I) += dout (N, O) @ weight (O, I); dweight += dout.T @ x; dbias (O,) += dout.sum(0).

    numba route; dx and dbias may be None.
    """
    if dx is not None:
        _gemm_numba(dx, dout, weight, False, False, True)
    _gemm_numba(dweight, dout, x, True, False, True)
    if dbias is not None:
        _bias_grad(dbias, dout)


def _matmul_forward_numba(out, a, b):
    """out (M, N) = a (M, K) @ b (K, N); numba route."""
    _gemm_numba(out, a, b, False, False, False)


def _matmul_backward_numba(da, db, dout, a, b):
    """da (M, K) += dout (M, N) @ b.T; db (K, N) += a.T @ dout; numba route. da, db may be None."""
    if da is not None:
        _gemm_numba(da, dout, b, False, True, True)
    if db is not None:
        _gemm_numba(db, a, dout, True, False, True)


@kernel(parallel=True)
def _bmm_forward_numba(out, a, b, transpose_b):
    """out (G, M, N) = a (G, M, K) @ b (G, K, N), or @ b (G, N, K) transposed if transpose_b; numba route."""
    for g in prange(out.shape[0]):
        _gemm_numba_serial(out[g], a[g], b[g], False, transpose_b, False)


@kernel(parallel=True)
def _bmm_backward_numba(da, db, dout, a, b, transpose_b):
    """da (G, M, K) += dout @ op(b).T; db += a.T @ dout (or dout.T @ a if transpose_b); numba route.

    Forward: out[g] = a[g] @ op(b[g]), op(b) = b.T if transpose_b else b. da, db may be None.
    """
    for g in prange(dout.shape[0]):
        if da is not None:
            _gemm_numba_serial(da[g], dout[g], b[g], False, not transpose_b, True)
        if db is not None:
            if transpose_b:
                _gemm_numba_serial(db[g], dout[g], a[g], True, False, True)
            else:
                _gemm_numba_serial(db[g], a[g], dout[g], True, False, True)


# ---------------------------------------------------------------------------------------------------
# public wrappers

_KERNELS = {
    "blas": (_linear_forward, _linear_backward, _matmul_forward, _matmul_backward, _bmm_forward,
             _bmm_backward),
    "numba": (_linear_forward_numba, _linear_backward_numba, _matmul_forward_numba, _matmul_backward_numba,
              _bmm_forward_numba, _bmm_backward_numba),
}


def _route(route, i):
    check_choice("route", route, ROUTES)
    return _KERNELS[route][i]


def linear_forward(out, x, weight, bias, route: str = "blas"):
    """``out (N, O) = x (N, I) @ weight (O, I).T + bias (O,)``; ``bias`` may be None."""
    check_arrays(x=(x, ("N", "in_features")), weight=(weight, ("out_features", "in_features")),
                 bias=(bias, ("out_features",)), out=(out, ("N", "out_features")), optional=("bias",))
    check_writeable(out=out)
    check_disjoint({"out": out}, {"x": x, "weight": weight, "bias": bias})
    _route(route, 0)(out, x, weight, bias)


def linear_backward(dx, dweight, dbias, dout, x, weight, route: str = "blas"):
    """``dx += dout @ weight``, ``dweight += dout.T @ x``, ``dbias += dout.sum(0)``; dx, dbias may be None."""
    check_arrays(x=(x, ("N", "in_features")), weight=(weight, ("out_features", "in_features")),
                 dout=(dout, ("N", "out_features")), dx=(dx, ("N", "in_features")),
                 dweight=(dweight, ("out_features", "in_features")), dbias=(dbias, ("out_features",)),
                 optional=("dx", "dbias"))
    check_writeable(dx=dx, dweight=dweight, dbias=dbias)
    check_disjoint({"dx": dx, "dweight": dweight, "dbias": dbias}, {"dout": dout, "x": x, "weight": weight})
    _route(route, 1)(dx, dweight, dbias, dout, x, weight)


def matmul_forward(out, a, b, route: str = "blas"):
    """``out (M, N) = a (M, K) @ b (K, N)``."""
    check_arrays(a=(a, ("M", "K")), b=(b, ("K", "N")), out=(out, ("M", "N")))
    check_writeable(out=out)
    check_disjoint({"out": out}, {"a": a, "b": b})
    _route(route, 2)(out, a, b)


def matmul_backward(da, db, dout, a, b, route: str = "blas"):
    """``da += dout @ b.T``, ``db += a.T @ dout``; da or db may be None."""
    check_arrays(a=(a, ("M", "K")), b=(b, ("K", "N")), dout=(dout, ("M", "N")), da=(da, ("M", "K")),
                 db=(db, ("K", "N")), optional=("da", "db"))
    check_writeable(da=da, db=db)
    check_disjoint({"da": da, "db": db}, {"dout": dout, "a": a, "b": b})
    _route(route, 3)(da, db, dout, a, b)


def _b_spec(transpose_b):
    check_bool(transpose_b=transpose_b)
    return ("G", "N", "K") if transpose_b else ("G", "K", "N")


def bmm_forward(out, a, b, transpose_b: bool = False, route: str = "numba"):
    """``out[g] = a[g] @ b[g]`` (G, M, N); with ``transpose_b`` b is (G, N, K) and out[g] = a[g] @ b[g].T."""
    check_arrays(a=(a, ("G", "M", "K")), b=(b, _b_spec(transpose_b)), out=(out, ("G", "M", "N")))
    check_writeable(out=out)
    check_disjoint({"out": out}, {"a": a, "b": b})
    _route(route, 4)(out, a, b, bool(transpose_b))


def bmm_backward(da, db, dout, a, b, transpose_b: bool = False, route: str = "numba"):
    """Gradients of ``bmm_forward``: ``da += dout @ op(b).T``, ``db += a.T @ dout`` (``dout.T @ a`` if
    ``transpose_b``); da or db may be None."""
    spec = _b_spec(transpose_b)
    check_arrays(a=(a, ("G", "M", "K")), b=(b, spec), dout=(dout, ("G", "M", "N")), da=(da, ("G", "M", "K")),
                 db=(db, spec), optional=("da", "db"))
    check_writeable(da=da, db=db)
    check_disjoint({"da": da, "db": db}, {"dout": dout, "a": a, "b": b})
    _route(route, 5)(da, db, dout, a, b, bool(transpose_b))
