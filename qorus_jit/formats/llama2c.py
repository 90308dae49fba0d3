"""llama2.c checkpoints and tokenizers in and out: the ``.bin`` files of the stories15M/42M/110M models.

llama2.c is a small C inference program for Llama-2-architecture models. Its files:

- **Checkpoint, legacy (version 0)**: 7 little-endian int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size, seq_len`` (a negative ``vocab_size`` means the classifier is not shared with the token
  embedding), then float32 arrays: ``tok_embeddings (V, D)``, ``attention_norm (L, D)``, ``wq (L, H*hd, D)``,
  ``wk (L, Hkv*hd, D)``, ``wv (L, Hkv*hd, D)``, ``wo (L, D, H*hd)``, ``ffn_norm (L, D)``, ``w1 (L, F, D)``,
  ``w2 (L, D, F)``, ``w3 (L, F, D)``, ``norm (D,)``, the RoPE tables ``freq_cis_real`` and ``freq_cis_imag``
  ``(seq_len, hd/2)`` (skipped by readers), then ``output (V, D)`` when not shared. Matrices are
  ``(out, in)`` as ``nn.Linear``.
- **Checkpoint, version 1**: a 256-byte header (uint32 magic ``0x616b3432`` "ak42", int32 version 1, the
  same 7 int32 with a positive ``vocab_size``, a uint8 shared-classifier flag, zero padding), then the
  norms (``attention_norm`` of every layer, ``ffn_norm`` of every layer, ``norm``), ``tok_embeddings``,
  ``wq``, ``wk``, ``wv``, ``wo``, ``w1``, ``w2``, ``w3`` of every layer, and ``output`` when not shared.
- **Tokenizer** (``tokenizer.bin``): int32 ``max_token_length``, then per token a float32 score, an int32
  byte length and the bytes. The vocabulary size is not stored.

llama2.c rotates interleaved pairs ``(x[2i], x[2i+1])``; :class:`~qorus_jit.models.Llama` rotates halves as
Hugging Face does. The rows of ``wq`` and ``wk`` are permuted per head on load (and back on save), the
permutation of Hugging Face's Llama conversion script, so the logits are unchanged. llama2.c fixes RMSNorm
``eps = 1e-5`` and RoPE ``theta = 10000``.

Example::

    model = load_llama2c("stories15M.bin")
    tok = Llama2cTokenizer.load("tokenizer.bin", vocab_size=model.config.vocab_size)
    logits = model.forward(tok.encode("Once upon a time")[None])
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import os
import re
import struct
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_bool, check_positive
from qorus_jit.core.files import atomic_write
from qorus_jit.data import _ids_array
from qorus_jit.models.configs import LlamaConfig
from qorus_jit.models.llama import Llama

MAGIC = 0x616B3432  #: "ak42", the first uint32 of version 1 (and later) files
NORM_EPS = 1e-5  #: RMSNorm epsilon of llama2.c
ROPE_THETA = 10000.0  #: RoPE base of llama2.c
BOS_ID, EOS_ID = 1, 2
BYTE_OFFSET = 3  #: id of the byte token ``<0x00>``: byte ``b`` falls back to id ``b + 3``

_LEGACY_HEADER = 28  # 7 int32
_V1_HEADER = 256
_INT32_MAX = 2**31 - 1
_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
_PER_LAYER = frozenset({"attention_norm", "ffn_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3"})
_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


# ------------------------------------------------------------------------------------------------ layout


@dataclasses.dataclass(frozen=True)
class _Header:
    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here
    seq_len: int
    shared: bool

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def header_bytes(self) -> int:
        return _LEGACY_HEADER if self.version == 0 else _V1_HEADER

    def describe(self) -> str:
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, vocab_size={self.vocab_size}, seq_len={self.seq_len}, "
                f"{'shared' if self.shared else 'separate'} classifier")


def _layout(h: _Header, freq_tables: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """The float32 tensors after the header, in file order, by their llama2.c (``model.py``) names."""
    D, F, L, V, S, hd = h.dim, h.hidden_dim, h.n_layers, h.vocab_size, h.seq_len, h.head_dim
    q, kv = h.n_heads * hd, h.n_kv_heads * hd
    emb = ("tok_embeddings", (V, D))
    att_norm, ffn_norm, norm = ("attention_norm", (L, D)), ("ffn_norm", (L, D)), ("norm", (D,))
    mats = [("wq", (L, q, D)), ("wk", (L, kv, D)), ("wv", (L, kv, D)), ("wo", (L, D, q))]
    ffn = [("w1", (L, F, D)), ("w2", (L, D, F)), ("w3", (L, F, D))]
    if h.version == 0:
        out = [emb, att_norm, *mats, ffn_norm, *ffn, norm]
        if freq_tables:
            out += [("freq_cis_real", (S, hd // 2)), ("freq_cis_imag", (S, hd // 2))]
    else:
        out = [att_norm, ffn_norm, norm, emb, *mats, *ffn]
    if not h.shared:
        out.append(("output", (V, D)))
    return out


def _n_floats(layout) -> int:
    return sum(math.prod(shape) for _, shape in layout)


def _expected_size(h: _Header, freq_tables: bool = True) -> int:
    return h.header_bytes + 4 * _n_floats(_layout(h, freq_tables))


# --------------------------------------------------------------------------------------- RoPE permutation


def _interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection ``(n_heads * hd, in)`` reordered per head ``[0, 2, 4, ..., 1, 3, 5, ...]``:
    the interleaved pairs of llama2.c become the rotate-half pairs of Hugging Face."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`_interleaved_to_half`."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# ----------------------------------------------------------------------------------------------- reading


def _check_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p}: expected a llama2.c file, got a directory")
    if not p.is_file():
        raise FileNotFoundError(f"llama2.c file not found: {p}")
    return p


def _read_header(file: Path, size: int) -> _Header:
    with open(file, "rb") as f:
        head = f.read(_V1_HEADER)
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < 8:
            raise ValueError(f"{file}: too short for a llama2.c header ({size} bytes after the 'ak42' magic)")
        version = struct.unpack_from("<i", head, 4)[0]
        if version == 2:
            raise ValueError(f"{file}: llama2.c version 2 (int8 Q8_0 quantized) checkpoints are not supported; "
                             "export float32 weights (version 0 or 1) with llama2.c's export.py")
        if version != 1:
            raise ValueError(f"{file}: unknown llama2.c checkpoint version {version} (expected 1 after the "
                             "'ak42' magic, or a legacy file without magic)")
        if size < _V1_HEADER:
            raise ValueError(f"{file}: too short for a llama2.c version 1 header: expected at least "
                             f"{_V1_HEADER} bytes, got {size}")
        values = struct.unpack_from("<7i", head, 8)
        flag = head[36]
        if flag not in (0, 1):
            raise ValueError(f"{file}: bad llama2.c version 1 header: shared_classifier flag is {flag}, "
                             "expected 0 or 1")
        if values[5] <= 0:
            raise ValueError(f"{file}: bad llama2.c version 1 header: vocab_size={values[5]}, expected > 0")
        shared = bool(flag)
    else:
        if size < _LEGACY_HEADER:
            raise ValueError(f"{file}: too short for a llama2.c header: expected at least {_LEGACY_HEADER} "
                             f"bytes (7 int32), got {size}")
        version = 0
        values = struct.unpack_from("<7i", head)
        if values[5] == 0:
            raise ValueError(f"{file}: bad llama2.c header: vocab_size=0 (is this a llama2.c checkpoint?)")
        shared = values[5] > 0
    d = dict(zip(_FIELDS, values, strict=True))
    d["vocab_size"] = abs(d["vocab_size"])
    bad = [f"{k}={v}" for k, v in d.items() if v <= 0]
    why = ""
    if bad:
        why = f"{', '.join(bad)} (expected > 0)"
    elif d["dim"] % d["n_heads"]:
        why = f"n_heads={d['n_heads']} does not divide dim={d['dim']}"
    elif d["n_heads"] % d["n_kv_heads"]:
        why = f"n_kv_heads={d['n_kv_heads']} does not divide n_heads={d['n_heads']}"
    elif (d["dim"] // d["n_heads"]) % 2:
        why = f"head size dim / n_heads = {d['dim'] // d['n_heads']} is odd (RoPE rotates pairs)"
    if why:
        raise ValueError(f"{file}: bad llama2.c header: {why} (is this a llama2.c checkpoint?)")
    return _Header(version=version, shared=shared, **d)


def _check_size(file: Path, h: _Header, size: int) -> None:
    expected = _expected_size(h)
    if size == expected:
        return
    what = f"truncated, {expected - size} bytes missing" if size < expected else f"{size - expected} extra bytes"
    hint = ""
    if h.version == 0 and size == _expected_size(h, freq_tables=False):
        hint = ("; the freq_cis_real/freq_cis_imag RoPE tables that the legacy format stores after the final "
                "norm seem to be missing (llama2.c's run.c skips over them, so they must be present)")
    elif size == _expected_size(dataclasses.replace(h, shared=not h.shared)):
        hint = (f"; the size would fit a {'separate' if h.shared else 'shared'} classifier: is the "
                f"{'vocab_size sign' if h.version == 0 else 'shared_classifier flag'} wrong?")
    raise ValueError(f"{file}: expected {expected} bytes for a llama2.c version {h.version} checkpoint with "
                     f"{h.describe()}, got {size} bytes ({what}){hint}")


def load_llama2c(path) -> Llama:
    """Read a llama2.c checkpoint (legacy version 0 or version 1, told apart by the magic) into a
    :class:`~qorus_jit.models.Llama` with ``norm_eps=1e-5``, ``rope_theta=10000`` and the classifier tied
    or not as the file says. The rows of ``wq``/``wk`` are permuted from llama2.c's interleaved RoPE pairs
    to the model's rotate-half pairs, so the logits are those of llama2.c.

    Raises FileNotFoundError / IsADirectoryError for a missing file or a folder, and a ValueError naming the
    file for a short file, nonsense header values, an unknown version or a size that does not match the
    header (expected and actual bytes).
    """
    file = _check_file(path)
    size = file.stat().st_size
    h = _read_header(file, size)
    _check_size(file, h, size)
    config = LlamaConfig(dim=h.dim, n_layers=h.n_layers, n_heads=h.n_heads, n_kv_heads=h.n_kv_heads,
                         hidden_dim=h.hidden_dim, vocab_size=h.vocab_size, max_seq_len=h.seq_len,
                         norm_eps=NORM_EPS, rope_theta=ROPE_THETA, tie_embeddings=h.shared)
    model = Llama(config)
    t = {}
    with open(file, "rb") as f:
        f.seek(h.header_bytes)
        for name, shape in _layout(h):
            n = math.prod(shape)
            arr = np.fromfile(f, dtype="<f4", count=n)
            if arr.size != n:  # the file shrank since its size was checked
                raise ValueError(f"{file}: truncated while reading {name!r} (expected {n} float32 values)")
            t[name] = arr.reshape(shape)
    model.load_parameters(_to_params(t, config))
    return model


def _to_params(t: dict[str, np.ndarray], c: LlamaConfig) -> dict[str, np.ndarray]:
    """llama2.c tensors -> the model's (Hugging Face) parameter names, q/k rows permuted to rotate-half."""
    p = {"model.embed_tokens.weight": t["tok_embeddings"]}
    for i in range(c.n_layers):
        pre = f"model.layers.{i}."
        p[pre + "input_layernorm.weight"] = t["attention_norm"][i]
        p[pre + "self_attn.q_proj.weight"] = _interleaved_to_half(t["wq"][i], c.n_heads)
        p[pre + "self_attn.k_proj.weight"] = _interleaved_to_half(t["wk"][i], c.n_kv_heads)
        p[pre + "self_attn.v_proj.weight"] = t["wv"][i]
        p[pre + "self_attn.o_proj.weight"] = t["wo"][i]
        p[pre + "post_attention_layernorm.weight"] = t["ffn_norm"][i]
        p[pre + "mlp.gate_proj.weight"] = t["w1"][i]
        p[pre + "mlp.down_proj.weight"] = t["w2"][i]
        p[pre + "mlp.up_proj.weight"] = t["w3"][i]
    p["model.norm.weight"] = t["norm"]
    if not c.tie_embeddings:
        p["lm_head.weight"] = t["output"]
    return p


