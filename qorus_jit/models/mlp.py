"""MLP: Linear layers with an activation between them, for classification and regression."""

from __future__ import annotations

import numpy as np

from qorus_jit.layers import Linear, Sequential
from qorus_jit.layers.activations import ACTIVATIONS, Activation


class MLP(Sequential):
    """``x (..., sizes[0]) -> (..., sizes[-1])`` through ``Linear(sizes[i], sizes[i+1])`` with ``activation``
    between consecutive layers (none after the last). Nodes are named ``fc0``, ``act0``, ``fc1``, ...

    >>> model = MLP([64, 128, 10], activation="relu", rng=0)
    """

    def __init__(self, sizes: list[int], activation: str = "relu", bias: bool = True, rng=None):
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected at least two layer sizes (input and output), got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        rng = np.random.default_rng(rng)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append((f"fc{i}", Linear(n_in, n_out, bias=bias, rng=rng)))
            if i < len(sizes) - 2:
                layers.append((f"act{i}", Activation(activation)))
        super().__init__(*layers)
        self.sizes, self.activation = list(sizes), activation
