"""llama2.c's tokenizer (``tokenizer.bin``): a sentencepiece-style BPE vocabulary of byte strings with merge
scores, encoded and decoded as llama2.c's ``run.c`` does.

The file: int32 ``max_token_length``, then per token a float32 score, an int32 byte length and the bytes.
The vocabulary size is not stored.

Example::

    model = qorus_jit.load_llama2c("stories15M.bin")
    tok = Llama2cTokenizer.load("tokenizer.bin", vocab_size=model.config.vocab_size)
    logits = model.forward(tok.encode("Once upon a time")[None])
"""

from __future__ import annotations

import hashlib
import heapq
import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_bool, check_positive
from qorus_jit.core.files import atomic_write, check_file, check_path
from qorus_jit.tokenizers._common import check_text, ids_array

BOS_ID, EOS_ID = 1, 2
BYTE_OFFSET = 3  #: id of the byte token ``<0x00>``: byte ``b`` falls back to id ``b + 3``

_INT32_MAX = 2**31 - 1
_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


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
    chat_template = None  # no chat template: conversations need a Hugging Face tokenizer that has one

    def __init__(self, pieces, scores, max_token_length: int | None = None):
        if isinstance(pieces, (str, bytes)) or not isinstance(pieces, Iterable):
            raise TypeError(f"pieces: expected a sequence of bytes or str, got {type(pieces).__name__}")
        pieces = list(pieces)
        for i, p in enumerate(pieces):
            if isinstance(p, str):
                pieces[i] = check_text(f"pieces[{i}]", p).encode("utf-8")
            elif not isinstance(p, bytes):
                raise TypeError(f"pieces[{i}]: expected bytes or str, got {type(p).__name__}")
        try:
            scores = np.array(scores, dtype=np.float32)  # a copy: it is made read-only below
        except (TypeError, ValueError):
            raise TypeError(f"scores: expected a sequence of floats, got {type(scores).__name__}") from None
        if scores.shape != (len(pieces),):
            raise ValueError(f"scores: expected shape ({len(pieces)},) (one per piece), got {scores.shape}")
        if len(pieces) < 3:
            raise ValueError(f"pieces: expected at least 3 (<unk>, <s>, </s> at ids 0, 1, 2), got {len(pieces)}")
        longest = max(len(p) for p in pieces)
        if max_token_length is None:
            max_token_length = longest
        if isinstance(max_token_length, (bool, np.bool_)) or not isinstance(max_token_length, (int, np.integer)) \
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
        file = check_file("path", path, "llama2.c file")
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
        p = check_path("path", path)
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
        arr = ids_array("ids", ids, self.vocab_size)
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
