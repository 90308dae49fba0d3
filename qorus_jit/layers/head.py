"""Language-model head tied to an embedding: ``logits = x @ embedding.weight.T``."""

from __future__ import annotations

from qorus_jit.kernels import trusted as K
from qorus_jit.kernels.decode import one_row
from qorus_jit.layers.base import Layer, check_input
from qorus_jit.layers.embedding import Embedding


class TiedLMHead(Layer):
    """``(..., dim) -> (..., vocab)`` with the weight of ``embedding``: it owns no parameter, and its
    weight gradient accumulates into the embedding's (the tied weight is listed once, by the embedding);
    with that weight frozen, backward computes ``dx`` alone."""

    rowwise = True

    def __init__(self, embedding: Embedding):
        super().__init__()
        if not isinstance(embedding, Embedding):
            raise TypeError(f"embedding: expected an Embedding, got {type(embedding).__name__}")
        self.embedding = embedding
        self._x = None
        self.one_row: bool | None = None  # as :attr:`Linear.one_row`

    def forward(self, x):
        """``x (..., dim)`` float32 -> logits ``(..., vocab)`` = ``x @ embedding.weight.T`` (one row: a matrix-vector
        product). Raises ValueError when the last axis is not ``dim``."""
        w = self.embedding.weight
        V, C = w.shape
        check_input("x", x, C)
        y = self.buffer("y", x.shape[:-1] + (V,))
        if x.size == C:  # one row (decoding): a matrix-vector product, not a BLAS gemm
            K.matvec(y.reshape(-1), w, x.reshape(-1), one_row() if self.one_row is None else self.one_row)
        else:
            K.linear_forward(y.reshape(-1, V), x.reshape(-1, C), w, None)
        self._x = x.view()  # a view of its own: the caller may reshape its array in place (x.shape = ...)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy (..., vocab)`` -> ``dx (..., dim)``; the weight gradient accumulates into the embedding's unless its
        weight is frozen. Takes none of the backward variants. Raises RuntimeError before a forward, ValueError for a
        ``dy`` whose rows differ from the input's."""
        self.check_variants(out, accumulate, residual)
        if self._x is None:
            raise RuntimeError("TiedLMHead.backward called before forward")
        w = self.embedding.weight
        V, C = w.shape
        check_input("dy", dy, V)
        if dy.shape[:-1] != self._x.shape[:-1]:  # the kernel reads as many rows of dy as x has
            raise ValueError(f"dy: expected shape {self._x.shape[:-1] + (V,)}, got {dy.shape}")
        dx = self.buffer("dx", self._x.shape)
        if self.embedding.requires_grad("weight"):
            K.linear_backward_into(dx.reshape(-1, C), self.embedding.grad("weight"), None, dy.reshape(-1, V),
                                  self._x.reshape(-1, C), w, 0.0)
        else:  # frozen: dx = dy @ weight alone (the vocab x dim weight gradient costs as much again)
            K.gemm_blas(dx.reshape(-1, C), dy.reshape(-1, V), w, 0.0)
        return dx
