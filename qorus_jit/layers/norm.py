"""Normalization layers over the last axis: LayerNorm (weight, optional bias) and RMSNorm (weight)."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_bool, check_positive, check_positive_float
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import Layer, check_input, input_grad_buffer


class _Norm(Layer):
    rowwise = True
    backward_variants = frozenset({"out", "accumulate", "residual"})

    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        check_positive(dim=dim)
        check_positive_float(eps=eps)
        check_bool(bias=bias)
        self.dim, self.eps = int(dim), float(eps)
        check_fits("parameters", 2 * self.dim, dim=dim)
        self.weight = self.add_parameter("weight", np.ones(self.dim), decay=False)
        self.bias = self.add_parameter("bias", np.zeros(self.dim), decay=False) if bias else None
        self._x = None

    def _saved(self, dy):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_input("dy", dy, self.dim)
        if dy.shape != self._x.shape:
            raise ValueError(f"dy: expected shape {self._x.shape}, got {dy.shape}")
        return self._x.reshape(-1, self.dim), dy.reshape(-1, self.dim)

    def _dx(self, out, accumulate: bool, residual, dy):
        """The input gradient's buffer and the kernels' base: ``residual`` as rows, or an empty ``(0, dim)``."""
        self.check_variants(out, accumulate, residual)
        reads = {"dy": dy, "x": self._x}
        if residual is not None:
            if accumulate:
                raise ValueError("residual: cannot be combined with accumulate=True")
            check_input("residual", residual, self.dim)
            if residual.shape != self._x.shape:
                raise ValueError(f"residual: expected shape {self._x.shape}, got {residual.shape}")
            reads["residual"] = residual
        dx = input_grad_buffer(self, out, self._x.shape, **reads)
        base = np.empty((0, self.dim), np.float32) if residual is None else residual
        return dx, base.reshape(-1, self.dim)

    def _dweight(self):
        """Where the kernels accumulate the weight gradient: the gradient, or when frozen a scratch buffer (the
        kernels always compute it; it is small) that nothing reads."""
        return self._grads["weight"] if self.requires_grad("weight") else self.buffer("dweight", (self.dim,), zero=True)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerNorm(_Norm):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (``dim``)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps, bias)

    def extra_repr(self) -> str:
        """``dim, eps, bias``, as ``repr`` shows them."""
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"

    def forward(self, x):
        """``x (..., dim)`` float32 -> ``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis, same shape;
        saves each row's mean and 1/std for backward. Raises ValueError when the last axis is not ``dim``."""
        check_input("x", x, self.dim)
        y = self.buffer("y", x.shape)
        n = x.size // self.dim
        mean, rstd = self.buffer("mean", (n,)), self.buffer("rstd", (n,))
        b = self.bias if self.bias is not None else np.empty(0, np.float32)
        K.layernorm_forward(y.reshape(-1, self.dim), mean, rstd, x.reshape(-1, self.dim), self.weight, b,
                            np.float32(self.eps))
        self._x = x.view()  # a view of its own: the caller may reshape its array in place (x.shape = ...)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dx`` into a buffer, or into (or added to, if ``accumulate``) ``out``; as :meth:`Linear.backward`.
        ``residual`` (the input's shape) is added to ``dx`` in the same pass: the gradient of a residual
        connection around the norm."""
        x2, dy2 = self._saved(dy)
        dx, base = self._dx(out, accumulate, residual, dy)
        # no bias, or a frozen one: an empty dbias, which the kernel skips
        db = self._grads["bias"] if self.bias is not None and self.requires_grad("bias") else np.empty(0, np.float32)
        K.layernorm_backward(dx.reshape(-1, self.dim), self._dweight(), db, dy2, x2, self.weight,
                             self._buffers["mean"], self._buffers["rstd"], accumulate, base)
        return dx


class RMSNorm(_Norm):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis (``dim``), as in Llama."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__(dim, eps, bias=False)

    def forward(self, x):
        """``x (..., dim)`` float32 -> ``x / sqrt(mean(x**2) + eps) * weight`` over the last axis, same shape; saves
        each row's 1/rms for backward. Raises ValueError when the last axis is not ``dim``."""
        check_input("x", x, self.dim)
        y = self.buffer("y", x.shape)
        rstd = self.buffer("rstd", (x.size // self.dim,))
        K.rmsnorm_forward(y.reshape(-1, self.dim), rstd, x.reshape(-1, self.dim), self.weight, np.float32(self.eps))
        self._x = x.view()  # a view of its own: the caller may reshape its array in place (x.shape = ...)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """As :meth:`LayerNorm.backward`."""
        x2, dy2 = self._saved(dy)
        dx, base = self._dx(out, accumulate, residual, dy)
        K.rmsnorm_backward(dx.reshape(-1, self.dim), self._dweight(), dy2, x2, self.weight,
                           self._buffers["rstd"], accumulate, base)
        return dx
