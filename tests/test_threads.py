"""The thread policy: ``set_num_threads`` / ``QORUS_THREADS`` and the auto policy's tuner (qorus_jit.core.threads).

The tuner's decisions are checked on a fake clock and a fake load (the work's time set by the thread count in
use); generation and training run under real busy processes to show that the tuner acts on a busy machine,
that the results match a fixed count's and that the count is given back. No timing is asserted.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import qorus_jit
from qorus_jit.bench.load import BusyCores
from qorus_jit.core import numerics, threads
from qorus_jit.core.numerics import get_num_threads, max_threads, set_num_threads, threads_from_env

pytestmark = pytest.mark.skipif(max_threads() < 2, reason="one core: the tuner has nothing to choose")


@pytest.fixture
def auto():
    """The auto policy for one test; the suite's fixed count afterwards."""
    before = get_num_threads()
    set_num_threads("auto")
    yield
    set_num_threads(before)


def test_policy_switches():
    before = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1 and not numerics.auto_threads()
        set_num_threads("auto")
        assert get_num_threads() == max_threads() and numerics.auto_threads()
    finally:
        set_num_threads(before)
    for bad in (0, max_threads() + 1, "two", 1.5, True):
        with pytest.raises(ValueError, match="n: expected 'auto' or an int"):
            set_num_threads(bad)


def test_env_variable():
    assert threads_from_env(None) is None and threads_from_env(" ") is None
    assert threads_from_env("AUTO") == "auto" and threads_from_env("1") == 1
    assert threads_from_env("999") == max_threads()
    for bad in ("0", "-2", "x"):
        with pytest.raises(ValueError, match="QORUS_THREADS: expected 'auto' or a thread count"):
            threads_from_env(bad)
    code = ("from qorus_jit.core.numerics import auto_threads, get_num_threads; "
            "print(get_num_threads(), auto_threads())")
    for value, want in (("1", "1 False"), ("auto", f"{max_threads()} True")):
        out = subprocess.run([sys.executable, "-c", code], env=os.environ | {"QORUS_THREADS": value},
                             capture_output=True, text=True, check=True).stdout
        assert out.split() == want.split()
    bad = subprocess.run([sys.executable, "-c", code], env=os.environ | {"QORUS_THREADS": "many"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "QORUS_THREADS: expected 'auto' or a thread count >= 1, got 'many'" in bad.stderr


class FakeMachine:
    """A clock and a /proc/stat: each unit of work takes ``cost[count]`` seconds at the thread count in use, and
    other processes take ``other`` cores meanwhile."""

    def __init__(self, monkeypatch, cost):
        self.now, self.busy, self.own, self.other, self.cost = 0.0, 0.0, 0.0, 0.0, cost
        monkeypatch.setattr(threads, "time", self)
        monkeypatch.setattr(threads, "cpu_sample", lambda: (self.busy, self.own, self.now))

    def perf_counter(self):
        return self.now

    def sleep(self, dt):  # the other processes run meanwhile
        self.now += dt
        self.busy += dt * self.other

    def work(self):
        dt = self.cost[get_num_threads()]
        self.now += dt
        self.own += dt * get_num_threads()
        self.busy += dt * (get_num_threads() + self.other)

    def run(self, tuner, n):
        seen = []
        for _ in range(n):
            with tuner.unit():
                seen.append(get_num_threads())
                self.work()
        return seen


def test_tuner_fixed_policy_does_nothing(monkeypatch):
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})
    machine.other = 2.0
    tuner = threads.ThreadTuner()
    assert not tuner.active
    assert machine.run(tuner, 20) == [get_num_threads()] * 20 and tuner.decisions == []


def test_tuner_idle_machine_keeps_every_core(monkeypatch, auto):
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})  # one thread would be faster, but nobody else runs
    tuner = threads.ThreadTuner()
    assert machine.run(tuner, 40) == [2] * 40
    assert tuner.decisions == [] and tuner.mode == "idle"


def test_tuner_busy_machine_measures_and_follows_the_load(monkeypatch, auto):
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})
    machine.other = 2.0  # other processes on both cores
    tuner = threads.ThreadTuner(sample_units=2, pairs=2, recheck=8)
    seen = machine.run(tuner, 2 + 8)
    # one sample at 2 (the load is seen at its end), then the probe's first round: 2, 1 (2 units each), where one
    # thread wins by 3x, beyond ``decisive``: the probe ends there, and 1 stays
    assert seen == [2, 2] + [2, 2, 1, 1] + [1, 1, 1, 1]
    (_, chosen, medians), = tuner.decisions
    assert chosen == 1 and medians == pytest.approx({2: 0.3, 1: 0.1})
    assert machine.run(tuner, 6) == [1] * 6 and tuner.mode == "busy"
    # the load changes: two threads now win; the drift of the time per unit starts a new probe early
    machine.cost = {1: 0.5, 2: 0.2}
    machine.run(tuner, 8 + 8)
    assert tuner.decisions[-1][1] == 2 and len(tuner.decisions) == 2
    # the other processes stop: every core again, no more probes
    machine.other = 0.0
    n = len(tuner.decisions)
    assert machine.run(tuner, 30)[-20:] == [2] * 20 and tuner.mode == "idle" and len(tuner.decisions) == n


