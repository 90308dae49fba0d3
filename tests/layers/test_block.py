"""FeedForward and TransformerBlock against torch implementations built from the same parameters."""

import numpy as np
import pytest

from qorus_jit.layers import FeedForward, TransformerBlock
from tests.helpers import assert_close, rand, torch_or_skip
from tests.layers.torch_parity import torch_attention


def torch_ffn(torch, layer, x_t, p, prefix=""):
    F = torch.nn.functional

    def lin(name, t):
        return F.linear(t, p[f"{prefix}{name}.weight"], p.get(f"{prefix}{name}.bias"))

    if layer.kind == "swiglu":
        return lin("down_proj", F.silu(lin("gate_proj", x_t)) * lin("up_proj", x_t))
    act = {"gelu": F.gelu, "relu": F.relu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
           "silu": F.silu}[layer.kind]
    return lin("down_proj", act(lin("up_proj", x_t)))


@pytest.mark.parametrize("kind", ["swiglu", "gelu", "gelu_tanh", "relu", "silu"])
def test_feedforward_matches_torch(kind):
    torch = torch_or_skip()
    layer = FeedForward(12, 20, kind, bias=kind != "swiglu", rng=0)
    rng = np.random.default_rng(1)
    x, dy = rand(rng, 2, 5, 12), rand(rng, 2, 5, 12)
    y = layer.forward(x).copy()
    dx = layer.backward(dy)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in layer.parameters().items()}
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_ffn(torch, layer, tx, p)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy(), 1e-4, 1e-5)
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-5)
    for name, g in layer.gradients().items():
        assert_close(g, p[name].grad.numpy(), 1e-4, 1e-4, name)


BLOCKS = [
    dict(norm="rms", prenorm=True, mlp="swiglu", n_kv_heads=2, rope="rotate_half"),        # Llama
    dict(norm="layer", prenorm=True, mlp="gelu_tanh", mlp_bias=True, attn_bias=True, out_bias=True,
         rope=None),                                                                         # GPT-2
    dict(norm="layer", prenorm=False, mlp="gelu", mlp_bias=True, attn_bias=True, out_bias=True, rope=None,
         causal=False),                                                                      # BERT
]


@pytest.mark.parametrize("cfg", BLOCKS)
def test_block_matches_torch(cfg):
    torch = torch_or_skip()
    F = torch.nn.functional
    block = TransformerBlock(16, 4, 24, max_seq_len=8, rng=0, **cfg)
    rng = np.random.default_rng(2)
    for name, p in block.parameters().items():
        if "layernorm" in name:
            p[...] = rand(rng, *p.shape) * 0.5 + (1.0 if name.endswith("weight") else 0.0)
    x, dy = rand(rng, 2, 6, 16), rand(rng, 2, 6, 16)
    y = block.forward(x).copy()
    dx = block.backward(dy)

    tx = torch.tensor(x, requires_grad=True)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in block.parameters().items()}

    def norm(name, t):
        w, b = p[f"{name}.weight"], p.get(f"{name}.bias")
        if cfg["norm"] == "rms":
            return F.rms_norm(t, (16,), w, eps=1e-5)
        return F.layer_norm(t, (16,), w, b, eps=1e-5)

    def attn(t):
        sub = {k.removeprefix("self_attn."): v for k, v in p.items() if k.startswith("self_attn.")}
        return torch_attention(torch, block.self_attn, t, sub)

    if block.prenorm:
        h = tx + attn(norm("input_layernorm", tx))
        ty = h + torch_ffn(torch, block.mlp, norm("post_attention_layernorm", h), p, "mlp.")
    else:
        h = norm("input_layernorm", tx + attn(tx))
        ty = norm("post_attention_layernorm", h + torch_ffn(torch, block.mlp, h, p, "mlp."))
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy(), 1e-4, 1e-4)
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-4)
    for name, g in block.gradients().items():
        assert_close(g, p[name].grad.numpy(), 1e-3, 1e-4, name)


def test_block_parameter_names_follow_llama():
    block = TransformerBlock(16, 4, 24, n_kv_heads=2, rng=0)
    names = list(block.parameters())
    assert names[:2] == ["input_layernorm.weight", "self_attn.q_proj.weight"]
    assert "mlp.gate_proj.weight" in names and "post_attention_layernorm.weight" in names
    assert block.num_parameters() == 16 * 2 + 16 * 16 * 2 + 2 * 16 * 8 + 3 * 16 * 24
