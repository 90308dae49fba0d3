"""Tokenizers turn text into 1-D int32 token ids and back:

- :class:`ByteTokenizer`: the 256 UTF-8 byte values, nothing to train, every text round-trips.
- :class:`BPETokenizer`: a ``tokenizer.json`` of the Hugging Face ``tokenizers`` package (an optional
  dependency, ``pip install "qorus-jit[bpe]"``): trained here as byte-level BPE, or read from a file or a
  Hugging Face model folder.
- :class:`Llama2cTokenizer`: llama2.c's ``tokenizer.bin``.
- :func:`load_tokenizer` opens any of them from a spec: ``"byte"``, a ``tokenizer.json``, a folder holding
  one, or a ``tokenizer.bin``.

Each has ``encode``, ``decode``, ``vocab_size``, ``name``, ``save`` and ``fingerprint`` (equal fingerprints
encode text identically).

A :class:`BPETokenizer` read from a Hugging Face folder keeps the folder's chat template (``chat_template``,
None elsewhere) and renders conversations with it as transformers does (:mod:`qorus_jit.tokenizers.chat`).
"""

from __future__ import annotations

import os
from pathlib import Path

from qorus_jit.core.files import read_json
from qorus_jit.tokenizers._common import TOKENIZER_FILE
from qorus_jit.tokenizers.bpe import BPE_INSTALL_HINT, BPETokenizer
from qorus_jit.tokenizers.byte import BYTE_FORMAT, ByteTokenizer
from qorus_jit.tokenizers.llama2c import Llama2cTokenizer


def load_tokenizer(spec, name: str = "spec"):
    """The tokenizer of ``spec``: ``"byte"``, a tokenizer object (returned as is), a tokenizer JSON file
    (written by either tokenizer's ``save``, or any ``tokenizer.json``), a folder holding ``tokenizer.json``,
    or llama2.c's ``tokenizer.bin`` (a ``.bin`` file: :class:`Llama2cTokenizer`). A bad spec is an error
    naming ``name`` (the caller's argument, e.g. ``"tokenizer"``).
    """
    if isinstance(spec, (ByteTokenizer, BPETokenizer, Llama2cTokenizer)):
        return spec
    if isinstance(spec, (str, os.PathLike)) and Path(spec).suffix == ".bin":
        return Llama2cTokenizer.load(spec)
    if isinstance(spec, str) and spec == "byte":
        return ByteTokenizer()
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"{name}: expected 'byte', a tokenizer, a tokenizer.json path or a folder, "
                        f"got {type(spec).__name__}")
    p = Path(spec)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        what = f"no {TOKENIZER_FILE} in the folder {p}" if p.is_dir() else f"no such file or folder: {p}"
        raise FileNotFoundError(f"{name}: expected 'byte', a tokenizer.json file or a folder holding one; {what}")
    head = read_json(file, TOKENIZER_FILE)
    if isinstance(head, dict) and head.get("format") == BYTE_FORMAT:
        if head.get("vocab_size") != 256:
            raise ValueError(f"{file}: a byte tokenizer has vocab_size 256, got {head.get('vocab_size')!r}")
        return ByteTokenizer()
    return BPETokenizer.load(file)


__all__ = ["BPE_INSTALL_HINT", "TOKENIZER_FILE", "BPETokenizer", "ByteTokenizer", "Llama2cTokenizer",
           "load_tokenizer"]
