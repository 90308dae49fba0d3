"""Loss kernels: cross-entropy fused with log-softmax, and mean squared error.

Cross-entropy takes ``logits (N, V)`` and integer ``targets (N,)``. A row whose target equals
``ignore_index`` adds no loss and gets no gradient; the mean runs over the other rows, and is 0.0 (not
NaN) when every row is ignored. Rows are max-subtracted before ``exp``, so large logits stay finite.
MSE takes ``pred`` and ``target`` of one shared shape, viewed flat.

Forward kernels write per-row losses; the public wrappers return the mean as a Python float.
``*_backward`` accumulates (``+=``) into the gradient buffer; ``cross_entropy_forward_backward``
writes it (``=``), as the one fused pass of a training step. The bodies run over rows (cross-entropy) or
chunks of ``_CHUNK`` elements (MSE) through ``numerics.for_rows`` and ``for_chunks``; MSE sums fixed chunks and
adds their sums on one thread, so its mean does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core.check import check_arrays, check_ignore_index, check_index, check_real, check_same_shape
from qorus_jit.core.numerics import for_chunks, for_rows, kernel, sum_in_order
from qorus_jit.kernels._math import exp as _exp

_CHUNK = 1 << 14  # elements per chunk (MSE)
_BLOCK = 256  # exp terms summed in the logits dtype before adding into the float64 row sum


@kernel
def _row_max(x):
    """max of x (V,), V >= 1."""
    m = x[0]
    for j in range(1, x.shape[0]):
        m = max(m, x[j])
    return m


@kernel
def _row_sumexp(x, m):
    """sum(exp(x - m)) in float64; x (V,), m a scalar."""
    V = x.shape[0]
    s = 0.0
    for j0 in range(0, V, _BLOCK):
        b = x.dtype.type(0.0)
        xb = x[j0:min(j0 + _BLOCK, V)]  # indices from 0 vectorize (see kernels/activations.py)
        for j in range(xb.shape[0]):
            b += _exp(xb[j] - m)
        s += b
    return s


@kernel
def _cross_entropy_forward_rows(losses, logits, targets, ignore_index, lo, hi):
    """_cross_entropy_forward on rows lo..hi-1."""
    for i in range(lo, hi):
        t = targets[i]
        if t == ignore_index:
            losses[i] = 0.0
        else:
            x = logits[i]
            m = _row_max(x)
            losses[i] = m + np.log(_row_sumexp(x, m)) - x[t]


@kernel(parallel=True)
def _cross_entropy_forward(losses, logits, targets, ignore_index):
    """losses[i] = logsumexp(logits[i]) - logits[i, t_i] (0 if ignored); logits (N, V), targets (N,)."""
    for_rows(_cross_entropy_forward_rows, (losses, logits, targets, ignore_index), logits.shape[0], logits.size)


@kernel
def _add_softmax_row(d, x, m, c):
    """d += c * exp(x - m); d, x (V,), m and c scalars."""
    for j in range(x.shape[0]):
        d[j] += c * _exp(x[j] - m)


@kernel
def _cross_entropy_backward_rows(dlogits, logits, targets, ignore_index, scale, lo, hi):
    """_cross_entropy_backward on rows lo..hi-1."""
    for i in range(lo, hi):
        t = targets[i]
        if t != ignore_index:
            x = logits[i]
            m = _row_max(x)
            _add_softmax_row(dlogits[i], x, m, x.dtype.type(scale / _row_sumexp(x, m)))
            dlogits[i, t] -= scale


@kernel(parallel=True)
def _cross_entropy_backward(dlogits, logits, targets, ignore_index, scale):
    """dlogits[i] += scale * (softmax(logits[i]) - onehot(t_i)) unless ignored; (N, V), targets (N,)."""
    for_rows(_cross_entropy_backward_rows, (dlogits, logits, targets, ignore_index, scale), logits.shape[0],
             logits.size)


@kernel
def _exp_row(d, x, m):
    """d = exp(x - m), returns sum(d) in float64; d, x (V,), d may be x, m a scalar. The exp loop reads and
    writes d alone: a loop that reads one array and writes another fails LLVM's overlap check when they are
    the same array and runs scalar (2.6x slower over GPT-2's vocabulary, docs/design.md), so a separate x is
    first copied into d, a block at a time (from L1)."""
    V = x.shape[0]
    apart = d.ctypes.data != x.ctypes.data
    s = 0.0
    for j0 in range(0, V, _BLOCK):
        db = d[j0:min(j0 + _BLOCK, V)]  # indices from 0 (kernels/activations.py)
        if apart:
            xb = x[j0:min(j0 + _BLOCK, V)]
            for j in range(db.shape[0]):
                db[j] = xb[j]
        b = x.dtype.type(0.0)
        for j in range(db.shape[0]):
            e = _exp(db[j] - m)
            db[j] = e
            b += e
        s += b
    return s


@kernel
def _scale_row(d, c):
    """d *= c; d (V,), c a scalar."""
    for j in range(d.shape[0]):
        d[j] *= c


@kernel
def _cross_entropy_forward_backward_rows(dlogits, losses, logits, targets, ignore_index, scale, lo, hi):
    """_cross_entropy_forward_backward on rows lo..hi-1."""
    for i in range(lo, hi):
        t = targets[i]
        d = dlogits[i]
        if t == ignore_index:
            losses[i] = 0.0
            d[:] = 0.0
        else:
            x = logits[i]
            xt = x[t]
            m = _row_max(x)
            s = _exp_row(d, x, m)
            losses[i] = m + np.log(s) - xt
            _scale_row(d, x.dtype.type(scale / s))
            d[t] -= scale


@kernel(parallel=True)
def _cross_entropy_forward_backward(dlogits, losses, logits, targets, ignore_index, scale):
    """losses as forward; dlogits[i] = scale * (softmax - onehot), 0 if ignored; (N, V), (N,); in place ok."""
    for_rows(_cross_entropy_forward_backward_rows, (dlogits, losses, logits, targets, ignore_index, scale),
             logits.shape[0], logits.size)


@kernel
def _sq_diff_sum(pred, target):
    """sum((pred - target)^2) accumulated in float64; pred, target (n,)."""
    s = 0.0
    for i in range(pred.shape[0]):
        e = np.float64(pred[i]) - np.float64(target[i])
        s += e * e
    return s


@kernel
def _sq_diff_sum_chunks(partial, pred, target, lo, hi):
    """partial[c] = _sq_diff_sum of chunk c of _CHUNK elements, for the chunks c in lo..hi-1."""
    n = pred.shape[0]
    for c in range(lo, hi):
        a, b = c * _CHUNK, min(n, (c + 1) * _CHUNK)
        partial[c] = _sq_diff_sum(pred[a:b], target[a:b])


@kernel(parallel=True)
def _mse_forward(pred, target):
    """mean((pred - target)^2) in float64 over chunks, reduced after; pred, target (n,), n >= 1."""
    n = pred.shape[0]
    nc = (n + _CHUNK - 1) // _CHUNK
    if nc < 2:
        return _sq_diff_sum(pred, target) / n
    partial = np.empty(nc)
    for_chunks(_sq_diff_sum_chunks, (partial, pred, target), nc, 1, n)
    return sum_in_order(partial) / n


@kernel
def _mse_backward_chunk(dpred, pred, target, c2):
    """dpred += c2 * (pred - target); all (n,)."""
    for i in range(pred.shape[0]):
        dpred[i] += c2 * (pred[i] - target[i])


@kernel
def _mse_backward_range(dpred, pred, target, c2, lo, hi):
    """_mse_backward_chunk on elements lo..hi-1."""
    _mse_backward_chunk(dpred[lo:hi], pred[lo:hi], target[lo:hi], c2)


@kernel(parallel=True)
def _mse_backward(dpred, pred, target, scale):
    """dpred += 2 * scale * (pred - target) over chunks; all (n,)."""
    n = pred.shape[0]
    for_chunks(_mse_backward_range, (dpred, pred, target, pred.dtype.type(2.0 * scale)), n, _CHUNK, n)


_OUT_SPECS = {"losses": ("N",), "dlogits": ("N", "V")}


def _check_ce(logits, targets, ignore_index, inplace=None, **outputs) -> tuple[int, int]:
    """Validate logits (N, V), targets (N,) and the outputs (written; ``inplace`` as in ``check_arrays``);
    returns the count of non-ignored rows and the kernels' ignore_index."""
    ignore = check_ignore_index(ignore_index)
    dims = check_arrays(logits=(logits, ("N", "V")), **{k: (v, _OUT_SPECS[k]) for k, v in outputs.items()},
                        writes=tuple(outputs), inplace=inplace, reads={"targets": targets})
    check_index("targets", targets, ("N",), dims["V"], dims, allow=ignore if ignore == ignore_index else None)
    return int(np.count_nonzero(targets != ignore)), ignore


def _mean_scale(scale, count: int) -> float:
    """``scale`` validated, or 1 / count by default (0 when count is 0)."""
    if scale is None:
        return 1.0 / count if count else 0.0
    return check_real("scale", scale)


def cross_entropy_forward(losses, logits, targets, ignore_index: int = -100) -> float:
    """Per-row ``losses (N,) = -log softmax(logits (N, V))[targets]`` (0 for ignored rows).

    ``targets (N,)`` is int32/int64 in ``[0, V)`` or ``== ignore_index``. Returns the mean loss over
    the non-ignored rows, or 0.0 when every row is ignored.
    """
    count, ignore = _check_ce(logits, targets, ignore_index, losses=losses)
    _cross_entropy_forward(losses, logits, targets, ignore)
    return float(losses.sum(dtype=np.float64) / count) if count else 0.0


def cross_entropy_backward(dlogits, logits, targets, ignore_index: int = -100, scale: float | None = None):
    """``dlogits (N, V) += (softmax(logits) - onehot(targets)) * scale``; ignored rows get nothing.

    ``scale`` defaults to 1 / (number of non-ignored rows), the gradient of the mean loss.
    """
    count, ignore = _check_ce(logits, targets, ignore_index, dlogits=dlogits)
    _cross_entropy_backward(dlogits, logits, targets, ignore, _mean_scale(scale, count))


def cross_entropy_forward_backward(dlogits, logits, targets, ignore_index: int = -100) -> float:
    """Mean loss as :func:`cross_entropy_forward`, and ``dlogits (N, V) = (softmax - onehot) / count``.

    Writes (does not accumulate) ``dlogits``, zero on ignored rows; the softmax is computed once per
    row. ``dlogits`` may be ``logits`` itself (overwritten in place) or a separate buffer.
    """
    count, ignore = _check_ce(logits, targets, ignore_index, {"dlogits": "logits"}, dlogits=dlogits)
    losses = np.empty(logits.shape[0], np.float64)
    scale = _mean_scale(None, count)
    _cross_entropy_forward_backward(dlogits, losses, logits, targets, ignore, scale)
    return float(losses.sum() / count) if count else 0.0




def mse_forward(pred, target) -> float:
    """Mean of ``(pred - target)**2`` over all elements (any shared shape, at least one element)."""
    check_same_shape(pred=pred, target=target)
    if pred.size == 0:
        raise ValueError(f"pred: expected at least one element, got shape {pred.shape}")
    return float(_mse_forward(pred.reshape(-1), target.reshape(-1)))


def mse_backward(dpred, pred, target, scale: float | None = None):
    """``dpred += 2 * (pred - target) * scale``; ``scale`` defaults to 1 / pred.size (the mean)."""
    check_same_shape(pred=pred, target=target, dpred=dpred, writes=("dpred",))
    scale = _mean_scale(scale, pred.size)
    _mse_backward(dpred.reshape(-1), pred.reshape(-1), target.reshape(-1), scale)
