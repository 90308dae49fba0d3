"""Float64 references for the optimizer family, step by step from the published update equations."""

import numpy as np


def sgd(param, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """Run SGD over the gradient sequence; returns the final parameters."""
    p = np.array(param, np.float64)
    buf = None
    for grad in grads:
        g = np.asarray(grad, np.float64) + weight_decay * p
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam(param, grads, lr, beta1, beta2, eps, weight_decay, decoupled=False):
    """Run Adam (L2 decay) or AdamW (decoupled decay) over the gradients; returns param, m, v."""
    p = np.array(param, np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, grad in enumerate(grads, start=1):
        g = np.asarray(grad, np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def global_norm(grads):
    return float(np.sqrt(sum(float((np.asarray(g, np.float64) ** 2).sum()) for g in grads)))


def clip(grads, max_norm):
    """Returns the norm and the clipped float64 gradients (scaled by max_norm / (norm + 1e-6) if < 1)."""
    norm = global_norm(grads)
    coef = min(1.0, max_norm / (norm + 1e-6))
    return norm, [np.asarray(g, np.float64) * coef for g in grads]
