"""Where the time of a step goes: wall time per layer, per kernel, in the loss and in the optimizer.

>>> with profile(model, optimizer=opt, loss=loss_fn) as prof:        # doctest: +SKIP
...     for x, y in batches:
...         opt.zero_grad()
...         loss, dlogits = loss_fn(model.forward(x), y)
...         model.backward(dlogits)
...         opt.step()
>>> print(prof.table())                                              # doctest: +SKIP

Inside the ``with`` block the profiler times, with ``time.perf_counter`` around each call:

- every layer's ``forward`` and ``backward`` (the model and each sub-layer reached through the children of
  the layer protocol), by setting timing wrappers as attributes of the layer instances;
- every kernel called through ``qorus_jit.kernels.trusted`` (``K.linear_forward(...)``), the one namespace
  of kernels that layers, models, losses and optimizers call: each of its entries is swapped for a timing
  wrapper while the block runs (its one dispatch hook). Kernels call one another inside the kernel modules,
  never through that namespace, so compiled code never sees a wrapper;
- ``loss(...)`` calls of the ``loss`` object (Python looks ``__call__`` up on the class, so for the block
  the object's class is a subclass with a timed ``__call__``: ``isinstance`` still holds), the ``step``,
  ``zero_grad``, ``clip_grad_norm`` and ``grad_norm`` calls of the ``optimizer``, and any block under
  ``prof.section(name)``.

On exit (also after an exception) every entry and attribute is put back: the model, optimizer and loss are
left exactly as they were, and results are the same with and without the profiler (the wrappers only call
through). Each wrapped call costs one or two microseconds; a Llama training step makes a few hundred.

Times are inclusive: a transformer block's time holds its attention and MLP, whose own rows follow it.
"Kernels" is the time inside kernel calls; "other" is the rest: Python, the graph and NumPy glue (residual
adds, copies, buffer zeroing). Times are reported per step: ``steps`` given to :func:`profile`, else the
number of calls of ``model.forward`` made outside any other timed call. The profiler follows one Python
thread: call the model from the thread that entered the ``with`` block.
"""

from __future__ import annotations

import inspect
import re
import time
import types
from contextlib import contextmanager

import numpy as np
from numba.core.dispatcher import Dispatcher

from qorus_jit.kernels import trusted
from qorus_jit.layers.base import Layer

__all__ = ["Profile", "profile"]

_OPTIMIZER_METHODS = ("step", "zero_grad", "clip_grad_norm", "grad_norm")
_TABLES = ("step", "path", "type", "kernel")
_active: list[Profile] = []  # the profile in effect (one at a time)


def _kernel_name(kernel) -> str:
    """``family.function`` of a kernel (a numba dispatcher or a function of ``qorus_jit.kernels``), named
    after its definition: ``matmul._linear_forward`` for ``K.linear_forward``."""
    fn = kernel.py_func if isinstance(kernel, Dispatcher) else kernel
    mod = getattr(fn, "__module__", None) or "?"
    return f"{mod.removeprefix('qorus_jit.kernels.')}.{getattr(fn, '__name__', '?')}"


