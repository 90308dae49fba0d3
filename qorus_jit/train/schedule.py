"""Learning-rate schedules: pure functions of the optimizer step.

A schedule is any callable ``lr_at(step) -> float`` where ``step`` counts optimizer steps from 0: the
learning rate of the first update is ``lr_at(0)``. Schedules hold no state, so a run resumed from a
checkpoint at step ``k`` continues with ``lr_at(k)`` exactly, with nothing to save. A training loop sets
the rate before each update::

    optimizer.lr = schedule(optimizer.step_count)
    optimizer.step()

This equals ``torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step) / lr)`` stepped once after
each ``opt.step()``.

Warmup (:func:`warmup`) uses the common ``LambdaLR`` form ``peak * (step + 1) / warmup_steps`` for
``step < warmup_steps``: the first update already uses ``peak / warmup_steps`` (no wasted step at rate 0)
and step ``warmup_steps - 1`` reaches the peak. The wrapped schedule then runs from its own step 0, so
``warmup(s, w)(w + k) == s(k)``, and the peak is ``s(0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from qorus_jit.core.check import check_real

__all__ = [
    "Schedule", "constant", "cosine", "linear", "make_schedule", "step_decay", "warmup", "warmup_cosine",
]


@runtime_checkable
class Schedule(Protocol):
    """A learning rate as a pure function of the optimizer step (``step >= 0``, counted from 0)."""

    def __call__(self, step: int) -> float: ...


def _check_step(step) -> int:
    if not isinstance(step, (int, np.integer)) or isinstance(step, (bool, np.bool_)) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    return int(step)


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _check_lr(lr) -> float:
    return check_real("lr", lr, low=0.0)


def _check_min_lr(min_lr, lr: float) -> float:
    min_lr = check_real("min_lr", min_lr, low=0.0)
    if min_lr > lr:
        raise ValueError(f"min_lr: expected a value <= lr ({lr!r}), got {min_lr!r}")
    return min_lr


class _Base:
    """Shared call protocol: validate ``step``, then the closed form ``_at``; ``repr`` is the building call."""

    def __call__(self, step: int) -> float:
        return self._at(_check_step(step))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (the same as calling the schedule)."""
        return self(step)

    def _at(self, step: int) -> float:
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class _Constant(_Base):
    def __init__(self, lr):
        self.lr = _check_lr(lr)

    def _at(self, step: int) -> float:
        return self.lr

    def __repr__(self) -> str:
        return f"constant(lr={self.lr!r})"


class _StepDecay(_Base):
    def __init__(self, lr, step_size, gamma):
        self.lr = _check_lr(lr)
        self.step_size = _check_count("step_size", step_size, 1)
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)

    def _at(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)

    def __repr__(self) -> str:
        return f"step_decay(lr={self.lr!r}, step_size={self.step_size}, gamma={self.gamma!r})"


