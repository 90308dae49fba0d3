"""GGUF files in: a random Hugging Face Llama folder written as GGUF the way llama.cpp's convert_hf_to_gguf.py
lays it out (tensor names, q/k rows permuted to interleaved RoPE pairs, metadata, the sentencepiece vocabulary
with its scores), F32 and Q8_0 by the gguf package's own writer and quantizer, loaded back by qorus: the
logits against transformers, the tokenizer's ids against the folder's tokenizer.json, and every damaged or
unsupported file refused in one line."""

from __future__ import annotations

import json
import struct
from collections import Counter

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tk = pytest.importorskip("tokenizers")

from qorus_jit.formats.gguf import read_gguf  # noqa: E402
from qorus_jit.formats.llama2c import half_to_interleaved, interleaved_to_half  # noqa: E402
from qorus_jit.models import load_pretrained  # noqa: E402
from qorus_jit.models.gguf import gguf_tokenizer, load_gguf  # noqa: E402
from qorus_jit.tokenizers import BPETokenizer, load_tokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
CORPUS = ("once upon a time there was a little cat. the cat sat on the mat and looked at the sun. "
          "a café, a crème brûlée and a naïve garçon. the little dog ran to the park; "
          "they played there until the time to eat came. ") * 3
TEXTS = ["once upon a time", "The cat sat on the mat.", "café crème brûlée, naïve garçon",
         "emoji 👍🏽 and 日本語\n\ttabs  and  spaces", "", " leading space", "théâtre in the park!", "zzz qqq 123"]
BLOCK_HF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# ------------------------------------------------------------------------------------ a sentencepiece vocab


def sp_vocab(corpus=CORPUS, n_merges=120):
    """A sentencepiece BPE vocabulary learned on ``corpus`` as sentencepiece's trainer lays it out: <unk>, <s>,
    </s>, the 256 byte tokens, the merged pieces (score minus their order), then the characters (scores below).
    Returns ``[(piece, score, type)]`` with "▁" for spaces."""
    words = Counter("\u2581" + w for w in corpus.split(" ") if w)
    chars = sorted({c for w in words for c in w}, key=lambda c: (-sum(n for w, n in words.items() if c in w), c))
    split = {w: list(w) for w in words}
    merged = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:], strict=False):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merged.append(a + b)
        for w in words:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    vocab = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    vocab += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    seen = set()
    for p in merged + chars:
        if p not in seen:
            seen.add(p)
            vocab.append((p, -float(len(seen) - 1), 1))
    return vocab


def sp_tokenizer_json(vocab) -> str:
    """The tokenizer.json that transformers' LlamaConverter makes of such a sentencepiece model: BPE with byte
    fallback, merges every split of each piece into two pieces, ordered by the piece's score."""
    ids = {p: i for i, (p, _, _) in enumerate(vocab)}
    merges = []
    for p, score, ty in sorted(vocab, key=lambda v: -v[1]):
        if ty == 1:
            merges += [(p[:k], p[k:], score) for k in range(1, len(p)) if p[:k] in ids and p[k:] in ids]
    merges = [(a, b) for a, b, _ in sorted(merges, key=lambda m: (-m[2], ids[m[0]], ids[m[1]]))]
    tok = tk.Tokenizer(tk.models.BPE(vocab=ids, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.Prepend("\u2581"), tk.normalizers.Replace(" ", "\u2581")])
    tok.decoder = tk.decoders.Sequence([tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(),
                                        tk.decoders.Fuse(), tk.decoders.Strip(" ", 1, 0)])
    return tok.to_str()


# --------------------------------------------------------------------------- llama.cpp's converter, mimicked


def hf_llama(folder, vocab, tied=False, seed=0, **kw):
    """A random transformers LlamaForCausalLM saved in ``folder`` with its tokenizer.json; the model."""
    cfg = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=50000.0,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, **kw)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so that top-1 means something
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(sp_tokenizer_json(vocab), encoding="utf-8")
    return model


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{BLOCK_HF[rest.rpartition('.')[0]]}.weight"


