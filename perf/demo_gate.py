"""The perf gate catches a slowdown: the norm figures against the baseline as they are, then with the RMSNorm
forward kernel doing its work four times.

    python -m perf.demo_gate [BASELINE]    # a file or folder; default perf/baselines/ (this CPU's file there)

Runs ``qorus bench --only norm --compare BASELINE`` twice in this process (no source file changes): first as
is (the gate should pass), then with ``qorus_jit.kernels.norm.rmsnorm_forward``, the kernel the norm benchmark
calls, replaced by a wrapper calling it four times (the gate should fail on ``norm.rmsnorm_fwd`` and
``norm.rmsnorm_fwd_bwd``, and keep ``norm.layernorm_*``, which the wrapper does not touch). Exits 0 when the
gate did both, 1 otherwise, 2 when no baseline was recorded on this CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qorus_jit.bench import suite
from qorus_jit.kernels import norm

FIGURES = "norm"
TIMES = 4


def slowed(fn, times: int = TIMES):
    """``fn`` doing its work ``times`` times."""

    def slow(*args, **kwargs):
        for _ in range(times):
            fn(*args, **kwargs)

    return slow


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    baseline = argv[0] if argv else os.path.relpath(Path(__file__).parent / "baselines") + "/"
    pick = suite.find_baseline(baseline, suite.this_cpu())
    if pick.data is None:  # the gate would not run, so there is nothing to demonstrate
        print(suite.no_baseline_message(pick, baseline))
        return 2
    print(f"== 1. qorus bench --only {FIGURES} --compare {baseline}, kernels as they are", flush=True)
    as_is = suite.bench(only=FIGURES, baseline=baseline)
    print(f"exit code {as_is}\n", flush=True)
    print(f"== 2. the same with norm.rmsnorm_forward doing its work {TIMES} times", flush=True)
    original = norm.rmsnorm_forward
    norm.rmsnorm_forward = slowed(original)
    try:
        slow = suite.bench(only=FIGURES, baseline=baseline)
    finally:
        norm.rmsnorm_forward = original
    print(f"exit code {slow}\n", flush=True)
    ok = as_is == 0 and slow == 1
    print(f"demo: the gate {'passed' if as_is == 0 else 'failed'} as is and {'failed' if slow else 'passed'} slowed: "
          + ("as expected" if ok else "NOT as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
