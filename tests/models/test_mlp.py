"""MLP against the same network in torch: outputs and every gradient."""

import numpy as np
import pytest

from qorus_jit.models import MLP
from tests.helpers import assert_close, rand, torch_or_skip


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_mlp_matches_torch(activation):
    torch = torch_or_skip()
    model = MLP([7, 16, 9, 3], activation=activation, rng=0)
    rng = np.random.default_rng(1)
    x, dy = rand(rng, 5, 7), rand(rng, 5, 3)
    y = model.forward(x).copy()
    dx = model.backward(dy)
    act = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}[activation]
    ref = torch.nn.Sequential(torch.nn.Linear(7, 16), act(), torch.nn.Linear(16, 9), act(), torch.nn.Linear(9, 3))
    names = {"fc0": "0", "fc1": "2", "fc2": "4"}
    with torch.no_grad():
        for name, p in model.parameters().items():
            layer, kind = name.split(".")
            getattr(ref[int(names[layer])], kind).copy_(torch.from_numpy(p))
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(tx)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())
    for name, g in model.gradients().items():
        layer, kind = name.split(".")
        assert_close(g, getattr(ref[int(names[layer])], kind).grad.numpy(), 1e-5, 1e-5, name)


def test_mlp_errors_and_names():
    assert list(MLP([4, 2]).parameters()) == ["fc0.weight", "fc0.bias"]
    with pytest.raises(ValueError, match="sizes"):
        MLP([4])
    with pytest.raises(ValueError, match="activation"):
        MLP([4, 2], activation="tanh")