# ----------------------------------------------------------------------------------------------- writing


def _check_saveable(model) -> LlamaConfig:
    if not isinstance(model, Llama):
        raise TypeError(f"model: llama2.c files hold Llama-2 architectures only; expected a qorus_jit.models.Llama, "
                        f"got {type(model).__name__}")
    c = model.config
    for field in ("attention_bias", "mlp_bias"):
        if getattr(c, field):
            raise ValueError(f"LlamaConfig.{field}: llama2.c files hold no biases, got True")
    if c.head_dim * c.n_heads != c.dim:
        raise ValueError(f"LlamaConfig.n_heads: llama2.c needs head_dim = dim / n_heads, got dim={c.dim}, "
                         f"n_heads={c.n_heads}")
    if float(c.rope_theta) != ROPE_THETA:
        raise ValueError(f"LlamaConfig.rope_theta: llama2.c uses {ROPE_THETA}, got {c.rope_theta!r}")
    if float(c.norm_eps) != NORM_EPS:
        raise ValueError(f"LlamaConfig.norm_eps: llama2.c uses {NORM_EPS}, got {c.norm_eps!r}")
    for field in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
        if getattr(c, field) > _INT32_MAX:
            raise ValueError(f"LlamaConfig.{field}: llama2.c stores int32, got {getattr(c, field)}")
    return c


