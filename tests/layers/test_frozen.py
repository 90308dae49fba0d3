"""Frozen parameters compute no gradient: the trainable gradients equal those of the same model with nothing
frozen (the independent reference), the frozen ones are never written (read-only here) and stay zero."""

import numpy as np
import pytest

from qorus_jit.layers import Embedding, LayerNorm, Linear, RMSNorm, apply_lora
from qorus_jit.layers.base import LAZY_BYTES, lazy_zeros
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.layers.lora import _layers, lora_layers
from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig
from tests.layers.torch_parity import check_layer_against_torch

MODELS = {
    "llama": lambda: Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=50,
                                       max_seq_len=16, attention_bias=True), rng=0),
    "llama_tied": lambda: Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=50,
                                            max_seq_len=16, tie_embeddings=True), rng=0),
    "gpt2": lambda: GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=50, max_seq_len=16), rng=0),
}

#: layer (dotted name) -> the own parameters to freeze (None: the layer and all under it)
FREEZE = {
    "llama": {"model.embed_tokens": None, "model.layers.0": None, "model.layers.1.self_attn.k_proj": ["weight"],
              "model.layers.1.mlp.up_proj": None, "model.layers.1.input_layernorm": None, "lm_head": None},
    "llama_tied": {"model.embed_tokens": None, "model.layers.1.mlp": None, "model.norm": None},
    "gpt2": {"transformer.wte": None, "transformer.wpe": None, "transformer.h.0": None,
             "transformer.h.1.attn.c_attn": ["weight"], "transformer.h.1.mlp.c_fc": ["bias"],
             "transformer.h.1.ln_2": ["bias"], "transformer.ln_f": ["weight"]},
}


def layer_named(model, dotted):
    return next(layer for _, _, d, layer in _layers(model) if d == dotted)


def output_grad(model, ids, seed=1):
    logits = model.forward(ids)
    return np.random.default_rng(seed).standard_normal(logits.shape).astype(np.float32)


def reference_grads(model, ids, dy):
    model.zero_grad()
    model.seed_dropout(0)  # the same masks in every run, where there is dropout
    model.forward(ids)
    model.backward(dy)
    return {k: g.copy() for k, g in model.gradients().items()}


def check_cycles(model, ref, ids, dy, frozen, cycles=3):
    """forward/backward/zero_grad cycles (and one accumulation): trainable gradients as ``ref``, frozen ones zero."""
    for g in (model.gradients()[k] for k in frozen):
        g.flags.writeable = False  # any write (a kernel, zero_grad's fill) would raise
    for _ in range(cycles):
        model.zero_grad()
        model.seed_dropout(0)
        model.forward(ids)
        model.backward(dy)
        for name, g in model.gradients().items():
            if name in frozen:
                assert not g.any(), name
            else:
                np.testing.assert_allclose(g, ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    model.seed_dropout(0)
    model.forward(ids)
    model.backward(dy)  # no zero_grad: accumulates
    for name in model.trainable():
        np.testing.assert_allclose(model.gradients()[name], 2 * ref[name], rtol=1e-5, atol=2e-6, err_msg=name)
    assert not any(model.gradients()[k].any() for k in frozen)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_frozen_layers_give_the_unfrozen_gradients_of_the_rest(arch):
    ids = np.random.default_rng(0).integers(0, 50, (2, 9))
    ref_model = MODELS[arch]()
    dy = output_grad(ref_model, ids)
    ref = reference_grads(ref_model, ids, dy)
    assert all(g.any() for g in ref.values())  # every parameter has a gradient when nothing is frozen

    model = MODELS[arch]()
    model.forward(ids)
    model.backward(dy)  # gradients in every buffer, which freezing clears
    for dotted, names in FREEZE[arch].items():
        layer_named(model, dotted).set_trainable(False, names)
    frozen = sorted(set(model.parameters()) - set(model.trainable()))
    assert frozen and model.trainable()
    for dotted, names in FREEZE[arch].items():  # what was asked, and no more
        layer = layer_named(model, dotted)
        assert all(not layer.requires_grad(n) for n in (names or []))
    check_cycles(model, ref, ids, dy, frozen)
    # unfrozen again, the layers compute every gradient as before
    model.set_trainable(True)
    for g in model.gradients().values():
        g.flags.writeable = True
    for name, g in reference_grads(model, ids, dy).items():
        np.testing.assert_allclose(g, ref[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("arch, freeze, dropout", [("llama", None, 0.0), ("gpt2", None, 0.0), ("gpt2", None, 0.3),
                                                   ("llama", "lora_A.weight", 0.0), ("gpt2", "lora_B.weight", 0.3),
                                                   ("gpt2", "lora_A.weight", 0.3)])
def test_lora_gradients_equal_those_of_the_unfrozen_model(arch, freeze, dropout):
    def build():
        model = MODELS[arch]()
        apply_lora(model, rank=4, alpha=8, rng=3, dropout=dropout)
        model.train()
        rng = np.random.default_rng(4)
        for name, p in model.parameters().items():
            if name.endswith("lora_B.weight"):
                p[...] = 0.1 * rng.standard_normal(p.shape)
        return model

    ids = np.random.default_rng(0).integers(0, 50, (2, 9))
    unfrozen = build()
    unfrozen.set_trainable(True)  # the same model with nothing frozen: every gradient computed
    dy = output_grad(unfrozen, ids)
    ref = reference_grads(unfrozen, ids, dy)
    assert all(g.any() for g in ref.values())
    model = build()
    if freeze:  # adapters frozen in part: one of the two matrices of each
        for layer in lora_layers(model).values():
            layer.set_trainable(False, freeze)
    frozen = [n for n in model.parameters() if ".lora_" not in n or (freeze and n.endswith(freeze))]
    assert sorted(set(model.parameters()) - set(model.trainable())) == sorted(frozen)
    check_cycles(model, ref, ids, dy, frozen)


def test_frozen_linear_weight_against_torch():
    torch = pytest.importorskip("torch")
    layer = Linear(6, 5, rng=0)
    layer.set_trainable(False, "weight")  # the bias alone trains
    module = torch.nn.Linear(6, 5)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.weight))
    module.weight.requires_grad_(False)
    x = np.random.default_rng(1).standard_normal((3, 4, 6)).astype(np.float32)
    check_layer_against_torch(layer, module, x, names={"bias": "bias"})
    assert not layer.grad("weight").any()


@pytest.mark.parametrize("accumulate", [False, True])
def test_frozen_linear_variants_give_the_unfrozen_dx(accumulate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 6)).astype(np.float32)
    dy = rng.standard_normal((7, 5)).astype(np.float32)
    start = rng.standard_normal((7, 6)).astype(np.float32)
    outs = []
    for freeze in (False, True):
        layer = Linear(6, 5, rng=0)
        layer.set_trainable(not freeze)
        layer.forward(x)
        out = start.copy()
        layer.backward(dy, out=out, accumulate=accumulate)
        outs.append(out)
        assert layer.grad("weight").any() != freeze and layer.grad("bias").any() != freeze
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    want = dy.astype(np.float64) @ Linear(6, 5, rng=0).weight + (start if accumulate else 0)
    np.testing.assert_allclose(outs[1], want, rtol=1e-5, atol=1e-5)


