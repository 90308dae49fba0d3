import numpy as np
import pytest

from qorus_jit.core.numerics import kernel
from qorus_jit.kernels import matmul as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import matmul as naive

ROUTES = ["blas", "numba"]
# (rows, inner, cols): size 1, sizes off multiples of 3/4/8/16, inner sizes on both sides of the
# numba route's switch from row updates (K < 128) to register tiles, products big enough for its
# parallel paths (rows * inner * cols >= 2**18), and an empty inner size.
LINEAR_SHAPES = [(1, 1, 1), (1, 33, 17), (3, 17, 5), (17, 65, 33), (33, 130, 17), (65, 129, 66),
                 (129, 65, 40), (4, 0, 3)]
BMM_SHAPES = [(1, 1, 1, 1), (3, 5, 17, 7), (2, 33, 130, 17), (2, 65, 64, 3)]


def _rand_all(rng, *shapes, dtype=np.float32):
    return [rand(rng, *s, dtype=dtype) for s in shapes]


# ----------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_forward_matches_naive(route, shape):
    N, I, O = shape
    x, w, b = _rand_all(np.random.default_rng(0), (N, I), (O, I), (O,))
    out = np.full((N, O), np.nan, np.float32)
    K.linear_forward(out, x, w, b, route=route)
    assert_close(out, naive.linear(x, w, b))
    K.linear_forward(out, x, w, None, route=route)
    assert_close(out, naive.linear(x, w))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_matmul_forward_matches_naive(route, shape):
    M, Kd, N = shape
    a, b = _rand_all(np.random.default_rng(1), (M, Kd), (Kd, N))
    out = np.full((M, N), np.nan, np.float32)
    K.matmul_forward(out, a, b, route=route)
    assert_close(out, naive.matmul(a, b))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("shape", BMM_SHAPES)
def test_bmm_forward_matches_naive(route, transpose_b, shape):
    G, M, Kd, N = shape
    a, b = _rand_all(np.random.default_rng(2), (G, M, Kd), (G, N, Kd) if transpose_b else (G, Kd, N))
    out = np.full((G, M, N), np.nan, np.float32)
    K.bmm_forward(out, a, b, transpose_b, route=route)
    assert_close(out, naive.bmm(a, b, transpose_b))


@pytest.mark.parametrize("route", ROUTES)
def test_long_inner_dimension(route):
    """K beyond one K block of the numba route (2048 float32 elements): partial sums are added up."""
    rng = np.random.default_rng(12)
    a, b = rand(rng, 5, 2100, scale=0.1), rand(rng, 2100, 7, scale=0.1)
    out = np.empty((5, 7), np.float32)
    K.matmul_forward(out, a, b, route=route)
    assert_close(out, naive.matmul(a, b))
    x, w = rand(rng, 3, 2100, scale=0.1), rand(rng, 130, 2100, scale=0.1)
    out = np.empty((3, 130), np.float32)
    K.linear_forward(out, x, w, None, route=route)
    assert_close(out, naive.linear(x, w))


# ------------------------------------------------------------------- backward against the reference


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_backward_matches_naive_and_accumulates(route, shape):
    N, I, O = shape
    x, w, g, dx, dw, db = _rand_all(np.random.default_rng(3), (N, I), (O, I), (N, O), (N, I), (O, I), (O,))
    want_dx, want_dw, want_db = naive.linear_backward(g, x, w)
    dx0, dw0, db0 = dx.copy(), dw.copy(), db.copy()
    K.linear_backward(dx, dw, db, g, x, w, route=route)
    assert_close(dx, dx0 + want_dx, what="dx")
    assert_close(dw, dw0 + want_dw, what="dweight")
    assert_close(db, db0 + want_db, what="dbias")
    K.linear_backward(None, dw, None, g, x, w, route=route)
    assert_close(dw, dw0 + 2 * want_dw, what="dweight, second call")
    assert_close(dx, dx0 + want_dx, what="dx untouched")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_matmul_backward_matches_naive_and_accumulates(route, shape):
    M, Kd, N = shape
    a, b, g, da, db = _rand_all(np.random.default_rng(4), (M, Kd), (Kd, N), (M, N), (M, Kd), (Kd, N))
    want_da, want_db = naive.matmul_backward(g, a, b)
    da0, db0 = da.copy(), db.copy()
    K.matmul_backward(da, db, g, a, b, route=route)
    assert_close(da, da0 + want_da, what="da")
    assert_close(db, db0 + want_db, what="db")
    K.matmul_backward(None, db, g, a, b, route=route)
    K.matmul_backward(da, None, g, a, b, route=route)
    assert_close(da, da0 + 2 * want_da, what="da, second call")
    assert_close(db, db0 + 2 * want_db, what="db, second call")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("shape", BMM_SHAPES)
