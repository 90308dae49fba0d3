"""NumPy references for the bf16 and q8_0 weight formats and their products (independent of qorus_jit).

bf16 rounding is done on the value in float64 (a quantum of 2^-8 of the binade, rint's ties to even), not on
the bits; q8_0 follows ggml's ``quantize_row_q8_0_ref`` in float32 arithmetic (which is what fixes its bits);
products are float64 sums of the quantized values.
"""

import numpy as np

GROUP = 32
_BF16_MIN_QUANTUM = 2.0 ** -133  # spacing of bf16 subnormals (7 fraction bits below 2^-126)


def bf16_bits(w):
    """uint16 bf16 of float32 w: round to nearest even; NaN -> its upper half with the quiet bit set."""
    w = np.asarray(w, np.float32)
    with np.errstate(invalid="ignore"):  # signalling NaNs
        v = w.astype(np.float64)
    finite = np.isfinite(v)
    _, e = np.frexp(np.where(finite, v, 1.0))  # |v| = m 2^e, m in [0.5, 1): 8 significant bits -> 2^(e - 8)
    q = np.maximum(np.ldexp(1.0, e - 8), _BF16_MIN_QUANTUM)
    r = np.where(finite, np.rint(v / q) * q, v)  # exact in float64; 2^128 stays finite here
    with np.errstate(over="ignore"):
        r32 = r.astype(np.float32)  # a value rounded up to 2^128 becomes inf, as in bf16
    bits = (r32.view(np.uint32) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    bits[nan] = ((w[nan].view(np.uint32) >> 16) | 0x40).astype(np.uint16)
    return bits


def bf16_values(w16):
    """float64 values of bf16 bits."""
    return (np.asarray(w16, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _roundf(v):
    """C's roundf (halves away from zero) of float32 values, exactly (float64 holds |v| + 0.5)."""
    v = np.asarray(v, np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def q8_0(w):
    """(qs int8 (O, I), d float32 (O, I/32) holding float16 values) as ggml's quantize_row_q8_0_ref."""
    w = np.asarray(w, np.float32)
    O, I = w.shape
    g = w.reshape(O, I // GROUP, GROUP)
    amax = np.abs(g).max(axis=2)
    d = amax / np.float32(127)  # float32 division, as ggml
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = _roundf(g * inv[:, :, None]).astype(np.int8).reshape(O, I)
    return qs, d.astype(np.float16).astype(np.float32)


def q8_0_values(qs, d):
    """float64 values of q8_0 weights."""
    O, I = qs.shape
    return (qs.astype(np.float64).reshape(O, I // GROUP, GROUP) * np.asarray(d, np.float64)[:, :, None]).reshape(O, I)


def quantize_activations(x):
    """The integer dot's activations: per group of 32 ``s = max|x| * float32(1/127)``, ``xq = roundf(x / s)``
    computed as ``x * (1 / s)`` in float32 (0 where s is 0); returns (xq int64 (I,), s float32 (I/32,))."""
    g = np.asarray(x, np.float32).reshape(-1, GROUP)
    s = np.abs(g).max(axis=1) * np.float32(1 / 127)
    with np.errstate(divide="ignore"):
        inv = np.where(s == 0, np.float32(0), np.float32(1) / s).astype(np.float32)
    return _roundf(g * inv[:, None]).astype(np.int64).reshape(-1), s


def matvec_bf16(w16, x):
    """W x in float64, W the bf16 values."""
    return bf16_values(w16) @ np.asarray(x, np.float64)


def matvec_q8_0(qs, d, x):
    """W x in float64 as the integer dot computes it: x quantized per group (quantize_activations)."""
    xq, s = quantize_activations(x)
    O, I = qs.shape
    dots = np.einsum("ogj,gj->og", qs.astype(np.int64).reshape(O, I // GROUP, GROUP), xq.reshape(I // GROUP, GROUP))
    return (dots.astype(np.float64) * np.asarray(d, np.float64) * s.astype(np.float64)).sum(axis=1)


def matvec_q8_0_scale(qs, d, x):
    """sum |W| |x| per row with x quantized as matvec_q8_0 (the size of the sums, for relative errors)."""
    xq, s = quantize_activations(x)
    return np.abs(q8_0_values(qs, d)) @ np.abs(xq * np.repeat(s.astype(np.float64), GROUP))


def linear(x, w, bias=None):
    """x (N, I) @ w (O, I).T + bias in float64, w the dequantized float64 values."""
    out = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return out if bias is None else out + np.asarray(bias, np.float64)


def split_bf16_values(x):
    """float64 values of x split into two bf16 numbers as the bf16 instruction path takes its activations:
    ``xh = bf16(x)``, ``xl = bf16(float32(x - xh))``, returned as ``xh + xl``."""
    x = np.asarray(x, np.float32)
    xh = bf16_values(bf16_bits(x))
    xl = bf16_values(bf16_bits((x.astype(np.float64) - xh).astype(np.float32)))
    return xh + xl

