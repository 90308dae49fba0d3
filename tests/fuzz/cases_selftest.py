"""Cases with known verdicts, for tests/fuzz/test_harness.py: the harness must see every class of failure."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from tests.fuzz.harness import Case


class TypingError(TypeError):
    """Stands for a numba error (judged by its module, even when it derives from TypeError)."""


TypingError.__module__ = "numba.core.errors"


def _raise(e):
    def call():
        raise e
    return call


def cases():
    return [
        Case("selftest/pass-named-error", _raise(ValueError("x: expected a positive int, got -1")), names=("x",)),
        Case("selftest/pass-file-error", _raise(OSError("cannot read /tmp/a/config.json")), names=("config.json",),
             errors=(OSError,)),
        Case("selftest/pass-either-ok", lambda: 3, expect="either", names=("x",), check=lambda r: None),
        Case("selftest/unnamed", _raise(ValueError("expected a positive int")), names=("x",)),
        Case("selftest/exception", _raise(KeyError("x")), names=("x",)),
        Case("selftest/numba", _raise(TypingError("x: cannot type")), names=("x",)),
        Case("selftest/accepted", lambda: 1, names=("x",)),
        Case("selftest/wrong-result", lambda: 1, expect="ok", check=lambda r: None if r == 2 else f"got {r}"),
        Case("selftest/refused", _raise(ValueError("x: no")), expect="ok"),
        Case("selftest/memory", lambda: np.ones(1 << 31), names=("x",)),
        Case("selftest/recursion", lambda: _deep(0), names=("x",)),
        Case("selftest/exit", lambda: exit(3), names=("x",)),
        Case("selftest/segfault", lambda: ctypes.string_at(0), names=("x",)),
        Case("selftest/pass-after-segfault", _raise(ValueError("x: bad")), names=("x",)),
        Case("selftest/abort", lambda: os.abort(), names=("x",)),
        Case("selftest/hang", lambda: time.sleep(60), names=("x",)),
        Case("selftest/pass-last", lambda: 2, expect="ok", check=lambda r: None if r == 2 else "no"),
    ]


def _deep(n):
    return _deep(n + 1)
