"""Optimizer kernels: fused in-place SGD, Adam and AdamW updates, global gradient norm and clipping.

Updates follow ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (single-tensor path) step for step. ``param``,
its state buffers and ``grad`` share one shape (any shape, processed as flat views) and one float dtype;
``grad`` is only read. Per-step constants (bias corrections, the decoupled decay factor) are computed
once in float64 by the wrappers and passed to the kernels in the arrays' dtype. The bodies run over chunks
of ``_CHUNK`` elements through ``numerics.for_chunks``; the gradient norm adds the chunks' sums on one thread.
"""

from __future__ import annotations

import math

import numpy as np

from qorus_jit.core.check import (
    check_arrays,
    check_bool,
    check_distinct,
    check_positive,
    check_positive_float,
    check_real,
    check_writeable,
)
from qorus_jit.core.numerics import for_chunks, kernel, sum_in_order

_CHUNK = 1 << 14  # elements per parallel chunk


@kernel
def _sgd_chunk(param, buf, grad, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step):
    """SGD step in place; param, buf, grad (n,); buf is not touched when momentum == 0."""
    for i in range(param.shape[0]):
        g = grad[i] + weight_decay * param[i]
        if momentum != 0:
            b = g if first_step else momentum * buf[i] + one_minus_dampening * g
            buf[i] = b
            g = g + momentum * b if nesterov else b
        param[i] -= lr * g


@kernel
def _sgd_range(param, buf, grad, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step, lo, hi):
    """_sgd_chunk on elements lo..hi-1."""
    _sgd_chunk(param[lo:hi], buf[lo:hi], grad[lo:hi], lr, momentum, one_minus_dampening, weight_decay, nesterov,
               first_step)


@kernel(parallel=True)
def _sgd_update(param, buf, grad, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step):
    """SGD step in place over chunks; param, buf, grad (n,) (buf may be param itself when momentum == 0)."""
    n = param.shape[0]
    for_chunks(_sgd_range, (param, buf, grad, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step),
               n, _CHUNK, n)


@kernel
def _adam_chunk(param, m, v, grad, decay, l2, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                bc2_sqrt):
    """Adam(W) step in place; param, m, v, grad (n,); decay = 1 - lr*wd (AdamW) or 1, l2 = wd (Adam) or 0."""
    for i in range(param.shape[0]):
        p = param[i] * decay
        g = grad[i] + l2 * p
        mi = m[i] + one_minus_beta1 * (g - m[i])
        vi = beta2 * v[i] + one_minus_beta2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] = p - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


@kernel
def _adam_range(param, m, v, grad, decay, l2, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, bc2_sqrt,
                lo, hi):
    """_adam_chunk on elements lo..hi-1."""
    _adam_chunk(param[lo:hi], m[lo:hi], v[lo:hi], grad[lo:hi], decay, l2, one_minus_beta1, beta2, one_minus_beta2,
                eps, step_size, bc2_sqrt)


@kernel(parallel=True)
def _adam_update(param, m, v, grad, decay, l2, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                 bc2_sqrt):
    """Adam(W) step in place over chunks; param, m, v, grad (n,)."""
    n = param.shape[0]
    for_chunks(_adam_range, (param, m, v, grad, decay, l2, one_minus_beta1, beta2, one_minus_beta2, eps, step_size,
                             bc2_sqrt), n, _CHUNK, n)


@kernel
def _sum_squares_chunk(x):
    """sum(x * x) accumulated in float64; x (n,)."""
    s = 0.0
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        s += xi * xi
    return s


@kernel
def _sum_squares_chunks(partial, x, lo, hi):
    """partial[c] = _sum_squares_chunk of chunk c of _CHUNK elements, for the chunks c in lo..hi-1."""
    n = x.shape[0]
    for c in range(lo, hi):
        partial[c] = _sum_squares_chunk(x[c * _CHUNK:min(n, (c + 1) * _CHUNK)])


@kernel(parallel=True)
def _sum_squares(x):
    """sum(x * x) in float64 over chunks, reduced after; x (n,)."""
    n = x.shape[0]
    nc = (n + _CHUNK - 1) // _CHUNK
    if nc < 2:
        return _sum_squares_chunk(x)
    partial = np.empty(nc)
    for_chunks(_sum_squares_chunks, (partial, x), nc, 1, n)
    return sum_in_order(partial)


@kernel
def _scale_chunk(x, s):
    """x *= s; x (n,), s a scalar."""
    for i in range(x.shape[0]):
        x[i] *= s


@kernel
def _scale_range(x, s, lo, hi):
    """_scale_chunk on elements lo..hi-1."""
    _scale_chunk(x[lo:hi], s)


@kernel(parallel=True)
def _scale_inplace(x, s):
    """x *= s over chunks; x (n,), s a scalar."""
    n = x.shape[0]
    for_chunks(_scale_range, (x, s), n, _CHUNK, n)


