"""What the tokenizers share: the check of the ids given to ``decode`` and the writer of their JSON files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qorus_jit.core.files import atomic_write_text, check_path

#: The tokenizer file of a Hugging Face model folder (and of :meth:`save` given a folder).
TOKENIZER_FILE = "tokenizer.json"

_CHECK_CHARS = 1 << 20  # text checked in pieces: no whole encoded copy held


def check_text(name: str, text) -> str:
    """``text`` must be a str of valid Unicode: a lone surrogate (``"\\ud800"``, from ``surrogateescape``) has
    no UTF-8 form, so no tokenizer can encode it; else a TypeError or ValueError naming ``name``."""
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}")
    if text.isascii():  # a flag CPython keeps: no scan
        return text
    for start in range(0, len(text), _CHECK_CHARS):  # encoding finds one at ~7 ns a char, a regex at ~30
        try:
            text[start:start + _CHECK_CHARS].encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name}: expected valid Unicode, got a lone surrogate at index {start + e.start}") \
                from None
    return text


def ids_array(name: str, ids, high: int) -> np.ndarray:
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


def save_json(path, text: str) -> Path:
    p = check_path("path", path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, text)
    return p
