"""Single-token decode kernels against NumPy float64 and the layer-by-layer path."""

import numpy as np
import pytest

from qorus_jit.core.numerics import get_num_threads, max_threads, set_num_threads
from qorus_jit.kernels.decode import _matvec
from qorus_jit.layers import DecodeState, Graph, TransformerBlock
from qorus_jit.models import Llama, LlamaConfig


@pytest.mark.parametrize("n,k", [(1, 7), (5, 288), (35, 64), (1000, 33)])
def test_matvec_matches_numpy(n, k):
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.empty(n, np.float32)
    _matvec(out, w, x)
    np.testing.assert_allclose(out, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_kv_heads,threads,hidden", [(4, 2, 48), (2, 2, 48), (1, 2, 48), (4, 1, 50), (2, 2, 50)])
def test_fused_block_decode_equals_the_layers_one_by_one(n_kv_heads, threads, hidden):
    """With as many kv heads as threads, each kv head's region also applies its columns of the output
    projection; the MLP runs one slice of the hidden units per thread (hidden 50: slices not in fours)."""
    block = TransformerBlock(32, 4, hidden, n_kv_heads, norm_eps=1e-5, max_seq_len=16, rng=3)
    for p in block.parameters().values():  # norms away from 1 so that their weights matter
        p += np.random.default_rng(4).normal(0, 0.1, p.shape).astype(np.float32)
    xs = np.random.default_rng(5).standard_normal((12, 1, 1, 32)).astype(np.float32)
    fused, plain = DecodeState(1, 16), DecodeState(1, 16)
    before = get_num_threads()
    set_num_threads(min(threads, max_threads()))
    try:
        for t, x in enumerate(xs):
            got = block.forward_decode(x, state=fused).copy()
            want = block.forward(x, None, plain.cache_for(block.self_attn)).copy()
            fused.advance(1)
            plain.advance(1)
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"position {t}")
    finally:
        set_num_threads(before)
    cf, cp = fused.cache_for(block.self_attn), plain.cache_for(block.self_attn)
    np.testing.assert_allclose(cf.k[:, :12], cp.k[:, :12], atol=1e-6)
    np.testing.assert_allclose(cf.v[:, :12], cp.v[:, :12], atol=1e-6)


@pytest.mark.parametrize("n_kv_heads,tie", [(4, True), (2, False), (1, True)])
def test_whole_model_decode_in_one_call_equals_the_nodes_one_by_one(n_kv_heads, tie):
    cfg = LlamaConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=48, vocab_size=61,
                      max_seq_len=16, norm_eps=1e-5, tie_embeddings=tie)
    model = Llama(cfg, rng=1)
    for name, p in model.parameters().items():  # norms away from 1 so that their weights matter
        if "norm" in name:
            p += np.random.default_rng(2).normal(0, 0.1, p.shape).astype(np.float32)
    fused, nodes = DecodeState(1, 16), DecodeState(1, 16)
    tok = 7
    for t in range(14):
        ids = np.array([[tok]], np.int64)
        got = model.forward_decode(ids, state=fused).copy()
        want = Graph.forward_decode(model, ids, state=nodes).copy()
        fused.advance(1)
        nodes.advance(1)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"position {t}")
        tok = int(np.argmax(got))
    assert model._decode_call is not None  # the one-call path ran
    assert all(c.length == 14 for c in fused.caches.values())


def test_whole_model_decode_rejects_bad_ids_and_positions():
    model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=61, max_seq_len=16), rng=1)
    state = DecodeState(1, 2)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 61\), got 61"):
        model.forward_decode(np.array([[61]]), state=state)
    with pytest.raises(TypeError, match="ids"):
        model.forward_decode(np.array([[1.0]]), state=state)
    for _ in range(2):
        model.forward_decode(np.array([[3]]), state=state)
        state.advance(1)
    with pytest.raises(ValueError, match="position 2"):
        model.forward_decode(np.array([[3]]), state=state)
