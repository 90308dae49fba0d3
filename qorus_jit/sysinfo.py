"""What this machine gives the kernels: versions, threads, CPU and SIMD, BLAS, the numba cache."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

#: SIMD features worth reporting, in the order shown.
SIMD_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                 "avx512bf16", "amx-tile")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _blas_libraries() -> list[dict]:
    """BLAS libraries loaded: NumPy's (``@``, and the kernels' BLAS route when that is OpenBLAS) and MKL."""
    from threadpoolctl import threadpool_info

    from qorus_jit.kernels._blas import BLAS_SOURCE

    rows = []
    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        path = lib.get("filepath", "")
        folder = Path(path).parent.name
        if "numpy" in folder:
            used_by = "numpy (@) and qorus kernels" if BLAS_SOURCE == "numpy's OpenBLAS" else "numpy (@)"
        elif lib.get("internal_api") == "mkl" and BLAS_SOURCE == "Intel MKL":
            used_by = "qorus kernels"
        else:
            used_by = "scipy" if "scipy" in folder else "other"
        rows.append({"used_by": used_by, "library": lib.get("internal_api"), "version": lib.get("version"),
                     "threads": lib.get("num_threads"), "architecture": lib.get("architecture"),
                     "path": path})
    return rows


def _cache_dir() -> str:
    import numba

    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    return str(Path(__file__).parent / "kernels" / "__pycache__") + " (beside each kernel module)"


def clear_kernel_cache() -> tuple[int, str]:
    """Delete numba's cache files (``*.nbi``, ``*.nbc``) of qorus_jit's kernels; returns (count, where)."""
    import numba
    from numba.core.caching import _CacheLocator

    package = Path(__file__).parent
    source_dirs = sorted({p.parent for p in package.rglob("*.py")})
    if numba.config.CACHE_DIR:
        # numba keeps one folder per source folder below CACHE_DIR, named by the folder and a hash of its path
        where = numba.config.CACHE_DIR
        roots = [Path(where) / _CacheLocator.get_suitable_cache_subpath(str(d / "x.py")) for d in source_dirs]
    else:
        roots, where = [d / "__pycache__" for d in source_dirs], str(package)
    n = 0
    for root in roots:
        for pattern in ("*.nbi", "*.nbc"):
            for f in root.glob(pattern):
                f.unlink(missing_ok=True)
                n += 1
    return n, where


def collect() -> dict:
    """Everything ``qorus info`` shows, as a dict."""
    import llvmlite
    import llvmlite.binding as ll
    import numba
    import numpy as np

    from qorus_jit.core.numerics import FASTMATH
    from qorus_jit.kernels.elementwise import add_forward

    # numba picks its threading layer at the first parallel call: make one.
    x = np.zeros(4, np.float32)
    add_forward(x, x, x)

    features = ll.get_host_cpu_features()
    return {
        "versions": {
            "qorus_jit": metadata.version("qorus-jit"),
            "python": platform.python_version(),
            "numba": numba.__version__,
            "llvmlite": llvmlite.__version__,
            "numpy": np.__version__,
            "click": metadata.version("click"),
        },
        "threads": {
            "numba_threading_layer": numba.threading_layer(),
            "numba_threads": numba.get_num_threads(),
            "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
            "cpu_count": os.cpu_count(),
        },
        "cpu": {
            "model": _cpu_model(),
            "llvm_target": ll.get_host_cpu_name(),
            "simd": [f for f in SIMD_FEATURES if features.get(f, False)],
        },
        "blas": _blas_libraries(),
        "numba_cache": _cache_dir(),
        "fastmath": sorted(FASTMATH),
    }
