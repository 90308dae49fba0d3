"""llama2.c checkpoints and tokenizer: files written here by an independent writer (struct/NumPy, from the
format's description) load into a Llama whose logits equal a NumPy float64 llama2.c forward (interleaved RoPE);
exports read back identically; bad files fail with clear errors; the tokenizer follows run.c's encode/decode."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from qorus_jit.formats.llama2c import half_to_interleaved, interleaved_to_half, read_llama2c, write_llama2c
from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig
from qorus_jit.models.llama import load_llama2c, save_llama2c
from qorus_jit.tokenizers import Llama2cTokenizer

MAGIC = 0x616B3432

# ------------------------------------------------------------------------------------- independent format


def shapes(dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len):
    """The llama2.c tensors and their shapes, (out, in) matrices, as the format documents them."""
    hd = dim // n_heads
    q, kv = n_heads * hd, n_kv_heads * hd
    return {
        "emb": (vocab, dim), "rms_att": (n_layers, dim), "wq": (n_layers, q, dim), "wk": (n_layers, kv, dim),
        "wv": (n_layers, kv, dim), "wo": (n_layers, dim, q), "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim), "w2": (n_layers, dim, hidden), "w3": (n_layers, hidden, dim),
        "rms_final": (dim,), "wcls": (vocab, dim),
    }


LEGACY_ORDER = ["emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]
V1_ORDER = ["rms_att", "rms_ffn", "rms_final", "emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def random_weights(rng, dims, shared):
    w = {}
    for name, shape in shapes(*dims).items():
        if name == "wcls" and shared:
            continue
        if name.startswith("rms"):
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            w[name] = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    return w


def std_freqs(seq_len, hd):
    freqs = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(seq_len)[:, None] * freqs[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def write_legacy(path, dims, w, freq=True):
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = dims
    shared = "wcls" not in w
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, n_layers, n_heads, n_kv_heads, vocab if shared else -vocab, seq_len))
        for name in LEGACY_ORDER:
            w[name].astype("<f4").tofile(f)
        if freq:
            for t in std_freqs(seq_len, dim // n_heads):
                t.astype("<f4").tofile(f)
        if not shared:
            w["wcls"].astype("<f4").tofile(f)


def write_v1(path, dims, w):
    shared = "wcls" not in w
    with open(path, "wb") as f:
        head = struct.pack("<Ii7iB", MAGIC, 1, *dims, int(shared))
        f.write(head + bytes(256 - len(head)))
        for name in V1_ORDER + ([] if shared else ["wcls"]):
            w[name].astype("<f4").tofile(f)


def read_file_independently(path):
    """(version, dims, shared, weights, freq tables or None) of a llama2.c file, parsed here by hand."""
    raw = open(path, "rb").read()
    if struct.unpack_from("<I", raw)[0] == MAGIC:
        assert struct.unpack_from("<i", raw, 4)[0] == 1
        dims = struct.unpack_from("<7i", raw, 8)
        shared = bool(raw[36])
        assert raw[37:256] == bytes(219)
        version, off, order = 1, 256, V1_ORDER
    else:
        dims = struct.unpack_from("<7i", raw)
        shared = dims[5] > 0
        dims = dims[:5] + (abs(dims[5]), dims[6])
        version, off, order = 0, 28, LEGACY_ORDER
    sh = shapes(*dims)
    data = np.frombuffer(raw, dtype="<f4", offset=off)
    w, pos = {}, 0

    def take(shape):
        nonlocal pos
        n = math.prod(shape)
        out = data[pos:pos + n].reshape(shape)
        pos += n
        return out

    for name in order:
        w[name] = take(sh[name])
    freq = None
    if version == 0:
        half = dims[0] // dims[3] // 2
        freq = (take((dims[6], half)), take((dims[6], half)))
    if not shared:
        w["wcls"] = take(sh["wcls"])
    assert pos == data.size, "the file holds more than the documented tensors"
    return version, dims, shared, w, freq


# ------------------------------------------------------------------------------- NumPy llama2.c forward


def rmsnorm(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g


def rope_interleaved(x, hd):
    """x (T, n*hd): rotate pairs (x[2i], x[2i+1]) of each head by t * 10000^(-2i/hd), as run.c does."""
    T = x.shape[0]
    x = x.reshape(T, -1, hd // 2, 2)
    freqs = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None, None] * freqs[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    x0, x1 = x[..., 0], x[..., 1]
    return np.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(T, -1)


def rope_half(x, hd):
    """Rotate-half RoPE (the wrong one for llama2.c weights): used to show the test is sensitive to it."""
    T = x.shape[0]
    x = x.reshape(T, -1, hd)
    freqs = 10000.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None, None] * freqs[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[..., :hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1).reshape(T, -1)


def reference_logits(w, dims, ids, rope=rope_interleaved):
    """float64 llama2.c forward of one sequence: RMSNorm eps 1e-5, causal GQA attention, SwiGLU, tied head
    when there is no wcls."""
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = dims
    hd = dim // n_heads
    rep = n_heads // n_kv_heads
    w = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    x = w["emb"][ids]
    mask = np.tril(np.ones((T, T), bool))
    for L in range(n_layers):
        xb = rmsnorm(x, w["rms_att"][L])
        q = rope(xb @ w["wq"][L].T, hd).reshape(T, n_heads, hd)
        k = rope(xb @ w["wk"][L].T, hd).reshape(T, n_kv_heads, hd)
        v = (xb @ w["wv"][L].T).reshape(T, n_kv_heads, hd)
        out = np.empty((T, n_heads, hd))
        for h in range(n_heads):
            g = h // rep
            s = q[:, h] @ k[:, g].T / math.sqrt(hd)
            s = np.where(mask, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            out[:, h] = p @ v[:, g]
        x = x + out.reshape(T, dim) @ w["wo"][L].T
        xb = rmsnorm(x, w["rms_ffn"][L])
        a = xb @ w["w1"][L].T
        x = x + ((a / (1.0 + np.exp(-a))) * (xb @ w["w3"][L].T)) @ w["w2"][L].T
    x = rmsnorm(x, w["rms_final"])
    return x @ w.get("wcls", w["emb"]).T


DIMS = (48, 96, 2, 4, 2, 67, 32)  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
MAX_DIFFS: dict[str, float] = {}


def ours(model, ids):
    return np.asarray(model.forward(np.asarray(ids, np.int64)), np.float64).copy()


# -------------------------------------------------------------------------------- loading vs reference


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_independent_file_loads_to_reference_logits(tmp_path, version, shared, n_kv_heads):
    dims = DIMS[:4] + (n_kv_heads,) + DIMS[5:]
    rng = np.random.default_rng(10 * n_kv_heads + shared + 3 * version)
    w = random_weights(rng, dims, shared)
    path = tmp_path / "model.bin"
    (write_legacy if version == 0 else write_v1)(path, dims, w)

    model = load_llama2c(path)
    c = model.config
    assert isinstance(model, Llama)
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len) == dims
    assert (c.norm_eps, c.rope_theta, c.tie_embeddings) == (1e-5, 10000.0, shared)
    assert ("lm_head.weight" in model.parameters()) is (not shared)

    ids = rng.integers(0, dims[5], (2, dims[6]))
    got = ours(model, ids)
    for b in range(2):
        want = reference_logits(w, dims, ids[b])
        diff = float(np.abs(got[b] - want).max())
        MAX_DIFFS[f"v{version} shared={shared} kv={n_kv_heads}"] = diff
        assert diff < 1e-4, diff
    assert np.abs(want).max() > 1.0  # logits of a real size: the comparison means something


def test_reference_is_sensitive_to_the_rope_convention(tmp_path):
    """Loading without the q/k permutation (or a reference with the other RoPE) would be caught."""
    rng = np.random.default_rng(5)
    w = random_weights(rng, DIMS, shared=True)
    path = tmp_path / "model.bin"
    write_legacy(path, DIMS, w)
    ids = rng.integers(0, DIMS[5], DIMS[6])
    got = ours(load_llama2c(path), ids[None])[0]
    wrong = reference_logits(w, DIMS, ids, rope=rope_half)
    assert np.abs(got - wrong).max() > 1e-2
    assert np.abs(got - reference_logits(w, DIMS, ids)).max() < 1e-4


def test_loaded_parameters_are_the_file_values(tmp_path):
    """v, o, MLP, norms and embeddings are copied as is; q/k rows are a per-head permutation."""
    rng = np.random.default_rng(6)
    w = random_weights(rng, DIMS, shared=False)
    path = tmp_path / "model.bin"
    write_legacy(path, DIMS, w)
    p = load_llama2c(path).parameters()
    np.testing.assert_array_equal(p["model.embed_tokens.weight"], w["emb"])
    np.testing.assert_array_equal(p["lm_head.weight"], w["wcls"])
    np.testing.assert_array_equal(p["model.norm.weight"], w["rms_final"])
    hd = DIMS[0] // DIMS[3]
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    for L in range(DIMS[2]):
        pre = f"model.layers.{L}."
        np.testing.assert_array_equal(p[pre + "self_attn.v_proj.weight"], w["wv"][L])
        np.testing.assert_array_equal(p[pre + "self_attn.o_proj.weight"], w["wo"][L])
        np.testing.assert_array_equal(p[pre + "mlp.gate_proj.weight"], w["w1"][L])
        np.testing.assert_array_equal(p[pre + "mlp.down_proj.weight"], w["w2"][L])
        np.testing.assert_array_equal(p[pre + "mlp.up_proj.weight"], w["w3"][L])
        np.testing.assert_array_equal(p[pre + "input_layernorm.weight"], w["rms_att"][L])
        np.testing.assert_array_equal(p[pre + "post_attention_layernorm.weight"], w["rms_ffn"][L])
        for name, n in (("q_proj", DIMS[3]), ("k_proj", DIMS[4])):
            want = w["w" + name[0]][L].reshape(n, hd, -1)[:, perm].reshape(n * hd, -1)
            np.testing.assert_array_equal(p[pre + f"self_attn.{name}.weight"], want)


# ------------------------------------------------------------------------------------------- exporting


def random_llama(seed, tied, n_layers=2, n_kv_heads=2):
    cfg = LlamaConfig(dim=48, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=96, vocab_size=67,
                      max_seq_len=32, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=tied)
    model = Llama(cfg, rng=seed)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.parameters().items():
        p[...] = (1.0 + 0.1 * rng.standard_normal(p.shape)) if name.endswith("norm.weight") \
            else 0.2 * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_export_round_trip_is_exact(tmp_path, version, tied):
    model = random_llama(1 + tied + 2 * version, tied)
    path = save_llama2c(model, tmp_path / "out.bin", version=version)
    assert path == tmp_path / "out.bin"
    back = load_llama2c(path)
    assert back.config == model.config
    a, b = model.parameters(), back.parameters()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ids = np.random.default_rng(0).integers(0, 67, (2, 32))
    np.testing.assert_array_equal(ours(model, ids), ours(back, ids))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_exported_file_read_independently_gives_the_same_logits(tmp_path, version, tied):
    """The export direction on its own: the file parsed by hand runs the llama2.c forward to our logits."""
    model = random_llama(7 + tied, tied, n_kv_heads=1 if tied else 2)
    c = model.config
    path = save_llama2c(model, tmp_path / "m.bin", version=version)
    got_version, dims, shared, w, freq = read_file_independently(path)
    assert got_version == version and shared is tied
    assert dims == (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len)
    raw = path.read_bytes()
    if version == 0:
        assert struct.unpack_from("<i", raw, 20)[0] == (67 if tied else -67)
        for got, want in zip(freq, std_freqs(c.max_seq_len, c.head_dim), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)
    else:
        assert struct.unpack_from("<Ii", raw) == (MAGIC, 1) and raw[36] == int(tied)
    ids = np.random.default_rng(3).integers(0, 67, 32)
    diff = float(np.abs(ours(model, ids[None])[0] - reference_logits(w, dims, ids)).max())
    MAX_DIFFS[f"export v{version} tied={tied}"] = diff
    assert diff < 1e-4, diff


def test_export_of_a_one_layer_model(tmp_path):
    model = random_llama(3, tied=False, n_layers=1)
    back = load_llama2c(save_llama2c(model, tmp_path / "one.bin"))
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, back.parameters()[k])


def test_save_overwrites_atomically_and_creates_the_folder(tmp_path):
    path = tmp_path / "sub" / "m.bin"
    save_llama2c(random_llama(1, True), path)
    first = path.read_bytes()
    save_llama2c(random_llama(2, True), path)
    assert path.read_bytes() != first and len(path.read_bytes()) == len(first)


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    base = dict(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8, norm_eps=1e-5)
    cases = [({"rope_theta": 500.0}, "rope_theta"), ({"norm_eps": 1e-6}, "norm_eps"),
             ({"attention_bias": True}, "attention_bias"), ({"mlp_bias": True}, "mlp_bias")]
    for change, field in cases:
        with pytest.raises(ValueError, match=field):
            save_llama2c(Llama(LlamaConfig(**{**base, **change}), rng=0), tmp_path / "x.bin")
    with pytest.raises(TypeError, match="Llama"):
        save_llama2c(GPT2(GPT2Config(dim=16, n_layers=1, n_heads=2, vocab_size=20, max_seq_len=8)), tmp_path / "g.bin")
    with pytest.raises(TypeError, match="Llama"):
        save_llama2c({"not": "a model"}, tmp_path / "d.bin")
    ok = Llama(LlamaConfig(**base), rng=0)
    for version in (2, -1, True, "0", 1.0):
        with pytest.raises(ValueError, match="version"):
            save_llama2c(ok, tmp_path / "v.bin", version=version)
    with pytest.raises(IsADirectoryError):
        save_llama2c(ok, tmp_path)
    assert not list(tmp_path.glob("*.bin"))


# ----------------------------------------------------------------------------------------- bad files


@pytest.fixture
def legacy_file(tmp_path):
    path = tmp_path / "good.bin"
    write_legacy(path, DIMS, random_weights(np.random.default_rng(0), DIMS, shared=False))
    return path


def test_truncated_and_extra_bytes(legacy_file, tmp_path):
    raw = legacy_file.read_bytes()
    short = tmp_path / "short.bin"
    short.write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=rf"short\.bin: expected {len(raw)} bytes .* got {len(raw) - 4} bytes "
                                         r"\(truncated, 4 bytes missing\)"):
        load_llama2c(short)
    long = tmp_path / "long.bin"
    long.write_bytes(raw + b"\0" * 8)
    with pytest.raises(ValueError, match=rf"expected {len(raw)} bytes .* got {len(raw) + 8} bytes \(8 extra bytes\)"):
        load_llama2c(long)
    header_only = tmp_path / "header.bin"
    header_only.write_bytes(raw[:28])
    with pytest.raises(ValueError, match="truncated"):
        load_llama2c(header_only)


def test_missing_freq_tables_and_wrong_classifier_sign_are_explained(tmp_path):
    rng = np.random.default_rng(1)
    w = random_weights(rng, DIMS, shared=True)
    nofreq = tmp_path / "nofreq.bin"
    write_legacy(nofreq, DIMS, w, freq=False)
    with pytest.raises(ValueError, match="freq_cis.*missing"):
        load_llama2c(nofreq)
    # an untied file whose header claims a shared classifier
    flipped = tmp_path / "flipped.bin"
    write_legacy(flipped, DIMS, random_weights(rng, DIMS, shared=False))
    raw = bytearray(flipped.read_bytes())
    raw[20:24] = struct.pack("<i", DIMS[5])
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="vocab_size sign"):
        load_llama2c(flipped)


@pytest.mark.parametrize("field,value,match", [
    (0, 0, r"dim=0 \(expected > 0\)"),
    (1, -5, r"hidden_dim=-5"),
    (2, 0, r"n_layers=0"),
    (3, 5, r"n_heads=5 does not divide dim=48"),
    (4, 3, r"n_kv_heads=3 does not divide n_heads=4"),
    (5, 0, r"vocab_size=0"),
    (6, -1, r"seq_len=-1"),
    (3, 16, r"head size .* = 3 is odd"),
])
def test_bad_header_values(legacy_file, field, value, match):
    raw = bytearray(legacy_file.read_bytes())
    raw[4 * field:4 * field + 4] = struct.pack("<i", value)
    legacy_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=rf"good\.bin: bad llama2.c header: {match}"):
        load_llama2c(legacy_file)


def test_bad_magic_version_and_v1_header(tmp_path):
    w = random_weights(np.random.default_rng(2), DIMS, shared=True)
    path = tmp_path / "v1.bin"
    write_v1(path, DIMS, w)
    raw = path.read_bytes()
    load_llama2c(path)  # the good one loads

    def variant(offset, packed):
        b = bytearray(raw)
        b[offset:offset + len(packed)] = packed
        path.write_bytes(bytes(b))

    for version in (0, 3, -1, 1 << 20):
        variant(4, struct.pack("<i", version))
        with pytest.raises(ValueError, match=rf"v1\.bin: unknown llama2.c checkpoint version {version}"):
            load_llama2c(path)
    variant(4, struct.pack("<i", 2))
    with pytest.raises(ValueError, match="version 2 .*not supported"):
        load_llama2c(path)
    variant(4, struct.pack("<i", 1))
    variant(36, b"\x07")
    with pytest.raises(ValueError, match="shared_classifier flag is 7"):
        load_llama2c(path)
    variant(36, b"\x00")  # says: separate classifier, but the file has none
    with pytest.raises(ValueError, match="shared_classifier flag wrong"):
        load_llama2c(path)
    variant(36, b"\x01")
    variant(28, struct.pack("<i", -67))
    with pytest.raises(ValueError, match="vocab_size=-67"):
        load_llama2c(path)
    path.write_bytes(raw[:100])
    with pytest.raises(ValueError, match="too short for a llama2.c version 1 header.*got 100"):
        load_llama2c(path)
    path.write_bytes(raw[:6])
    with pytest.raises(ValueError, match="too short"):
        load_llama2c(path)
    # a file that is not llama2.c at all: its first bytes read as a nonsense legacy header
    path.write_bytes(b"PK\x03\x04" + bytes(range(60)))
    with pytest.raises(ValueError, match="bad llama2.c header"):
        load_llama2c(path)


def test_empty_file_directory_and_missing_file(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.bin: too short for a llama2.c header.*got 0"):
        load_llama2c(empty)
    with pytest.raises(IsADirectoryError):
        load_llama2c(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_llama2c(tmp_path / "missing.bin")
    with pytest.raises(TypeError):
        load_llama2c(42)


# ------------------------------------------------------------------------------------- the format alone


@pytest.mark.parametrize("version", [0, 1])
def test_format_reads_and_writes_the_raw_arrays(tmp_path, version):
    """formats.llama2c on its own: the arrays of an independently written file by their llama2.c names, and
    written back (per-layer stacks as lists of layers) to the same bytes."""
    w = random_weights(np.random.default_rng(8), DIMS, shared=False)
    path = tmp_path / "raw.bin"
    (write_legacy if version == 0 else write_v1)(path, DIMS, w)
    h, t = read_llama2c(path)
    assert (h.version, h.shared) == (version, False)
    assert (h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len) == DIMS
    names = {"emb": "tok_embeddings", "rms_att": "attention_norm", "rms_ffn": "ffn_norm", "rms_final": "norm",
             "wcls": "output"}
    assert set(t) == {names.get(k, k) for k in w}  # the RoPE tables are skipped
    for k, v in w.items():
        np.testing.assert_array_equal(t[names.get(k, k)], v, err_msg=k)
    per_layer = {k: list(v) if v.ndim == 3 or k in ("attention_norm", "ffn_norm") else v for k, v in t.items()}
    out = write_llama2c(tmp_path / "copy.bin", h, per_layer)
    assert out.read_bytes() == path.read_bytes()


def test_format_write_checks_before_touching_the_file(tmp_path):
    w = random_weights(np.random.default_rng(9), DIMS, shared=True)
    path = tmp_path / "raw.bin"
    write_v1(path, DIMS, w)
    h, t = read_llama2c(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"tensors\['wk'\]: expected shape \(24, 48\), got \(48, 48\)"):
        write_llama2c(path, h, {**t, "wk": [np.zeros((48, 48), np.float32)] * DIMS[2]})
    with pytest.raises(ValueError, match=r"tensors\['wq'\]: expected 2 arrays \(one per layer\), got 1"):
        write_llama2c(path, h, {**t, "wq": t["wq"][:1]})
    with pytest.raises(ValueError, match="tensors: missing 'norm'"):
        write_llama2c(path, h, {k: v for k, v in t.items() if k != "norm"})
    assert path.read_bytes() == before
    np.testing.assert_array_equal(half_to_interleaved(interleaved_to_half(t["wq"][0], 4), 4), t["wq"][0])


# ------------------------------------------------------------------------------------------- tokenizer

SPECIALS = [b"<unk>", b"\n<s>\n", b"\n</s>\n"]
BYTES = [b"<0x%02X>" % b for b in range(256)]
PIECES = [  # (piece, score): single characters, then merges; higher scores merge first
    (" ", -100.0), ("t", -100.0), ("h", -100.0), ("e", -100.0), ("c", -100.0), ("a", -100.0), ("s", -100.0),
    ("o", -100.0), ("n", -100.0), ("é", -100.0), ("\n", -100.0),
    ("th", -1.0), ("he", -2.0), ("the", -0.5), (" the", -0.3), ("at", -3.0), (" c", -4.0), (" cat", -1.5),
    ("aa", -2.0), ("on", -6.0), (" on", -5.0), ("é ", -7.0), ("ss", -1e10),
]


def write_tokenizer(path, pieces, scores, max_len=None):
    """tokenizer.bin by hand: int32 max_token_length, then per token float32 score, int32 length, bytes."""
    if max_len is None:
        max_len = max(len(p) for p in pieces)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max_len))
        for p, s in zip(pieces, scores, strict=True):
            f.write(struct.pack("<f", s) + struct.pack("<i", len(p)) + p)


def make_vocab():
    pieces = SPECIALS + BYTES + [p.encode() for p, _ in PIECES]
    scores = [0.0] * 259 + [s for _, s in PIECES]
    return pieces, np.asarray(scores, np.float32)


@pytest.fixture
def tok_file(tmp_path):
    pieces, scores = make_vocab()
    path = tmp_path / "tokenizer.bin"
    write_tokenizer(path, pieces, scores)
    return path


def reference_encode(pieces, scores, text, bos=True, eos=False):
    """run.c's encode written out plainly: O(n^2) search of the best pair, leftmost on ties."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    toks = [1] if bos else []
    if text:
        toks.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        toks += [lookup[b]] if b in lookup else [x + 3 for x in b]
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(toks) - 1):
            m = lookup.get(pieces[toks[i]] + pieces[toks[i + 1]])
            if m is not None and float(scores[m]) > best:
                best, best_i, best_id = float(scores[m]), i, m
        if best_i < 0:
            break
        toks[best_i:best_i + 2] = [best_id]
    return toks + ([2] if eos else [])


