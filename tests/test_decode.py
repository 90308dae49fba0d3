"""Single-token decode kernels against NumPy float64 and the layer-by-layer path."""

import numpy as np
import pytest

from qorus_jit.core.numerics import get_num_threads, max_threads, set_num_threads
from qorus_jit.kernels.decode import _head_attention, _matvec, _matvec_cols, _matvec_rows_streamed, _spread
from qorus_jit.layers import DecodeState, Graph, TransformerBlock
from qorus_jit.layers.base import named_layers
from qorus_jit.models import Llama, LlamaConfig


@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("n,k", [(1, 7), (5, 288), (35, 64), (1000, 33)])
def test_matvec_matches_numpy(n, k, one_row):
    """The layers' one-row product (``K.matvec``), reading W either way (the CPU picks, ``decode.one_row``)."""
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    out = np.empty(n, np.float32)
    _matvec(out, w, x, one_row)
    np.testing.assert_allclose(out, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("n,k", [(1, 7), (7, 288), (9, 64), (70, 33)])
def test_decode_products_read_either_way_to_numpys(one_row, n, k):
    """The one-call decoder's float32 products both ways (a row at a time, or four rows with prefetch: the CPU
    picks, ``decode.one_row``): a window of columns of every row, and the head's rows lo..hi; in float64."""
    rng = np.random.default_rng(n * k)
    w = rng.standard_normal((n, k + 5)).astype(np.float32)
    x = rng.standard_normal(k + 5).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    _matvec_cols(out, w, x[2:k + 2], 2, k + 2, one_row)
    np.testing.assert_allclose(out, w[:, 2:k + 2].astype(np.float64) @ x[2:k + 2], rtol=1e-5, atol=1e-4)
    out[:] = np.nan
    lo, hi = n // 3, n - n // 4
    _matvec_rows_streamed(out, w, x, lo, hi, one_row)
    np.testing.assert_allclose(out[lo:hi], w[lo:hi].astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    assert np.all(np.isnan(out[:lo])) and np.all(np.isnan(out[hi:]))


@pytest.mark.parametrize("D", [7, 16, 48, 72])
@pytest.mark.parametrize("L", [1, 7, 8, 9, 24, 30, 32])
def test_head_attention_matches_numpy(D, L):
    """One query head against cache rows 0..L-1 of its kv head, in float64: head sizes in whole and partial
    vector chunks, positions in whole and partial blocks of eight, past the keys' prefetch distance and the whole
    cache, with and without the prefetch; rows past L and other heads are not read."""
    rng = np.random.default_rng(D * L)
    T, Hkv, H = 32, 3, 6
    k_cache = rng.standard_normal((Hkv, T, D)).astype(np.float32)
    v_cache = rng.standard_normal((Hkv, T, D)).astype(np.float32)
    k_cache[:, L:], v_cache[:, L:] = np.nan, np.nan
    q = rng.standard_normal(H * D).astype(np.float32)
    scale = np.float32(D ** -0.5)
    for hh in range(H):
        hk = hh // (H // Hkv)
        s = k_cache[hk, :L].astype(np.float64) @ q[hh * D:(hh + 1) * D].astype(np.float64) * float(scale)
        p = np.exp(s - s.max())
        want = (p / p.sum()) @ v_cache[hk, :L].astype(np.float64)
        for prefetch in (False, True):
            att = np.full(H * D, np.nan, np.float32)
            _head_attention(att, np.zeros((H, T), np.float32), q, k_cache, v_cache, hh, hk, L, scale, prefetch)
            np.testing.assert_allclose(att[hh * D:(hh + 1) * D], want, rtol=1e-5, atol=1e-5)
            assert np.all(np.isnan(np.delete(att, np.s_[hh * D:(hh + 1) * D])))


def test_claims_spread_to_contiguous_blocks():
    """The one-region decoder's claims map to items one to one; taken in turn by n participants, each gets a
    contiguous block where n divides the items."""
    for m in range(1, 13):
        for n in range(1, 5):
            items = [_spread(c, m, n) for c in range(m)]
            assert sorted(items) == list(range(m)), (m, n)
    assert [_spread(c, 6, 2) for c in range(6)] == [0, 3, 1, 4, 2, 5]
    assert [_spread(c, 4, 2) for c in range(4)] == [0, 2, 1, 3]


def _llama(n_kv_heads, hidden=48, n_layers=3, tie=True):
    cfg = LlamaConfig(dim=32, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=hidden, vocab_size=61,
                      max_seq_len=16, norm_eps=1e-5, tie_embeddings=tie)
    model = Llama(cfg, rng=1)
    for name, p in model.parameters().items():  # norms away from 1 so that their weights matter
        if "norm" in name:
            p += np.random.default_rng(2).normal(0, 0.1, p.shape).astype(np.float32)
    return model


@pytest.mark.parametrize("amd", [False, True])
def test_float32_decoder_reads_by_rows_from_memory(monkeypatch, amd):
    """The float32 one-call decoder reads W a row at a time where the CPU's way is that (AMD), and elsewhere once a
    token's bytes (about the model's parameters) are more than a quarter of the L3, four rows sharing x below."""
    from qorus_jit.kernels import quant_x86

    monkeypatch.setattr(quant_x86, "one_row", lambda: amd)
    n = sum(p.nbytes for p in _llama(2).parameters().values())
    for l3, want in ((8 * n, amd), (2 * n, True)):
        monkeypatch.setattr(quant_x86, "l3_bytes", lambda l3=l3: l3)
        model = _llama(2)
        model.forward_decode(np.array([[3]], np.int64), state=DecodeState(1, 16))
        assert model._decoder.one_row is want, l3
    assert quant_x86.one_row_float32(10**12) is True and quant_x86.one_row_float32(0) is amd


@pytest.mark.parametrize("amd", [False, True])
def test_layers_read_w_by_the_models_size(monkeypatch, amd):
    """Node by node (a Llama with biases), ``decode_one`` sets every linear layer's and the tied head's ``one_row``
    as the one-call decoder sets its own: the CPU's way (AMD: a row at a time), else a row at a time once the
    model's bytes are more than a quarter of the L3. The logits either way are the full forward's (BLAS) at the
    last position."""
    from qorus_jit.kernels import quant_x86
    from qorus_jit.layers import Linear
    from qorus_jit.layers.head import TiedLMHead

    monkeypatch.setattr(quant_x86, "one_row", lambda: amd)
    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=61, max_seq_len=16,
                         attention_bias=True, mlp_bias=True, tie_embeddings=True)
    n = sum(p.nbytes for p in Llama(config, rng=1).parameters().values())
    ids = [5, 9, 2, 60, 7]
    for l3, want in ((8 * n, amd), (2 * n, True)):
        monkeypatch.setattr(quant_x86, "l3_bytes", lambda l3=l3: l3)
        model = Llama(config, rng=1)
        state = DecodeState(1, 16)
        for tok in ids:
            got = model.decode_one(tok, state)
        assert model._decoder is None  # node by node
        layers = [c for _, _, _, c in named_layers(model) if isinstance(c, (Linear, TiedLMHead))]
        assert len(layers) == 2 * 7 + 1 and all(c.one_row is want for c in layers), l3
        full = model.forward(np.array([ids]))[0, -1]
        np.testing.assert_allclose(got, full, rtol=1e-4, atol=1e-5)


def test_l3_bytes_reads_the_cache_size():
    """The L3's size as sysfs writes it ("491520K"), or 32 MiB where Linux reports none."""
    from pathlib import Path

    from qorus_jit.kernels.quant_x86 import l3_bytes

    got = l3_bytes.__wrapped__()
    sizes = [(d / "size").read_text().strip() for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")
             if (d / "level").exists() and (d / "level").read_text().strip() == "3"]
    if not sizes:
        assert got == 32 * 2**20
    else:
        assert got >= 2**20 and (f"{got // 1024}K" in sizes or f"{got // 2**20}M" in sizes)


@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("n_kv_heads,threads,hidden", [(4, 2, 48), (2, 2, 48), (1, 2, 48), (4, 1, 50), (2, 2, 50)])
def test_fused_decode_thread_splits_equal_the_layers_one_by_one(monkeypatch, one_row, n_kv_heads, threads, hidden):
    """With as many kv heads as threads, the whole token in one region (its phases' items claimed), else block by
    block; the MLP runs one slice of the hidden units per thread (hidden 50: slices not whole groups of 32); the
    products read W either way (``one_row``, which the CPU picks: by rows, the down projection too). The layers
    one by one (``Graph.forward_decode``, the generic step) are the reference, caches included."""
    from qorus_jit.models import decoder

    monkeypatch.setattr(decoder, "one_row_float32", lambda n: one_row)
    model = _llama(n_kv_heads, hidden, n_layers=1)
    ids = np.random.default_rng(5).integers(0, 61, 12)
    fused, plain = DecodeState(1, 16), DecodeState(1, 16)
    before = get_num_threads()
    set_num_threads(min(threads, max_threads()))
    try:
        for t, tok in enumerate(ids):
            x = np.array([[tok]], np.int64)
            got = model.forward_decode(x, state=fused).copy()
            want = Graph.forward_decode(model, x, state=plain).copy()
            fused.advance(1)
            plain.advance(1)
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"position {t}")
    finally:
        set_num_threads(before)
    assert model._decoder is not None and model._decoder.one_row is one_row  # the one-call path ran so
    attn = model._blocks[0].self_attn
    cf, cp = fused.cache_for(attn), plain.cache_for(attn)
    np.testing.assert_allclose(cf.k[:, :, :12], cp.k[:, :, :12], atol=1e-6)
    np.testing.assert_allclose(cf.v[:, :, :12], cp.v[:, :, :12], atol=1e-6)


