"""LoRA dropout on the adapter input and the training mode: masks from the documented seed, gradients against a
NumPy float64 reference with the same mask, none in evaluation or decoding, PEFT's lora_dropout, the trainer."""

import json

import numpy as np
import pytest

from qorus_jit.data import TextDataset
from qorus_jit.layers import DecodeState, Linear, LoRALinear, apply_lora, load_lora, save_lora
from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig
from qorus_jit.train.optim import AdamW
from qorus_jit.train.trainer import Trainer
from tests.layers.test_lora import _randomize_b

CFG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=50, max_seq_len=16)


def _lora(dropout, rng=0, in_f=40, out_f=24, rank=3, alpha=6.0):
    layer = LoRALinear(Linear(in_f, out_f, rng=rng), rank=rank, alpha=alpha, rng=rng, dropout=dropout)
    layer.lora_B[...] = np.random.default_rng(rng + 1).standard_normal(layer.lora_B.shape)
    return layer


def _keep(key, shape, p, n=0):
    """The documented mask: the n-th forward after seed_dropout(*key) of the layer at index 0 of the walk."""
    return np.random.default_rng((*key, 0, n)).random(shape, dtype=np.float32) >= np.float32(p)


def test_dropout_zero_is_bit_identical_in_both_modes():
    x = np.random.default_rng(5).standard_normal((3, 4, 40)).astype(np.float32)
    dy = np.random.default_rng(6).standard_normal((3, 4, 24)).astype(np.float32)
    runs = []
    for mode in (False, True):
        layer = _lora(0.0)
        layer.train(mode)
        y = layer.forward(x).copy()
        dx = layer.backward(dy).copy()
        runs.append((y, dx, {k: g.copy() for k, g in layer.gradients().items()}))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    for k in runs[0][2]:
        np.testing.assert_array_equal(runs[0][2][k], runs[1][2][k], err_msg=k)
    model, plain = Llama(CFG, rng=0), Llama(CFG, rng=0)
    apply_lora(model, rank=4, alpha=8, dropout=0.0)
    apply_lora(plain, rank=4, alpha=8)
    _randomize_b(model)
    _randomize_b(plain)
    ids = np.random.default_rng(1).integers(0, 50, (2, 9))
    model.train()
    model.seed_dropout(0, 1, 2)
    np.testing.assert_array_equal(model.forward(ids), plain.forward(ids))


@pytest.mark.parametrize("accumulate", [False, True])
def test_gradients_with_a_mask_match_float64(accumulate):
    p, key = 0.4, (11, 2, 1)
    layer = _lora(p)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 40)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 24)).astype(np.float32)
    start = rng.standard_normal(x.shape).astype(np.float32)
    layer.train()
    layer.seed_dropout(*key)
    y = layer.forward(x)
    out = start.copy() if accumulate else None
    layer.zero_grad()
    dx = layer.backward(dy, out=out, accumulate=accumulate)

    keep = _keep(key, (10, 40), p).reshape(x.shape)
    m = keep / (1 - p)
    W, b = layer.base.weight.astype(np.float64), layer.base.bias.astype(np.float64)
    A, B, s = layer.lora_A.astype(np.float64), layer.lora_B.astype(np.float64), 6.0 / 3
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    xd = x64 * m
    np.testing.assert_allclose(y, x64 @ W.T + b + s * (xd @ A.T) @ B.T, rtol=1e-5, atol=1e-5)
    want_dx = dy64 @ W + s * ((dy64 @ B) @ A) * m + (start if accumulate else 0)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    dy2, xd2 = dy64.reshape(-1, 24), xd.reshape(-1, 40)
    np.testing.assert_allclose(layer.grad("lora_B.weight"), s * dy2.T @ (xd2 @ A.T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grad("lora_A.weight"), s * (dy2 @ B).T @ xd2, rtol=1e-5, atol=1e-5)
    assert not layer.base.grad("weight").any() and not layer.base.grad("bias").any()
    layer.backward(dy)  # again after the same forward: the same mask, the gradients twice
    np.testing.assert_allclose(layer.grad("lora_A.weight"), 2 * s * (dy2 @ B).T @ xd2, rtol=1e-5, atol=1e-5)


def test_gradient_of_a_by_finite_differences_with_the_same_mask():
    # L = sum(y * w) is linear in A, so central differences are exact up to rounding; each forward is reseeded
    layer = _lora(0.3, in_f=7, out_f=5)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 7)).astype(np.float32)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    layer.train()

    def loss():
        layer.seed_dropout(4, 5)
        return float(np.sum(layer.forward(x).astype(np.float64) * w))

    layer.zero_grad()
    loss()
    layer.backward(w)
    g = layer.grad("lora_A.weight").copy()
    num = np.zeros_like(g)
    for i in np.ndindex(g.shape):
        old = layer.lora_A[i]
        layer.lora_A[i] = old + 0.5
        up = loss()
        layer.lora_A[i] = old - 0.5
        down = loss()
        layer.lora_A[i] = old
        num[i] = up - down
    assert num.any()
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-4 * np.abs(num).max())


def test_the_expected_fraction_is_dropped_and_the_seed_fixes_the_mask():
    layer = _lora(0.3)
    x = np.ones((500, 40), np.float32)
    layer.train()
    layer.seed_dropout(1, 2, 3)
    layer.forward(x)
    mask = layer._mask.copy()
    assert abs(np.mean(~mask) - 0.3) < 0.01  # 20000 draws: the binomial's sd is 0.003
    np.testing.assert_array_equal(mask, _keep((1, 2, 3), x.shape, 0.3))
    np.testing.assert_array_equal(layer._x_lora, np.where(mask, np.float32(1 / 0.7), 0))  # what the adapter read
    layer.forward(x)  # the next forward: another mask
    assert not np.array_equal(layer._mask, mask)
    layer.seed_dropout(1, 2, 3)  # the same key again: the same masks
    layer.forward(x)
    np.testing.assert_array_equal(layer._mask, mask)
    layer.seed_dropout(1, 3, 3)  # another step
    layer.forward(x)
    assert not np.array_equal(layer._mask, mask)


