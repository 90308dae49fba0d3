"""llama2.c files: the ``.bin`` checkpoints of the stories15M/42M/110M models, and llama2.c's tokenizer.

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
  byte length and the bytes. The vocabulary size is not stored. Read and written by
  :class:`qorus_jit.tokenizers.Llama2cTokenizer`.

This module reads and writes the checkpoint's header and raw arrays (:func:`read_llama2c`,
:func:`write_llama2c`); the model they make is built in ``models/llama.py`` (``load_llama2c``,
``save_llama2c``). llama2.c rotates interleaved pairs ``(x[2i], x[2i+1])`` where Hugging Face's Llama
rotates halves: :func:`interleaved_to_half` permutes the rows of ``wq`` and ``wk`` per head (the
permutation of Hugging Face's Llama conversion script), which leaves the logits unchanged. llama2.c fixes
RMSNorm ``eps = 1e-5`` and RoPE ``theta = 10000``.

Example::

    model = load_llama2c("stories15M.bin")
    tok = Llama2cTokenizer.load("tokenizer.bin", vocab_size=model.config.vocab_size)
    logits = model.forward(tok.encode("Once upon a time")[None])
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np

from qorus_jit.core.files import atomic_write, check_path

MAGIC = 0x616B3432  #: "ak42", the first uint32 of version 1 (and later) files
NORM_EPS = 1e-5  #: RMSNorm epsilon of llama2.c
ROPE_THETA = 10000.0  #: RoPE base of llama2.c

_LEGACY_HEADER = 28  # 7 int32
_V1_HEADER = 256
_INT32_MAX = 2**31 - 1
_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
_PER_LAYER = frozenset({"attention_norm", "ffn_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3"})
_FREQ_TABLES = frozenset({"freq_cis_real", "freq_cis_imag"})


# ------------------------------------------------------------------------------------------------ layout


@dataclasses.dataclass(frozen=True)
class Llama2cHeader:
    """The header of a llama2.c checkpoint: ``version`` 0 (legacy) or 1, the seven sizes, and whether the
    classifier is ``shared`` with the token embedding (``vocab_size`` is always positive here)."""

    version: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared: bool

    @property
    def head_dim(self) -> int:
        """``dim // n_heads``."""
        return self.dim // self.n_heads

    @property
    def header_bytes(self) -> int:
        """Bytes before the weights: 28 in the legacy format (version 0), 256 in version 1."""
        return _LEGACY_HEADER if self.version == 0 else _V1_HEADER

    def describe(self) -> str:
        """The header in one line (sizes and whether the classifier shares the embedding), for messages."""
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, n_layers={self.n_layers}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, vocab_size={self.vocab_size}, seq_len={self.seq_len}, "
                f"{'shared' if self.shared else 'separate'} classifier")

    def to_bytes(self) -> bytes:
        """The header as the file stores it."""
        sizes = (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads)
        if self.version == 0:
            return struct.pack("<7i", *sizes, self.vocab_size if self.shared else -self.vocab_size, self.seq_len)
        head = struct.pack("<Ii7iB", MAGIC, 1, *sizes, self.vocab_size, self.seq_len, int(self.shared))
        return head + b"\0" * (_V1_HEADER - len(head))


