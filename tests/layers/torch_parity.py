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


def torch_attention(torch, layer, t, p, key_mask=None):
    """The math of a qorus MultiHeadAttention in torch: input tensor ``t`` (B, T, dim), parameter tensors
    ``p`` named as ``layer.parameters()``, optional ``key_mask`` (B, T) numpy array."""
    F = torch.nn.functional
    B, T, _ = t.shape
    H, Hkv, D = layer.n_heads, layer.n_kv_heads, layer.head_dim

    def proj(name, h):
        return F.linear(t, p[f"{name}.weight"], p.get(f"{name}.bias")).view(B, T, h, D).transpose(1, 2)

    q, k, v = proj("q_proj", H), proj("k_proj", Hkv), proj("v_proj", Hkv)
    if layer.rope is not None:
        inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = torch.cos(ang).float(), torch.sin(ang).float()

        def rot(x):
            if layer.rope == "rotate_half":
                a, b = x[..., : D // 2], x[..., D // 2:]
                return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

        q, k = rot(q), rot(k)
    mask = None
    if key_mask is not None:
        mask = torch.tensor(key_mask.astype(bool))[:, None, None, :].expand(B, 1, T, T)
        if layer.causal:
            mask = mask & torch.ones(T, T, dtype=torch.bool).tril()
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=layer.causal and mask is None,
                                       enable_gqa=H != Hkv)
    return F.linear(o.transpose(1, 2).reshape(B, T, H * D), p["o_proj.weight"], p.get("o_proj.bias"))
