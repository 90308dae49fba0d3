"""Work shared by the threads of one parallel region, in phases: atomic counters for numba kernels.

numba's ``prange`` starts and joins its threads at every region, about 1.8 us on the Intel Xeon inside a kernel;
decoding a stories15M token with int8 weights took 19 regions. These let one region run many phases instead:
each phase's work items are claimed from a counter (:func:`claim`), each done is counted (:func:`done`), and a
thread goes on to the next phase once every item is done (:func:`wait_done`). Items are claimed, not assigned, so
a thread waits only for items that a running thread holds: if the runtime runs the region's iterations one after
another on fewer threads, the first does every item and the others find none, and nothing deadlocks.

A wait is not a barrier: a thread that finds no items left goes on while another may still be reading the last
phase's results, so a later phase must not write where an earlier phase's results are read (the quantized
decoder keeps them per block). Counters are int64 arrays, one phase's claim and done counts 128 bytes apart
(:func:`phase_counters`), zeroed before the region starts.
"""

from __future__ import annotations

import platform
import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from qorus_jit.core.numerics import kernel

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
_YIELD = sys.platform != "win32"  # sched_yield, from the C library the process has loaded
_STRIDE = 16  # int64 slots between counters: 128 bytes, past the adjacent-line prefetcher's pair
# turns a wait spins (with pause, 12 ns each on the Intel Xeon: 24 us in all) before it gives the core away; 40
# phases of 5 tiny items took 28 us in one region there, claims and waits included
SPINS = 2000


def phase_counters(n_phases: int) -> np.ndarray:
    """Zeroed counters for ``n_phases`` phases (claim and done counts, each on a line of its own)."""
    return np.zeros((n_phases, 2 * _STRIDE), np.int64)


def _element_pointer(builder, context, aty, arr, i, j):
    a = context.make_array(aty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aty, a, [i, j])


@intrinsic
def _fetch_add(typingctx, counters, i, j, v):
    """counters[i, j] += v atomically (sequentially consistent); returns the value before."""
    sig = types.int64(counters, i, j, v)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(builder, context, sig.args[0], args[0], args[1], args[2])
        return builder.atomic_rmw("add", ptr, context.cast(builder, args[3], sig.args[3], types.int64), "seq_cst")
    return sig, codegen


@intrinsic
def _load_acquire(typingctx, counters, i, j):
    """counters[i, j], an acquiring load: what was written before a release of this value is visible after."""
    sig = types.int64(counters, i, j)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(builder, context, sig.args[0], args[0], args[1], args[2])
        return builder.load_atomic(ptr, "acquire", 8)
    return sig, codegen


@intrinsic
def _relax(typingctx, spins):
    """One turn of a wait: ``pause`` on x86 while ``spins < SPINS``, then ``sched_yield`` (the core to another
    runnable thread: on a shared machine the thread waited for may be the one that needs it)."""
    sig = types.void(spins)

    def codegen(context, builder, sig, args):
        mod = builder.module
        if _YIELD:
            spin = builder.icmp_signed("<", args[0], ir.Constant(ir.IntType(64), SPINS))
            with builder.if_else(spin) as (then, otherwise):
                with then:
                    _pause(builder, mod)
                with otherwise:
                    fn = cgutils.get_or_insert_function(mod, ir.FunctionType(ir.IntType(32), []), "sched_yield")
                    builder.call(fn, [])
        else:
            _pause(builder, mod)
        return context.get_dummy_value()
    return sig, codegen


def _pause(builder, mod):
    if _X86:
        fn = cgutils.get_or_insert_function(mod, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        builder.call(fn, [])


@kernel
def claim(counters, phase):
    """The next item of ``phase`` for the calling thread (0, 1, ...; at or past the phase's item count: none
    left)."""
    return _fetch_add(counters, phase, 0, 1)


@kernel
def done(counters, phase):
    """Count one item of ``phase`` done: everything the thread wrote for it is visible to :func:`wait_done`."""
    _fetch_add(counters, phase, _STRIDE, 1)


@kernel
def wait_done(counters, phase, n):
    """Return once ``n`` items of ``phase`` are done (their writes visible to the caller)."""
    spins = 0
    while _load_acquire(counters, phase, _STRIDE) < n:
        _relax(spins)
        spins += 1
