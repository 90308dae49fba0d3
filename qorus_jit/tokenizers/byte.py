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
    chat_template = None  # no chat template: conversations need a Hugging Face tokenizer that has one

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

    def to_hf_json(self) -> str:
        """This tokenizer as a Hugging Face ``tokenizer.json`` (what ``AutoTokenizer`` reads), built with the
        ``tokenizers`` package: a BPE model over the 256 single-byte tokens of GPT-2's byte-to-character map,
        no merges, a ByteLevel pre-tokenizer (no prefix space, no splitting) and decoder, each token's id its
        byte value, so that it encodes and decodes every text exactly as :meth:`encode` and :meth:`decode`."""
        from qorus_jit.tokenizers.bpe import _import_tokenizers

        tk = _import_tokenizers()
        chars = _byte_chars()
        tok = tk.Tokenizer(tk.models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = tk.decoders.ByteLevel()
        return tok.to_str(pretty=True) + "\n"

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


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-character map (what the ByteLevel pre-tokenizer uses): byte ``b`` -> a printable
    character; the printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, n = {b: chr(b) for b in kept}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]
