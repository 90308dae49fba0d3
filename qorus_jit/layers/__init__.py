"""Layers: plain Python classes over the cached kernels, behind one small protocol (see ``base.Layer``)."""

from qorus_jit.layers.activations import GELU, Activation, ReLU, SiLU, Softmax, Swish
from qorus_jit.layers.attention import DecodeState, KVCache, MultiHeadAttention
from qorus_jit.layers.base import Layer
from qorus_jit.layers.block import TransformerBlock
from qorus_jit.layers.embedding import Embedding, PositionEmbedding
from qorus_jit.layers.feedforward import FeedForward
from qorus_jit.layers.graph import Add, Graph, Sequential
from qorus_jit.layers.linear import Linear
from qorus_jit.layers.lora import LoRALinear, apply_lora, load_lora, merge_lora, save_lora
from qorus_jit.layers.norm import LayerNorm, RMSNorm
from qorus_jit.layers.quantized import QuantizedEmbedding, QuantizedLinear

__all__ = [
    "GELU", "Activation", "Add", "DecodeState", "Embedding", "FeedForward", "Graph", "KVCache", "Layer", "LayerNorm",
    "Linear", "LoRALinear", "MultiHeadAttention", "PositionEmbedding", "QuantizedEmbedding", "QuantizedLinear",
    "RMSNorm", "ReLU", "Sequential", "SiLU", "Softmax", "Swish", "TransformerBlock", "apply_lora", "load_lora",
    "merge_lora", "save_lora",
]
