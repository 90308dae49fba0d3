"""bf16 and q8_0 weights (kernels/quant.py) against the NumPy references of tests/naive/quant.py and, for q8_0's
bytes, the ``gguf`` package's own quantizer."""

import numpy as np
import pytest

from qorus_jit.kernels import quant as Q
from qorus_jit.kernels import trusted as K
from qorus_jit.kernels._lowbit import quantize_x_q8
from tests.naive import quant as naive

# (O, I): fewer rows than a four-row step, odd row counts, I = 32 (one group), and sizes past the parallel split
MATVEC_SHAPES = [(1, 32), (3, 32), (5, 64), (7, 96), (37, 288), (768, 288), (130, 2048)]
# (N, O, I): one row, a few, O past one tile of 64 rows and not a multiple of it, products past the serial split
LINEAR_SHAPES = [(1, 5, 32), (3, 37, 64), (17, 130, 32), (16, 1000, 288), (2, 9, 2048), (40, 70, 256)]
RTOL = 1e-6


@pytest.fixture(params=["portable", "fast"])
def path(request, monkeypatch):
    """Each one-token product runs on the portable kernels and on this CPU's fast instruction path (skipped where
    there is none); the references round the activations as that path does (the fast bf16 path splits x into two
    bf16 numbers). Several tokens take the portable tiles on every path."""
    if request.param == "portable":
        monkeypatch.setenv("QORUS_PORTABLE", "1")
    else:
        monkeypatch.setenv("QORUS_VDPBF16PS", "1")  # the opt-in bf16 path, where the CPU has it
    Q.kernel_paths()
    yield request.param
    monkeypatch.undo()
    Q.kernel_paths()  # chosen afresh: the later tests run on this machine's paths


@pytest.fixture(params=["tiles", "panels", "bf16 products"])
def route(request, monkeypatch):
    """Several tokens take the dequantized tiles or, with Intel MKL as the BLAS, dequantized panels and the BLAS
    product, or MKL's bf16 product where the CPU has AVX512_BF16 (bf16 weights against x split into two bf16
    numbers; q8_0 weights as two bf16 numbers against x rounded to bf16): all run here whatever the BLAS and the
    CPU (the bf16 product is NumPy's where MKL is absent), the panels at most 64 rows each (several a product, a
    short last one)."""
    if request.param == "tiles":
        monkeypatch.setattr(Q, "PANEL_TOKENS", 1 << 62)
    else:
        monkeypatch.setattr(Q, "BLAS_SOURCE", "Intel MKL")
        monkeypatch.setattr(Q, "PANEL_TOKENS", 1)
        monkeypatch.setattr(Q, "_PANEL_BYTES", 1)
        monkeypatch.setattr(Q, "BF16_GEMM", request.param == "bf16 products")
        monkeypatch.setattr(Q, "PAIR_WORK", 0)
        monkeypatch.setitem(Q._x86()._NEEDS, "avx512-bf16", () if request.param == "bf16 products" else ("none",))
        monkeypatch.setattr(Q._x86(), "_runs", None)
    yield request.param
    monkeypatch.undo()
    Q._x86()._runs = None


def _on(path, kind):
    """Skips a "fast" test where this CPU has no fast ``kind`` path; True on the fast path."""
    if path == "fast" and Q.active_path(kind) == "portable":
        pytest.skip(f"no fast {kind} path on this CPU")
    return path == "fast"


def _weights(rng, O, I, scale=1.0):
    return (rng.standard_normal((O, I)) * scale).astype(np.float32)


def _assert_rel(got, want, size):
    """|got - want| <= RTOL * size elementwise, size = the sum of |terms| of each output (a dot's own scale)."""
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= RTOL * size + 1e-30), f"max relative error {np.max(err / (size + 1e-30)):.3g}"


# ------------------------------------------------------------------------------------------------------- bf16


def _bf16_edge_values():
    f = np.float32
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties to even (down, up), just below/above
                     0x7F7FFFFF, 0x7F7F7FFF, 0xFF7FFFFF,  # the largest floats: round to inf, to the largest bf16
                     0x00000001, 0x00008000, 0x00018000, 0x807FFFFF,  # subnormals, ties among them
                     0x7FC00000, 0xFFC12345, 0x7F800001, 0x7FA00000],  # quiet NaNs, signalling NaNs
                    np.uint32).view(np.float32)
    return np.concatenate([bits, np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.5, 1e-40, 3e38, -1e-45, 65504.0],
                                          f)])