def test_tokenizer_load_matches_the_file_and_saves_it_back(tok_file, tmp_path):
    pieces, scores = make_vocab()
    tok = Llama2cTokenizer.load(tok_file)
    assert tok.vocab_size == len(pieces) == 259 + len(PIECES)
    assert list(tok.pieces) == pieces
    np.testing.assert_array_equal(tok.scores, scores)
    assert tok.max_token_length == 6 and (tok.bos_id, tok.eos_id) == (1, 2)
    assert Llama2cTokenizer.load(tok_file, vocab_size=tok.vocab_size) == tok
    out = tok.save(tmp_path / "copy" / "tok.bin")
    assert out.read_bytes() == tok_file.read_bytes()
    assert Llama2cTokenizer.load(out) == tok
    assert tok.fingerprint == Llama2cTokenizer.load(out).fingerprint
    # max_token_length is kept as stored (tokenizer.py writes the longest piece; a larger one is legal)
    write_tokenizer(tmp_path / "big.bin", pieces, scores, max_len=40)
    big = Llama2cTokenizer.load(tmp_path / "big.bin")
    assert big.max_token_length == 40
    assert big.save(tmp_path / "big2.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()


def ids_of(*pieces):
    allp = [p for p, _ in PIECES]
    return [259 + allp.index(p) for p in pieces]


def test_encode_hand_derived(tok_file):
    tok = Llama2cTokenizer.load(tok_file)
    # [' ', t, h, e, ' ', c, a, t] -> th -> the -> ' the' -> at -> ' c' -> ' cat'
    assert tok.encode("the cat").tolist() == [1] + ids_of(" the", " cat")
    assert tok.encode("the cat", bos=False, eos=True).tolist() == ids_of(" the", " cat") + [2]
    # ties (aa) merge the leftmost pair first
    assert tok.encode("aaa", bos=False).tolist() == ids_of(" ", "aa", "a")
    # scores <= -1e10 never merge
    assert tok.encode("ss", bos=False).tolist() == ids_of(" ", "s", "s")
    # a character in the vocabulary is one token; others fall back to their UTF-8 bytes (id = byte + 3)
    assert tok.encode("é", bos=False).tolist() == ids_of(" ", "é")
    assert tok.encode("ü", bos=False).tolist() == ids_of(" ") + [0xC3 + 3, 0xBC + 3]
    assert tok.encode("😀", bos=False).tolist() == ids_of(" ") + [b + 3 for b in "😀".encode()]
    assert tok.encode("e\x00", bos=False).tolist() == ids_of(" ", "e") + [3]
    # the dummy prefix only for non-empty text
    assert tok.encode("").tolist() == [1]
    assert tok.encode("", bos=False, eos=True).tolist() == [2]
    empty = tok.encode("", bos=False)
    assert empty.dtype == np.int32 and empty.shape == (0,)
    assert tok.encode("on").dtype == np.int32


def test_encode_matches_the_reference_merge_loop(tok_file):
    pieces, scores = make_vocab()
    tok = Llama2cTokenizer.load(tok_file)
    rng = np.random.default_rng(0)
    alphabet = list("the cat on aé ssü😀\n") + ["th", "at", "aa"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, rng.integers(0, 30)))
        bos, eos = bool(rng.integers(2)), bool(rng.integers(2))
        assert tok.encode(text, bos=bos, eos=eos).tolist() == reference_encode(pieces, scores, text, bos, eos), text