@pytest.mark.parametrize("other", [0.0, 0.6, 2.0])
def test_tuner_that_looks_first_acts_from_the_first_unit_on_a_busy_machine(monkeypatch, auto, other):
    """Idle: every core. Busy (0.6 of 2 cores taken): the probe's first round, decisive, then 1 thread. Full
    (both cores taken): 1 thread from the start, the probe after ``recheck`` samples."""
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})
    machine.other = other
    monkeypatch.setattr(threads, "_load_average", lambda: 0.0)  # idle by the load average: no look
    threads.ThreadTuner(look_first=0.05)
    assert machine.now == 0.0
    monkeypatch.setattr(threads, "_load_average", lambda: 1.0)
    tuner = threads.ThreadTuner(look_first=0.05, recheck=6, check_s=0.0)
    assert machine.now == pytest.approx(0.05)  # it watched the load
    seen = machine.run(tuner, 10)
    if other == 0.0:
        assert seen == [2] * 10 and tuner.decisions == []
    elif other == 0.6:
        assert seen == [2, 1] + [1] * 6 + [1, 2]  # the probe's first round; again after 6 samples
    else:
        assert seen == [1] * 6 + [1, 2] + [1, 1]  # the probe after 6 samples: 1 (the count in use), then 2
        assert [(u, c) for u, c, _ in tuner.decisions] == [(0, 1), (8, 1)]


def test_tuner_probes_every_round_when_the_first_is_close(monkeypatch, auto):
    """One thread 15% faster: past the margin, within ``decisive``: the probe runs both rounds (2, 1, 1, 2)."""
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.115})
    machine.other = 2.0
    tuner = threads.ThreadTuner(sample_units=1, pairs=2, recheck=50, check_s=0.0)
    assert machine.run(tuner, 1 + 4 + 3) == [2] + [2, 1, 1, 2] + [1, 1, 1]
    (_, chosen, medians), = tuner.decisions
    assert chosen == 1 and medians == pytest.approx({2: 0.115, 1: 0.1})


def test_tuner_rechecks_and_prefers_more_threads_in_a_tie(monkeypatch, auto):
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})
    machine.other = 2.0
    tuner = threads.ThreadTuner(sample_units=1, pairs=1, recheck=4, check_s=0.0)
    machine.run(tuner, 40)
    assert list(np.diff([u for u, _, _ in tuner.decisions])) == [4 + 2] * (len(tuner.decisions) - 1)
    assert {c for _, c, _ in tuner.decisions} == {1}
    machine.cost = {1: 0.1, 2: 0.104}  # within the 5% margin: every core
    machine.run(tuner, 10)
    assert tuner.decisions[-1][1] == 2


def test_tuner_gives_the_count_back(monkeypatch, auto):
    machine = FakeMachine(monkeypatch, {1: 0.1, 2: 0.3})
    machine.other = 2.0
    tuner = threads.ThreadTuner(sample_units=1, pairs=1)
    machine.run(tuner, 10)
    assert tuner.count == 1 and get_num_threads() == 1  # the chosen count stays set between units
    tuner.close()
    assert get_num_threads() == 2


def _tiny_llama():
    cfg = qorus_jit.LlamaConfig(dim=288, n_layers=6, n_heads=6, hidden_dim=768, vocab_size=32000, max_seq_len=512)
    return qorus_jit.Llama(cfg, rng=0)


def test_generation_on_a_busy_machine(auto):
    model = _tiny_llama()
    set_num_threads(2)
    fixed = list(qorus_jit.generate(model, [1], 120, temperature=0.0))
    set_num_threads("auto")
    with BusyCores(limit=120):
        gen = qorus_jit.generate(model, [1], 120, temperature=0.0)
        tokens = list(gen)
    assert gen.tuner.active and gen.tuner.decisions, "the tuner never acted under load"
    # a probe of both counts, or one thread from the start where the load filled the cores
    assert all(set(m) == {1, 2} or (u, c, m) == (0, 1, {}) for u, c, m in gen.tuner.decisions)
    assert tokens == fixed
    assert get_num_threads() == 2 and numerics.auto_threads()


def test_training_on_a_busy_machine(auto):
    from qorus_jit.bench.load import TRAIN_SHAPE

    tokens = np.random.default_rng(0).integers(0, 256, 50_000)
    shape = TRAIN_SHAPE | dict(n_layers=2, max_seq_len=64)

    def run():
        data = qorus_jit.TextDataset(tokens, seq_len=64, seed=0)
        model = qorus_jit.Llama(qorus_jit.LlamaConfig(**shape), rng=0)
        trainer = qorus_jit.Trainer(model, qorus_jit.AdamW(model, lr=1e-3), data, steps=40, batch_size=4,
                                    progress=False)
        return trainer, trainer.fit()

    set_num_threads(1)
    _, fixed = run()
    set_num_threads("auto")
    with BusyCores(limit=120):
        trainer, last = run()
    assert trainer.tuner.decisions, "the tuner never measured under load"
    # OpenBLAS rounds differently on 1 and 2 threads: the runs agree to float32 rounding, not bit for bit
    assert last["loss"] == pytest.approx(fixed["loss"], rel=1e-4), (last["loss"], fixed["loss"])
    assert get_num_threads() == 2 and numerics.auto_threads()
