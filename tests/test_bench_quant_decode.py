"""perf/bench_quant_decode.py on a tiny shape: every figure is there, each ratio is the one its own runs give,
and the kernel ceiling reads the row kernel the one-call decoder runs. No timing is asserted: the benchmark
itself is run by hand (python -m perf.bench_quant_decode)."""

import numpy as np
import pytest

from perf import bench_quant_decode as bq

TINY = dict(dim=64, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=96, vocab_size=80, max_seq_len=160)


@pytest.mark.parametrize("dtype", bq.DTYPES)
def test_kernel_rate_is_a_rate(dtype):
    assert 0 < bq.kernel_rate(dtype, 64, rows=16, calls=20) < 1e13  # bytes/s: finite, positive


def test_figures_and_their_ratios(monkeypatch):
    monkeypatch.setitem(bq.SHAPES, "tiny", TINY)
    out = bq.time_shape("tiny", tokens=4, pairs=2, memory_bytes=2**20)
    for d in bq.DTYPES:
        r = out[d]
        runs = {k: np.array(r[k]["runs"]) for k in ("decode_tokens_per_s", "bound_tokens_per_s",
                                                       "kernel_ceiling_tokens_per_s")}
        assert all(len(v) == 2 and np.all(v > 0) for v in runs.values())
        want = runs["decode_tokens_per_s"] / np.minimum(runs["bound_tokens_per_s"],
                                                        runs["kernel_ceiling_tokens_per_s"])
        np.testing.assert_allclose(r["of_limit"]["runs"], want)
        np.testing.assert_allclose(r["bound_GBps"]["runs"],
                                   runs["bound_tokens_per_s"] * out["bytes_per_token_MB"][d] / 1e3)
        if d != "fp32":
            fp = np.array(out["fp32"]["decode_tokens_per_s"]["runs"])
            np.testing.assert_allclose(r["decode_over_fp32"]["runs"], runs["decode_tokens_per_s"] / fp)
    # per-token bytes: int8 about a quarter of fp32's weights plus its scales, bf16 half
    assert len(out["memory_GBps"]["runs"]) == 2 and min(out["memory_GBps"]["runs"]) > 0
    mb = out["bytes_per_token_MB"]
    assert mb["int8"] < mb["bf16"] < mb["fp32"]
    table = bq.table({"machine": {"cpu": "x", "simd": [], "cpus": 2, "loadavg": [0.0]}, "threads": 1,
                      "paths": {}, "loadavg_after": [0.0], "shapes": {"tiny": out}})
    assert table.count("| tiny |") == 3
