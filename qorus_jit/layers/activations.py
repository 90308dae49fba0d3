"""Activation layers (elementwise, any shape): :class:`Activation` by name (:data:`ACTIVATIONS`: ReLU, GELU,
SiLU), Swish; and Softmax over the last axis."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import check_choice, check_real, flat_views
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import Layer, check_input, input_grad_buffer


class _Elementwise(Layer):
    """``y = f(x)`` elementwise; backward ``dx = dy * f'(x)`` from the saved input."""

    rowwise = True
    backward_variants = frozenset({"out", "accumulate"})
    _x = None  # the input of the last forward

    def _forward_kernel(self, y, x):
        raise NotImplementedError

    def _backward_kernel(self, dx, dy, x):
        raise NotImplementedError

    def forward(self, x):
        check_input("x", x)
        y = self.buffer("y", x.shape)
        self._forward_kernel(*flat_views(y, x))
        self._x = x.view()  # a view of its own: the caller may reshape its array in place (x.shape = ...)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        self.check_variants(out, accumulate, residual)
        x = self._x
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_input("dy", dy)
        if dy.shape != x.shape:
            raise ValueError(f"dy: expected shape {x.shape}, got {dy.shape}")
        if out is None:
            dx = self.buffer("dx", x.shape, zero=True)
        else:  # e.g. the forward's own output, once the layers after it are done with it (FeedForward)
            dx = input_grad_buffer(self, out, x.shape, dy=dy, x=x)
            if not accumulate:
                dx.fill(0)
        self._backward_kernel(*flat_views(dx, dy, x))  # accumulates
        return dx


#: Activation name -> its forward and backward kernels in ``kernels.trusted`` (``f(y, x)``, ``f'(dx, dy, x)``):
#: the names :class:`Activation`, ``FeedForward`` (``kind``, besides ``"swiglu"``) and ``MLP`` (``activation``)
#: take. ``"gelu"`` is exact (erf), ``"gelu_tanh"`` the tanh form. A new activation is one entry here.
ACTIVATIONS: dict[str, tuple[str, str]] = {
    "relu": ("relu_forward", "relu_backward"),
    "gelu": ("gelu_forward", "gelu_backward"),
    "gelu_tanh": ("gelu_tanh_forward", "gelu_tanh_backward"),
    "silu": ("silu_forward", "silu_backward"),
}


class Activation(_Elementwise):
    """The elementwise activation ``name``, one of :data:`ACTIVATIONS`: ``Activation("gelu_tanh")``."""

    def __init__(self, name: str):
        super().__init__()
        check_choice("name", name, tuple(ACTIVATIONS))
        self.name = name
        self._kernels = ACTIVATIONS[name]

    def _forward_kernel(self, y, x):
        getattr(K, self._kernels[0])(y, x)  # looked up per call: the profiler swaps entries of K

    def _backward_kernel(self, dx, dy, x):
        getattr(K, self._kernels[1])(dx, dy, x)

    def extra_repr(self) -> str:
        """The activation's name, as ``repr`` shows it: ``Activation('gelu_tanh')``."""
        return repr(self.name)


class ReLU(Activation):
    """``max(x, 0)``."""

    def __init__(self):
        super().__init__("relu")

    def extra_repr(self) -> str:
        """Nothing: ``ReLU()`` takes no argument."""
        return ""


class SiLU(Activation):
    """``x * sigmoid(x)``."""

    def __init__(self):
        super().__init__("silu")

    def extra_repr(self) -> str:
        """Nothing: ``SiLU()`` takes no argument."""
        return ""


class GELU(Activation):
    """``x * Phi(x)``; ``approximate="tanh"`` is the tanh form of GPT-2 (torch's ``approximate``)."""

    def __init__(self, approximate: str = "none"):
        check_choice("approximate", approximate, ("none", "tanh"))
        super().__init__("gelu_tanh" if approximate == "tanh" else "gelu")
        self.approximate = approximate

    def extra_repr(self) -> str:
        """``approximate='none'`` or ``'tanh'``, as ``repr`` shows it."""
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
        """``beta=...``, as ``repr`` shows it."""
        return f"beta={self.beta}"


class Softmax(Layer):
    """Softmax over the last axis; backward uses the saved output."""

    rowwise = True
    _y = None  # the output of the last forward

    def forward(self, x):
        """``x (..., C)`` float32 -> its softmax over the last axis, same shape, in a buffer of the layer (kept for
        backward). Raises ValueError when ``C`` is 0, TypeError or ValueError for an array that is not float32
        C-contiguous."""
        check_input("x", x)
        if x.shape[-1] == 0:
            raise ValueError(f"x: expected a last axis of at least 1 to take the softmax over, got shape {x.shape}")
        y = self.buffer("y", x.shape)
        K.softmax_forward(y.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]))
        self._y = y
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy`` shaped as the last output -> ``dx = y * (dy - sum(dy * y))`` over the last axis, from the saved
        output. Takes none of the backward variants. Raises RuntimeError before a forward, ValueError for a ``dy`` of
        another shape."""
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

