import warnings

import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import activations as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import activations as naive

# the largest serial size, the smallest parallel one, several parallel chunks (numerics.SERIAL_WORK)
SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (SERIAL_WORK,), (SERIAL_WORK + 1,), (40000,)]
BETA = 1.7

# name: (forward, backward, options, naive forward, naive derivative)
UNARY = {
    "relu": (K.relu_forward, K.relu_backward, {}, naive.relu, naive.relu_grad),
    "gelu": (K.gelu_forward, K.gelu_backward, {"approximate": "none"}, naive.gelu, naive.gelu_grad),
    "gelu_tanh": (K.gelu_forward, K.gelu_backward, {"approximate": "tanh"},
                  lambda x: naive.gelu(x, "tanh"), lambda x: naive.gelu_grad(x, "tanh")),
    "silu": (K.silu_forward, K.silu_backward, {}, naive.silu, naive.silu_grad),
    "swish": (K.swish_forward, K.swish_backward, {"beta": BETA},
              lambda x: naive.swish(x, BETA), lambda x: naive.swish_grad(x, BETA)),
}
EXTREMES = [-1e4, -100.0, -80.0, -20.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 20.0, 80.0, 100.0, 1e4]


def _away_from_zero(x):
    """Move entries off ReLU's kink so finite differences see one side only."""
    return np.where(np.abs(x) < 0.1, x + np.copysign(0.2, x), x)


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", SHAPES)
def test_unary_matches_naive(name, shape):
    fwd, bwd, kw, ref, ref_grad = UNARY[name]
    rng = np.random.default_rng(0)
    x, g = rand(rng, *shape, scale=3.0), rand(rng, *shape)
    out = np.empty_like(x)
    fwd(out, x, **kw)
    assert_close(out, ref(x), what=name)
    dx = np.zeros_like(x)
    bwd(dx, g, x, **kw)
    assert_close(dx, g.astype(np.float64) * ref_grad(x), what=name)


@pytest.mark.parametrize("name", UNARY)
def test_unary_float64_forward_is_accurate(name):
    fwd, _, kw, ref, _ = UNARY[name]
    x = rand(np.random.default_rng(1), 5, 11, dtype=np.float64, scale=3.0)
    out = np.empty_like(x)
    fwd(out, x, **kw)
    assert_close(out, ref(x), rtol=1e-12, atol=1e-14, what=name)


@pytest.mark.parametrize("name", UNARY)
def test_unary_backward_matches_finite_differences(name):
    fwd, bwd, kw, _, _ = UNARY[name]
    rng = np.random.default_rng(2)
    x = _away_from_zero(rand(rng, 2, 5, dtype=np.float64, scale=2.0))
    g = rand(rng, 2, 5, dtype=np.float64)
    out = np.empty_like(x)

    def loss():
        fwd(out, x, **kw)
        return float((out * g).sum())

    dx = np.zeros_like(x)
    bwd(dx, g, x, **kw)
    assert_close(dx, fd_grad(loss, x), rtol=1e-6, atol=1e-8, what=name)


@pytest.mark.parametrize("shape", SHAPES)
def test_swiglu_matches_naive(shape):
    rng = np.random.default_rng(3)
    a, b, g = rand(rng, *shape, scale=3.0), rand(rng, *shape), rand(rng, *shape)
    out = np.empty_like(a)
    K.swiglu_forward(out, a, b)
    assert_close(out, naive.swiglu(a, b))
    da, db = np.zeros_like(a), np.zeros_like(b)
    K.swiglu_backward(da, db, g, a, b)
    assert_close(da, g * b.astype(np.float64) * naive.silu_grad(a))
    assert_close(db, g * naive.silu(a))


def test_swiglu_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    a, b, g = (rand(rng, 3, 4, dtype=np.float64, scale=2.0) for _ in range(3))
    out = np.empty_like(a)

    def loss():
        K.swiglu_forward(out, a, b)
        return float((out * g).sum())

    da, db = np.zeros_like(a), np.zeros_like(b)
    K.swiglu_backward(da, db, g, a, b)
    assert_close(da, fd_grad(loss, a), rtol=1e-6, atol=1e-8)
    assert_close(db, fd_grad(loss, b), rtol=1e-6, atol=1e-8)


def test_backward_accumulates():
    x = np.array([-1.0, 0.5, 2.0], np.float32)
    g = np.ones(3, np.float32)
    for _, bwd, kw, _, ref_grad in UNARY.values():
        dx = np.full(3, 10.0, np.float32)
        bwd(dx, g, x, **kw)
        assert_close(dx, 10.0 + ref_grad(x))
    da, db = np.full(3, 1.0, np.float32), np.full(3, -1.0, np.float32)
    K.swiglu_backward(da, db, g, x, x)
    assert_close(da, 1.0 + x * naive.silu_grad(x))
    assert_close(db, -1.0 + naive.silu(x))


