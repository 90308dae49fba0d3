"""The BLAS behind the matmul kernels' BLAS route: Intel MKL on Intel CPUs when installed, else NumPy's own
OpenBLAS.

At import this module registers ``qorus_gemm_f32`` / ``qorus_gemm_f64`` with LLVM, the names the compiled
(and cached) kernels call, so the library can change without recompiling. ``QORUS_BLAS`` picks it:

- ``auto`` (default): MKL if the ``mkl`` wheel is installed (``pip install "qorus-jit[mkl]"``) and the CPU is not
  an AMD one, else OpenBLAS. On an AMD EPYC (Zen 1) OpenBLAS ran the fine-tuning steps of
  ``perf.bench_finetune`` 11-17% faster than MKL (docs/design.md, "Matrix products").
- ``mkl``: Intel MKL's ILP64 ``cblas_?gemm_64`` from the ``mkl`` wheel's ``libmkl_rt``, threaded by the
  runtime numba's own parallel kernels use (TBB or GNU OpenMP, ``mkl_threading``), so the products and the
  other kernels share one pool of worker threads: as fast as OpenBLAS on a quiet machine, faster while other
  work shares it (docs/design.md, "Matrix products").
- ``openblas``: the OpenBLAS that NumPy wheels bundle (ILP64, symbols prefixed ``scipy_``): one BLAS thread
  pool in the process, shared with NumPy's ``@`` (scipy's separate copy, the one numba's ``np.dot`` calls, is
  an older and slower OpenBLAS; docs/design.md, "Matrix products").

If neither is found, the names point to a slow but correct NumPy fallback, so cached machine code always
finds them. ``BLAS_SOURCE`` says which one is in use (``qorus info`` shows it).

``qorus_gemm_bf16`` (bf16 operands, float32 sums and result: ``cblas_gemm_bf16bf16f32``, the same arguments
with ``uint16`` A and B and float alpha, beta) is MKL's where MKL serves, which runs it on AMX or
AVX512_BF16 where the CPU has them, and a NumPy fallback elsewhere; ``BF16_GEMM`` says whether MKL's is in
use.

Signature (row-major ``cblas_?gemm``, 64-bit sizes)::

    void qorus_gemm_fXX(int order, int trans_a, int trans_b, int64 M, int64 N, int64 K, T alpha,
                        const T *A, int64 lda, const T *B, int64 ldb, T beta, T *C, int64 ldc)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_SYMBOLS = {np.float32: ("qorus_gemm_f32", "scipy_cblas_sgemm64_", ctypes.c_float),
            np.float64: ("qorus_gemm_f64", "scipy_cblas_dgemm64_", ctypes.c_double)}
_keep = []  # ctypes objects whose addresses LLVM holds


def _numpy_openblas():
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas64_*.so*")):
        try:
            return ctypes.CDLL(str(path))
        except OSError:
            continue
    return None


def _fallback(dtype, ctype, operand=None):
    """A ctypes callback with the gemm signature that computes with NumPy (only if no BLAS provides it).
    ``operand``: the ctype of A and B if not ``ctype`` (``c_uint16``: bf16 bits, widened to float32)."""
    operand = operand or ctype
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                             ctypes.c_int64, ctype, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_int64, ctype, ctypes.c_void_p, ctypes.c_int64)

    def view(ptr, t, rows, ld, trans, r, c):
        full = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(t)), shape=(rows * ld,))
        m = full.reshape(rows, ld)[:, : (c if trans == NO_TRANS else r)]
        if operand is ctypes.c_uint16 and t is operand:
            m = (m.astype(np.uint32) << 16).view(np.float32)
        return m if trans == NO_TRANS else m.T

    def gemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc):
        a = view(A, operand, M if ta == NO_TRANS else K, lda, ta, M, K)
        b = view(B, operand, K if tb == NO_TRANS else N, ldb, tb, K, N)
        c = view(C, ctype, M, ldc, NO_TRANS, M, N)
        c[...] = alpha * (a.astype(dtype) @ b) + (beta * c if beta != 0 else 0)

    return proto(gemm)


_BF16 = ("qorus_gemm_bf16", "cblas_gemm_bf16bf16f32_64")
_MKL_SYMBOLS = {np.float32: "cblas_sgemm_64", np.float64: "cblas_dgemm_64"}
_MKL_THREADING = {"sequential": 1, "gnu": 3, "tbb": 4}  # MKL_Set_Threading_Layer values


def mkl_threading() -> str:
    """The threads MKL runs on: numba's own pool where MKL has a layer for it (TBB or GNU OpenMP), so the
    products and the other kernels share one set of workers; else GNU OpenMP, or the calling thread without
    libgomp. Starts numba's pool, which fixes its threading layer."""
    import numba

    numba.get_num_threads()
    if numba.threading_layer() == "tbb":
        return "tbb"
    return "gnu" if ctypes.util.find_library("gomp") else "sequential"


