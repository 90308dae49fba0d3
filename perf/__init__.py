# The benchmarks fork no workers: they run numba on GNU OpenMP first, as the ``qorus`` command does (qorus_jit/cli.py),
# so that they time what users run (decoding measured 1.2-1.4x faster than on TBB, docs/design.md).
import os

os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp tbb workqueue")
