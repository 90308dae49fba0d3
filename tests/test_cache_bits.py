"""A kernel gives the same bits whether this process compiled it or loaded it from numba's cache.

Two fresh processes share a temporary ``NUMBA_CACHE_DIR`` (the shared cache stays untouched): the first compiles
everything a few training steps of a small Llama call, the second loads it all from the cache, and both print
the digest of the weights they end with. Before the fix (``numerics._install_local_binding``) numba linked each
called kernel into its caller as a weak symbol that the JIT bound to the first copy loaded in the process: the
cold process ran the callees' own libraries, the warm one the copies inside the callers, optimized apart and
summing in other orders, so 19 of the 21 weights differed and a run resumed from a warm cache was not exact.
"""

from __future__ import annotations

import hashlib

from tests.helpers import run_on_cache


def _main(run_dir: str) -> None:
    from qorus_jit.formats.checkpoint import latest_checkpoint, load_checkpoint
    from tests.distributed.mpi_train import trainer

    trainer(run_dir, 4, steps=3).fit()
    model = load_checkpoint(latest_checkpoint(run_dir)).model
    h = hashlib.sha256()
    for name in sorted(model):
        h.update(name.encode() + model[name].tobytes())
    print(h.hexdigest())


def _run(tmp_path, name: str) -> str:
    code = "import sys; from tests.test_cache_bits import _main; _main(sys.argv[1])"
    out = run_on_cache(tmp_path / "numba", code, tmp_path / name, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()[-1]


def test_a_cold_and_a_warm_process_train_to_the_same_bits(tmp_path):
    cold = _run(tmp_path, "cold")
    assert any((tmp_path / "numba").rglob("*.nbi")), "the first process wrote no cache"
    assert _run(tmp_path, "warm") == cold