def test_layers_of_a_model_draw_different_masks():
    model = Llama(CFG, rng=0)
    adapters = apply_lora(model, ("q", "v"), rank=4, alpha=8, dropout=0.5)
    ids = np.random.default_rng(1).integers(0, 50, (2, 9))
    model.train()
    model.seed_dropout(0, 0, 0)
    model.forward(ids)
    masks = [a._mask.copy() for a in adapters.values()]
    assert all(m.shape == (18, 32) for m in masks)
    assert len({m.tobytes() for m in masks}) == len(masks)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_evaluation_and_decoding_drop_nothing(arch):
    def build(dropout):
        model = (Llama(CFG, rng=0) if arch == "llama" else
                 GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=50, max_seq_len=16), rng=0))
        apply_lora(model, rank=4, alpha=8, dropout=dropout)
        _randomize_b(model)
        return model

    ids = np.random.default_rng(2).integers(0, 50, (1, 7))
    model, plain = build(0.5), build(0.0)
    assert not model.training  # evaluation mode by default
    want = plain.forward(ids).copy()
    np.testing.assert_array_equal(model.forward(ids), want)
    model.train()
    model.seed_dropout(3)
    assert np.abs(model.forward(ids) - want).max() > 1e-3  # training mode drops
    state = DecodeState(batch=1, max_seq_len=16)
    got = model.forward_decode(ids[:, :4], state=state).copy()
    state.advance(4)
    last = model.forward_decode(ids[:, 4:], state=state)
    assert model.training and all(layer.training for layer in model._walk())  # the mode is kept
    np.testing.assert_allclose(got, want[:, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last, want[:, 4:], rtol=1e-5, atol=1e-5)
    model.eval()
    assert not any(layer.training for layer in model._walk())
    np.testing.assert_array_equal(model.forward(ids), want)


def test_bad_dropout_and_seeds_are_named():
    for bad in (1.0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="dropout: expected"):
            LoRALinear(Linear(4, 4), rank=2, dropout=bad)
        with pytest.raises(ValueError, match="dropout: expected"):
            apply_lora(Llama(CFG, rng=0), rank=2, dropout=bad)
    layer = _lora(0.1)
    with pytest.raises(ValueError, match=r"key\[1\]: expected a non-negative int"):
        layer.seed_dropout(1, -2)
    with pytest.raises(ValueError, match="key: expected at least one"):
        layer.seed_dropout()
    with pytest.raises(TypeError, match="mode: expected a bool"):
        layer.train("yes")


def test_save_and_load_keep_lora_dropout(tmp_path):
    model = Llama(CFG, rng=0)
    apply_lora(model, ("q", "v"), rank=4, alpha=8, dropout=0.05)
    save_lora(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["lora_dropout"] == 0.05
    adapters = load_lora(Llama(CFG, rng=0), tmp_path / "a")
    assert {a.dropout for a in adapters.values()} == {0.05}
    other = Llama(CFG, rng=0)
    apply_lora(other, ("q", "v"), rank=4, alpha=8, dropout=0.1)
    with pytest.raises(ValueError, match="lora_dropout: 0.05 differs"):
        load_lora(other, tmp_path / "a")
    config["lora_dropout"] = 1.5
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter_config.json: lora_dropout: expected a finite real .* in \[0, 1\)"):
        load_lora(Llama(CFG, rng=0), tmp_path / "a")
    del config["lora_dropout"]  # absent: none
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    assert {a.dropout for a in load_lora(Llama(CFG, rng=0), tmp_path / "a").values()} == {0.0}


def _trainer(run_dir, steps, seen=None):
    model = Llama(LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=40, max_seq_len=16), rng=0)
    apply_lora(model, rank=2, alpha=4, dropout=0.3)
    if seen is not None:  # the training mode of each forward
        forward = model.forward
        model.forward = lambda ids: (seen.append(model.training), forward(ids))[1]
    data = TextDataset(np.random.default_rng(5).integers(0, 40, 2000), seq_len=12, val_fraction=0.2, seed=7)
    return Trainer(model, AdamW(model, lr=1e-2), data, steps=steps, batch_size=3, grad_accum=2, eval_every=2,
                   eval_batches=1, ckpt_every=2, run_dir=run_dir, progress=False, seed=9)


def test_trainer_trains_in_training_mode_and_resumes_bit_exactly(tmp_path):
    seen = []
    full = _trainer(tmp_path / "full", 4, seen)
    full.fit()
    # per step two micro-batch forwards in training mode, then (every 2 steps) one evaluation forward
    assert seen == [True, True, True, True, False, True, True, True, True, False]
    assert not full.model.training
    first = _trainer(tmp_path / "split", 2)
    first.fit()
    second = _trainer(tmp_path / "split", 4)
    second.resume(tmp_path / "split")
    second.fit()
    for name, p in full.model.parameters().items():
        np.testing.assert_array_equal(second.model.parameters()[name], p, err_msg=name)
    other = _trainer(tmp_path / "other", 4)
    other.seed = 10  # another seed: other masks, other weights
    other.fit()
    assert any(not np.array_equal(other.model.parameters()[n], p) for n, p in full.model.parameters().items())
