"""What this machine gives the kernels: versions, threads, CPU and SIMD, BLAS, the numba cache."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

#: SIMD features worth reporting, in the order shown.
SIMD_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
                 "avxvnni", "avx512bf16", "amx-tile")


def quantized_kernels(features: dict) -> dict:
    """The instruction path each quantized weight format's kernels use here (``kernels.quant.kernel_paths``),
    why a portable one is used, in words, and how prompts (several tokens) multiply."""
    from qorus_jit.kernels.quant import kernel_paths

    paths = kernel_paths()
    note = ""
    if os.environ.get("QORUS_PORTABLE", "") not in ("", "0"):
        note = "QORUS_PORTABLE is set: portable paths forced"
    else:
        lacks = [name for fmt, name, flags in (("q8_0", "AVX-512 VNNI or AVX-VNNI", ("avx512vnni", "avxvnni")),
                                                ("bf16", "AVX512_BF16", ("avx512bf16",)))
                 if paths[fmt] == "portable" and not any(features.get(f, False) for f in flags)]
        if lacks:
            note = f"this CPU has no {' or '.join(lacks)}: the portable (AVX2) paths instead"
        elif paths["bf16"] == "portable" and features.get("avx512bf16", False):
            note = "bf16 multiplies in float32, faster here than vdpbf16ps: QORUS_VDPBF16PS=1 picks that"
    from qorus_jit.kernels import quant

    n = quant.PANEL_TOKENS
    prompts = (f"float32, MKL's product on dequantized panels from {n} tokens (tiles below)"
               if quant.prompt_route(n, "q8_0", 0) == "panels" else "float32 tiles")
    if quant.prompt_route(n, "bf16") == "bf16 products":
        prompts += (f"; bf16 weights: MKL's bf16 product from {n} tokens (x as two bf16 numbers); int8 weights: "
                    f"MKL's bf16 product from 2^{quant.PAIR_WORK.bit_length() - 1} multiply-adds (W as two bf16 "
                    "numbers, x as one)")
    return {"paths": paths, "note": note, "prompts": prompts}


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
                     "threads": lib.get("num_threads"), "threading": lib.get("threading_layer"),
                     "architecture": lib.get("architecture"),
                     "path": path})
    return rows


def _probe():
    """A function for numba's cache locators, which ask one for its first line."""


def _locator(py_file: Path):
    """The cache locator numba picks for a function in ``py_file``: NUMBA_CACHE_DIR when set, else a
    ``__pycache__`` beside the file when it is writable, else the user-wide cache (``~/.cache/numba``)."""
    from numba.core.caching import CompileResultCacheImpl

    for cls in CompileResultCacheImpl._locator_classes:
        locator = cls.from_function(_probe, str(py_file))
        if locator is not None:
            return locator
    return None


def cache_dirs() -> list[Path]:
    """The folders numba caches qorus_jit's compiled kernels in, one per source folder (as numba finds them:
    a cold process looks there for an index file per kernel, ``NAME-LINE.pyXY.nbi``)."""
    package = Path(__file__).parent
    files = {p.parent: p for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}
    found = (_locator(f) for f in files.values())
    return sorted({Path(loc.get_cache_path()) for loc in found if loc is not None})


def cache_location() -> str:
    """Where numba caches the compiled kernels: ``NUMBA_CACHE_DIR`` when set, else the ``__pycache__`` beside each
    kernel module, or a line saying that numba cannot cache here."""
    import numba

    if numba.config.CACHE_DIR:
        return numba.config.CACHE_DIR
    kernels = _locator(Path(__file__).parent / "kernels" / "matmul.py")
    where = Path(kernels.get_cache_path()) if kernels else None
    if where == Path(__file__).parent / "kernels" / "__pycache__":
        return f"{where} (beside each kernel module)"
    return str(where.parent) if where else "none (numba cannot cache here)"


def kernel_cached(dispatcher, dtype) -> bool:
    """Whether numba's cache holds machine code of ``dispatcher`` (a cached numba function) for this CPU and
    its current source, for a first argument of ``dtype``: what its first call in a fresh process would load
    instead of compiling."""
    cache = dispatcher._cache
    _, machine, code = cache._index_key((), dispatcher.targetctx.codegen())
    for sig, key_machine, key_code in cache._cache_file._load_index():
        first = getattr(sig[0], "dtype", sig[0]) if sig else None
        if key_machine == machine and key_code == code and str(first) == np.dtype(dtype).name:
            return True
    return False


def clear_kernel_cache() -> tuple[int, str]:
    """Delete numba's cache files (``*.nbi``, ``*.nbc``) of qorus_jit's kernels; returns (count, where)."""
    import numba

    roots = cache_dirs()
    where = numba.config.CACHE_DIR or (str(Path(__file__).parent) if all(
        Path(__file__).parent in r.parents for r in roots) else ", ".join(str(r) for r in roots))
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

    from qorus_jit.core.numerics import FASTMATH, auto_threads
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
            "policy": "auto" if auto_threads() else "fixed",
            "cpu_count": os.cpu_count(),
        },
        "cpu": {
            "model": _cpu_model(),
            "llvm_target": ll.get_host_cpu_name(),
            "simd": [f for f in SIMD_FEATURES if features.get(f, False)],
        },
        "blas": _blas_libraries(),
        "quantized_kernels": quantized_kernels(features),
        "numba_cache": cache_location(),
        "fastmath": sorted(FASTMATH),
    }
