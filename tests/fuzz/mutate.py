"""Mutations shared by the case generators: bad and unusual versions of arrays, scalars and files, and the
comparison of a result with its reference."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

F = np.float32
SEED = 20240515  # every generated value is drawn from generators seeded from this


def rng(*salt) -> np.random.Generator:
    """A generator seeded from SEED and ``salt`` (strings or ints), the same in every process."""
    key = [SEED] + [sum(ord(c) * 31 ** i for i, c in enumerate(str(s))) % (2**32) for s in salt]
    return np.random.default_rng(key)


# ------------------------------------------------------------------------------------- scalar roles


class Real:
    """A real argument: bounds (open or closed), whether inf is refused (``finite``), None valid
    (``optional``), and whether the callee is meant to check it at all (``checked``: NaN must be refused)."""

    def __init__(self, low=None, high=None, low_open=False, high_open=False, finite=True, optional=False,
                 checked=True):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.finite, self.optional, self.checked = finite, optional, checked

    def valid(self, v):
        if v != v or (self.finite and math.isinf(v)):
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))


class Int:
    """An int argument with an optional lower bound."""

    def __init__(self, low=None, optional=False):
        self.low, self.optional = low, optional


class Flag:
    """A bool argument."""


class Choice:
    """One of a few values (strings)."""

    def __init__(self, *choices):
        self.choices = choices


def scalar_mutations(role, v):
    """(label, value, expect) for a scalar argument whose valid value is ``v``."""
    out = [("None", None, "either" if getattr(role, "optional", False) else "error"),
           ("str", "1", "error"), ("list", [v], "error"), ("dict", {}, "error"), ("complex", 1 + 2j, "error")]
    if isinstance(role, Real):
        out += [("bool", True, "error"), ("np.float32", np.float32(v if v is not None else 1.0), "ok"),
                ("np.float64", np.float64(v if v is not None else 1.0), "ok"),
                ("nan", float("nan"), "error" if role.checked else "either"),
                ("inf", float("inf"), "error" if role.finite and role.checked else "either"),
                ("-inf", float("-inf"), "error" if role.checked else "either"),
                ("huge", 1e12, "either")]
        if v is not None and float(v).is_integer() and role.valid(float(v)):  # the same value as an int
            out.append(("np.int64", np.int64(v), "ok"))
        if role.low is not None:
            below = role.low if role.low_open else role.low - 0.5
            out.append(("below-range", below, "error"))
        if role.high is not None:
            out.append(("above-range", role.high if role.high_open else role.high + 0.5, "error"))
        out.append(("np.float32-0d-array", np.array(v if v is not None else 1.0, F), "either"))
    elif isinstance(role, Int):
        out += [("bool", True, "error"), ("float", float(v), "either"), ("fraction", v + 0.5, "error"),
                ("np.int64", np.int64(v), "ok"), ("np.int32", np.int32(v), "ok"),
                ("huge", 2**62, "either"), ("beyond-int64", 2**64, "either")]
        if v >= 0:
            out.append(("np.uint8", np.uint8(v), "ok"))
        if role.low is not None:
            out.append(("below-range", role.low - 1, "error"))
            out.append(("negative-huge", -(2**62), "error"))
    elif isinstance(role, Flag):
        out += [("int", int(v), "either"), ("np.bool_", np.bool_(v), "ok"), ("float", float(v), "either"),
                ("truthy-str", "no", "error")]
    elif isinstance(role, Choice):
        out += [("bogus", "bogus", "error"), ("int", 1, "error"), ("bytes", str(v).encode(), "error"),
                ("np.str_", np.str_(v), "ok"), ("upper", str(v).upper(), "either")]
    return [m for m in out if not (m[0] == "None" and m[2] == "either" and v is None)]


# ------------------------------------------------------------------------------------------------- arrays


def noncontig(a: np.ndarray) -> np.ndarray:
    """A non-C-contiguous view holding the values of ``a`` (every other element of a wider last axis)."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
    view = big[..., 1::2]
    view[...] = a
    return view


def readonly(a: np.ndarray) -> np.ndarray:
    b = np.array(a)
    b.flags.writeable = False
    return b