class _Cosine(_Base):
    def __init__(self, lr, total_steps, min_lr):
        self.lr = _check_lr(lr)
        self.total_steps = _check_count("total_steps", total_steps, 1)
        self.min_lr = _check_min_lr(min_lr, self.lr)

    def _at(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return f"cosine(lr={self.lr!r}, total_steps={self.total_steps}, min_lr={self.min_lr!r})"


class _Linear(_Base):
    def __init__(self, lr, total_steps, min_lr):
        self.lr = _check_lr(lr)
        self.total_steps = _check_count("total_steps", total_steps, 1)
        self.min_lr = _check_min_lr(min_lr, self.lr)

    def _at(self, step: int) -> float:
        return self.lr + (self.min_lr - self.lr) * (min(step, self.total_steps) / self.total_steps)

    def __repr__(self) -> str:
        return f"linear(lr={self.lr!r}, total_steps={self.total_steps}, min_lr={self.min_lr!r})"


class _Warmup(_Base):
    def __init__(self, schedule, warmup_steps):
        if not callable(schedule):
            raise TypeError(f"schedule: expected a callable step -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.warmup_steps = _check_count("warmup_steps", warmup_steps, 0)

    def _at(self, step: int) -> float:
        if step < self.warmup_steps:
            return float(self.schedule(0)) * ((step + 1) / self.warmup_steps)
        return float(self.schedule(step - self.warmup_steps))

    def __repr__(self) -> str:
        return f"warmup({self.schedule!r}, warmup_steps={self.warmup_steps})"


def constant(lr: float) -> Schedule:
    """``lr`` at every step.

    >>> constant(0.1)(7)
    0.1
    """
    return _Constant(lr)


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (step // step_size)``: multiplied by ``gamma`` (in [0, 1]) every ``step_size`` steps,
    as ``StepLR``.

    >>> s = step_decay(1.0, step_size=10, gamma=0.5)
    >>> s(9), s(10), s(25)
    (1.0, 0.5, 0.25)
    """
    return _StepDecay(lr, step_size, gamma)


def cosine(lr: float, total_steps: int, min_lr: float = 0.0) -> Schedule:
    """Cosine decay from ``lr`` at step 0 to ``min_lr`` at ``total_steps``, then ``min_lr``:
    ``min_lr + (lr - min_lr) * (1 + cos(pi * min(step, total_steps) / total_steps)) / 2``
    (``CosineAnnealingLR`` with ``T_max = total_steps``, up to ``T_max``). ``0 <= min_lr <= lr``.

    >>> s = cosine(1.0, total_steps=10, min_lr=0.1)
    >>> s(0), round(s(5), 6), s(10), s(99)
    (1.0, 0.55, 0.1, 0.1)
    """
    return _Cosine(lr, total_steps, min_lr)


def linear(lr: float, total_steps: int, min_lr: float = 0.0) -> Schedule:
    """Linear decay from ``lr`` at step 0 to ``min_lr`` at ``total_steps``, then ``min_lr``:
    ``lr + (min_lr - lr) * min(step, total_steps) / total_steps``
    (``LinearLR(start_factor=1, end_factor=min_lr / lr, total_iters=total_steps)``). ``0 <= min_lr <= lr``.

    >>> s = linear(1.0, total_steps=4)
    >>> [s(k) for k in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    return _Linear(lr, total_steps, min_lr)


def warmup(schedule: Callable[[int], float], warmup_steps: int) -> Schedule:
    """Linear warmup in front of ``schedule``: ``schedule(0) * (step + 1) / warmup_steps`` for
    ``step < warmup_steps``, then ``schedule(step - warmup_steps)``. ``warmup_steps = 0`` is ``schedule``.

    ``schedule`` is any callable ``step -> lr`` (a schedule of this module or a plain function).

    >>> s = warmup(constant(1.0), 4)
    >>> [s(k) for k in range(6)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    return _Warmup(schedule, warmup_steps)


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> Schedule:
    """Linear warmup to ``lr`` over ``warmup_steps`` steps, then cosine decay to ``min_lr`` at ``total_steps``
    (counted from step 0, warmup included): ``warmup(cosine(lr, total_steps - warmup_steps, min_lr), warmup_steps)``.

    >>> s = warmup_cosine(1.0, warmup_steps=2, total_steps=6)
    >>> [round(s(k), 6) for k in range(7)]
    [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447, 0.0]
    """
    warmup_steps = _check_count("warmup_steps", warmup_steps, 0)
    total_steps = _check_count("total_steps", total_steps, 1)
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps: expected more than warmup_steps ({warmup_steps}), got {total_steps}")
    return _Warmup(_Cosine(lr, total_steps - warmup_steps, min_lr), warmup_steps)


SCHEDULES = ("constant", "step", "cosine", "linear")


def make_schedule(name: str, lr: float, *, warmup_steps: int = 0, total_steps: int | None = None,
                  min_lr: float = 0.0, step_size: int | None = None, gamma: float = 0.1) -> Schedule:
    """A schedule from config values: ``name`` is one of ``constant``, ``step``, ``cosine``, ``linear``.

    ``cosine`` and ``linear`` need ``total_steps`` (warmup included: the decay spans
    ``total_steps - warmup_steps`` steps after the warmup) and take ``min_lr``; ``step`` needs
    ``step_size`` and takes ``gamma``. ``warmup_steps > 0`` puts :func:`warmup` in front, and the wrapped
    schedule counts its steps from the end of the warmup. ``total_steps`` is accepted (and checked) by
    every name; the options of another schedule raise a ValueError.

    >>> make_schedule("cosine", 3e-4, warmup_steps=100, total_steps=1000, min_lr=3e-5)
    warmup(cosine(lr=0.0003, total_steps=900, min_lr=3e-05), warmup_steps=100)
    """
    if name not in SCHEDULES:
        raise ValueError(f"name: expected one of {', '.join(SCHEDULES)}, got {name!r}")
    lr = _check_lr(lr)
    warmup_steps = _check_count("warmup_steps", warmup_steps, 0)
    if total_steps is not None:
        total_steps = _check_count("total_steps", total_steps, 1)
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps: expected more than warmup_steps ({warmup_steps}), got {total_steps}")
    if name != "step":
        if step_size is not None:
            raise ValueError(f"step_size: only the 'step' schedule takes it, got step_size={step_size!r} "
                             f"with {name!r}")
        if gamma != 0.1:
            raise ValueError(f"gamma: only the 'step' schedule takes it, got gamma={gamma!r} with {name!r}")
    if name in ("constant", "step") and min_lr != 0.0:
        raise ValueError(f"min_lr: only the 'cosine' and 'linear' schedules take it, got min_lr={min_lr!r} "
                         f"with {name!r}")
    if name == "constant":
        inner = _Constant(lr)
    elif name == "step":
        if step_size is None:
            raise ValueError("step_size: the 'step' schedule needs step_size (steps between decays), got None")
        inner = _StepDecay(lr, step_size, gamma)
    else:
        if total_steps is None:
            raise ValueError(f"total_steps: the {name!r} schedule needs total_steps, got None")
        cls = _Cosine if name == "cosine" else _Linear
        inner = cls(lr, total_steps - warmup_steps, min_lr)
    return _Warmup(inner, warmup_steps) if warmup_steps else inner
