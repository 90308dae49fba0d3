"""Tokenizers and datasets for training: pure NumPy and Python, deterministic and exactly resumable.

Tokenizers turn text into 1-D int32 token ids and back:

- :class:`ByteTokenizer`: the 256 UTF-8 byte values, nothing to train, every text round-trips.
- :class:`BPETokenizer`: a ``tokenizer.json`` of the Hugging Face ``tokenizers`` package (an optional
  dependency, ``pip install "qorus-jit[bpe]"``): trained here as byte-level BPE, or read from a file or a
  Hugging Face model folder.
- :func:`load_tokenizer` opens either from a spec: ``"byte"``, a ``tokenizer.json`` or a folder holding one.

Datasets hand out C-contiguous mini-batches:

- :class:`TextDataset`: next-token windows ``(x, y)`` of shape ``(B, T)`` from one token stream, random
  training windows and a fixed set of held-out validation windows; token files are memory-mapped ``.npy``.
- :class:`ArrayDataset`: shuffled epochs of ``(X, y)`` arrays; :func:`train_test_split` splits them.

Every stateful object has ``state_dict()`` (plain JSON types) and ``load_state_dict(d)``: after loading,
the batches continue exactly as an uninterrupted run would. Nothing is pickled: ``.npy`` files are read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_bool, check_int, check_nonnegative, check_positive, check_real
from qorus_jit.core.files import atomic_write_npy, atomic_write_text

TOKENIZER_FILE = "tokenizer.json"
BPE_INSTALL_HINT = 'pip install "qorus-jit[bpe]"'

#: Token count above which :meth:`TextDataset.from_text_file` writes the ids to a memory-mapped ``.npy``.
MMAP_THRESHOLD = 4_000_000

_BYTE_FORMAT = "qorus-byte-tokenizer"


# ------------------------------------------------------------------------------------------------ helpers


def _plain(obj):
    """``obj`` with NumPy scalars turned into Python ones (recursively), so that ``json.dumps`` takes it."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    return obj


def _state_get(state, key: str, what: str):
    if not isinstance(state, dict):
        raise TypeError(f"state: expected the dict of {what}.state_dict(), got {type(state).__name__}")
    if key not in state:
        raise ValueError(f"state: missing key {key!r} (expected the dict of {what}.state_dict())")
    return state[key]


def _state_int(state, key: str, what: str, low: int = 0) -> int:
    v = _state_get(state, key, what)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"state[{key!r}]: expected an int >= {low}, got {v!r}")
    return v


def _set_rng_state(rng: np.random.Generator, state) -> None:
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"state['rng']: not a valid {type(rng.bit_generator).__name__} state ({e})") from None


