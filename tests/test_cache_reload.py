"""Kernels reloaded from numba's cache under two type signatures, in fresh processes (docs/design.md, "Kernels
that call parallel kernels").

One sequence per test run, in a temporary ``NUMBA_CACHE_DIR`` (the shared cache stays untouched): process 1
calls every family's signature A (optional arguments given, float32, int32 ids, one layer), process 2 its
signature B (None, float64, int64 ids, two layers), so B compiles while the kernels it shares with A come from
the cache; then one process per family calls B and then A, both loaded from the cache, so that the family's
first kernel is the first to enter numba's thread pool. Each process must exit 0 with results that match NumPy
float64. Before the fix, numba 0.68 saved the serial numba-route wrappers and the fused Llama decode of
signature B without the start of the thread pool (their parallel callees had come from the cache), and the
third process died with SIGSEGV.

The families cover the signatures that None for an optional array makes in the matmul kernels (both routes)
and the layer count in the fused Llama decode, and one of each dtype kind (float, ids); a parallel kernel
that only differs by dtype carries the start of the pool in its own cached code.
``test_no_serial_kernel_calls_a_parallel_one`` guards the rule for every kernel.

The children import this module and run ``_main``: nothing here may start numba's threads before the family's
first kernel call (``numerics.get_num_threads`` would, and hide the crash).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

import numba
import numpy as np
import pytest

from tests.helpers import run_on_cache


def _rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _close(got, want, dtype, what):
    tol = 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol, err_msg=what)


# ------------------------------------------------------------------------------------------------ families
# Each takes "a" or "b" and checks its results. Products of M * N * K >= 2**18 multiply-adds take the numba
# route's parallel paths: (64, 64) @ (64, 64) its row updates (K < 128), (32, 128) @ (128, 64) its tiles.

_PRODUCTS = [(64, 64, 64), (32, 128, 64)]  # (rows, inner, cols)


def _linear_forward(variant):
    from qorus_jit.kernels import matmul
    from tests.naive import matmul as naive

    rng = np.random.default_rng(0)
    for route in ("numba", "blas"):
        for N, I, O in _PRODUCTS:
            x, w, b = _rand(rng, N, I), _rand(rng, O, I), _rand(rng, O)
            bias = b if variant == "a" else None
            out = np.full((N, O), np.nan, np.float32)
            matmul.linear_forward(out, x, w, bias, route=route)
            _close(out, naive.linear(x, w, bias), np.float32, f"linear_forward {route} {variant}")


def _linear_backward(variant):
    from qorus_jit.kernels import matmul
    from tests.naive import matmul as naive

    rng = np.random.default_rng(1)
    for route in ("numba", "blas"):
        for N, I, O in _PRODUCTS:
            x, w, dout = _rand(rng, N, I), _rand(rng, O, I), _rand(rng, N, O)
            dx, dw, db = np.zeros((N, I), np.float32), np.zeros((O, I), np.float32), np.zeros(O, np.float32)
            if variant == "a":
                matmul.linear_backward(dx, dw, db, dout, x, w, route=route)
            else:
                matmul.linear_backward(None, dw, None, dout, x, w, route=route)
            want = naive.linear_backward(dout, x, w)
            _close(dw, want[1], np.float32, f"linear_backward dweight {route} {variant}")
            _close(dx, want[0] if variant == "a" else 0, np.float32, f"linear_backward dx {route} {variant}")
            _close(db, want[2] if variant == "a" else 0, np.float32, f"linear_backward dbias {route} {variant}")


def _matmul_forward(variant):
    from qorus_jit.kernels import matmul
    from tests.naive import matmul as naive

    dtype = np.float32 if variant == "a" else np.float64
    rng = np.random.default_rng(2)
    for route in ("numba", "blas"):
        for M, Kd, N in _PRODUCTS:
            a, b = _rand(rng, M, Kd, dtype=dtype), _rand(rng, Kd, N, dtype=dtype)
            out = np.full((M, N), np.nan, dtype)
            matmul.matmul_forward(out, a, b, route=route)
            _close(out, naive.matmul(a, b), dtype, f"matmul_forward {route} {variant}")


def _matmul_backward(variant):
    from qorus_jit.kernels import matmul
    from tests.naive import matmul as naive

    rng = np.random.default_rng(3)
    for route in ("numba", "blas"):
        for M, Kd, N in _PRODUCTS:
            a, b, dout = _rand(rng, M, Kd), _rand(rng, Kd, N), _rand(rng, M, N)
            da, db = np.zeros((M, Kd), np.float32), np.zeros((Kd, N), np.float32)
            matmul.matmul_backward(da, db if variant == "a" else None, dout, a, b, route=route)
            want = naive.matmul_backward(dout, a, b)
            _close(da, want[0], np.float32, f"matmul_backward da {route} {variant}")
            _close(db, want[1] if variant == "a" else 0, np.float32, f"matmul_backward db {route} {variant}")


def _bmm(variant):
    from qorus_jit.kernels import matmul
    from tests.naive import matmul as naive

    rng = np.random.default_rng(4)
    G, M, Kd, N = 4, 32, 64, 32
    for route in ("numba", "blas"):
        for tb in (False, True):
            a, b = _rand(rng, G, M, Kd), _rand(rng, *((G, N, Kd) if tb else (G, Kd, N)))
            out = np.full((G, M, N), np.nan, np.float32)
            matmul.bmm_forward(out, a, b, tb, route=route)
            _close(out, naive.bmm(a, b, tb), np.float32, f"bmm_forward {route} {variant}")
            dout = _rand(rng, G, M, N)
            da, db = np.zeros_like(a), np.zeros_like(b)
            matmul.bmm_backward(da, db if variant == "a" else None, dout, a, b, tb, route=route)
            want = naive.bmm_backward(dout, a, b, tb)
            _close(da, want[0], np.float32, f"bmm_backward da {route} {variant}")
            _close(db, want[1] if variant == "a" else 0, np.float32, f"bmm_backward db {route} {variant}")


def _activations(variant):
    from qorus_jit.kernels import activations
    from tests.naive import activations as naive

    dtype = np.float32 if variant == "a" else np.float64
    rng = np.random.default_rng(5)
    n = 1 << 16  # above numerics.SERIAL_WORK: the parallel chunks run
    a, b, dout = _rand(rng, n, dtype=dtype), _rand(rng, n, dtype=dtype), _rand(rng, n, dtype=dtype)
    da, db = np.zeros(n, dtype), np.zeros(n, dtype)
    activations.swiglu_backward(da, db, dout, a, b)
    s = naive.sigmoid(a)
    _close(da, dout * b * s * (1 + a * (1 - s)), dtype, f"swiglu_backward da {variant}")
    _close(db, dout * a * s, dtype, f"swiglu_backward db {variant}")
    out = np.empty(n, dtype)
    activations.swiglu_forward(out, a, b)
    _close(out, naive.swiglu(a, b), dtype, f"swiglu_forward {variant}")


def _llama_reference(model, tok):
    """Float64 logits of token ``tok`` at position 0, where each query head's attention output is its kv head's
    value (softmax over one key is 1, and RoPE leaves values alone)."""
    c = model.config
    p = {k: v.astype(np.float64) for k, v in model.parameters().items()}

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x) + c.norm_eps) * w

    x = p["model.embed_tokens.weight"][tok]
    for i in range(c.n_layers):
        w = {k.removeprefix(f"model.layers.{i}."): v for k, v in p.items() if k.startswith(f"model.layers.{i}.")}
        v = w["self_attn.v_proj.weight"] @ rms(x, w["input_layernorm.weight"])
        att = np.repeat(v.reshape(c.n_kv_heads, c.head_dim), c.n_heads // c.n_kv_heads, axis=0).reshape(-1)
        x = x + w["self_attn.o_proj.weight"] @ att
        h = rms(x, w["post_attention_layernorm.weight"])
        gate, up = w["mlp.gate_proj.weight"] @ h, w["mlp.up_proj.weight"] @ h
        x = x + w["mlp.down_proj.weight"] @ (gate / (1 + np.exp(-gate)) * up)
    head = p["model.embed_tokens.weight"] if c.tie_embeddings else p["lm_head.weight"]
    return head @ rms(x, p["model.norm.weight"])


def _llama_decode(variant):
    from qorus_jit.layers import DecodeState
    from qorus_jit.models import Llama, LlamaConfig
    from qorus_jit.models.decoder import _Decoder

    cfg = LlamaConfig(dim=32, n_layers=1 if variant == "a" else 2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                      vocab_size=61, max_seq_len=8, norm_eps=1e-5)
    model = Llama(cfg, rng=1)
    for name, w in model.parameters().items():  # norms away from 1 so that their weights matter
        if "norm" in name:
            w += np.random.default_rng(2).normal(0, 0.1, w.shape).astype(np.float32)
    state = DecodeState(1, 8)
    dec = _Decoder(model, state, (0, "fp32"))
    tok = 7
    # the fused kernel with a fixed thread split (decode_split would start the threads first)
    dec.step(tok, 0, (False, min(2, numba.config.NUMBA_NUM_THREADS)))
    _close(dec.out[0], _llama_reference(model, tok), np.float32, f"llama_decode {variant}")


def _ids(variant):
    """Kernels that take int32 or int64 ids."""
    from qorus_jit.kernels import embedding, loss
    from tests.naive import embedding as n_emb
    from tests.naive import loss as n_loss

    ids_dtype = np.int32 if variant == "a" else np.int64
    rng = np.random.default_rng(6)
    V, C, N = 50, 16, 12
    ids = rng.integers(0, V, N).astype(ids_dtype)
    w = _rand(rng, V, C)
    out = np.empty((N, C), np.float32)
    embedding.embedding_forward(out, ids, w)
    _close(out, n_emb.embedding(ids, w), np.float32, f"embedding_forward {variant}")
    dw = np.zeros((V, C), np.float32)
    embedding.embedding_backward(dw, out, ids)
    _close(dw, n_emb.embedding_backward(out, ids, V), np.float32, f"embedding_backward {variant}")
    logits, targets = _rand(rng, N, V), rng.integers(0, V, N).astype(ids_dtype)
    dlogits = np.empty_like(logits)
    mean = loss.cross_entropy_forward_backward(dlogits, logits, targets)
    _close(mean, n_loss.cross_entropy(logits, targets)[1], np.float32, f"cross_entropy {variant}")
    _close(dlogits, n_loss.cross_entropy_grad(logits, targets), np.float32, f"cross_entropy grad {variant}")


FAMILIES = {f.__name__[1:]: f for f in (_linear_forward, _linear_backward, _matmul_forward, _matmul_backward, _bmm,
                                         _activations, _llama_decode, _ids)}


def _main(argv):
    """``family:variants`` ...: run each family's variants in order (``linear_forward:ba``)."""
    for spec in argv:
        name, variants = spec.split(":")
        for v in variants:
            FAMILIES[name](v)