def with_dtype(a: np.ndarray, dtype) -> np.ndarray:
    """``a``'s values in ``dtype`` ('>f4' is big-endian float32; object holds Python floats)."""
    if np.dtype(dtype) == np.dtype(object):
        out = np.empty(a.shape, object)
        out[...] = a.astype(np.float64)
        return out
    return np.asarray(a).astype(dtype)


#: dtype mutations of a float32 array: (label, dtype)
DTYPES = (("float16", np.float16), ("big-endian", ">f4"), ("int8", np.int8), ("object", object),
          ("float64", np.float64))


def overlapping(into: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(a, b)`` of one buffer, ``a`` with ``into``'s shape and values and ``b`` with ``other``'s,
    ``b`` starting one element after ``a`` (they overlap at an offset, neither is the other)."""
    n, m = max(into.size, 1), max(other.size, 1)
    buf = np.zeros(max(n, m) + 1, np.result_type(into, other))
    a = buf[:into.size].reshape(into.shape)
    b = buf[1:1 + other.size].reshape(other.shape)
    b[...] = other
    a[...] = into  # a is written last: where they overlap, a holds its values and b holds a's
    return a, b


# ------------------------------------------------------------------------------------------------- checks


def as_f64(x):
    """``x`` as a float64 array (object, big-endian, lists and scalars included), or None if it is not numeric."""
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def compare(got, want, what: str, rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
    """None if ``got`` equals ``want`` within tolerance (NaN equal to NaN, shapes equal), else what differs."""
    g, w = as_f64(got), np.asarray(want, np.float64)
    if g is None:
        return f"{what}: got a {type(got).__name__}, not numbers"
    if g.shape != w.shape:
        return f"{what}: shape {g.shape}, expected {w.shape}"
    if g.size == 0:
        return None
    same = np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    same |= (g == w)  # infinities of one sign
    if same.all():
        return None
    i = np.unravel_index(np.argmax(~same), g.shape)
    return f"{what}: {np.count_nonzero(~same)} of {g.size} values differ, e.g. at {tuple(map(int, i))}: " \
           f"{g[i]!r} vs reference {w[i]!r}"


# -------------------------------------------------------------------------------------------------- files


def case_dir(label: str) -> Path:
    """A fresh folder for one case under the worker's temporary folder, named by a hash of ``label`` (a name
    holding the case's words would make an error message seem to name a file when it names the folder)."""
    root = Path(os.environ.get("FUZZ_TMP", "/tmp")) / "cases"
    root.mkdir(parents=True, exist_ok=True)
    d = root / hashlib.sha1(label.encode()).hexdigest()[:12]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    return d


def nested_json(depth: int = 100_000) -> bytes:
    """A JSON text nested ``depth`` deep (Python's json raises RecursionError on it)."""
    return b"[" * depth + b"]" * depth


#: Damaged versions of a file's bytes: label -> function of the original bytes (None: delete the file).
def file_damages(text: bool) -> dict:
    g = rng("garbage")
    d = {
        "missing": None,
        "empty": lambda b: b"",
        "truncated-7": lambda b: b[:7],
        "truncated-half": lambda b: b[: len(b) // 2],
        "garbage": lambda b: g.integers(0, 256, max(len(b), 64), dtype=np.uint8).tobytes(),
    }
    if text:
        d.update({
            "invalid-utf8": lambda b: b"\xff\xfe\xfa" + b[3:],
            "nested": lambda b: nested_json(),
            "not-json": lambda b: b"{not json",
            "json-list": lambda b: b"[1, 2]",
            "json-null": lambda b: b"null",
        })
    return d


def damage(path: Path, fn) -> None:
    """Apply a damage of :func:`file_damages` to ``path`` (None deletes it; a folder turns into an empty one)."""
    if fn is None:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return
    data = path.read_bytes()
    path.write_bytes(fn(data))


def edit_json(path: Path, key_path: tuple, value) -> None:
    """Set ``key_path`` (keys and indices) in the JSON file ``path`` to ``value`` (``DELETE`` removes it)."""
    d = json.loads(path.read_text(encoding="utf-8"))
    node = d
    for k in key_path[:-1]:
        node = node[k]
    if value is DELETE:
        del node[key_path[-1]]
    else:
        node[key_path[-1]] = value
    path.write_text(json.dumps(d), encoding="utf-8")


DELETE = object()