def test_quantize_bf16_matches_reference():
    rng = np.random.default_rng(0)
    w = np.concatenate([(rng.standard_normal(4000) * 10.0 ** rng.integers(-40, 38, 4000)).astype(np.float32),
                        rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        _bf16_edge_values()])
    got = Q.quantize_bf16(w)
    want = naive.bf16_bits(w)
    np.testing.assert_array_equal(got, want)
    # NaN stays a NaN, quiet; inf stays inf; past the largest bf16 rounds to inf
    back = Q.dequantize_bf16(got)
    assert np.isnan(back[np.isnan(w)]).all() and (got[np.isnan(w)] & 0x40).all()
    assert back[w == np.inf].tolist() == [np.inf]
    assert Q.dequantize_bf16(Q.quantize_bf16(np.array([3.4e38, -3.4e38], np.float32))).tolist() == [np.inf, -np.inf]


def test_quantize_bf16_keeps_shape_and_rounds_once():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5, 64)).astype(np.float32)
    w16 = Q.quantize_bf16(w)
    assert w16.shape == w.shape and w16.dtype == np.uint16
    back = Q.dequantize_bf16(w16)
    assert back.dtype == np.float32 and back.shape == w.shape
    np.testing.assert_array_equal(back, naive.bf16_values(w16).astype(np.float32))
    np.testing.assert_array_equal(Q.quantize_bf16(back), w16)  # bf16 values are fixed points
    assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-8)
    assert Q.quantize_bf16(np.zeros((0, 32), np.float32)).shape == (0, 32)


@pytest.mark.parametrize("shape", MATVEC_SHAPES)
def test_matvec_bf16_matches_reference(shape, path):
    fast = _on(path, "bf16")
    O, I = shape
    rng = np.random.default_rng(O * 7 + I)
    w16 = Q.quantize_bf16(_weights(rng, O, I))
    x = rng.standard_normal(I).astype(np.float32)
    out = np.full(O, np.nan, np.float32)
    Q.matvec_bf16(out, w16, x)
    xv = naive.split_bf16_values(x) if fast else x
    _assert_rel(out, naive.matvec_bf16(w16, xv), np.abs(naive.bf16_values(w16)) @ np.abs(xv.astype(np.float64)))
    out2 = np.full(O, np.nan, np.float32)
    K.matvec_bf16(out2, w16, x)
    np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_bf16_matches_reference(shape, with_bias, route):
    N, O, I = shape
    rng = np.random.default_rng(N + O + I)
    w16 = Q.quantize_bf16(_weights(rng, O, I))
    x = rng.standard_normal((N, I)).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32) if with_bias else None
    out = np.full((N, O), np.nan, np.float32)
    Q.linear_bf16(out, x, w16, bias)
    assert route == "tiles" or Q.prompt_route(N, "bf16") == route
    wv = naive.bf16_values(w16)
    xv = naive.split_bf16_values(x) if route == "bf16 products" else x
    size = np.abs(x.astype(np.float64)) @ np.abs(wv).T + (0 if bias is None else np.abs(bias))
    _assert_rel(out, naive.linear(xv, wv, bias), size)


# ------------------------------------------------------------------------------------------------------- q8_0


def _q8_edge_weights():
    """Rows of 64: a group of zeros beside a normal one, ties of roundf, tiny groups whose scale is a float16
    subnormal or flushes to 0, and values near the largest scale a float16 holds."""
    rng = np.random.default_rng(5)
    rows = np.zeros((6, 64), np.float32)
    rows[0, 32:] = rng.standard_normal(32)  # group 0 all zeros
    rows[1, :32] = np.arange(-15.5, 16.5, 1.0)  # amax 127 / 8: w * id lands on halves
    rows[1, 31] = 127 / 8
    rows[1, 32:] = np.float32(127) * np.array([1, -0.5, 0.5, 1.5 / 127, -2.5 / 127] + [0] * 27, np.float32)
    rows[2, :32] = rng.standard_normal(32) * 1e-6  # scale ~ 1e-8: a float16 subnormal
    rows[2, 32:] = rng.standard_normal(32) * 1e-12  # scale flushes to 0 in float16
    rows[3] = rng.standard_normal(64) * 1e6  # scales near 65504
    rows[3, 0] = 127 * 65504
    rows[4] = -rows[3]
    rows[5, ::2] = 1e-45  # float32 subnormals
    return rows