def write_gguf(path, model, vocab, qtype=Q.F32, arch="llama", skip_keys=(), tensor_types=None):
    """``model`` (transformers) as llama.cpp's convert_hf_to_gguf.py writes it: q/k rows permuted per head to
    interleaved pairs (LlamaModel.permute), 2-D weights as ``qtype`` (1-D ones F32), llama.* metadata and the
    sentencepiece vocabulary (tokens, scores, token types, BOS/EOS). ``tensor_types`` overrides the type of
    named tensors; ``skip_keys`` leaves metadata keys out."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    keys = {
        f"{arch}.context_length": (w.add_uint32, c.max_position_embeddings),
        f"{arch}.embedding_length": (w.add_uint32, c.hidden_size),
        f"{arch}.block_count": (w.add_uint32, c.num_hidden_layers),
        f"{arch}.feed_forward_length": (w.add_uint32, c.intermediate_size),
        f"{arch}.attention.head_count": (w.add_uint32, c.num_attention_heads),
        f"{arch}.attention.head_count_kv": (w.add_uint32, c.num_key_value_heads),
        f"{arch}.rope.freq_base": (w.add_float32, c.rope_theta if hasattr(c, "rope_theta") else
                                   c.rope_parameters["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": (w.add_float32, c.rms_norm_eps),
        f"{arch}.vocab_size": (w.add_uint32, c.vocab_size),
        f"{arch}.rope.dimension_count": (w.add_uint32, c.hidden_size // c.num_attention_heads),
        "general.file_type": (w.add_uint32, 7 if qtype == Q.Q8_0 else 0),
    }
    for key, (add, value) in keys.items():
        if key not in skip_keys:
            add(key, value)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([p for p, _, _ in vocab])
    w.add_token_scores([s for _, s, _ in vocab])
    w.add_token_types([t for _, _, t in vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for hf, t in model.state_dict().items():
        if hf == "lm_head.weight" and c.tie_word_embeddings:
            continue
        arr = t.detach().numpy().astype(np.float32)
        if hf.endswith("q_proj.weight"):
            arr = half_to_interleaved(arr, c.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            arr = half_to_interleaved(arr, c.num_key_value_heads)
        name = gguf_name(hf)
        ty = (tensor_types or {}).get(name, qtype if arr.ndim == 2 else Q.F32)
        if ty == Q.F32:
            w.add_tensor(name, arr)
        elif ty == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, ty), raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def vocab():
    return sp_vocab()


@pytest.fixture(scope="module")
def llama(tmp_path_factory, vocab):
    """``(folder, hf model, f32.gguf, q8_0.gguf)``."""
    root = tmp_path_factory.mktemp("gguf")
    model = hf_llama(root / "hf", vocab)
    return (root / "hf", model, write_gguf(root / "f32.gguf", model, vocab),
            write_gguf(root / "q8_0.gguf", model, vocab, Q.Q8_0))


def story_text(n=3000, seed=0):
    """Sentences from a small grammar: text a tiny model learns quickly."""
    rng = np.random.default_rng(seed)
    subj = ["the cat", "a little dog", "the old man", "a girl", "the bird", "my friend"]
    verb = ["sat on", "looked at", "ran to", "played in", "found", "liked"]
    obj = ["the mat", "the park", "a café", "the sun", "the garden", "a red ball"]
    return " ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}." for _ in range(n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama trained by qorus train (40 steps) on story text with a sentencepiece-style tokenizer, exported
    as a Hugging Face folder: ``(transformers model, held-out ids (32, 32), q8_0.gguf, f32.gguf)``."""
    from click.testing import CliRunner

    from qorus_jit.cli import main
    from qorus_jit.infer.export import export_run

    root = tmp_path_factory.mktemp("gguf-trained")
    text = story_text()
    vocab = sp_vocab(text[:20000])
    (root / "sp.json").write_text(sp_tokenizer_json(vocab), encoding="utf-8")
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    args = ["train", "--arch", "llama", "--tokenizer", root / "sp.json", "--data", root / "corpus.txt", "--dim", 64,
            "--n-heads", 4, "--n-kv-heads", 2, "--hidden-dim", 128, "--n-layers", 2, "--seq-len", 32, "--batch-size",
            8, "--steps", 40, "--lr", 0.01, "--eval-every", 40, "--eval-batches", 1, "--val-fraction", 0.2,
            "--sample-tokens", 0, "--no-progress", "--out-dir", root / "runs", "--name", "r"]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    export_run(root / "runs" / "r", root / "hf")
    model = transformers.LlamaForCausalLM.from_pretrained(root / "hf").eval()
    ids = load_tokenizer(root / "hf").encode(text[-12000:])  # in the held-out fifth
    ids = np.asarray(ids[:32 * 32], np.int64).reshape(32, 32)
    return (model, ids, write_gguf(root / "q8_0.gguf", model, vocab, Q.Q8_0),
            write_gguf(root / "f32.gguf", model, vocab))


