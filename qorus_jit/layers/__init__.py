"""Layers: plain Python classes over the cached kernels, behind one small protocol (see ``base.Layer``)."""

from .activations import GELU, ReLU, SiLU, Softmax, Swish
from .attention import DecodeState, KVCache, MultiHeadAttention
from .base import Layer
from .block import TransformerBlock
from .embedding import Embedding
from .feedforward import FeedForward
from .graph import Add, Graph, Sequential
from .linear import Linear
from .norm import LayerNorm, RMSNorm

__all__ = [
    "GELU", "Add", "DecodeState", "Embedding", "FeedForward", "Graph", "KVCache", "Layer", "LayerNorm", "Linear",
    "MultiHeadAttention", "RMSNorm", "ReLU", "Sequential", "SiLU", "Softmax", "Swish", "TransformerBlock",
]