def layout(h: Llama2cHeader, freq_tables: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """The float32 tensors after the header, in file order, by their llama2.c (``model.py``) names; the
    per-layer ones stacked ``(n_layers, ...)``."""
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


def _n_floats(tensors) -> int:
    return sum(math.prod(shape) for _, shape in tensors)


def _expected_size(h: Llama2cHeader, freq_tables: bool = True) -> int:
    return h.header_bytes + 4 * _n_floats(layout(h, freq_tables))


# --------------------------------------------------------------------------------------- RoPE permutation


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection ``(n_heads * hd, in)`` reordered per head ``[0, 2, 4, ..., 1, 3, 5, ...]``:
    the interleaved pairs of llama2.c become the rotate-half pairs of Hugging Face."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`interleaved_to_half`."""
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


def _read_header(file: Path, size: int) -> Llama2cHeader:
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
    why = _header_problem(d)
    if why:
        raise ValueError(f"{file}: bad llama2.c header: {why} (is this a llama2.c checkpoint?)")
    return Llama2cHeader(version=version, shared=shared, **d)


def _header_problem(d: dict[str, int]) -> str:
    """What is wrong with the seven header sizes ``d``, or "" (each > 0, the heads dividing, pairs even)."""
    bad = [f"{k}={v}" for k, v in d.items() if v <= 0]
    if bad:
        return f"{', '.join(bad)} (expected > 0)"
    if d["dim"] % d["n_heads"]:
        return f"n_heads={d['n_heads']} does not divide dim={d['dim']}"
    if d["n_heads"] % d["n_kv_heads"]:
        return f"n_kv_heads={d['n_kv_heads']} does not divide n_heads={d['n_heads']}"
    if (d["dim"] // d["n_heads"]) % 2:
        return f"head size dim / n_heads = {d['dim'] // d['n_heads']} is odd (RoPE rotates pairs)"
    return ""


def _fitting_fields(h: Llama2cHeader, size: int) -> list[str]:
    """``["n_layers=2", ...]``: the header fields that, changed alone to a valid value, make the expected size
    ``size`` bytes; each is found by bisection, the size growing with every field but ``n_heads``."""
    out = []
    for field in _FIELDS:
        grows = field != "n_heads"

        def size_of(v, field=field):
            return _expected_size(dataclasses.replace(h, **{field: v}))

        lo, hi = 1, _INT32_MAX  # the smallest v whose size has reached ``size`` (from the side it moves to)
        while lo < hi:
            mid = (lo + hi) // 2
            if (size_of(mid) >= size) if grows else (size_of(mid) <= size):
                hi = mid
            else:
                lo = mid + 1
        d = {f: getattr(h, f) for f in _FIELDS} | {field: lo}
        if lo != getattr(h, field) and size_of(lo) == size and not _header_problem(d):
            out.append(f"{field}={lo}")
    return out


def _check_size(file: Path, h: Llama2cHeader, size: int) -> None:
    expected = _expected_size(h)
    if size == expected:
        return
    what = f"truncated, {expected - size} bytes missing" if size < expected else f"{size - expected} extra bytes"
    hint = ""
    if h.version == 0 and size == _expected_size(h, freq_tables=False):
        hint = ("; the freq_cis_real/freq_cis_imag RoPE tables that the legacy format stores after the final "
                "norm seem to be missing (llama2.c's run.c skips over them, so they must be present)")
    else:  # which one change of the header would make it fit the file
        fits = _fitting_fields(h, size)
        if size == _expected_size(dataclasses.replace(h, shared=not h.shared)):
            fits.insert(0, f"a {'separate' if h.shared else 'shared'} classifier (is the "
                           f"{'vocab_size sign' if h.version == 0 else 'shared_classifier flag'} wrong?)")
        if fits:
            hint = f"; the size would fit {' or '.join(fits)}"
    raise ValueError(f"{file}: expected {expected} bytes for a llama2.c version {h.version} checkpoint with "
                     f"{h.describe()}, got {size} bytes ({what}){hint}")


def read_llama2c_header(path) -> Llama2cHeader:
    """The header of a llama2.c checkpoint, checked against the file's size, without reading the weights
    (the errors of :func:`read_llama2c`)."""
    file = _check_file(path)
    size = file.stat().st_size
    h = _read_header(file, size)
    _check_size(file, h, size)
    return h


def read_llama2c(path) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """The header and the float32 arrays of a llama2.c checkpoint (legacy version 0 or version 1, told apart
    by the magic), by their :func:`layout` names and shapes; the legacy RoPE tables are skipped.

    Raises FileNotFoundError / IsADirectoryError for a missing file or a folder, and a ValueError naming the
    file for a short file, nonsense header values, an unknown version or a size that does not match the
    header (expected and actual bytes).
    """
    h = read_llama2c_header(path)
    file = Path(path)
    tensors = {}
    with open(file, "rb") as f:
        f.seek(h.header_bytes)
        for name, shape in layout(h):
            n = math.prod(shape)
            if name in _FREQ_TABLES:
                f.seek(4 * n, os.SEEK_CUR)
                continue
            arr = np.fromfile(f, dtype="<f4", count=n)
            if arr.size != n:  # the file shrank since its size was checked
                raise ValueError(f"{file}: truncated while reading {name!r} (expected {n} float32 values)")
            tensors[name] = arr.reshape(shape)
    return h, tensors


# ----------------------------------------------------------------------------------------------- writing


def _rope_tables(seq_len: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """llama2.c's legacy ``freq_cis_real``/``freq_cis_imag``: cos and sin of ``t * theta^(-2i/hd)``."""
    freqs = ROPE_THETA ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(seq_len, dtype=np.float64), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def write_llama2c(path, h: Llama2cHeader, tensors: dict[str, np.ndarray | list[np.ndarray]]) -> Path:
    """Write a llama2.c checkpoint of header ``h`` to ``path`` atomically (the folder is created); returns
    the path. ``tensors`` holds every :func:`layout` name but the RoPE tables (written here for version 0):
    the per-layer ones as a list of one array per layer, the others as one array. Shapes are checked before
    the file is touched."""
    if h.version not in (0, 1):
        raise ValueError(f"h.version: expected 0 (legacy) or 1, got {h.version!r}")
    for field in _FIELDS:
        if not 0 < getattr(h, field) <= _INT32_MAX:
            raise ValueError(f"h.{field}: expected an int32 > 0, got {getattr(h, field)}")
    p = check_path("path", path)
    if p.is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the directory {p}")
    cos, sin = _rope_tables(h.seq_len, h.head_dim) if h.version == 0 else (None, None)
    given = {**tensors, "freq_cis_real": cos, "freq_cis_imag": sin}
    parts = []
    for name, shape in layout(h):
        if name not in given:
            raise ValueError(f"tensors: missing {name!r}")
        arrays = list(given[name]) if name in _PER_LAYER else [given[name]]
        per = shape[1:] if name in _PER_LAYER else shape
        if name in _PER_LAYER and len(arrays) != h.n_layers:
            raise ValueError(f"tensors[{name!r}]: expected {h.n_layers} arrays (one per layer), got {len(arrays)}")
        for a in arrays:
            if np.shape(a) != per:
                raise ValueError(f"tensors[{name!r}]: expected shape {per}, got {np.shape(a)}")
        parts += arrays
    header = h.to_bytes()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            for a in parts:
                f.write(np.ascontiguousarray(a, dtype="<f4").data)

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"path: cannot make the folder {p.parent}: it or one of its parents is a "
                                 "file") from None
    return atomic_write(p, write)