def batch(vocab_size, n=8, t=128, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, (n, t))


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.double().numpy()


def nll(logits, ids):
    """Mean next-token cross-entropy (float64)."""
    z = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, ids[:, 1:, None], -1).mean()


# ------------------------------------------------------------------------------------------------ weights


def test_f32_gguf_gives_the_folders_logits(llama):
    folder, model, f32, _ = llama
    ours = load_pretrained(f32)
    ids = batch(model.config.vocab_size, n=2, t=64)
    want = torch_logits(model, ids)
    got = ours.forward(ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    folder_model = load_pretrained(folder)  # the same config, field by field
    assert ours.config == folder_model.config
    # transformers' own GGUF loader reads the file as the same model: the layout written is llama.cpp's
    theirs = transformers.AutoModelForCausalLM.from_pretrained(f32.parent, gguf_file=f32.name).eval()
    np.testing.assert_array_equal(torch_logits(theirs, ids), want)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16])
def test_tied_f16_and_bf16_gguf(tmp_path, vocab, qtype):
    """A tied head (no output.weight) and F16 or BF16 weights: widened exactly with dtype "fp32"; BF16 ones go
    into bf16 layers as stored with dtype None."""
    from qorus_jit.layers.quantized import quantized_layers

    model = hf_llama(tmp_path / "hf", vocab, tied=True, seed=3)
    path = write_gguf(tmp_path / "w.gguf", model, vocab, qtype)
    ours = load_gguf(path, "fp32")
    assert ours.config.tie_embeddings and not quantized_layers(ours)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # what the file holds (the norms stay F32, as the converter writes them)
                p.copy_(p.half().float() if qtype == Q.F16 else p.bfloat16().float())
    ids = batch(model.config.vocab_size, n=1, t=32)
    want = torch_logits(model, ids)
    np.testing.assert_allclose(ours.forward(ids), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    stored = quantized_layers(load_gguf(path))
    if qtype == Q.F16:
        assert not stored
        return
    assert len(stored) == 7 * 2 + 1 and {q.weight_format for q in stored.values()} == {"bf16"}
    w16 = gguf.GGUFReader(str(path)).tensors
    emb = next(t for t in w16 if t.name == "token_embd.weight").data.view(np.uint16)
    np.testing.assert_array_equal(stored["lm_head"].w16, emb)  # the tied head: the embedding's bf16 as stored
    np.testing.assert_array_equal(stored["model.layers.0.mlp.up_proj"].dequantized(),
                                  model.model.layers[0].mlp.up_proj.weight.detach().numpy())


def gguf_dequantized(path, model):
    """Every tensor of the GGUF file dequantized by the gguf package itself, by Hugging Face name, q/k rows
    permuted back; and the set of names stored as Q8_0."""
    c = model.config
    out, q8 = {}, set()
    for t in gguf.GGUFReader(str(path)).tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        hf = next(h for h in model.state_dict() if gguf_name(h) == t.name)
        if hf.endswith("q_proj.weight"):
            w = interleaved_to_half(w, c.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            w = interleaved_to_half(w, c.num_key_value_heads)
        out[hf] = w
        if t.tensor_type == Q.Q8_0:
            q8.add(hf)
    return out, q8


@pytest.mark.parametrize("dtype", [None, "fp32"])
def test_q8_0_gguf_weights_are_ggufs_own_dequantization(llama, dtype):
    """A Q8_0 GGUF: with dtype None its linear layers hold the file's blocks (q8_0 QuantizedLinear, not
    re-quantized), with "fp32" plain weights; either way every weight equals the gguf package's own
    dequantization of the file, bit for bit, and the logits equal transformers' with those weights."""
    from qorus_jit.layers.quantized import QuantizedLinear, quantized_layers

    _, model, _, q8 = llama
    ours = load_pretrained(q8, dtype)
    deq, q8_names = gguf_dequantized(q8, model)
    assert "model.embed_tokens.weight" in q8_names and "model.norm.weight" not in q8_names
    layers = quantized_layers(ours)
    params = ours.parameters()
    for hf, w in deq.items():
        dotted = hf[:-len(".weight")]
        if dtype is None and dotted in layers:
            layer = layers[dotted]
            assert isinstance(layer, QuantizedLinear) and layer.weight_format == "q8_0"
            np.testing.assert_array_equal(layer.dequantized(), w, err_msg=hf)
        else:
            np.testing.assert_array_equal(params[hf], w, err_msg=hf)
    assert len(layers) == (0 if dtype else 7 * 2 + 1)
    ref = transformers.LlamaForCausalLM(model.config).eval()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in deq.items()})
    ids = batch(model.config.vocab_size, n=2, t=64)
    got = ours.forward(ids).astype(np.float64)
    np.testing.assert_allclose(got, torch_logits(ref, ids), rtol=1e-5, atol=1e-5 * np.abs(got).max())


