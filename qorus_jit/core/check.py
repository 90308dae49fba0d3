"""Input validation shared by the public kernel wrappers.

Kernels trust their inputs (numba does not bounds-check), so every public wrapper validates first
and raises an error that names the argument, what was expected and what it got.

Shapes are given as tuples of ints and symbol names; a symbol binds on first use and must match
everywhere else it appears. ``writes`` names the arrays the call writes: they must be writeable and share
no memory with any other array of the call (``inplace`` lists the exact aliases a kernel supports)::

    dims = check_arrays(
        out=(out, ("N", "out")),
        x=(x, ("N", "in")),
        weight=(weight, ("out", "in")),
        writes=("out",),
    )
    dims["N"]  # -> the bound size
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from qorus_jit.core.numerics import FLOAT_DTYPES, INDEX_DTYPES

# The dtypes themselves, in native byte order: np.dtype(">f4").type is np.float32, but numba refuses it.
_FLOATS = tuple(np.dtype(t) for t in FLOAT_DTYPES)
_INDEXES = tuple(np.dtype(t) for t in INDEX_DTYPES)

Shape = Sequence[int | str]


def _fmt_shape(spec: Shape) -> str:
    return "(" + ", ".join(str(s) for s in spec) + ("," if len(spec) == 1 else "") + ")"


def check_arrays(*, dtype=None, optional=(), writes=(), inplace: Mapping | None = None,
                 reads: Mapping | None = None, **arrays) -> dict[str, int]:
    """Validate floating arrays that must share one dtype and C-contiguous layout.

    Each keyword is ``name=(array, shape_spec)``; a spec of ``None`` checks only that it is an array.
    An array may be ``None`` only if its name is in ``optional`` (e.g. a bias); it is then skipped.
    ``dtype``, if given, fixes the dtype; otherwise the first array's dtype is used and must be float32
    or float64 (native byte order). Returns the bound symbol sizes.

    ``writes`` names the arrays the call writes (outputs, gradients, state updated in place); see
    :func:`check_writes`, which is given the arrays here and ``reads`` (``{name: array}``: the call's index
    arrays and masks, validated apart) and ``inplace``.
    """
    dims: dict[str, int] = {}
    ref_name = None
    for name, (arr, spec) in arrays.items():
        if arr is None and name in optional:
            continue
        _check_one(name, arr, spec, dims)
        if dtype is None:
            if arr.dtype not in _FLOATS:
                raise TypeError(f"{name}: expected dtype float32 or float64, got {_dtype_name(arr.dtype)}")
            dtype, ref_name = arr.dtype, name
        elif arr.dtype != dtype:
            what = f"the dtype of {ref_name}" if ref_name else "dtype"
            raise TypeError(f"{name}: expected {what} ({np.dtype(dtype)}), got {arr.dtype}")
    if writes:
        named = {name: arr for name, (arr, _) in arrays.items()}
        check_writes(writes, {**named, **(reads or {})}, inplace)
    return dims


def check_writes(writes: Sequence[str], arrays: Mapping, inplace: Mapping | None = None) -> None:
    """The arrays named in ``writes`` (keys of ``arrays``, ``{name: array or None}``) are written by the call:
    each must be writeable and share no memory with any other array of ``arrays`` (an overlap gives wrong
    numbers, or reads what was just written), except that output ``w`` may be exactly an input named in
    ``inplace[w]`` (a name or a tuple of names): the same memory, shape and strides, for a kernel that runs in
    place. Two outputs never alias. ``np.may_share_memory`` compares bounds only: cheap, no scan of the data.
    """
    inplace = inplace or {}
    outs = [w for w in writes if arrays.get(w) is not None]
    check_writeable(**{w: arrays[w] for w in outs})
    for i, w in enumerate(outs):
        out = arrays[w]
        allowed = inplace.get(w, ())
        allowed = (allowed,) if isinstance(allowed, str) else tuple(allowed)
        others = outs[i + 1:] + [n for n in arrays if n not in writes]
        for other in others:
            a = arrays[other]
            if not isinstance(a, np.ndarray) or not np.may_share_memory(out, a):
                continue
            if other not in allowed or other in writes:
                raise ValueError(f"{w}: expected a buffer that does not overlap {other}, got arrays sharing memory")
            if not _same_view(out, a):
                raise ValueError(f"{w}: expected either {other} itself (in place) or an array that does not "
                                 f"overlap {other}, got a partially overlapping view")


def _dtype_name(dt: np.dtype) -> str:
    """``dt`` for an error message, saying when its byte order is not the machine's (numba refuses it)."""
    return f"{dt} (not in native byte order)" if not dt.isnative else str(dt)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` view the same memory the same way (one array, or two views of it alike)."""
    return a is b or (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def check_distinct(name: str, arrays: Sequence[np.ndarray]) -> None:
    """Arrays of one list argument (``name``), all written, must share no memory with each other.

    Arrays are grouped by the numpy allocation they view (two allocations never overlap), so a list of
    separately allocated gradients costs one walk per array, not a comparison per pair.
    """
    groups: dict[int | None, list[int]] = {}
    for k, a in enumerate(arrays):
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        # memory numpy did not allocate (a buffer, a mapped file, numba's) is compared with every other array
        groups.setdefault(id(root) if root.base is None else None, []).append(k)
    unknown = groups.get(None, [])
    for key, ks in groups.items():
        for i, k in enumerate(ks):
            for j in (ks[i + 1:] if key is None else ks[i + 1:] + unknown):
                if np.may_share_memory(arrays[k], arrays[j]):
                    first, second = sorted((k, j))
                    raise ValueError(f"{name}[{second}]: expected an array that does not overlap {name}[{first}], "
                                     "got arrays sharing memory")


def check_float_dtype(name: str, dtype) -> np.dtype:
    """A dtype argument (``dtype=``) that must be float32 or float64 in native byte order; returns it."""
    try:
        dt = np.dtype(dtype) if dtype is not None else None  # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is None or dt not in _FLOATS:
        raise TypeError(f"{name}: expected float32 or float64, got {_dtype_name(dt) if dt else repr(dtype)}")
    return dt


def check_index(name: str, arr, spec: Shape, high: int, dims: dict[str, int] | None = None,
                *, allow: int | None = None) -> dict[str, int]:
    """Validate an integer index array (token ids, targets): dtype, shape and ``0 <= v < high``.

    ``allow`` names one extra value accepted outside the range (e.g. ``ignore_index``).
    """
    dims = {} if dims is None else dims
    _check_one(name, arr, spec, dims)
    if arr.dtype not in _INDEXES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {_dtype_name(arr.dtype)}")
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


def _check_array(name: str, arr) -> None:
    """A numpy array (a masked array's mask would be ignored, and numba refuses it)."""
    if not isinstance(arr, np.ndarray) or isinstance(arr, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a numpy array, got {type(arr).__name__}")


def _check_one(name: str, arr, spec: Shape | None, dims: dict[str, int]) -> None:
    _check_array(name, arr)
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


def check_min_ndim(name: str, arr, ndim: int) -> None:
    """``arr`` must be a numpy array with at least ``ndim`` dimensions (e.g. a ``(..., C)`` input)."""
    _check_array(name, arr)
    if arr.ndim < ndim:
        raise ValueError(f"{name}: expected an array with at least {ndim} dimensions, "
                         f"got {arr.ndim}-D array of shape {arr.shape}")


def check_nonnegative(**values) -> None:
    """Each keyword must be an int >= 0."""
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")


def check_positive_float(**values) -> None:
    """Each keyword must be a finite real number > 0 (e.g. ``eps``, a learning rate)."""
    for name, v in values.items():
        check_real(name, v, low=0.0, low_open=True)


def check_bool(**values) -> None:
    """Each keyword must be a bool (a flag option)."""
    for name, v in values.items():
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name}: expected a bool, got {v!r}")


def check_inplace_or_disjoint(out_name: str, out, in_name: str, inp) -> None:
    """``out`` must be writeable and the same memory as ``inp`` (in place) or not overlap it at all."""
    check_writes((out_name,), {out_name: out, in_name: inp}, {out_name: in_name})


def check_mask(name: str, arr, spec: Shape, dims: dict[str, int] | None = None) -> np.ndarray:
    """Validate a bool or integer mask (nonzero = keep) of shape ``spec``; returns it as a uint8 array."""
    dims = {} if dims is None else dims
    _check_one(name, arr, spec, dims)
    if arr.dtype == np.bool_ or arr.dtype in (np.uint8, np.int8):
        return arr.view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected dtype bool or an integer dtype, got {arr.dtype}")
    return (arr != 0).view(np.uint8)


def check_disjoint(outputs: dict, inputs: dict) -> None:
    """Output buffers (name -> array) must overlap neither each other nor any input array."""
    outs = [(n, a) for n, a in outputs.items() if a is not None]
    ins = [(n, a) for n, a in inputs.items() if a is not None]
    for i, (name, arr) in enumerate(outs):
        for other, o in outs[i + 1:] + ins:
            if np.may_share_memory(arr, o):
                raise ValueError(f"{name}: expected a buffer that does not overlap {other}, "
                                 "got arrays sharing memory")


def check_real(name: str, value, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """A real scalar (Python or NumPy int or float, not bool, not NaN) within optional bounds.

    ``low_open`` / ``high_open`` exclude the bound itself; ``finite=False`` also accepts +-inf.
    Returns the value as a Python float.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else float("nan")
    if ok and finite:
        ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok or v != v:
        kind = "a finite real number" if finite else "a real number"
        if low is not None and high is not None:
            kind += f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            kind += f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            kind += f" {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return v


def check_int(**values) -> None:
    """Each keyword must be an int of any sign (not a bool), e.g. a sentinel like ``ignore_index``."""
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name}: expected an int, got {v!r}")


def check_ignore_index(ignore_index) -> int:
    """``ignore_index`` (an int of any size, not a bool) as the kernels' int64: one beyond int64 matches no
    target id (ids are in ``[0, V)``), so it becomes -1, which no valid target equals either."""
    check_int(ignore_index=ignore_index)
    i = int(ignore_index)
    return i if -(2**63) <= i < 2**63 else -1


def check_choice(name: str, value, choices: Sequence) -> None:
    """``value`` must be one of ``choices`` (an option such as a route or a mode name)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def check_same_shape(*, writes=(), inplace: Mapping | None = None, **arrays) -> None:
    """All arrays numpy, C-contiguous, of one float dtype and of the first one's shape (elementwise ops);
    ``writes`` and ``inplace`` as in :func:`check_arrays`."""
    first_name, first = next(iter(arrays.items()))
    _check_array(first_name, first)
    spec = tuple(f"d{i}" for i in range(first.ndim))
    check_arrays(**{k: (v, spec) for k, v in arrays.items()}, writes=writes, inplace=inplace)


def flat_views(*arrays) -> list[np.ndarray]:
    """The 1-D views of C-contiguous arrays."""
    return [a.reshape(-1) for a in arrays]


def check_fields(cls, d, what: str, error: type[Exception] = ValueError, noun: str = "field", hint: str = "") -> None:
    """``d`` is a dict whose keys are all fields of the dataclass ``cls`` (what ``cls(**d)`` needs); else
    ``error`` naming ``what`` and the unknown keys (``noun`` and ``hint`` word the message)."""
    if not isinstance(d, dict):
        raise error(f"{what}: expected a dict of {noun}s, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise error(f"{what}: unknown {noun}(s) {', '.join(map(str, unknown))}{hint}")


class Unfilled:
    """The ``rng=`` of a model whose parameters are overwritten next (a checkpoint being loaded): it draws
    nothing. Each draw is a broadcast zero, which ``Layer.add_parameter`` turns into lazily mapped zeros
    (``layers.base.lazy_zeros``), so a layer replaced before its weight is written never takes that memory."""

    def _zeros(self, size):
        return np.broadcast_to(np.float32(0), () if size is None else size)

    def uniform(self, low=0.0, high=1.0, size=None):
        """Broadcast float32 zeros of ``size`` (a scalar for None), as ``Generator.uniform`` would be shaped; the bounds
        are ignored."""
        return self._zeros(size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        """Broadcast float32 zeros of ``size`` (a scalar for None), as ``Generator.normal`` would be shaped; ``loc`` and
        ``scale`` are ignored."""
        return self._zeros(size)

    def standard_normal(self, size=None):
        """Broadcast float32 zeros of ``size`` (a scalar for None), as ``Generator.standard_normal`` would be shaped."""
        return self._zeros(size)


#: The one :class:`Unfilled` source (``rng=UNFILLED``).
UNFILLED = Unfilled()


def check_rng(name: str, rng) -> np.random.Generator:
    """A random source argument (``rng=``): None (fresh entropy), an int seed >= 0 (Python or NumPy, not a
    bool), a ``numpy.random.Generator`` (returned as is, so layers built from one draw in turn), or a
    ``BitGenerator`` or ``SeedSequence``. Returns the Generator."""
    if isinstance(rng, (np.random.Generator, Unfilled)):
        return rng
    if rng is None or isinstance(rng, (np.random.BitGenerator, np.random.SeedSequence)):
        return np.random.default_rng(rng)
    if not isinstance(rng, (int, np.integer)) or isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"{name}: expected None, an int seed >= 0 or a numpy.random.Generator, "
                        f"got {type(rng).__name__} {rng!r}")
    if rng < 0:
        raise ValueError(f"{name}: expected an int seed >= 0, got {rng!r}")
    return np.random.default_rng(int(rng))
