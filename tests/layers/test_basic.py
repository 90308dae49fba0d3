"""Basic layers against their torch modules: Linear, activations, Softmax, norms, Embedding."""

import numpy as np
import pytest

from qorus_jit.layers import GELU, Embedding, LayerNorm, Linear, ReLU, RMSNorm, SiLU, Softmax, Swish
from tests.helpers import rand, torch_or_skip
from tests.layers.torch_parity import check_layer_against_torch

SHAPES = [(1, 7), (5, 7), (2, 3, 7), (33, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(shape, bias):
    torch = torch_or_skip()
    layer = Linear(7, 13, bias=bias, rng=1)
    check_layer_against_torch(layer, torch.nn.Linear(7, 13, bias=bias), rand(np.random.default_rng(2), *shape))


@pytest.mark.parametrize("shape", SHAPES)
def test_activations(shape):
    torch = torch_or_skip()
    x = rand(np.random.default_rng(3), *shape, scale=3.0)
    pairs = [
        (ReLU(), torch.nn.ReLU()),
        (GELU(), torch.nn.GELU()),
        (GELU("tanh"), torch.nn.GELU(approximate="tanh")),
        (SiLU(), torch.nn.SiLU()),
        (Softmax(), torch.nn.Softmax(dim=-1)),
    ]
    for ours, theirs in pairs:
        check_layer_against_torch(ours, theirs, x)


def test_swish_matches_its_definition_in_torch():
    torch = torch_or_skip()

    class TorchSwish(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.7 * x)

    check_layer_against_torch(Swish(1.7), TorchSwish(), rand(np.random.default_rng(4), 4, 9))


@pytest.mark.parametrize("shape", SHAPES)
def test_norms(shape):
    torch = torch_or_skip()
    rng = np.random.default_rng(5)
    x = rand(rng, *shape)
    for bias in (True, False):
        ln = LayerNorm(7, eps=1e-5, bias=bias)
        ln.load_parameters({k: rand(rng, *v.shape) for k, v in ln.parameters().items()})
        check_layer_against_torch(ln, torch.nn.LayerNorm(7, eps=1e-5, bias=bias), x, atol=2e-5)
    rms = RMSNorm(7, eps=1e-6)
    rms.load_parameters({"weight": rand(rng, 7)})
    check_layer_against_torch(rms, torch.nn.RMSNorm(7, eps=1e-6), x, atol=2e-5)


def test_embedding_with_repeated_ids():
    torch = torch_or_skip()
    ids = np.array([[0, 3, 3, 9], [3, 0, 1, 1]], np.int64)
    check_layer_against_torch(Embedding(10, 6, rng=0), torch.nn.Embedding(10, 6), ids)


def test_gradients_accumulate_and_zero_grad_clears():
    layer = Linear(4, 3, rng=0)
    x = rand(np.random.default_rng(6), 2, 4)
    for _ in range(2):
        y = layer.forward(x)
        layer.backward(np.ones_like(y))
    g2 = layer.gradients()["weight"].copy()
    layer.zero_grad()
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(g2, 2 * layer.gradients()["weight"], rtol=1e-6)
    layer.zero_grad()
    assert all(not g.any() for g in layer.gradients().values())


@pytest.mark.parametrize("make", [lambda: Linear(4, 3, rng=0), lambda: RMSNorm(4), lambda: LayerNorm(4)],
                         ids=["linear", "rmsnorm", "layernorm"])
def test_backward_into_out_writes_or_accumulates(make):
    """backward(dy, out=, accumulate=) gives the same dx as the plain call, written into out or added to it."""
    rng = np.random.default_rng(7)
    layer = make()
    x = rand(rng, 2, 5, 4)
    y = layer.forward(x)
    dy = rand(rng, *y.shape)
    dx = layer.backward(dy).copy()
    out = rand(rng, *x.shape)
    before = out.copy()
    assert layer.backward(dy, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, before + dx, rtol=1e-5, atol=1e-6)
    layer.backward(dy, out=out)
    np.testing.assert_allclose(out, dx, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 5, 4\)"):
        layer.backward(dy, out=np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        layer.backward(dy, out=np.zeros(x.shape))
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap x"):
        layer.backward(dy, out=x)


@pytest.mark.parametrize("make", [lambda: RMSNorm(4), lambda: LayerNorm(4)], ids=["rmsnorm", "layernorm"])
def test_norm_backward_adds_a_residual_gradient_in_the_same_pass(make):
    """backward(dy, residual=r) is dx + r (into a buffer or out), as the pre-norm blocks use it."""
    rng = np.random.default_rng(8)
    layer = make()
    x = rand(rng, 2, 5, 4)
    dy = rand(rng, *layer.forward(x).shape)
    dx = layer.backward(dy).copy()
    r = rand(rng, *x.shape)
    np.testing.assert_allclose(layer.backward(dy, residual=r), dx + r, rtol=1e-5, atol=1e-6)
    out = rand(rng, *x.shape)
    assert layer.backward(dy, out=out, residual=r) is out
    np.testing.assert_allclose(out, dx + r, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="residual: cannot be combined with accumulate"):
        layer.backward(dy, out=out, accumulate=True, residual=r)
    with pytest.raises(ValueError, match=r"residual: expected shape \(2, 5, 4\)"):
        layer.backward(dy, residual=r[0])
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap residual"):
        layer.backward(dy, out=r, residual=r)


def test_parameters_names_counts_and_load():
    layer = Linear(4, 3)
    assert list(layer.parameters()) == ["weight", "bias"] == list(layer.gradients())
    assert layer.num_parameters() == 4 * 3 + 3
    with pytest.raises(ValueError, match="weight: expected shape"):
        layer.load_parameters({"weight": np.zeros((4, 3)), "bias": np.zeros(3)})
    with pytest.raises(ValueError, match="missing"):
        layer.load_parameters({"weight": np.zeros((3, 4))})


def test_bad_inputs_raise_clear_errors():
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match="x: expected last axis 4"):
        layer.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        layer.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        layer.forward(np.zeros((4, 2), np.float32).T)
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(4, 3).backward(np.zeros((2, 3), np.float32))
    layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="dy: expected shape"):
        layer.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="ids: expected values in"):
        Embedding(5, 2).forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="in_features: expected a positive int"):
        Linear(0, 3)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=0.0)
