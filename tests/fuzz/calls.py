"""Case generators for ordinary Python entry points (constructors, functions, methods): each argument is
mutated by its role, and a call that is valid but unusual (a NumPy scalar for an int, a float64 array for a
float32 one, a non-contiguous view) must give what the plain call gives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.fuzz.harness import Case, HarnessError
from tests.fuzz.mutate import Choice, Flag, Int, Real, as_f64, compare, scalar_mutations


class Seed:
    """An ``rng`` argument: a seed or a numpy Generator."""


class Text:
    """A string argument (a text, a name): ``optional`` if None is valid."""

    def __init__(self, optional=False):
        self.optional = optional


class Custom:
    """Mutations given by hand: (label, value or factory (called with no argument), expect[, factory of the
    plain value it stands for, e.g. the float32 array of a float64 one])."""

    def __init__(self, *mutations):
        self.mutations = mutations


def role_mutations(role, v):
    """(label, value factory, expect, plain factory or None) for an argument of ``role`` whose valid value is
    ``v``."""
    return [m if len(m) == 4 else (*m, None) for m in _role_mutations(role, v)]


def _role_mutations(role, v):
    if isinstance(role, (Real, Int, Flag, Choice)):
        return [(label, (lambda x=x: x), expect) for label, x, expect in scalar_mutations(role, v)]
    if isinstance(role, Seed):
        return [(label, (lambda x=x: x), expect) for label, x, expect in (
            ("str", "abc", "error"), ("negative", -1, "error"), ("float", 0.5, "error"), ("dict", {}, "error"),
            ("np.int64", np.int64(v), "ok"), ("generator", np.random.default_rng(v), "ok"))]
    if isinstance(role, Text):
        out = [("int", lambda: 1, "error"), ("bytes", lambda: b"abc", "error"), ("list", lambda: ["a"], "error"),
               ("np.str_", lambda: np.str_(v), "ok")]
        if not role.optional:
            out.append(("None", lambda: None, "error"))
        return out
    if isinstance(role, Custom):
        return [(m[0], (m[1] if callable(m[1]) else (lambda x=m[1]: x)), *m[2:]) for m in role.mutations]
    raise TypeError(f"unknown role {role!r}")


def same(got, want, what="result") -> str | None:
    """None if two results (arrays, numbers, strings, None, or tuples/lists/dicts of them) are equal (arrays
    within float32 tolerance), else what differs."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            return f"{what}: keys {sorted(got) if isinstance(got, dict) else type(got).__name__}, expected " \
                   f"{sorted(want)}"
        for k in want:
            p = same(got[k], want[k], f"{what}[{k!r}]")
            if p:
                return p
        return None
    if isinstance(want, (tuple, list)) and not (want and isinstance(want[0], (int, float)) and
                                               isinstance(got, np.ndarray)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return f"{what}: {type(got).__name__} of {len(got) if hasattr(got, '__len__') else '?'}, expected " \
                   f"{len(want)} items"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            p = same(g, w, f"{what}[{i}]")
            if p:
                return p
        return None
    if isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
        if as_f64(want) is None:
            return None if np.array_equal(got, want) else f"{what}: {got!r} vs {want!r}"
        return compare(got, want, what)
    if isinstance(want, float) and isinstance(got, (float, np.floating)):
        return compare(got, want, what)
    return None if got == want and type(got) is type(want) or got == want and isinstance(want, (int, float)) \
        else f"{what}: {got!r} ({type(got).__name__}), expected {want!r} ({type(want).__name__})"


def plain(role, m, v0):
    """The plain Python value a mutation stands for: a NumPy scalar or 0-d array as its Python value, an
    integral float for an int, a number for a flag, the valid seed for a Generator."""
    if isinstance(role, Seed) and isinstance(m, np.random.Generator):
        return v0
    if isinstance(m, (np.generic, np.ndarray)) and np.ndim(m) == 0 and m.dtype != object:
        m = m.item()
    if isinstance(role, Int) and isinstance(m, float) and m.is_integer():
        return int(m)
    if isinstance(role, Flag) and isinstance(m, (int, float)) and not isinstance(m, bool):
        return bool(m)
    return m


def call_cases(prefix: str, call: Callable[[dict], object], valid: Callable[[], dict], roles: dict,
               key: Callable[[object], object] = lambda r: r, fix: str = "", names: dict | None = None,
               expects: dict | None = None, skip=()) -> list[Case]:
    """Cases of ``call(kwargs)``: the valid call (``valid()`` makes fresh keywords) and, per keyword of
    ``roles``, each mutation of its role. An ``ok`` or ``either`` mutation that returns must give
    ``key(result)`` equal to that of the call with the plain Python value (:func:`plain`). ``names[arg]``: the
    names its errors may use (default: the argument's own). ``expects[(arg, label)]`` overrides a mutation's
    expectation; ``skip`` holds the (arg, label) pairs to leave out."""
    names = names or {}
    expects = expects or {}

    def run(arg, role, make, plain_make):
        def go():
            kw = valid()
            v0 = kw.get(arg)
            kw[arg] = make()
            got = key(call(kw))
            try:  # the plain call with the same value (a NumPy scalar as a Python one)
                kw = valid()
                # made again: a generator given is used up
                kw[arg] = plain_make() if plain_make else plain(role, make(), v0)
                want = key(call(kw))
            except Exception as e:
                raise HarnessError(f"the plain call of {prefix} with {arg}={kw[arg]!r} failed: "
                                   f"{type(e).__name__}: {e}") from e
            return got, want
        return go

    def check(result):
        got, want = result
        return same(got, want)

    out = [Case(f"{prefix}/valid", lambda: (key(call(valid())), key(call(valid()))), "ok", (), check, fix=fix)]
    v0 = valid()
    for arg, role in roles.items():
        for label, make, expect, plain_make in role_mutations(role, v0.get(arg)):
            if (arg, label) in skip:
                continue
            expect = expects.get((arg, label), expect)
            out.append(Case(f"{prefix}/{arg}/{label}", run(arg, role, make, plain_make), expect,
                            names.get(arg, (arg,)), check,
                            fix=fix))
    return out