def _one_thread_after_fork(lib) -> None:
    # A forked child inherits GNU OpenMP's pool without its threads and hangs in its first parallel region
    # (numba's own layer then ends such a child anyway); MKL on one thread never enters one.
    os.register_at_fork(after_in_child=lambda: lib.MKL_Set_Num_Threads(1))


def _mkl():
    """The ``mkl`` wheel's ``libmkl_rt`` (in ``sys.prefix/lib``), set to the threads of ``mkl_threading()``;
    None if absent."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for path in sorted(Path(prefix, "lib").glob("libmkl_rt.so*")):
            try:
                lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            if not all(hasattr(lib, n) for n in (*_MKL_SYMBOLS.values(), "MKL_Set_Threading_Layer")):
                continue
            threading = mkl_threading()
            lib.MKL_Set_Threading_Layer(_MKL_THREADING[threading])
            if threading == "gnu":
                _one_thread_after_fork(lib)
            return lib
    return None


def cpu_vendor() -> str:
    """The CPU's vendor id as Linux reports it ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _register_bf16(mkl) -> bool:
    """Point ``qorus_gemm_bf16`` at MKL's bf16 product if ``mkl`` has one (returns True), else the fallback."""
    native = getattr(mkl, _BF16[1], None) if mkl is not None else None
    fn = native if native is not None else _fallback(np.float32, ctypes.c_float, ctypes.c_uint16)
    _keep.append(fn)
    ll.add_symbol(_BF16[0], ctypes.cast(fn, ctypes.c_void_p).value)
    return native is not None


def _register(choice: str, openblas) -> tuple[str, bool]:
    """Point the kernels' gemm names at the library ``choice`` asks for (``openblas``: NumPy's, or None);
    returns its description and whether the bf16 product is MKL's."""
    if choice not in ("auto", "mkl", "openblas"):
        raise ImportError(f"QORUS_BLAS: expected 'auto', 'mkl' or 'openblas', got {choice!r}")
    mkl = _mkl() if choice == "mkl" or (choice == "auto" and cpu_vendor() != "AuthenticAMD") else None
    if choice == "mkl" and mkl is None:
        raise ImportError('QORUS_BLAS=mkl: no MKL found in this environment (pip install "qorus-jit[mkl]")')
    bf16 = _register_bf16(mkl)
    if mkl is not None:
        for dtype, (name, _, _) in _SYMBOLS.items():
            ll.add_symbol(name, ctypes.cast(getattr(mkl, _MKL_SYMBOLS[dtype]), ctypes.c_void_p).value)
        _keep.append(mkl)
        return "Intel MKL", bf16
    source = "numpy's OpenBLAS"
    for dtype, (name, blas_name, ctype) in _SYMBOLS.items():
        fn = getattr(openblas, blas_name, None) if openblas is not None else None
        if fn is None:
            fn, source = _fallback(dtype, ctype), "NumPy fallback (no bundled OpenBLAS found)"
        _keep.append(fn)
        ll.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)
    return source, bf16


def _short_blas_spin(lib) -> bool:
    """Make OpenBLAS's idle workers stop spinning soon, even if NumPy loaded it before ``qorus_jit``.

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` (set by ``qorus_jit/__init__.py`` unless the user set it) when
    it loads, i.e. at ``import numpy``; most scripts import NumPy first. Re-reading the environment and
    stopping the worker pool (it restarts at the next threaded call, with the new timeout) applies it anyway, so
    a product's spinning workers leave the cores to the next numba kernel (docs/design.md, "Threads on a shared
    machine"). Returns whether it applied.
    """
    read_env, shutdown = (getattr(lib, n, None) for n in ("openblas_read_env", "blas_thread_shutdown_"))
    if lib is None or read_env is None or shutdown is None:
        return False
    read_env()
    shutdown()
    return True


_LIB = _numpy_openblas()  # NumPy's OpenBLAS (its ``@``), whether or not the kernels call it
#: Which implementation the BLAS route calls (shown by ``qorus info``), and whether ``qorus_gemm_bf16`` is MKL's.
BLAS_SOURCE, BF16_GEMM = _register(os.environ.get("QORUS_BLAS", "auto").strip().lower() or "auto", _LIB)
_short_blas_spin(_LIB)


