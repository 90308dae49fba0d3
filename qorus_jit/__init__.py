"""Qorus: a JIT-compiled, pure-Python deep-learning framework on numba kernels."""

import os as _os

# Threads that wait must not spin for long: numba's OpenMP workers and NumPy's OpenBLAS workers take turns
# on the same cores, and a worker spinning after its region keeps the other library's thread off the core.
# Measured on a Llama training step (dim 256, 4 layers, batch 8 x 256, 2 threads): 0.70 s with the default
# spinning, 0.51 s with these, 0.34-0.38 s with OpenMP never spinning (OMP_WAIT_POLICY=PASSIVE), which in turn
# made single-token decoding 35% slower (docs/design.md). The libraries read these when they load: OpenMP at
# the first parallel kernel, OpenBLAS at ``import numpy``, so kernels/_blas.py re-applies the OpenBLAS one
# when NumPy came first. Values already set win.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from qorus_jit.core.numerics import DTYPE, FASTMATH, get_num_threads, set_num_threads
from qorus_jit.infer.embeddings import embed
from qorus_jit.infer.generate import generate, generate_text
from qorus_jit.models import load_pretrained, save_pretrained
from qorus_jit.models.llama import load_llama2c, save_llama2c

__version__ = "0.1.0"

__all__ = [
    "DTYPE", "FASTMATH", "embed", "generate", "generate_text", "get_num_threads", "load_llama2c", "load_pretrained",
    "save_llama2c", "save_pretrained", "set_num_threads", "__version__",
]
