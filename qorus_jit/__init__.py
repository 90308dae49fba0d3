"""Qorus: a JIT-compiled, pure-Python deep-learning framework on numba kernels."""

from .config import DTYPE, FASTMATH, get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = ["DTYPE", "FASTMATH", "get_num_threads", "set_num_threads", "__version__"]
