"""BPE and other tokenizers of the Hugging Face ``tokenizers`` package (an optional dependency,
``pip install "qorus-jit[bpe]"``): byte-level BPE trained here, or any ``tokenizer.json``."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_bool, check_nonnegative, check_positive
from qorus_jit.core.files import atomic_write_text, check_file, check_path, read_json
from qorus_jit.tokenizers._common import TOKENIZER_FILE, check_text, ids_array, save_json
from qorus_jit.tokenizers.chat import (
    SPECIAL_TOKEN_NAMES,
    TOKENIZER_CONFIG_FILE,
    assistant_spans,
    chat_config,
    check_messages,
    default_template,
    read_chat_config,
    render,
)

BPE_INSTALL_HINT = 'pip install "qorus-jit[bpe]"'


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f'BPETokenizer needs the "tokenizers" package: {BPE_INSTALL_HINT}') from None
    return tokenizers


# Split points for encoding a long text in pieces: just after a lone "\n" that has a non-space character on
# either side. For a byte-level pre-tokenizer (GPT-2's regex, no normalizer, no prefix space) the "\n" is a
# pre-token of its own there, so encoding the pieces gives exactly the ids of the whole text.
_SPLIT = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 20  # about 1 MB of text per piece
_BATCH_CHUNKS = 16      # pieces per encode_batch call


class BPETokenizer:
    """A tokenizer of the Hugging Face ``tokenizers`` package: byte-level BPE trained here, or any ``tokenizer.json``.

    ``encode(text) -> (n,) int32`` (no special tokens added), ``decode(ids) -> str``. The tokenizers that
    :meth:`train` makes are byte-level, so every text round-trips. :meth:`load` reads a ``tokenizer.json``
    file, :meth:`from_folder` the one of a Hugging Face model folder (GPT-2's BPE, Llama's, BERT's WordPiece:
    whatever the ``tokenizers`` package reads; their round trip is the library's). Needs the optional
    ``tokenizers`` package (``pip install "qorus-jit[bpe]"``).

    A tokenizer read from a ``tokenizer.json`` beside a ``tokenizer_config.json`` / ``chat_template.jinja``
    (a Hugging Face folder, a run folder) keeps their chat template (:attr:`chat_template`, None when there is
    none) and named special tokens (:attr:`special_tokens`, e.g. ``{"eos_token": "<|im_end|>"}``);
    :meth:`apply_chat_template` renders a conversation with them as transformers does, and :meth:`save`
    writes them back beside the ``tokenizer.json``.

    Example::

        >>> tok = BPETokenizer.train(["the cat sat on the mat. " * 50], vocab_size=300)
        >>> ids = tok.encode("the cat sat")
        >>> tok.decode(ids)
        'the cat sat'
        >>> len(ids) < len("the cat sat")
        True
    """

    name = "bpe"

    def __init__(self, tokenizer, source: str | None = None, chat_template: str | dict[str, str] | None = None,
                 special_tokens: dict[str, str] | None = None):
        tk = _import_tokenizers()
        if not isinstance(tokenizer, tk.Tokenizer):
            raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        if chat_template is not None and not (isinstance(chat_template, str) or (isinstance(chat_template, dict)
                                              and all(isinstance(v, str) for v in chat_template.values()))):
            raise TypeError(f"chat_template: expected a str, a dict name -> str or None, "
                            f"got {type(chat_template).__name__}")
        special = dict(special_tokens or {})
        for k, v in special.items():
            if k not in SPECIAL_TOKEN_NAMES or not isinstance(v, str):
                raise ValueError(f"special_tokens: expected names among {', '.join(SPECIAL_TOKEN_NAMES)} with str "
                                 f"values, got {k!r}: {v!r}")
        self._tok = tokenizer
        self.source = source
        #: The Jinja chat template (a dict name -> template when there are several), or None.
        self.chat_template = chat_template
        #: The named special tokens a chat template sees (``bos_token``, ``eos_token``, ...), as strings.
        self.special_tokens = special
        self._json = tokenizer.to_str()
        self._chunkable = _is_chunkable(json.loads(self._json))

    # -- construction

    @classmethod
    def train(cls, texts_or_files, vocab_size: int, min_frequency: int = 2,
              special_tokens: Iterable[str] = ()) -> BPETokenizer:
        """Train byte-level BPE (GPT-2 style: the 256 bytes, then merges) so that any text round-trips.

        ``texts_or_files``: one item or an iterable of items; a ``str`` is text, an ``os.PathLike``
        (``pathlib.Path``) is a UTF-8 text file. ``vocab_size`` (>= 256 + the special tokens) bounds the
        vocabulary (a small corpus may give fewer merges); pairs seen fewer than ``min_frequency`` times
        are not merged. ``special_tokens`` (e.g. ``["<|endoftext|>"]``) take the first ids. Deterministic.
        """
        tk = _import_tokenizers()
        special = list(special_tokens) if not isinstance(special_tokens, str) else [special_tokens]
        for s in special:
            if not isinstance(s, str) or not s:
                raise TypeError(f"special_tokens: expected non-empty strings, got {s!r}")
        check_positive(vocab_size=vocab_size)
        if vocab_size < 256 + len(special):
            raise ValueError(f"vocab_size: expected at least {256 + len(special)} (the 256 bytes"
                             f"{' and the special tokens' if special else ''}), got {vocab_size}")
        check_nonnegative(min_frequency=min_frequency)
        items = [texts_or_files] if isinstance(texts_or_files, (str, os.PathLike)) else texts_or_files
        try:
            items = list(items)
        except TypeError:
            raise TypeError("texts_or_files: expected a str, a path or an iterable of them, "
                            f"got {type(texts_or_files).__name__}") from None
        if not items:
            raise ValueError("texts_or_files: expected at least one text or file, got none")
        for i, item in enumerate(items):
            if isinstance(item, os.PathLike):
                check_file(f"texts_or_files[{i}]", item)
            elif not isinstance(item, str):
                raise TypeError(f"texts_or_files[{i}]: expected a str (text) or a pathlib.Path (file), "
                                f"got {type(item).__name__}")

        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=special,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_iter_texts(items), trainer=trainer)
        return cls(tok, source="trained")

    @classmethod
    def load(cls, path) -> BPETokenizer:
        """Read a ``tokenizer.json`` file (a folder is read as :meth:`from_folder`), with the chat template and
        special tokens of the ``tokenizer_config.json`` / ``chat_template.jinja`` beside it when it is named
        ``tokenizer.json``."""
        p = check_path("path", path)
        if p.is_dir():
            return cls.from_folder(p)
        if not p.is_file():
            raise FileNotFoundError(f"path: tokenizer file not found: {p}")
        tk = _import_tokenizers()
        try:
            tok = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # the Rust side raises a bare Exception for bad JSON or an unknown model
            raise ValueError(f"{p}: not a tokenizer.json the tokenizers package can read ({e})") from None
        template, special = read_chat_config(p.parent) if p.name == TOKENIZER_FILE else (None, {})
        return cls(tok, source=str(p), chat_template=template, special_tokens=special)

    @classmethod
    def from_folder(cls, folder) -> BPETokenizer:
        """Read the ``tokenizer.json`` of a Hugging Face model folder."""
        f = check_path("folder", folder)
        if not f.is_dir():
            raise FileNotFoundError(f"folder: model folder not found: {f}")
        file = f / TOKENIZER_FILE
        if not file.is_file():
            slow = [n for n in ("vocab.json", "merges.txt", "tokenizer.model", "vocab.txt") if (f / n).exists()]
            hint = ""
            if slow:
                hint = (f" (it holds {', '.join(slow)}: a slow tokenizer's files; convert them once with "
                        "transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder), "
                        f"which writes {TOKENIZER_FILE})")
            raise FileNotFoundError(f"folder: no {TOKENIZER_FILE} in {f}{hint}")
        return cls.load(file)

    # -- use

    @property
    def vocab_size(self) -> int:
        """Number of ids, added and special tokens included: every id is in ``[0, vocab_size)``."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def tokenizer(self):
        """The wrapped ``tokenizers.Tokenizer`` (read it, do not modify it: its JSON is taken once, when wrapped)."""
        return self._tok

    def encode(self, text: str) -> np.ndarray:
        """``(n,)`` int32 ids of ``text``, without special tokens added.

        A long text is encoded in pieces (in parallel) when that gives the same ids as one call: for
        byte-level tokenizers, split after a lone newline; otherwise in one call.
        """
        return self._encode(check_text("text", text), _CHUNK_CHARS)

    def _encode(self, text: str, chunk_chars: int) -> np.ndarray:
        if not self._chunkable or len(text) <= 2 * chunk_chars:
            return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)
        pieces, out, start = [], [], 0
        while start < len(text):
            m = _SPLIT.search(text, start + chunk_chars) if start + chunk_chars < len(text) else None
            end = m.start() if m else len(text)
            pieces.append(text[start:end])
            start = end
            if len(pieces) == _BATCH_CHUNKS or start >= len(text):
                for enc in self._tok.encode_batch(pieces, add_special_tokens=False):
                    out.append(np.asarray(enc.ids, dtype=np.int32))
                pieces = []
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of ``(n,)`` ids in ``[0, vocab_size)`` (special tokens kept unless ``skip_special_tokens``)."""
        check_bool(skip_special_tokens=skip_special_tokens)
        arr = ids_array("ids", ids, self.vocab_size)
        return self._tok.decode(arr.tolist(), skip_special_tokens=bool(skip_special_tokens))

    def to_json(self) -> str:
        """The ``tokenizer.json`` text."""
        return self._json

    def save(self, path) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file, or a folder to write ``tokenizer.json`` in); returns it.
        A chat template or special tokens go into the ``tokenizer_config.json`` beside it (merged into one that
        is there), where :meth:`load` and transformers find them."""
        out = save_json(path, self._json)
        entries = self.tokenizer_config()
        if entries and out.name == TOKENIZER_FILE:
            cfg_file = out.parent / TOKENIZER_CONFIG_FILE
            old = read_json(cfg_file, TOKENIZER_CONFIG_FILE) if cfg_file.is_file() else {}
            merged = {**(old if isinstance(old, dict) else {}), **entries}
            atomic_write_text(cfg_file, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
        return out

    def tokenizer_config(self) -> dict:
        """The ``tokenizer_config.json`` entries of the chat template and special tokens (empty without them)."""
        return chat_config(self.chat_template, self.special_tokens)

    # -- chat

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False):
        """``messages`` (a list of ``{"role", "content"}``) rendered with :attr:`chat_template` as transformers'
        ``apply_chat_template`` renders them: the text, or with ``tokenize`` its ``(n,)`` int32 ids (no special
        tokens added beyond the template's). Needs ``jinja2`` (``pip install "qorus-jit[chat]"``)."""
        check_bool(add_generation_prompt=add_generation_prompt, tokenize=tokenize)
        text = render(self._template(), check_messages("messages", messages, need_assistant=False), self.special_tokens,
                      add_generation_prompt)
        return self.encode(text) if tokenize else text

    def encode_chat(self, messages) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, assistant)`` of a conversation: the ``(n,)`` int32 ids of its rendered text (those of
        ``apply_chat_template(messages, tokenize=True)``) and an ``(n,)`` bool mask, True for the tokens of
        assistant messages (their text and what the template puts after each, e.g. the end-of-turn token: a
        token overlapping such a span counts, as in transformers' ``return_assistant_tokens_mask``).
        ``messages`` must hold an assistant message; a template that raises is a ValueError."""
        msgs = check_messages("messages", messages)
        text, spans = assistant_spans(self._template(), msgs, self.special_tokens)
        enc = self._tok.encode(check_text("text", text), add_special_tokens=False)
        ids = np.asarray(enc.ids, dtype=np.int32)
        mask = np.zeros(len(ids), dtype=bool)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        for start, end in spans:
            mask |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
        return ids, mask

    def _template(self) -> str:
        if self.chat_template is None:
            raise ValueError("chat_template: this tokenizer has no chat template (a Hugging Face folder keeps it in "
                             "tokenizer_config.json or chat_template.jinja)")
        return default_template(self.chat_template)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the ``tokenizer.json`` text: equal fingerprints encode text identically."""
        return hashlib.sha256(self._json.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def _is_chunkable(spec: dict) -> bool:
    """Whether splitting after a lone newline leaves the ids unchanged (see ``_SPLIT``)."""
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    if spec.get("normalizer") is not None or model.get("dropout"):
        return False
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space", True):
        return False
    for t in spec.get("added_tokens") or []:
        if "\n" in t.get("content", "") or t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            return False
    return True


def _iter_texts(items) -> Iterator[str]:
    for item in items:
        if isinstance(item, str):
            yield item
            continue
        with open(item, encoding="utf-8") as f:  # pieces of about 1 MB of whole lines
            block, size = [], 0
            for line in f:
                block.append(line)
                size += len(line)
                if size >= _CHUNK_CHARS:
                    yield "".join(block)
                    block, size = [], 0
            if block:
                yield "".join(block)
