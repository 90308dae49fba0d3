"""Fault injection for the training tests: every low-level write a run makes, recorded in order, and the
N-th of them made to fail with a chosen errno (a full disk, a read-only file system, a refused permission).

The write paths are the lowest ones Python offers: ``open``/``io.open`` in a writing mode, ``os.open`` with
a writing flag, ``os.write``, ``os.mkdir``, ``os.rename``, ``os.replace``, and safetensors' ``save_file``
(its writes happen in Rust, out of Python's reach; a failure comes back as a ``SafetensorError`` naming the
OS's error number, as the real one does).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.numpy
from safetensors import SafetensorError

from qorus_jit.core.files import final_path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES)


@dataclass
class Faults:
    """Records write events ``(kind, final path)`` under ``root``; fails the ``fail_at``-th (0-based) with
    ``code``. ``fds`` maps open descriptors to their paths (for ``os.write``)."""

    root: Path
    fail_at: int | None = None
    code: int = errno.ENOSPC
    events: list[tuple[str, str]] = field(default_factory=list)
    fds: dict[int, str] = field(default_factory=dict)
    failed: tuple[str, str] | None = None

    def event(self, kind: str, path, target=None) -> None:
        """Count one write of ``path`` (recorded as ``target``, the file it makes, when given); raise the
        OSError, naming ``path`` as the OS does, if it is the one to fail."""
        try:
            rel = str(final_path(Path(os.fsdecode(target or path)).resolve()).relative_to(self.root.resolve()))
        except (ValueError, TypeError):
            return  # not under the run folder (numba's cache, pytest's files): not counted
        self.events.append((kind, rel))
        if self.fail_at is not None and len(self.events) - 1 == self.fail_at:
            self.failed = (kind, rel)
            raise OSError(self.code, os.strerror(self.code), os.fsdecode(path))

    def install(self, monkeypatch) -> Faults:
        real_open, real_os_open, real_write = io.open, os.open, os.write
        real_mkdir, real_rename, real_replace = os.mkdir, os.rename, os.replace
        real_save = safetensors.numpy.save_file

        def fake_open(file, mode="r", *args, **kw):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self.event("open", file)
            return real_open(file, mode, *args, **kw)

        def fake_os_open(path, flags, *args, **kw):
            if flags & _WRITE_FLAGS:
                self.event("os.open", path)
            fd = real_os_open(path, flags, *args, **kw)
            self.fds[fd] = os.fsdecode(path)
            return fd

        def fake_write(fd, data):
            if fd in self.fds:
                self.event("os.write", self.fds[fd])
            return real_write(fd, data)

        def fake_mkdir(path, *args, **kw):
            self.event("os.mkdir", path)
            return real_mkdir(path, *args, **kw)

        def fake_rename(src, dst, *args, **kw):
            self.event("os.rename", src, dst)  # a folder renamed into place, or aside to be deleted
            return real_rename(src, dst, *args, **kw)

        def fake_replace(src, dst, *args, **kw):
            self.event("os.replace", src, dst)
            return real_replace(src, dst, *args, **kw)

        def fake_save(tensors, filename, metadata=None):
            try:
                self.event("save_file", filename)
            except OSError as e:  # what safetensors raises for a failed write
                text = f"Error while serializing: I/O error: {e.strerror} (os error {e.errno})"
                raise SafetensorError(text) from None
            return real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "rename", fake_rename)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(safetensors.numpy, "save_file", fake_save)
        return self


def site(event: tuple[str, str]) -> tuple[str, str]:
    """A write event with the step numbers of its path blanked (the same site at every checkpoint)."""
    kind, rel = event
    return kind, re.sub(r"step_\d+", "step_N", rel)