def test_bmm_backward_matches_naive_and_accumulates(route, transpose_b, shape):
    G, M, Kd, N = shape
    b_shape = (G, N, Kd) if transpose_b else (G, Kd, N)
    a, b, g, da, db = _rand_all(np.random.default_rng(5), (G, M, Kd), b_shape, (G, M, N), (G, M, Kd), b_shape)
    want_da, want_db = naive.bmm_backward(g, a, b, transpose_b)
    da0, db0 = da.copy(), db.copy()
    K.bmm_backward(da, db, g, a, b, transpose_b, route=route)
    assert_close(da, da0 + want_da, what="da")
    assert_close(db, db0 + want_db, what="db")
    K.bmm_backward(None, db, g, a, b, transpose_b, route=route)
    assert_close(db, db0 + 2 * want_db, what="db, second call")


# ------------------------------------------------------------- backward against finite differences


def _loss(forward, out, g):
    def loss():
        forward()
        return float((out * g).sum())
    return loss


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 130, 3)])
def test_linear_backward_matches_finite_differences(route, shape):
    N, I, O = shape
    x, w, b, g = _rand_all(np.random.default_rng(6), (N, I), (O, I), (O,), (N, O), dtype=np.float64)
    out = np.empty((N, O))
    loss = _loss(lambda: K.linear_forward(out, x, w, b, route=route), out, g)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    K.linear_backward(dx, dw, db, g, x, w, route=route)
    assert_close(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-8, what="dx")
    assert_close(dw, fd_grad(loss, w), rtol=1e-6, atol=1e-8, what="dweight")
    assert_close(db, fd_grad(loss, b), rtol=1e-6, atol=1e-8, what="dbias")


@pytest.mark.parametrize("route", ROUTES)
def test_matmul_backward_matches_finite_differences(route):
    rng = np.random.default_rng(7)
    a, b, g = _rand_all(rng, (3, 5), (5, 2), (3, 2), dtype=np.float64)
    out = np.empty((3, 2))
    loss = _loss(lambda: K.matmul_forward(out, a, b, route=route), out, g)
    da, db = np.zeros_like(a), np.zeros_like(b)
    K.matmul_backward(da, db, g, a, b, route=route)
    assert_close(da, fd_grad(loss, a), rtol=1e-6, atol=1e-8, what="da")
    assert_close(db, fd_grad(loss, b), rtol=1e-6, atol=1e-8, what="db")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("transpose_b", [False, True])
def test_bmm_backward_matches_finite_differences(route, transpose_b):
    rng = np.random.default_rng(8)
    b_shape = (2, 4, 3) if transpose_b else (2, 3, 4)
    a, b, g = _rand_all(rng, (2, 2, 3), b_shape, (2, 2, 4), dtype=np.float64)
    out = np.empty((2, 2, 4))
    loss = _loss(lambda: K.bmm_forward(out, a, b, transpose_b, route=route), out, g)
    da, db = np.zeros_like(a), np.zeros_like(b)
    K.bmm_backward(da, db, g, a, b, transpose_b, route=route)
    assert_close(da, fd_grad(loss, a), rtol=1e-6, atol=1e-8, what="da")
    assert_close(db, fd_grad(loss, b), rtol=1e-6, atol=1e-8, what="db")


# ------------------------------------------------------------------------------------------ torch