# ------------------------------------------------------------------------------------------------ the test


def _run(cache_dir, *specs):
    code = "import sys; from tests.test_cache_reload import _main; _main(sys.argv[1:])"
    return run_on_cache(cache_dir, code, *specs)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A fresh cache holding every family's signature A (process 1), then B (process 2)."""
    cache = tmp_path_factory.mktemp("numba_cache")
    for variant in "ab":
        r = _run(cache, *(f"{name}:{variant}" for name in FAMILIES))
        assert r.returncode == 0, f"compiling signature {variant}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return cache


@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_signatures_reload_from_the_cache(warm_cache, family):
    r = _run(warm_cache, f"{family}:ba")
    assert r.returncode == 0, f"{family}: exit {r.returncode}\n{r.stderr[-3000:]}"


def _dispatchers():
    """Every numba dispatcher defined in the package, by 'module.name'."""
    import qorus_jit

    found = {}
    for info in pkgutil.walk_packages(qorus_jit.__path__, "qorus_jit."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, numba.core.dispatcher.Dispatcher) and obj.py_func.__module__ == module.__name__:
                found[f"{module.__name__.removeprefix('qorus_jit.')}.{name}"] = obj
    return found


def _callees(d):
    """The dispatchers ``d``'s source names: globals, and attributes of modules it names."""
    names, glb = set(), d.py_func.__globals__

    def walk(code):
        names.update(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                walk(c)

    walk(d.py_func.__code__)
    objs = [glb.get(n) for n in names]
    objs += [getattr(m, n, None) for m in objs if isinstance(m, types.ModuleType) for n in names]
    return {o for o in objs if isinstance(o, numba.core.dispatcher.Dispatcher) and o is not d}


def test_no_serial_kernel_calls_a_parallel_one():
    """A cached kernel that is not ``parallel=True`` must not call a parallel one, directly or through other
    kernels: numba 0.68 keeps the start of the thread pool only with a parallel kernel's own cached code (and,
    for its callers, only when it was compiled in the same process), so such a caller compiled while the
    parallel kernel came from the cache segfaults when a later process loads it and runs it first."""
    found = _dispatchers()
    memo = {}

    def reaches_parallel(d, seen=()):
        if id(d) not in memo:
            memo[id(d)] = any(c.targetoptions.get("parallel") or (c not in seen and reaches_parallel(c, seen + (d,)))
                              for c in _callees(d))
        return memo[id(d)]

    assert len(found) > 50
    offenders = sorted(name for name, d in found.items()
                       if not d.targetoptions.get("parallel") and reaches_parallel(d))
    assert offenders == []


if __name__ == "__main__":
    _main(sys.argv[1:])


def test_a_change_to_any_kernel_module_makes_every_cached_kernel_stale(tmp_path):
    """numba checks a cached kernel against its own file only, but kernels inline functions of other modules (the
    decoder the rows of quant_x86): every kernel's cache locator is qorus's, whose stamp also holds a hash of all
    of core/ and kernels/, and a cache index saved under another stamp reads as empty (so the kernel compiles)."""
    from numba.core.caching import IndexDataCacheFile

    from qorus_jit.core import numerics
    from qorus_jit.kernels import decode, quant_x86
    from tests import test_sync

    # a test's kernel too: it inlines the package's (test_sync's phases the claims and waits of kernels._sync)
    for k in (decode._matvec, quant_x86._q8_0_token_emu, numerics.row_chunks, test_sync._phases):
        locator = k._cache._impl.locator
        assert isinstance(locator, numerics._PackageSources), type(locator)
        assert locator.get_source_stamp()[1] == numerics.sources_stamp()
    # the hash follows every file's contents
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for f in files:
        f.write_text("x = 1\n")
    before = numerics.sources_stamp(files)
    files[1].write_text("x = 2\n")
    assert numerics.sources_stamp(files) != before
    # numba's index under a stamp of ours: kept while the stamp holds, dropped when any module changed
    stamp = decode._matvec._cache._impl.locator.get_source_stamp()
    IndexDataCacheFile(str(tmp_path), "k", stamp).save(("sig",), b"code")
    assert IndexDataCacheFile(str(tmp_path), "k", stamp).load(("sig",)) == b"code"
    assert IndexDataCacheFile(str(tmp_path), "k", (stamp[0], b"another")).load(("sig",)) is None
