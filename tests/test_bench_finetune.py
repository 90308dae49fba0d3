"""perf/bench_finetune.py's correctness check on tiny shapes: with the same weights (transformers' GPT-2 copied
into qorus, PEFT's adapters copied too), a full and a LoRA step give the same losses as PyTorch (+ PEFT). No
timing here: the benchmark itself is run by hand (python -m perf.bench_finetune)."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from perf import bench_finetune as bf  # noqa: E402
from qorus_jit.models import GPT2  # noqa: E402


def test_same_losses_as_torch_and_peft():
    res = bf.check(bf.TINY, B=2, T=16, threads=1)
    for kind in ("full", "lora"):
        r = res[kind]
        assert len(r["torch_losses"]) == len(r["qorus_losses"]) == 2
        assert r["rel_diff"][0] <= 1e-4 and r["rel_diff"][1] <= 1e-3, (kind, r)
        # the AdamW step moved the weights on both sides (the second check is not the first one again)
        assert abs(r["torch_losses"][1] - r["torch_losses"][0]) > 1e-3, (kind, r)
        assert r["torch_losses"][0] == pytest.approx(np.log(bf.TINY["vocab_size"]), rel=0.05)


def test_check_catches_a_wrong_weight_layout(monkeypatch):
    """One Conv1D weight left untransposed (the square attention output) must fail the check."""
    mapped = GPT2.from_hf_tensors

    def wrong(tensors):
        out = mapped(tensors)
        k = "transformer.h.0.attn.c_proj.weight"
        out[k] = np.ascontiguousarray(out[k].T)
        return out

    monkeypatch.setattr(GPT2, "from_hf_tensors", staticmethod(wrong))
    with pytest.raises(AssertionError, match="full: first-step loss"):
        bf.check(bf.TINY, B=2, T=16, threads=1)
