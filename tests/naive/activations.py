import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * _f64(x)))


def relu(x):
    x = _f64(x)
    return np.where(x > 0, x, 0.0)


def relu_grad(x):
    return (_f64(x) > 0).astype(np.float64)


def gelu(x, approximate="none"):
    x = _f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_grad(x, approximate="none"):
    x = _f64(x)
    if approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        th = np.tanh(k * (x + 0.044715 * x**3))
        return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th**2) * k * (1.0 + 3 * 0.044715 * x**2)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


def swish(x, beta):
    x = _f64(x)
    return x * sigmoid(beta * x)


def swish_grad(x, beta):
    x = _f64(x)
    s = sigmoid(beta * x)
    return s + beta * x * s * (1.0 - s)


def silu(x):
    return swish(x, 1.0)


def silu_grad(x):
    return swish_grad(x, 1.0)


def swiglu(a, b):
    return silu(a) * _f64(b)
