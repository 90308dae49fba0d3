from fractions import Fraction

import numpy as np


def keep_mask(logits, top_k, top_p):
    """Top-k then top-p by sorting everything: the tokens kept, as a boolean mask. Top-k keeps the values >= the
    k-th largest; top-p walks the kept tokens in descending value (ties in index order) and keeps each while
    the mass before it is below top_p times the total mass (float64 probabilities summed exactly; that product
    rounded to float64, as the kernel takes it: ties of equal probabilities can meet it exactly)."""
    x = np.asarray(logits, np.float64)
    keep = x > -np.inf
    if top_k is not None:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    if top_p is not None:  # sums exact (Fractions of the float64 probabilities); top_p times the sum in float64
        order = sorted(np.flatnonzero(keep), key=lambda i: -x[i])
        probs = [Fraction(float(p)) for p in np.exp(x[order] - x[order].max())]
        target, before, chosen = Fraction(top_p * float(sum(probs))), Fraction(0), []
        for i, p in zip(order, probs, strict=True):
            if before >= target:
                break
            chosen.append(i)
            before += p
        keep = np.zeros(x.size, bool)
        keep[chosen] = True
    return keep


def probabilities(logits, temperature, top_k=None, top_p=None):
    """The distribution a draw follows: softmax of (logits - max) / temperature over the tokens
    :func:`keep_mask` keeps of the scaled logits, float64."""
    x = np.asarray(logits, np.float64)
    x = (x - x.max()) / temperature
    keep = keep_mask(x, top_k, top_p)
    p = np.where(keep, np.exp(np.where(keep, x, 0.0)), 0.0)
    return p / p.sum()
