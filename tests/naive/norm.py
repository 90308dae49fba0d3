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
