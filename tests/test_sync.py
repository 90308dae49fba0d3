"""kernels/_sync.py: phases of claimed work items in one parallel region, against the same phases run serially."""

import numpy as np
import pytest
from numba import prange

from qorus_jit.core.numerics import get_num_threads, kernel, max_threads, set_num_threads
from qorus_jit.kernels._sync import _relax, claim, done, phase_counters, wait_done


@kernel(parallel=True)
def _phases(out, counters, n_parts, n_items):
    """Each item of phase ph writes 1 + the sum of phase ph - 1's items, after about 2 us of pauses: right only if
    every participant waits for the whole previous phase, whichever participant did its items."""
    for _ in prange(n_parts):
        for ph in range(out.shape[0]):
            while True:
                it = claim(counters, ph)
                if it >= n_items:
                    break
                for _r in range(200):  # an item that takes a while: a participant that does not wait reads zeros
                    _relax(0)
                s = 0.0
                if ph > 0:
                    for j in range(n_items):
                        s += out[ph - 1, j]
                out[ph, it] = 1 + s
                done(counters, ph)
            wait_done(counters, ph, n_items)


@pytest.mark.parametrize("threads,n_parts,n_items", [(2, 2, 5), (2, 2, 1), (2, 3, 4), (1, 2, 3), (2, 8, 7)])
def test_claimed_phases_wait_for_each_other(threads, n_parts, n_items):
    """40 phases, each reading all of the previous one's items, at as many participants as threads, fewer items
    than participants, and more participants than threads (run one after another: the first does every item and
    the rest must pass through without waiting for items nobody holds)."""
    n_ph = 40
    want = np.zeros((n_ph, n_items))
    for ph in range(n_ph):
        want[ph] = 1 + (want[ph - 1].sum() if ph else 0)
    before = get_num_threads()
    set_num_threads(min(threads, max_threads()))
    try:
        for _ in range(5):
            out, counters = np.zeros((n_ph, n_items)), phase_counters(n_ph)
            _phases(out, counters, n_parts, n_items)
            np.testing.assert_array_equal(out, want)
            assert (counters[:, 16] == n_items).all()  # every item of every phase done once
            assert (counters[:, 0] >= n_items).all()  # and claimed: at least one failed claim each participant
    finally:
        set_num_threads(before)


def test_phase_counters_are_zero_and_a_line_apart():
    c = phase_counters(3)
    assert c.shape == (3, 32) and c.dtype == np.int64 and not c.any()
    assert c.strides[0] == 256 and 16 * c.itemsize == 128  # claim and done counts 128 bytes apart
