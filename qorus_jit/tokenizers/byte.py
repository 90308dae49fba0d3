"""The byte tokenizer: the 256 byte values of UTF-8 as token ids, nothing to train."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from qorus_jit.tokenizers._common import ids_array, save_json

#: The ``format`` of a byte tokenizer's JSON file.
BYTE_FORMAT = "qorus-byte-tokenizer"


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
        arr = ids_array("ids", ids, 256)
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """The JSON form :meth:`save` writes and :func:`load_tokenizer` reads."""
        return json.dumps({"format": BYTE_FORMAT, "name": self.name, "vocab_size": self.vocab_size}) + "\n"

    def save(self, path) -> Path:
        """Write :meth:`to_json` to ``path`` (a file, or ``path/tokenizer.json`` for a folder); returns the file."""
        return save_json(path, self.to_json())

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
