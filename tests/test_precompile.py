"""Compiling ahead (qorus_jit.precompile): the plan of the worker processes, the stand-ins, and the test of numba's
cache that tells a first use. The end-to-end compile into a temporary cache is in tests/test_cli.py."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from qorus_jit import precompile as P
from qorus_jit.kernels import trusted as K

ROOT = Path(__file__).resolve().parents[1]


def test_tasks_take_the_attention_kernels_once_and_narrow_to_names():
    specs = P.default_specs()
    work = [(s.name, t) for s, t in P.tasks(specs)]
    assert work == [("train", "model"), ("train", "attention-backward"), ("train", "attention-forward"),
                    ("generate-run", "generate"), ("generate-llama", "generate"), ("generate-gpt2", "generate")]
    assert [(s.name, t) for s, t in P.tasks(specs, ["generate-gpt2"])] == [("generate-gpt2", "generate")]
    assert [(s.name, t) for s, t in P.tasks(specs, ["attention-forward"])] == [("train", "attention-forward")]
    assert [t for _, t in P.tasks(specs[1:2])] == ["generate", "attention-forward"]  # a generate spec alone


def test_plan_spreads_the_cost_and_keeps_the_decoding_tasks_in_one_worker():
    work = P.tasks(P.default_specs())
    for jobs in (1, 2, 3, 8):
        groups = P.plan(work, jobs)
        assert len(groups) == min(jobs, 4)  # the generate tasks are one unit, model and attention three
        assert sorted((s.name, t) for g in groups for s, t in g) == sorted((s.name, t) for s, t in work)
        holding = [i for i, g in enumerate(groups) if any(t in P.ONE_WORKER for _, t in g)]
        assert len(holding) == 1
    loads = [sum(P.COST[t][0] for _, t in g) for g in P.plan(P.tasks(P.default_specs()[:1]), 2)]
    assert max(loads) < sum(loads)  # qorus train's own tasks on two workers: both busy


def test_stand_ins_zero_the_outputs_and_are_put_back():
    real = K.attention_forward, K.attention_backward
    out, lse = np.ones((1, 2, 1, 2), np.float32), np.ones((1, 1, 2), np.float32)
    with P.stand_ins("attention_forward", "attention_backward"):
        assert K.attention_forward is not real[0]
        K.attention_forward(out, lse, None, None, None, True, None, work=None)
    assert not out.any() and not lse.any()
    assert (K.attention_forward, K.attention_backward) == real


def test_spec_round_trips_through_json():
    spec = P.default_specs()[0]
    assert P.Spec.from_json(spec.to_json()) == spec and spec.vocab_size == 256


def test_kernel_cached_tells_an_empty_cache_from_a_filled_one(tmp_path):
    """In a fresh process whose NUMBA_CACHE_DIR is empty a kernel is not cached; after its first float32 call it
    is, for float32 only, and a second fresh process finds it too."""
    code = (
        "import sys, numpy as np\n"
        "from qorus_jit.kernels import elementwise as E\n"
        "from qorus_jit.sysinfo import kernel_cached\n"
        "before = kernel_cached(E._add_forward, np.float32)\n"
        "if sys.argv[1] == 'call':\n"
        "    x = np.ones(3, np.float32); E.add_forward(x, x, x)\n"
        "print(before, kernel_cached(E._add_forward, np.float32), kernel_cached(E._add_forward, np.float64))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def run(arg):
        return subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run("call") == ["False", "True", "False"]
    assert run("look") == ["True", "True", "False"]
