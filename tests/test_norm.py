import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import norm as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import norm as naive

SHAPES = [(1, 1), (1, 7), (5, 13), (3, 4, 33), (2, 1, 3, 10), (130, 24), (9, 768)]
# N * C on both sides of numerics.SERIAL_WORK (the largest serial input, the smallest parallel one), and one
# long row (serial whatever its size)
THRESHOLD_SHAPES = [(SERIAL_WORK // 288, 288), (SERIAL_WORK // 288 + 1, 288), (40, 3, 300), (1, SERIAL_WORK + 3)]
EPS = 1e-5


def _rms(x, w, eps=EPS):
    out, rstd = np.empty_like(x), np.empty(x.shape[:-1], x.dtype)
    K.rmsnorm_forward(out, rstd, x, w, eps)
    return out, rstd


def _ln(x, w, b, eps=EPS):
    out = np.empty_like(x)
    mean, rstd = np.empty(x.shape[:-1], x.dtype), np.empty(x.shape[:-1], x.dtype)
    K.layernorm_forward(out, mean, rstd, x, w, b, eps)
    return out, mean, rstd


@pytest.mark.parametrize("shape", SHAPES + THRESHOLD_SHAPES)
def test_forward_matches_naive(shape):
    rng = np.random.default_rng(0)
    x = rand(rng, *shape, scale=2.0) + 0.5
    w, b = rand(rng, shape[-1]), rand(rng, shape[-1])
    out, rstd = _rms(x, w)
    assert_close(out, naive.rmsnorm(x, w, EPS), what="rmsnorm out")
    assert_close(rstd, naive.rmsnorm_rstd(x, EPS), what="rmsnorm rstd")
    want_mean, want_rstd = naive.layernorm_stats(x, EPS)
    for bias in (b, None):
        out, mean, rstd = _ln(x, w, bias)
        assert_close(out, naive.layernorm(x, w, bias, EPS), what="layernorm out")
        assert_close(mean, want_mean, what="layernorm mean")
        assert_close(rstd, want_rstd, what="layernorm rstd")


@pytest.mark.parametrize("shape", [(1, 7), (5, 13), (3, 4, 33)] + THRESHOLD_SHAPES)
def test_backward_matches_naive(shape):
    rng = np.random.default_rng(8)
    x, g = rand(rng, *shape, scale=2.0) + 0.5, rand(rng, *shape)
    w, b = rand(rng, shape[-1]), rand(rng, shape[-1])
    tol = dict(rtol=1e-4, atol=1e-4)  # dweight, dbias: float32 sums over up to ~120 rows
    want_dx, want_dw = naive.rmsnorm_backward(g, x, w, EPS)
    _, rstd = _rms(x, w)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    assert_close(dx, want_dx, what="rmsnorm dx")
    assert_close(dw, want_dw, **tol, what="rmsnorm dweight")
    want_dx, want_dw, want_db = naive.layernorm_backward(g, x, w, EPS)
    for bias in (b, None):
        _, mean, rstd = _ln(x, w, bias)
        dx, dw = np.zeros_like(x), np.zeros_like(w)
        db = None if bias is None else np.zeros_like(b)
        K.layernorm_backward(dx, dw, db, g, x, w, mean, rstd)
        assert_close(dx, want_dx, **tol, what="layernorm dx")
        assert_close(dw, want_dw, **tol, what="layernorm dweight")
        if bias is not None:
            assert_close(db, want_db, **tol, what="layernorm dbias")


def test_layernorm_forward_is_stable_with_a_large_offset():
    rng = np.random.default_rng(1)
    x = rand(rng, 4, 300) + np.float32(1000.0)
    w = np.ones(300, np.float32)
    out, _, _ = _ln(x, w, None)
    assert_close(out, naive.layernorm(x, w, None, EPS), rtol=1e-3, atol=1e-3)


def test_forward_in_place():
    rng = np.random.default_rng(7)
    x, w, b = rand(rng, 5, 19), rand(rng, 19), rand(rng, 19)
    y = x.copy()
    K.rmsnorm_forward(y, np.empty(5, np.float32), y, w, EPS)
    assert_close(y, _rms(x, w)[0], rtol=0, atol=0)
    y = x.copy()
    K.layernorm_forward(y, np.empty(5, np.float32), np.empty(5, np.float32), y, w, b, EPS)
    assert_close(y, _ln(x, w, b)[0], rtol=0, atol=0)


def test_stats_may_be_flat_rows():
    rng = np.random.default_rng(2)
    x, w = rand(rng, 2, 3, 8), rand(rng, 8)
    out, rstd = np.empty_like(x), np.empty(6, np.float32)
    K.rmsnorm_forward(out, rstd, x, w, EPS)
    assert_close(rstd, naive.rmsnorm_rstd(x, EPS).reshape(-1))
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    K.rmsnorm_backward(dx, dw, np.ones_like(x), x, w, rstd)
    assert np.abs(dw).sum() > 0


@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 7), (40, 3)])
def test_rmsnorm_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(3)
    x, g = rand(rng, *shape, dtype=np.float64), rand(rng, *shape, dtype=np.float64)
    w = rand(rng, shape[-1], dtype=np.float64)

    def loss():
        return float((_rms(x, w)[0] * g).sum())

    _, rstd = _rms(x, w)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    assert_close(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-8, what="dx")
    assert_close(dw, fd_grad(loss, w), rtol=1e-6, atol=1e-8, what="dweight")