def test_frozen_layernorm_weight_against_torch():
    torch = pytest.importorskip("torch")
    layer = LayerNorm(8)
    layer.weight[...] = np.random.default_rng(0).uniform(0.5, 1.5, 8)
    layer.set_trainable(False, "weight")
    module = torch.nn.LayerNorm(8)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(layer.weight))
    module.weight.requires_grad_(False)
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    check_layer_against_torch(layer, module, x, names={"bias": "bias"})
    assert not layer.grad("weight").any()


@pytest.mark.parametrize("make", [lambda: LayerNorm(8), lambda: RMSNorm(8)])
def test_frozen_norms_give_the_unfrozen_dx(make):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    dy = rng.standard_normal((4, 8)).astype(np.float32)
    dxs = []
    for freeze in (False, True):
        layer = make()
        layer.weight[...] = np.linspace(0.5, 1.5, 8)
        layer.set_trainable(not freeze)
        layer.forward(x)
        dxs.append(layer.backward(dy).copy())
        assert all(g.any() != freeze for g in layer.gradients().values())
    np.testing.assert_array_equal(dxs[1], dxs[0])


def test_tied_head_with_a_frozen_embedding_computes_dx_alone():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 20)).astype(np.float32)
    emb = Embedding(20, 8, rng=0)
    head = TiedLMHead(emb)
    emb.set_trainable(False)
    head.forward(x)
    dx = head.backward(dy)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ emb.weight, rtol=1e-5, atol=1e-5)
    assert not emb.grad("weight").any()
    head.backward(dy)
    assert not emb.grad("weight").any()


def test_set_trainable_names_are_checked():
    layer = Linear(3, 2)
    with pytest.raises(ValueError, match="names: expected some of Linear's own parameters"):
        layer.set_trainable(False, ["weights"])
    with pytest.raises(KeyError, match="name: Linear has no parameter 'w'"):
        layer.requires_grad("w")
    layer.set_trainable(False, "bias")
    assert layer.trainable() == ["weight"] and not layer.requires_grad("bias")
    layer.set_trainable(True, ["bias"])
    assert layer.trainable() == ["weight", "bias"]


def test_large_gradients_are_lazily_mapped_zeros():
    g = lazy_zeros((LAZY_BYTES // 4 + 1,))
    assert not g.any() and g.flags.writeable and g.flags.c_contiguous and g.ctypes.data % 64 == 0
    small = lazy_zeros((3, 2))
    assert not small.any() and small.shape == (3, 2)
