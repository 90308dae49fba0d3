"""perf/bench_decode_structure.py: the copy of the decoder whose dots only read W reads what the decoder reads
(its results are the row sums of W where the decoder's are the products), and the figures on a tiny shape are
the ones its rounds give. No timing is asserted: the benchmark itself is run by hand."""

import numpy as np
import pytest

from perf import bench_decode_structure as bs
from perf import bench_quant_decode as bq
from qorus_jit.kernels import decode

TINY = dict(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=96, vocab_size=80, max_seq_len=128)


@pytest.mark.parametrize("one_row", [False, True])
def test_the_copys_dots_are_sums_of_the_rows(one_row):
    """Both ways of reading W (a row at a time, four rows sharing x) and the head's streamed rows: the copy gives
    each row's sum, the decoder the row's product with x, both against NumPy float64."""
    reads = bs.reads_module()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 72)).astype(np.float32)
    x = rng.standard_normal(72).astype(np.float32)
    out, got = np.empty(37, np.float32), np.empty(37, np.float32)
    decode._matvec_cols(out, w, x, 0, 72, one_row)
    reads._matvec_cols(got, w, x, 0, 72, one_row)
    np.testing.assert_allclose(out, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got, w.astype(np.float64).sum(1), rtol=1e-5, atol=1e-4)
    got[:] = np.nan
    reads._matvec_rows_streamed(got, w, x, 3, 30, one_row)
    np.testing.assert_allclose(got[3:30], w[3:30].astype(np.float64).sum(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_products_and_squares_sides_compute_each_threads_rows(threads):
    """The products side gives each thread's rows of every matrix times x, the squares side their sums of squares
    (the last matrix's, which each thread writes last), both against NumPy float64; an odd row count included."""
    import numba

    rng = np.random.default_rng(1)
    mats = [rng.standard_normal(s).astype(np.float32) for s in ((9, 40), (6, 72), (7, 33))]
    x = rng.standard_normal(72).astype(np.float32)
    out = np.full((threads, 9), np.nan, np.float32)
    for one_row in (False, True):
        bs._products(numba.typed.List(mats), x, out, one_row)
        last = mats[-1].astype(np.float64)
        for t in range(threads):
            lo, hi = bs._share(7, t, threads)
            np.testing.assert_allclose(out[t, :hi - lo], last[lo:hi] @ x[:33], rtol=1e-5, atol=1e-4)
    bs._squares(numba.typed.List(mats), out)
    for t in range(threads):
        lo, hi = bs._share(7, t, threads)
        np.testing.assert_allclose(out[t, :hi - lo], (last[lo:hi] ** 2).sum(1), rtol=1e-5, atol=1e-4)


def test_a_moved_dot_is_reported():
    with pytest.raises(RuntimeError, match="row dots"):
        bs.reads_source("def f(s, r, x):\n    s += r[k] * x[k]\n")


def test_figures_and_their_ratios(monkeypatch):
    monkeypatch.setitem(bq.SHAPES, "tiny", TINY)
    r = bs.time_structure("tiny", rounds=2)
    assert r["positions"] == [40, 103]
    sides = ("token", "reads", "products", "squares")
    assert set(r["ms"]) == {*sides, "stream"} and all(v > 0 for v in r["ms"].values())
    for k in [f"{s}_of_stream" for s in sides] + ["token_over_reads"]:
        assert len(r[k]["runs"]) == 2 and all(v > 0 for v in r[k]["runs"])
        assert r[k]["min"] <= r[k]["median"] <= r[k]["max"]