def test_encode_matches_the_reference_on_a_random_vocabulary():
    """Many overlapping merges with tied scores: the heap merge equals the plain loop of run.c."""
    rng = np.random.default_rng(1)
    letters = "abcd "
    merged = {"".join(rng.choice(list(letters), rng.integers(2, 6))) for _ in range(120)}
    singles = list(letters)
    pieces = SPECIALS + BYTES + [p.encode() for p in singles + sorted(merged)]
    scores = np.asarray([0.0] * 259 + [-50.0] * len(singles) + list(rng.integers(-8, 0, len(merged))), np.float32)
    tok = Llama2cTokenizer(pieces, scores)
    for _ in range(200):
        text = "".join(rng.choice(list(letters + "xé"), rng.integers(0, 60)))
        assert tok.encode(text).tolist() == reference_encode(pieces, scores, text), text


def test_decode_follows_run_c(tok_file):
    tok = Llama2cTokenizer.load(tok_file)
    for text in ["the cat", "Hello, World! 123", "ünïcödé — 日本語 😀", "a\nb\tc", "  two spaces", "", "é é"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode(tok.encode(text, eos=True)) == text
        # without BOS the dummy-prefix space stays: run.c strips it only after BOS
        assert tok.decode(tok.encode(text, bos=False)) == (" " + text if text else "")
    assert tok.decode([1] + ids_of(" the", " cat")) == "the cat"
    assert tok.decode(ids_of(" cat")) == " cat"  # a continuation decoded alone keeps its space
    assert tok.decode([1] + ids_of(" the") + [2], skip_special_tokens=False) == "\n<s>\nthe\n</s>\n"
    assert tok.decode([0xC3 + 3, 0xA9 + 3]) == "é"
    assert tok.decode([0xC3 + 3]) == "\ufffd"  # an incomplete UTF-8 sequence
    assert tok.decode(np.asarray([], np.int64)) == ""
    with pytest.raises(ValueError, match="token ids in"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TypeError):
        tok.decode("abc")


def test_tokenizer_interface_matches_the_other_tokenizers(tok_file):
    tok = Llama2cTokenizer.load(tok_file)
    ids = tok.encode("the cat")  # encode(text) alone works, as for ByteTokenizer / BPETokenizer
    assert isinstance(ids, np.ndarray) and ids.ndim == 1 and int(ids.max()) < tok.vocab_size
    assert isinstance(tok.decode(ids), str) and tok.name == "llama2c"
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    with pytest.raises(TypeError):
        tok.encode("x", bos=1)
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\ud800")


def test_vocabulary_without_byte_tokens_and_without_space():
    tok = Llama2cTokenizer([b"<unk>", b"<s>", b"</s>", b" ", b"a", b" a"], [0, 0, 0, -1, -1, -0.5])
    assert tok.encode("a").tolist() == [1, 5]
    with pytest.raises(ValueError, match="no byte tokens"):
        tok.encode("b")
    # no " " piece: the dummy prefix falls back to the byte token <0x20>
    pieces, scores = make_vocab()
    keep = [i for i, p in enumerate(pieces) if p != b" "]
    nospace = Llama2cTokenizer([pieces[i] for i in keep], scores[keep])
    assert nospace.encode("e", bos=False).tolist()[0] == 0x20 + 3
    with pytest.raises(ValueError, match="at least 3"):
        Llama2cTokenizer([b"a", b"b"], [0, 0])
    with pytest.raises(ValueError, match="scores"):
        Llama2cTokenizer([b"a", b"b", b"c"], [0, 0])
    with pytest.raises(ValueError, match="max_token_length"):
        Llama2cTokenizer([b"a", b"b", b"ccc"], [0, 0, 0], max_token_length=2)


def test_bad_tokenizer_files(tok_file, tmp_path):
    raw = tok_file.read_bytes()
    n = 259 + len(PIECES)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match=rf"bad\.bin: truncated llama2.c tokenizer: token {n - 1} needs"):
        Llama2cTokenizer.load(bad)
    bad.write_bytes(raw[:-3 - 8 - 4])  # cut inside the score/length of the last token
    with pytest.raises(ValueError, match="truncated"):
        Llama2cTokenizer.load(bad)
    with pytest.raises(ValueError, match=rf"truncated.*vocab_size={n + 1}, {n} tokens read"):
        Llama2cTokenizer.load(tok_file, vocab_size=n + 1)
    with pytest.raises(ValueError, match=rf"bytes after token {n - 2}: the file holds more than vocab_size={n - 1}"):
        Llama2cTokenizer.load(tok_file, vocab_size=n - 1)
    with pytest.raises(ValueError, match="vocab_size"):
        Llama2cTokenizer.load(tok_file, vocab_size=0)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="too short"):
        Llama2cTokenizer.load(bad)
    bad.write_bytes(struct.pack("<i", 5))
    with pytest.raises(ValueError, match="at least 3 tokens"):
        Llama2cTokenizer.load(bad)
    bad.write_bytes(struct.pack("<i", -1) + raw[4:])
    with pytest.raises(ValueError, match="max_token_length=-1"):
        Llama2cTokenizer.load(bad)
    bad.write_bytes(struct.pack("<i", 3) + raw[4:])
    with pytest.raises(ValueError, match="max_token_length=3 but token"):
        Llama2cTokenizer.load(bad)
    b = bytearray(raw)
    b[8:12] = struct.pack("<i", -4)  # length of token 0
    bad.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="token 0 has length -4"):
        Llama2cTokenizer.load(bad)
    with pytest.raises(IsADirectoryError):
        Llama2cTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        Llama2cTokenizer.load(tmp_path / "nope.bin")
    with pytest.raises(IsADirectoryError):
        Llama2cTokenizer.load(tok_file).save(tmp_path)


def test_report_max_differences():
    """Runs last in this file: prints the largest logit differences seen (pytest -s shows them)."""
    if MAX_DIFFS:
        print("\nmax |logits - reference|:", {k: f"{v:.2e}" for k, v in MAX_DIFFS.items()})
        assert max(MAX_DIFFS.values()) < 1e-4


def test_save_path_and_version_arguments(tmp_path):
    model = Llama(LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8,
                              norm_eps=1e-5), rng=0)
    for bad in (None, 3, b"x.bin"):
        with pytest.raises(TypeError, match="path: expected a path"):
            save_llama2c(model, bad)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="path: cannot make the folder .*file"):
        save_llama2c(model, tmp_path / "file" / "sub" / "m.bin")
    save_llama2c(model, tmp_path / "v1.bin", version=np.int64(1))  # a NumPy int is an int
    assert read_llama2c(tmp_path / "v1.bin")[0].version == 1
