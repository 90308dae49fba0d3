import numpy as np


def rmsnorm(x, weight, eps):
    x = np.asarray(x, np.float64)
    ms = np.mean(x**2, axis=-1, keepdims=True)
    return x / np.sqrt(ms + eps) * np.asarray(weight, np.float64)


def rmsnorm_rstd(x, eps):
    x = np.asarray(x, np.float64)
    return 1.0 / np.sqrt(np.mean(x**2, axis=-1) + eps)


def layernorm(x, weight, bias, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps) * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def layernorm_stats(x, eps):
    x = np.asarray(x, np.float64)
    return x.mean(axis=-1), 1.0 / np.sqrt(x.var(axis=-1) + eps)


def rmsnorm_backward(dout, x, weight, eps):
    """(dx, dweight) of sum(dout * rmsnorm(x, weight)); dweight summed over all rows."""
    x, g, w = (np.asarray(a, np.float64) for a in (x, dout, weight))
    r = 1.0 / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)
    dx = r * g * w - x * r**3 * np.sum(g * w * x, axis=-1, keepdims=True) / x.shape[-1]
    dw = (g * x * r).reshape(-1, x.shape[-1]).sum(axis=0)
    return dx, dw


def layernorm_backward(dout, x, weight, eps):
    """(dx, dweight, dbias) of sum(dout * layernorm(x, weight, bias)); dweight, dbias summed over all rows."""
    x, g, w = (np.asarray(a, np.float64) for a in (x, dout, weight))
    mu = x.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    gw = g * w
    dx = r * (gw - gw.mean(axis=-1, keepdims=True) - xhat * (gw * xhat).mean(axis=-1, keepdims=True))
    C = x.shape[-1]
    return dx, (g * xhat).reshape(-1, C).sum(axis=0), g.reshape(-1, C).sum(axis=0)