def _check_path(name: str, path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def _check_file(name: str, path) -> Path:
    p = _check_path(name, path)
    if p.is_dir():
        raise IsADirectoryError(f"{name}: expected a file, got the directory {p}")
    if not p.is_file():
        raise FileNotFoundError(f"{name}: file not found: {p}")
    return p


def _ids_array(name: str, ids, high: int) -> np.ndarray:
    """``ids`` (a sequence or array of ints) as a 1-D int64 array, each in ``[0, high)``."""
    if isinstance(ids, np.ndarray):
        arr = ids
    else:
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"{name}: expected a 1-D sequence or array of int token ids, got {type(ids).__name__}")
        try:
            arr = np.asarray(list(ids))
        except TypeError:
            raise TypeError(f"{name}: expected a 1-D sequence or array of int token ids, "
                            f"got {type(ids).__name__}") from None
        if arr.size == 0:
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer token ids, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= high:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name}: expected token ids in [0, {high}), got {bad}")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """The 256 byte values of UTF-8: token id = byte. Nothing to train; every text round-trips.

    ``encode(text) -> (n,) int32`` with ``n = len(text.encode("utf-8"))``; ``decode(ids) -> str`` decodes
    with ``errors="replace"``, so any byte sequence decodes (invalid bytes become U+FFFD).

    Example::

        >>> tok = ByteTokenizer()
        >>> ids = tok.encode("héllo")
        >>> ids.tolist()
        [104, 195, 169, 108, 108, 111]
        >>> tok.decode(ids)
        'héllo'
    """

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """``(n,)`` int32 ids: the UTF-8 bytes of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text: expected valid Unicode, got a lone surrogate at index {e.start}") from None
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """The text of ``(n,)`` ids in ``[0, 256)``; invalid UTF-8 becomes U+FFFD."""
        arr = _ids_array("ids", ids, 256)
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The JSON form :meth:`save` writes and :func:`load_tokenizer` reads."""
        return json.dumps({"format": _BYTE_FORMAT, "name": self.name, "vocab_size": self.vocab_size}) + "\n"

    def save(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` (a file, or ``path/tokenizer.json`` for a folder); returns the file."""
        return _save_json(path, self.to_json())

    @property
    def fingerprint(self) -> str:
        """SHA-256 of :meth:`to_json`: equal fingerprints encode text identically (used for cache names)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def __repr__(self) -> str:
        return "ByteTokenizer()"

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(ByteTokenizer)


def _save_json(path, text: str) -> Path:
    p = _check_path("path", path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, text)
    return p


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

    Example::

        >>> tok = BPETokenizer.train(["the cat sat on the mat. " * 50], vocab_size=300)
        >>> ids = tok.encode("the cat sat")
        >>> tok.decode(ids)
        'the cat sat'
        >>> len(ids) < len("the cat sat")
        True
    """

    name = "bpe"

    def __init__(self, tokenizer, source: str | None = None):
        tk = _import_tokenizers()
        if not isinstance(tokenizer, tk.Tokenizer):
            raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._tok = tokenizer
        self.source = source
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
                _check_file(f"texts_or_files[{i}]", item)
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
        """Read a ``tokenizer.json`` file (a folder is read as :meth:`from_folder`)."""
        p = _check_path("path", path)
        if p.is_dir():
            return cls.from_folder(p)
        if not p.is_file():
            raise FileNotFoundError(f"path: tokenizer file not found: {p}")
        tk = _import_tokenizers()
        try:
            tok = tk.Tokenizer.from_file(str(p))
        except Exception as e:  # the Rust side raises a bare Exception for bad JSON or an unknown model
            raise ValueError(f"{p}: not a tokenizer.json the tokenizers package can read ({e})") from None
        return cls(tok, source=str(p))

    @classmethod
    def from_folder(cls, folder) -> BPETokenizer:
        """Read the ``tokenizer.json`` of a Hugging Face model folder."""
        f = _check_path("folder", folder)
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
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return self._encode(text, _CHUNK_CHARS)

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
        arr = _ids_array("ids", ids, self.vocab_size)
        return self._tok.decode(arr.tolist(), skip_special_tokens=bool(skip_special_tokens))

    def to_json(self) -> str:
        """The ``tokenizer.json`` text."""
        return self._json

    def save(self, path) -> Path:
        """Write ``tokenizer.json`` (``path`` is the file, or a folder to write ``tokenizer.json`` in); returns it."""
        return _save_json(path, self._json)

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


def load_tokenizer(spec):
    """The tokenizer of ``spec``: ``"byte"``, a tokenizer object (returned as is), a tokenizer JSON file
    (written by either tokenizer's ``save``, or any ``tokenizer.json``), a folder holding ``tokenizer.json``,
    or llama2.c's ``tokenizer.bin`` (a ``.bin`` file: :class:`~qorus_jit.formats.llama2c.Llama2cTokenizer`).
    """
    if isinstance(spec, (ByteTokenizer, BPETokenizer)) or getattr(spec, "name", None) == "llama2c":
        return spec
    if isinstance(spec, (str, os.PathLike)) and Path(spec).suffix == ".bin":
        from qorus_jit.formats.llama2c import Llama2cTokenizer

        return Llama2cTokenizer.load(spec)
    if isinstance(spec, str) and spec == "byte":
        return ByteTokenizer()
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec: expected 'byte', a tokenizer.json path or a folder, got {type(spec).__name__}")
    p = Path(spec)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        what = f"no {TOKENIZER_FILE} in the folder {p}" if p.is_dir() else f"no such file or folder: {p}"
        raise FileNotFoundError(f"spec: expected 'byte', a tokenizer.json file or a folder holding one; {what}")
    try:
        head = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if isinstance(head, dict) and head.get("format") == _BYTE_FORMAT:
        if head.get("vocab_size") != 256:
            raise ValueError(f"{file}: a byte tokenizer has vocab_size 256, got {head.get('vocab_size')!r}")
        return ByteTokenizer()
    return BPETokenizer.load(file)