def _emit_gemm(context, builder, sig, args, name, scalar, operand_ptr, scalar_type):
    """The call of the row-major gemm ``name`` for an intrinsic typed (c, a, b, beta): ``scalar`` is the IR type of
    alpha and beta (and c's elements), ``operand_ptr`` that of a's and b's data; a C array is read as it is, an F
    array (a transposed C array) transposed."""
    cv, av, bv = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:3], args[:3], strict=True))
    i32, i64 = ir.IntType(32), ir.IntType(64)
    fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, scalar, operand_ptr, i64, operand_ptr, i64,
                                           scalar, scalar.as_pointer(), i64])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    m, n = cgutils.unpack_tuple(builder, cv.shape)
    k = cgutils.unpack_tuple(builder, av.shape)[1]

    def operand(ty, arr):
        rows, cols = cgutils.unpack_tuple(builder, arr.shape)
        # a C array's rows are its leading dimension; an F array (a transposed C array) is read transposed
        trans = ir.Constant(i32, NO_TRANS if ty.layout == "C" else TRANS)
        return trans, cols if ty.layout == "C" else rows

    ta, lda = operand(sig.args[1], av)
    tb, ldb = operand(sig.args[2], bv)
    beta_v = context.cast(builder, args[3], sig.args[3], scalar_type)
    builder.call(fn, (ir.Constant(i32, ROW_MAJOR), ta, tb, m, n, k, ir.Constant(scalar, 1.0), av.data, lda,
                      bv.data, ldb, beta_v, cv.data, n))
    return context.get_dummy_value()


@intrinsic
def gemm(typingctx, c, a, b, beta):
    """c (M, N) = a (M, K) @ b (K, N) + beta * c; a, b C- or F-contiguous (``w.T``), c C-contiguous, M, N, K >= 1."""
    for name, t in (("c", c), ("a", a), ("b", b)):
        if not isinstance(t, types.Array) or t.ndim != 2 or t.dtype not in (types.float32, types.float64):
            raise TypingError(f"gemm: {name} must be a 2-D float32 or float64 array, got {t}")
    if not a.dtype == b.dtype == c.dtype:
        raise TypingError(f"gemm: c, a and b must share one dtype, got {c.dtype}, {a.dtype}, {b.dtype}")
    if a.layout not in "CF" or b.layout not in "CF" or c.layout != "C":
        raise TypingError(f"gemm: needs C- or F-contiguous a and b and a C-contiguous c, got {a}, {b}, {c}")
    if not isinstance(beta, types.Number):
        raise TypingError(f"gemm: beta must be a number, got {beta}")
    if types.intp.bitwidth != 64:
        raise TypingError("gemm: needs a 64-bit platform (64-bit BLAS sizes)")
    dtype = c.dtype
    name = _SYMBOLS[np.float32 if dtype == types.float32 else np.float64][0]

    def codegen(context, builder, sig, args):
        elt = context.get_value_type(dtype)
        return _emit_gemm(context, builder, sig, args, name, elt, elt.as_pointer(), dtype)

    return types.none(c, a, b, beta), codegen


@intrinsic
def gemm_bf16(typingctx, c, a, b, beta):
    """c (M, N) = a (M, K) @ b (K, N) + beta * c with a, b bf16 bits (uint16, C- or F-contiguous: ``w16.T``) and c
    float32 C-contiguous (float32 sums); M, N, K >= 1. MKL's where ``BF16_GEMM``, else the NumPy fallback."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, types.Array) or t.ndim != 2 or t.dtype != types.uint16 or t.layout not in "CF":
            raise TypingError(f"gemm_bf16: {name} must be a 2-D C- or F-contiguous uint16 array, got {t}")
    if not isinstance(c, types.Array) or c.ndim != 2 or c.dtype != types.float32 or c.layout != "C":
        raise TypingError(f"gemm_bf16: c must be a 2-D C-contiguous float32 array, got {c}")
    if not isinstance(beta, types.Number):
        raise TypingError(f"gemm_bf16: beta must be a number, got {beta}")
    if types.intp.bitwidth != 64:
        raise TypingError("gemm_bf16: needs a 64-bit platform (64-bit BLAS sizes)")

    def codegen(context, builder, sig, args):
        return _emit_gemm(context, builder, sig, args, _BF16[0], ir.FloatType(), ir.IntType(16).as_pointer(),
                          types.float32)

    return types.none(c, a, b, beta), codegen
