"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then ``os.replace``.

An interrupted write (a crash, SIGKILL, a full disk) leaves either the old file or the new one, never a
damaged one. Used by Hugging Face folders, checkpoints, token caches and run files. Also the checks of
path arguments.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def tmp_name(folder: Path, final: str) -> Path:
    """A new empty temporary file in ``folder``, named after ``final`` (hidden, ``.tmp`` suffix)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{final}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600; the final file should be as readable as any other
    return Path(name)


def fsync_file(file: Path) -> None:
    """Flush ``file``'s data to disk."""
    with open(file, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new names, renames) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, fsync it and move it over ``path``."""
    path = Path(path)
    tmp = tmp_name(path.parent, path.name)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (NaN and inf are refused)."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def atomic_write_npy(path, arr) -> Path:
    """Write ``arr`` as a ``.npy`` file to ``path`` atomically (no pickle; through a file object, since
    ``np.save`` given a name would append ``.npy`` to the temporary one)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    return atomic_write(path, write)


def read_json(file: Path, what: str):
    """The parsed JSON of ``file``; FileNotFoundError names ``what`` is missing, ValueError bad JSON."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}")
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def check_path(name: str, path) -> Path:
    """``path`` (a str or os.PathLike) as a Path; a TypeError names the argument otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def check_file(name: str, path, what: str = "file") -> Path:
    """``path`` as a Path to an existing file: IsADirectoryError for a folder, FileNotFoundError if absent;
    ``what`` names the kind of file in the messages."""
    p = check_path(name, path)
    if p.is_dir():
        raise IsADirectoryError(f"{name}: expected a {what}, got the directory {p}")
    if not p.is_file():
        raise FileNotFoundError(f"{name}: {what} not found: {p}")
    return p
