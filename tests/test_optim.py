import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import optim as K
from tests.helpers import assert_close, rand, torch_or_skip
from tests.naive import optim as naive

# with sizes on both sides of numerics.SERIAL_WORK (the largest serial one, the smallest parallel one) and two
# chunks of 2**14 elements run serially
SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (40000,), (20000,), (SERIAL_WORK,), (SERIAL_WORK + 1,)]
STEPS = 10

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.8, dampening=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05),
]
ADAM_CONFIGS = [
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1),
    dict(lr=3e-3, betas=(0.0, 0.5), eps=1e-8, weight_decay=0.01),
]


def _sequence(rng, shape, dtype):
    return rand(rng, *shape, dtype=dtype), [rand(rng, *shape, dtype=dtype) for _ in range(STEPS)]


def _run_sgd(param, grads, cfg):
    p = param.copy()
    momentum = cfg.get("momentum", 0.0)
    buf = np.zeros_like(p) if momentum else None
    for k, g in enumerate(grads):
        K.sgd_update(p, buf, g, cfg["lr"], momentum, cfg.get("dampening", 0.0), cfg.get("weight_decay", 0.0),
                     cfg.get("nesterov", False), first_step=k == 0)
    return p


def _run_adam(param, grads, cfg, decoupled):
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    update = K.adamw_update if decoupled else K.adam_update
    for step, g in enumerate(grads, start=1):
        update(p, m, v, g, cfg["lr"], cfg["betas"][0], cfg["betas"][1], cfg["eps"], cfg["weight_decay"], step)
    return p, m, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_naive(shape, dtype):
    rng = np.random.default_rng(0)
    param, grads = _sequence(rng, shape, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for cfg in SGD_CONFIGS:
        want = naive.sgd(param, grads, cfg["lr"], cfg.get("momentum", 0.0), cfg.get("dampening", 0.0),
                         cfg.get("weight_decay", 0.0), cfg.get("nesterov", False))
        assert_close(_run_sgd(param, grads, cfg), want, rtol=tol, atol=tol, what=str(cfg))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_naive(shape, dtype, decoupled):
    rng = np.random.default_rng(1)
    param, grads = _sequence(rng, shape, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for cfg in ADAM_CONFIGS:
        want = naive.adam(param, grads, cfg["lr"], *cfg["betas"], cfg["eps"], cfg["weight_decay"], decoupled)
        for got, ref in zip(_run_adam(param, grads, cfg, decoupled), want, strict=True):
            assert_close(got, ref, rtol=tol, atol=tol, what=str(cfg))


def test_sgd_without_momentum_ignores_buffer_and_grad_is_read_only():
    rng = np.random.default_rng(2)
    param, grad = rand(rng, 5), rand(rng, 5)
    grad_before = grad.copy()
    p = param.copy()
    K.sgd_update(p, None, grad, 0.5)
    assert_close(p, param.astype(np.float64) - 0.5 * grad, rtol=1e-6, atol=1e-7)
    buf = np.full_like(param, 7.0)
    K.sgd_update(p, buf, grad, 0.5)
    assert np.all(buf == 7.0)
    assert np.array_equal(grad, grad_before)


@pytest.mark.parametrize("dtype,rtol,atol", [(np.float32, 2e-6, 1e-6), (np.float64, 1e-12, 1e-14)])
def test_optimizers_match_torch(dtype, rtol, atol):
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    param, grads = _sequence(rng, (23, 9), dtype)

    def torch_run(cls, **kw):
        tp = torch.nn.Parameter(torch.tensor(param))
        opt = cls([tp], **kw)
        for g in grads:
            tp.grad = torch.tensor(g)
            opt.step()
        return tp.detach().numpy(), opt.state[tp]

    for cfg in SGD_CONFIGS:
        want, _ = torch_run(torch.optim.SGD, **cfg)
        assert_close(_run_sgd(param, grads, cfg), want, rtol=rtol, atol=atol, what=str(cfg))
    for decoupled, cls in [(False, torch.optim.Adam), (True, torch.optim.AdamW)]:
        for cfg in ADAM_CONFIGS:
            want, state = torch_run(cls, **cfg)
            p, m, v = _run_adam(param, grads, cfg, decoupled)
            assert_close(p, want, rtol=rtol, atol=atol, what=f"{cls.__name__} {cfg}")
            assert_close(m, state["exp_avg"].numpy(), rtol=rtol, atol=atol)
            assert_close(v, state["exp_avg_sq"].numpy(), rtol=rtol, atol=atol)


def test_grad_norm_matches_naive():
    rng = np.random.default_rng(4)
    grads = [rand(rng, *s) for s in [(1,), (3, 5), (40000,), (2, 3, 17), (20000,), (SERIAL_WORK,)]]
    assert_close(K.grad_norm(grads), naive.global_norm(grads), rtol=1e-10, atol=0)
    assert_close(K.grad_norm(grads[1]), naive.global_norm([grads[1]]), rtol=1e-10, atol=0)
    big = [np.full(1000, 1e30, np.float32)]
    assert_close(K.grad_norm(big), naive.global_norm(big), rtol=1e-10, atol=0)
    assert K.grad_norm([]) == 0.0


@pytest.mark.parametrize("max_norm", [0.5, 1e6, 0.0])
def test_clip_grad_norm_matches_naive(max_norm):
    rng = np.random.default_rng(5)
    grads = [rand(rng, 4, 6), rand(rng, 13), rand(rng, 1), rand(rng, 20000), rand(rng, SERIAL_WORK + 1)]
    want_norm, want = naive.clip(grads, max_norm)
    assert_close(K.clip_grad_norm(grads, max_norm), want_norm, rtol=1e-10, atol=0)
    for got, ref in zip(grads, want, strict=True):
        assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(6)
    for max_norm in (1.0, 100.0):
        grads = [rand(rng, 8, 3, scale=2.0), rand(rng, 17), rand(rng, 2, 2, 2)]
        params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.tensor(g)
        want = torch.nn.utils.clip_grad_norm_(params, max_norm)
        got = K.clip_grad_norm(grads, max_norm)
        assert_close(got, want.item(), rtol=1e-6, atol=0)
        for p, g in zip(params, grads, strict=True):
            assert_close(g, p.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_non_finite_norm_is_returned_and_grads_kept():
    for bad in (np.nan, np.inf):
        grads = [np.array([1.0, bad, 2.0], np.float32), np.ones(3, np.float32)]
        before = [g.copy() for g in grads]
        norm = K.clip_grad_norm(grads, 1.0)
        assert np.isnan(norm) if np.isnan(bad) else norm == np.inf
        assert np.isnan(K.grad_norm(grads)) if np.isnan(bad) else K.grad_norm(grads) == np.inf
        for g, b in zip(grads, before, strict=True):
            np.testing.assert_array_equal(g, b)


def test_optimizer_bad_inputs_raise():
    p = np.zeros((3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    args = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)

    for name, value, pattern in [
        ("lr", -1.0, r"lr: expected a finite real number >= 0, got -1.0"),
        ("lr", float("nan"), "lr: expected a finite real number"),
        ("beta1", 1.0, r"beta1: expected a finite real number in \[0, 1\), got 1.0"),
        ("beta2", -0.1, r"beta2: expected a finite real number in \[0, 1\), got -0.1"),
        ("eps", 0.0, "eps: expected a finite real number > 0, got 0.0"),
        ("weight_decay", -0.1, "weight_decay: expected a finite real number >= 0"),
        ("step", 0, "step: expected a positive int, got 0"),
        ("step", 1.0, "step: expected a positive int, got 1.0"),
    ]:
        for update in (K.adam_update, K.adamw_update):
            with pytest.raises(ValueError, match=pattern):
                update(p, m, v, g, **{**args, name: value})

    with pytest.raises(ValueError, match="v: expected shape"):
        K.adam_update(p, m, np.zeros((4, 3), np.float32), g, **args)
    with pytest.raises(ValueError, match="grad: expected 2-D array"):
        K.adamw_update(p, m, v, g.reshape(-1), **args)
    with pytest.raises(TypeError, match="grad: expected the dtype of param"):
        K.adam_update(p, m, v, g.astype(np.float64), **args)
    with pytest.raises(ValueError, match="m: expected a C-contiguous array"):
        K.adam_update(p, np.zeros((4, 3), np.float32).T, v, g, **args)
    with pytest.raises(ValueError, match="m: expected a buffer that does not overlap v"):
        K.adam_update(p, m, m, g, **args)
    readonly = p.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="param: expected a writeable array"):
        K.adam_update(readonly, m, v, g, **args)

    with pytest.raises(ValueError, match="momentum: expected a finite real number >= 0"):
        K.sgd_update(p, m, g, 0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="momentum_buf: expected an array of the shape of param"):
        K.sgd_update(p, None, g, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov: expected momentum > 0 and dampening == 0"):
        K.sgd_update(p, m, g, 0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov: expected momentum > 0"):
        K.sgd_update(p, None, g, 0.1, nesterov=True)
    with pytest.raises(TypeError, match="first_step: expected a bool, got 1"):
        K.sgd_update(p, m, g, 0.1, momentum=0.9, first_step=1)
    with pytest.raises(ValueError, match="momentum_buf: expected shape"):
        K.sgd_update(p, np.zeros(12, np.float32).reshape(4, 3), g, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="param: expected a buffer that does not overlap grad"):
        K.sgd_update(p, None, p, 0.1)
    with pytest.raises(TypeError, match="param: expected dtype float32 or float64"):
        K.sgd_update(p.astype(np.int32), None, g, 0.1)

    with pytest.raises(TypeError, match="grads: expected a list of numpy arrays, got dict"):
        K.grad_norm({"a": g})
    with pytest.raises(TypeError, match=r"grads\[1\]: expected a numpy array, got list"):
        K.grad_norm([g, [1.0]])
    with pytest.raises(ValueError, match=r"grads\[0\]: expected a C-contiguous array"):
        K.clip_grad_norm([g.T], 1.0)
    with pytest.raises(ValueError, match="max_norm: expected a real number >= 0, got -1.0"):
        K.clip_grad_norm([g], -1.0)
    with pytest.raises(ValueError, match="max_norm: expected a real number >= 0, got nan"):
        K.clip_grad_norm([g], float("nan"))
    with pytest.raises(ValueError, match=r"grads\[0\]: expected a writeable array"):
        K.clip_grad_norm([readonly], 1.0)
