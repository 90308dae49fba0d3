"""The sampler's kernels (kernels/sampling.py, through infer.generate's filter_logits and sample) against a
NumPy float64 reference that sorts the whole vocabulary (tests/naive/sampling.py)."""

import zlib

import numpy as np
import pytest

from qorus_jit.infer.generate import filter_logits, sample
from qorus_jit.kernels import sampling
from tests.naive import sampling as naive


def _logits(kind, V, rng):
    """Vocabularies of V logits: flat (every token in one bucket), peaked, integer ties, a spread past the
    buckets' 64, and masked tokens."""
    if kind == "flat":
        return rng.standard_normal(V) * 1e-3
    if kind == "peaked":
        return rng.standard_normal(V) * 4
    if kind == "ties":
        return rng.integers(-3, 3, V).astype(np.float64)
    if kind == "spread":
        return rng.uniform(-300, 0, V)
    x = rng.standard_normal(V) * 2
    x[rng.random(V) < 0.3] = -np.inf
    return x


@pytest.mark.parametrize("kind", ["flat", "peaked", "ties", "spread", "masked"])
@pytest.mark.parametrize("top_k,top_p", [(1, None), (7, None), (300, None), (None, 0.05), (None, 0.5), (None, 0.95),
                                         (None, 0.999), (40, 0.9), (2000, 0.3)])
def test_filter_keeps_what_sorting_everything_keeps(kind, top_k, top_p):
    rng = np.random.default_rng(zlib.crc32(f"{kind} {top_k} {top_p}".encode()))
    for V in (3000, 32000):
        logits = _logits(kind, V, rng)
        for x in (logits, logits.astype(np.float32)):
            got = np.isfinite(filter_logits(x, top_k, top_p))
            np.testing.assert_array_equal(got, naive.keep_mask(x, top_k, top_p), err_msg=f"V={V} {x.dtype}")


@pytest.mark.parametrize("kind", ["peaked", "ties", "masked"])
def test_draws_follow_the_filtered_distribution(kind):
    rng = np.random.default_rng(3)
    logits = _logits(kind, 12, rng).astype(np.float32)
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.9, 6, 0.9)]:
        want = naive.probabilities(logits, temperature, top_k, top_p)
        draws = np.array([sample(logits, rng, temperature, top_k, top_p) for _ in range(20000)])
        got = np.bincount(draws, minlength=logits.size) / draws.size
        assert set(np.flatnonzero(got)) <= set(np.flatnonzero(want)), (temperature, top_k, top_p)
        np.testing.assert_allclose(got, want, atol=0.015, err_msg=f"{(temperature, top_k, top_p)}")


def test_a_draw_at_the_top_of_the_range_never_takes_a_token_of_probability_zero():
    p = np.array([0.0, 0.3, 0.0, 0.7, 0.0, 0.0])
    assert sampling._draw(p, np.nextafter(1.0, 0.0)) == 3
    assert sampling._draw(p, 0.0) == 1
    assert sampling._draw(p, 0.3) == 3


def test_scaled_logits_keep_the_maxima_at_zero_and_non_finite_rows_are_refused():
    x, p = np.empty(4), np.empty(4)
    sampling._scale_logits(x, p, np.array([1.0, 3.0, -np.inf, 3.0], np.float32), 3.0, 0.5)
    np.testing.assert_array_equal(x, [-4.0, 0.0, -np.inf, 0.0])
    np.testing.assert_allclose(p, [np.exp(-4.0), 1.0, 0.0, 1.0], rtol=1e-6)
    sampling._scale_logits(x[:3], p[:3], np.array([1.0, 3.0, 2.0]), 3.0, 5e-324)  # overflows below the maximum
    np.testing.assert_array_equal(x[:3], [-np.inf, 0.0, -np.inf])
    for bad, what in (([1.0, np.nan], "NaN"), ([np.inf, 1.0], r"\+inf"), ([-np.inf, -np.inf], "-inf at every")):
        with pytest.raises(ValueError, match=f"logits: the logits are not finite \\({what}"):
            sample(np.array(bad, np.float32), np.random.default_rng(0), 1.0)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(0), np.float32(1.0)])
def test_logits_that_are_not_one_row_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"logits: expected one row of logits \(V,\)"):
        sample(bad, np.random.default_rng(0), 1.0)
