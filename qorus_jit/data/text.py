"""Next-token windows of one token stream (:class:`TextDataset`), and the memory-mapped ``.npy`` cache of a
tokenized text file."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_int, check_nonnegative, check_positive, check_real
from qorus_jit.core.files import atomic_write_npy, check_file, check_path, write_error
from qorus_jit.data._state import SeededBatchesState
from qorus_jit.tokenizers import load_tokenizer

#: Token count above which :meth:`TextDataset.from_text_file` writes the ids to a memory-mapped ``.npy``.
MMAP_THRESHOLD = 4_000_000


class TextDataset(SeededBatchesState):
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
        self._shard = (0, 1)  # (rank, size) of data-parallel processes (shard)
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

        The file's name also carries the count and a CRC-32 of the ids it holds, checked on reuse: a stale,
        damaged or planted file under the name is passed over (the text is tokenized again and the file
        rewritten). A cache that cannot be written raises an OSError naming it and the OS's reason.
        """
        p = check_file("path", path)
        tok = load_tokenizer(tokenizer, "tokenizer")
        check_positive(seq_len=seq_len)
        if mmap_threshold is not None:
            check_nonnegative(mmap_threshold=mmap_threshold)
        folder = check_path("cache_dir", cache_dir) if cache_dir is not None else _default_cache_dir()
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"cache_dir: expected a folder, got the file {folder}")
        raw = p.read_bytes()
        if not raw:
            raise ValueError(f"path: the text file {p} is empty")
        key = hashlib.sha256(hashlib.sha256(raw).digest() + tok.fingerprint.encode()).hexdigest()[:16]
        prefix = f"{p.stem}.{tok.name}.{key}."  # + the count and CRC-32 of the ids + ".npy"
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.int32
        ids, cache = _open_cached(folder, prefix, dtype)
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
                del ids
                cache = folder / f"{prefix}{_ids_tag(arr)}.npy"
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_write_npy(cache, arr)
                except OSError as e:
                    hint = "" if cache_dir is not None else "; QORUS_CACHE_DIR can name another folder"
                    raise write_error(f"the token cache {cache}", e, hint) from None
                del arr
                ids = np.load(cache, mmap_mode="r", allow_pickle=False)
                _remove_stale(folder, prefix, cache)
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
        p = check_file("path", path)
        try:
            ids = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"path: {p} is not a readable .npy file of token ids ({e})") from None
        if not isinstance(ids, np.ndarray):
            raise ValueError(f"path: {p} holds a .npz archive, expected a .npy of token ids")
        try:
            ds = cls(ids, seq_len, val_fraction, seed, vocab_size=vocab_size)
        except (TypeError, ValueError) as e:  # the ids' errors ("tokens: ...") are the file's
            msg = str(e)
            if not msg.startswith("tokens: "):
                raise
            raise type(e)(f"path: {p}: {msg[len('tokens: '):]}") from None
        ds.source = {"tokens_file": str(p)}
        return ds

    # -- batches

    @property
    def n_tokens(self) -> int:
        """Tokens of the corpus: the training split's and the validation split's."""
        return self.n_train + self.n_val

    @property
    def n_val_windows(self) -> int:
        """Number of distinct validation windows (start positions) the validation part holds."""
        return self.n_val - self.seq_len

    def _gather(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        win = np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int32)
        return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])

    def train_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``, each ``(batch_size, seq_len)`` C-contiguous int32, from random training windows (this
        rank's share of them after :meth:`shard`)."""
        check_positive(batch_size=batch_size)
        rank, size = self._shard
        starts = self._rng.integers(0, self.n_train - self.seq_len, size=int(batch_size) * size, dtype=np.int64)
        self.batches_drawn += 1
        return self._gather(starts[rank * int(batch_size):(rank + 1) * int(batch_size)])

    def shard(self, rank: int, size: int) -> None:
        """Be rank ``rank`` of ``size`` data-parallel processes: :meth:`train_batch` ``(b)`` then draws the
        starts of ``size * b`` windows, as one process with batch ``size * b`` does (the same random stream, so
        the same :meth:`state_dict`), and gathers the ``rank``-th ``b`` of them. Together the ranks see exactly
        that process's windows."""
        check_positive(size=size)
        check_nonnegative(rank=rank)
        if rank >= size:
            raise ValueError(f"rank: expected an int in [0, size = {size}), got {rank}")
        self._shard = (int(rank), int(size))

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

    # -- state (state_dict, load_state_dict: SeededBatchesState) and record

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


def _ids_tag(ids: np.ndarray) -> str:
    """What a token cache's name carries of the ids it holds: their count and the CRC-32 of their bytes (a
    check against damage and stale files; a CRC reads twice as fast as SHA-256, which guards no better here,
    since whoever plants a file can name it after its contents either way)."""
    return f"{ids.shape[0]}.{zlib.crc32(np.ascontiguousarray(ids)):08x}"


def _cached_files(folder: Path, prefix: str) -> list[Path]:
    try:
        return sorted(q for q in folder.iterdir() if q.name.startswith(prefix) and q.name.endswith(".npy"))
    except OSError:  # no cache folder yet, or one that cannot be listed
        return []


def _open_cached(folder: Path, prefix: str, dtype) -> tuple[np.ndarray | None, Path | None]:
    """The memory-mapped ids of the token cache ``prefix + COUNT.CRC.npy`` in ``folder`` and its path, or
    ``(None, None)`` when there is none whose ids are what they should be: 1-D, of ``dtype``, not empty, and
    of the count and CRC-32 of the name."""
    for path in _cached_files(folder, prefix):
        tag = path.name[len(prefix):-len(".npy")]
        count = tag.split(".")[0]
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError):
            continue
        if (isinstance(ids, np.ndarray) and ids.ndim == 1 and ids.dtype == dtype and ids.shape[0] > 0
                and count == str(ids.shape[0]) and _ids_tag(ids) == tag):
            return ids, path
    return None, None


def _remove_stale(folder: Path, prefix: str, keep: Path) -> None:
    """Delete the other token caches of the same text and tokenizer (stale or damaged ones); best effort."""
    for path in _cached_files(folder, prefix):
        if path != keep:
            try:
                path.unlink()
            except OSError:
                pass
