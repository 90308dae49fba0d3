"""Feed-forward (MLP) block of a transformer: SwiGLU (Llama) or a two-layer MLP with an activation."""

from __future__ import annotations

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_bool, check_positive, check_rng, flat_views
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.activations import ACTIVATIONS, Activation
from qorus_jit.layers.base import Layer, check_input, check_names
from qorus_jit.layers.linear import Linear

#: The feed-forward kinds: SwiGLU and a two-layer MLP with each activation of ``ACTIVATIONS``.
KINDS = ("swiglu", *ACTIVATIONS)


class FeedForward(Layer):
    """``(..., dim) -> (..., dim)``.

    ``kind="swiglu"``: ``down_proj(silu(gate_proj(x)) * up_proj(x))`` (Llama); otherwise
    ``down_proj(act(up_proj(x)))`` with ``act`` the activation of that name (``layers.activations.ACTIVATIONS``:
    ``"gelu"`` exact, ``"gelu_tanh"``, ``"relu"``, ``"silu"``). Children are named after
    Hugging Face Llama (``gate_proj``, ``up_proj``, ``down_proj``); ``names`` renames them, e.g.
    ``{"up_proj": "c_fc", "down_proj": "c_proj"}`` for GPT-2.
    """

    rowwise = True

    def __init__(self, dim: int, hidden_dim: int, kind: str = "swiglu", bias: bool = False, names: dict | None = None,
                 rng=None):
        super().__init__()
        check_positive(dim=dim, hidden_dim=hidden_dim)
        check_bool(bias=bias)
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        names = check_names("names", names)
        dim, hidden_dim = self.dim, self.hidden_dim = int(dim), int(hidden_dim)
        self.kind = kind
        check_fits("parameters", (3 if kind == "swiglu" else 2) * (dim + 1) * (hidden_dim + 1), dim=dim,
                   hidden_dim=hidden_dim)
        rng = check_rng("rng", rng)
        names = {**{k: k for k in ("gate_proj", "up_proj", "down_proj")}, **(names or {})}
        if kind == "swiglu":
            self.gate_proj = self.add_child(names["gate_proj"], Linear(dim, hidden_dim, bias=bias, rng=rng))
        self.up_proj = self.add_child(names["up_proj"], Linear(dim, hidden_dim, bias=bias, rng=rng))
        self.down_proj = self.add_child(names["down_proj"], Linear(hidden_dim, dim, bias=bias, rng=rng))
        if kind != "swiglu":
            self.act = self.add_child("act", Activation(kind))

    def forward(self, x):
        """``x (..., dim)`` float32 -> ``(..., dim)``: ``down(act(up(x)))``, or ``down(silu(gate(x)) * up(x))`` for
        ``kind='swiglu'``. Raises ValueError when the last axis is not ``dim``."""
        check_input("x", x, self.dim)
        if self.kind == "swiglu":
            g = self.gate_proj.forward(x)
            u = self.up_proj.forward(x)
            h = self.buffer("h", g.shape)
            K.swiglu_forward(*flat_views(h, g, u))
            self._gu = (g, u)
        else:
            h = self.act.forward(self.up_proj.forward(x))
            self._h = h
        return self.down_proj.forward(h)

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``dy (..., dim)`` -> ``dx (..., dim)``; accumulates the projections' gradients. Takes none of the backward
        variants; the activation's gradient is written over its own forward output, which ``down_proj``'s backward
        has read by then."""
        self.check_variants(out, accumulate, residual)
        check_input("dy", dy, self.dim)
        dh = self.down_proj.backward(dy)
        if self.kind != "swiglu":  # the activation's output, read by down_proj's backward only, takes its gradient
            return self.up_proj.backward(self.act.backward(dh, out=self._h))
        g, u = self._gu
        dg, du = self.buffer("dg", g.shape), self.buffer("du", u.shape)
        K.swiglu_backward_into(*flat_views(dg, du, dh, g, u), False)
        dx = self.gate_proj.backward(dg)
        return self.up_proj.backward(du, out=dx, accumulate=True)

    def extra_repr(self) -> str:
        """``dim, hidden_dim, kind``, as ``repr`` shows them."""
        return f"{self.dim}, {self.hidden_dim}, kind={self.kind!r}"
