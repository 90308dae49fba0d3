"""Qorus: a JIT-compiled, pure-Python deep-learning framework on numba kernels."""

from .config import DTYPE, FASTMATH, get_num_threads, set_num_threads
from .embeddings import embed
from .generate import generate, generate_text
from .llama2c import load_llama2c, save_llama2c
from .models import load_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "DTYPE", "FASTMATH", "embed", "generate", "generate_text", "get_num_threads", "load_llama2c", "load_pretrained",
    "save_llama2c", "save_pretrained", "set_num_threads", "__version__",
]