def test_transformer_block_decodes_with_its_cache():
    """The generic decoding step of a block: :meth:`TransformerBlock.forward` over the state's cache."""
    block = TransformerBlock(32, 4, 48, 2, norm_eps=1e-5, max_seq_len=16, rng=3)
    xs = np.random.default_rng(5).standard_normal((6, 1, 1, 32)).astype(np.float32)
    state, cache_state = DecodeState(1, 16), DecodeState(1, 16)
    full = block.forward(np.ascontiguousarray(xs[:, 0, 0][None])).copy()  # (1, 6, 32): every position at once
    for t, x in enumerate(xs):
        got = block.forward_decode(x, state=state).copy()
        want = block.forward(x, None, cache_state.cache_for(block.self_attn)).copy()
        state.advance(1)
        cache_state.advance(1)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got[0, 0], full[0, t], atol=1e-5, rtol=0, err_msg=f"position {t}")
    with pytest.raises(ValueError, match="expected state.pos = 7"):
        state.advance(1)
        block.forward_decode(xs[0], state=state)


def _at_threads(threads, fn, *args):
    """fn(*args) with ``threads`` threads (at most the machine's), the count restored after."""
    before = get_num_threads()
    set_num_threads(min(threads, max_threads()))
    try:
        return fn(*args)
    finally:
        set_num_threads(before)


