"""BERT encoder against transformers' BertModel: hidden states with padding, and every parameter gradient."""

import numpy as np

import qorus_jit
from qorus_jit.models import Bert, BertConfig, mean_pool
from tests.helpers import torch_or_skip
from tests.models.reference import assert_gradients_match, saved_reference, transformers_or_skip


def test_hidden_states_and_gradients_match_transformers(tmp_path):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    hf_cfg = transformers.BertConfig(vocab_size=53, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=40, max_position_embeddings=20, type_vocab_size=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = saved_reference(torch, transformers.BertModel, hf_cfg, tmp_path,
                          lambda n: "LayerNorm" in n or n.endswith("bias"))
    model = qorus_jit.load_pretrained(tmp_path)
    assert isinstance(model, Bert)

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 53, (2, 9))
    types = rng.integers(0, 2, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0  # padding
    hidden = model.forward(ids, mask, types).copy()
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    want = out.last_hidden_state
    np.testing.assert_allclose(hidden, want.detach().numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(mean_pool(hidden, mask), ((want * torch.tensor(mask)[..., None]).sum(1)
                                                         / torch.tensor(mask).sum(1, keepdim=True)).detach().numpy(),
                               atol=1e-4)

    g = rng.standard_normal(hidden.shape).astype(np.float32)
    (want * torch.tensor(g)).sum().backward()
    model.zero_grad()
    model.backward(g)
    assert_gradients_match(model, ref)


def test_save_pretrained_round_trip_loads_in_transformers(tmp_path):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    cfg = BertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=40, vocab_size=30, max_seq_len=16)
    model = Bert(cfg, rng=0)
    qorus_jit.save_pretrained(model, tmp_path)
    ref = transformers.BertModel.from_pretrained(tmp_path).float().eval()
    ids = np.arange(12).reshape(2, 6) % 30
    np.testing.assert_allclose(model.forward(ids), ref(torch.tensor(ids)).last_hidden_state.detach().numpy(),
                               atol=1e-4)
