"""Float64 reference attention that materializes the full score and mask matrices."""

import numpy as np


def _expand(x, H):
    """(B, S, Hkv, D) -> (B, H, S, D), query head h reading kv head h // (H // Hkv)."""
    return np.repeat(x.transpose(0, 2, 1, 3).astype(np.float64), H // x.shape[2], axis=1)


def allowed(T, S, causal, key_mask=None, B=1):
    """(B, T, S) bool: query t may attend key s."""
    ok = np.ones((B, T, S), bool)
    if causal:
        ok &= (np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T))[None]
    if key_mask is not None:
        ok &= (np.asarray(key_mask) != 0)[:, None, :]
    return ok


def attention(q, k, v, causal, key_mask=None, scale=None):
    """Returns out (B, T, H, D) and lse (B, H, T); rows with no allowed key give out 0, lse -inf."""
    B, T, H, D = q.shape
    S = k.shape[1]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    qh = q.transpose(0, 2, 1, 3).astype(np.float64)
    scores = scale * qh @ _expand(k, H).transpose(0, 1, 3, 2)
    ok = allowed(T, S, causal, key_mask, B)[:, None]
    scores = np.where(ok, scores, -np.inf)
    m = scores.max(-1, keepdims=True)
    empty = ~np.isfinite(m)
    w = np.where(ok, np.exp(scores - np.where(empty, 0.0, m)), 0.0)
    den = w.sum(-1, keepdims=True)
    p = w / np.where(empty, 1.0, den)
    out = p @ _expand(v, H)
    with np.errstate(divide="ignore"):
        lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1.0, den)))[..., 0]
    return out.transpose(0, 2, 1, 3), lse
