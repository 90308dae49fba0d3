"""Input validation shared by the public kernel wrappers.

Kernels trust their inputs (numba does not bounds-check), so every public wrapper validates first
and raises an error that names the argument, what was expected and what it got.

Shapes are given as tuples of ints and symbol names; a symbol binds on first use and must match
everywhere else it appears::

    dims = check_arrays(
        out=(out, ("N", "out")),
        x=(x, ("N", "in")),
        weight=(weight, ("out", "in")),
    )
    dims["N"]  # -> the bound size
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import FLOAT_DTYPES, INDEX_DTYPES

Shape = Sequence[int | str]


def _fmt_shape(spec: Shape) -> str:
    return "(" + ", ".join(str(s) for s in spec) + ("," if len(spec) == 1 else "") + ")"


def check_arrays(*, dtype=None, **arrays) -> dict[str, int]:
    """Validate floating arrays that must share one dtype and C-contiguous layout.

    Each keyword is ``name=(array, shape_spec)``; ``None`` arrays with spec ``None`` are skipped
    (optional inputs). ``dtype``, if given, fixes the dtype; otherwise the first array's dtype is
    used and must be float32 or float64. Returns the bound symbol sizes.
    """
    dims: dict[str, int] = {}
    ref_name = None
    for name, (arr, spec) in arrays.items():
        if arr is None:
            continue
        _check_one(name, arr, spec, dims)
        if dtype is None:
            if arr.dtype.type not in FLOAT_DTYPES:
                raise TypeError(f"{name}: expected dtype float32 or float64, got {arr.dtype}")
            dtype, ref_name = arr.dtype, name
        elif arr.dtype != dtype:
            what = f"the dtype of {ref_name}" if ref_name else "dtype"
            raise TypeError(f"{name}: expected {what} ({np.dtype(dtype)}), got {arr.dtype}")
    return dims


def check_index(name: str, arr, spec: Shape, high: int, dims: dict[str, int] | None = None,
                *, allow: int | None = None) -> dict[str, int]:
    """Validate an integer index array (token ids, targets): dtype, shape and ``0 <= v < high``.

    ``allow`` names one extra value accepted outside the range (e.g. ``ignore_index``).
    """
    dims = {} if dims is None else dims
    _check_one(name, arr, spec, dims)
    if arr.dtype.type not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {arr.dtype}")
    if arr.size:
        bad = (arr < 0) | (arr >= high)
        if allow is not None:
            bad &= arr != allow
        if bad.any():
            v = arr[bad].flat[0]
            extra = f" or {allow}" if allow is not None else ""
            raise ValueError(f"{name}: expected values in [0, {high}){extra}, got {v}")
    return dims


def check_positive(**values) -> None:
    """Each keyword must be an int >= 1."""
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")


def _check_one(name: str, arr, spec: Shape | None, dims: dict[str, int]) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")
    if spec is None:
        return
    if arr.ndim != len(spec):
        raise ValueError(
            f"{name}: expected {len(spec)}-D array of shape {_fmt_shape(spec)}, "
            f"got {arr.ndim}-D array of shape {arr.shape}"
        )
    for axis, (want, got) in enumerate(zip(spec, arr.shape, strict=True)):
        if isinstance(want, str):
            want_val = dims.setdefault(want, got)
        else:
            want_val = want
        if got != want_val:
            bound = {k: v for k, v in dims.items() if k in spec}
            raise ValueError(
                f"{name}: expected shape {_fmt_shape(spec)} with {bound}, got {arr.shape} "
                f"(axis {axis} is {got}, expected {want_val})"
            )
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {arr.strides}"
                         " (use np.ascontiguousarray)")


def check_writeable(**arrays) -> None:
    """Outputs and gradient buffers are written in place: they must be writeable."""
    for name, arr in arrays.items():
        if arr is not None and not arr.flags.writeable:
            raise ValueError(f"{name}: expected a writeable array (it is written in place)")
