import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import softmax as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import softmax as naive

SHAPES = [(1,), (7,), (1, 1), (3, 5), (2, 3, 17), (5, 1000), (2, 2, 2, 33),
          # sizes on both sides of numerics.SERIAL_WORK (the largest serial one, a parallel one)
          (SERIAL_WORK // 1000, 1000), (SERIAL_WORK // 1000 + 1, 1000), (1, SERIAL_WORK + 3)]
CAUSAL_SHAPES = [(1, 1, 1), (1, 2, 2), (3, 5, 5), (2, 8, 8), (2, 3, 7, 7), (1, 33, 33), (17, 17),
                 (SERIAL_WORK // 4096, 64, 64), (SERIAL_WORK // 4096 + 1, 64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_matches_naive(shape):
    rng = np.random.default_rng(0)
    x, g = rand(rng, *shape, scale=3.0), rand(rng, *shape)
    out = np.empty_like(x)
    K.softmax_forward(out, x)
    assert_close(out, naive.softmax(x))
    assert_close(out.sum(-1), np.ones(shape[:-1]))
    dx = np.zeros_like(x)
    K.softmax_backward(dx, g, out)
    assert_close(dx, naive.softmax_backward(g, out))


@pytest.mark.parametrize("shape", CAUSAL_SHAPES)
def test_causal_softmax_matches_naive(shape):
    rng = np.random.default_rng(1)
    x, g = rand(rng, *shape, scale=3.0), rand(rng, *shape)
    out = np.full_like(x, np.nan)
    K.causal_softmax_forward(out, x)
    assert_close(out, naive.causal_softmax(x))
    T = shape[-1]
    above = np.triu(np.ones((T, T), bool), 1)
    assert (out[..., above] == 0).all()
    assert_close(out.sum(-1), np.ones(shape[:-1]))
    dx = np.zeros_like(x)
    K.causal_softmax_backward(dx, g, out)
    want = np.zeros(shape)
    for t in range(T):
        want[..., t, : t + 1] = naive.softmax_backward(g[..., t, : t + 1], out[..., t, : t + 1])
    assert_close(dx, want)
    assert (dx[..., above] == 0).all()


def test_causal_ignores_entries_above_the_diagonal():
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 6, 6)
    y = x.copy()
    y[:, np.triu(np.ones((6, 6), bool), 1)] = np.nan
    a, b = np.empty_like(x), np.empty_like(x)
    K.causal_softmax_forward(a, x)
    K.causal_softmax_forward(b, y)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(1,), (2, 4), (2, 3, 3)])
def test_softmax_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(3)
    x, g = rand(rng, *shape, dtype=np.float64), rand(rng, *shape, dtype=np.float64)
    out = np.empty_like(x)

    def loss():
        K.softmax_forward(out, x)
        return float((out * g).sum())

    want = fd_grad(loss, x)
    K.softmax_forward(out, x)
    dx = np.zeros_like(x)
    K.softmax_backward(dx, g, out)
    assert_close(dx, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 4, 4), (2, 1, 3, 3)])
def test_causal_softmax_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(4)
    x, g = rand(rng, *shape, dtype=np.float64), rand(rng, *shape, dtype=np.float64)
    out = np.empty_like(x)

    def loss():
        K.causal_softmax_forward(out, x)
        return float((out * g).sum())

    want = fd_grad(loss, x)
    K.causal_softmax_forward(out, x)
    dx = np.zeros_like(x)
    K.causal_softmax_backward(dx, g, out)
    assert_close(dx, want, rtol=1e-6, atol=1e-8)


def test_float64_forward_is_accurate():
    x = rand(np.random.default_rng(5), 3, 4, 4, dtype=np.float64, scale=5.0)
    out = np.empty_like(x)
    K.softmax_forward(out, x)
    assert_close(out, naive.softmax(x), rtol=1e-12, atol=1e-15)
    K.causal_softmax_forward(out, x)
    assert_close(out, naive.causal_softmax(x), rtol=1e-12, atol=1e-15)


def test_backward_accumulates():
    out = np.array([[0.25, 0.75]], np.float32)
    dx = np.full_like(out, 3.0)
    K.softmax_backward(dx, np.array([[1.0, 0.0]], np.float32), out)
    assert_close(dx, 3.0 + naive.softmax_backward([[1.0, 0.0]], out))
    dx = np.full((1, 2, 2), 3.0, np.float32)
    out = np.array([[[1.0, 0.0], [0.25, 0.75]]], np.float32)
    K.causal_softmax_backward(dx, np.ones_like(dx), out)
    assert_close(dx, np.full((1, 2, 2), 3.0))


