"""Float64 references for the loss family: cross-entropy via an explicit log-softmax, and MSE."""

import numpy as np


def log_softmax(logits):
    x = np.asarray(logits, np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(logits, targets, ignore_index=-100):
    """Per-row losses (0 for ignored rows) and their mean over the kept rows (0.0 if none)."""
    logp = log_softmax(logits)
    keep = np.asarray(targets) != ignore_index
    losses = np.zeros(logp.shape[0])
    rows = np.nonzero(keep)[0]
    losses[rows] = -logp[rows, np.asarray(targets)[rows]]
    mean = losses.sum() / keep.sum() if keep.any() else 0.0
    return losses, mean


def cross_entropy_grad(logits, targets, ignore_index=-100, scale=None):
    """(softmax - onehot) * scale on kept rows, zero on ignored rows; scale defaults to 1 / kept."""
    p = np.exp(log_softmax(logits))
    targets = np.asarray(targets)
    keep = targets != ignore_index
    if scale is None:
        scale = 1.0 / keep.sum() if keep.any() else 0.0
    g = np.zeros_like(p)
    for i in np.nonzero(keep)[0]:
        g[i] = p[i] * scale
        g[i, targets[i]] -= scale
    return g


def mse(pred, target):
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return float((d * d).mean())


def mse_grad(pred, target, scale=None):
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return 2.0 * d * (1.0 / d.size if scale is None else scale)