def test_quantize_q8_0_matches_reference():
    rng = np.random.default_rng(2)
    for w in (_weights(rng, 37, 96), _weights(rng, 8, 2048, 1e-3), _q8_edge_weights()):
        qs, d = Q.quantize_q8_0(w)
        want_qs, want_d = naive.q8_0(w)
        assert qs.dtype == np.int8 and d.dtype == np.float32 and d.shape == (w.shape[0], w.shape[1] // 32)
        np.testing.assert_array_equal(qs, want_qs)
        np.testing.assert_array_equal(d, want_d)
        np.testing.assert_array_equal(d.astype(np.float16).astype(np.float32), d)  # exact in float16
    qs, d = Q.quantize_q8_0(_q8_edge_weights())
    assert (qs[0, :32] == 0).all() and d[0, 0] == 0  # a group of zeros
    assert qs[1, :32].tolist()[:4] == [-124, -116, -108, -100]  # -15.5 * 8 = -124 exactly
    assert qs[1, 32:37].tolist() == [127, -64, 64, 2, -3]  # halves away from zero
    assert d[2, 1] == 0 and d[3, 0] == 65504


def test_quantize_q8_0_matches_gguf():
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType

    rng = np.random.default_rng(3)
    for w in (_weights(rng, 19, 160), _q8_edge_weights()):
        qs, d = Q.quantize_q8_0(w)
        blocks = gguf.quants.quantize(w, GGMLQuantizationType.Q8_0).reshape(w.shape[0], -1, 34)  # fp16 d + 32 qs
        np.testing.assert_array_equal(qs, blocks[:, :, 2:].view(np.int8).reshape(qs.shape))
        np.testing.assert_array_equal(d, blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32))
        np.testing.assert_array_equal(Q.dequantize_q8_0(qs, d),
                                      gguf.quants.dequantize(blocks.reshape(w.shape[0], -1), GGMLQuantizationType.Q8_0))


def test_dequantize_q8_0_is_exact():
    rng = np.random.default_rng(4)
    qs, d = Q.quantize_q8_0(_weights(rng, 9, 128))
    w = Q.dequantize_q8_0(qs, d)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, naive.q8_0_values(qs, d).astype(np.float32))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_quantize_q8_0_refuses_non_finite(bad):
    w = np.ones((3, 64), np.float32)
    w[2, 40] = bad
    with pytest.raises(ValueError, match=r"w: expected finite values.*row 2"):
        Q.quantize_q8_0(w)


def test_quantize_q8_0_refuses_scales_past_float16():
    w = np.ones((2, 32), np.float32)
    w[1, 3] = 127 * 65520  # its scale rounds to inf in float16
    with pytest.raises(ValueError, match=r"w: expected \|values\| below 127 \* 65520.*row 1"):
        Q.quantize_q8_0(w)


def _halves_group():
    """32 activations whose scale is exactly 1/8, all but the largest landing on halves: x / s = m + 1/2."""
    c, amax = np.float32(1 / 127), np.float32(15.875)
    for _ in range(64):  # the float32 near 127/8 whose product with float32(1/127) rounds to 1/8
        if np.float32(amax * c) == np.float32(0.125):
            break
        amax = np.nextafter(amax, np.float32(16) if amax * c < 0.125 else np.float32(15))
    assert np.float32(amax * c) == np.float32(0.125)
    return np.array([amax] + [(m + 0.5) / 8 for m in range(-62, 62, 4)], np.float32)