def test_inf_and_large_values():
    x = np.array([[-np.inf, 0.0, 1.0, -np.inf],
                  [-np.inf, -np.inf, -np.inf, -np.inf],
                  [1e4, -1e4, 3e4, 0.0],
                  [-1e30, -1e30, -1e30, -1e30],
                  [88.0, 90.0, -100.0, 89.0]], np.float32)
    out = np.empty_like(x)
    K.softmax_forward(out, x)
    assert np.isfinite(out).all()
    assert_close(out, naive.softmax(x))
    assert (out[0, [0, 3]] == 0).all() and (out[1] == 0).all()
    dx = np.zeros_like(x)
    K.softmax_backward(dx, np.ones_like(x), out)
    assert np.isfinite(dx).all() and (dx[1] == 0).all()

    c = np.array([[[0.0, 5.0, 5.0], [-np.inf, -np.inf, 7.0], [-np.inf, 2e4, -2e4]]], np.float32)
    out = np.empty_like(c)
    K.causal_softmax_forward(out, c)
    want = [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
    np.testing.assert_array_equal(out, want)


def test_empty_arrays_are_a_no_op():
    x = np.zeros((0, 5), np.float32)
    K.softmax_forward(np.empty_like(x), x)
    K.softmax_backward(np.zeros_like(x), x, x)
    c = np.zeros((0, 3, 3), np.float32)
    K.causal_softmax_forward(np.empty_like(c), c)
    c = np.zeros((2, 0, 0), np.float32)
    K.causal_softmax_backward(np.empty_like(c), c, c)


def test_softmax_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    x, g = rand(rng, 3, 4, 37, scale=3.0), rand(rng, 3, 4, 37)
    x[0, 0, :5] = -np.inf
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim=-1)
    ty.backward(torch.tensor(g))
    out, dx = np.empty_like(x), np.zeros_like(x)
    K.softmax_forward(out, x)
    K.softmax_backward(dx, g, out)
    assert_close(out, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())


def test_causal_softmax_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(7)
    x, g = rand(rng, 2, 3, 11, 11, scale=3.0), rand(rng, 2, 3, 11, 11)
    tx = torch.tensor(x, requires_grad=True)
    mask = torch.triu(torch.ones(11, 11, dtype=torch.bool), diagonal=1)
    ty = torch.softmax(tx.masked_fill(mask, float("-inf")), dim=-1)
    ty.backward(torch.tensor(g))
    out, dx = np.empty_like(x), np.zeros_like(x)
    K.causal_softmax_forward(out, x)
    K.causal_softmax_backward(dx, g, out)
    assert_close(out, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())


def test_bad_inputs_raise():
    x = np.zeros((3, 4), np.float32)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="out: expected an array with at least 1 dimensions"):
        K.softmax_forward(np.zeros((), np.float32), np.zeros((), np.float32))
    with pytest.raises(ValueError, match="x: expected 2-D array"):
        K.softmax_forward(out, np.zeros(12, np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        K.softmax_forward(out, np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="x: expected the dtype of out"):
        K.softmax_forward(out, x.astype(np.float64))
    with pytest.raises(TypeError, match="out: expected dtype float32 or float64"):
        K.softmax_forward(x.astype(np.int64), x)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        K.softmax_forward(np.empty((4, 3), np.float32), x.T)
    with pytest.raises(TypeError, match="out: expected a numpy array"):
        K.softmax_forward([0.0], x)
    with pytest.raises(ValueError, match="dout: expected shape"):
        K.softmax_backward(out, np.zeros((4, 4), np.float32), x)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        K.softmax_forward(ro, x)
    with pytest.raises(ValueError, match="dx: expected a writeable array"):
        K.softmax_backward(ro, x, x)

    c = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out: expected an array with at least 2 dimensions"):
        K.causal_softmax_forward(np.zeros(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(d0, T, T\)"):
        K.causal_softmax_forward(np.zeros((2, 4, 5), np.float32), np.zeros((2, 4, 5), np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        K.causal_softmax_forward(c, np.zeros((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="x: expected 3-D array"):
        K.causal_softmax_forward(c, np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="dout: expected the dtype of dx"):
        K.causal_softmax_backward(c, c.astype(np.float64), c)
    with pytest.raises(ValueError, match="out: expected a C-contiguous array"):
        K.causal_softmax_backward(c, c, c.transpose(0, 2, 1))
