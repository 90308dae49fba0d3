"""Kernel-facing arrays: aligned, padded, and never touching one another (see qorus_jit/core/alloc.py)."""

import mmap
import os

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


def _smaps(addr: int, field: str) -> list[str]:
    """The values of ``field`` (e.g. "VmFlags:", "Rss:") of the mapping of /proc/self/smaps that holds ``addr``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == field:
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def _vm_flags(addr: int) -> list[str]:
    return _smaps(addr, "VmFlags:")


def test_weights_are_zeros_one_after_another_apart_and_aligned():
    from qorus_jit.core import alloc

    arrays = [alloc.weights(shape, dt) for shape, dt in [((300, 288), np.float32), ((7,), np.int8),
                                                          ((64, 9), np.uint16), ((1000, 1000), np.float32)]]
    for a in arrays:
        assert a.flags.c_contiguous and a.ctypes.data % alloc.ALIGN == 0 and not a.any()
        a[...] = 1  # writable, and each its own memory
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start - end >= alloc.PAD
    assert all(a.all() for a in arrays)
    big = alloc.weights((3000, 3000), np.float32)  # more than a quarter of a map: a map of its own
    assert big.ctypes.data % alloc.HUGE == 0 and big.shape == (3000, 3000) and not big.any()


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE") or not os.path.exists("/proc/self/smaps"),
                    reason="no madvise(MADV_HUGEPAGE) or no /proc/self/smaps here")
def test_weights_maps_are_advised_for_huge_pages():
    """The layers' parameters (matrices; small vectors stay on the heap) lie in maps advised for transparent huge
    pages ('hg' in their VmFlags): what makes decoding stream them faster (docs/design.md)."""
    from qorus_jit.layers import Linear

    layer = Linear(288, 768, rng=0)
    assert "hg" in _vm_flags(layer.parameters()["weight"].ctypes.data)


def test_quantized_weights_live_in_weights_memory_without_a_second_copy(tmp_path):
    """Quantizing and loading a quantized folder put the int8 / bf16 weights in alloc.weights memory, read there
    directly (the layer keeps the array it is given when it already lies there, and copies any other)."""
    from qorus_jit.core import alloc
    from qorus_jit.layers.quantized import QuantizedLinear, quantized_layers
    from qorus_jit.models import Llama, LlamaConfig, load_pretrained
    from qorus_jit.models.quantize import quantize_model, save_quantized

    assert not alloc.in_weights(np.zeros((8192, 64), np.int8))
    w = alloc.weights((8192, 64), np.int8)
    assert alloc.in_weights(w) and alloc.in_weights(w[1:].reshape(-1))
    d = np.ones((8192, 2), np.float32)  # 64 KB: copied (smaller arrays are kept where they are)
    layer = QuantizedLinear("q8_0", qs=w, d=d)
    assert layer.qs is w and layer.d is not d and alloc.in_weights(layer.d)  # kept; copied there
    heap = np.zeros((8192, 64), np.int8)
    assert alloc.in_weights(QuantizedLinear("q8_0", qs=heap, d=d).qs)
    cfg = LlamaConfig(dim=256, n_layers=1, n_heads=4, hidden_dim=512, vocab_size=300, max_seq_len=16)
    for dtype in ("int8", "bf16"):
        model = quantize_model(Llama(cfg, rng=0), dtype)
        save_quantized(model, tmp_path / dtype)
        back = load_pretrained(tmp_path / dtype)
        checked = 0
        for name, q in quantized_layers(back).items():
            mine = quantized_layers(model)[name]
            for a, b in ((q.qs, mine.qs), (q.d, mine.d), (q.w16, mine.w16)):
                if a is not None:
                    assert np.array_equal(a, b), name
                    if a.nbytes >= 1 << 16:  # (smaller arrays stay on the heap)
                        assert alloc.in_weights(a) and alloc.in_weights(b), name
                        checked += 1
        assert checked >= 7


def _rss_kb(addr: int) -> int:
    return int(_smaps(addr, "Rss:")[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps") or not hasattr(mmap, "MADV_DONTNEED"),
                    reason="needs Linux's /proc/self/smaps and madvise")
def test_dropped_weights_give_their_pages_back_and_spare_their_neighbours():
    """A process that builds and drops models keeps only what lives: the last view of a weights array gone, its
    whole pages leave the resident set, and the arrays carved before and after it keep their values."""
    import gc

    from qorus_jit.core import alloc

    alloc._arena["map"] = None  # a fresh 32 MB map for the three
    before, mid, after = (alloc.weights(n, np.float32) for n in (1000, 1 << 20, 1000))  # mid: 4 MB
    before[...], mid[...], after[...] = 1.0, 2.0, 3.0
    view = mid[10:20]  # a view keeps it alive
    assert alloc.in_weights(view) and alloc.in_weights(mid)
    full = _rss_kb(mid.ctypes.data)
    assert full >= 4000
    del mid
    gc.collect()
    assert _rss_kb(before.ctypes.data) >= full and view.tolist() == [2.0] * 10  # the view holds its pages
    del view
    gc.collect()
    assert full - _rss_kb(before.ctypes.data) >= 4000  # its pages went back
    assert (before == 1.0).all() and (after == 3.0).all()
    assert alloc.in_weights(before) and not alloc.in_weights(np.ones(3))
