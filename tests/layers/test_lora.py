"""LoRA adapters: gradients by finite differences, frozen base weights, merging, and PEFT's format through peft."""

import json

import numpy as np
import pytest

import qorus_jit
from qorus_jit.layers import Linear, LoRALinear, apply_lora, load_lora, merge_lora, save_lora
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.train.optim import SGD, AdamW
from tests.helpers import torch_or_skip
from tests.models.reference import transformers_or_skip

CFG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=50, max_seq_len=16)


def _lora(rng=0, in_f=7, out_f=5, rank=3, alpha=6.0):
    layer = LoRALinear(Linear(in_f, out_f, rng=rng), rank=rank, alpha=alpha, rng=rng)
    layer.lora_B[...] = np.random.default_rng(rng + 1).standard_normal(layer.lora_B.shape)
    return layer


def _randomize_b(model, seed=3):
    rng = np.random.default_rng(seed)
    for name, p in model.parameters().items():
        if name.endswith("lora_B.weight"):
            p[...] = 0.1 * rng.standard_normal(p.shape)


def test_forward_matches_float64_formula():
    layer = _lora()
    x = np.random.default_rng(5).standard_normal((2, 4, 7)).astype(np.float32)
    W, b = layer.base.weight.astype(np.float64), layer.base.bias.astype(np.float64)
    A, B = layer.lora_A.astype(np.float64), layer.lora_B.astype(np.float64)
    want = x @ W.T + b + 6.0 / 3 * (x @ A.T) @ B.T
    np.testing.assert_allclose(layer.forward(x), want, rtol=1e-5, atol=1e-5)


def test_init_as_peft():
    layer = LoRALinear(Linear(400, 300, rng=0), rank=64, alpha=16, rng=0)
    assert not layer.lora_B.any()  # B zeros: the adapter starts as the identity of the base
    bound = 1 / np.sqrt(400)  # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in)
    assert np.abs(layer.lora_A).max() <= bound and np.abs(layer.lora_A).max() > 0.95 * bound
    assert abs(layer.lora_A.std() - bound / np.sqrt(3)) < 0.02 * bound


@pytest.mark.parametrize("accumulate", [False, True])
def test_gradients_by_finite_differences(accumulate):
    # L = sum(y * w) is linear in A (B fixed), in B (A fixed) and in x, so central differences are exact up to
    # rounding: a large step keeps the float32 rounding small relative to the difference.
    layer = _lora()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    w = rng.standard_normal((3, 5)).astype(np.float32)

    def loss():
        return float(np.sum(layer.forward(x).astype(np.float64) * w))

    layer.zero_grad()
    layer.forward(x)
    if accumulate:
        prior = rng.standard_normal(x.shape).astype(np.float32)
        dx = prior.copy()
        layer.backward(w, out=dx, accumulate=True)
        dx = dx - prior
    else:
        dx = layer.backward(w).copy()
    grads = layer.gradients()
    h = 0.5
    for arr, g in ((layer.lora_A, grads["lora_A.weight"]), (layer.lora_B, grads["lora_B.weight"]), (x, dx)):
        num = np.zeros(arr.shape)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = loss()
            arr[i] = old - h
            down = loss()
            arr[i] = old
            num[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-4 * np.abs(num).max())
    assert not grads["weight"].any() and not grads["bias"].any()  # the frozen base gets no gradient


def test_frozen_base_unchanged_by_optimizer_steps():
    model = Llama(CFG, rng=0)
    apply_lora(model, ("q", "v", "down"), rank=4, alpha=8)
    assert set(model.trainable()) == {n for n in model.parameters() if ".lora_" in n}
    assert len(model.trainable()) == 2 * 3 * CFG.n_layers
    frozen = {n: p.copy() for n, p in model.parameters().items() if ".lora_" not in n}
    ids = np.random.default_rng(0).integers(0, 50, (2, 8))
    for opt in (AdamW(model, lr=1e-2, weight_decay=0.1), SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)):
        before = {n: p.copy() for n, p in model.parameters().items() if ".lora_" in n}
        for _ in range(3):
            logits = model.forward(ids)
            opt.zero_grad()
            model.backward(np.ones_like(logits) / logits.size)
            opt.clip_grad_norm(1.0)
            opt.step()
        tensors, _ = opt.state_dict()
        assert tensors and all(".lora_" in k for k in tensors)  # no optimizer state for frozen weights
        for n, p in model.parameters().items():
            if ".lora_" in n:
                assert not np.array_equal(p, before[n]), n  # the adapters train
            else:
                np.testing.assert_array_equal(p, frozen[n], err_msg=n)
                if n.rsplit(".", 2)[-2] in ("q_proj", "v_proj", "down_proj"):
                    assert not model.gradients()[n].any(), n  # an adapter's base: no gradient computed


