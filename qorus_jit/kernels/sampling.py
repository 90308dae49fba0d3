"""Drawing the next token from a row of logits (``infer.generate``'s sampler): temperature, top-k, top-p
(nucleus) and the draw as compiled passes over the vocabulary.

The logits are scaled in float64, ``x = (logit - max) / temperature`` (the maximum given by the caller; times
1 / temperature, the maxima exactly 0, and where 1 / temperature overflows every other token at -inf: greedy).
Top-k cuts below the k-th largest ``x`` (ties at it kept). Top-p keeps the smallest set of most likely tokens
whose probabilities sum to at least ``top_p``: in descending ``x``, ties in index order, a token stays while
the mass before it is below ``top_p`` times the total. Neither sorts the vocabulary (NumPy's sort of 32,000
logits took 3.6 ms a token): the tokens fall in buckets of ``max - x``, 1/64 wide; counts (top-k) or masses
(top-p) per bucket find the one bucket where the cut falls, the buckets before it stay, those after it go,
and only its own tokens are partitioned or sorted. The probabilities are float32's exp of ``x - max``
(relative error below 4e-7; the model's logits are float32 themselves) summed in float64. The draw walks the
cumulative sum in index order to the first entry above ``u`` times the total, ``u`` in [0, 1) from the caller.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core.numerics import kernel
from qorus_jit.kernels._math import exp

_BUCKETS = 4096  # buckets of max - x, 1/64 wide: [0, 64) in 4095 of them, the rest (-inf too) in the last


@kernel
def _buckets(x, mx):
    """Each token's bucket (uint16 (V,)): of its gap below the maximum, max - x, in steps of 1/64."""
    out = np.empty(x.shape[0], np.uint16)
    for i in range(x.shape[0]):
        d = (mx - x[i]) * 64.0
        out[i] = _BUCKETS - 1 if d >= _BUCKETS - 1 else int(d)
    return out


@kernel
def _scale_logits(x, p, logits, mx, temperature):
    """x (V,) float64 = (logits - mx) / temperature with mx = max(logits) finite (the maxima exactly 0, -inf
    kept), and p = their probabilities as :func:`_probabilities` makes them."""
    inv = 1.0 / temperature
    if inv < np.inf:
        for i in range(logits.shape[0]):
            x[i] = (np.float64(logits[i]) - mx) * inv
    else:  # a tiny temperature: every token below the maximum overflows to -inf, the maxima stay 0
        for i in range(logits.shape[0]):
            v = np.float64(logits[i])
            x[i] = 0.0 if v == mx else -np.inf
    _probabilities(p, x, 0.0)


@kernel
def _probabilities(p, x, mx):
    """p (V,) float64 = float32 exp(x - mx), mx = max(x) finite: 1 at the maxima, 0 at -inf."""
    for i in range(x.shape[0]):
        p[i] = np.float64(exp(np.float32(x[i] - mx)))


@kernel
def _split(x, p, bucket, edge):
    """Tokens in the buckets before ``edge`` (nearer the maximum) stay, those in the buckets after it go (x = -inf,
    p = 0); returns the indices (ascending) of those in ``edge`` itself, left for the caller to decide."""
    cand = np.empty(x.shape[0], np.int64)
    n = 0
    for i in range(x.shape[0]):
        if bucket[i] == edge:
            cand[n] = i
            n += 1
        elif bucket[i] > edge:
            x[i] = -np.inf
            p[i] = 0.0
    return cand[:n]


@kernel
def _edge(x, p, mx, goal, count):
    """Where a cut falls: each token's bucket (:func:`_buckets`), the first bucket at which the running sum of
    the tokens' weights over the buckets reaches the target, the sum before that bucket, and the target. The
    weights are 1 a token and the target ``goal`` tokens if ``count``; else p and ``goal`` times their sum."""
    bucket = _buckets(x, mx)
    sums = np.zeros(_BUCKETS)
    for i in range(x.shape[0]):
        sums[bucket[i]] += 1.0 if count else p[i]
    target = goal
    if not count:
        total = 0.0
        for b in range(_BUCKETS):
            total += sums[b]
        target = goal * total
    before = 0.0
    for b in range(_BUCKETS):
        if before + sums[b] >= target:
            return bucket, b, before, target
        before += sums[b]
    return bucket, _BUCKETS - 1, before - sums[_BUCKETS - 1], target


@kernel
def _cut_top_k(x, p, k, mx):
    """x[i] = -inf and p[i] = 0 where x[i] is below the k-th largest (ties at it kept); 0 < k < V, mx = max(x)
    finite. Only the tokens of the bucket where the k-th largest falls are partitioned."""
    bucket, edge, above, _ = _edge(x, p, mx, np.float64(k), True)
    cand = _split(x, p, bucket, edge)
    xs = x[cand]
    r = k - int(above)  # the k-th largest is the r-th largest of the edge bucket
    kth = np.partition(xs, xs.shape[0] - r)[xs.shape[0] - r]
    for i in cand:
        if x[i] < kth:
            x[i] = -np.inf
            p[i] = 0.0


@kernel
def _cut_top_p(x, p, top_p, mx):
    """The nucleus: x[i] = -inf and p[i] = 0 for every token outside the smallest set of most likely tokens
    whose probabilities reach ``top_p`` of their sum (see the module docstring); p as :func:`_probabilities`
    made it from x (0 where cut before), mx = max(x) finite, 0 < top_p < 1. Only the tokens of the bucket where
    the nucleus ends are sorted."""
    bucket, edge, before, target = _edge(x, p, mx, top_p, False)
    cand = _split(x, p, bucket, edge)
    order = np.argsort(-x[cand], kind="mergesort")  # stable: ties in index order
    for j in range(cand.shape[0]):
        i = cand[order[j]]
        if before >= target:
            x[i] = -np.inf
            p[i] = 0.0
        else:
            before += p[i]


@kernel
def _draw(p, u):
    """The first index at which the cumulative sum of p (V,), p >= 0 and sum(p) > 0, passes u * sum(p), u in
    [0, 1); if rounding leaves none, the last index of nonzero p (never one of probability 0)."""
    total = 0.0
    for i in range(p.shape[0]):
        total += p[i]
    r = u * total
    c, last = 0.0, 0
    for i in range(p.shape[0]):
        if p[i] > 0:
            c += p[i]
            last = i
            if c > r:
                return i
    return last
