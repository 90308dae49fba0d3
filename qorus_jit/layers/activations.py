"""Activation layers (elementwise, any shape): ReLU, GELU, SiLU, Swish; and Softmax over the last axis.

:data:`ACTIVATIONS` names them for the layers and models that take an activation by name (``FeedForward``'s
``kind``, ``MLP``'s ``activation``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from qorus_jit.core.check import check_choice, check_real, flat_views
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import Layer, check_input


class _Elementwise(Layer):
    """``y = f(x)`` elementwise; backward ``dx = dy * f'(x)`` from the saved input."""

    rowwise = True
    _x = None  # the input of the last forward

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

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        self.check_variants(out, accumulate, residual)
        x = self._x
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

    def _forward_kernel(self, y, x):
        K.relu_forward(y, x)

    def _backward_kernel(self, dx, dy, x):
        K.relu_backward(dx, dy, x)


class SiLU(_Elementwise):
    """``x * sigmoid(x)``."""

    def _forward_kernel(self, y, x):
        K.silu_forward(y, x)

    def _backward_kernel(self, dx, dy, x):
        K.silu_backward(dx, dy, x)


class GELU(_Elementwise):
    """``x * Phi(x)``; ``approximate="tanh"`` is the tanh form of GPT-2 (torch's ``approximate``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        check_choice("approximate", approximate, ("none", "tanh"))
        self.approximate = approximate
        self._tanh = approximate == "tanh"

    def _forward_kernel(self, y, x):
        (K.gelu_tanh_forward if self._tanh else K.gelu_forward)(y, x)

    def _backward_kernel(self, dx, dy, x):
        (K.gelu_tanh_backward if self._tanh else K.gelu_backward)(dx, dy, x)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Swish(_Elementwise):
    """``x * sigmoid(beta * x)`` with a fixed ``beta`` (``beta = 1`` is SiLU)."""

    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = float(np.float32(check_real("beta", beta)))

    def _forward_kernel(self, y, x):
        K.swish_forward(y, x, y.dtype.type(self.beta))

    def _backward_kernel(self, dx, dy, x):
        K.swish_backward(dx, dy, x, dx.dtype.type(self.beta))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class Softmax(Layer):
    """Softmax over the last axis; backward uses the saved output."""

    rowwise = True
    _y = None  # the output of the last forward

    def forward(self, x):
        check_input("x", x)
        y = self.buffer("y", x.shape)
        K.softmax_forward(y.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]))
        self._y = y
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        self.check_variants(out, accumulate, residual)
        y = self._y
        if y is None:
            raise RuntimeError("Softmax.backward called before forward")
        check_input("dy", dy)
        if dy.shape != y.shape:
            raise ValueError(f"dy: expected shape {y.shape}, got {dy.shape}")
        dx = self.buffer("dx", y.shape, zero=True)
        C = y.shape[-1]
        K.softmax_backward(dx.reshape(-1, C), dy.reshape(-1, C), y.reshape(-1, C))
        return dx


#: Activation name -> its layer, made without arguments: the names ``FeedForward`` (``kind``, besides
#: ``"swiglu"``) and ``MLP`` (``activation``) take. ``"gelu"`` is exact (erf), ``"gelu_tanh"`` the tanh form.
ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "relu": ReLU,
    "gelu": GELU,
    "gelu_tanh": partial(GELU, "tanh"),
    "silu": SiLU,
}
