"""Losses of the :class:`~qorus_jit.train.trainer.Trainer`: called as ``loss(out, target, scale)`` they return
``(mean loss, gradient of scale * loss)``; ``evaluate(out, target)`` returns ``(sum of row losses, rows
counted, rows whose argmax is the target)`` without a gradient.

>>> import numpy as np
>>> logits = np.zeros((2, 4), np.float32)
>>> loss, grad = CrossEntropyLoss()(logits, np.array([0, 3]))
>>> round(loss, 6) == round(float(np.log(4)), 6), grad.shape
(True, (2, 4))
"""

from __future__ import annotations

import math

import numpy as np

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import check_bool, check_ignore_index, check_real
from qorus_jit.kernels import trusted as K


class CrossEntropyLoss:
    """Mean cross-entropy of ``logits (..., V)`` against integer ``targets (...)``; ``ignore_index`` rows
    count for nothing. Calling it returns ``(loss, dlogits)``: the gradient of ``scale * loss``, in a buffer
    the loss owns (overwritten by the next call), or with ``inplace`` written over the logits themselves
    (no second logits-sized buffer: what the :class:`~qorus_jit.train.trainer.Trainer` uses, as it reads
    the logits no more)."""

    def __init__(self, ignore_index: int = -100, inplace: bool = False):
        self._ignore = check_ignore_index(ignore_index)  # the kernels' int64 (checks ignore_index)
        self.ignore_index = int(ignore_index)
        check_bool(inplace=inplace)
        self.inplace = bool(inplace)
        self._grad = None

    def _flat(self, logits, targets):
        if (not isinstance(logits, np.ndarray) or isinstance(logits, np.ma.MaskedArray) or logits.dtype != np.float32
                or logits.ndim < 2):
            raise ValueError(f"logits: expected a float32 array (..., V), got {getattr(logits, 'shape', logits)}")
        if isinstance(targets, np.ma.MaskedArray):  # np.asarray would drop the mask
            raise ValueError("targets: expected integer ids, got a masked array")
        targets = np.asarray(targets)
        if targets.shape != logits.shape[:-1] or targets.dtype.kind not in "iu":
            raise ValueError(f"targets: expected integer ids of shape {logits.shape[:-1]}, got "
                             f"{targets.dtype} {targets.shape}")
        V, N = logits.shape[-1], math.prod(logits.shape[:-1])  # not reshape(-1, V): V may be 0
        return np.ascontiguousarray(logits).reshape(N, V), np.ascontiguousarray(targets, np.int64).reshape(N), V

    def __call__(self, logits, targets, scale: float = 1.0):
        scale = check_real("scale", scale)
        x, t, V = self._flat(logits, targets)
        if t.size and (t.max() >= V or (t.min() < 0 and np.any((t < 0) & (t != self.ignore_index)))):
            raise ValueError(f"targets: expected ids in [0, {V}) or {self.ignore_index}")
        if self.inplace:
            grad = x  # the logits (or their contiguous copy): the kernel reads each row before writing it
        else:
            if self._grad is None or self._grad.shape != x.shape:
                self._grad = _alloc.empty(x.shape, np.float32)
            grad = self._grad
        losses = np.empty(x.shape[0], np.float64)
        count = int(np.count_nonzero(t != self._ignore))
        K.cross_entropy_forward_backward(grad, losses, x, t, self._ignore, scale / count if count else 0.0)
        loss = float(losses.sum() / count) if count else 0.0
        return loss, grad.reshape(logits.shape)

    def evaluate(self, logits, targets) -> tuple[float, int, int]:
        """``(sum of row losses, rows counted, rows whose argmax is the target)`` without a gradient."""
        x, t, _ = self._flat(logits, targets)
        losses = np.empty(x.shape[0], x.dtype)
        K.cross_entropy_forward(losses, x, t, self._ignore)
        keep = t != self._ignore
        correct = int(np.count_nonzero((x.argmax(axis=1) == t) & keep))
        return float(losses.sum(dtype=np.float64)), int(keep.sum()), correct


class MSELoss:
    """Mean squared error of ``pred`` against ``target`` of the same shape; returns ``(loss, dpred)``."""

    def __init__(self):
        self._grad = None

    def _check(self, pred, target):
        if isinstance(target, np.ma.MaskedArray):  # the conversion below would drop the mask
            raise ValueError("target: expected an array, got a masked array")
        try:
            target = np.ascontiguousarray(target, np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"target: expected an array of numbers, got {type(target).__name__} ({e})") from None
        if not isinstance(pred, np.ndarray) or isinstance(pred, np.ma.MaskedArray) or pred.dtype != np.float32:
            raise ValueError(f"pred: expected a float32 array, got {getattr(pred, 'dtype', type(pred).__name__)}")
        if pred.size == 0:  # the mean of no element
            raise ValueError(f"pred: expected at least one element, got shape {pred.shape}")
        if target.shape != pred.shape:
            if target.size == pred.size:
                target = target.reshape(pred.shape)
            else:
                raise ValueError(f"target: expected shape {pred.shape}, got {target.shape}")
        return np.ascontiguousarray(pred), target

    def __call__(self, pred, target, scale: float = 1.0):
        scale = check_real("scale", scale)
        pred, target = self._check(pred, target)
        if self._grad is None or self._grad.shape != pred.shape:
            self._grad = _alloc.empty(pred.shape, np.float32)
        self._grad.fill(0)
        loss = float(K.mse_forward(pred.reshape(-1), target.reshape(-1)))
        K.mse_backward(self._grad.reshape(-1), pred.reshape(-1), target.reshape(-1), scale / pred.size)
        return loss, self._grad

    def evaluate(self, pred, target) -> tuple[float, int, int]:
        """``(sum of the rows' mean squared errors, rows, 0)`` without a gradient: ``pred`` and ``target`` as for
        :meth:`forward`; the last item (correct rows) is 0 for a regression."""
        pred, target = self._check(pred, target)
        n = pred.shape[0] if pred.ndim else 1
        return float(K.mse_forward(pred.reshape(-1), target.reshape(-1))) * n, n, 0


LOSSES = {"cross_entropy": CrossEntropyLoss, "mse": MSELoss}


def make_loss(loss):
    """A loss object from a name in :data:`LOSSES` or an object with the loss protocol. By name,
    cross-entropy writes its gradient over the logits (``inplace``): a trainer reads them no more."""
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, got {loss!r}")
        return CrossEntropyLoss(inplace=True) if loss == "cross_entropy" else LOSSES[loss]()
    if not callable(loss) or not hasattr(loss, "evaluate"):
        raise TypeError(f"loss: expected a name or a loss object, got {type(loss).__name__}")
    return loss