@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 7), (40, 3)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_layernorm_backward_matches_finite_differences(shape, has_bias):
    rng = np.random.default_rng(4)
    x, g = rand(rng, *shape, dtype=np.float64), rand(rng, *shape, dtype=np.float64)
    w, b = rand(rng, shape[-1], dtype=np.float64), rand(rng, shape[-1], dtype=np.float64)
    bias = b if has_bias else None

    def loss():
        return float((_ln(x, w, bias)[0] * g).sum())

    _, mean, rstd = _ln(x, w, bias)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    db = np.zeros_like(b) if has_bias else None
    K.layernorm_backward(dx, dw, db, g, x, w, mean, rstd)
    assert_close(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-8, what="dx")
    assert_close(dw, fd_grad(loss, w), rtol=1e-6, atol=1e-8, what="dweight")
    if has_bias:
        assert_close(db, fd_grad(loss, b), rtol=1e-6, atol=1e-8, what="dbias")


def test_backward_accumulates():
    rng = np.random.default_rng(5)
    x, g, w, b = rand(rng, 6, 9), rand(rng, 6, 9), rand(rng, 9), rand(rng, 9)
    _, rstd = _rms(x, w)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    dx2, dw2 = np.ones_like(x), np.ones_like(w)
    K.rmsnorm_backward(dx2, dw2, g, x, w, rstd)
    assert_close(dx2, dx + 1)
    assert_close(dw2, dw + 1)
    _, mean, rstd = _ln(x, w, b)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    K.layernorm_backward(dx, dw, db, g, x, w, mean, rstd)
    dx2, dw2, db2 = np.ones_like(x), np.ones_like(w), np.ones_like(b)
    K.layernorm_backward(dx2, dw2, db2, g, x, w, mean, rstd)
    assert_close(dx2, dx + 1)
    assert_close(dw2, dw + 1)
    assert_close(db2, db + 1)


@pytest.mark.parametrize("shape", [(1, 1, 5), (4, 7, 300), (200, 37)])
def test_matches_torch(shape):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    x, g = rand(rng, *shape), rand(rng, *shape)
    w, b = rand(rng, shape[-1]), rand(rng, shape[-1])
    C = shape[-1]

    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = F.rms_norm(tx, (C,), tw, EPS)
    ty.backward(torch.tensor(g))
    out, rstd = _rms(x, w)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    K.rmsnorm_backward(dx, dw, g, x, w, rstd)
    assert_close(out, ty.detach().numpy(), what="rmsnorm out")
    assert_close(dx, tx.grad.numpy(), what="rmsnorm dx")
    assert_close(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4, what="rmsnorm dweight")

    for bias in (b, None):
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(w, requires_grad=True)
        tb = None if bias is None else torch.tensor(bias, requires_grad=True)
        ty = F.layer_norm(tx, (C,), tw, tb, EPS)
        ty.backward(torch.tensor(g))
        out, mean, rstd = _ln(x, w, bias)
        dx, dw = np.zeros_like(x), np.zeros_like(w)
        db = None if bias is None else np.zeros_like(b)
        K.layernorm_backward(dx, dw, db, g, x, w, mean, rstd)
        assert_close(out, ty.detach().numpy(), what="layernorm out")
        assert_close(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4, what="layernorm dx")
        assert_close(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4, what="layernorm dweight")
        if bias is not None:
            assert_close(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4, what="layernorm dbias")


