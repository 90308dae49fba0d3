import numpy as np


def softmax(x):
    """Softmax over the last axis in float64; rows that are all -inf give zeros."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    rows, orows = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    for i, row in enumerate(rows):
        m = row.max()
        if m == -np.inf:
            continue
        e = np.exp(row - m)
        orows[i] = e / e.sum()
    return out


def causal_softmax(x):
    """Row t of each (T, T) matrix softmaxed over columns 0..t; zeros above the diagonal."""
    x = np.asarray(x, dtype=np.float64)
    T = x.shape[-1]
    out = np.zeros_like(x)
    for t in range(T):
        out[..., t, : t + 1] = softmax(x[..., t, : t + 1])
    return out


def softmax_backward(dout, out):
    """dx = J^T dout per row with the softmax Jacobian J = diag(y) - y y^T."""
    dout, out = np.asarray(dout, np.float64), np.asarray(out, np.float64)
    C = out.shape[-1]
    dx = np.zeros_like(out)
    step = max(1, 2**24 // C)  # rows of J per block: at most 128 MiB of float64 for any width
    for g, y, d in zip(dout.reshape(-1, C), out.reshape(-1, C), dx.reshape(-1, C), strict=True):
        for j in range(0, C, step):  # J is symmetric: block j of J^T g is J[j:j+step] @ g
            block = -np.outer(y[j:j + step], y)
            block[np.arange(block.shape[0]), np.arange(j, j + block.shape[0])] += y[j:j + step]
            d[j:j + step] = block @ g
    return dx
