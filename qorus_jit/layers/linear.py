"""Linear layer: ``y = x @ weight.T + bias`` over the last axis (``nn.Linear`` layout and init)."""

from __future__ import annotations

import math

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_bool, check_positive, check_rng
from qorus_jit.kernels import trusted as K
from qorus_jit.kernels.decode import one_row
from qorus_jit.layers.base import Layer, check_input, input_grad_buffer


class Linear(Layer):
    """``(..., in_features) -> (..., out_features)``; parameters ``weight (out, in)`` and ``bias (out,)``.

    Initialised as ``nn.Linear``: uniform in ``+-1/sqrt(in_features)``; ``rng`` is a seed or a
    ``numpy.random.Generator``.
    """

    rowwise = True
    backward_variants = frozenset({"out", "accumulate"})

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        check_positive(in_features=in_features, out_features=out_features)
        check_bool(bias=bias)
        in_features = self.in_features = int(in_features)
        out_features = self.out_features = int(out_features)
        check_fits("parameters", (in_features + 1) * out_features, in_features=in_features, out_features=out_features)
        rng = check_rng("rng", rng)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = self.add_parameter("weight", rng.uniform(-bound, bound, (out_features, in_features)))
        self.bias = self.add_parameter("bias", rng.uniform(-bound, bound, out_features), decay=False) if bias else None
        self._x = None
        #: how a one-row product reads W (the ``one_row`` of ``kernels.trusted.matvec``); None: this CPU's way. A model
        #: sets it for its size when it decodes (``Architecture.decode_one``)
        self.one_row: bool | None = None

    def forward(self, x):
        """``x (..., in_features)`` float32 -> ``(..., out_features)`` = ``x @ weight.T + bias`` in a buffer of the
        layer (one row: a matrix-vector product). Raises ValueError when the last axis is not ``in_features``,
        TypeError for an array that is not float32."""
        check_input("x", x, self.in_features)
        y = self.buffer("y", x.shape[:-1] + (self.out_features,))
        if x.size == self.in_features:  # one row (decoding): a matrix-vector product, not a BLAS gemm
            K.matvec(y.reshape(-1), self.weight, x.reshape(-1), one_row() if self.one_row is None else self.one_row)
            if self.bias is not None:
                y.reshape(-1)[...] += self.bias
        else:
            K.linear_forward(y.reshape(-1, self.out_features), x.reshape(-1, self.in_features), self.weight,
                            self.bias)
        self._x = x.view()  # a view of its own: the caller may reshape its array in place (x.shape = ...)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Accumulate the weight (and bias) gradients and return ``dx``: written into a buffer of the layer, or
        into ``out`` (shaped as the input) when given, added to what ``out`` holds if ``accumulate``. A frozen
        weight or bias gets no gradient: with the weight frozen only ``dx`` (and a trainable bias's) is computed."""
        self.check_variants(out, accumulate, residual)
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called before forward")
        check_input("dy", dy, self.out_features)
        if dy.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"dy: expected shape {x.shape[:-1] + (self.out_features,)}, got {dy.shape}")
        dx = input_grad_buffer(self, out, x.shape, dy=dy, x=x, weight=self.weight)
        dx2, dy2 = dx.reshape(-1, self.in_features), dy.reshape(-1, self.out_features)
        db = self._grads["bias"] if self.bias is not None and self.requires_grad("bias") else None
        if self.requires_grad("weight"):
            K.linear_backward_into(dx2, self._grads["weight"], db, dy2, x.reshape(-1, self.in_features), self.weight,
                                  1.0 if accumulate else 0.0)
        else:  # frozen: dx = dy @ weight alone, the gemm linear_backward_into runs for it (not in kernels.trusted)
            K.gemm_blas(dx2, dy2, self.weight, 1.0 if accumulate else 0.0)
            if db is not None:
                K.bias_grad(db, dy2)
        return dx

    def extra_repr(self) -> str:
        """``in_features, out_features, bias``, as ``repr`` shows them."""
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