def _rope_tables(seq_len: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """llama2.c's legacy ``freq_cis_real``/``freq_cis_imag``: cos and sin of ``t * theta^(-2i/hd)``."""
    freqs = ROPE_THETA ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(seq_len, dtype=np.float64), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _tensors_for_file(model: Llama, h: _Header):
    """Yield ``(name, arrays)`` in the file order of ``h.version``: a list of one array per layer for the
    per-layer stacks, of one array otherwise."""
    c, p = model.config, model.parameters()
    layers = [f"model.layers.{i}." for i in range(c.n_layers)]
    cos, sin = _rope_tables(c.max_seq_len, c.head_dim) if h.version == 0 else (None, None)
    parts = {
        "tok_embeddings": [p["model.embed_tokens.weight"]],
        "attention_norm": [p[x + "input_layernorm.weight"] for x in layers],
        "wq": [_half_to_interleaved(p[x + "self_attn.q_proj.weight"], c.n_heads) for x in layers],
        "wk": [_half_to_interleaved(p[x + "self_attn.k_proj.weight"], c.n_kv_heads) for x in layers],
        "wv": [p[x + "self_attn.v_proj.weight"] for x in layers],
        "wo": [p[x + "self_attn.o_proj.weight"] for x in layers],
        "ffn_norm": [p[x + "post_attention_layernorm.weight"] for x in layers],
        "w1": [p[x + "mlp.gate_proj.weight"] for x in layers],
        "w2": [p[x + "mlp.down_proj.weight"] for x in layers],
        "w3": [p[x + "mlp.up_proj.weight"] for x in layers],
        "norm": [p["model.norm.weight"]],
        "freq_cis_real": [cos],
        "freq_cis_imag": [sin],
        "output": [p.get("lm_head.weight")],
    }
    for name, shape in _layout(h):
        arrays = parts[name]
        per = shape[1:] if name in _PER_LAYER else shape
        for a in arrays:
            if a.shape != per:  # a model whose parameters were replaced by wrongly shaped arrays
                raise ValueError(f"model: tensor {name!r} has shape {a.shape}, expected {per}")
        yield name, arrays


def save_llama2c(model, path, version: int = 0) -> Path:
    """Write a :class:`~qorus_jit.models.Llama` as a llama2.c checkpoint, atomically; returns the path.

    ``version`` 0 is the legacy format that llama2.c's ``run.c`` reads (with the RoPE tables, a negative
    vocab size for a separate classifier); 1 the 256-byte-header format of ``export.py``. The q/k rows are
    permuted back to llama2.c's interleaved RoPE pairs. A model the format cannot hold raises: not a Llama
    (TypeError), biases, ``rope_theta != 10000`` or ``norm_eps != 1e-5`` (ValueError naming the field).
    """
    if isinstance(version, bool) or not isinstance(version, int) or version not in (0, 1):
        raise ValueError(f"version: expected 0 (legacy) or 1, got {version!r}")
    c = _check_saveable(model)
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the directory {p}")
    h = _Header(version=version, dim=c.dim, hidden_dim=c.hidden_dim, n_layers=c.n_layers, n_heads=c.n_heads,
                n_kv_heads=c.n_kv_heads, vocab_size=c.vocab_size, seq_len=c.max_seq_len,
                shared=c.tie_embeddings)
    tensors = list(_tensors_for_file(model, h))  # shape checks before any file is touched
    params = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads)
    if version == 0:
        header = struct.pack("<7i", *params, c.vocab_size if h.shared else -c.vocab_size, c.max_seq_len)
    else:
        header = struct.pack("<Ii7iB", MAGIC, 1, *params, c.vocab_size, c.max_seq_len, int(h.shared))
        header += b"\0" * (_V1_HEADER - len(header))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            for _, arrays in tensors:
                for a in arrays:
                    f.write(np.ascontiguousarray(a, dtype="<f4").data)

    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, write)