def _one_call_equals_nodes(model, steps=14):
    """``model``'s one-call decoding of ``steps`` greedy tokens against its layers one by one (Graph's path)."""
    fused, nodes = DecodeState(1, 16), DecodeState(1, 16)
    tok = 7
    for t in range(steps):
        ids = np.array([[tok]], np.int64)
        got = model.forward_decode(ids, state=fused).copy()
        want = Graph.forward_decode(model, ids, state=nodes).copy()
        fused.advance(1)
        nodes.advance(1)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"position {t}")
        tok = int(np.argmax(got))
    assert model._decoder is not None  # the one-call path ran
    assert all(c.length == steps for c in fused.caches.values())


@pytest.mark.parametrize("activation,tie,one_row", [("gelu_new", True, False), ("gelu_new", False, True),
                                                    ("gelu", True, True)])
@pytest.mark.parametrize("threads,n_parts", [(1, 1), (2, 2), (2, 3)])
def test_gpt2_decodes_in_one_call_as_its_layers_one_by_one(monkeypatch, activation, tie, one_row, threads, n_parts):
    """GPT-2's blocks in the one-call decoder (its form: LayerNorm with biases, a bias after every product, no
    RoPE, a GELU MLP, learned positions): its logits and caches against the layers one by one; float32 W read
    either way, the hidden units in one to three slices (96: whole groups of 32)."""
    from qorus_jit.models import GPT2, GPT2Config, decoder

    monkeypatch.setattr(decoder, "one_row_float32", lambda n: one_row)
    monkeypatch.setattr(decoder, "decode_split", lambda n_kv_heads: (n_kv_heads >= n_parts, n_parts))
    model = GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=16, hidden_dim=96,
                            activation=activation, tie_embeddings=tie), rng=1)
    for name, prm in model.parameters().items():  # biases and norms away from their zero and one starts
        if prm.ndim == 1:
            prm[...] += np.random.default_rng(len(name)).standard_normal(prm.shape).astype(np.float32) * 0.1
    _at_threads(threads, _one_call_equals_nodes, model)
    assert model._decoder.one_row is one_row


