"""Arrays for kernels to write into: 64-byte aligned, with unused room after the last element.

LLVM vectorizes a kernel loop such as ``out[i] = f(a[i], b[i])`` with a runtime check that ``out`` does not
overlap its inputs, and runs a scalar copy of the loop when the check fails. The check is conservative by a
few vector widths: arrays that merely touch fail it. Two large NumPy arrays allocated one after the other
often touch (glibc's heap puts 16 bytes between them), and then the kernel silently runs scalar code
(measured in docs/design.md, "Arrays that touch run scalar code").

Layers, the optimizer and the losses allocate their parameters, gradients, state and buffers here, so any
two of them are at least :data:`PAD` bytes apart. Arrays a user passes in may still touch; only speed is
at stake, never results.

A model's parameters come from :func:`weights`: one after another, in the order the layers make them, in memory
maps advised for transparent huge pages. Decoding reads every weight once a token, and on the AMD EPYC a matrix
of a few hundred KB streamed from memory 8-28% faster on 2 MB pages than on the heap's 4 KB ones (fewer TLB
misses, prefetchers not stopped at every page; docs/design.md, "Weights on huge pages").
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref

import numpy as np

from qorus_jit.core.numerics import DTYPE

ALIGN = 64  # bytes: a cache line, and the widest vector load
PAD = 256  # bytes of unused room after each array's data


def empty(shape, dtype=DTYPE) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape``, 64-byte aligned, with :data:`PAD` bytes spare after it."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    room = (ALIGN + PAD + dtype.itemsize - 1) // dtype.itemsize
    raw = np.empty(n + room, dtype)
    start = (-raw.ctypes.data % ALIGN) // dtype.itemsize
    return raw[start:start + n].reshape(shape)


def zeros(shape, dtype=DTYPE) -> np.ndarray:
    """:func:`empty`, filled with zeros."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


def zeros_like(a: np.ndarray) -> np.ndarray:
    """:func:`zeros` of ``a``'s shape and dtype."""
    return zeros(a.shape, a.dtype)


def copy(value, dtype=DTYPE) -> np.ndarray:
    """A C-contiguous copy of ``value`` in ``dtype``, allocated by :func:`empty`."""
    value = np.asarray(value)
    out = empty(value.shape, dtype)
    out[...] = value
    return out


HUGE = 2 << 20  # bytes of a transparent huge page (x86-64, and the usual arm64 one)
_CHUNK = 32 << 20  # bytes of each memory map that :func:`weights` carves arrays from
_PAGE = mmap.PAGESIZE
_arena = {"map": None, "raw": None, "off": 0, "end": 0}  # the map being carved, its bytes, the next free offset
_arena_lock = threading.Lock()
_owners: dict[int, weakref.ref] = {}  # id -> each array that owns memory of weights(), while it lives


def _register(owner: np.ndarray) -> None:
    key = id(owner)
    _owners[key] = weakref.ref(owner, lambda _, key=key: _owners.pop(key, None))


def _huge_map(nbytes: int):
    """(map, raw, start): a private anonymous memory map of ``nbytes`` from a 2 MB boundary (``start``, bytes
    into the map), advised for transparent huge pages where the system offers them (Linux's ``madvise`` mode),
    and ``raw``, its bytes as uint8 (which keeps the map alive). Pages take memory when written."""
    buf = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: plain pages
            pass
    raw = np.frombuffer(buf, np.uint8)
    return buf, raw, -raw.ctypes.data % HUGE


def _release(buf: mmap.mmap, lo: int, hi: int) -> None:
    """Give back to the system the whole pages within bytes [lo, hi) of ``buf`` (their contents are gone)."""
    lo, hi = -(-lo // _PAGE) * _PAGE, hi // _PAGE * _PAGE
    if hi > lo and hasattr(mmap, "MADV_DONTNEED"):
        try:
            buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # a closed map or a platform without it: the pages stay until the map goes
            pass


def in_weights(a: np.ndarray) -> bool:
    """Whether ``a`` lies in memory of :func:`weights` (so a layer may keep it rather than copy it there)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    ref = _owners.get(id(a))
    return ref is not None and ref() is a


def weights(shape, dtype=DTYPE) -> np.ndarray:
    """Zeros of ``shape`` for weights that live as long as their model: 64-byte aligned with :data:`PAD` bytes
    spare, carved one after another from 32 MB memory maps on huge pages (:func:`_huge_map`; a larger array gets
    its own). Pages take memory only when written. When the array and every view of it are gone, its whole
    pages go back to the system (a process that builds and drops many models keeps only what lives); its
    place in the map is not reused, and a map is unmapped when nothing carved from it lives."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    need = (nbytes + PAD + ALIGN - 1) // ALIGN * ALIGN
    if need > _CHUNK // 4:
        _, raw, start = _huge_map(need)
        owner = raw[start:start + need]  # its own map: unmapped when the last view goes
        _register(raw)
    else:
        with _arena_lock:
            if _arena["map"] is None or _arena["off"] + need > _arena["end"]:
                buf, raw, start = _huge_map(_CHUNK)
                _arena.update(map=buf, raw=raw, off=start, end=start + _CHUNK)
            buf, raw, lo = _arena["map"], _arena["raw"], _arena["off"]
            _arena["off"] += need
        # an owner of its own (a buffer over the map's bytes), so that the last view's end releases its pages
        owner = np.frombuffer(memoryview(raw)[lo:lo + need], np.uint8)
        weakref.finalize(owner, _release, buf, lo, lo + need).atexit = False
        _register(owner)
    return owner[:nbytes].view(dtype).reshape(shape)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def _human(nbytes: int) -> str:
    for unit, scale in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} bytes"


def check_fits(what: str, count: int, dtype=DTYPE, **sizes) -> None:
    """Before allocating ``count`` elements of ``dtype`` (``what``: "parameters", "KV cache", ...) from the size
    arguments ``sizes`` (``name=value``), a ValueError naming them if that is more than this machine's memory
    (or than numpy can address), instead of numpy's unnamed "array is too big" or a MemoryError."""
    nbytes = int(count) * np.dtype(dtype).itemsize
    have = memory_bytes()
    if nbytes >= 2**63 or (have and nbytes > have):
        args = ", ".join(f"{k}={int(v)}" for k, v in sizes.items())
        room = f"{_human(have)} of memory here" if have else "what numpy can address"
        raise ValueError(f"{args}: {int(count)} {np.dtype(dtype)} {what} ({_human(nbytes)}) do not fit in "
                         f"memory (more than {room})")
