"""The thread count chosen at run time: on cores that other processes share, the count that runs a repeated
piece of work fastest now, found by timing that work.

numba's and the BLAS's threads meet at every parallel region; while another process holds a core, a region's
join waits for a scheduler slice, and two threads can run slower than one (docs/design.md, "Threads on a
shared machine"). Which count wins depends on the load and on the work, so :class:`ThreadTuner` measures it on
the work itself, unit by unit (a decoded token, a training step):

- while other processes leave the cores idle (they take less than :data:`BUSY` of the machine's CPU time),
  it keeps the most threads and costs nothing but a look at ``/proc/stat`` now and then;
- when they take more, it times samples of the work at each candidate count in alternation, keeps the fastest,
  and measures again later (sooner when the time per unit drifts), until the machine is idle again.

It acts only under the ``auto`` thread policy, the default; ``set_num_threads(n)`` or ``QORUS_THREADS=n`` fix
the count (:mod:`qorus_jit.core.numerics`).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

from qorus_jit.core.numerics import auto_threads, get_num_threads, max_threads

BUSY = 0.2
"""Share of the machine's CPU time that other processes take above which the thread count is measured."""
FULL = 0.75
"""Share above which other processes fill the cores: work that watched the load first starts at the fewest threads
(with a busy process on each core of the AMD EPYC, a training step ran 1.8-3.5x slower on two threads than on one,
so even one probe step on two cost a 16-step run 0.03 s a step)."""


