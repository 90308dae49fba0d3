"""Qorus: a JIT-compiled, pure-Python deep-learning framework on numba kernels."""

from .config import DTYPE, FASTMATH, get_num_threads, set_num_threads
from .models import load_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "DTYPE", "FASTMATH", "get_num_threads", "load_pretrained", "save_pretrained", "set_num_threads", "__version__",
]
