"""MLP: Linear layers with an activation between them, for classification and regression."""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import check_bool, check_choice, check_rng
from qorus_jit.layers import Linear, Sequential
from qorus_jit.layers.activations import ACTIVATIONS, Activation


def _check_sizes(sizes) -> list[int]:
    """``sizes``: a list, tuple or 1-D array of at least two ints >= 1 (NumPy ints too, not bools); as ints."""
    if isinstance(sizes, np.ndarray) and sizes.ndim == 1:
        sizes = sizes.tolist()
    if not isinstance(sizes, (list, tuple)):
        raise TypeError(f"sizes: expected a list of layer sizes (ints >= 1), got {type(sizes).__name__}")
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected at least two layer sizes (input and output), got {list(sizes)!r}")
    for i, n in enumerate(sizes):
        if not isinstance(n, (int, np.integer)) or isinstance(n, (bool, np.bool_)) or n < 1:
            raise ValueError(f"sizes[{i}]: expected an int >= 1, got {n!r}")
    return [int(n) for n in sizes]


class MLP(Sequential):
    """``x (..., sizes[0]) -> (..., sizes[-1])`` through ``Linear(sizes[i], sizes[i+1])`` with ``activation``
    between consecutive layers (none after the last). Nodes are named ``fc0``, ``act0``, ``fc1``, ...

    >>> model = MLP([64, 128, 10], activation="relu", rng=0)
    """

    def __init__(self, sizes: list[int], activation: str = "relu", bias: bool = True, rng=None):
        sizes = _check_sizes(sizes)
        check_choice("activation", activation, sorted(ACTIVATIONS))
        activation = str(activation)  # np.str_ too
        check_bool(bias=bias)
        rng = check_rng("rng", rng)
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append((f"fc{i}", Linear(n_in, n_out, bias=bias, rng=rng)))
            if i < len(sizes) - 2:
                layers.append((f"act{i}", Activation(activation)))
        super().__init__(*layers)
        self.sizes, self.activation = sizes, activation
