"""GPT-2 against transformers' GPT2LMHeadModel: logits and every parameter gradient, through a saved folder."""

import numpy as np
import pytest

import qorus_jit
from qorus_jit.kernels.loss import cross_entropy_forward_backward
from qorus_jit.models import GPT2, GPT2Config
from tests.helpers import torch_or_skip
from tests.models.reference import assert_gradients_match, saved_reference, transformers_or_skip


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_logits_and_gradients_match_transformers(tmp_path, activation):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    hf_cfg = transformers.GPT2Config(vocab_size=57, n_embd=32, n_layer=2, n_head=4, n_positions=24,
                                     activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    ref = saved_reference(torch, transformers.GPT2LMHeadModel, hf_cfg, tmp_path,
                          lambda n: "ln_" in n or n.endswith("bias"))

    model = qorus_jit.load_pretrained(tmp_path)
    assert isinstance(model, GPT2)
    ids = np.random.default_rng(1).integers(0, 57, (2, 9))
    logits = model.forward(ids).copy()
    out = ref(torch.tensor(ids))
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), atol=1e-4, rtol=0)

    targets = np.random.default_rng(2).integers(0, 57, 18)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 57), torch.tensor(targets))
    loss.backward()
    dlogits = np.empty((18, 57), np.float32)
    cross_entropy_forward_backward(dlogits, logits.reshape(-1, 57), targets)
    model.zero_grad()
    model.backward(dlogits.reshape(2, 9, 57))
    assert_gradients_match(model, ref, transpose=lambda n: "transformer.h." in n and n.endswith("weight")
                           and ref.get_parameter(n).ndim == 2)


def test_save_pretrained_round_trip_loads_in_transformers(tmp_path):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    model = GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=40, max_seq_len=16), rng=0)
    qorus_jit.save_pretrained(model, tmp_path)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).float().eval()
    ids = np.arange(12).reshape(2, 6) % 40
    np.testing.assert_allclose(model.forward(ids), ref(torch.tensor(ids)).logits.detach().numpy(), atol=1e-4)