@pytest.mark.parametrize("route", ROUTES)
def test_linear_matches_torch(route):
    torch = torch_or_skip()
    x, w, b, g = _rand_all(np.random.default_rng(9), (7, 130), (33, 130), (33,), (7, 33))
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(g))
    out = np.empty((7, 33), np.float32)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    K.linear_forward(out, x, w, b, route=route)
    K.linear_backward(dx, dw, db, g, x, w, route=route)
    assert_close(out, ty.detach().numpy(), what="out")
    assert_close(dx, tx.grad.numpy(), what="dx")
    assert_close(dw, tw.grad.numpy(), what="dweight")
    assert_close(db, tb.grad.numpy(), what="dbias")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul_and_bmm_match_torch(route, transpose_b):
    torch = torch_or_skip()
    rng = np.random.default_rng(10)
    a, b, g = _rand_all(rng, (9, 17), (17, 5), (9, 5))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta @ tb).backward(torch.tensor(g))
    out, da, db = np.empty((9, 5), np.float32), np.zeros_like(a), np.zeros_like(b)
    K.matmul_forward(out, a, b, route=route)
    K.matmul_backward(da, db, g, a, b, route=route)
    assert_close(out, (ta @ tb).detach().numpy(), what="matmul out")
    assert_close(da, ta.grad.numpy(), what="matmul da")
    assert_close(db, tb.grad.numpy(), what="matmul db")

    b_shape = (3, 6, 16) if transpose_b else (3, 16, 6)
    a, b, g = _rand_all(rng, (3, 5, 16), b_shape, (3, 5, 6))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.bmm(ta, tb.transpose(1, 2) if transpose_b else tb)
    ty.backward(torch.tensor(g))
    out, da, db = np.empty((3, 5, 6), np.float32), np.zeros_like(a), np.zeros_like(b)
    K.bmm_forward(out, a, b, transpose_b, route=route)
    K.bmm_backward(da, db, g, a, b, transpose_b, route=route)
    assert_close(out, ty.detach().numpy(), what="bmm out")
    assert_close(da, ta.grad.numpy(), what="bmm da")
    assert_close(db, tb.grad.numpy(), what="bmm db")


# ------------------------------------------------------------------------------------- bad inputs


