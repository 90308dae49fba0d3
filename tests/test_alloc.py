"""Kernel-facing arrays: aligned, padded, and never touching one another (see qorus_jit/core/alloc.py)."""

import numpy as np
import pytest

from qorus_jit.core import alloc as _alloc
from qorus_jit.kernels import activations as A
from qorus_jit.layers import Linear


@pytest.mark.parametrize("shape", [(3,), (5, 7), (2, 3, 4), ()])
def test_empty_is_aligned_contiguous_and_padded(shape):
    arrays = [_alloc.empty(shape) for _ in range(20)]
    for a in arrays:
        assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % _alloc.ALIGN == 0
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start - end >= _alloc.PAD  # no two arrays closer than PAD bytes


def test_zeros_copy_and_layer_arrays():
    assert not _alloc.zeros((4, 5)).any()
    src = np.arange(6.0).reshape(2, 3)
    c = _alloc.copy(src)
    assert c.dtype == np.float32 and np.array_equal(c, src) and not np.shares_memory(c, src)
    layer = Linear(8, 4, rng=0)
    for arr in (*layer.parameters().values(), *layer.gradients().values(), layer.buffer("y", (3, 4))):
        assert arr.ctypes.data % _alloc.ALIGN == 0


def test_touching_arrays_give_the_same_results():
    """The slow scalar path (input and output adjacent) computes what the vector path does."""
    rng = np.random.default_rng(0)
    n = 50_000
    buf = rng.standard_normal(2 * n + 4).astype(np.float32)
    a = rng.standard_normal(n).astype(np.float32)
    b, out_touching = buf[:n], buf[n + 4:]
    out_apart = _alloc.empty(n)
    A._swiglu_forward(out_touching, a, b)
    A._swiglu_forward(out_apart, a, b)
    np.testing.assert_allclose(out_touching, out_apart, rtol=1e-6)


def test_check_fits_names_the_sizes():
    _alloc.check_fits("parameters", 1000, in_features=10, out_features=100)  # fits: no error
    with pytest.raises(ValueError, match=r"^in_features=4, out_features=4611686018427387904: .* do not fit"):
        _alloc.check_fits("parameters", 4 * 2**62, in_features=4, out_features=2**62)
    have = _alloc.memory_bytes()
    if have:  # one element more than this machine's memory holds
        with pytest.raises(ValueError, match=r"^dim=\d+: .*GiB of memory here"):
            _alloc.check_fits("parameters", have // 4 + 1, dim=have // 4 + 1)
