"""The shared numerics: fastmath flags keep NaN/inf meaningful, one place sets them, threads are controlled."""

import math
import re
from pathlib import Path

import numba
import numpy as np
import pytest

import qorus_jit
from qorus_jit.core.numerics import FASTMATH, SERIAL_WORK, for_chunks, kernel

PACKAGE = Path(qorus_jit.__file__).parent


@kernel
def _count_nan(x):
    n = 0
    for i in range(x.shape[0]):
        if np.isnan(x[i]):
            n += 1
    return n


@kernel
def _count_inf(x):
    n = 0
    for i in range(x.shape[0]):
        if np.isinf(x[i]):
            n += 1
    return n


@kernel
def _masked_row_max(x, keep):
    m = -np.inf
    for i in range(x.shape[0]):
        v = x[i] if keep[i] else -np.inf
        if v > m:
            m = v
    return m


@kernel(parallel=True)
def _sum_is_nan(x):
    s = 0.0
    for i in numba.prange(x.shape[0]):
        s += x[i]
    return np.isnan(s)


@kernel
def _record_range(calls, lo, hi):
    calls[lo, 0] = lo
    calls[lo, 1] = hi


@kernel(parallel=True)
def _record_chunks(calls, items, per, work):
    for_chunks(_record_range, (calls,), items, per, work)


def test_flags_leave_out_nnan_and_ninf():
    assert "nnan" not in FASTMATH and "ninf" not in FASTMATH and "fast" not in FASTMATH
    assert {"contract", "reassoc"} <= FASTMATH


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isnan_and_isinf_survive_the_flags(dtype):
    x = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, np.nan, 0.0], dtype)
    assert _count_nan(x) == 2
    assert _count_inf(x) == 2
    assert _sum_is_nan(x)
    assert not _sum_is_nan(np.ones(1000, dtype))


def test_minus_inf_mask_is_exact():
    x = np.array([3.0, 5.0, 1.0], np.float32)
    assert _masked_row_max(x, np.array([True, False, True])) == 3.0
    assert _masked_row_max(x, np.array([False, False, False])) == -math.inf


def test_no_module_spells_its_own_fastmath_or_njit():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "numerics.py":
            continue
        text = path.read_text()
        for pat in (r"fastmath\s*=", r"@n?jit\b", r"numba\.n?jit\(", r"import .*\bn?jit\b"):
            if re.search(pat, text):
                offenders.append(f"{path.relative_to(PACKAGE)}: {pat}")
    assert offenders == []


def test_every_kernel_is_cached_with_the_shared_flags():
    import importlib
    import pkgutil

    import qorus_jit.kernels as kernels

    found = 0
    for mod in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"qorus_jit.kernels.{mod.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == module.__name__:
                found += 1
                assert obj.targetoptions.get("cache") is None or obj._cache is not None, name
                assert not isinstance(obj._cache, numba.core.caching.NullCache), f"{mod.name}.{name} not cached"
                assert set(obj.targetoptions["fastmath"]) == set(FASTMATH), f"{mod.name}.{name}"
    assert found >= 6


def test_every_parallel_kernel_runs_small_work_serially():
    """Each ``parallel=True`` kernel splits its work through the one helper, ``numerics.for_chunks`` (or
    ``for_rows`` over it), which runs work up to ``SERIAL_WORK`` on the calling thread (the family tests run
    every kernel below and above it), and spells no ``prange`` of its own. Not yet covered: matmul keeps its own
    threshold in multiply-adds, checked by ``_gemm_numba`` before it calls the parallel block kernels (bmm has
    none), and decode's fused Llama block (about 1M multiply-adds per call already at the stories15M shape)."""
    import importlib
    import inspect
    import pkgutil

    import qorus_jit.kernels as kernels
    from qorus_jit.core import numerics

    assert isinstance(SERIAL_WORK, int) and SERIAL_WORK >= 1
    assert re.search(r"if work <= SERIAL_WORK\b", inspect.getsource(numerics.for_chunks.py_func))
    assert "for_chunks(" in inspect.getsource(numerics.for_rows.py_func)
    found, missing = 0, []
    for mod in pkgutil.iter_modules(kernels.__path__):
        if mod.name in ("matmul", "decode"):
            continue
        module = importlib.import_module(f"qorus_jit.kernels.{mod.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == module.__name__
                    and obj.targetoptions.get("parallel")):
                found += 1
                src = inspect.getsource(obj.py_func)
                uses = [h for h in ("for_chunks", "for_rows") if re.search(rf"\b{h}\(", src)]
                for h in uses:
                    assert getattr(module, h) is getattr(numerics, h), f"{mod.name}.{h}"
                if not uses or "prange" in src or "SERIAL_WORK" in src:
                    missing.append(f"{mod.name}.{name}")
    assert found >= 30
    assert missing == []


@pytest.mark.parametrize("items, per, work", [(0, 4, 0), (1, 1, 10**9), (7, 3, SERIAL_WORK), (10, 4, 10),
                                              (10, 4, SERIAL_WORK + 1), (10, 3, 10**9), (3, 4, 10**9)])
def test_for_chunks_calls_once_when_serial_else_per_fixed_chunk(items, per, work):
    """One call over all items when the work is small or one chunk holds them all, else one call per chunk of
    ``per`` items (fixed by the sizes, whatever the thread count)."""
    calls = np.full((max(items, 1), 2), -1, np.int64)
    _record_chunks(calls, items, per, work)
    got = [tuple(r) for r in calls if r[0] >= 0]
    if work <= SERIAL_WORK or items <= per:
        assert got == [(0, items)]
    else:
        assert got == [(lo, min(items, lo + per)) for lo in range(0, items, per)]


def test_set_num_threads_controls_numba_and_blas():
    from threadpoolctl import threadpool_info

    before = qorus_jit.get_num_threads()
    try:
        qorus_jit.set_num_threads(1)
        assert numba.get_num_threads() == 1
        assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
    finally:
        qorus_jit.set_num_threads(before)
    with pytest.raises(ValueError, match="n: expected 'auto' or an int between 1 and"):
        qorus_jit.set_num_threads(0)
    with pytest.raises(ValueError, match="n: expected 'auto' or an int"):
        qorus_jit.set_num_threads(10_000)


def test_every_public_kernel_function_is_documented():
    import importlib
    import inspect
    import pkgutil

    import qorus_jit.kernels as kernels

    doc = (PACKAGE.parent / "docs" / "kernels.md").read_text()
    missing = []
    for mod in pkgutil.iter_modules(kernels.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"qorus_jit.kernels.{mod.name}")
        for name, obj in vars(module).items():
            if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == module.__name__:
                assert obj.__doc__, f"{mod.name}.{name} has no docstring"
                if f"`{name}(" not in doc:
                    missing.append(f"{mod.name}.{name}")
    assert missing == [], "add these to docs/kernels.md"


@pytest.mark.parametrize("env, expected", [({}, 4), ({"OPENBLAS_THREAD_TIMEOUT": "12"}, 12)])
def test_blas_worker_spin_is_short_even_when_numpy_comes_first(env, expected):
    """OpenBLAS reads its spin timeout when NumPy loads it; qorus_jit re-applies it (unless the user set one)."""
    import os
    import subprocess
    import sys

    code = ("import numpy, qorus_jit\n"
            "from qorus_jit.kernels._blas import _LIB\n"
            "print(_LIB.openblas_thread_timeout() if _LIB is not None else 'none')")
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout.split()[-1]
    if out == "none":
        pytest.skip("NumPy has no bundled OpenBLAS here")
    assert int(out) == expected
