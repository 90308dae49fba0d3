"""Learning-rate schedules against closed forms written here in NumPy float64 and against torch's schedulers."""

import doctest
import math

import numpy as np
import pytest

import qorus_jit.train.schedule as S
from tests.helpers import torch_or_skip

STEPS = np.arange(0, 60, dtype=np.float64)


def _values(schedule, n=60):
    return np.array([schedule(k) for k in range(n)], np.float64)


# -- closed forms (NumPy float64, independent of the module) -------------------------------------------------


def test_constant():
    np.testing.assert_array_equal(_values(S.constant(0.3)), np.full(60, 0.3))


@pytest.mark.parametrize("step_size,gamma", [(1, 0.5), (7, 0.1), (25, 0.9), (10, 0.0)])
def test_step_decay_closed_form(step_size, gamma):
    want = 0.2 * np.power(gamma, np.floor(STEPS / step_size))
    np.testing.assert_allclose(_values(S.step_decay(0.2, step_size, gamma)), want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("total,min_lr", [(1, 0.0), (10, 0.0), (37, 1e-4), (59, 0.05)])
def test_cosine_closed_form(total, min_lr):
    t = np.minimum(STEPS, total) / total
    want = min_lr + (0.1 - min_lr) * (1 + np.cos(np.pi * t)) / 2
    np.testing.assert_allclose(_values(S.cosine(0.1, total, min_lr)), want, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("total,min_lr", [(1, 0.0), (10, 0.0), (37, 1e-4), (59, 0.05)])
def test_linear_closed_form(total, min_lr):
    want = 0.1 - (0.1 - min_lr) * np.minimum(STEPS, total) / total
    np.testing.assert_allclose(_values(S.linear(0.1, total, min_lr)), want, rtol=1e-13, atol=1e-17)


@pytest.mark.parametrize("w", [1, 3, 10])
def test_warmup_cosine_closed_form(w):
    total, lr, min_lr = 40, 0.01, 1e-3
    decay = np.minimum(STEPS - w, total - w) / (total - w)
    want = np.where(STEPS < w, lr * (STEPS + 1) / w, min_lr + (lr - min_lr) * (1 + np.cos(np.pi * decay)) / 2)
    np.testing.assert_allclose(_values(S.warmup_cosine(lr, w, total, min_lr)), want, rtol=1e-14, atol=0)
    assert S.warmup_cosine(lr, w, total, min_lr)(w - 1) == pytest.approx(lr)  # peak reached at the last warmup


def test_warmup_in_front_of_any_schedule():
    inner = S.step_decay(1.0, 5, 0.5)
    s = S.warmup(inner, 4)
    want = np.where(STEPS < 4, (STEPS + 1) / 4, 0.5 ** np.floor((STEPS - 4) / 5))
    np.testing.assert_allclose(_values(s), want, rtol=1e-15)
    # a plain function works too, and warmup_steps=0 is the schedule itself
    np.testing.assert_allclose(_values(S.warmup(lambda k: 0.1 / (k + 1), 2))[:4], [0.05, 0.1, 0.1, 0.05])
    np.testing.assert_array_equal(_values(S.warmup(inner, 0)), _values(inner))


def test_make_schedule_builds_each_name():
    pairs = [
        (S.make_schedule("constant", 0.1), S.constant(0.1)),
        (S.make_schedule("constant", 0.1, warmup_steps=3, total_steps=50), S.warmup(S.constant(0.1), 3)),
        (S.make_schedule("step", 0.1, step_size=4, gamma=0.5), S.step_decay(0.1, 4, 0.5)),
        (S.make_schedule("cosine", 0.1, total_steps=50, min_lr=0.01), S.cosine(0.1, 50, 0.01)),
        (S.make_schedule("cosine", 0.1, warmup_steps=5, total_steps=50), S.warmup_cosine(0.1, 5, 50)),
        (S.make_schedule("linear", 0.1, warmup_steps=5, total_steps=50, min_lr=0.01),
         S.warmup(S.linear(0.1, 45, 0.01), 5)),
    ]
    for got, want in pairs:
        assert got == want and repr(got) == repr(want)
        np.testing.assert_array_equal(_values(got), _values(want))


def test_repr_is_readable():
    assert repr(S.constant(0.1)) == "constant(lr=0.1)"
    assert repr(S.step_decay(0.1, 10)) == "step_decay(lr=0.1, step_size=10, gamma=0.1)"
    assert repr(S.warmup_cosine(0.001, 10, 100, 1e-5)) == \
        "warmup(cosine(lr=0.001, total_steps=90, min_lr=1e-05), warmup_steps=10)"
    assert repr(S.linear(1.0, 4)) == "linear(lr=1.0, total_steps=4, min_lr=0.0)"


def test_schedules_are_pure_and_return_floats():
    s = S.warmup_cosine(0.01, 5, 50)
    late = s(30)
    for k in range(50):
        s(k)
    assert s(30) == late and s.lr_at(30) == late
    assert all(type(s(k)) is float for k in (0, 4, 5, 49, 10**6))
    assert s(np.int64(7)) == s(7)
    assert isinstance(s, S.Schedule)


# -- against torch.optim.lr_scheduler ---------------------------------------------------------------------------


def _torch_lrs(torch, make, n):
    """The lr of each of ``n`` optimizer steps under scheduler ``make(opt)``, stepped after each step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_against_torch_schedulers():
    torch = torch_or_skip()
    lr_sched = torch.optim.lr_scheduler
    n = 60
    cases = [
        (S.step_decay(0.1, 7, 0.5), lambda o: lr_sched.StepLR(o, step_size=7, gamma=0.5), n),
        (S.cosine(0.1, 40, 0.0), lambda o: lr_sched.CosineAnnealingLR(o, T_max=40), 41),
        (S.cosine(0.1, 40, 0.02), lambda o: lr_sched.CosineAnnealingLR(o, T_max=40, eta_min=0.02), 41),
        (S.linear(0.1, 30, 0.01), lambda o: lr_sched.LinearLR(o, start_factor=1.0, end_factor=0.1,
                                                                total_iters=30), n),
        # the usual LambdaLR warmup + cosine, written independently
        (S.warmup_cosine(0.1, 5, 50, 0.0),
         lambda o: lr_sched.LambdaLR(o, lambda k: (k + 1) / 5 if k < 5
                                     else 0.5 * (1 + math.cos(math.pi * min(k - 5, 45) / 45))), n),
        (S.warmup(S.constant(0.1), 8), lambda o: lr_sched.LambdaLR(o, lambda k: min(1.0, (k + 1) / 8)), n),
    ]
    for ours, make, steps in cases:
        want = _torch_lrs(torch, make, steps)
        np.testing.assert_allclose(_values(ours, steps), want, rtol=1e-10, atol=1e-15, err_msg=repr(ours))


# -- bad inputs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda: S.constant(-0.1), "lr"),
    (lambda: S.constant(float("nan")), "lr"),
    (lambda: S.constant("0.1"), "lr"),
    (lambda: S.step_decay(0.1, 0), "step_size"),
    (lambda: S.step_decay(0.1, 2.5), "step_size"),
    (lambda: S.step_decay(0.1, 5, gamma=1.5), "gamma"),
    (lambda: S.cosine(0.1, 0), "total_steps"),
    (lambda: S.cosine(0.1, 10, min_lr=0.2), "min_lr"),
    (lambda: S.linear(0.1, 10, min_lr=-1.0), "min_lr"),
    (lambda: S.warmup(S.constant(0.1), -1), "warmup_steps"),
    (lambda: S.warmup_cosine(0.1, 10, 10), "total_steps"),
    (lambda: S.constant(0.1)(-1), "step"),
    (lambda: S.constant(0.1)(1.5), "step"),
    (lambda: S.constant(0.1)(True), "step"),
    (lambda: S.make_schedule("exp", 0.1), "name"),
    (lambda: S.make_schedule("cosine", 0.1), "total_steps"),
    (lambda: S.make_schedule("cosine", 0.1, warmup_steps=10, total_steps=10), "total_steps"),
    (lambda: S.make_schedule("step", 0.1), "step_size"),
    (lambda: S.make_schedule("cosine", 0.1, total_steps=10, step_size=3), "step_size"),
    (lambda: S.make_schedule("linear", 0.1, total_steps=10, gamma=0.5), "gamma"),
    (lambda: S.make_schedule("constant", 0.1, min_lr=0.01), "min_lr"),
    (lambda: S.make_schedule("constant", 0.1, warmup_steps=-2), "warmup_steps"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_warmup_needs_a_callable():
    with pytest.raises(TypeError, match="^schedule:"):
        S.warmup(0.1, 5)


def test_docstring_examples():
    assert doctest.testmod(S).failed == 0
