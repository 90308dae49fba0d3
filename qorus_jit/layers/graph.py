"""The model graph: layers as nodes, named tensors as edges; forward in order, backward in reverse.

A node runs ``layer.forward(*input tensors)`` and names its output. A tensor read by several nodes
(a branch) gets the sum of their gradients; :class:`Add` merges two tensors (a residual). Nodes run in
the order they were added, which must be a topological order (each input defined before it is read).
:class:`Sequential` is the common chain.

A layer with several inputs returns a tuple of input gradients from ``backward`` (``None`` for an input
that takes no gradient, such as token ids); inputs past the end of what it returns (a padding mask read
by an attention block) take no gradient.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import check_bool
from qorus_jit.layers.attention import DecodeState
from qorus_jit.layers.base import Layer, check_input


def _names(what: str, names) -> list[str]:
    """A tensor name or a list of them (``what`` for the error), as a list of non-empty strs."""
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(t, str) and t for t in names):
        raise TypeError(f"{what}: expected a tensor name or a list of them (non-empty strs), got {names!r}")
    return list(names)


class Add(Layer):
    """``y = a + b`` (a residual merge); backward gives ``dy`` to both."""

    incremental = True  # elementwise: each position from the same position of a and b

    def forward(self, a, b):
        """``a + b`` for two float32 arrays of the same shape (ValueError otherwise), into a buffer of the layer."""
        check_input("a", a)
        check_input("b", b)
        if a.shape != b.shape:
            raise ValueError(f"b: expected the shape of a {a.shape}, got {b.shape}")
        y = self.buffer("y", a.shape)
        np.add(a, b, out=y)
        self._shape = a.shape
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """``(dy, dy)``: the gradient of the sum reaches both inputs unchanged. Raises RuntimeError before a forward,
        ValueError for a ``dy`` of another shape."""
        self.check_variants(out, accumulate, residual)
        shape = getattr(self, "_shape", None)
        if shape is None:
            raise RuntimeError("Add.backward called before forward")
        check_input("dy", dy, min_ndim=0)
        if dy.shape != shape:
            raise ValueError(f"dy: expected shape {shape}, got {dy.shape}")
        return dy, dy


class Graph(Layer):
    """A directed acyclic graph of layers over named tensors.

    >>> g = Graph(inputs=["x"], output="y")
    >>> g.add("fc1", Linear(4, 8), "x", "h")
    >>> g.add("act", ReLU(), "h", "a")
    >>> g.add("fc2", Linear(8, 4), "a", "b")
    >>> g.add("res", Add(), ["x", "b"], "y")      # y = x + fc2(relu(fc1(x)))
    """

    def __init__(self, inputs: list[str], output: str):
        super().__init__()
        inputs = _names("inputs", inputs)
        if not inputs:
            raise ValueError("inputs: expected at least one input name")
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"inputs: expected distinct names, got {inputs}")
        if not isinstance(output, str) or not output:
            raise TypeError(f"output: expected a tensor name (a non-empty str), got {output!r}")
        self.inputs, self.output = inputs, output
        self.nodes: list[tuple[str, Layer, list[str], str]] = []
        self._defined = set(self.inputs)
        self._values: dict[str, np.ndarray] = {}

    def add(self, name: str, layer: Layer, inputs: str | list[str], output: str) -> Layer:
        """Append node ``name`` computing tensor ``output`` from the named ``inputs``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        if any(name == n for n, _, _, _ in self.nodes):
            raise ValueError(f"name: a node named {name!r} is already in the graph")
        inputs = _names(f"{name}: inputs", inputs)
        if not isinstance(output, str) or not output:
            raise TypeError(f"{name}: output: expected a tensor name (a non-empty str), got {output!r}")
        for t in inputs:
            if t not in self._defined:
                raise ValueError(f"{name}: input tensor {t!r} is not defined yet (known: {sorted(self._defined)})")
        if output in self._defined:
            raise ValueError(f"{name}: tensor {output!r} is already defined")
        self.add_child(name, layer)
        self.nodes.append((name, layer, inputs, output))
        self._defined.add(output)
        return layer

    def forward(self, *args, **named):
        """Inputs by position (in ``inputs`` order) or by name; returns the output tensor."""
        if len(args) > len(self.inputs):
            raise ValueError(f"inputs: expected {len(self.inputs)} ({self.inputs}), got {len(args)} positional")
        given = [n for n in self.inputs[:len(args)] if n in named]
        if given:
            raise ValueError(f"inputs: {given[0]!r} given both by position and by name")
        values = dict(zip(self.inputs, args, strict=False))
        values.update(named)
        missing = [n for n in self.inputs if n not in values]
        if missing or len(values) != len(self.inputs):
            raise ValueError(f"inputs: expected {self.inputs}, got {sorted(values)}")
        if self.output not in self._defined:
            raise ValueError(f"output: tensor {self.output!r} is not computed by any node")
        for _, layer, ins, out in self.nodes:
            values[out] = layer.forward(*(values[t] for t in ins))
        self._values = values
        return values[self.output]

    @property
    def incremental(self) -> bool:
        """True when every node is (see :attr:`Layer.incremental`)."""
        return all(layer.incremental for _, layer, _, _ in self.nodes)

    def forward_decode(self, *args, state, last_only: bool = False):
        """Forward for incremental decoding: each node runs its ``forward_decode``, which for attention blocks
        and learned positions reads and extends ``state`` (a :class:`~qorus_jit.layers.DecodeState`: KV caches
        and the position of the first new token) and for the others is the plain ``forward``. No backward
        follows. The caller then moves the position on: ``state.advance(T)``.

        ``last_only``: the output holds only the last position (``(B, 1, ...)``); a tail of row-wise layers
        (a final norm and the head, say) then runs on that position alone, e.g. for a prompt's prefill.
        Decoding is inference: the layers run out of training mode (no dropout), whatever their mode."""
        DecodeState.check(state)
        if len(args) != len(self.inputs):
            raise ValueError(f"inputs: expected {len(self.inputs)} ({self.inputs}), got {len(args)}")
        check_bool(last_only=last_only)
        training = [layer for layer in self._walk() if layer.training]
        for layer in training:
            layer.training = False
        try:
            return self._decode(args, state, last_only)
        finally:
            for layer in training:
                layer.training = True

    def _decode(self, args, state, last_only: bool):
        values = dict(zip(self.inputs, args, strict=True))
        tail = self._rowwise_tail() if last_only else None
        for i, (_, layer, ins, out) in enumerate(self.nodes):
            inputs = [values[t] for t in ins]
            if i == tail:
                inputs = [np.ascontiguousarray(inputs[0][:, -1:])]
            values[out] = layer.forward_decode(*inputs, state=state)
        y = values[self.output]
        return y if tail is not None or not last_only else np.ascontiguousarray(y[:, -1:])

    def _rowwise_tail(self) -> int | None:
        """Index of the first node of the longest chain of row-wise nodes that ends at the output, each reading
        the one before (None if the last node is not row-wise)."""
        tail, want = None, self.output
        for i in range(len(self.nodes) - 1, -1, -1):
            _, layer, ins, out = self.nodes[i]
            if out != want or not layer.rowwise or len(ins) != 1:
                break
            tail, want = i, ins[0]
        return tail

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Gradients flow from the output back; returns the input gradient (a tuple for several inputs)."""
        self.check_variants(out, accumulate, residual)
        if not self._values:
            raise RuntimeError("Graph.backward called before forward")
        y = self._values[self.output]
        if isinstance(y, np.ndarray):  # the gradient of the output: an array of its shape
            check_input("dy", dy, min_ndim=0)
            if dy.shape != y.shape:
                raise ValueError(f"dy: expected the output's shape {y.shape}, got {dy.shape}")
        grads: dict[str, np.ndarray] = {self.output: dy}
        owned: set[str] = set()  # gradient buffers this graph owns (safe to add into)
        for _, layer, ins, out in reversed(self.nodes):
            g = grads.pop(out, None)
            if g is None:
                continue  # this node's output does not reach the graph output
            got = layer.backward(g)
            got = got if isinstance(got, tuple) else (got,)
            for t, gt in zip(ins, got, strict=False):
                if gt is None:
                    continue
                if t not in grads:
                    grads[t] = gt
                elif t in owned:
                    grads[t] += gt
                else:
                    acc = self.buffer("grad:" + t, gt.shape)
                    np.add(grads[t], gt, out=acc)
                    grads[t] = acc
                    owned.add(t)
        result = tuple(grads.get(t) for t in self.inputs)
        return result[0] if len(result) == 1 else result

    def summary(self) -> str:
        """A table of nodes: name, layer, inputs -> output, output shape (after a forward), parameters."""
        rows = [("node", "layer", "tensors", "output shape", "params")]
        for name, layer, ins, out in self.nodes:
            shape = self._values[out].shape if out in self._values else "?"
            rows.append((name, repr(layer), f"{', '.join(ins)} -> {out}", str(shape), f"{layer.num_parameters():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total parameters: {self.num_parameters():,}")
        return "\n".join(lines)


class Sequential(Graph):
    """Layers applied one after another: ``Sequential(Linear(4, 8), ReLU(), Linear(8, 2))``.

    Nodes are named ``"0"``, ``"1"``, ... unless given as ``(name, layer)`` pairs.
    """

    def __init__(self, *layers):
        super().__init__(inputs=["x"], output="x")
        prev = "x"
        for i, item in enumerate(layers):
            if isinstance(item, tuple) and (len(item) != 2 or not isinstance(item[0], str)):
                raise TypeError(f"layers[{i}]: expected a Layer or a (name, Layer) pair, got {item!r}")
            name, layer = item if isinstance(item, tuple) else (str(i), item)
            self.add(name, layer, prev, f"t{i}")
            prev = f"t{i}"
        self.output = prev
