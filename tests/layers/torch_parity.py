"""Compare a qorus layer with its torch module: output, input gradient and every parameter gradient."""

import numpy as np

from tests.helpers import assert_close, torch_or_skip


def check_layer_against_torch(layer, module, x, names=None, rtol=1e-5, atol=1e-5, seed=0):
    """Copy ``layer``'s parameters into ``module`` (``names``: ours -> torch's, default the same), run both
    forward and backward with the same random output gradient, and compare everything."""
    torch = torch_or_skip()
    names = names or {k: k for k in layer.parameters()}
    tparams = dict(module.named_parameters())
    with torch.no_grad():
        for ours, theirs in names.items():
            tparams[theirs].copy_(torch.from_numpy(layer.parameters()[ours]))
    layer.zero_grad()
    y = layer.forward(x)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)

    floating = x.dtype.kind == "f"
    tx = torch.tensor(x, requires_grad=floating) if floating else torch.tensor(x)
    ty = module(tx)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty.detach().numpy(), rtol, atol, "output")
    if floating:
        assert_close(dx, tx.grad.numpy(), rtol, atol, "input gradient")
    grads = layer.gradients()
    for ours, theirs in names.items():
        assert_close(grads[ours], tparams[theirs].grad.numpy(), rtol, atol * 10, f"gradient of {ours}")
    return y, dx
