"""One home for numerics: fastmath flags, the default dtype, the kernel decorator and threads (how many,
and when and how parallel kernels use them).

Every kernel in ``qorus_jit.kernels`` is compiled through :func:`kernel`, so the flag set below is
the only place where fastmath is spelled. ``nnan`` and ``ninf`` are left out on purpose: with them
LLVM may assume no NaN or inf exists, so ``np.isnan`` folds to False and ``-inf`` masks are undefined.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba
import numpy as np
from numba import prange
from numba.core.caching import CacheImpl, _SourceFileBackedLocatorMixin

FASTMATH: frozenset[str] = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
"""LLVM fast-math flags for every kernel (no ``nnan``, no ``ninf``)."""

DTYPE = np.float32
"""Default floating dtype of parameters, activations and gradients."""

FLOAT_DTYPES = (np.float32, np.float64)
"""Floating dtypes the kernels accept (float64 serves tests and finite differences)."""

INDEX_DTYPES = (np.int32, np.int64)
"""Integer dtypes accepted for token ids and targets."""

SERIAL_WORK = 1 << 15
"""Work up to which :func:`for_chunks` runs a kernel's body on the calling thread instead of entering a
parallel region: elements of the largest operand (``B * H * T * S * D`` multiply-adds for attention, ``B * H *
length * D`` for decoding). Waking numba's threads costs microseconds on an idle machine and up to a scheduler
slice on a busy one; the break-even figures behind the value are in docs/design.md ("Kernel conventions").
Kernels read it as a compile-time constant (numba freezes globals into the cached machine code; a change to
this file makes every cached kernel stale, see :class:`_PackageSources`)."""

_PACKAGE = Path(__file__).resolve().parents[1]  # qorus_jit/
_SOURCE_DIRS = ("core", "kernels")  # where the kernels and everything they inline live
_stamp: list[bytes] = []


def sources_stamp(files=None) -> bytes:
    """A hash of the contents of ``files`` (default: every module of qorus_jit/core and qorus_jit/kernels, read
    once a process)."""
    if files is None and _stamp:
        return _stamp[0]
    paths = sorted(p for d in _SOURCE_DIRS for p in (_PACKAGE / d).glob("*.py")) if files is None else files
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes())
    if files is None:
        _stamp.append(h.digest())
    return h.digest()


# a checkout's tests and benchmarks, whose kernels inline the package's too (absent from an installed package)
_CHECKOUT = tuple(d for d in (_PACKAGE.parent / "tests", _PACKAGE.parent / "perf") if (d / "__init__.py").exists())


class _PackageSources:
    """A numba cache locator mixin for qorus_jit's own modules (and a checkout's tests/ and perf/): cached machine
    code is stale when any module of core/ or kernels/ changed, not only the function's file. numba checks the
    function's file alone, but a kernel inlines functions of other modules (decode.py's products the rows of
    quant_x86.py; a test's kernel the package's), so an edit there left cached kernels running the old code
    (docs/design.md, "Kernel conventions")."""

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if not (path.is_relative_to(_PACKAGE) or any(path.is_relative_to(d) for d in _CHECKOUT)):
            return None  # not ours: numba's own locators
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), sources_stamp()


def _install_locators() -> None:
    """Put a :class:`_PackageSources` twin of each of numba's file-backed locators first (once)."""
    classes = list(CacheImpl._locator_classes)
    if not any(issubclass(c, _PackageSources) for c in classes):
        ours = [type(f"Qorus{c.__name__}", (_PackageSources, c), {}) for c in classes
                if issubclass(c, _SourceFileBackedLocatorMixin)]
        CacheImpl._locator_classes = ours + classes


_install_locators()

# Mangled-name prefixes of the functions whose linked copies bind inside their caller: ours, a checkout's tests and
# benchmarks, and numba's own implementations (np.sum and the like) compiled with our flags.
_BIND_LOCALLY = ("_ZN9qorus_jit", "_ZN5tests", "_ZN4perf", "_ZN5numba")


def _install_local_binding() -> None:
    """Make the copy of a called kernel that numba links into its caller's module internal to that module (once).

    numba links a callee into each caller as ``linkonce_odr``, a weak symbol that the JIT binds to the first
    definition loaded in the process. The callee's own library and the caller's copy are optimized apart, and
    with ``reassoc`` they may sum in different orders, so a kernel gave other bits when the callee had been
    compiled or called alone first: a run compiled from a cold cache, resumed from a warm one, was not exact
    (docs/design.md, "A called kernel binds inside its caller"). The linkage changes after numba's optimization,
    so inlining decides as before (internal before it, cross-entropy's rows inlined their helpers and ran 10%
    slower)."""
    from numba.core.codegen import CPUCodeLibrary

    finalize = CPUCodeLibrary._finalize_final_module
    if getattr(finalize, "_qorus_local", False):
        return

    def _finalize_final_module(self):
        for fn in self._final_module.functions:
            if not fn.is_declaration and fn.linkage.name == "linkonce_odr" and fn.name.startswith(_BIND_LOCALLY):
                fn.linkage = "internal"
        finalize(self)

    _finalize_final_module._qorus_local = True
    CPUCodeLibrary._finalize_final_module = _finalize_final_module


_install_local_binding()


