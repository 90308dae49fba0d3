"""Embedding layer: ``y = weight[ids]`` for integer ids; backward scatters into the weight gradient."""

from __future__ import annotations

import math

import numpy as np

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_index, check_nonnegative, check_positive, check_rng
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.attention import DecodeState
from qorus_jit.layers.base import Layer, check_input


class Embedding(Layer):
    """``ids (...) -> (..., dim)`` from ``weight (num_embeddings, dim)``, initialised N(0, 1) as torch."""

    incremental = True  # each position's row from its own id

    def __init__(self, num_embeddings: int, dim: int, rng=None):
        super().__init__()
        check_positive(num_embeddings=num_embeddings, dim=dim)
        self.num_embeddings, self.dim = int(num_embeddings), int(dim)
        check_fits("parameters", self.num_embeddings * self.dim, num_embeddings=num_embeddings, dim=dim)
        weight = check_rng("rng", rng).standard_normal((self.num_embeddings, self.dim))
        self.weight = self.add_parameter("weight", weight, decay=False)  # embeddings take no weight decay
        self._ids = None

    def forward(self, ids):
        """``ids`` (an integer array of any shape, at least one axis, each in ``0..num_embeddings-1``) -> ``(*ids.shape,
        dim)`` float32 rows of the weight. The ids are copied (backward scatters into their rows). Raises TypeError
        for a non-array or a 0-d one, ValueError naming the first id out of range."""
        if not isinstance(ids, np.ndarray) or isinstance(ids, np.ma.MaskedArray) or ids.ndim < 1:
            raise TypeError(f"ids: expected an integer numpy array with at least one axis, got {type(ids).__name__}")
        # a copy the layer owns (ids are small): backward scatters into the gradient at these rows unchecked, so
        # the caller changing its array between forward and backward must not move them (out of range: a crash)
        ids = np.array(ids, order="C", copy=True)
        check_index("ids", ids, tuple(f"d{i}" for i in range(ids.ndim)), self.num_embeddings)
        y = self.buffer("y", ids.shape + (self.dim,))
        K.embedding_forward(y.reshape(ids.size, self.dim), ids.reshape(-1), self.weight)
        self._ids = ids
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Accumulates into the weight gradient (nothing when it is frozen); ids take no gradient, so returns
        None."""
        self.check_variants(out, accumulate, residual)
        if self._ids is None:
            raise RuntimeError("Embedding.backward called before forward")
        check_input("dy", dy, self.dim)
        if dy.shape != self._ids.shape + (self.dim,):
            raise ValueError(f"dy: expected shape {self._ids.shape + (self.dim,)}, got {dy.shape}")
        if self.requires_grad("weight"):
            K.embedding_backward(self._grads["weight"], dy.reshape(self._ids.size, self.dim), self._ids.reshape(-1))
        return None

    def extra_repr(self) -> str:
        """``num_embeddings, dim``, as ``repr`` shows them."""
        return f"{self.num_embeddings}, {self.dim}"


class PositionEmbedding(Layer):
    """Learned positions: ``y = x + weight[pos : pos + T]`` for ``x (B, T, dim)`` (GPT-2's ``wpe``, BERT's
    ``position_embeddings``). ``pos`` (default 0) is the first position, for decoding after a cache."""

    incremental = True  # decodes from state.pos

    def __init__(self, max_positions: int, dim: int, rng=None):
        super().__init__()
        check_positive(max_positions=max_positions, dim=dim)
        self.max_positions, self.dim = int(max_positions), int(dim)
        check_fits("parameters", self.max_positions * self.dim, max_positions=max_positions, dim=dim)
        weight = check_rng("rng", rng).standard_normal((self.max_positions, self.dim))
        self.weight = self.add_parameter("weight", weight, decay=False)
        self._span = None

    def forward(self, x, pos: int = 0):
        """``x (..., T, dim)`` (three axes or more) plus the learned rows of positions ``pos .. pos+T-1``. Raises
        ValueError when ``pos + T > max_positions`` or ``pos < 0``."""
        check_input("x", x, self.dim, min_ndim=3)
        check_nonnegative(pos=pos)
        pos, T = int(pos), x.shape[-2]
        if pos + T > self.max_positions:
            raise ValueError(f"x: positions {pos}..{pos + T - 1} exceed max_positions = {self.max_positions}")
        y = self.buffer("y", x.shape)
        np.add(x, self.weight[pos:pos + T], out=y)
        self._span = (pos, T, x.shape)
        return y

    def forward_decode(self, x, *, state):
        """:meth:`forward` at the positions ``state.pos ..`` of incremental decoding."""
        DecodeState.check(state)
        return self.forward(x, state.pos)

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy`` shaped as the last input -> ``dy`` itself (the addition passes it on); adds its sum over the batch
        axes to the gradient of the positions' rows unless the weight is frozen. Raises RuntimeError before a
        forward, ValueError for a ``dy`` of another shape."""
        self.check_variants(out, accumulate, residual)
        if self._span is None:
            raise RuntimeError("PositionEmbedding.backward called before forward")
        pos, T, shape = self._span
        check_input("dy", dy, self.dim)
        if dy.shape != shape:
            raise ValueError(f"dy: expected shape {shape}, got {dy.shape}")
        if self.requires_grad("weight"):  # frozen: no gradient, dy passes through
            self._grads["weight"][pos:pos + T] += dy.reshape(math.prod(shape[:-2]), T, self.dim).sum(axis=0)
        return dy

    def extra_repr(self) -> str:
        """``max_positions, dim``, as ``repr`` shows them."""
        return f"{self.max_positions}, {self.dim}"