def _merge_name(name: str) -> str:
    """``model.layers.3`` -> ``model.layers.*`` (numbered children of one kind fold into one row)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)


def _count(rec, dt, dk, top):
    """Add one call of ``dt`` seconds (``dk`` of them in kernels) to a frame record [calls, total, kernels,
    top-level total, top-level kernels]; ``top``: the call had no enclosing frame."""
    rec[0] += 1
    rec[1] += dt
    rec[2] += dk
    if top:
        rec[3] += dt
        rec[4] += dk


class Profile:
    """The state and results of one :func:`profile` run (see the module docstring)."""

    def __init__(self, model, optimizer=None, loss=None, steps: int | None = None):
        if steps is not None and (isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer))
                                  or steps < 1):
            raise ValueError(f"steps: expected a positive int or None, got {steps!r}")
        steps = None if steps is None else int(steps)
        if not callable(getattr(model, "forward", None)):
            raise TypeError(f"model: expected a layer (with forward and backward), got {type(model).__name__}")
        if optimizer is not None and not (callable(getattr(optimizer, "step", None))
                                          and callable(getattr(optimizer, "zero_grad", None))):
            raise TypeError(f"optimizer: expected an optimizer (with step and zero_grad) or None, got "
                            f"{type(optimizer).__name__}")
        call = None if loss is None else inspect.getattr_static(type(loss), "__call__", None)
        if loss is not None and not isinstance(call, types.FunctionType):
            raise TypeError(f"loss: expected a loss object (an instance of a class defining __call__), got "
                            f"{type(loss).__name__}; time a plain function with prof.section('loss')")
        self.model, self.optimizer, self.loss, self._steps = model, optimizer, loss, steps
        self._stack: list = []  # keys of the timed calls in progress, innermost last
        # key -> [calls, seconds, kernel seconds, the same two for calls made outside any other timed call]
        self._frames: dict = {}
        self._kernels: dict = {}  # (key of the innermost timed call or None, kernel name) -> [calls, seconds]
        self._kernel_s = 0.0  # all kernel time so far (frames take differences of it)
        self._in_kernel = False
        self._on = False  # inside the with block
        self._undo: list = []  # callables restoring what was swapped, in swap order
        self._tree: list[tuple[str, str | None, str, str, int]] = []  # (path, parent, name, type, depth)
        self._forwards = 0  # top-level model.forward calls
        self.total_s = 0.0
        self._t0 = None

    # -- entering and leaving ------------------------------------------------------------------------

    def __enter__(self) -> Profile:
        if _active:
            raise RuntimeError("a profile is already active; profiles do not nest")
        _active.append(self)
        try:
            self._instrument()
        except BaseException:
            self._restore()
            _active.clear()
            raise
        self._on = True
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self.total_s += time.perf_counter() - self._t0
        self._on = False
        self._restore()
        _active.clear()
        return False

    def _restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- instrumentation -----------------------------------------------------------------------------

    def _kernel_wrapper(self, fn, name: str):
        prof, kernels, perf_counter = self, self._kernels, time.perf_counter

        def timed_kernel(*args, **kwargs):
            # a kernel called from inside another kernel's call counts once, by the outer one; a wrapper kept
            # past the profile (``f = K.relu_forward`` inside the block) just calls through
            if prof._in_kernel or not prof._on:
                return fn(*args, **kwargs)
            prof._in_kernel = True
            t0 = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = perf_counter() - t0
                prof._in_kernel = False
                prof._kernel_s += dt
                key = (prof._stack[-1] if prof._stack else None, name)
                rec = kernels.get(key)
                if rec is None:
                    kernels[key] = [1, dt]
                else:
                    rec[0] += 1
                    rec[1] += dt

        timed_kernel.__name__ = timed_kernel.__qualname__ = getattr(fn, "__name__", name)
        timed_kernel.__doc__, timed_kernel.__wrapped__ = getattr(fn, "__doc__", None), fn
        return timed_kernel

    def _frame_wrapper(self, fn, key):
        """Time ``fn`` as the frame ``key``: ``("layer", path, phase)`` or ``("section", name)``."""
        prof, stack, perf_counter = self, self._stack, time.perf_counter
        rec = self._frames.setdefault(key, [0, 0.0, 0.0, 0.0, 0.0])
        root_forward = key == ("layer", "", "forward")

        def timed(*args, **kwargs):
            if not prof._on:  # a reference kept past the profile just calls through
                return fn(*args, **kwargs)
            top = not stack
            if top and root_forward:
                prof._forwards += 1
            stack.append(key)
            k0 = prof._kernel_s
            t0 = perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                _count(rec, perf_counter() - t0, prof._kernel_s - k0, top)

        timed.__name__ = timed.__qualname__ = getattr(fn, "__name__", "timed")
        timed.__wrapped__ = fn
        return timed

    def _set_attr(self, obj, name: str, value) -> None:
        """Set an attribute of an instance or a module, to be put back (or removed) on exit."""
        d = vars(obj)
        had, old = name in d, d.get(name)
        d[name] = value

        def undo():
            if had:
                d[name] = old
            else:
                d.pop(name, None)

        self._undo.append(undo)

    def _layers(self):
        """(path, parent path, name in parent, layer, depth) for the model and its sub-layers, pre-order:
        the registered children, then layers held as plain attributes (FeedForward's ``act``); a layer
        reached twice keeps its first path."""
        out, seen = [], set()

        def walk(layer, path, parent, name, depth):
            if id(layer) in seen:
                return
            seen.add(id(layer))
            out.append((path, parent, name, layer, depth))
            children = [(n or f"({type(c).__name__})", c) for n, c in layer.children().items()]
            children += [(n, c) for n, c in vars(layer).items() if isinstance(c, Layer) and id(c) not in seen
                         and all(c is not k for _, k in children)]
            for child_name, child in children:
                child_path = f"{path}.{child_name}" if path else child_name
                walk(child, child_path, path, child_name, depth + 1)

        walk(self.model, "", None, type(self.model).__name__, 0)
        return out

    def _instrument(self) -> None:
        layers = self._layers()
        self._tree = [(path, parent, name, type(layer).__name__, depth) for path, parent, name, layer, depth in layers]
        # the kernels: every entry of kernels.trusted, the namespace layers, losses and optimizers call
        for name in trusted.__all__:
            kernel = getattr(trusted, name)
            self._set_attr(trusted, name, self._kernel_wrapper(kernel, _kernel_name(kernel)))

        # the layers' forward and backward, the optimizer's methods, the loss's __call__
        for path, _, _, layer, _ in layers:
            for phase in ("forward", "backward"):
                method = getattr(layer, phase, None)
                if callable(method):
                    self._set_attr(layer, phase, self._frame_wrapper(method, ("layer", path, phase)))
        if self.optimizer is not None:
            for name in _OPTIMIZER_METHODS:
                method = getattr(self.optimizer, name, None)
                if callable(method):
                    self._set_attr(self.optimizer, name, self._frame_wrapper(method, ("section", f"optimizer.{name}")))
        if self.loss is not None:
            # ``loss(...)`` looks ``__call__`` up on the class: the object gets a subclass whose ``__call__``
            # is timed, and its own class back on exit
            loss, cls = self.loss, type(self.loss)
            call = self._frame_wrapper(cls.__call__, ("section", "loss"))
            loss.__class__ = type(cls.__name__, (cls,), {"__call__": lambda self, *a, **k: call(self, *a, **k),
                                                         "__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__})

            def undo():
                loss.__class__ = cls

            self._undo.append(undo)

    @contextmanager
    def section(self, name: str):
        """Time a block of your own (data loading, a metric) as a row ``name``:
        ``with prof.section("data"): x, y = next(batches)``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        key = ("section", name)
        rec = self._frames.setdefault(key, [0, 0.0, 0.0, 0.0, 0.0])
        top = not self._stack
        self._stack.append(key)
        k0, t0 = self._kernel_s, time.perf_counter()
        try:
            yield
        finally:
            self._stack.pop()
            _count(rec, time.perf_counter() - t0, self._kernel_s - k0, top)

    # -- results -------------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """The step count times are divided by: ``steps`` given, else top-level ``model.forward`` calls."""
        return self._steps or self._forwards or 1

    @property
    def step_ms(self) -> float:
        """Wall time inside the ``with`` block per step, in ms."""
        return 1e3 * self.total_s / self.steps

    @property
    def kernel_ms(self) -> float:
        """Time inside kernels per step, in ms."""
        return 1e3 * self._kernel_s / self.steps

    def _ms(self, seconds: float) -> float:
        return 1e3 * seconds / self.steps

    def _share(self, seconds: float) -> float:
        return seconds / self.total_s if self.total_s > 0 else 0.0

    def _frame_label(self, key) -> str:
        if key[0] == "section":
            return key[1]
        _, path, phase = key
        return phase if path == "" else f"{path}.{phase}"

    def _step_rows(self) -> list[dict]:
        def order(key):  # forward, backward, the loss, the optimizer, then other sections as first seen
            if key[0] == "layer":
                return (0 if key[1] == "" else 1, key[2] != "forward")
            return (2 if key[1] == "loss" else 3 if key[1].startswith("optimizer.") else 4, 0)

        rows, covered, covered_k = [], 0.0, 0.0
        for key in sorted((k for k, r in self._frames.items() if r[3] > 0), key=order):
            calls, _, _, top_s, top_k = self._frames[key]
            covered, covered_k = covered + top_s, covered_k + top_k
            rows.append(dict(by="step", name=self._frame_label(key), calls=calls / self.steps, ms=self._ms(top_s),
                             share=self._share(top_s), kernel_ms=self._ms(top_k), other_ms=self._ms(top_s - top_k)))
        outside = max(self.total_s - covered, 0.0)
        outside_k = max(self._kernel_s - covered_k, 0.0)
        rows.append(dict(by="step", name="rest of the loop", calls=None, ms=self._ms(outside),
                         share=self._share(outside), kernel_ms=self._ms(outside_k),
                         other_ms=self._ms(outside - outside_k)))
        rows.append(dict(by="step", name="step", calls=None, ms=self.step_ms, share=1.0 if self.total_s else 0.0,
                         kernel_ms=self.kernel_ms, other_ms=self._ms(self.total_s - self._kernel_s)))
        return rows

    def _path_rows(self, depth: int | None, merge: bool, kernels: bool) -> list[dict]:
        # displayed node of each layer path: its own (merged) row, or that of its deepest shown ancestor
        node_of: dict[str, tuple] = {}
        nodes: dict[tuple, dict] = {}
        order: list[tuple] = []
        for path, parent, name, type_name, d in self._tree:
            if depth is not None and d > depth:
                node_of[path] = node_of[parent]
                continue
            shown = _merge_name(name) if merge and parent is not None else name
            node_key = (node_of[parent] if parent is not None else "", shown, type_name)
            node_of[path] = node_key
            if node_key not in nodes:
                nodes[node_key] = dict(by="path", name=shown, type=type_name,
                                       depth=d, calls=0, forward_ms=0.0, backward_ms=0.0, ms=0.0, kernel_ms=0.0,
                                       instances=0, _kernels={})
                order.append(node_key)
            nodes[node_key]["instances"] += 1
        shown_paths = {path for path, *_, d in self._tree if depth is None or d <= depth}
        for key, (calls, secs, kernel_s, *_) in self._frames.items():
            if key[0] != "layer" or key[1] not in shown_paths:
                continue
            row = nodes[node_of[key[1]]]
            if key[2] == "forward":
                row["calls"] += calls
            row[f"{key[2]}_ms"] += self._ms(secs)
            row["ms"] += self._ms(secs)
            row["kernel_ms"] += self._ms(kernel_s)
        for (owner, kname), (calls, secs) in self._kernels.items():
            if owner is None or owner[0] != "layer" or owner[1] not in node_of:
                continue
            agg = nodes[node_of[owner[1]]]["_kernels"].setdefault(kname, [0, 0.0])
            agg[0] += calls
            agg[1] += secs
        rows = []
        for node_key in order:
            row = nodes[node_key]
            if row["ms"] == 0.0 and not row["_kernels"]:
                continue
            kern = row.pop("_kernels")
            row["calls"] /= self.steps
            row["other_ms"] = row["ms"] - row["kernel_ms"]
            row["share"] = row["ms"] / self.step_ms if self.step_ms else 0.0
            rows.append(row)
            if kernels:
                for kname, (calls, secs) in sorted(kern.items(), key=lambda kv: -kv[1][1]):
                    rows.append(dict(by="path", name=kname, type="kernel", depth=row["depth"] + 1,
                                     calls=calls / self.steps, ms=self._ms(secs), kernel_ms=self._ms(secs),
                                     share=self._share(secs)))
        return rows

    def _type_rows(self) -> list[dict]:
        types_of = {path: type_name for path, _, _, type_name, _ in self._tree}
        agg: dict[str, dict] = {}
        for key, (calls, secs, kernel_s, *_) in self._frames.items():
            if key[0] != "layer":
                continue
            t = types_of.get(key[1], "?")
            row = agg.setdefault(t, dict(by="type", name=t, calls=0, forward_ms=0.0, backward_ms=0.0, ms=0.0,
                                         kernel_ms=0.0))
            if key[2] == "forward":
                row["calls"] += calls
            row[f"{key[2]}_ms"] += self._ms(secs)
            row["ms"] += self._ms(secs)
            row["kernel_ms"] += self._ms(kernel_s)
        rows = sorted(agg.values(), key=lambda r: -r["ms"])
        for row in rows:
            row["calls"] /= self.steps
            row["other_ms"] = row["ms"] - row["kernel_ms"]
            row["share"] = row["ms"] / self.step_ms if self.step_ms else 0.0
        return rows

    def _kernel_rows(self) -> list[dict]:
        types_of = {path: type_name for path, _, _, type_name, _ in self._tree}
        agg: dict[tuple, list] = {}
        for (owner, kname), (calls, secs) in self._kernels.items():
            if owner is None:
                caller = "rest of the loop"
            elif owner[0] == "section":
                caller = owner[1]
            else:
                caller = types_of.get(owner[1], "?")
            rec = agg.setdefault((kname, caller), [0, 0.0])
            rec[0] += calls
            rec[1] += secs
        rows = [dict(by="kernel", name=k, caller=c, calls=n / self.steps, ms=self._ms(s), share=self._share(s),
                     us_per_call=1e6 * s / n if n else 0.0) for (k, c), (n, s) in agg.items()]
        return sorted(rows, key=lambda r: -r["ms"])

    def rows(self, by: str | None = None, *, depth: int | None = None, merge: bool = True,
             kernels: bool = True) -> list[dict]:
        """The measurements as dicts, times in ms per step and shares as fractions of the step.

        ``by``: ``"step"`` (top-level parts: forward, backward, loss, optimizer calls, sections, the rest,
        and the whole step, each split into kernel and other time), ``"path"`` (the layer tree, inclusive
        times, with the kernels each shown layer calls directly or through layers below ``depth``;
        ``merge`` folds numbered children such as ``model.layers.0`` .. ``3`` into ``model.layers.*``),
        ``"type"`` (layers summed by class; nested classes overlap), ``"kernel"`` (each kernel by its
        calling layer class or section), or None for all four, each row tagged with ``by``."""
        if by is None:
            return [r for b in _TABLES for r in self.rows(b, depth=depth, merge=merge, kernels=kernels)]
        if by == "step":
            return self._step_rows()
        if by == "path":
            return self._path_rows(depth, merge, kernels)
        if by == "type":
            return self._type_rows()
        if by == "kernel":
            return self._kernel_rows()
        raise ValueError(f"by: expected one of {_TABLES} or None, got {by!r}")

    def table(self, by: str | tuple[str, ...] = ("step", "path", "kernel"), *, depth: int | None = None,
              merge: bool = True, kernels: bool = True, top: int | None = None) -> str:
        """The measurements as printable text: one table per name in ``by`` (see :meth:`rows`); ``top``
        keeps the first rows of the kernel table."""
        parts = [f"{self.steps} step{'s' if self.steps != 1 else ''}, {self.step_ms:.4g} ms per step "
                 f"({100 * self._share(self._kernel_s):.1f}% in kernels)"]
        for b in (by,) if isinstance(by, str) else by:
            rows = self.rows(b, depth=depth, merge=merge, kernels=kernels)
            if b == "kernel" and top is not None:
                rows = rows[:top]
            parts.append(_format(b, rows))
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()


def _num(x, fmt: str = ".2f") -> str:
    return "" if x is None else format(x, fmt)


def _format(by: str, rows: list[dict]) -> str:
    big = max((r["ms"] for r in rows), default=0.0)
    digits = 2 if big >= 10 else 3 if big >= 1 else 4

    def ms(x):
        return _num(x, f".{digits}f")

    def pct(r):
        return f"{100 * r['share']:.1f}%"

    if by == "step":
        head = ("part", "ms/step", "share", "kernels", "other")
        body = [(r["name"], ms(r["ms"]), pct(r), ms(r["kernel_ms"]), ms(r["other_ms"])) for r in rows]
    elif by == "path":
        head = ("layer (inclusive) / kernel", "type", "calls", "forward", "backward", "ms/step", "share",
                "kernels", "other")
        body = []
        for r in rows:
            indent = "  " * r["depth"]
            if r["type"] == "kernel":
                body.append((f"{indent}- {r['name']}", "", _num(r["calls"], "g"), "", "", ms(r["ms"]), pct(r),
                             "", ""))
            else:
                body.append((indent + r["name"], r["type"], _num(r["calls"], "g"), ms(r["forward_ms"]),
                             ms(r["backward_ms"]), ms(r["ms"]), pct(r), ms(r["kernel_ms"]),
                             ms(r["other_ms"])))
    elif by == "type":
        head = ("layer type (inclusive)", "calls", "forward", "backward", "ms/step", "share", "kernels", "other")
        body = [(r["name"], _num(r["calls"], "g"), ms(r["forward_ms"]), ms(r["backward_ms"]), ms(r["ms"]),
                 pct(r), ms(r["kernel_ms"]), ms(r["other_ms"])) for r in rows]
    else:
        head = ("kernel", "caller", "calls", "ms/step", "share", "us/call")
        body = [(r["name"], r["caller"], _num(r["calls"], "g"), ms(r["ms"]), pct(r), _num(r["us_per_call"], ".0f"))
                for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    left = {0, 1} if by in ("path", "kernel") else {0}

    def line(cells):
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), "-" * sum(widths + [2 * (len(widths) - 1)])] + [line(c) for c in body])


def profile(model, optimizer=None, loss=None, steps: int | None = None) -> Profile:
    """Profile what runs inside ``with profile(model, ...) as prof:``; then ``prof.table()``, ``prof.rows()``.

    ``optimizer``: time its ``step``/``zero_grad``/``clip_grad_norm``/``grad_norm``; ``loss``: a loss object
    (such as :class:`~qorus_jit.train.losses.CrossEntropyLoss`) whose calls are timed; ``steps``: the number of steps
    run inside the block (default: the number of ``model.forward`` calls). Anything else:
    ``with prof.section("name"): ...``."""
    return Profile(model, optimizer=optimizer, loss=loss, steps=steps)
