import numpy as np


def tables(max_seq_len, head_dim, theta):
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(max_seq_len, dtype=np.float64), inv_freq)
    return np.cos(angles), np.sin(angles)


def _angles(T, D, pos, theta):
    inv_freq = np.array([theta ** (-(2.0 * i) / D) for i in range(D // 2)])
    return np.array([[(pos + t) * f for f in inv_freq] for t in range(T)])


def rope_interleaved(x, pos, theta=10000.0):
    """(B, T, H, D): pairs (2i, 2i+1) as complex numbers times exp(i * angle)."""
    x = np.asarray(x, np.float64)
    B, T, H, D = x.shape
    z = x[..., 0::2] + 1j * x[..., 1::2]
    rot = np.exp(1j * _angles(T, D, pos, theta))[None, :, None, :]
    w = z * rot
    out = np.empty_like(x)
    out[..., 0::2] = w.real
    out[..., 1::2] = w.imag
    return out


def rope_rotate_half(x, pos, theta=10000.0):
    """(B, T, H, D): pairs (i, i + D/2) rotated by an explicit loop."""
    x = np.asarray(x, np.float64)
    B, T, H, D = x.shape
    half = D // 2
    ang = _angles(T, D, pos, theta)
    out = np.empty_like(x)
    for t in range(T):
        for i in range(half):
            c, s = np.cos(ang[t, i]), np.sin(ang[t, i])
            a, b = x[:, t, :, i], x[:, t, :, i + half]
            out[:, t, :, i] = a * c - b * s
            out[:, t, :, i + half] = a * s + b * c
    return out
