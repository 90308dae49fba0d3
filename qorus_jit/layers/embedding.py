"""Embedding layer: ``y = weight[ids]`` for integer ids; backward scatters into the weight gradient."""

from __future__ import annotations

import numpy as np

from .._check import check_index, check_positive
from ..kernels.embedding import _embedding_backward, _embedding_forward
from .base import Layer, check_input


class Embedding(Layer):
    """``ids (...) -> (..., dim)`` from ``weight (num_embeddings, dim)``, initialised N(0, 1) as torch."""

    def __init__(self, num_embeddings: int, dim: int, rng=None):
        super().__init__()
        check_positive(num_embeddings=num_embeddings, dim=dim)
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = self.add_parameter("weight", np.random.default_rng(rng).standard_normal((num_embeddings, dim)))
        self._ids = None

    def forward(self, ids):
        if not isinstance(ids, np.ndarray) or ids.ndim < 1:
            raise TypeError(f"ids: expected an integer numpy array with at least one axis, got {type(ids).__name__}")
        check_index("ids", ids, tuple(f"d{i}" for i in range(ids.ndim)), self.num_embeddings)
        y = self.buffer("y", ids.shape + (self.dim,))
        _embedding_forward(y.reshape(-1, self.dim), ids.reshape(-1), self.weight)
        self._ids = ids
        return y

    def backward(self, dy):
        """Accumulates into the weight gradient; ids take no gradient, so returns None."""
        if self._ids is None:
            raise RuntimeError("Embedding.backward called before forward")
        check_input("dy", dy, self.dim)
        if dy.shape != self._ids.shape + (self.dim,):
            raise ValueError(f"dy: expected shape {self._ids.shape + (self.dim,)}, got {dy.shape}")
        _embedding_backward(self._grads["weight"], dy.reshape(-1, self.dim), self._ids.reshape(-1))
        return None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"
