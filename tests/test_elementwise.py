import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import elementwise as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import elementwise as naive

# the largest serial size, the smallest parallel one, several parallel chunks (numerics.SERIAL_WORK)
SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (SERIAL_WORK,), (SERIAL_WORK + 1,), (40000,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_naive(shape):
    rng = np.random.default_rng(0)
    a, b = rand(rng, *shape), rand(rng, *shape)
    out = np.empty_like(a)
    K.add_forward(out, a, b)
    assert_close(out, naive.add(a, b))
    K.mul_forward(out, a, b)
    assert_close(out, naive.mul(a, b))
    K.scale_forward(out, a, -0.37)
    assert_close(out, a.astype(np.float64) * -0.37)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_naive(shape):
    rng = np.random.default_rng(3)
    a, b, g = rand(rng, *shape), rand(rng, *shape), rand(rng, *shape)
    da, db = np.ones_like(a), np.full_like(b, 2.0)
    K.add_backward(da, db, g)
    assert_close(da, 1.0 + g.astype(np.float64))
    assert_close(db, 2.0 + g.astype(np.float64))
    da, db = np.zeros_like(a), np.zeros_like(b)
    K.mul_backward(da, db, g, a, b)
    assert_close(da, naive.mul(g, b))
    assert_close(db, naive.mul(g, a))
    da = np.zeros_like(a)
    K.scale_backward(da, g, -0.37)
    assert_close(da, g.astype(np.float64) * -0.37)


@pytest.mark.parametrize("shape", [(1,), (3, 5)])
def test_backward_matches_finite_differences(shape):
    rng = np.random.default_rng(1)
    a, b, g = (rand(rng, *shape, dtype=np.float64) for _ in range(3))
    out = np.empty_like(a)

    def loss_of(fwd):
        def loss():
            fwd()
            return float((out * g).sum())
        return loss

    for fwd, bwd in [
        (lambda: K.add_forward(out, a, b), lambda da, db: K.add_backward(da, db, g)),
        (lambda: K.mul_forward(out, a, b), lambda da, db: K.mul_backward(da, db, g, a, b)),
    ]:
        da, db = np.zeros_like(a), np.zeros_like(b)
        bwd(da, db)
        assert_close(da, fd_grad(loss_of(fwd), a), rtol=1e-6, atol=1e-8)
        assert_close(db, fd_grad(loss_of(fwd), b), rtol=1e-6, atol=1e-8)

    da = np.zeros_like(a)
    K.scale_backward(da, g, 2.5)
    assert_close(da, fd_grad(loss_of(lambda: K.scale_forward(out, a, 2.5)), a), rtol=1e-6, atol=1e-8)


def test_backward_accumulates():
    a = np.ones(4, np.float32)
    da, db = np.full(4, 2.0, np.float32), np.zeros(4, np.float32)
    K.add_backward(da, db, a)
    assert_close(da, np.full(4, 3.0))


def test_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(2)
    a, b, g = (rand(rng, 4, 9) for _ in range(3))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta * tb).backward(torch.tensor(g))
    out = np.empty_like(a)
    K.mul_forward(out, a, b)
    da, db = np.zeros_like(a), np.zeros_like(b)
    K.mul_backward(da, db, g, a, b)
    assert_close(out, (ta * tb).detach().numpy())
    assert_close(da, ta.grad.numpy())
    assert_close(db, tb.grad.numpy())


def test_bad_inputs_raise():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="b: expected shape"):
        K.add_forward(np.empty_like(a), a, np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="b: expected the dtype of out"):
        K.add_forward(np.empty_like(a), a, a.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        K.add_forward(np.empty((4, 3), np.float32), a.T, a.T)
    with pytest.raises(TypeError, match="out: expected dtype float32 or float64"):
        K.add_forward(a.astype(np.int32), a, a)
    with pytest.raises(TypeError, match="a: expected a numpy array"):
        K.add_forward(a, [1.0], a)
