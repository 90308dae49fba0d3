"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then ``os.replace``.

An interrupted write (a crash, SIGKILL, a full disk) leaves either the old file or the new one, never a
damaged one. Used by Hugging Face folders, checkpoints, token caches and run files. Also the checks of
path arguments.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

# What tmp_name and tempfile.mkdtemp make of a final name: ".NAME.xxxxxxxx.tmp".
_TMP = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


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
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # must not hide the error of the write itself
            pass
    fsync_dir(path.parent)
    return path


def final_path(path) -> Path:
    """The file a write was meant to produce: ``path`` with each temporary component (``.NAME.xxxxxxxx.tmp``,
    as :func:`tmp_name` and ``tempfile.mkdtemp`` make them) turned back into ``NAME``."""
    path = Path(path)
    return Path(*[m.group(1) if (m := _TMP.match(part)) else part for part in path.parts]) if path.parts else path


def os_reason(e: OSError) -> str:
    """The OS's reason of ``e`` in words (``No space left on device``), without the errno and the file name."""
    return e.strerror or str(e) or type(e).__name__


def write_error(what, e: OSError, hint: str = "") -> OSError:
    """``e`` worded as one line, ``cannot write WHAT (reason)`` and ``hint``, keeping its errno (for callers
    that report an OSError as its message, such as ``qorus plot``)."""
    err = OSError(f"cannot write {what} ({os_reason(e)}){hint}")
    err.errno = e.errno
    return err


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
    """The parsed JSON of ``file``; FileNotFoundError names ``what`` is missing, and every way it can fail to
    parse (not UTF-8, not JSON, nested too deeply for the parser, an integer of more digits than Python
    converts) is a one-line ValueError naming the file."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}")
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({what}; expected UTF-8 text, got the byte "
                         f"{e.object[e.start]:#04x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({what}; {e})") from None
    except RecursionError:
        raise ValueError(f"{file}: not valid JSON ({what}; nested too deeply to read)") from None
    except ValueError as e:  # int() of too many digits
        raise ValueError(f"{file}: not valid JSON ({what}; {e})") from None


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
