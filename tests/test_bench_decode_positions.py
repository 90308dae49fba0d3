"""perf/bench_decode_positions.py on a tiny shape: the windows sit where the docstring says, the bytes grow with the
cache, and the derived figures are the ones the rounds give. No timing is asserted: the benchmark itself is run by
hand (python -m perf.bench_decode_positions)."""

import numpy as np
import pytest

from perf import bench_decode_positions as bp
from perf import bench_quant_decode as bq

TINY = dict(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=96, vocab_size=80, max_seq_len=160)


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_figures_and_their_ratios(monkeypatch, dtype):
    monkeypatch.setitem(bq.SHAPES, "tiny", TINY)
    r = bp.time_positions("tiny", dtype, rounds=2)
    assert r["positions"] == {"early": [16, 31], "late": [136, 151]}
    mb = r["bytes_per_token_MB"]
    kv_per_pos = 2 * 1 * 2 * 32 * 4  # keys and values: layers x kv heads x head size, float32
    np.testing.assert_allclose((mb["late"] - mb["early"]) * 1e6, kv_per_pos * 120)  # 120 positions apart
    np.testing.assert_allclose(r["bytes_late_over_early"], mb["late"] / mb["early"])
    g = r["late_over_early"]
    assert len(g["runs"]) == 2 and all(x > 0 for x in g["runs"])
    np.testing.assert_allclose(r["cache_cost_over_bytes"], (g["median"] - 1) / (r["bytes_late_over_early"] - 1))
    assert len(r["late_fraction_of_bound"]["runs"]) == 2 and all(x > 0 for x in r["late_fraction_of_bound"]["runs"])
