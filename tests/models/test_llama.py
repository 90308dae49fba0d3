"""Llama against transformers' LlamaForCausalLM: logits and every parameter gradient, through a saved folder."""

import numpy as np
import pytest

import qorus_jit
from qorus_jit.models import Llama, LlamaConfig
from tests.helpers import torch_or_skip
from tests.models.reference import assert_gradients_match, saved_reference, transformers_or_skip


@pytest.mark.parametrize("n_kv_heads,tie", [(4, False), (2, False), (1, True)])
def test_logits_and_gradients_match_transformers(tmp_path, n_kv_heads, tie):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=n_kv_heads, max_position_embeddings=32, rms_norm_eps=1e-5, rope_theta=500.0,
        tie_word_embeddings=tie)
    ref = saved_reference(torch, transformers.LlamaForCausalLM, hf_cfg, tmp_path, lambda n: "norm" in n)

    model = qorus_jit.load_pretrained(tmp_path)
    assert isinstance(model, Llama)
    ids = np.random.default_rng(1).integers(0, 61, (2, 11))
    logits = model.forward(ids).copy()

    out = ref(torch.tensor(ids))
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), atol=1e-4, rtol=0)

    # cross-entropy of next-token prediction; its gradient through our backward vs autograd
    targets = torch.tensor(np.random.default_rng(2).integers(0, 61, (2, 11)))
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 61), targets.reshape(-1))
    loss.backward()
    from qorus_jit.kernels.loss import cross_entropy_forward_backward

    dlogits = np.empty((22, 61), np.float32)
    ours = cross_entropy_forward_backward(dlogits, logits.reshape(-1, 61), targets.numpy().reshape(-1))
    assert abs(ours - loss.item()) < 1e-5
    model.zero_grad()
    model.backward(dlogits.reshape(2, 11, 61))
    assert_gradients_match(model, ref)


def test_save_pretrained_round_trip_loads_in_transformers(tmp_path):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=50, max_seq_len=16)
    model = Llama(cfg, rng=0)
    qorus_jit.save_pretrained(model, tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path).float().eval()
    ids = np.arange(12).reshape(2, 6) % 50
    np.testing.assert_allclose(model.forward(ids), ref(torch.tensor(ids)).logits.detach().numpy(), atol=1e-4)
