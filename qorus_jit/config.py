"""One home for numerics: fastmath flags, the default dtype, the kernel decorator and threads.

Every kernel in ``qorus_jit.kernels`` is compiled through :func:`kernel`, so the flag set below is
the only place where fastmath is spelled. ``nnan`` and ``ninf`` are left out on purpose: with them
LLVM may assume no NaN or inf exists, so ``np.isnan`` folds to False and ``-inf`` masks are undefined.
"""

from __future__ import annotations

import numba
import numpy as np

#: LLVM fast-math flags for every kernel (no ``nnan``, no ``ninf``).
FASTMATH: frozenset[str] = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Default floating dtype of parameters, activations and gradients.
DTYPE = np.float32

#: Floating dtypes the kernels accept (float64 serves tests and finite differences).
FLOAT_DTYPES = (np.float32, np.float64)

#: Integer dtypes accepted for token ids and targets.
INDEX_DTYPES = (np.int32, np.int64)


def kernel(fn=None, *, parallel: bool = False):
    """Compile ``fn`` as a qorus kernel: ``njit`` with the shared fastmath flags and ``cache=True``.

    Use as ``@kernel`` or ``@kernel(parallel=True)``. ``error_model="numpy"`` keeps division from
    raising (and from blocking vectorization); inputs are validated by the public wrappers instead.
    """

    def wrap(f):
        return numba.njit(
            cache=True,
            fastmath=set(FASTMATH),
            parallel=parallel,
            error_model="numpy",
            nogil=True,
        )(f)

    return wrap if fn is None else wrap(fn)


def get_num_threads() -> int:
    """Number of threads numba's parallel kernels use."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the thread count of numba's parallel kernels and of BLAS together.

    ``n`` must be between 1 and ``numba.config.NUMBA_NUM_THREADS`` (the cores seen at start-up, or the
    ``NUMBA_NUM_THREADS`` environment variable).
    """
    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= limit:
        raise ValueError(f"n: expected an int between 1 and {limit}, got {n!r}")
    numba.set_num_threads(int(n))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=int(n), user_api="blas")