def test_merge_gives_the_same_logits():
    model = Llama(CFG, rng=0)
    apply_lora(model, rank=4, alpha=8)
    _randomize_b(model)
    ids = np.random.default_rng(1).integers(0, 50, (2, 9))
    with_adapters = model.forward(ids).copy()
    base = Llama(CFG, rng=0).forward(ids).copy()
    assert np.abs(with_adapters - base).max() > 1e-2  # the adapters change the output
    assert merge_lora(model) == 7 * CFG.n_layers
    assert set(model.parameters()) == set(Llama(CFG, rng=0).parameters())
    assert model.trainable() == list(model.parameters())
    np.testing.assert_allclose(model.forward(ids), with_adapters, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    model = Llama(CFG, rng=0)
    with pytest.raises(ValueError, match="targets: unknown 'qkv'"):
        apply_lora(model, ("q", "qkv"))
    with pytest.raises(ValueError, match="rank: expected 1 <= rank <= 16"):
        apply_lora(model, ("k",), rank=17)  # k_proj: 32 -> 2 kv heads * 8 = 16
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(Linear(4, 6), rank=5)
    assert not any(isinstance(c, LoRALinear) for c in model.children().values())
    assert model.trainable() == list(model.parameters())  # nothing changed by a refused call
    with pytest.raises(ValueError, match="model: has no LoRA adapters"):
        save_lora(model, "unused")
    apply_lora(model, ("q",), rank=2)
    with pytest.raises(ValueError, match="model: has LoRA adapters already"):
        apply_lora(model, ("v",), rank=2)


def test_save_load_round_trip(tmp_path):
    model = Llama(CFG, rng=0)
    apply_lora(model, ("q", "o", "up"), rank=2, alpha=4)
    _randomize_b(model)
    save_lora(model, tmp_path / "a", base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4
    assert sorted(config["target_modules"]) == ["o_proj", "q_proj", "up_proj"]
    other = Llama(CFG, rng=0)
    load_lora(other, tmp_path / "a")
    ids = np.arange(10).reshape(1, 10)
    np.testing.assert_array_equal(other.forward(ids), model.forward(ids))


def test_load_refuses_bad_folders_before_changing_the_model(tmp_path):
    model = Llama(CFG, rng=0)
    apply_lora(model, ("q", "v"), rank=2, alpha=4)
    save_lora(model, tmp_path)
    cfg_file = tmp_path / "adapter_config.json"
    good = json.loads(cfg_file.read_text())
    for key, value, message in (("peft_type", "IA3", "peft_type: expected 'LORA'"),
                                ("target_modules", ["q_proj", "c_attn"], "target_modules: expected"),
                                ("r", 0, "r: expected a positive int"),
                                ("lora_alpha", "16", "lora_alpha: expected a positive number"),
                                ("r", 3, r"lora_A.weight: expected shape \(3, 32\), got \(2, 32\)"),
                                ("target_modules", ["q_proj", "v_proj", "k_proj"], "missing .*k_proj.lora_A")):
        cfg_file.write_text(json.dumps({**good, key: value}))
        other = Llama(CFG, rng=0)
        with pytest.raises(ValueError, match=message):
            load_lora(other, tmp_path)
        assert other.trainable() == list(other.parameters()), key  # no adapter applied
    cfg_file.write_text(json.dumps({**good, "lora_alpha": 8}))
    with pytest.raises(ValueError, match="lora_alpha: 8 differs"):
        load_lora(model, tmp_path)


@pytest.mark.parametrize("arch,targets", [("llama", None), ("gpt2", ("o", "up")), ("gpt2", None)])
def test_peft_loads_the_adapters(tmp_path, arch, targets):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    peft = pytest.importorskip("peft")
    if arch == "llama":
        cls, hf_cfg = transformers.LlamaForCausalLM, transformers.LlamaConfig(
            vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, tie_word_embeddings=False)
    else:  # GPT-2's Conv1D layers (weights stored transposed; "o" and "down" are both named c_proj)
        cls, hf_cfg = transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    torch.manual_seed(0)
    cls(hf_cfg).float().eval().save_pretrained(tmp_path / "base")
    model = qorus_jit.load_pretrained(tmp_path / "base")
    adapters = apply_lora(model, targets, rank=4, alpha=16, rng=1)
    assert len(adapters) == 2 * (len(targets) if targets else 7 if arch == "llama" else 4)
    _randomize_b(model)
    save_lora(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))

    ref = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base").float().eval(),
                                         tmp_path / "adapter").eval()
    n_lora = sum(1 for n, _ in ref.named_parameters() if "lora_A" in n)
    assert n_lora == len(adapters)  # peft adapted the same layers
    ids = np.random.default_rng(2).integers(0, 61, (2, 11))
    ours = model.forward(ids).copy()
    with torch.no_grad():
        theirs = ref(torch.tensor(ids)).logits.numpy()
        plain = cls.from_pretrained(tmp_path / "base").float().eval()(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs - plain).max() > 1e-2  # peft applied the adapters
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_llama_decoding_with_adapters_equals_its_forward():
    """Token-by-token decoding of a Llama with unmerged adapters takes them into account (the fused one-token
    kernel reads the plain weights, so it is not used then): its logits equal the full forward's."""
    from qorus_jit.layers import DecodeState
    from qorus_jit.layers.lora import apply_lora, lora_layers
    from qorus_jit.models import Llama, LlamaConfig

    model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=64, max_seq_len=16), rng=0)
    apply_lora(model, rank=4, alpha=8, rng=1)
    rng = np.random.default_rng(2)
    for layer in lora_layers(model).values():  # B starts at zero: make the adapters count
        layer.parameters()["lora_B.weight"][...] = rng.standard_normal(layer.parameters()["lora_B.weight"].shape)
    ids = np.array([[3, 7, 1, 9, 4]], np.int64)
    want = model.forward(ids)[0].copy()
    state = DecodeState(batch=1, max_seq_len=16)
    for t in range(ids.shape[1]):
        got = model.forward_decode(ids[:, t:t + 1], state=state, last_only=True)[0, -1]
        state.advance(1)
        np.testing.assert_allclose(got, want[t], rtol=1e-4, atol=1e-5)