def _check_state(param, grad, **state) -> None:
    """param, grad and the state buffers: one shape, one float dtype, C-contiguous; all but grad writeable."""
    check_arrays(param=(param, None))
    spec = tuple(f"d{i}" for i in range(param.ndim))
    check_arrays(param=(param, spec), **{k: (v, spec) for k, v in state.items()}, grad=(grad, spec),
                 writes=("param", *state))


def sgd_update(param, momentum_buf, grad, lr: float, momentum: float = 0.0, dampening: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False, first_step: bool = False) -> None:
    """One ``torch.optim.SGD`` step on ``param`` in place.

    ``g = grad + weight_decay * param``; with momentum, ``buf = g`` on the first step (``first_step``)
    and ``buf = momentum * buf + (1 - dampening) * g`` after; the step is ``g + momentum * buf`` with
    ``nesterov``, else ``buf``; ``param -= lr * step``. ``momentum_buf`` may be None when momentum is 0.
    """
    lr = check_real("lr", lr, low=0)
    momentum = check_real("momentum", momentum, low=0)
    dampening = check_real("dampening", dampening)
    weight_decay = check_real("weight_decay", weight_decay, low=0)
    check_bool(nesterov=nesterov, first_step=first_step)
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError(f"nesterov: expected momentum > 0 and dampening == 0 with nesterov=True, "
                         f"got momentum={momentum}, dampening={dampening}")
    if momentum == 0:
        _check_state(param, grad, **({} if momentum_buf is None else {"momentum_buf": momentum_buf}))
        buf = param
    elif momentum_buf is None:
        raise ValueError(f"momentum_buf: expected an array of the shape of param when momentum != 0, "
                         f"got None (momentum={momentum})")
    else:
        _check_state(param, grad, momentum_buf=momentum_buf)
        buf = momentum_buf
    t = param.dtype.type
    _sgd_update(param.reshape(-1), buf.reshape(-1), grad.reshape(-1), t(lr), t(momentum), t(1 - dampening),
                t(weight_decay), bool(nesterov), bool(first_step))


def _adam(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled: bool) -> None:
    lr = check_real("lr", lr, low=0)
    beta1 = check_real("beta1", beta1, low=0, high=1, high_open=True)
    beta2 = check_real("beta2", beta2, low=0, high=1, high_open=True)
    check_positive_float(eps=eps)
    weight_decay = check_real("weight_decay", weight_decay, low=0)
    check_positive(step=step)
    _check_state(param, grad, m=m, v=v)
    bc1 = 1 - beta1 ** float(step)
    bc2 = 1 - beta2 ** float(step)
    decay, l2 = (1 - lr * weight_decay, 0.0) if decoupled else (1.0, weight_decay)
    t = param.dtype.type
    _adam_update(param.reshape(-1), m.reshape(-1), v.reshape(-1), grad.reshape(-1), t(decay), t(l2),
                 t(1 - beta1), t(beta2), t(1 - beta2), t(eps), t(lr / bc1), t(math.sqrt(bc2)))


def adam_update(param, m, v, grad, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, step: int) -> None:
    """One ``torch.optim.Adam`` step in place (L2 weight decay added to the gradient).

    ``g = grad + wd * param; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
    param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)``, ``step >= 1``.
    """
    _adam(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled=False)


def adamw_update(param, m, v, grad, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, step: int) -> None:
    """One ``torch.optim.AdamW`` step in place: ``param *= 1 - lr * wd``, then the Adam step without L2."""
    _adam(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step, decoupled=True)


def _check_grads(grads) -> list:
    """A list (or tuple) of float arrays, each C-contiguous; a single array counts as a list of one."""
    if isinstance(grads, np.ndarray):
        grads = [grads]
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads: expected a list of numpy arrays, got {type(grads).__name__}")
    for k, g in enumerate(grads):
        check_arrays(**{f"grads[{k}]": (g, None)})
        check_arrays(**{f"grads[{k}]": (g, tuple(f"d{i}" for i in range(g.ndim)))})
    return list(grads)


def grad_norm(grads) -> float:
    """Global L2 norm of all the arrays in ``grads``, accumulated in float64 (0.0 for an empty list)."""
    return math.sqrt(sum(_sum_squares(g.reshape(-1)) for g in _check_grads(grads)))


def clip_grad_norm(grads, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``: returns the global L2 norm before clipping.

    When ``max_norm / (norm + 1e-6) < 1`` every array is scaled in place by that factor. A NaN or inf
    norm is returned as is and leaves the gradients untouched, so the caller can skip the step.
    """
    max_norm = check_real("max_norm", max_norm, low=0, finite=False)
    grads = _check_grads(grads)
    for k, g in enumerate(grads):
        check_writeable(**{f"grads[{k}]": g})
    check_distinct("grads", grads)  # an array listed twice would be counted and scaled twice
    norm = math.sqrt(sum(_sum_squares(g.reshape(-1)) for g in grads))
    coef = max_norm / (norm + 1e-6)
    if math.isfinite(norm) and coef < 1.0:
        for g in grads:
            _scale_inplace(g.reshape(-1), g.dtype.type(coef))
    return norm
