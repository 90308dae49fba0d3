"""Sentence embeddings from a BERT-style sentence-transformers folder: tokenize, encode, pool, normalize.

:class:`SentenceEncoder` reads a folder laid out as a sentence-transformers model::

    config.json + model.safetensors    a BertModel (read with qorus_jit.load_pretrained; no pickle)
    tokenizer.json                      a tokenizer of the `tokenizers` package (BERT's WordPiece)
    sentence_bert_config.json           optional: max_seq_length, do_lower_case
    1_Pooling/config.json               optional: the pooling modes (mean when absent)
    modules.json                        optional: the module list (Transformer, Pooling[, Normalize])

and turns texts into ``(n, dim)`` float32 vectors, as sentence-transformers' ``model.encode`` does:

- **Modules.** Without ``modules.json`` the transformer sits at the top level, the pooling config is read
  from ``1_Pooling/config.json`` if present (mean pooling otherwise) and the output is L2-normalized. With
  ``modules.json`` its modules are followed: the Transformer module's ``path`` is the folder of the model,
  tokenizer and ``sentence_bert_config.json`` (``""``, the top level, in the common layout; a subfolder such
  as ``0_Transformer`` in older ones), the Pooling module's ``path`` holds the pooling ``config.json``, and
  the output is L2-normalized exactly when a Normalize module is listed, as sentence-transformers does.
  Any other module (``Dense``, ``LayerNorm``, ...) raises a ValueError rather than giving other vectors
  than the model's. ``encode(normalize=True/False)`` overrides the folder's choice.
- **Pooling.** Modes ``cls`` (the first token, ``[CLS]``), ``mean`` (mean of the real tokens), ``max``
  (per-feature max over the real tokens) and ``mean_sqrt_len`` (sum over the real tokens / sqrt(count));
  several enabled modes are concatenated in sentence-transformers' order (cls, max, mean, mean_sqrt_len).
  Weighted-mean and last-token pooling are refused with a ValueError. ``include_prompt`` is ignored: no
  prompt is ever prepended here.
- **Tokens.** Each text is tokenized with the tokenizer's special tokens (BERT's ``[CLS] ... [SEP]``
  post-processor), and truncated to ``max_seq_len`` tokens, special tokens included, as transformers'
  ``truncation=True`` does (the text is cut, the special tokens kept). ``max_seq_len`` is
  ``sentence_bert_config.json``'s ``max_seq_length`` if set, else the smaller of the model's
  ``max_position_embeddings`` and ``tokenizer_config.json``'s ``model_max_length``; never more than the
  model's positions. ``do_lower_case`` lowercases the texts first. Token types are the tokenizer's (all 0
  for one sentence).
- **Batches.** Texts are sorted by token count, run ``batch_size`` at a time, each batch padded to its
  longest sequence with the pad id and an attention mask (padding is never attended nor pooled); the rows
  come back in input order.

:func:`embed` is the one-call form (``qorus_jit.embed(folder_or_encoder, texts)``); :func:`embed_command`
is the body of ``qorus embed FOLDER TEXT... [--out FILE]``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_bool, check_positive
from qorus_jit.core.files import atomic_write_npy, atomic_write_text, read_json
from qorus_jit.formats.hf import CONFIG_NAME
from qorus_jit.models.bert import Bert, BertConfig
from qorus_jit.models.registry import config_from_hf, load_pretrained
from qorus_jit.tokenizers import BPE_INSTALL_HINT, BPETokenizer
from qorus_jit.tokenizers._common import check_text

#: Pooling modes, in the order sentence-transformers concatenates them when several are enabled.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len")

MODULES_FILE = "modules.json"
POOLING_FOLDER = "1_Pooling"
SBERT_CONFIG = "sentence_bert_config.json"

_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_UNSUPPORTED_KEYS = {
    "pooling_mode_weightedmean_tokens": "weighted-mean",
    "pooling_mode_lasttoken": "last-token",
}
_MODULE_KINDS = ("Transformer", "Pooling", "Normalize")
_OUT_SUFFIXES = (".npy", ".json")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f'sentence embeddings need the "tokenizers" package: {BPE_INSTALL_HINT}') from None
    return tokenizers


def _check_pooling(pooling) -> tuple[str, ...]:
    modes = (pooling,) if isinstance(pooling, str) else pooling
    try:
        modes = tuple(modes)
    except TypeError:
        raise TypeError(f"pooling: expected a mode name or a sequence of them, got {type(pooling).__name__}") from None
    if not modes:
        raise ValueError(f"pooling: expected at least one mode of {', '.join(POOLING_MODES)}")
    for m in modes:
        if m not in POOLING_MODES:
            raise ValueError(f"pooling: mode {m!r} is not supported; supported: {', '.join(POOLING_MODES)}")
    if len(set(modes)) != len(modes):
        raise ValueError(f"pooling: modes repeat in {modes!r}")
    return tuple(m for m in POOLING_MODES if m in modes)  # sentence-transformers' concatenation order


def _check_texts(texts) -> list[str]:
    """``texts`` (one str or a sequence of them) as a list of valid Unicode str (a lone surrogate refused)."""
    if isinstance(texts, str):
        return [check_text("texts", texts)]
    if isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise TypeError(f"texts: expected a str or a sequence of str, got {type(texts).__name__}")
    return [check_text(f"texts[{i}]", t) for i, t in enumerate(texts)]


class SentenceEncoder:
    """A BERT encoder, its tokenizer and a pooling: ``encode(texts) -> (n, dim)`` float32 sentence vectors.

    Usually made by :meth:`load` from a sentence-transformers folder. Direct construction: ``model`` a
    :class:`~qorus_jit.models.Bert`, ``tokenizer`` a ``tokenizers.Tokenizer`` or a
    :class:`~qorus_jit.tokenizers.BPETokenizer` (copied: its truncation and padding settings are replaced),
    ``pooling`` one mode of :data:`POOLING_MODES` or several (concatenated), ``normalize`` the default of
    :meth:`encode`, ``max_seq_len`` the truncation length (the model's positions when None), ``lowercase``
    to lowercase texts before tokenizing, ``pad_id`` the id padding is filled with (the tokenizer's padding
    id or ``[PAD]``, else the model's ``pad_token_id``; it is masked out, so it never changes a result).

    Example::

        enc = SentenceEncoder.load("path/to/all-MiniLM-L6-v2")
        vecs = enc.encode(["a cat sat on the mat", "a dog ran"])     # (2, 384), unit rows
        similarity = vecs @ vecs.T
    """

    def __init__(self, model: Bert, tokenizer, pooling="mean", normalize: bool = True,
                 max_seq_len: int | None = None, lowercase: bool = False, pad_id: int | None = None,
                 source: str | None = None):
        tk = _import_tokenizers()
        if not isinstance(model, Bert):
            raise TypeError(f"model: expected a qorus_jit.models.Bert, got {type(model).__name__}")
        if isinstance(tokenizer, BPETokenizer):
            tokenizer = tokenizer.tokenizer
        if not isinstance(tokenizer, tk.Tokenizer):
            raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer or a BPETokenizer, got "
                            f"{type(tokenizer).__name__}")
        check_bool(normalize=normalize, lowercase=lowercase)
        c: BertConfig = model.config
        if max_seq_len is None:
            max_seq_len = c.max_seq_len
        check_positive(max_seq_len=max_seq_len)
        if max_seq_len > c.max_seq_len:
            raise ValueError(f"max_seq_len: expected at most the model's {c.max_seq_len} positions, got {max_seq_len}")
        tok = tk.Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's tokenizer keeps its settings
        post = tok.post_processor
        n_special = post.num_special_tokens_to_add(False) if post is not None else 0
        if max_seq_len <= n_special:
            raise ValueError(f"max_seq_len: {max_seq_len} leaves no room for text beside the {n_special} special "
                             "tokens the tokenizer adds")
        tok.no_padding()
        tok.enable_truncation(int(max_seq_len))
        if pad_id is None:
            pad_id = _pad_id(tokenizer, c)
        if not isinstance(pad_id, (int, np.integer)) or isinstance(pad_id, bool) or not 0 <= pad_id < c.vocab_size:
            raise ValueError(f"pad_id: expected an int in [0, {c.vocab_size}), got {pad_id!r}")
        self.model = model
        self.tokenizer = tok
        self.pooling = _check_pooling(pooling)
        self.normalize = bool(normalize)
        self.max_seq_len = int(max_seq_len)
        self.lowercase = bool(lowercase)
        self.pad_id = int(pad_id)
        self.source = source

    @property
    def dim(self) -> int:
        """Width of an embedding: the model's hidden size times the number of pooling modes."""
        return self.model.config.dim * len(self.pooling)

    # -- loading

    @classmethod
    def load(cls, folder) -> SentenceEncoder:
        """Read a sentence-transformers folder (see the module docstring for its layout and the choices).

        Raises FileNotFoundError for a missing folder, ``config.json``, weights or ``tokenizer.json``, and
        ValueError for a model that is not a BertModel, a malformed or unsupported ``modules.json``,
        pooling config or ``sentence_bert_config.json``.
        """
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"folder: expected a path (str or os.PathLike), got {type(folder).__name__}")
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"folder: sentence-transformers model folder not found: {root}")
        model_dir, pooling_file, normalize = _read_modules(root)

        cfg_file = model_dir / CONFIG_NAME
        hf_config = read_json(cfg_file, "config.json")
        try:
            config = config_from_hf(hf_config)
        except ValueError as e:
            raise ValueError(f"{cfg_file}: {e}; sentence embeddings need a BertModel") from None
        if not isinstance(config, BertConfig):
            arch = ", ".join(map(str, hf_config.get("architectures") or [])) or hf_config.get("model_type")
            raise ValueError(f"{cfg_file}: the model is a {type(config).__name__.removesuffix('Config')} "
                             f"({arch}), not a BERT encoder; sentence embeddings need a BertModel")
        tokenizer = BPETokenizer.from_folder(model_dir)
        max_seq_len, lowercase = _read_sbert_config(model_dir, config)
        pooling = _read_pooling(pooling_file, config.dim)
        model = load_pretrained(model_dir)
        return cls(model, tokenizer, pooling=pooling, normalize=normalize, max_seq_len=max_seq_len,
                   lowercase=lowercase, source=str(root))

    # -- use

    def encode(self, texts, batch_size: int = 32, normalize: bool | None = None) -> np.ndarray:
        """``(n, dim)`` float32 embeddings of ``texts`` (a sequence of str; one str is one text), in input order.

        ``batch_size`` texts run through the model at a time. ``normalize``: L2-normalize each row; None
        takes the encoder's setting (the folder's: True unless its ``modules.json`` lists no Normalize).
        An empty ``texts`` gives shape ``(0, dim)``.
        """
        texts = _check_texts(texts)
        check_positive(batch_size=batch_size)
        if normalize is None:
            normalize = self.normalize
        check_bool(normalize=normalize)
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return out
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encodings], np.int64)
        if (lengths == 0).any():
            i = int(np.argmin(lengths))
            raise ValueError(f"texts[{i}]: {texts[i]!r} gives no tokens (and the tokenizer adds no special tokens)")
        order = np.argsort(-lengths, kind="stable")  # longest first: batches of similar lengths, little padding
        c = self.model.config
        for start in range(0, n, int(batch_size)):
            idx = order[start:start + int(batch_size)]
            T = int(lengths[idx[0]])
            ids = np.full((len(idx), T), self.pad_id, np.int64)
            types = np.zeros((len(idx), T), np.int64)
            mask = np.zeros((len(idx), T), np.uint8)
            for r, i in enumerate(idx):
                e, L = encodings[i], int(lengths[i])
                ids[r, :L] = e.ids
                types[r, :L] = e.type_ids
                mask[r, :L] = 1
            for name, arr, high in (("token id", ids, c.vocab_size), ("token type", types, c.type_vocab_size)):
                bad = np.argwhere(arr >= high)
                if bad.size:
                    r = int(bad[0][0])
                    raise ValueError(f"texts[{int(idx[r])}]: the tokenizer gives {name} {int(arr[tuple(bad[0])])}, "
                                     f"but the model has {high}; the tokenizer does not match the model")
            hidden = self.model.forward(ids, mask, types)
            out[idx] = self._pool(hidden, mask)
        if normalize:
            norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
            out = (out / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled ``(B, dim)`` vectors of ``hidden (B, T, d)`` over the real tokens of ``mask (B, T)``."""
        m = mask.astype(bool)[..., None]
        parts = []
        counts = mask.sum(axis=1, dtype=np.float64)[:, None]
        sums = None
        for mode in self.pooling:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(np.where(m, hidden, -np.inf).max(axis=1))
            else:
                if sums is None:
                    sums = np.where(m, hidden, 0.0).sum(axis=1, dtype=np.float64)
                parts.append(sums / (counts if mode == "mean" else np.sqrt(counts)))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def __repr__(self) -> str:
        c = self.model.config
        return (f"SentenceEncoder(dim={self.dim}, layers={c.n_layers}, pooling={'+'.join(self.pooling)}, "
                f"normalize={self.normalize}, max_seq_len={self.max_seq_len}, source={self.source!r})")


def _pad_id(tokenizer, config: BertConfig) -> int:
    padding = tokenizer.padding
    if padding and isinstance(padding.get("pad_id"), int) and 0 <= padding["pad_id"] < config.vocab_size:
        return padding["pad_id"]
    pad = tokenizer.token_to_id("[PAD]")
    if pad is not None and pad < config.vocab_size:
        return int(pad)
    return config.pad_token_id


def _inside(root: Path, rel, what: str) -> Path:
    """``root / rel`` for a relative path ``rel`` that stays inside ``root``."""
    if not isinstance(rel, str) or Path(rel).is_absolute():
        raise ValueError(f"{root / MODULES_FILE}: {what} path {rel!r} is not a relative path inside the folder")
    p = (root / rel).resolve()
    if p != root.resolve() and root.resolve() not in p.parents:
        raise ValueError(f"{root / MODULES_FILE}: {what} path {rel!r} leads out of the folder")
    return root / rel


def _read_modules(root: Path) -> tuple[Path, Path | None, bool]:
    """``(model folder, pooling config file or None for mean, normalize)`` of a sentence-transformers folder."""
    file = root / MODULES_FILE
    if not file.exists():
        pooling = root / POOLING_FOLDER / CONFIG_NAME
        return root, (pooling if pooling.is_file() else None), True
    modules = read_json(file, MODULES_FILE)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{file}: expected a JSON list of module objects")
    if all(isinstance(m.get("idx"), int) for m in modules):
        modules = sorted(modules, key=lambda m: m["idx"])
    kinds = []
    for m in modules:
        kind = m.get("type")
        if not isinstance(kind, str):
            raise ValueError(f"{file}: module {m!r} has no 'type' string")
        kind = kind.rsplit(".", 1)[-1]
        if kind not in _MODULE_KINDS:
            raise ValueError(f"{file}: module {m.get('type')!r} (path {m.get('path')!r}) is not supported; "
                             f"supported: {', '.join(_MODULE_KINDS)}")
        kinds.append(kind)
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(f"{file}: expected the modules Transformer, Pooling and optionally Normalize, in that "
                         f"order; got {', '.join(kinds) or 'none'}")
    model_dir = _inside(root, modules[0].get("path", ""), "Transformer")
    pooling_dir = _inside(root, modules[1].get("path", POOLING_FOLDER), "Pooling")
    pooling = pooling_dir / CONFIG_NAME
    if not pooling.is_file():
        raise FileNotFoundError(f"{file} lists a Pooling module, but its config {pooling} is not found")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{file}: the Transformer module's folder {model_dir} is not found")
    return model_dir, pooling, len(kinds) == 3


def _read_sbert_config(model_dir: Path, config: BertConfig) -> tuple[int, bool]:
    """``(max_seq_len, lowercase)`` from ``sentence_bert_config.json`` (and ``tokenizer_config.json``)."""
    limit, lowercase, file = None, False, model_dir / SBERT_CONFIG
    if file.exists():
        cfg = read_json(file, SBERT_CONFIG)
        if not isinstance(cfg, dict):
            raise ValueError(f"{file}: expected a JSON object")
        limit = cfg.get("max_seq_length")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"{file}: max_seq_length: expected a positive int or null, got {limit!r}")
        lowercase = cfg.get("do_lower_case", False)
        if not isinstance(lowercase, bool):
            raise ValueError(f"{file}: do_lower_case: expected true or false, got {lowercase!r}")
    if limit is None:
        tok_cfg = model_dir / "tokenizer_config.json"
        try:
            m = read_json(tok_cfg, "tokenizer_config.json").get("model_max_length") if tok_cfg.is_file() else None
        except (ValueError, AttributeError):
            m = None
        if isinstance(m, int) and not isinstance(m, bool) and m >= 1:
            limit = m
    return min(limit or config.max_seq_len, config.max_seq_len), lowercase


def _read_pooling(file: Path | None, dim: int) -> tuple[str, ...]:
    """The pooling modes of a sentence-transformers ``1_Pooling/config.json`` (mean when there is none)."""
    if file is None:
        return ("mean",)
    cfg = read_json(file, "pooling config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: expected a JSON object of pooling settings")
    width = cfg.get("word_embedding_dimension", dim)
    if width != dim:
        raise ValueError(f"{file}: word_embedding_dimension is {width!r}, but the model's hidden size is {dim}")
    modes = []
    for key, value in cfg.items():
        if not key.startswith("pooling_mode_"):
            continue
        if not isinstance(value, bool):
            raise ValueError(f"{file}: {key}: expected true or false, got {value!r}")
        if not value:
            continue
        if key in _POOLING_KEYS:
            modes.append(_POOLING_KEYS[key])
        else:
            what = _UNSUPPORTED_KEYS.get(key, key)
            raise ValueError(f"{file}: {what} pooling is not supported; supported: {', '.join(POOLING_MODES)} "
                             f"({', '.join(_POOLING_KEYS)})")
    if not modes:
        raise ValueError(f"{file}: no pooling mode is enabled; set one of {', '.join(_POOLING_KEYS)} to true")
    return _check_pooling(modes)


# ------------------------------------------------------------------------------------------ one call, CLI


def embed(model_or_folder, texts, **kw) -> np.ndarray:
    """``(n, dim)`` float32 embeddings of ``texts`` with a :class:`SentenceEncoder` or the folder of one.

    ``kw`` goes to :meth:`SentenceEncoder.encode` (``batch_size``, ``normalize``). A folder is loaded on
    every call: to embed repeatedly, load it once with :meth:`SentenceEncoder.load`.
    """
    if isinstance(model_or_folder, SentenceEncoder):
        encoder = model_or_folder
    elif isinstance(model_or_folder, (str, os.PathLike)):
        encoder = SentenceEncoder.load(model_or_folder)
    else:
        raise TypeError("model_or_folder: expected a SentenceEncoder or the path of a sentence-transformers "
                        f"folder, got {type(model_or_folder).__name__}")
    return encoder.encode(texts, **kw)


def _json_rows(emb: np.ndarray, digits: int | None) -> list[list[float]]:
    if digits is None:  # the shortest decimal that reads back as the same float32
        return [[float(str(v)) for v in row] for row in emb]
    return [[float(f"{v:.{digits}g}") for v in row] for row in emb.tolist()]


def embed_command(folder, texts, out=None) -> np.ndarray:
    """``qorus embed FOLDER TEXT... [--out FILE]``: embed ``texts`` with the model of ``folder``.

    Without ``out``, prints the embeddings to stdout as one JSON list of lists, each value rounded to 7
    significant digits (float32 keeps about 7). With ``out``, writes ``.npy`` (``np.save``, no pickle) or
    ``.json`` (the full float32 values: they read back exactly) by its suffix, atomically, and prints a
    one-line note to stderr. Returns the embeddings. The output file is checked before the model is
    loaded: another suffix raises ValueError, a missing folder FileNotFoundError.
    """
    path = None
    if out is not None:
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"out: expected a file path, got {type(out).__name__}")
        path = Path(out)
        if path.suffix.lower() not in _OUT_SUFFIXES:
            raise ValueError(f"out: expected a file ending in {' or '.join(_OUT_SUFFIXES)}, got {str(path)!r}")
        if path.is_dir():
            raise IsADirectoryError(f"out: {path} is a folder; expected a file ending in .npy or .json")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"out: the folder {path.parent} does not exist")
    emb = embed(folder, texts)
    if path is None:
        sys.stdout.write(json.dumps(_json_rows(emb, 7), allow_nan=False) + "\n")
        sys.stdout.flush()
    elif path.suffix.lower() == ".npy":
        atomic_write_npy(path, emb)
    else:
        atomic_write_text(path, json.dumps(_json_rows(emb, None), allow_nan=False) + "\n")
    if path is not None:
        sys.stderr.write(f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {path}\n")
    return emb


__all__ = ["POOLING_MODES", "SentenceEncoder", "embed", "embed_command"]
