"""Layers: plain Python classes over the cached kernels, behind one small protocol (see ``base.Layer``)."""

from .activations import GELU, ReLU, SiLU, Softmax, Swish
from .base import Layer
from .embedding import Embedding
from .linear import Linear
from .norm import LayerNorm, RMSNorm

__all__ = ["GELU", "Embedding", "Layer", "LayerNorm", "Linear", "RMSNorm", "ReLU", "SiLU", "Softmax", "Swish"]