def kernel(fn=None, *, parallel: bool = False):
    """Compile ``fn`` as a qorus kernel: ``njit`` with the shared fastmath flags and ``cache=True``.

    Use as ``@kernel`` or ``@kernel(parallel=True)``. ``error_model="numpy"`` keeps division from
    raising (and from blocking vectorization); inputs are validated by the public wrappers instead.
    """

    def wrap(f):
        return numba.njit(
            cache=True,
            fastmath=set(FASTMATH),
            parallel=parallel,
            error_model="numpy",
            nogil=True,
        )(f)

    return wrap if fn is None else wrap(fn)


MAX_CHUNKS = 32
"""Most chunks a parallel kernel cuts its rows (or other work items) into. numba hands ``prange`` iterations
to its threads in equal contiguous blocks, so more chunks than threads add no balance, only calls."""


@kernel
def row_chunks(n):
    """(rows per chunk, chunk count) for n rows: at most MAX_CHUNKS chunks of equal size, fixed by n alone."""
    per = max(1, (n + MAX_CHUNKS - 1) // MAX_CHUNKS)
    return per, (n + per - 1) // per


@numba.njit(inline="always")
def for_chunks(body, args, items, per, work):
    """``body(*args, lo, hi)`` over the work items ``0..items-1``: one call on the calling thread when ``work <=
    SERIAL_WORK`` or all items fit in one chunk of ``per``, else one call per chunk of ``per`` items in ``prange``.

    The one serial-or-parallel split of every parallel kernel (docs/design.md, "Kernel conventions"). Inlined
    into the calling ``@kernel(parallel=True)`` before typing, so it compiles and caches as part of that kernel:
    the serial branch holds no parfor and enters no parallel region, and the chunks depend on ``items`` and
    ``per`` only, never on the thread count. ``body`` must be a serial ``@kernel``; ``args`` is a tuple.
    """
    if work <= SERIAL_WORK or items <= per:
        body(*(args + (0, items)))
    else:
        for c in prange((items + per - 1) // per):
            body(*(args + (c * per, min(items, (c + 1) * per))))


@numba.njit(inline="always")
def for_rows(body, args, rows, work):
    """:func:`for_chunks` over ``rows`` items in the chunks of :func:`row_chunks`."""
    for_chunks(body, args, rows, row_chunks(rows)[0], work)


@kernel
def copy_row(dst, src):
    """dst[:] = src for 1-D arrays of one length. numba compiles the assignment ``dst[:] = src`` (or ``dst[i] =
    src[j]`` of rows) to a scalar copy with an index check per element, 3-5x slower than this loop, which it
    vectorizes (docs/design.md, "Kernel conventions")."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@kernel
def sum_in_order(x):
    """sum(x) on one thread: fixed by n alone, unlike a parallel reduction split by the thread count; x (n,)."""
    s = x.dtype.type(0)
    for i in range(x.shape[0]):
        s += x[i]
    return s


def get_num_threads() -> int:
    """Number of threads numba's parallel kernels use."""
    return numba.get_num_threads()


def max_threads() -> int:
    """The most threads :func:`set_num_threads` accepts (``numba.config.NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS


_POLICY = {"auto": True}


def auto_threads() -> bool:
    """Whether the thread count is chosen at run time (the ``auto`` policy, the default): generation and
    training then time their work and take fewer threads while other processes hold the cores
    (:mod:`qorus_jit.core.threads`). ``set_num_threads(n)`` and ``QORUS_THREADS=n`` fix the count."""
    return _POLICY["auto"]


def set_num_threads(n) -> None:
    """Fix the thread count of numba's parallel kernels and of BLAS together, or ``"auto"``: the most
    threads, and generation and training choose fewer while the machine is busy (:func:`auto_threads`).

    ``n`` must be between 1 and ``numba.config.NUMBA_NUM_THREADS`` (the cores seen at start-up, or the
    ``NUMBA_NUM_THREADS`` environment variable). With a fixed count, results are the same from run to run;
    OpenBLAS's products round differently on different thread counts (docs/design.md).
    """
    limit = numba.config.NUMBA_NUM_THREADS
    auto = isinstance(n, str) and n == "auto"
    if not auto and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= limit):
        raise ValueError(f"n: expected 'auto' or an int between 1 and {limit}, got {n!r}")
    count = limit if auto else int(n)
    numba.set_num_threads(count)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count, user_api="blas")
    _POLICY["auto"] = auto


def parse_threads(value) -> int | str:
    """A thread-count setting as users write it: ``"auto"`` (any case) or a count >= 1 (not clamped); a
    ValueError otherwise."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"expected 'auto' or a thread count >= 1, got {text!r}")
    return n


def threads_from_env(value: str | None) -> int | str | None:
    """``QORUS_THREADS`` read: ``"auto"``, a count (clamped to the cores), or None when unset or empty."""
    if value is None or not value.strip():
        return None
    try:
        n = parse_threads(value)
    except ValueError as e:
        raise ValueError(f"QORUS_THREADS: {e}") from None
    return n if n == "auto" else min(n, max_threads())


_ENV_THREADS = threads_from_env(os.environ.get("QORUS_THREADS"))
if _ENV_THREADS is not None:
    set_num_threads(_ENV_THREADS)
