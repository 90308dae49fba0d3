"""The validation helpers behind every public kernel wrapper."""

import numpy as np
import pytest

from qorus_jit.core.check import (
    check_arrays,
    check_distinct,
    check_float_dtype,
    check_index,
    check_positive,
    check_writeable,
    check_writes,
)


def test_symbols_bind_and_must_agree():
    x = np.zeros((4, 3), np.float32)
    w = np.zeros((5, 3), np.float32)
    assert check_arrays(x=(x, ("N", "C")), w=(w, ("O", "C"))) == {"N": 4, "C": 3, "O": 5}
    with pytest.raises(ValueError, match=r"w: expected shape \(O, C\) .*axis 1 is 4, expected 3"):
        check_arrays(x=(x, ("N", "C")), w=(np.zeros((5, 4), np.float32), ("O", "C")))


def test_ndim_dtype_contiguity_and_type():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"x: expected 3-D array of shape \(B, T, C\), got 2-D"):
        check_arrays(x=(x, ("B", "T", "C")))
    with pytest.raises(TypeError, match="y: expected the dtype of x"):
        check_arrays(x=(x, None), y=(x.astype(np.float64), None))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        check_arrays(x=(x.astype(np.int64), None))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64, got >f4 \(not in native byte order"):
        check_arrays(x=(x.astype(">f4"), None), y=(x.astype(">f4"), None))
    with pytest.raises(TypeError, match="x: expected a numpy array, got MaskedArray"):
        check_arrays(x=(np.ma.array(x), None))
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        check_arrays(x=(np.zeros((3, 4), np.float32).T, ("N", "C")))
    with pytest.raises(TypeError, match="x: expected a numpy array, got list"):
        check_arrays(x=([1.0], None))
    assert check_arrays(x=(x, ("N", 3)), bias=(None, ("N",)), optional=("bias",)) == {"N": 4}
    with pytest.raises(TypeError, match="bias: expected a numpy array, got NoneType"):
        check_arrays(x=(x, ("N", 3)), bias=(None, ("N",)))


def test_index_ranges():
    ids = np.array([[0, 5, 9]], np.int64)
    check_index("ids", ids, ("B", "T"), high=10)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 10\), got 10"):
        check_index("ids", ids + 1, ("B", "T"), high=10)
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 10\) or -100, got -1"):
        check_index("targets", np.array([-100, -1]), ("N",), high=10, allow=-100)
    check_index("targets", np.array([-100, 3], np.int32), ("N",), high=10, allow=-100)
    with pytest.raises(TypeError, match="ids: expected dtype int32 or int64, got float32"):
        check_index("ids", ids.astype(np.float32), ("B", "T"), high=10)
    with pytest.raises(TypeError, match=r"ids: expected dtype int32 or int64, got >i8 \(not in native byte order"):
        check_index("ids", ids.astype(">i8"), ("B", "T"), high=10)


def test_positive_and_writeable():
    check_positive(n_heads=4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_heads: expected a positive int"):
            check_positive(n_heads=bad)
    out = np.zeros(3, np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        check_writeable(out=out)


def test_writes_overlap_and_in_place():
    buf = np.zeros(10, np.float32)
    x, out = buf[:6].reshape(2, 3), np.zeros((2, 3), np.float32)
    spec = ("N", "C")
    check_arrays(out=(out, spec), x=(x, spec), writes=("out",))
    check_arrays(out=(x, spec), x=(x, spec), writes=("out",), inplace={"out": "x"})  # in place
    check_arrays(out=(buf[:6].reshape(2, 3), spec), x=(x, spec), writes=("out",), inplace={"out": ("a", "x")})
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap x, got arrays sharing memory"):
        check_arrays(out=(x, spec), x=(x, spec), writes=("out",))
    with pytest.raises(ValueError, match="out: expected either x itself .in place. or an array that does not "
                                         "overlap x, got a partially overlapping view"):
        check_arrays(out=(buf[4:].reshape(2, 3), spec), x=(x, spec), writes=("out",), inplace={"out": "x"})
    with pytest.raises(ValueError, match="da: expected a buffer that does not overlap db"):  # outputs never alias
        check_arrays(da=(out, spec), db=(out, spec), writes=("da", "db"), inplace={"da": "db"})
    ids = buf.view(np.int32)[6:]
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap ids"):
        check_arrays(out=(buf[4:].reshape(2, 3), spec), writes=("out",), reads={"ids": ids})
    check_arrays(out=(out, spec), bias=(None, ("C",)), writes=("out", "bias"), optional=("bias",),
                 reads={"mask": None, "ids": [1, 2]})
    ro = np.zeros((2, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        check_arrays(out=(ro, spec), writes=("out",))
    check_writes(("out",), {"out": out, "x": x})


def test_distinct_list():
    a, b = np.zeros(5, np.float32), np.zeros(5, np.float32)
    big = np.zeros(12, np.float32)
    check_distinct("grads", [a, b, big[:6], big[6:]])
    for grads, msg in (([a, b, a], r"grads\[2\]: .* overlap grads\[0\]"),
                       ([big[:7], a, big[6:]], r"grads\[2\]: .* overlap grads\[0\]"),
                       ([np.frombuffer(big, np.float32), big[3:]], r"grads\[1\]: .* overlap grads\[0\]")):
        with pytest.raises(ValueError, match=msg):
            check_distinct("grads", grads)


def test_float_dtype_argument():
    assert check_float_dtype("dtype", "float32") == np.float32
    assert check_float_dtype("dtype", np.float64) == np.float64
    for bad in (None, "foo", np.int8, ">f4", np.float16):
        with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
            check_float_dtype("dtype", bad)


def test_rng_argument():
    from qorus_jit.core.check import check_rng

    want = np.random.default_rng(7).random(3)
    for seed in (7, np.int64(7), np.uint8(7), np.random.SeedSequence(7), np.random.PCG64(7)):
        assert np.array_equal(check_rng("rng", seed).random(3), want)
    g = np.random.default_rng(1)
    assert check_rng("rng", g) is g  # layers built from one generator draw in turn
    assert isinstance(check_rng("rng", None), np.random.Generator)
    for bad, err in (("abc", TypeError), (0.5, TypeError), ({}, TypeError), ([1], TypeError), (True, TypeError),
                     (-1, ValueError), (np.int64(-3), ValueError)):
        with pytest.raises(err, match=r"^rng: expected"):
            check_rng("rng", bad)