def test_gpt2_decodes_node_by_node_where_one_call_cannot():
    """GPT-2 with LoRA adapters, quantized, a ReLU MLP or fewer heads than threads: node by node."""
    from qorus_jit.layers.lora import apply_lora
    from qorus_jit.models import GPT2, GPT2Config
    from qorus_jit.models.quantize import quantize_model

    config = dict(dim=32, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=16)
    assert GPT2(GPT2Config(**config), rng=1)._decode_plan() == "fp32"
    assert GPT2(GPT2Config(**config, activation="relu"), rng=1)._decode_plan() is None
    assert quantize_model(GPT2(GPT2Config(**config), rng=1), "int8")._decode_plan() is None
    lora = GPT2(GPT2Config(**config), rng=1)
    apply_lora(lora, rank=2)
    assert lora._decode_plan() is None
    if max_threads() >= 2:
        narrow = GPT2(GPT2Config(**{**config, "n_heads": 1}), rng=1)
        assert _at_threads(2, narrow._decode_plan) is None and _at_threads(1, narrow._decode_plan) == "fp32"


@pytest.mark.parametrize("one_row", [False, True])
@pytest.mark.parametrize("n_kv_heads,tie", [(4, True), (2, False), (1, True)])
def test_whole_model_decode_in_one_call_equals_the_nodes_one_by_one(monkeypatch, one_row, n_kv_heads, tie):
    from qorus_jit.models import decoder

    monkeypatch.setattr(decoder, "one_row_float32", lambda n: one_row)
    _one_call_equals_nodes(_llama(n_kv_heads, tie=tie))