# ----------------------------------------------------------------------------------------------- corpora


def default_corpus() -> tuple[str, str]:
    """``(name, text)`` of a corpus every Python installation carries: the documentation topics of the
    standard library (``pydoc_data.topics.topics``, the text behind ``help("for")``), joined in sorted
    topic order with a blank line between topics. About half a megabyte of English prose and code.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise ImportError("default_corpus: this Python installation lacks pydoc_data (the standard library's "
                          "documentation topics); pass a text file instead") from None
    text = "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"
    return "pydoc_data.topics", text


# --------------------------------------------------------------------------------------------- TextDataset


class TextDataset:
    """Next-token windows of one token stream: random training batches and fixed validation batches.

    ``tokens``: ``(n,)`` integer ids (any integer dtype, in memory or a memory-mapped ``.npy``). The last
    ``val_fraction`` of them (rounded down) is held out for validation; each part must hold at least one
    window of ``seq_len + 1`` tokens. A window ``w`` of ``seq_len + 1`` consecutive tokens gives
    ``x = w[:-1]`` and ``y = w[1:]`` (the next token of each position); windows never cross the boundary.

    - :meth:`train_batch` draws windows uniformly at random from the training part with the dataset's
      own ``np.random.default_rng(seed)``.
    - :meth:`val_batches` returns the same evenly spaced validation windows on every call.
    - :meth:`state_dict` / :meth:`load_state_dict` save and restore the random state.

    Example::

        >>> ds = TextDataset(np.arange(1000) % 50, seq_len=8, val_fraction=0.1, seed=0)
        >>> x, y = ds.train_batch(4)
        >>> x.shape, x.dtype, bool((y[:, :-1] == x[:, 1:]).all())
        ((4, 8), dtype('int32'), True)
        >>> len(ds.val_batches(batch_size=2, n_batches=3))
        3
    """

    def __init__(self, tokens, seq_len: int, val_fraction: float = 0.1, seed: int = 0, *,
                 vocab_size: int | None = None):
        if not isinstance(tokens, np.ndarray):
            raise TypeError(f"tokens: expected a 1-D numpy array of integer ids, got {type(tokens).__name__}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens: expected a 1-D array of shape (n,), got shape {tokens.shape}")
        if tokens.dtype.kind not in "iu":
            raise TypeError(f"tokens: expected an integer dtype, got {tokens.dtype}")
        check_positive(seq_len=seq_len)
        check_real("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int(seed=seed)
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        if vocab_size is not None:
            check_positive(vocab_size=vocab_size)
        n = int(tokens.shape[0])
        n_val = int(n * float(val_fraction))
        n_train = n - n_val
        need = int(seq_len) + 1
        if n_train < need or n_val < need:
            raise ValueError(
                f"tokens: {n} tokens split by val_fraction={val_fraction} into {n_train} train and {n_val} "
                f"validation tokens; each part needs at least seq_len + 1 = {need} (use more text, a smaller "
                "seq_len or another val_fraction)")
        _check_token_range(tokens, vocab_size)
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.n_train = n_train
        self.n_val = n_val
        self.batches_drawn = 0
        self.source: dict = {}
        self._rng = np.random.default_rng(self.seed)
        self._offsets = np.arange(need, dtype=np.int64)

    # -- constructors

    @classmethod
    def from_text_file(cls, path, tokenizer, seq_len: int, val_fraction: float = 0.1, seed: int = 0, *,
                       cache_dir=None, mmap_threshold: int | None = MMAP_THRESHOLD) -> TextDataset:
        """Tokenize a UTF-8 text file into a dataset.

        ``tokenizer``: a tokenizer or a :func:`load_tokenizer` spec. When ``cache_dir`` is given, or the text
        has more than ``mmap_threshold`` tokens (``None``: never), the ids are written atomically to a
        ``.npy`` (uint16 for a vocabulary of at most 65536 ids, else int32) named after the file, the
        tokenizer and a hash of both, and memory-mapped from there; a later call with the same file and
        tokenizer reuses it without tokenizing. Without ``cache_dir`` the folder is ``$QORUS_CACHE_DIR``,
        else ``$XDG_CACHE_HOME/qorus_jit/tokens``, else ``~/.cache/qorus_jit/tokens``.
        """
        p = _check_file("path", path)
        tok = load_tokenizer(tokenizer)
        check_positive(seq_len=seq_len)
        if mmap_threshold is not None:
            check_nonnegative(mmap_threshold=mmap_threshold)
        folder = _check_path("cache_dir", cache_dir) if cache_dir is not None else _default_cache_dir()
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"cache_dir: expected a folder, got the file {folder}")
        raw = p.read_bytes()
        if not raw:
            raise ValueError(f"path: the text file {p} is empty")
        key = hashlib.sha256(hashlib.sha256(raw).digest() + tok.fingerprint.encode()).hexdigest()[:16]
        cache = folder / f"{p.stem}.{tok.name}.{key}.npy"
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
        ids = _open_cached(cache, dtype)
        if ids is None:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"path: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
            del raw
            ids = tok.encode(text)
            del text
            if len(ids) == 0:
                raise ValueError(f"path: the text file {p} holds no tokens")
            if cache_dir is not None or (mmap_threshold is not None and len(ids) > mmap_threshold):
                arr = ids.astype(dtype)
                cache.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_npy(cache, arr)
                del arr, ids
                ids = np.load(cache, mmap_mode="r", allow_pickle=False)
        try:
            ds = cls(ids, seq_len, val_fraction, seed, vocab_size=tok.vocab_size)
        except ValueError as e:
            raise ValueError(f"path: {p} is too short for this dataset: {e}") from None
        ds.source = {"text_file": str(p), "tokenizer": tok.name, "tokenizer_sha256": tok.fingerprint,
                     "tokens_file": str(cache) if isinstance(ids, np.memmap) else None}
        return ds

    @classmethod
    def from_tokens_file(cls, path, seq_len: int, val_fraction: float = 0.1, seed: int = 0, *,
                         vocab_size: int | None = None) -> TextDataset:
        """Memory-map a ``.npy`` of 1-D integer token ids (as :meth:`from_text_file` writes) into a dataset."""
        p = _check_file("path", path)
        try:
            ids = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"path: {p} is not a readable .npy file of token ids ({e})") from None
        if not isinstance(ids, np.ndarray):
            raise ValueError(f"path: {p} holds a .npz archive, expected a .npy of token ids")
        ds = cls(ids, seq_len, val_fraction, seed, vocab_size=vocab_size)
        ds.source = {"tokens_file": str(p)}
        return ds

    # -- batches

    @property
    def n_tokens(self) -> int:
        return self.n_train + self.n_val

    @property
    def n_val_windows(self) -> int:
        """Number of distinct validation windows (start positions) the validation part holds."""
        return self.n_val - self.seq_len

    def _gather(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        win = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int32)
        return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])

    def train_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``, each ``(batch_size, seq_len)`` C-contiguous int32, from random training windows."""
        check_positive(batch_size=batch_size)
        starts = self._rng.integers(0, self.n_train - self.seq_len, size=int(batch_size), dtype=np.int64)
        self.batches_drawn += 1
        return self._gather(starts)

    def val_batches(self, batch_size: int, n_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``n_batches`` batches ``(x, y)`` of ``(batch_size, seq_len)`` int32: the same on every call.

        The ``batch_size * n_batches`` windows are evenly spaced over the validation part (disjoint when
        they fit, overlapping otherwise); at most :attr:`n_val_windows` distinct windows exist.
        """
        check_positive(batch_size=batch_size, n_batches=n_batches)
        total = int(batch_size) * int(n_batches)
        if total > self.n_val_windows:
            raise ValueError(
                f"batch_size * n_batches: expected at most {self.n_val_windows} windows (the validation part "
                f"holds {self.n_val} tokens, so {self.n_val_windows} windows of seq_len + 1 = {self.seq_len + 1}), "
                f"got {batch_size} * {n_batches} = {total}")
        starts = self.n_train + np.linspace(0, self.n_val_windows - 1, total).astype(np.int64)
        starts = starts.reshape(int(n_batches), int(batch_size))
        return [self._gather(s) for s in starts]

    # -- state

    def state_dict(self) -> dict:
        """The random state and the number of batches drawn, as plain JSON types."""
        return {"kind": "TextDataset", "seed": self.seed, "batches_drawn": self.batches_drawn,
                "rng": _plain(self._rng.bit_generator.state), "seq_len": self.seq_len,
                "n_train": self.n_train, "n_val": self.n_val}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a dataset over the same tokens and seq_len): batches continue exactly."""
        what = "TextDataset"
        for key, mine in (("seq_len", self.seq_len), ("n_train", self.n_train), ("n_val", self.n_val)):
            theirs = _state_int(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        batches = _state_int(state, "batches_drawn", what)
        seed = _state_int(state, "seed", what)
        _set_rng_state(self._rng, _state_get(state, "rng", what))
        self.batches_drawn, self.seed = batches, seed

    @property
    def info(self) -> dict:
        """Sizes and source of the dataset, as plain JSON types (for a run's record)."""
        return {"n_tokens": self.n_tokens, "n_train": self.n_train, "n_val": self.n_val, "seq_len": self.seq_len,
                "val_fraction": self.val_fraction, "seed": self.seed, "vocab_size": self.vocab_size,
                "memory_mapped": isinstance(self.tokens, np.memmap), **self.source}

    def __repr__(self) -> str:
        return (f"TextDataset(n_train={self.n_train}, n_val={self.n_val}, seq_len={self.seq_len}, "
                f"seed={self.seed})")


def _check_token_range(tokens: np.ndarray, vocab_size: int | None) -> None:
    """Ids must be >= 0, fit int32, and lie below ``vocab_size`` when given (checked in blocks: memmaps)."""
    high = 2**31 if vocab_size is None else vocab_size
    info = np.iinfo(tokens.dtype)
    if info.min >= 0 and info.max < high:
        return
    step = 1 << 22
    for i in range(0, tokens.shape[0], step):
        block = tokens[i:i + step]
        lo, hi = int(block.min()), int(block.max())
        if lo < 0 or hi >= high:
            bad = lo if lo < 0 else hi
            where = f"[0, {vocab_size}) (vocab_size)" if vocab_size is not None else "[0, 2**31)"
            raise ValueError(f"tokens: expected ids in {where}, got {bad}")


def _default_cache_dir() -> Path:
    env = os.environ.get("QORUS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qorus_jit" / "tokens"


def _open_cached(path: Path, dtype) -> np.ndarray | None:
    """The memory-mapped ids of a token cache file, or None if it is absent or not what it should be."""
    if not path.is_file():
        return None
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype != dtype or ids.shape[0] == 0:
        return None
    return ids


# -------------------------------------------------------------------------------------------- ArrayDataset


_Y_DTYPES = (np.int32, np.int64, np.float32, np.float64)


def _check_xy(X, y) -> int:
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X: expected a numpy array of shape (N, ...), got {type(X).__name__}")
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y: expected a numpy array of shape (N, ...), got {type(y).__name__}")
    if X.ndim < 1 or X.shape[0] < 1:
        raise ValueError(f"X: expected an array of shape (N, ...) with N >= 1, got shape {X.shape}")
    if X.dtype != np.float32:
        raise TypeError(f"X: expected dtype float32, got {X.dtype} (use X.astype(np.float32))")
    if y.ndim < 1:
        raise ValueError("y: expected an array of shape (N, ...), got a 0-D array")
    if y.dtype.type not in _Y_DTYPES:
        raise TypeError(f"y: expected dtype int32 or int64 (class labels) or float32 or float64 (targets), "
                        f"got {y.dtype}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y: expected {X.shape[0]} rows (as X), got shape {y.shape} against X of shape {X.shape}")
    return int(X.shape[0])


class ArrayDataset:
    """Shuffled mini-batches of ``(X, y)``: ``X (N, ...)`` float32, ``y (N, ...)`` int32/int64 labels or float targets.

    Iterating yields one epoch of ``(x, y)`` batches (C-contiguous copies, ``(batch_size, ...)``; the last
    one smaller unless ``drop_last``): the remaining batches of the current epoch, then the epoch counter
    advances. :meth:`next_batch` gives the next batch, crossing into the next epoch as needed. Epoch ``e``
    is ordered by a permutation drawn from ``np.random.default_rng([seed, e])`` (the identity when
    ``shuffle`` is False), so :meth:`state_dict` (epoch and position) restores the order exactly.

    Example::

        >>> X = np.arange(10, dtype=np.float32).reshape(5, 2)
        >>> ds = ArrayDataset(X, np.arange(5), batch_size=2, seed=0)
        >>> [len(xb) for xb, yb in ds]
        [2, 2, 1]
        >>> ds.epoch, len(ds)
        (1, 3)
    """

    def __init__(self, X, y, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        n = _check_xy(X, y)
        check_positive(batch_size=batch_size)
        check_bool(shuffle=shuffle, drop_last=drop_last)
        check_int(seed=seed)
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        if drop_last and n < batch_size:
            raise ValueError(f"batch_size: with drop_last=True expected at most the {n} samples, got {batch_size}")
        self.X, self.y = X, y
        self.n = n
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0  # samples of the current epoch already served
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def _end(self) -> int:
        """Position at which the current epoch is exhausted."""
        return len(self) * self.batch_size if self.drop_last else self.n

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            else:
                self._order = np.arange(self.n)
        return self._order

    def _roll_over(self) -> None:
        if self.position >= self._end:
            self.epoch += 1
            self.position = 0
            self._order = None

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self._epoch_order()[self.position:min(self.position + self.batch_size, self.n)]
        self.position += len(idx)
        return np.ascontiguousarray(self.X[idx]), np.ascontiguousarray(self.y[idx])

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)`` batch, starting the next epoch (reshuffled) when this one is done."""
        self._roll_over()
        return self._take()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._roll_over()
        while self.position < self._end:
            yield self._take()
        self._roll_over()

    def state_dict(self) -> dict:
        """Epoch and position within it, as plain JSON types."""
        return {"kind": "ArrayDataset", "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "n": self.n, "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (of a dataset over the same arrays and options): batches continue exactly."""
        what = "ArrayDataset"
        for key, mine in (("n", self.n), ("batch_size", self.batch_size)):
            theirs = _state_int(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        for key, mine in (("shuffle", self.shuffle), ("drop_last", self.drop_last)):
            theirs = _state_get(state, key, what)
            if theirs != mine:
                raise ValueError(f"state[{key!r}]: the state is of a dataset with {key}={theirs}, this one has {mine}")
        seed = _state_int(state, "seed", what)
        epoch = _state_int(state, "epoch", what)
        position = _state_int(state, "position", what)
        if position > self.n:
            raise ValueError(f"state['position']: expected at most {self.n}, got {position}")
        self.seed, self.epoch, self.position, self._order = seed, epoch, position, None

    def __repr__(self) -> str:
        return (f"ArrayDataset(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, epoch={self.epoch}, position={self.position})")


def train_test_split(X, y, test_fraction: float = 0.2, seed: int = 0):
    """Split ``(X, y)`` at random into ``(X_train, X_test, y_train, y_test)`` (C-contiguous copies).

    The last ``round(N * test_fraction)`` samples of ``np.random.default_rng(seed).permutation(N)`` form the
    test part; both parts must be non-empty. Deterministic for a given seed; no stratification.
    """
    n = _check_xy(X, y)
    check_real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int(seed=seed)
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    n_test = int(round(n * float(test_fraction)))
    if n_test < 1 or n_test > n - 1:
        raise ValueError(f"test_fraction: {test_fraction} of {n} samples gives {n_test} test and {n - n_test} "
                         "train samples; both need at least one")
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n - n_test], perm[n - n_test:]
    return (np.ascontiguousarray(X[tr]), np.ascontiguousarray(X[te]),
            np.ascontiguousarray(y[tr]), np.ascontiguousarray(y[te]))


__all__ = [
    "BPE_INSTALL_HINT", "MMAP_THRESHOLD", "TOKENIZER_FILE", "ArrayDataset", "BPETokenizer", "ByteTokenizer",
    "TextDataset", "default_corpus", "load_tokenizer", "train_test_split",
]
