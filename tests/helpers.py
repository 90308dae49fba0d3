"""Shared test helpers: random data, central finite differences, the optional torch reference, and fresh
processes on a numba cache of their own."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def rand(rng, *shape, dtype=np.float32, scale=1.0):
    """Standard-normal array of ``shape`` times ``scale``, C-contiguous, in ``dtype``."""
    return (rng.standard_normal(shape) * scale).astype(dtype)


def fd_grad(loss, x, eps=1e-6):
    """Central finite differences of the scalar ``loss()`` with respect to the array ``x`` (float64 for kernel
    tests; float32 layers need a larger ``eps``, such as 1e-2).

    ``x`` is perturbed in place, one element at a time, and restored. Returns float64.
    """
    g = np.zeros(x.shape, np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        xp, lp = np.float64(flat[i]), loss()
        flat[i] = old - eps
        xm, lm = np.float64(flat[i]), loss()
        flat[i] = old
        gflat[i] = (lp - lm) / (xp - xm)  # the step the array actually stored (float32 rounds x +- eps)
    return g


def assert_close(got, want, rtol=1e-5, atol=1e-5, what=""):
    """``np.testing.assert_allclose`` with the project's default float32 tolerances."""
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def torch_or_skip():
    """Import torch for parity tests. Skips locally without torch; fails in CI, where it must run."""
    try:
        import torch
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("torch is required in CI for parity tests (pip install torch==2.13.0)")
        pytest.skip("torch not installed")
    torch.set_num_threads(1)
    return torch


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """The module ``examples/<name>.py``, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_digits():
    """All digits (pixels / 16) and the row indices of the documented split: the last round(0.2 N) of
    ``np.random.default_rng(0).permutation(N)`` are held out for testing, the others train."""
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    n_test = round(len(perm) * 0.2)
    return d.data / 16.0, d.target, perm[:-n_test], perm[-n_test:]


ROOT = Path(__file__).resolve().parent.parent


def run_on_cache(cache_dir, code: str, *args, timeout: float = 1800) -> subprocess.CompletedProcess:
    """``python -c code args...`` in a fresh process from the repository root, with ``NUMBA_CACHE_DIR=cache_dir``
    (the shared cache stays untouched); its output captured as text."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