@pytest.mark.parametrize("dtype,n_kv_heads,tie", [("int8", 4, True), ("int8", 2, False), ("bf16", 1, True),
                                                    ("bf16", 2, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_quantized_decode_in_one_call_equals_the_nodes_one_by_one(dtype, n_kv_heads, tie, threads):
    """bf16 / q8_0 weights: the one-call decoder (kernels.decode._llama_decode) against the layers one by one
    (QuantizedLinear's matvec kernels, tested against NumPy in test_quant.py), at each thread count."""
    from qorus_jit.models.quantize import quantize_model

    model = quantize_model(_llama(n_kv_heads, hidden=64, tie=tie), dtype)
    _at_threads(threads, _one_call_equals_nodes, model)
    assert model._decoder.fmt == ("q8_0" if dtype == "int8" else "bf16")


@pytest.mark.parametrize("n_kv_heads,tie", [(4, True), (2, False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_q8_0_decode_on_the_x86_signed_dot(monkeypatch, n_kv_heads, tie, threads):
    """int8 activations: the one-call decoder takes the signed dot of this CPU's fastest x86 path
    (``quant_x86.cpu_path("q8_0")``: "avx2" at least on an x86-64 CPU with AVX2; the default path elsewhere only
    where VNNI runs) and equals the layers one by one on the same path (their matvec, tested against NumPy in
    test_quant_x86.py)."""
    from qorus_jit.kernels import quant, quant_x86
    from qorus_jit.models.quantize import quantize_model

    path = quant_x86.cpu_path("q8_0")
    if path is None or not quant_x86.available()[path]:
        pytest.skip("no x86 q8_0 path on this CPU (or QORUS_PORTABLE is set)")
    monkeypatch.setitem(quant._PATHS, "q8_0", path)
    model = quantize_model(_llama(n_kv_heads, hidden=64, tie=tie), "int8")
    _at_threads(threads, _one_call_equals_nodes, model)
    xa, ya = model._decoder.scratch[-5], model._decoder.scratch[-3]  # (..., xa, xb, ya, yb, parts)
    assert xa.dtype == ya.dtype == np.int8  # the x86 activations, not the portable int16 ones


_OTHER_WAY = r"""
import qorus_jit.layers  # the reference, the layers one by one, keeps this CPU's one_row for their products
from qorus_jit.kernels import decode, quant, quant_x86
flip = not quant_x86.one_row()
decode.one_row = lambda: flip  # read while the decoder is typed: its int8 rows and down projection the other way
decode._PAIRS = not decode._PAIRS  # and float32 W from memory a row at a time, or two rows at a time
quant._PATHS["q8_0"] = quant_x86.cpu_path("q8_0")
from qorus_jit.models import decoder
from qorus_jit.models.quantize import quantize_model
from tests.test_decode import _at_threads, _llama, _one_call_equals_nodes
decoder.one_row_float32 = lambda n: True
for threads in (1, 2):
    _at_threads(threads, _one_call_equals_nodes, quantize_model(_llama(2, hidden=64, tie=False), "int8"))
    _at_threads(threads, _one_call_equals_nodes, _llama(2, hidden=64, tie=False))
print("ok", flip, decode._PAIRS)
"""


def test_q8_0_decode_the_other_cpu_kinds_way(tmp_path):
    """The int8 decoder reads W a row at a time with the down projection by rows on AMD CPUs, else eight rows with
    the down projection by column slices: a choice made while it is typed (``one_row()``), so that each machine
    would run only its own; so is whether float32 W from memory goes a row or two rows at a time
    (``decode._PAIRS``). A fresh process with a numba cache of its own types both the other way and checks the int8
    and float32 decoders against the layers one by one, so both ways run on every CPU with an x86 q8_0 path."""
    import os
    import subprocess
    import sys

    from qorus_jit.kernels import quant_x86

    path = quant_x86.cpu_path("q8_0")
    if path is None or not quant_x86.available()[path]:
        pytest.skip("no x86 q8_0 path on this CPU (or QORUS_PORTABLE is set)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _OTHER_WAY], env=env, cwd=root, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["ok", str(not quant_x86.one_row()), str(quant_x86.one_row())]


@pytest.mark.parametrize("dtype,one_row", [("fp32", False), ("fp32", True), ("int8", None), ("bf16", None)])
@pytest.mark.parametrize("hidden", [64, 96])
def test_decode_in_three_slices(monkeypatch, dtype, one_row, hidden):
    """The feed-forward's slices of whole groups of 32, three of them (hidden 96: one group each; 64: the last one
    empty, its partial sums zero), against the layers one by one; float32 W read either way (by rows: the down
    projection by rows after the slices)."""
    from qorus_jit.models import decoder
    from qorus_jit.models.quantize import quantize_model

    monkeypatch.setattr(decoder, "decode_split", lambda n_kv_heads: (n_kv_heads >= 2, 3))
    monkeypatch.setattr(decoder, "one_row_float32", lambda n: bool(one_row))
    model = _llama(2, hidden=hidden, tie=True)
    _one_call_equals_nodes(model if dtype == "fp32" else quantize_model(model, dtype))


def test_decode_plan_follows_layer_swaps():
    """The one-call decoder is chosen once and chosen again after a layer swap (quantizing, LoRA)."""
    from qorus_jit.layers.lora import apply_lora, merge_lora
    from qorus_jit.models.quantize import quantize_model

    model = _llama(2, tie=True)
    assert model._decode_plan() == "fp32"
    apply_lora(model, targets=["q"], rank=2)
    assert model._decode_plan() is None  # adapters: node by node
    merge_lora(model)
    assert model._decode_plan() == "fp32"
    model = quantize_model(_llama(2, hidden=64, tie=True), "bf16")
    assert model._decode_plan() == "bf16"


def test_models_with_biases_decode_node_by_node():
    """A Llama with biases has no fused kernel: it decodes through the layers, to the full forward's logits."""
    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=61, max_seq_len=16,
                      attention_bias=True, mlp_bias=True)
    model = Llama(cfg, rng=1)
    ids = np.random.default_rng(3).integers(0, 61, 8)
    full = model.forward(ids[None]).copy()[0]
    state = DecodeState(1, 16)
    for t, tok in enumerate(ids):
        got = model.forward_decode(np.array([[tok]]), state=state)[0, 0]
        state.advance(1)
        np.testing.assert_allclose(got, full[t], atol=1e-4, rtol=0, err_msg=f"position {t}")
    assert model._decoder is None


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


@pytest.mark.parametrize("kind", ["fp32", "int8", "biases", "gpt2"])
def test_decode_one_equals_forward_decode(kind):
    """``decode_one`` (the generation loop's step) gives forward_decode's logits and advances the state: on the
    one-call decoder (fp32, int8, GPT-2) and node by node (a Llama with biases)."""
    from qorus_jit.models import GPT2, GPT2Config
    from qorus_jit.models.quantize import quantize_model

    if kind == "gpt2":
        model = GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=16), rng=1)
    elif kind == "biases":
        model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=61,
                                  max_seq_len=16, attention_bias=True, mlp_bias=True), rng=1)
    else:
        model = _llama(2, hidden=64, tie=True)
        if kind == "int8":
            model = quantize_model(model, "int8")
    one, ref = DecodeState(1, 16), DecodeState(1, 16)
    tok = 5
    for t in range(10):
        got = model.decode_one(tok, one).copy()
        want = model.forward_decode(np.array([[tok]]), state=ref)[0, -1].copy()
        ref.advance(1)
        assert one.pos == t + 1
        np.testing.assert_array_equal(got, want, err_msg=f"position {t}")
        tok = int(np.argmax(got))
    assert (getattr(model, "_decoder", None) is not None) == (kind in ("fp32", "int8", "gpt2"))


def test_decode_one_rejects_bad_tokens_and_states():
    model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=61, max_seq_len=16), rng=1)
    state = DecodeState(1, 2)
    for bad in (61, -1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=r"tok: expected a token id, an int in \[0, 61\)"):
            model.decode_one(bad, state)
    with pytest.raises(TypeError, match="state: expected a DecodeState"):
        model.decode_one(3, None)
    with pytest.raises(ValueError, match="state: expected a DecodeState of batch 1, got batch 2"):
        model.decode_one(3, DecodeState(2, 4))
    model.decode_one(np.int64(3), state)
    model.decode_one(4, state)
    assert state.pos == 2
    with pytest.raises(ValueError, match="state: position 2 is past"):
        model.decode_one(3, state)