def test_linear_bad_inputs_raise():
    f32 = np.float32
    x, w, b, out = np.zeros((4, 3), f32), np.zeros((5, 3), f32), np.zeros(5, f32), np.zeros((4, 5), f32)
    with pytest.raises(ValueError, match=r"weight: expected shape \(out_features, in_features\)"):
        K.linear_forward(out, x, np.zeros((5, 4), f32), b)  # wrong in_features
    with pytest.raises(ValueError, match=r"weight: expected shape .*\(axis 1 is 5, expected 3\)"):
        K.linear_forward(out, x, np.ascontiguousarray(w.T), b)  # (in, out) layout instead of nn.Linear's
    with pytest.raises(ValueError, match="weight: expected a C-contiguous array"):
        K.linear_forward(np.zeros((4, 3), f32), x, np.zeros((3, 3), f32).T, np.zeros(3, f32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(out_features,\)"):
        K.linear_forward(out, x, w, np.zeros(4, f32))
    with pytest.raises(ValueError, match="bias: expected 1-D array"):
        K.linear_forward(out, x, w, np.zeros((1, 5), f32))
    with pytest.raises(ValueError, match=r"out: expected shape \(N, out_features\)"):
        K.linear_forward(np.zeros((4, 6), f32), x, w, b)
    with pytest.raises(ValueError, match="x: expected 2-D array"):
        K.linear_forward(out, np.zeros((2, 2, 3), f32), w, b)
    with pytest.raises(TypeError, match="weight: expected the dtype of x"):
        K.linear_forward(out, x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        K.linear_forward(out, x.astype(np.int64), w, b)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        K.linear_forward(out, np.zeros((4, 6), f32)[:, ::2], w, b)
    with pytest.raises(TypeError, match="bias: expected a numpy array, got list"):
        K.linear_forward(out, x, w, [0.0] * 5)
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        ro = np.zeros((4, 5), f32)
        ro.flags.writeable = False
        K.linear_forward(ro, x, w, b)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap x"):
        sq = np.zeros((4, 4), f32)
        K.linear_forward(sq, sq, np.zeros((4, 4), f32), None)
    with pytest.raises(ValueError, match="route: expected one of 'blas', 'numba', got 'cuda'"):
        K.linear_forward(out, x, w, b, route="cuda")
    with pytest.raises(TypeError, match="out: expected a numpy array, got None"):
        K.linear_forward(None, x, w, b)

    g, dx, dw, db = np.zeros((4, 5), f32), np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    with pytest.raises(ValueError, match=r"dout: expected shape \(N, out_features\)"):
        K.linear_backward(dx, dw, db, np.zeros((4, 6), f32), x, w)
    with pytest.raises(ValueError, match=r"dweight: expected shape \(out_features, in_features\)"):
        K.linear_backward(dx, np.zeros((3, 5), f32), db, g, x, w)
    with pytest.raises(ValueError, match=r"dbias: expected shape \(out_features,\)"):
        K.linear_backward(dx, dw, np.zeros(3, f32), g, x, w)
    with pytest.raises(TypeError, match="dx: expected the dtype of x"):
        K.linear_backward(dx.astype(np.float64), dw, db, g, x, w)
    with pytest.raises(TypeError, match="dweight: expected a numpy array, got None"):
        K.linear_backward(dx, None, db, g, x, w)
    with pytest.raises(ValueError, match="dx: expected a buffer that does not overlap dweight"):
        both = np.zeros((4, 3), f32)
        K.linear_backward(both, both, None, np.zeros((4, 4), f32), x, np.zeros((4, 3), f32))
    with pytest.raises(ValueError, match="dweight: expected a buffer that does not overlap weight"):
        K.linear_backward(dx, w, db, g, x, w)


def test_matmul_and_bmm_bad_inputs_raise():
    f32 = np.float32
    a, b, out = np.zeros((4, 3), f32), np.zeros((3, 5), f32), np.zeros((4, 5), f32)
    with pytest.raises(ValueError, match=r"b: expected shape \(K, N\) .*\(axis 0 is 4, expected 3\)"):
        K.matmul_forward(out, a, np.zeros((4, 5), f32))
    with pytest.raises(ValueError, match="b: expected 2-D array"):
        K.matmul_forward(out, a, np.zeros((1, 3, 5), f32))
    with pytest.raises(TypeError, match="b: expected the dtype of a"):
        K.matmul_forward(out, a, b.astype(np.float64))
    with pytest.raises(ValueError, match="a: expected a C-contiguous array"):
        K.matmul_forward(out, np.zeros((3, 4), f32).T, b)
    with pytest.raises(ValueError, match=r"da: expected shape \(M, K\)"):
        K.matmul_backward(np.zeros((4, 4), f32), None, out, a, b)
    with pytest.raises(ValueError, match="route: expected one of"):
        K.matmul_backward(None, None, out, a, b, route=None)

    a3, b3, o3 = np.zeros((2, 4, 3), f32), np.zeros((2, 3, 5), f32), np.zeros((2, 4, 5), f32)
    with pytest.raises(ValueError, match=r"b: expected shape \(G, N, K\)"):
        K.bmm_forward(o3, a3, b3, transpose_b=True)  # b not in (G, N, K) layout
    with pytest.raises(ValueError, match=r"b: expected shape \(G, K, N\) .*\(axis 0 is 3, expected 2\)"):
        K.bmm_forward(o3, a3, np.zeros((3, 3, 5), f32))
    with pytest.raises(ValueError, match="a: expected 3-D array"):
        K.bmm_forward(o3, a3[0], b3)
    with pytest.raises(TypeError, match="transpose_b: expected a bool, got 'yes'"):
        K.bmm_forward(o3, a3, b3, transpose_b="yes")
    with pytest.raises(ValueError, match="db: expected a C-contiguous array"):
        K.bmm_backward(None, np.zeros((2, 5, 3), f32).transpose(0, 2, 1), o3, a3, b3)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap a"):
        sq = np.zeros((2, 3, 3), f32)
        K.bmm_forward(sq, sq, np.zeros((2, 3, 3), f32))
    with pytest.raises(ValueError, match="route: expected one of"):
        K.bmm_forward(o3, a3, b3, route="BLAS")


@kernel
def _two_layers(h, y, x, w1, w2):
    """h = x @ w1.T by the BLAS route, y = h @ w2.T by the numba route's serial kernel, from nopython code (a serial
    kernel must not call the parallel ones: docs/design.md, "Kernels that call parallel kernels")."""
    K._linear_forward(h, x, w1, None)
    K._gemm_numba_serial(y, h, w2, False, True, False)


def test_private_kernels_run_inside_numba():
    rng = np.random.default_rng(11)
    x, w1, w2 = _rand_all(rng, (5, 7), (6, 7), (3, 6))
    h, y = np.empty((5, 6), np.float32), np.empty((5, 3), np.float32)
    _two_layers(h, y, x, w1, w2)
    assert_close(y, naive.linear(naive.linear(x, w1), w2))


def test_blas_fallback_gemm_matches_numpy():
    """The NumPy fallback registered when NumPy bundles no OpenBLAS computes the same row-major gemm."""
    import ctypes

    from qorus_jit.kernels._blas import NO_TRANS, ROW_MAJOR, TRANS, _fallback

    rng = np.random.default_rng(0)
    for dtype, ctype in ((np.float32, ctypes.c_float), (np.float64, ctypes.c_double)):
        fn = _fallback(dtype, ctype)
        for ta, tb in ((NO_TRANS, NO_TRANS), (TRANS, NO_TRANS), (NO_TRANS, TRANS), (TRANS, TRANS)):
            M, N, K = 3, 5, 4
            a = rng.standard_normal((M, K) if ta == NO_TRANS else (K, M)).astype(dtype)
            b = rng.standard_normal((K, N) if tb == NO_TRANS else (N, K)).astype(dtype)
            c = rng.standard_normal((M, N)).astype(dtype)
            want = (a if ta == NO_TRANS else a.T) @ (b if tb == NO_TRANS else b.T) + 0.5 * c
            fn(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.5,
               c.ctypes.data, N)
            np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_blas_fallback_bf16_gemm_matches_numpy():
    """The NumPy fallback of the bf16 product (bf16 bits in A and B, float32 C), registered where MKL is absent."""
    import ctypes

    from qorus_jit.kernels._blas import NO_TRANS, ROW_MAJOR, TRANS, _fallback

    rng = np.random.default_rng(1)
    fn = _fallback(np.float32, ctypes.c_float, ctypes.c_uint16)

    def values(bits):
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    for ta, tb in ((NO_TRANS, NO_TRANS), (NO_TRANS, TRANS), (TRANS, TRANS)):
        M, N, K = 3, 5, 4
        a = (rng.standard_normal((M, K) if ta == NO_TRANS else (K, M)).astype(np.float32).view(np.uint32) >> 16)
        b = (rng.standard_normal((K, N) if tb == NO_TRANS else (N, K)).astype(np.float32).view(np.uint32) >> 16)
        a, b = a.astype(np.uint16), b.astype(np.uint16)
        c = rng.standard_normal((M, N)).astype(np.float32)
        av, bv = values(a), values(b)
        want = (av if ta == NO_TRANS else av.T) @ (bv if tb == NO_TRANS else bv.T) + 0.5 * c
        fn(ROW_MAJOR, ta, tb, M, N, K, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.5,
           c.ctypes.data, N)
        np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


_BLAS_CHECK = """
import numpy as np
from qorus_jit.kernels import _blas
from qorus_jit.kernels.matmul import linear_backward, linear_forward

rng = np.random.default_rng(0)
worst = 0.0
for dtype in (np.float32, np.float64):
    x, w, b, dy = (rng.standard_normal(s).astype(dtype) for s in ((37, 29), (23, 29), (23,), (37, 23)))
    y = np.empty((37, 23), dtype)
    linear_forward(y, x, w, b)
    dx, dw, db = np.ones((37, 29), dtype), np.ones((23, 29), dtype), np.ones(23, dtype)
    linear_backward(dx, dw, db, dy, x, w)  # adds: dx += dy @ w, dw += dy.T @ x (beta = 1 paths)
    x, w, b, dy = (a.astype(np.float64) for a in (x, w, b, dy))
    for got, want in ((y, x @ w.T + b), (dx, 1 + dy @ w), (dw, 1 + dy.T @ x), (db, 1 + dy.sum(0))):
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
print(_blas.BLAS_SOURCE, "|", worst)
"""


def _blas_mkl_installed():
    import sys
    from pathlib import Path

    return any(Path(p, "lib").glob("libmkl_rt.so*") for p in {sys.prefix, sys.base_prefix})


@pytest.mark.parametrize("choice, source", [("openblas", "numpy's OpenBLAS"), ("mkl", "Intel MKL"),
                                            ("auto", None)])
def test_blas_choice_computes_the_products(choice, source):
    """QORUS_BLAS picks the kernels' BLAS in a fresh process; each computes linear forward and backward (with
    beta = 1 accumulation) as float64 NumPy does. ``auto`` takes MKL exactly when its wheel is installed and the
    CPU is not an AMD one."""
    import os
    import subprocess
    import sys

    if choice == "mkl" and not _blas_mkl_installed():
        pytest.skip('the mkl extra is not installed (pip install "qorus-jit[mkl]")')
    if source is None:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read()
        source = "Intel MKL" if _blas_mkl_installed() and not amd else "numpy's OpenBLAS"
    out = subprocess.run([sys.executable, "-c", _BLAS_CHECK], env={**os.environ, "QORUS_BLAS": choice},
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    got_source, worst = out.split(" | ")
    assert got_source == source
    assert float(worst) < 1e-5


def test_blas_choice_rejects_unknown_names():
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import qorus_jit.kernels.matmul"],
                         env={**os.environ, "QORUS_BLAS": "cuda"}, capture_output=True, text=True)
    assert out.returncode != 0
    assert "QORUS_BLAS: expected 'auto', 'mkl' or 'openblas', got 'cuda'" in out.stderr


_FORK_CHECK = """
import multiprocessing as mp
import sys

import numpy as np
from threadpoolctl import threadpool_info

try:
    from qorus_jit.kernels.matmul import linear_forward
except ValueError as e:  # numba could not load the asked-for threading layer
    print("NO-LAYER", e)
    sys.exit(0)
from qorus_jit.kernels.softmax import softmax_forward

rng = np.random.default_rng(0)
x, w = rng.standard_normal((256, 512)).astype(np.float32), rng.standard_normal((384, 512)).astype(np.float32)


def work(parallel):
    y = np.empty((256, 384), np.float32)
    linear_forward(y, x, w, None)
    if parallel:  # one of numba's parallel regions as well as MKL's
        softmax_forward(y, y.copy())
    return y


import numba

parallel = numba.threading_layer() != "omp"  # numba ends a forked child's GNU OpenMP regions itself
want = work(parallel)
with mp.get_context("fork").Pool(2) as pool:
    got = pool.map(work, [parallel, parallel])
mkl = [lib.get("threading_layer") for lib in threadpool_info() if lib.get("internal_api") == "mkl"]
print(numba.threading_layer(), mkl, all(np.array_equal(g, want) for g in got))
"""


@pytest.mark.parametrize("layer, mkl_threads", [("tbb", "tbb"), ("omp", "gnu")])
def test_mkl_threads_on_numbas_pool_and_forked_children_finish(layer, mkl_threads):
    """MKL runs on numba's own threading layer (one pool of workers, not two), and a process forked by
    ``multiprocessing`` after the parent multiplied finishes its products: on GNU OpenMP a forked child's
    inherited pool would hang, so MKL runs on one thread there. A hang fails by the timeout."""
    import os
    import subprocess
    import sys

    if not _blas_mkl_installed():
        pytest.skip('the mkl extra is not installed (pip install "qorus-jit[mkl]")')
    env = {**os.environ, "QORUS_BLAS": "mkl", "NUMBA_THREADING_LAYER": layer}
    out = subprocess.run([sys.executable, "-c", _FORK_CHECK], env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip().splitlines()[-1]
    if out.startswith("NO-LAYER"):
        pytest.skip(f"numba has no {layer} threading layer here: {out}")
    assert out == f"{layer} ['{mkl_threads}'] True"