def test_tied_q8_0_gguf_holds_its_table_once_and_load_source_takes_dtype(tmp_path, vocab):
    """A tied Q8_0 file: token_embd's blocks serve the head and the lookups (QuantizedEmbedding), as stored,
    and the logits equal transformers' with the gguf package's dequantization; load_source's dtype widens
    ("fp32") or converts ("bf16") the blocks."""
    from qorus_jit.layers.quantized import QuantizedEmbedding, quantized_layers
    from qorus_jit.models.sources import load_source

    model = hf_llama(tmp_path / "hf", vocab, tied=True, seed=5)
    path = write_gguf(tmp_path / "t.gguf", model, vocab, Q.Q8_0)
    deq, q8_names = gguf_dequantized(path, model)
    assert "model.embed_tokens.weight" in q8_names
    ref = transformers.LlamaForCausalLM(model.config).eval()
    ref.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in deq.items()}, strict=False)
    ref.tie_weights()
    ids = batch(model.config.vocab_size, n=1, t=48)
    want = torch_logits(ref, ids)
    V = model.config.vocab_size
    for dtype in (None, "int8", "fp32", "bf16"):
        ours = load_source(path, dtype=dtype).model
        layers = quantized_layers(ours)
        emb = ours.children()["model.embed_tokens"]
        if dtype in (None, "int8"):
            assert isinstance(emb, QuantizedEmbedding) and emb.head is layers["lm_head"]
            assert "model.embed_tokens.weight" not in ours.parameters()
            np.testing.assert_array_equal(emb.forward(np.arange(V)), deq["model.embed_tokens.weight"])
            got = ours.forward(ids).astype(np.float64)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        elif dtype == "fp32":
            assert not layers
            np.testing.assert_array_equal(ours.parameters()["model.embed_tokens.weight"],
                                          deq["model.embed_tokens.weight"])
            np.testing.assert_allclose(ours.forward(ids), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        else:
            assert {q.weight_format for q in layers.values()} == {"bf16"} and isinstance(emb, QuantizedEmbedding)


def test_q8_0_gguf_of_a_trained_model_meets_the_int8_bars(trained):
    """A Llama trained by qorus train (exported as a Hugging Face folder, converted as llama.cpp does, Q8_0
    embedding and head included): on 1,024 held-out positions, top-1 agreement with the fp32 folder >= 99% and
    loss (so perplexity) within 1%; the F32 GGUF gives the folder's logits."""
    model, ids, q8, f32 = trained
    fp32 = torch_logits(model, ids)
    got = load_pretrained(q8).forward(ids).astype(np.float64)
    agree = (got.argmax(-1) == fp32.argmax(-1)).mean()
    loss, loss32 = nll(got, ids), nll(fp32, ids)
    assert ids.size >= 1024 and agree >= 0.99, agree
    assert abs(np.exp(loss - loss32) - 1) < 0.01, (loss, loss32)
    np.testing.assert_allclose(load_pretrained(f32).forward(ids), fp32, rtol=1e-5, atol=1e-5 * np.abs(fp32).max())


def test_q8_0_blocks_go_into_the_layers_as_stored(llama):
    """The q8_0 layers hold the file's int8 values and scales themselves (rows of q/k permuted back)."""
    from qorus_jit.layers.quantized import quantized_layers

    _, model, _, q8 = llama
    layers = quantized_layers(load_gguf(q8))
    gf = read_gguf(q8)
    qs, d = gf.tensor_q8_0("blk.1.attn_k.weight")
    layer = layers["model.layers.1.self_attn.k_proj"]
    kv = model.config.num_key_value_heads
    np.testing.assert_array_equal(layer.qs, interleaved_to_half(qs, kv))
    np.testing.assert_array_equal(layer.d, interleaved_to_half(d, kv))
    head = layers["lm_head"]
    np.testing.assert_array_equal(head.qs, gf.tensor_q8_0("output.weight")[0])


def test_q8_0_blocks_kept_as_stored(llama):
    """tensor_q8_0 hands out the file's blocks: qs * d is gguf's dequantization; d holds fp16 values."""
    _, _, _, q8 = llama
    gf = read_gguf(q8)
    qs, d = gf.tensor_q8_0("blk.0.ffn_down.weight")
    assert qs.dtype == np.int8 and d.dtype == np.float32 and qs.shape == (64, 128) and d.shape == (64, 4)
    assert np.array_equal(d.astype(np.float16).astype(np.float32), d)
    t = gf.tensors["blk.0.ffn_down.weight"]
    want = gguf.quants.dequantize(t.data, Q.Q8_0)
    np.testing.assert_array_equal((qs.reshape(64, 4, 32) * d[..., None]).reshape(64, 128), want)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_llama_vocab_encodes_as_the_folders_tokenizer(llama):
    folder, model, f32, _ = llama
    got = gguf_tokenizer(read_gguf(f32))
    want = load_tokenizer(folder)
    assert got.bos == 1 and got.stop_ids == {2}
    for text in TEXTS + [CORPUS[:300]]:
        ids = got.tokenizer.encode(text, bos=False).tolist()
        assert ids == want.encode(text).tolist(), text
        assert got.tokenizer.decode([1, *ids]) == text  # after BOS, the dummy prefix goes
    assert any(i >= 259 for i in got.tokenizer.encode("the little cat", bos=False))  # merged pieces are used


def test_gpt2_vocab_encodes_as_its_bpe(tmp_path, llama):
    """A "gpt2" vocabulary (tokens and merges of a byte-level BPE) with the GPT-2 or Llama 3 pre-tokenizer."""
    _, model, _, _ = llama
    for pre in ("gpt-2", "llama-bpe"):
        src = BPETokenizer.train([CORPUS], vocab_size=300, min_frequency=1)
        spec = json.loads(src.to_json())
        if pre == "llama-bpe":
            from qorus_jit.models.gguf import _LLAMA3_REGEX
            spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
            spec["model"]["ignore_merges"] = True
            src = BPETokenizer(tk.Tokenizer.from_str(json.dumps(spec)))
        vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        path = tmp_path / f"{pre}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list([t for t, _ in vocab])
        w.add_token_types([1] * len(vocab))
        w.add_token_merges(merges)
        w.add_eos_token_id(0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        got = gguf_tokenizer(read_gguf(path))
        assert got.bos is None and got.stop_ids == {0}
        for text in TEXTS + ["it's 12345 o'clock!!  \n\n x"]:
            assert got.tokenizer.encode(text).tolist() == src.encode(text).tolist(), (pre, text)
            assert got.tokenizer.decode(got.tokenizer.encode(text)) == text


def test_gpt2_vocab_control_tokens_and_chat_template(tmp_path):
    """Control tokens of a "gpt2" vocabulary are matched in text whole (as llama.cpp tokenizes prompts and chat
    templates); the chat template and special token names come along."""
    src = BPETokenizer.train([CORPUS], vocab_size=300, min_frequency=1, special_tokens=["<|end|>", "<|user|>"])
    spec = json.loads(src.to_json())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    path = tmp_path / "chat.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t.startswith("<|") else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_eos_token_id(0)
    w.add_chat_template("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = gguf_tokenizer(read_gguf(path)).tokenizer
    assert tok.special_tokens == {"eos_token": "<|end|>"}
    ids = tok.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=True).tolist()
    assert ids[0] == 1 and ids[-1] == 0 and ids[1:-1] == src.encode("the cat").tolist()


# ------------------------------------------------------------------------------------------- bad files


def one_line_error(path, match):
    with pytest.raises(ValueError) as e:
        load_gguf(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg
    return msg


def test_truncated_files(tmp_path, llama):
    _, _, f32, _ = llama
    data = f32.read_bytes()
    reader = gguf.GGUFReader(str(f32))
    cuts = [3, 7, 12, 30, 200, reader.tensors[0].field.offset + 5, reader.data_offset - 1, reader.data_offset + 10,
            len(data) - 1]
    for cut in cuts:
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        one_line_error(p, "GGUF" if cut < 8 else "")
        with pytest.raises(ValueError, match="truncated|too short|past the end"):
            read_gguf(p)


def test_corrupt_header_and_tensor_table(tmp_path, llama):
    _, _, f32, _ = llama
    data = bytearray(f32.read_bytes())
    reader = gguf.GGUFReader(str(f32))

    def variant(name, edit):
        d = bytearray(data)
        edit(d)
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(bytes(d))
        return p

    one_line_error(variant("magic", lambda d: d.__setitem__(slice(0, 4), b"GGML")), "not a GGUF file")
    one_line_error(variant("version", lambda d: struct.pack_into("<I", d, 4, 99)), "GGUF version 99")
    one_line_error(variant("count", lambda d: struct.pack_into("<Q", d, 16, 2**62)), "past the end")
    t = reader.tensors[3]
    off = t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:5])  # the tensor's uint64 offset
    at = int(t.field.parts[5][0])
    one_line_error(variant("offset_far", lambda d: struct.pack_into("<Q", d, off, 2**40)), "past the end")
    one_line_error(variant("offset_odd", lambda d: struct.pack_into("<Q", d, off, at + 4)), "alignment")
    other = int(reader.tensors[2].field.parts[5][0])
    one_line_error(variant("offset_overlap", lambda d: struct.pack_into("<Q", d, off, other)), "overlap")
    dtype_at = off - 4
    one_line_error(variant("type", lambda d: struct.pack_into("<I", d, dtype_at, 200)), "corrupt GGUF file")


def test_random_damage_to_header_and_metadata(tmp_path, llama):
    """Bytes of the header, metadata and tensor table changed at random: each file loads (with its tokenizer)
    or is refused by a one-line ValueError naming it; nothing else escapes."""
    _, _, _, q8 = llama
    data = q8.read_bytes()
    head = gguf.GGUFReader(str(q8)).data_offset
    rng = np.random.default_rng(0)
    refused = 0
    for i in range(80):
        d = bytearray(data)
        for at in rng.integers(0, head, rng.integers(1, 4)):
            d[at] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / f"damaged{i}.gguf"
        p.write_bytes(bytes(d))
        try:
            gf = read_gguf(p)
            load_gguf(p)
            gguf_tokenizer(gf)
        except ValueError as e:
            refused += 1
            assert "\n" not in str(e) and str(p) in str(e), str(e)
        p.unlink()
    assert refused > 20


def test_unsupported_type_architecture_and_missing_keys(tmp_path, llama, vocab):
    _, model, _, _ = llama
    p = write_gguf(tmp_path / "q4.gguf", model, vocab, tensor_types={"blk.1.ffn_up.weight": Q.Q4_0})
    msg = one_line_error(p, "tensor 'blk.1.ffn_up.weight' has type Q4_0")
    assert "supported: F32, F16, BF16, Q8_0" in msg
    one_line_error(write_gguf(tmp_path / "gpt2.gguf", model, vocab, arch="gpt2"), "architecture 'gpt2'")
    one_line_error(write_gguf(tmp_path / "nolayers.gguf", model, vocab, skip_keys={"llama.block_count"}),
                   "missing metadata key 'llama.block_count'")
    one_line_error(write_gguf(tmp_path / "noeps.gguf", model, vocab,
                              skip_keys={"llama.attention.layer_norm_rms_epsilon"}), "layer_norm_rms_epsilon")


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "absent.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    one_line_error(tmp_path / "empty.gguf", "too short")


def test_qorus_generate_runs_a_gguf_file(llama):
    """qorus generate on a GGUF file: its tokenizer from the metadata, BOS before the prompt; greedy decoding
    picks the tokens it picks from the Hugging Face folder."""
    from click.testing import CliRunner

    from qorus_jit.cli import main
    from qorus_jit.infer.generate import generate
    from qorus_jit.models.sources import load_source

    folder, _, f32, q8 = llama
    runs = []
    for source in (f32, folder):
        src = load_source(source)
        assert src.bos == 1 and src.stop_ids == {2}
        gen = generate(src.model, src.encode("the cat"), 12, temperature=0.0, stop_tokens=src.stop_ids,
                       vocab_limit=src.vocab_limit)
        runs.append((src.kind, src.encode("the cat").tolist(), list(gen)))
    assert runs[0][0] == "gguf" and runs[0][1:] == runs[1][1:]
    for source in (f32, q8):  # the Q8_0 file decodes with its blocks in q8_0 layers
        res = CliRunner().invoke(main, ["generate", str(source), "-p", "the cat", "-n", "12", "-t", "0"])
        assert res.exit_code == 0, res.output
        assert res.stdout.startswith("the cat")
    # --dtype fp32 widens the Q8_0 blocks: the greedy text of the file's own dequantized weights in fp32
    src = load_source(q8, dtype="fp32")
    want = src.decode(generate(src.model, src.encode("the cat"), 12, temperature=0.0, stop_tokens=src.stop_ids,
                               vocab_limit=src.vocab_limit))
    res = CliRunner().invoke(main, ["generate", str(q8), "-p", "the cat", "-n", "12", "-t", "0", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == ("the cat" + want).strip()
    res = CliRunner().invoke(main, ["generate", str(f32.parent / "nope.gguf")])
    assert res.exit_code == 2


# ---------------------------------------------------------------------------------------------- writing


def qorus_llama(tied=False, seed=0):
    from qorus_jit.models import Llama, LlamaConfig

    c = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=len(sp_vocab()),
                    max_seq_len=128, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=tied)
    model = Llama(c, rng=np.random.default_rng(seed))
    for name, p in model.parameters().items():  # norms away from 1, weights sharper than the init
        p[...] = (1 + 0.1 * np.random.default_rng(seed + 1).standard_normal(p.shape) if "norm" in name
                  else 0.15 * np.random.default_rng(seed + 2).standard_normal(p.shape))
    return model


def l2c_tokenizer(vocab):
    from qorus_jit.tokenizers import Llama2cTokenizer

    pieces = [p.replace("\u2581", " ") for p, _, _ in vocab]
    return Llama2cTokenizer(pieces, [s for _, s, _ in vocab])


@pytest.mark.parametrize("tied", [False, True])
def test_save_gguf_f32_reads_back_in_qorus_and_transformers(tmp_path, vocab, tied):
    """save_gguf writes what load_gguf and transformers' own GGUF loader read as the same model and
    tokenizer; the Llama2cTokenizer becomes a "llama" vocabulary (scores, types, BOS/EOS) encoding as it did."""
    from qorus_jit.models.gguf import save_gguf

    model, tok = qorus_llama(tied), l2c_tokenizer(vocab)
    path = save_gguf(model, tmp_path / "m.gguf", tok)
    back = load_gguf(path)
    assert back.config == model.config
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[k], v, err_msg=k)
    gf = read_gguf(path)
    assert gf.get("tokenizer.ggml.model", "str") == "llama" and gf.get("general.file_type", "int") == 0
    assert gf.get("tokenizer.ggml.token_type", "[int]")[:4] == [2, 3, 3, 6]
    got = gguf_tokenizer(gf)
    for text in TEXTS:
        assert got.tokenizer.encode(text).tolist() == tok.encode(text).tolist(), text
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = batch(model.config.vocab_size, n=1, t=32)
    want = torch_logits(theirs, ids)
    np.testing.assert_allclose(model.forward(ids), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_save_gguf_int8_is_ggml_q8_0(tmp_path, vocab):
    """dtype "int8": the matrices as Q8_0 blocks, equal to qorus's own q8_0 quantization (ggml's rule) of the
    weights; loaded back they go into the q8_0 layers as written; transformers dequantizes the file to the
    weights those layers hold."""
    from qorus_jit.kernels.quant import dequantize_q8_0, quantize_q8_0
    from qorus_jit.layers.quantized import quantized_layers
    from qorus_jit.models.gguf import save_gguf

    model = qorus_llama()
    path = save_gguf(model, tmp_path / "m.gguf", l2c_tokenizer(vocab), dtype="int8")
    gf = read_gguf(path)
    assert gf.tensors["blk.0.attn_v.weight"].type == "Q8_0" and gf.tensors["blk.0.attn_norm.weight"].type == "F32"
    back = load_gguf(path)
    layers = quantized_layers(back)
    assert len(layers) == 7 * 2 + 1
    for dotted, layer in layers.items():
        qs, d = quantize_q8_0(model.parameters()[dotted + ".weight"])
        np.testing.assert_array_equal(layer.qs, qs, err_msg=dotted)
        np.testing.assert_array_equal(layer.d, d, err_msg=dotted)
    emb = model.parameters()["model.embed_tokens.weight"]
    np.testing.assert_array_equal(back.parameters()["model.embed_tokens.weight"], dequantize_q8_0(*quantize_q8_0(emb)))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    ids = batch(model.config.vocab_size, n=1, t=32)
    want = torch_logits(theirs, ids)
    np.testing.assert_allclose(back.forward(ids), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_save_gguf_byte_level_vocabularies(tmp_path):
    """A byte tokenizer and a byte-level BPE become "gpt2" vocabularies (tokens, merges) padded to the model's
    vocab_size with unused tokens, encoding as they did."""
    from qorus_jit.models.gguf import save_gguf
    from qorus_jit.tokenizers import ByteTokenizer

    model = qorus_llama()
    for i, tok in enumerate([ByteTokenizer(), BPETokenizer.train([CORPUS], vocab_size=300, min_frequency=1)]):
        path = save_gguf(model, tmp_path / f"m{i}.gguf", tok)
        gf = read_gguf(path)
        tokens = gf.get("tokenizer.ggml.tokens", "[str]")
        assert gf.get("tokenizer.ggml.model", "str") == "gpt2" and len(tokens) == model.config.vocab_size
        assert tokens[-1] == f"[PAD{len(tokens) - 1}]" and gf.get("tokenizer.ggml.token_type", "[int]")[-1] == 5
        back = gguf_tokenizer(gf).tokenizer
        for text in TEXTS:
            assert back.encode(text).tolist() == tok.encode(text).tolist(), text


def test_save_gguf_refusals(tmp_path, vocab):
    from qorus_jit.models import GPT2, GPT2Config
    from qorus_jit.models.gguf import save_gguf

    with pytest.raises(TypeError, match="model: GGUF files are written for a Llama, got GPT2"):
        save_gguf(GPT2(GPT2Config(dim=32, n_layers=1, n_heads=2, vocab_size=50, max_seq_len=16)), tmp_path / "g")
    sp = BPETokenizer(tk.Tokenizer.from_str(sp_tokenizer_json(vocab)))
    with pytest.raises(ValueError, match="convert it to llama2.c's pieces and scores first"):
        save_gguf(qorus_llama(), tmp_path / "sp.gguf", sp)
    from qorus_jit.models import Llama, LlamaConfig

    odd = Llama(LlamaConfig(dim=48, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=300))
    with pytest.raises(ValueError, match="token_embd.weight"):
        save_gguf(odd, tmp_path / "odd.gguf", dtype="int8")
    assert not list(tmp_path.iterdir())  # nothing written