_BF16_DECODER = r"""
import json, numpy as np
from qorus_jit.kernels import quant, quant_x86
real = quant_x86.cpu_path
quant_x86.cpu_path = lambda kind: "emulate" if kind == "bf16" else real(kind)  # (this process's own kernel cache)
from qorus_jit.layers import DecodeState
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.models.quantize import quantize_model
cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=97, max_seq_len=16)
model = quantize_model(Llama(cfg, rng=1), "bf16")
quant._PATHS["bf16"] = "portable"  # float32 scratch: the portable rows (also where the CPU has AVX512_BF16)
def run():
    state, tok, out = DecodeState(1, 16), 5, []
    for _ in range(8):
        logits = model.decode_one(tok, state)
        out.append(logits.tolist())
        tok = int(logits.argmax())
    return out, str(model._decoder.scratch[-5].dtype)  # xa of (..., xa, xb, ya, yb, parts)
portable = run()
quant._PATHS["bf16"] = "avx512-bf16"  # the decoder gets bf16-bit scratch: the vdpbf16ps rows, emulated here
print(json.dumps({"portable": portable, "x86": run()}))
"""


def test_bf16_decode_on_the_vdpbf16ps_rows(tmp_path):
    """bf16 weights with the activations as two bf16 numbers (the scratch a CPU with AVX512_BF16 gets): the one-call
    decoder runs quant_x86's vdpbf16ps rows (their loop with the instruction emulated in plain IR, so on every CPU;
    the instruction itself is checked in test_quant_x86.py) and gives the portable decoder's logits to the split's
    2^-16. In a fresh process with its own kernel cache, so that the emulated code is never cached as the real one."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("QORUS_PORTABLE", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _BF16_DECODER], env=env, capture_output=True, text=True, timeout=900,
                       cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    (port, port_dtype), (fast, fast_dtype) = res["portable"], res["x86"]
    assert (port_dtype, fast_dtype) == ("float32", "uint16")
    port, fast = np.array(port), np.array(fast)
    np.testing.assert_allclose(fast, port, rtol=0, atol=1e-4 * np.abs(port).max())
    assert np.array_equal(fast.argmax(axis=1), port.argmax(axis=1))
    assert np.abs(fast - port).max() > 0  # the split activations, not the portable dot, ran


def test_block_table_refuses_blocks_unlike_the_first():
    """The decoders read every block as the first one's shapes and dtypes: a block that differs is refused by name."""
    from qorus_jit.kernels.decode import block_table

    a, b = np.zeros((4, 3), np.float32), np.zeros(5, np.int8)
    first, addresses = block_table([(a, b), (a.copy(), b.copy())])
    assert first[0] is a and addresses.shape == (2, 2) and addresses[0, 0] == a.ctypes.data
    with pytest.raises(ValueError, match=r"blocks\[1\]\[0\]: expected a non-empty C-contiguous float32"):
        block_table([(a, b), (np.zeros((3, 4), np.float32), b)])
    with pytest.raises(ValueError, match=r"blocks\[1\]\[1\]"):
        block_table([(a, b), (a, b.astype(np.int16))])
    with pytest.raises(ValueError, match=r"blocks\[1\]\[0\]"):
        block_table([(a, b), (np.zeros((4, 6), np.float32)[:, ::2], b)])
    with pytest.raises(ValueError, match=r"blocks\[1\]: expected 2 arrays"):
        block_table([(a, b), (a,)])