def cpu_sample() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its finished children, wall
    time), or None where /proc/stat is missing. Busy counts steal time (a virtual machine's host busy)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    t = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()


def _load_average() -> float:
    """The machine's one-minute load average (0 where /proc/loadavg is missing): below :data:`BUSY` of the
    cores, a tuner that would look at the load first skips the wait (an idle machine pays nothing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def other_cpu(before, after) -> float | None:
    """Share of the machine's CPU time that other processes used between two :func:`cpu_sample`."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other / ((after[2] - before[2]) * (os.cpu_count() or 1)))


class _Limiter:
    """Sets numba's and the BLAS's thread counts quickly: threadpoolctl's controller found once (a fresh
    ``threadpool_limits`` scans the loaded libraries, about 0.5 ms)."""

    def __init__(self):
        import numba
        from threadpoolctl import ThreadpoolController

        self._numba = numba
        self._blas = ThreadpoolController().select(user_api="blas").lib_controllers

    def __call__(self, n: int) -> None:
        self._numba.set_num_threads(n)
        for lib in self._blas:
            lib.set_num_threads(n)


class ThreadTuner:
    """Chooses the thread count of a repeated unit of work by timing it; wrap each unit in :meth:`unit`.

    - ``sample_units``: units timed together as one sample (a few for units of milliseconds);
    - ``pairs``: rounds of a probe, each one sample at every candidate count, the order turning round by round;
    - ``recheck``: samples after a probe before the next one (loads change: a busy core may free up while the
      count chosen runs steadily, so the probe is repeated rather than trusted for long);
    - ``margin``: a lower count is kept only when it beats the most threads by more than this share (a tie goes
      to the most threads, which win as soon as a core frees up);
    - ``decisive``: a probe ends after its first round when one count beats every other by more than this share
      (the rounds left would mostly run the slow counts: with a busy process on each core of the AMD EPYC, a
      training step took 0.29 s on one thread and 0.52 s on two, and a 16-step run spent two of its steps on
      two threads probing);
    - ``drift``: a probe starts early when the recent samples' median moves past this factor of the chosen
      count's probe median (the load changed);
    - ``check_s``: seconds between two looks at the machine's load;
    - ``look_first``: seconds to watch the machine's load before the first unit when its load average says it
      may be busy (0: never). When other processes take more than :data:`FULL` of the machine, the work starts
      at the fewest threads and probes the others after ``recheck`` samples; when they take more than
      :data:`BUSY`, the probe starts with the first unit;
    - ``candidates``: the counts tried; by default the current count, its half and 1.

    The chosen count stays set between units (given back after every unit, the work between units ran at the
    other count and woke the idle threads: decoding fell from 156 to 120 tok/s); call :meth:`close` when the
    work is over to give the previous count back. ``decisions`` records each probe's result
    as ``(unit number, chosen count, {count: median seconds per unit})``; ``count`` is the count in use.
    """

    def __init__(self, sample_units: int = 1, pairs: int = 2, recheck: int = 32, drift: float = 1.5,
                 margin: float = 0.05, decisive: float = 0.25, check_s: float = 0.2, look_first: float = 0.0,
                 candidates=None):
        top = get_num_threads()
        self.active = auto_threads() and max_threads() > 1 and top > 1
        self.top, self.count = top, top
        self.candidates = sorted(set(candidates or (top, max(1, top // 2), 1)), reverse=True)
        self.sample_units, self.pairs, self.recheck, self.drift = sample_units, pairs, recheck, drift
        self.margin, self.decisive, self.check_s = margin, decisive, check_s
        self.mode = "idle"  # idle: the most threads; probe: timing the candidates; busy: the fastest found
        self.decisions: list[tuple[int, int, dict[int, float]]] = []
        self._schedule: list[int] = []
        self._times: dict[int, list[float]] = {}
        self._recent: list[float] = []
        self._ref: float | None = 0.0  # the chosen count's time per unit (None: not measured yet)
        self._since = 0  # samples since the last probe
        self._units, self._sample_units, self._sample_s = 0, 0, 0.0
        self._load = cpu_sample()
        self._checked = time.perf_counter()  # of the last look at the load
        self._limiter: _Limiter | None = None  # made at the first change of count
        self._outside: int | None = None  # the count before the tuner changed it, given back by close()
        if self.active and look_first > 0 and _load_average() >= BUSY * (os.cpu_count() or 1):
            time.sleep(look_first)
            other = self._look()
            if other is not None and other >= FULL:
                self.mode, self.count, self._ref = "busy", self.candidates[-1], None
                self.decisions.append((0, self.count, {}))
            elif other is None or other >= BUSY:
                self._probe()

    @contextmanager
    def unit(self):
        """Run one unit of the work (the ``with`` body) at the count the tuner chose, and time it. The body may
        do several units at once: it sets ``units`` on the object the ``with`` gives (a list: ``units[0]``,
        1 by default), and the time is shared among them."""
        units = [1]
        if not self.active:
            yield units
            return
        now = get_num_threads()
        if now != self.count:
            if self._outside is None:
                self._outside = now
            self._set(self.count)
        t0 = time.perf_counter()
        yield units
        self._done(time.perf_counter() - t0, max(1, units[0]))

    def _set(self, n: int) -> None:
        if self._limiter is None:
            self._limiter = _Limiter()
        self._limiter(n)

    def close(self) -> None:
        """Give back the thread count found before the first unit (call when the work is over)."""
        if self._outside is not None:
            self._set(self._outside)
            self._outside = None

    def _done(self, dt: float, units: int = 1) -> None:
        self._units += units
        self._sample_units += units
        self._sample_s += dt
        if self._sample_units < self.sample_units:
            return
        per = self._sample_s / self._sample_units
        self._sample_units, self._sample_s = 0, 0.0
        if self.mode == "probe":
            self._times[self.count].append(per)
            if self._schedule and not self._decided():
                self.count = self._schedule.pop(0)
            else:
                self._choose()
            return
        self._since += 1
        if self.mode == "busy":
            self._recent = (self._recent + [per])[-4:]
            if self._ref is None:  # chosen by the load alone: the first sample is the reference
                self._ref = per
        t = time.perf_counter()
        if t - self._checked < self.check_s:
            return
        other = self._look()
        if self.mode == "idle":
            if other is None or other >= BUSY:
                self._probe()
        elif other is not None and other < BUSY / 2:  # idle again: the most threads
            self.mode, self.count = "idle", self.top
        elif self._since >= self.recheck or (len(self._recent) == 4 and not (
                self._ref / self.drift <= statistics.median(self._recent) <= self._ref * self.drift)):
            self._probe()

    def _look(self) -> float | None:
        """The share of the machine's CPU that other processes took since the last look (None: unknown)."""
        now = cpu_sample()
        other, self._load, self._checked = other_cpu(self._load, now), now, time.perf_counter()
        return other

    def _probe(self) -> None:
        first = [self.count] + [c for c in self.candidates if c != self.count]
        self._schedule = [c for r in range(self.pairs) for c in (first if r % 2 == 0 else first[::-1])]
        self._times = {c: [] for c in self.candidates}
        self.mode, self.count = "probe", self._schedule.pop(0)

    def _decided(self) -> bool:
        """Whether the samples so far, at least one at every candidate, pick a count by more than ``decisive``."""
        if not all(self._times.values()):
            return False
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        best = min(medians, key=medians.get)
        return all(m > medians[best] * (1 + self.decisive) for c, m in medians.items() if c != best)

    def _choose(self) -> None:
        medians = {c: statistics.median(t) for c, t in self._times.items() if t}
        best = min(medians, key=medians.get)
        if self.top in medians and medians[self.top] <= medians[best] * (1 + self.margin):
            best = self.top
        self.decisions.append((self._units, best, medians))
        self.mode, self.count, self._ref = "busy", best, medians[best]
        self._since, self._recent = 0, []