def test_bad_inputs_raise():
    x, w = np.zeros((3, 4), np.float32), np.ones(4, np.float32)
    out, r, m = np.empty_like(x), np.empty(3, np.float32), np.empty(3, np.float32)
    with pytest.raises(ValueError, match="x: expected an array with at least 2 dimensions"):
        K.rmsnorm_forward(np.empty(4, np.float32), r, np.zeros(4, np.float32), w, EPS)
    with pytest.raises(TypeError, match="x: expected a numpy array"):
        K.rmsnorm_forward(out, r, [[1.0]], w, EPS)
    with pytest.raises(ValueError, match="weight: expected shape"):
        K.rmsnorm_forward(out, r, x, np.ones(5, np.float32), EPS)
    with pytest.raises(ValueError, match="weight: expected 1-D array"):
        K.layernorm_forward(out, m, r, x, np.ones((1, 4), np.float32), None, EPS)
    with pytest.raises(ValueError, match="bias: expected shape"):
        K.layernorm_forward(out, m, r, x, w, np.ones(3, np.float32), EPS)
    with pytest.raises(ValueError, match="out: expected shape"):
        K.rmsnorm_forward(np.empty((3, 5), np.float32), r, x, w, EPS)
    with pytest.raises(ValueError, match="rstd: expected shape"):
        K.rmsnorm_forward(out, np.empty(4, np.float32), x, w, EPS)
    with pytest.raises(ValueError, match="mean: expected 1-D array"):
        K.layernorm_forward(out, np.empty((3, 1), np.float32), r, x, w, None, EPS)
    with pytest.raises(TypeError, match="weight: expected the dtype of x"):
        K.rmsnorm_forward(out, r, x, w.astype(np.float64), EPS)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64"):
        K.rmsnorm_forward(out, r, x.astype(np.int32), w, EPS)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.rmsnorm_forward(out[:, :2], r, np.zeros((3, 8), np.float32)[:, ::4], np.ones(2, np.float32), EPS)
    for eps in (0.0, -1e-5, float("nan"), float("inf"), "1e-5", None):
        with pytest.raises(ValueError, match="eps: expected a finite real number > 0"):
            K.rmsnorm_forward(out, r, x, w, eps)
        with pytest.raises(ValueError, match="eps: expected a finite real number > 0"):
            K.layernorm_forward(out, m, r, x, w, None, eps)
    with pytest.raises(ValueError, match="out: expected either x itself"):
        big = np.zeros(16, np.float32)
        K.rmsnorm_forward(big[4:].reshape(3, 4), r, big[:12].reshape(3, 4), w, EPS)
    with pytest.raises(ValueError, match="rstd: expected a buffer that does not overlap x"):
        K.rmsnorm_forward(out, x[0, :3], x, w, EPS)
    with pytest.raises(ValueError, match="mean: expected a buffer that does not overlap rstd"):
        K.layernorm_forward(out, r, r, x, w, None, EPS)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        K.rmsnorm_forward(ro, r, x, w, EPS)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    with pytest.raises(ValueError, match="dout: expected shape"):
        K.rmsnorm_backward(dx, dw, np.zeros((4, 4), np.float32), x, w, r)
    with pytest.raises(ValueError, match="dweight: expected shape"):
        K.rmsnorm_backward(dx, np.zeros(3, np.float32), x, x, w, r)
    with pytest.raises(ValueError, match="dbias: expected shape"):
        K.layernorm_backward(dx, dw, np.zeros(5, np.float32), x, x, w, m, r)
    with pytest.raises(TypeError, match="dx: expected the dtype of x"):
        K.layernorm_backward(dx.astype(np.float64), dw, None, x, x, w, m, r)
    with pytest.raises(ValueError, match="dx: expected a buffer that does not overlap dout"):
        K.rmsnorm_backward(dx, dw, dx, x, w, r)
    with pytest.raises(ValueError, match="dbias: expected a buffer that does not overlap weight"):
        K.layernorm_backward(dx, dw, w, x, x, w, m, r)
    ro_w = np.zeros_like(w)
    ro_w.flags.writeable = False
    with pytest.raises(ValueError, match="dweight: expected a writeable array"):
        K.rmsnorm_backward(dx, ro_w, x, x, w, r)