def _head_with_ties(dtype):
    """A Llama of 300 tokens (five chunks of the head's 64 rows) whose head rows are copies of four vectors, so
    that its largest logit repeats across chunks and threads' parts."""
    from qorus_jit.models.quantize import quantize_model

    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=300, max_seq_len=16,
                      norm_eps=1e-5, tie_embeddings=False)
    model = Llama(cfg, rng=3)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((4, 32)).astype(np.float32)
    model.parameters()["lm_head.weight"][:] = base[rng.integers(0, 4, 300)]
    return model if dtype == "fp32" else quantize_model(model, dtype)


def _poison_head(model, rows):
    """The head's weights made NaN in ``rows`` (in place: the decoder reads the same arrays)."""
    from qorus_jit.layers.quantized import quantized_layers

    head = model.parameters().get("lm_head.weight")
    layer = quantized_layers(model).get("lm_head")
    for r in rows:
        if head is not None:
            head[r, 0] = np.nan
        elif layer.d is not None:  # q8_0: a scale
            layer.d[r, 0] = np.nan
        else:
            layer.w16[r, 0] = 0x7FC0  # a bf16 NaN


@pytest.mark.parametrize("dtype", ["fp32", "int8", "bf16"])
@pytest.mark.parametrize("n_parts", [1, 2, 3])
def test_decode_argmax_is_numpys(monkeypatch, dtype, n_parts):
    """The one-call decoder's argmax (each thread's part of the head, joined) is NumPy's argmax of the logits it
    returns, the first of tied maxima, at 1 to 3 parts of the head (3: more than the parts it holds room for
    on a 2-thread machine, so clamped) and with the parts' ties falling in different parts."""
    from qorus_jit.models import decoder

    monkeypatch.setattr(decoder, "decode_split", lambda n_kv_heads: (n_kv_heads >= n_parts, n_parts))
    model = _head_with_ties(dtype)
    state, tok, ties = DecodeState(1, 16), 5, 0
    for t in range(10):
        best, logits = model.decode_argmax(tok, state)
        assert best == int(np.argmax(logits)), f"position {t}"
        assert state.pos == t + 1
        ties += int(np.sum(logits == logits[best])) > 1
        tok = best
    assert model._decoder is not None and ties == 10  # the one-call path ran, on tied maxima


@pytest.mark.parametrize("dtype", ["fp32", "int8", "bf16"])
def test_decode_argmax_finds_the_first_nan_and_generate_stops_there(dtype):
    """NaN logits: the decoder's argmax is the first NaN, as NumPy's; greedy generation stops there with the
    error that names the token, as on the sampled path."""
    from qorus_jit.infer.generate import generate

    model = _head_with_ties(dtype)
    gen = generate(model, [5, 6], 4, temperature=0.0)
    next(gen)  # the prefill's token
    _poison_head(model, (130, 250))
    with pytest.raises(ValueError, match=r"new token 2 \(position 3\): the logits are not finite \(NaN\)"):
        next(gen)
    assert gen.finish_reason == "error"
    best, logits = model.decode_argmax(5, DecodeState(1, 16))
    assert best == 130 and np.isnan(logits[130]) and int(np.argmax(logits)) == 130


def _greedy_model(kind, n_kv_heads=2):
    from qorus_jit.models import GPT2, GPT2Config
    from qorus_jit.models.quantize import quantize_model

    if kind == "gpt2":
        return GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=61, max_seq_len=40), rng=1)
    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=64, vocab_size=61,
                      max_seq_len=40, norm_eps=1e-5)
    model = Llama(cfg, rng=5)
    return model if kind == "fp32" else quantize_model(model, kind)


