"""MultiHeadAttention against a torch implementation (Linear + RoPE + scaled_dot_product_attention)."""

import numpy as np
import pytest

from qorus_jit.layers.attention import MultiHeadAttention
from tests.helpers import assert_close, rand, torch_or_skip
from tests.layers.torch_parity import torch_attention

CASES = [
    dict(dim=32, n_heads=4, n_kv_heads=4, causal=True, rope="rotate_half"),
    dict(dim=32, n_heads=4, n_kv_heads=2, causal=True, rope="rotate_half"),
    dict(dim=24, n_heads=2, n_kv_heads=1, causal=True, rope="interleaved", bias=True),
    dict(dim=16, n_heads=1, n_kv_heads=1, causal=False, rope=None, bias=True, out_bias=True),
]


@pytest.mark.parametrize("cfg", CASES)
@pytest.mark.parametrize("T", [1, 7])
def test_forward_backward_match_torch(cfg, T):
    torch = torch_or_skip()
    layer = MultiHeadAttention(**cfg, max_seq_len=16, rng=0)
    rng = np.random.default_rng(1)
    x = rand(rng, 2, T, cfg["dim"])
    dy = rand(rng, 2, T, cfg["dim"])
    key_mask = None if cfg["causal"] else np.array([[1] * T, [1] * max(1, T - 2) + [0] * (T - max(1, T - 2))])
    y = layer.forward(x, key_mask).copy()
    dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in layer.parameters().items()}
    ty = torch_attention(torch, layer, tx, tp, key_mask)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy(), 1e-4, 1e-5, "output")
    assert_close(dx, tx.grad.numpy(), 1e-4, 1e-5, "dx")
    for name, g in layer.gradients().items():
        assert_close(g, tp[name].grad.numpy(), 1e-4, 1e-4, name)


@pytest.mark.parametrize("cfg", CASES[:3])
def test_cached_decoding_equals_full_forward(cfg):
    layer = MultiHeadAttention(**cfg, max_seq_len=16, rng=0)
    x = rand(np.random.default_rng(2), 2, 9, cfg["dim"])
    full = layer.forward(x).copy()
    cache = layer.new_cache(2)
    first = layer.forward(np.ascontiguousarray(x[:, :5]), cache=cache).copy()   # prefill 5
    steps = [layer.forward(np.ascontiguousarray(x[:, t:t + 1]), cache=cache).copy() for t in range(5, 8)]
    last = layer.forward(np.ascontiguousarray(x[:, 8:]), cache=cache)          # one more chunk of 1
    got = np.concatenate([first] + steps + [last], axis=1)
    assert cache.length == 9
    assert_close(got, full, 1e-4, 1e-5)


def test_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="n_kv_heads: expected a divisor of n_heads"):
        MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="n_heads: expected a divisor of dim"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="rope"):
        MultiHeadAttention(32, 4, rope="neox")
    layer = MultiHeadAttention(16, 2, max_seq_len=4)
    with pytest.raises(ValueError, match="exceed max_seq_len"):
        layer.forward(np.zeros((1, 5, 16), np.float32))
    with pytest.raises(ValueError, match="x: expected shape"):
        layer.forward(np.zeros((1, 2, 3, 16), np.float32))