def test_extreme_values_stay_finite():
    x = np.array(EXTREMES, np.float32)
    g = np.ones_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, (fwd, bwd, kw, ref, ref_grad) in UNARY.items():
            out, dx = np.empty_like(x), np.zeros_like(x)
            fwd(out, x, **kw)
            bwd(dx, g, x, **kw)
            assert np.isfinite(out).all() and np.isfinite(dx).all(), name
            assert_close(out, ref(x), what=name)
            assert_close(dx, ref_grad(x), what=name)
        out, da, db = np.empty_like(x), np.zeros_like(x), np.zeros_like(x)
        K.swiglu_forward(out, x, g)
        K.swiglu_backward(da, db, g, x, g)
        assert np.isfinite(out).all() and np.isfinite(da).all() and np.isfinite(db).all()
        assert_close(out, naive.swiglu(x, g))
        assert_close(da, naive.silu_grad(x))


def test_relu_gradient_at_zero_is_zero():
    x = np.array([0.0, -0.0], np.float32)
    dx = np.zeros_like(x)
    K.relu_backward(dx, np.ones_like(x), x)
    assert (dx == 0).all()


def _torch_unary(torch, name, t):
    F = torch.nn.functional
    if name == "relu":
        return F.relu(t)
    if name == "gelu":
        return F.gelu(t, approximate="none")
    if name == "gelu_tanh":
        return F.gelu(t, approximate="tanh")
    if name == "silu":
        return F.silu(t)
    return t * torch.sigmoid(BETA * t)


@pytest.mark.parametrize("name", UNARY)
def test_unary_matches_torch(name):
    torch = torch_or_skip()
    fwd, bwd, kw, _, _ = UNARY[name]
    rng = np.random.default_rng(5)
    x, g = rand(rng, 4, 33, scale=3.0), rand(rng, 4, 33)
    x[0, :len(EXTREMES)] = EXTREMES
    tx = torch.tensor(x, requires_grad=True)
    ty = _torch_unary(torch, name, tx)
    ty.backward(torch.tensor(g))
    out, dx = np.empty_like(x), np.zeros_like(x)
    fwd(out, x, **kw)
    bwd(dx, g, x, **kw)
    assert_close(out, ty.detach().numpy(), what=name)
    assert_close(dx, tx.grad.numpy(), what=name)


def test_swiglu_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    a, b, g = rand(rng, 5, 19, scale=3.0), rand(rng, 5, 19), rand(rng, 5, 19)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.silu(ta) * tb
    ty.backward(torch.tensor(g))
    out, da, db = np.empty_like(a), np.zeros_like(a), np.zeros_like(b)
    K.swiglu_forward(out, a, b)
    K.swiglu_backward(da, db, g, a, b)
    assert_close(out, ty.detach().numpy())
    assert_close(da, ta.grad.numpy())
    assert_close(db, tb.grad.numpy())


def test_bad_inputs_raise():
    x = np.zeros((3, 4), np.float32)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="x: expected shape"):
        K.relu_forward(out, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="x: expected 2-D array"):
        K.silu_forward(out, np.zeros(12, np.float32))
    with pytest.raises(TypeError, match="x: expected the dtype of out"):
        K.gelu_forward(out, x.astype(np.float64))
    with pytest.raises(TypeError, match="out: expected dtype float32 or float64"):
        K.relu_forward(x.astype(np.int32), x)
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        K.silu_forward(np.empty((4, 3), np.float32), x.T)
    with pytest.raises(TypeError, match="x: expected a numpy array"):
        K.relu_forward(out, [1.0, 2.0])
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        K.gelu_forward(ro, x)
    with pytest.raises(ValueError, match="dx: expected a writeable array"):
        K.relu_backward(ro, x, x)
    with pytest.raises(ValueError, match="dout: expected shape"):
        K.silu_backward(out, np.zeros((3, 5), np.float32), x)
    for bad in ("exact", None, "TANH"):
        with pytest.raises(ValueError, match="approximate: expected 'none' or 'tanh'"):
            K.gelu_forward(out, x, approximate=bad)
        with pytest.raises(ValueError, match="approximate: expected 'none' or 'tanh'"):
            K.gelu_backward(out, x, x, approximate=bad)
    for bad in (float("nan"), float("inf"), "1.0", True, None):
        with pytest.raises(ValueError, match="beta: expected a finite real number"):
            K.swish_forward(out, x, bad)
        with pytest.raises(ValueError, match="beta: expected a finite real number"):
            K.swish_backward(out, x, x, bad)
    with pytest.raises(ValueError, match="db: expected shape"):
        K.swiglu_backward(out, np.zeros((3, 3), np.float32), x, x, x)
    with pytest.raises(ValueError, match="db: expected a writeable array"):
        K.swiglu_backward(out, ro, x, x, x)
    with pytest.raises(TypeError, match="b: expected the dtype of out"):
        K.swiglu_forward(out, x, x.astype(np.float64))