@pytest.mark.parametrize("kind,n_kv_heads", [("fp32", 4), ("fp32", 1), ("int8", 4), ("int8", 1), ("bf16", 2),
                                             ("gpt2", 4)])
def test_decode_greedy_runs_the_argmax_steps(kind, n_kv_heads):
    """A greedy run (Llama: one kernel call; GPT-2: the base class's loop) gives the tokens, state and last
    logits of decode_argmax step by step, and ends after the first stop token, which it includes."""
    model = _greedy_model(kind, n_kv_heads)
    ref_state, tok, want = DecodeState(1, 40), 7, []
    for _ in range(25):
        tok, logits = model.decode_argmax(tok, ref_state)
        want.append(tok)
    state = DecodeState(1, 40)
    toks, last = model.decode_greedy(7, state, 25)
    assert toks.dtype == np.int64 and toks.tolist() == want and state.pos == 25
    np.testing.assert_array_equal(last, logits)
    stop = want[9]
    state = DecodeState(1, 40)
    toks, _ = model.decode_greedy(7, state, 25, stop_tokens=[stop, 10**6])
    assert toks.tolist() == want[:want.index(stop) + 1] and state.pos == len(toks)
    more, _ = model.decode_greedy(int(toks[-1]), state, 3)  # the state goes on from there
    assert more.tolist() == want[len(toks):len(toks) + 3]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_decode_greedy_stops_at_a_nan_and_checks_its_arguments(dtype):
    model = _head_with_ties(dtype)
    _poison_head(model, (130,))
    state = DecodeState(1, 16)
    toks, logits = model.decode_greedy(5, state, 8)
    assert toks.tolist() == [130] and np.isnan(logits[130]) and state.pos == 1
    past = "n: 16 tokens from position 1 would pass the context \\(15 positions left\\)"
    for n, match in ((0, "n: expected an int >= 1, got 0"), (16, past), (2.0, "n: expected")):
        with pytest.raises(ValueError, match=match):
            model.decode_greedy(5, state, n)
    assert state.pos == 1


def test_generate_yields_greedy_runs_as_a_stream(monkeypatch):
    """Greedy generation in runs: the same tokens as one step at a time, runs as long as RUN_SECONDS allows
    (after a first run of one), none past max_new_tokens, and a stop token inside a run ends it."""
    from qorus_jit.infer import generate as G

    model = _greedy_model("int8")
    calls = []
    run = model.decode_greedy
    monkeypatch.setattr(model, "decode_greedy", lambda *a: calls.append(a[2]) or run(*a))
    monkeypatch.setattr(G, "MAX_RUN", 1)
    one = list(G.generate(model, [3, 4], 30, temperature=0.0))
    assert calls == [1] * 29
    calls.clear()
    monkeypatch.setattr(G, "MAX_RUN", 8)
    monkeypatch.setattr(G, "RUN_SECONDS", 10.0)
    gen = G.generate(model, [3, 4], 30, temperature=0.0)
    assert list(gen) == one and calls == [1, 8, 8, 8, 4] and gen.finish_reason == "length"
    calls.clear()
    gen = G.generate(model, [3, 4], 30, temperature=0.0, stop_tokens=[one[12]])
    assert list(gen) == one[:one.index(one[12]) + 1] and gen.finish_reason == "stop"


@pytest.mark.parametrize("dtype,one_row", [("fp32", False), ("fp32", True), ("int8", None), ("bf16", None)])
@pytest.mark.parametrize("threads,n_parts", [(1, 2), (2, 2), (2, 3)])
def test_token_in_one_region(monkeypatch, dtype, one_row, threads, n_parts):
    """The decoder's one-region token (kernels.decode._token_part): its phases' items claimed by the participants,
    including more participants than threads (run one after another: the first does every item, the rest find
    none and must not wait for them) and 3 layers of phases (four each where float32 W is read by rows),
    against the layers one by one over three generations of 14 tokens (a race between participants would show
    as wrong logits)."""
    from qorus_jit.models import decoder
    from qorus_jit.models.quantize import quantize_model

    monkeypatch.setattr(decoder, "decode_split", lambda n_kv_heads: (True, n_parts))
    monkeypatch.setattr(decoder, "one_row_float32", lambda n: bool(one_row))
    model = _llama(4, hidden=96, tie=False)
    model = model if dtype == "fp32" else quantize_model(model, dtype)
    for _ in range(3):
        _at_threads(threads, _one_call_equals_nodes, model)
