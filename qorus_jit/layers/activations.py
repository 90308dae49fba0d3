"""Activation layers (elementwise, any shape): ReLU, GELU, SiLU, Swish; and Softmax over the last axis."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import flat_views
from qorus_jit.kernels import activations as A
from qorus_jit.kernels import softmax as S
from qorus_jit.layers.base import Layer, check_input


class _Elementwise(Layer):
    """``y = f(x)`` elementwise; backward ``dx = dy * f'(x)`` from the saved input."""

    rowwise = True

    def _forward_kernel(self, y, x):
        raise NotImplementedError

    def _backward_kernel(self, dx, dy, x):
        raise NotImplementedError

    def forward(self, x):
        check_input("x", x)
        y = self.buffer("y", x.shape)
        self._forward_kernel(*flat_views(y, x))
        self._x = x
        return y

    def backward(self, dy):
        x = getattr(self, "_x", None)
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_input("dy", dy)
        if dy.shape != x.shape:
            raise ValueError(f"dy: expected shape {x.shape}, got {dy.shape}")
        dx = self.buffer("dx", x.shape, zero=True)
        self._backward_kernel(*flat_views(dx, dy, x))
        return dx


class ReLU(_Elementwise):
    """``max(x, 0)``."""

    _forward_kernel = staticmethod(A._relu_forward)
    _backward_kernel = staticmethod(A._relu_backward)


class SiLU(_Elementwise):
    """``x * sigmoid(x)``."""

    _forward_kernel = staticmethod(A._silu_forward)
    _backward_kernel = staticmethod(A._silu_backward)


class GELU(_Elementwise):
    """``x * Phi(x)``; ``approximate="tanh"`` is the tanh form of GPT-2 (torch's ``approximate``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        tanh = A._check_approximate(approximate)
        self.approximate = approximate
        self._forward_kernel = A._gelu_tanh_forward if tanh else A._gelu_forward
        self._backward_kernel = A._gelu_tanh_backward if tanh else A._gelu_backward

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Swish(_Elementwise):
    """``x * sigmoid(beta * x)`` with a fixed ``beta`` (``beta = 1`` is SiLU)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(A._check_beta(beta, np.dtype(np.float32)))

    def _forward_kernel(self, y, x):
        A._swish_forward(y, x, y.dtype.type(self.beta))

    def _backward_kernel(self, dx, dy, x):
        A._swish_backward(dx, dy, x, dx.dtype.type(self.beta))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class Softmax(Layer):
    """Softmax over the last axis; backward uses the saved output."""

    rowwise = True

    def forward(self, x):
        check_input("x", x)
        y = self.buffer("y", x.shape)
        S._softmax_forward(y.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]))
        self._y = y
        return y

    def backward(self, dy):
        y = getattr(self, "_y", None)
        if y is None:
            raise RuntimeError("Softmax.backward called before forward")
        check_input("dy", dy)
        if dy.shape != y.shape:
            raise ValueError(f"dy: expected shape {y.shape}, got {dy.shape}")
        dx = self.buffer("dx", y.shape, zero=True)
        C = y.shape[-1]
        S._softmax_backward(dx.reshape(-1, C), dy.reshape(-1, C), y.reshape(-1, C))
        return dx