def test_activation_quantization_matches_reference():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.standard_normal(256) * 10.0 ** rng.integers(-6, 6, 256), np.zeros(32),
                        _halves_group()]).astype(np.float32)
    want_q, want_s = naive.quantize_activations(x)
    # int16 (portable dot) and int8 (x86) activations; contiguous x takes the vector IR, a strided one the loop
    for dtype, xin in ((np.int16, x), (np.int8, x), (np.int16, np.repeat(x, 2)[::2])):
        xq, xs = np.empty(x.size, dtype), np.empty(x.size // 32, np.float32)
        quantize_x_q8(xq, xs, xin)
        np.testing.assert_array_equal(xq, want_q)
        np.testing.assert_array_equal(xs, want_s)
        assert np.abs(xq).max() <= 127
        assert xq[-31:].tolist() == [m + (1 if m >= 0 else 0) for m in range(-62, 62, 4)]  # halves away from 0


@pytest.mark.parametrize("shape", MATVEC_SHAPES)
def test_matvec_q8_0_matches_reference(shape, path):
    _on(path, "q8_0")
    O, I = shape
    rng = np.random.default_rng(O * 5 + I)
    qs, d = Q.quantize_q8_0(_weights(rng, O, I))
    x = rng.standard_normal(I).astype(np.float32)
    x[:32] = 0  # a group of zero activations
    out = np.full(O, np.nan, np.float32)
    Q.matvec_q8_0(out, qs, d, x)
    _assert_rel(out, naive.matvec_q8_0(qs, d, x), naive.matvec_q8_0_scale(qs, d, x))
    out2 = np.full(O, np.nan, np.float32)
    K.matvec_q8_0(out2, qs, d, x)
    np.testing.assert_array_equal(out2, out)
    # the integer dot stays close to the float32 product of the same weights (x's own rounding: 2^-8 of a group)
    wv = naive.q8_0_values(qs, d)
    assert np.all(np.abs(out - wv @ x) <= 2e-2 * (np.abs(wv) @ np.abs(x)))


def test_matvec_q8_0_extreme_weights(path):
    _on(path, "q8_0")
    w = _q8_edge_weights()
    qs, d = Q.quantize_q8_0(w)
    x = np.random.default_rng(7).standard_normal(64).astype(np.float32)
    out = np.empty(w.shape[0], np.float32)
    Q.matvec_q8_0(out, qs, d, x)
    assert np.isfinite(out).all()
    _assert_rel(out, naive.matvec_q8_0(qs, d, x), naive.matvec_q8_0_scale(qs, d, x))


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_q8_0_matches_reference(shape, with_bias, route):
    N, O, I = shape
    rng = np.random.default_rng(N * 3 + O + I)
    qs, d = Q.quantize_q8_0(_weights(rng, O, I))
    x = rng.standard_normal((N, I)).astype(np.float32)
    bias = rng.standard_normal(O).astype(np.float32) if with_bias else None
    out = np.full((N, O), np.nan, np.float32)
    Q.linear_q8_0(out, x, qs, d, bias)
    assert route == "tiles" or Q.prompt_route(N, "q8_0", O * I) == route
    wv = naive.q8_0_values(qs, d)
    size = np.abs(x.astype(np.float64)) @ np.abs(wv).T + (0 if bias is None else np.abs(bias))
    xv = x
    if route == "bf16 products":  # x rounded to bf16, W as two bf16 numbers
        xv, wv = naive.bf16_values(naive.bf16_bits(x)), naive.split_bf16_values(wv)
    _assert_rel(out, naive.linear(xv, wv, bias), size)
    out2 = np.full((N, O), np.nan, np.float32)
    K.linear_q8_0(out2, x, qs, d, bias)
    np.testing.assert_array_equal(out2, out)


def test_linear_with_no_rows():
    qs, d = Q.quantize_q8_0(np.ones((4, 32), np.float32))
    Q.linear_q8_0(np.empty((0, 4), np.float32), np.empty((0, 32), np.float32), qs, d, None)
    Q.linear_bf16(np.empty((0, 4), np.float32), np.empty((0, 32), np.float32), Q.quantize_bf16(np.ones((4, 32),
                  np.float32)), None)


# ------------------------------------------------------------------------------------------------- paths


def test_kernel_paths_and_the_portable_switch(monkeypatch):
    paths = Q.kernel_paths()
    assert set(paths) == {"q8_0", "bf16"}
    assert paths["q8_0"] in ("avx512-vnni", "avx-vnni", "portable") and paths["bf16"] in ("avx512-bf16", "portable")
    monkeypatch.setenv("QORUS_PORTABLE", "1")
    assert Q.kernel_paths() == {"q8_0": "portable", "bf16": "portable"}
    assert Q._path("q8_0") == Q._path("bf16") == "portable"  # what the dispatchers use
    monkeypatch.undo()
    assert Q.kernel_paths() == paths  # chosen afresh: the later tests run on this machine's paths


def test_vdpbf16ps_is_opt_in(monkeypatch):
    """bf16 products multiply in float32 unless QORUS_VDPBF16PS=1 asks for vdpbf16ps (where the CPU has it), and
    QORUS_PORTABLE wins over it; ``qorus info`` says which and why."""
    from qorus_jit.kernels import quant_x86
    from qorus_jit.sysinfo import quantized_kernels

    monkeypatch.delenv("QORUS_PORTABLE", raising=False)
    monkeypatch.delenv("QORUS_VDPBF16PS", raising=False)
    has = quant_x86.available()["avx512-bf16"]
    assert Q.kernel_paths()["bf16"] == "portable"
    if has:
        assert "QORUS_VDPBF16PS=1" in quantized_kernels({"avx512bf16": True})["note"]
    monkeypatch.setenv("QORUS_VDPBF16PS", "1")
    assert Q.kernel_paths()["bf16"] == ("avx512-bf16" if has else "portable")
    monkeypatch.setenv("QORUS_PORTABLE", "1")
    assert Q.kernel_paths()["bf16"] == "portable"
    monkeypatch.undo()
    Q.kernel_paths()


# ------------------------------------------------------------------------------------------------- bad input


def _q8(O=4, I=64):
    return Q.quantize_q8_0(np.ones((O, I), np.float32))


def test_quantize_bad_inputs():
    with pytest.raises(TypeError, match="w: expected dtype .*float32.*float64"):
        Q.quantize_bf16(np.ones(4, np.float64))
    with pytest.raises(TypeError, match="w: expected a numpy array"):
        Q.quantize_bf16([1.0, 2.0])
    with pytest.raises(ValueError, match="w: expected a C-contiguous array"):
        Q.quantize_bf16(np.ones((4, 64), np.float32)[:, ::2])
    with pytest.raises(TypeError, match="w16: expected dtype .*uint16.*int16"):
        Q.dequantize_bf16(np.ones(4, np.int16))
    with pytest.raises(ValueError, match="w: expected in_features .* multiple of 32, got 48"):
        Q.quantize_q8_0(np.ones((4, 48), np.float32))
    with pytest.raises(ValueError, match="w: expected in_features .* multiple of 32, got 0"):
        Q.quantize_q8_0(np.ones((4, 0), np.float32))
    with pytest.raises(ValueError, match="w: expected 2-D array"):
        Q.quantize_q8_0(np.ones(64, np.float32))
    qs, d = _q8()
    with pytest.raises(TypeError, match="qs: expected dtype .*int8.*uint8"):
        Q.dequantize_q8_0(qs.view(np.uint8), d)
    with pytest.raises(ValueError, match=r"d: expected shape \(4, 2\)"):
        Q.dequantize_q8_0(qs, d[:, :1].copy())
    with pytest.raises(TypeError, match="d: expected dtype .*float32.*float16"):
        Q.dequantize_q8_0(qs, d.astype(np.float16))


def test_matvec_bad_inputs():
    qs, d = _q8()
    w16 = Q.quantize_bf16(np.ones((4, 64), np.float32))
    x, out = np.ones(64, np.float32), np.empty(4, np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(64,\)"):
        Q.matvec_q8_0(out, qs, d, np.ones(32, np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(4,\)"):
        Q.matvec_bf16(np.empty(5, np.float32), w16, x)
    with pytest.raises(TypeError, match="x: expected dtype .*float32.*float64"):
        Q.matvec_bf16(out, w16, x.astype(np.float64))
    with pytest.raises(TypeError, match="w16: expected dtype .*uint16.*float32"):
        Q.matvec_bf16(out, np.ones((4, 64), np.float32), x)
    with pytest.raises(ValueError, match="w16: expected in_features .* multiple of 32, got 40"):
        Q.matvec_bf16(out, np.ones((4, 40), np.uint16), np.ones(40, np.float32))
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        Q.matvec_q8_0(out, qs, d, np.ones(128, np.float32)[::2])
    buf = np.ones(68, np.float32)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap x"):
        Q.matvec_q8_0(buf[:4], qs, d, buf[2:66])
    ro = np.empty(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writeable array"):
        Q.matvec_q8_0(ro, qs, d, x)


def test_linear_bad_inputs():
    qs, d = _q8()
    w16 = Q.quantize_bf16(np.ones((4, 64), np.float32))
    x, out = np.ones((3, 64), np.float32), np.empty((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 64\) with \{'N': 3\}, got \(2, 64\)"):
        Q.linear_q8_0(np.empty((3, 4), np.float32), np.ones((2, 64), np.float32), qs, d, None)
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\)"):
        Q.linear_bf16(out, x, w16, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="bias: expected dtype .*float32.*float64"):
        Q.linear_q8_0(out, x, qs, d, np.ones(4))
    buf = np.ones(16, np.float32)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap bias"):
        Q.linear_q8_0(buf[:12].reshape(3, 4), x, qs, d, buf[10:14])
    with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
        Q.linear_bf16(out, np.ones((3, 128), np.float32)[:, ::2], w16, None)