# --------------------------------------------------------------------------------------------- tokenizer


class Llama2cTokenizer:
    """llama2.c's ``tokenizer.bin``: a sentencepiece-style BPE vocabulary of byte strings with merge scores.

    ``encode(text, bos=True, eos=False)`` follows ``run.c``: an optional BOS (id 1), a dummy-prefix ``" "``
    when the text is not empty, one token per Unicode character found in the vocabulary and byte-fallback
    tokens ``<0xXX>`` (id ``byte + 3``) for the bytes of the others, then repeatedly merge the adjacent pair
    whose concatenation is the vocabulary piece of highest score (the leftmost on ties; scores <= -1e10 never
    merge), then an optional EOS (id 2). ``decode(ids)`` follows ``run.c``'s ``decode``: the piece after a
    BOS loses a leading space, ``<0xXX>`` pieces become their raw byte, the bytes are joined and read as
    UTF-8 (invalid bytes become U+FFFD); BOS and EOS are dropped unless ``skip_special_tokens=False``. So
    ``decode(encode(s)) == s`` for any text, and a continuation decoded on its own keeps its leading space.

    ``pieces`` are ``bytes`` (a ``str`` is taken as UTF-8); where a piece occurs twice, the lower id wins.
    """

    name = "llama2c"
    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, pieces, scores, max_token_length: int | None = None):
        pieces = [p.encode("utf-8") if isinstance(p, str) else p for p in pieces]
        for i, p in enumerate(pieces):
            if not isinstance(p, bytes):
                raise TypeError(f"pieces[{i}]: expected bytes or str, got {type(p).__name__}")
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape != (len(pieces),):
            raise ValueError(f"scores: expected shape ({len(pieces)},) (one per piece), got {scores.shape}")
        if len(pieces) < 3:
            raise ValueError(f"pieces: expected at least 3 (<unk>, <s>, </s> at ids 0, 1, 2), got {len(pieces)}")
        longest = max(len(p) for p in pieces)
        if max_token_length is None:
            max_token_length = longest
        if isinstance(max_token_length, bool) or not isinstance(max_token_length, int) \
                or not longest <= max_token_length <= _INT32_MAX:
            raise ValueError(f"max_token_length: expected an int >= the longest piece ({longest} bytes), "
                             f"got {max_token_length!r}")
        self.pieces: tuple[bytes, ...] = tuple(pieces)
        self.scores = scores
        self.scores.flags.writeable = False
        self.max_token_length = int(max_token_length)
        self._scores = scores.tolist()
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(pieces):
            self._lookup.setdefault(p, i)
        self._byte_fallback = len(pieces) >= BYTE_OFFSET + 256 and all(
            pieces[BYTE_OFFSET + b] == b"<0x%02X>" % b for b in range(256))

    # -- file

    @classmethod
    def load(cls, path, vocab_size: int | None = None) -> Llama2cTokenizer:
        """Read a ``tokenizer.bin``: ``vocab_size`` tokens (the model's; the file does not store it), or every
        token up to the end of the file when ``None``. A file that ends inside a token or holds more bytes
        than ``vocab_size`` tokens raises a ValueError naming the file."""
        if vocab_size is not None:
            check_positive(vocab_size=vocab_size)
        file = _check_file(path)
        data = file.read_bytes()
        return cls.from_bytes(data, vocab_size, source=str(file))

    @classmethod
    def from_bytes(cls, data: bytes, vocab_size: int | None = None, source: str = "tokenizer") -> Llama2cTokenizer:
        """Parse the bytes of a ``tokenizer.bin`` (see :meth:`load`); ``source`` names it in errors."""
        if len(data) < 4:
            raise ValueError(f"{source}: too short for a llama2.c tokenizer: expected at least 4 bytes "
                             f"(int32 max_token_length), got {len(data)}")
        max_len = struct.unpack_from("<i", data)[0]
        if max_len < 0:
            raise ValueError(f"{source}: bad llama2.c tokenizer: max_token_length={max_len}, expected >= 0")
        pieces, scores, off, size = [], [], 4, len(data)
        while (off < size) if vocab_size is None else (len(pieces) < vocab_size):
            i = len(pieces)
            if off + 8 > size:
                more = "" if vocab_size is None else f" (vocab_size={vocab_size}, {i} tokens read)"
                raise ValueError(f"{source}: truncated llama2.c tokenizer: token {i} needs 8 header bytes at "
                                 f"offset {off}, the file has {size}{more}")
            score, n = struct.unpack_from("<fi", data, off)
            if n < 0:
                raise ValueError(f"{source}: bad llama2.c tokenizer: token {i} has length {n} (offset {off + 4})")
            if off + 8 + n > size:
                raise ValueError(f"{source}: truncated llama2.c tokenizer: token {i} needs {n} bytes at offset "
                                 f"{off + 8}, the file has {size}")
            pieces.append(bytes(data[off + 8:off + 8 + n]))
            scores.append(score)
            off += 8 + n
        if off != size:
            raise ValueError(f"{source}: {size - off} bytes after token {vocab_size - 1}: the file holds more than "
                             f"vocab_size={vocab_size} tokens (or trailing garbage); pass the model's vocab_size, "
                             "or None to read every token")
        longest = max((len(p) for p in pieces), default=0)
        if max_len < longest:
            raise ValueError(f"{source}: bad llama2.c tokenizer: max_token_length={max_len} but token "
                             f"{[len(p) for p in pieces].index(longest)} has {longest} bytes")
        if len(pieces) < 3:
            raise ValueError(f"{source}: a llama2.c tokenizer needs at least 3 tokens (<unk>, <s>, </s>), "
                             f"got {len(pieces)}")
        return cls(pieces, scores, max_len)

    def to_bytes(self) -> bytes:
        """The ``tokenizer.bin`` bytes."""
        out = [struct.pack("<i", self.max_token_length)]
        for p, s in zip(self.pieces, self.scores.tolist(), strict=True):
            out.append(struct.pack("<fi", s, len(p)))
            out.append(p)
        return b"".join(out)

    def save(self, path) -> Path:
        """Write the ``tokenizer.bin`` to ``path`` atomically; returns the path."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a path (str or os.PathLike), got {type(path).__name__}")
        p = Path(path)
        if p.is_dir():
            raise IsADirectoryError(f"path: expected a file name, got the directory {p}")
        data = self.to_bytes()
        p.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(p, lambda tmp: tmp.write_bytes(data))

    # -- use

    @property
    def vocab_size(self) -> int:
        """Number of ids: every id is in ``[0, vocab_size)``."""
        return len(self.pieces)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_bytes`: equal fingerprints encode text identically."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def _fallback(self, data: bytes) -> list[int]:
        if not self._byte_fallback:
            raise ValueError(f"text: {data!r} is not in the vocabulary, and the vocabulary has no byte tokens "
                             f"<0x00>..<0xFF> at ids {BYTE_OFFSET}..{BYTE_OFFSET + 255} to fall back to")
        return [b + BYTE_OFFSET for b in data]

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> np.ndarray:
        """``(n,)`` int32 ids of ``text`` as llama2.c's ``run.c`` encodes it (see the class)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        check_bool(bos=bos, eos=eos)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text: expected valid Unicode, got a lone surrogate at index {e.start}") from None
        ids = [BOS_ID] if bos else []
        if text:
            prefix = self._lookup.get(b" ")
            ids += [prefix] if prefix is not None else self._fallback(b" ")
            known: dict[str, list[int]] = {}
            for ch in text:
                got = known.get(ch)
                if got is None:
                    b = ch.encode("utf-8")
                    i = self._lookup.get(b)
                    got = known[ch] = [i] if i is not None else self._fallback(b)
                ids += got
        ids = self._merge(ids)
        if eos:
            ids.append(EOS_ID)
        return np.asarray(ids, dtype=np.int32)

    def _merge(self, ids: list[int]) -> list[int]:
        """run.c's merge loop (best score first, leftmost on ties) in O(n log n): a heap of candidate pairs
        keyed by (-score, position of the left token), on a linked list; stale entries are skipped."""
        n = len(ids)
        if n < 2:
            return ids
        pieces, lookup, scores = self.pieces, self._lookup, self._scores
        tok, nxt, prv = list(ids), list(range(1, n + 1)), list(range(-1, n - 1))
        nxt[-1] = -1
        alive = [True] * n
        heap: list[tuple] = []

        def candidate(i: int) -> tuple | None:
            j = nxt[i]
            if j < 0:
                return None
            m = lookup.get(pieces[tok[i]] + pieces[tok[j]])
            if m is None or not scores[m] > -1e10:
                return None
            return (-scores[m], i, j, tok[i], tok[j], m)

        for i in range(n - 1):
            c = candidate(i)
            if c is not None:
                heap.append(c)
        heapq.heapify(heap)
        while heap:
            _, i, j, a, b, m = heapq.heappop(heap)
            if not alive[i] or nxt[i] != j or tok[i] != a or tok[j] != b:
                continue  # stale: one of the two tokens was merged since
            tok[i], alive[j] = m, False
            k = nxt[i] = nxt[j]
            if k >= 0:
                prv[k] = i
            for left in (prv[i], i):
                if left >= 0 and (c := candidate(left)) is not None:
                    heapq.heappush(heap, c)
        out, i = [], 0
        while i >= 0:
            out.append(tok[i])
            i = nxt[i]
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """The text of ``(n,)`` ids in ``[0, vocab_size)`` as llama2.c's ``run.c`` prints it (see the class)."""
        check_bool(skip_special_tokens=skip_special_tokens)
        arr = _ids_array("ids", ids, self.vocab_size)
        out, prev = bytearray(), -1
        for i in arr.tolist():
            if not (skip_special_tokens and i in (BOS_ID, EOS_ID)):
                piece = self.pieces[i]
                if prev == BOS_ID and piece[:1] == b" ":
                    piece = piece[1:]
                m = _BYTE_PIECE.fullmatch(piece)
                out += bytes([int(m.group(1), 16)]) if m else piece
            prev = i
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Llama2cTokenizer(vocab_size={self.vocab_size}, max_token_length={self.max_token_length})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Llama2cTokenizer) and self.pieces == other.pieces
                and self.max_token_length == other.max_token_length
                and np.array_equal(self.scores.view(np.uint32), other.scores.view(np.uint32)))

    def __hash__(self) -> int:
        return hash((self.pieces, self.max_token_length))
