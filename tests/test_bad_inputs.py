"""Every public kernel wrapper rejects bad arguments with TypeError/ValueError before any kernel runs.

The cases are generated from one valid call per wrapper (:func:`calls`), which also says which arguments
the wrapper writes and which input each output may be in place:

- each array argument in turn replaced by None, a list, a float16 (or float) array, a big-endian array, a
  masked array, a non-contiguous view, an array with an extra axis;
- each output overlapping each other array argument at an offset (either way round), and being exactly
  that array: refused with a ValueError naming both, except an exact in-place alias the wrapper supports,
  which gives the result of separate arrays;
- each scalar argument as a NumPy scalar (same result) and as a bool where a number is expected (refused);
- each size of the call set to 0: an empty result or a ValueError naming an argument.

A numba typing error, a ZeroDivisionError or a crash is a failure.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest

from qorus_jit.kernels import (
    activations,
    attention,
    elementwise,
    embedding,
    loss,
    matmul,
    norm,
    optim,
    rope,
    softmax,
)

F = np.float32
MODULES = (activations, attention, elementwise, embedding, loss, matmul, norm, optim, rope, softmax)
NOT_WRAPPERS = {"attention_work_size", "backward_chunks"}  # helpers on shapes and counts, no arrays


@dataclasses.dataclass
class Recipe:
    fn: object
    args: dict  # parameter name -> value, in the signature's order
    writes: tuple = ()  # the array arguments the wrapper writes
    inplace: dict = dataclasses.field(default_factory=dict)  # output -> inputs it may be exactly
    optional: tuple = ()  # array arguments that may be None


DIMS = dict(N=3, C=3, O=4, B=1, T=3, H=2, Hkv=1, D=4, S=5, V=5, T_max=6)


def calls(**sizes) -> dict[str, Recipe]:
    """name -> a valid call of each public wrapper, its arrays built from the sizes ``DIMS`` (overridden by
    ``sizes``) with fresh random values."""
    d = {**DIMS, **sizes}
    N, C, O, B, T, H, Hkv, D, S, V, T_max = (d[k] for k in DIMS)
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(F)

    def z(*shape):
        return np.zeros(shape, F)

    def ids(*shape):
        return rng.integers(0, max(V, 1), shape).astype(np.int64)

    def unary(fn, **scalars):
        return Recipe(fn, dict(out=z(N, C), x=r(N, C), **scalars), ("out",), {"out": ("x",)})

    def unary_backward(fn, **scalars):
        return Recipe(fn, dict(dx=r(N, C), dout=r(N, C), x=r(N, C), **scalars), ("dx",))

    def binary(fn):
        return Recipe(fn, dict(out=z(N, C), a=r(N, C), b=r(N, C)), ("out",), {"out": ("a", "b")})

    def binary_backward(fn):
        return Recipe(fn, dict(da=r(N, C), db=r(N, C), dout=r(N, C), a=r(N, C), b=r(N, C)), ("da", "db"))

    cos, sin = np.cos(r(T_max, D // 2)), np.sin(r(T_max, D // 2))
    mask = np.ones((B, S), bool)
    mask[:, 1:2] = False
    work = np.zeros(attention.attention_work_size((B, T, H, D), (B, S, Hkv, D)), F)
    targets = ids(N)
    targets[:1] = -100
    grads = [r(N, C), r(C)]
    return {
        "add_forward": binary(elementwise.add_forward),
        "add_backward": Recipe(elementwise.add_backward, dict(da=r(N, C), db=r(N, C), dout=r(N, C)), ("da", "db")),
        "mul_forward": binary(elementwise.mul_forward),
        "mul_backward": binary_backward(elementwise.mul_backward),
        "scale_forward": Recipe(elementwise.scale_forward, dict(out=z(N, C), a=r(N, C), s=2.0), ("out",),
                                {"out": ("a",)}),
        "scale_backward": Recipe(elementwise.scale_backward, dict(da=r(N, C), dout=r(N, C), s=0.5), ("da",)),
        "relu_forward": unary(activations.relu_forward),
        "relu_backward": unary_backward(activations.relu_backward),
        "gelu_forward": unary(activations.gelu_forward, approximate="tanh"),
        "gelu_backward": unary_backward(activations.gelu_backward, approximate="none"),
        "silu_forward": unary(activations.silu_forward),
        "silu_backward": unary_backward(activations.silu_backward),
        "swish_forward": unary(activations.swish_forward, beta=1.5),
        "swish_backward": unary_backward(activations.swish_backward, beta=1.5),
        "swiglu_forward": binary(activations.swiglu_forward),
        "swiglu_backward": binary_backward(activations.swiglu_backward),
        "softmax_forward": unary(softmax.softmax_forward),
        "softmax_backward": Recipe(softmax.softmax_backward, dict(dx=r(N, C), dout=r(N, C), out=r(N, C)), ("dx",)),
        "causal_softmax_forward": Recipe(softmax.causal_softmax_forward, dict(out=z(B, T, T), x=r(B, T, T)),
                                         ("out",), {"out": ("x",)}),
        "causal_softmax_backward": Recipe(softmax.causal_softmax_backward,
                                          dict(dx=r(B, T, T), dout=r(B, T, T), out=r(B, T, T)), ("dx",)),
        "linear_forward": Recipe(matmul.linear_forward, dict(out=z(N, O), x=r(N, C), weight=r(O, C), bias=r(O),
                                                             route="blas"), ("out",), optional=("bias",)),
        "linear_backward": Recipe(matmul.linear_backward,
                                  dict(dx=r(N, C), dweight=r(O, C), dbias=r(O), dout=r(N, O), x=r(N, C),
                                       weight=r(O, C), route="numba"),
                                  ("dx", "dweight", "dbias"), optional=("dx", "dbias")),
        "matmul_forward": Recipe(matmul.matmul_forward, dict(out=z(N, O), a=r(N, C), b=r(C, O), route="blas"),
                                 ("out",)),
        "matmul_backward": Recipe(matmul.matmul_backward,
                                  dict(da=r(N, C), db=r(C, O), dout=r(N, O), a=r(N, C), b=r(C, O), route="blas"),
                                  ("da", "db"), optional=("da", "db")),
        "bmm_forward": Recipe(matmul.bmm_forward, dict(out=z(B, N, O), a=r(B, N, C), b=r(B, O, C), transpose_b=True,
                                                       route="numba"), ("out",)),
        "bmm_backward": Recipe(matmul.bmm_backward,
                               dict(da=r(B, N, C), db=r(B, C, O), dout=r(B, N, O), a=r(B, N, C), b=r(B, C, O),
                                    transpose_b=False, route="blas"), ("da", "db"), optional=("da", "db")),
        "rmsnorm_forward": Recipe(norm.rmsnorm_forward, dict(out=z(N, C), rstd=z(N), x=r(N, C), weight=r(C),
                                                             eps=1e-5), ("out", "rstd"), {"out": ("x",)}),
        "rmsnorm_backward": Recipe(norm.rmsnorm_backward,
                                   dict(dx=r(N, C), dweight=r(C), dout=r(N, C), x=r(N, C), weight=r(C),
                                        rstd=np.abs(r(N))), ("dx", "dweight")),
        "layernorm_forward": Recipe(norm.layernorm_forward,
                                    dict(out=z(N, C), mean=z(N), rstd=z(N), x=r(N, C), weight=r(C), bias=r(C),
                                         eps=1e-5), ("out", "mean", "rstd"), {"out": ("x",)}, ("bias",)),
        "layernorm_backward": Recipe(norm.layernorm_backward,
                                     dict(dx=r(N, C), dweight=r(C), dbias=r(C), dout=r(N, C), x=r(N, C), weight=r(C),
                                          mean=r(N), rstd=np.abs(r(N))),
                                     ("dx", "dweight", "dbias"), optional=("dbias",)),
        "rope_tables": Recipe(rope.rope_tables, dict(cos=z(T_max, D // 2), sin=z(T_max, D // 2), theta=500.0),
                              ("cos", "sin")),
        "rope_cache": Recipe(rope.rope_cache, dict(max_seq_len=T_max, head_dim=D, theta=500.0, dtype=F)),
        "rope_forward": Recipe(rope.rope_forward, dict(out=z(B, T, H, D), x=r(B, T, H, D), cos=cos, sin=sin, pos=1,
                                                       interleaved=False), ("out",), {"out": ("x",)}),
        "rope_backward": Recipe(rope.rope_backward, dict(dx=r(B, T, H, D), dout=r(B, T, H, D), cos=cos, sin=sin,
                                                         pos=2, interleaved=True), ("dx",), {"dx": ("dout",)}),
        "embedding_forward": Recipe(embedding.embedding_forward, dict(out=z(B, T, C), ids=ids(B, T), weight=r(V, C)),
                                    ("out",)),
        "embedding_backward": Recipe(embedding.embedding_backward,
                                     dict(dweight=r(V, C), dout=r(B, T, C), ids=ids(B, T)), ("dweight",)),
        "attention_forward": Recipe(attention.attention_forward,
                                    dict(out=z(B, T, H, D), lse=z(B, H, T), q=r(B, T, H, D), k=r(B, S, Hkv, D),
                                         v=r(B, S, Hkv, D), causal=True, key_mask=mask, scale=0.7, work=work),
                                    ("out", "lse", "work"), optional=("key_mask", "work")),
        "attention_backward": Recipe(attention.attention_backward,
                                     dict(dq=r(B, T, H, D), dk=r(B, S, Hkv, D), dv=r(B, S, Hkv, D), dout=r(B, T, H, D),
                                          q=r(B, T, H, D), k=r(B, S, Hkv, D), v=r(B, S, Hkv, D), out=r(B, T, H, D),
                                          lse=np.abs(r(B, H, T)) + 2, causal=False, key_mask=mask.astype(np.int32),
                                          scale=0.5, accumulate=True, work=None),
                                     ("dq", "dk", "dv", "work"), optional=("key_mask", "work")),
        "attention_decode": Recipe(attention.attention_decode,
                                   dict(out=z(B, H, D), q=r(B, H, D), k_cache=r(B, Hkv, T_max, D),
                                        v_cache=r(B, Hkv, T_max, D), length=3, key_mask=None, scale=0.3), ("out",)),
        "kv_cache_write": Recipe(attention.kv_cache_write,
                                 dict(k_cache=z(B, Hkv, T_max, D), v_cache=z(B, Hkv, T_max, D), k=r(B, T, Hkv, D),
                                      v=r(B, T, Hkv, D), pos=2), ("k_cache", "v_cache")),
        "cross_entropy_forward": Recipe(loss.cross_entropy_forward,
                                        dict(losses=z(N), logits=r(N, V), targets=targets, ignore_index=-100),
                                        ("losses",)),
        "cross_entropy_backward": Recipe(loss.cross_entropy_backward,
                                         dict(dlogits=r(N, V), logits=r(N, V), targets=targets, ignore_index=-100,
                                              scale=0.5), ("dlogits",)),
        "cross_entropy_forward_backward": Recipe(loss.cross_entropy_forward_backward,
                                                 dict(dlogits=z(N, V), logits=r(N, V), targets=targets,
                                                      ignore_index=-100), ("dlogits",), {"dlogits": ("logits",)}),
        "mse_forward": Recipe(loss.mse_forward, dict(pred=r(N, C), target=r(N, C))),
        "mse_backward": Recipe(loss.mse_backward, dict(dpred=r(N, C), pred=r(N, C), target=r(N, C), scale=0.25),
                               ("dpred",)),
        "sgd_update": Recipe(optim.sgd_update,
                             dict(param=r(N, C), momentum_buf=r(N, C), grad=r(N, C), lr=0.1, momentum=0.9,
                                  dampening=0.0, weight_decay=0.01, nesterov=True, first_step=False),
                             ("param", "momentum_buf")),
        "adam_update": Recipe(optim.adam_update,
                              dict(param=r(N, C), m=r(N, C), v=np.abs(r(N, C)), grad=r(N, C), lr=0.01, beta1=0.9,
                                   beta2=0.999, eps=1e-8, weight_decay=0.01, step=3), ("param", "m", "v")),
        "adamw_update": Recipe(optim.adamw_update,
                               dict(param=r(N, C), m=r(N, C), v=np.abs(r(N, C)), grad=r(N, C), lr=0.01, beta1=0.9,
                                    beta2=0.999, eps=1e-8, weight_decay=0.01, step=2), ("param", "m", "v")),
        "grad_norm": Recipe(optim.grad_norm, dict(grads=grads)),
        "clip_grad_norm": Recipe(optim.clip_grad_norm, dict(grads=[g.copy() for g in grads], max_norm=0.5)),
    }


def _z(*shape):
    return np.zeros(shape, F)


def _o(*shape):
    return np.ones(shape, F)


def recipes():
    """name -> (function, args, indices of optional array args that may be None): the first wrappers' valid calls
    in the form tests/fuzz/cases_kernels.py builds on (the cases here use :func:`calls`, which covers them all)."""
    cos, sin = rope.rope_cache(8, 4)
    ids = np.array([[0, 2, 1]], np.int64)
    q = np.random.default_rng(0).standard_normal((1, 3, 2, 4)).astype(F)
    lse = np.zeros((1, 2, 3), F)
    return {
        "add_forward": (elementwise.add_forward, [_z(2, 3), _o(2, 3), _o(2, 3)], ()),
        "mul_backward": (elementwise.mul_backward, [_z(2, 3), _z(2, 3), _o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "scale_forward": (elementwise.scale_forward, [_z(2, 3), _o(2, 3), 2.0], ()),
        "relu_backward": (activations.relu_backward, [_z(2, 3), _o(2, 3), _o(2, 3)], ()),
        "gelu_forward": (activations.gelu_forward, [_z(2, 3), _o(2, 3)], ()),
        "swiglu_backward": (activations.swiglu_backward, [_z(2, 3), _z(2, 3), _o(2, 3), _o(2, 3), _o(2, 3)], ()),
        "softmax_forward": (softmax.softmax_forward, [_z(2, 3), _o(2, 3)], ()),
        "causal_softmax_backward": (softmax.causal_softmax_backward, [_z(2, 3, 3), _o(2, 3, 3), _o(2, 3, 3)], ()),
        "linear_forward": (matmul.linear_forward, [_z(2, 3), _o(2, 4), _o(3, 4), _o(3)], (3,)),
        "linear_backward": (matmul.linear_backward,
                            [_z(2, 4), _z(3, 4), _z(3), _o(2, 3), _o(2, 4), _o(3, 4)], (0, 2)),
        "matmul_forward": (matmul.matmul_forward, [_z(2, 3), _o(2, 4), _o(4, 3)], ()),
        "bmm_backward": (matmul.bmm_backward, [_z(2, 3, 4), _z(2, 4, 5), _o(2, 3, 5), _o(2, 3, 4), _o(2, 4, 5)],
                         (0, 1)),
        "rmsnorm_forward": (norm.rmsnorm_forward, [_z(2, 4), _z(2), _o(2, 4), _o(4), 1e-5], ()),
        "layernorm_backward": (norm.layernorm_backward,
                               [_z(2, 4), _z(4), _z(4), _o(2, 4), _o(2, 4), _o(4), _z(2), _o(2)], (2,)),
        "rope_forward": (rope.rope_forward, [_z(1, 3, 2, 4), _o(1, 3, 2, 4), cos, sin, 1, False], ()),
        "embedding_forward": (embedding.embedding_forward, [_z(1, 3, 4), ids, _o(5, 4)], ()),
        "embedding_backward": (embedding.embedding_backward, [_z(5, 4), _o(1, 3, 4), ids], ()),
        "attention_forward": (attention.attention_forward, [_z(1, 3, 2, 4), lse.copy(), q, q, q, True], ()),
        "attention_backward": (attention.attention_backward,
                               [_z(1, 3, 2, 4), _z(1, 3, 2, 4), _z(1, 3, 2, 4), _o(1, 3, 2, 4), q, q, q,
                                _o(1, 3, 2, 4), lse, True], ()),
        "attention_decode": (attention.attention_decode,
                             [_z(1, 2, 4), _o(1, 2, 4), _o(1, 2, 6, 4), _o(1, 2, 6, 4), 3], ()),
        "kv_cache_write": (attention.kv_cache_write, [_z(1, 2, 6, 4), _z(1, 2, 6, 4), q, q, 2], ()),
        "cross_entropy_forward": (loss.cross_entropy_forward, [_z(3), _o(3, 5), np.array([0, 4, 2])], ()),
        "cross_entropy_backward": (loss.cross_entropy_backward, [_z(3, 5), _o(3, 5), np.array([0, 4, 2])], ()),
        "mse_backward": (loss.mse_backward, [_z(2, 3), _o(2, 3), _z(2, 3)], ()),
        "sgd_update": (optim.sgd_update, [_o(2, 3), _z(2, 3), _o(2, 3), 0.1, 0.9], ()),
        "adamw_update": (optim.adamw_update, [_o(2, 3), _z(2, 3), _z(2, 3), _o(2, 3), 1e-3, 0.9, 0.999, 1e-8,
                                              0.01, 1], ()),
    }


NAMES = sorted(calls())


def _call(rec: Recipe, **changes):
    """Run the recipe with some arguments changed; returns (result, copies of every array argument after)."""
    args = {**rec.args, **changes}
    result = rec.fn(**args)
    return result, {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}


def _named(error, args) -> bool:
    """The error message starts with the name of an argument (``grads[1]``: of the list ``grads``)."""
    return str(error).split(":")[0].split("[")[0] in args


def _kind(name: str, a: np.ndarray) -> str:
    if a.dtype == bool or name == "key_mask":
        return "mask"
    return "index" if a.dtype.kind in "iu" else "float"


def test_every_public_wrapper_has_a_valid_call():
    public = {name for mod in MODULES for name, fn in vars(mod).items()
              if inspect.isfunction(fn) and fn.__module__ == mod.__name__ and not name.startswith("_")}
    assert public - NOT_WRAPPERS == set(calls())
    for name, rec in calls().items():
        assert list(rec.args) == list(inspect.signature(rec.fn).parameters)[:len(rec.args)], name
        assert set(rec.writes) <= set(rec.args) and set(rec.inplace) <= set(rec.writes), name
        rec.fn(**rec.args)  # the valid call works
    for name, (fn, args, _) in recipes().items():
        assert calls()[name].fn is fn
        fn(*args)


# -- each array argument replaced by a bad one -------------------------------------------------------------


def _bad_versions(kind, a):
    yield "None", None
    yield "list", a.tolist()
    if kind == "float":
        yield "float16", a.astype(np.float16)
        yield "complex64", a.astype(np.complex64)
        yield "int32", a.astype(np.int32)
    else:
        yield "float", a.astype(F)
    if kind != "mask":
        yield "big-endian", a.astype(a.dtype.newbyteorder(">"))
    if kind == "index":
        yield "uint64", a.astype(np.uint64)
    yield "masked", np.ma.array(a)
    strided = np.repeat(a, 2, axis=-1)[..., ::2]
    assert strided.shape == a.shape and not strided.flags.c_contiguous
    yield "non-contiguous", strided
    yield "extra axis", a[None]


CASES = [(name, arg) for name in NAMES for arg, a in calls()[name].args.items() if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("name,arg", CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_each_bad_array_is_rejected(name, arg):
    rec = calls()[name]
    for what, bad in _bad_versions(_kind(arg, rec.args[arg]), rec.args[arg]):
        if bad is None and arg in rec.optional:
            continue
        with pytest.raises((TypeError, ValueError)) as e:
            _call(calls()[name], **{arg: bad})
            pytest.fail(f"{name}: {arg} as {what} was accepted")
        assert _named(e.value, rec.args), f"{name}: {arg} as {what}: {e.value}"


@pytest.mark.parametrize("name", NAMES)
def test_all_arrays_big_endian_are_rejected(name):
    """One big-endian array among native ones fails the dtype match; all of them big-endian agree with each
    other, and ``np.dtype(">f4").type is np.float32``: the check must look at the byte order."""
    rec = calls()[name]
    big = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in rec.args.items()
           if isinstance(v, np.ndarray) and v.dtype.byteorder != "|"}
    big.update({k: [g.astype(g.dtype.newbyteorder(">")) for g in v] for k, v in rec.args.items() if k == "grads"})
    if not big:
        return
    with pytest.raises(TypeError, match="not in native byte order") as e:
        _call(rec, **big)
    assert _named(e.value, rec.args), e.value


def test_grad_lists_refuse_bad_arrays_and_overlaps():
    g = np.ones((4, 3), F)
    for fn, extra in ((optim.grad_norm, {}), (optim.clip_grad_norm, {"max_norm": 1.0})):
        for bad in (g.astype(g.dtype.newbyteorder(">")), np.ma.array(g), g.T, g.astype(np.float16)):
            with pytest.raises((TypeError, ValueError), match=r"^grads\[1\]: "):
                fn([g.copy(), bad], **extra)
    big = np.ones(20, F)
    for grads in ([g, g], [big[:12], big[8:]], [big[:10].reshape(2, 5), np.ones(3, F), big.reshape(4, 5)]):
        with pytest.raises(ValueError, match=r"grads\[\d\]: expected an array that does not overlap grads\[\d\]"):
            optim.clip_grad_norm(grads, 0.1)
    assert np.all(big == 1)  # refused before any scaling
    # views of one allocation that do not overlap are fine, and give the norm of separate arrays
    want = optim.clip_grad_norm([np.ones(10, F), np.ones(10, F)], 0.1)
    assert optim.clip_grad_norm([big[:10], big[10:]], 0.1) == want
    np.testing.assert_allclose(big, 0.1 / (want + 1e-6), rtol=1e-6)


# -- outputs overlapping other arrays ----------------------------------------------------------------------


def _overlapping(w: np.ndarray, a: np.ndarray, shift: int):
    """Copies of ``w`` and ``a`` (same values) in one buffer, ``a`` starting ``shift`` bytes after ``w``
    (before it if negative): they overlap partially."""
    step = max(w.itemsize, a.itemsize)
    assert w.nbytes > step and a.nbytes > step and shift % step == 0
    w_at, a_at = max(0, -shift), max(0, shift)
    buf = np.zeros(max(w_at + w.nbytes, a_at + a.nbytes), np.uint8)
    w2 = buf[w_at:w_at + w.nbytes].view(w.dtype).reshape(w.shape)
    a2 = buf[a_at:a_at + a.nbytes].view(a.dtype).reshape(a.shape)
    w2[...] = w
    a2[...] = a  # last: index arrays keep valid values
    assert np.may_share_memory(w2, a2) and w2.flags.c_contiguous and a2.flags.c_contiguous
    return w2, a2


def _names_both(w, a):
    return rf"^({w}: .*\b{a}\b|{a}: .*\b{w}\b)"


OVERLAP_CASES = [(name, w) for name in NAMES for w in calls()[name].writes
                 if isinstance(calls()[name].args[w], np.ndarray)]


@pytest.mark.parametrize("name,w", OVERLAP_CASES, ids=[f"{n}-{w}" for n, w in OVERLAP_CASES])
def test_outputs_overlapping_other_arrays_are_refused(name, w):
    rec = calls()[name]
    for a, arr in rec.args.items():
        if a == w or not isinstance(arr, np.ndarray):
            continue
        for sign in (1, -1):
            w2, a2 = _overlapping(rec.args[w], arr, sign * max(rec.args[w].itemsize, arr.itemsize))
            with pytest.raises(ValueError, match=_names_both(w, a)):
                _call(calls()[name], **{w: w2, a: a2})
                pytest.fail(f"{name}: {w} overlapping {a} was accepted")
        if arr.shape != rec.args[w].shape or arr.dtype != rec.args[w].dtype:
            continue
        same = calls()[name]
        shared = same.args[a]
        if a in rec.inplace.get(w, ()):  # in place: the output is the input itself, and the result is the same
            ref = calls()[name]
            ref.args[w][...] = ref.args[a]  # as separate arrays that start equal (an accumulated output reads it)
            _, want = _call(ref)
            _, got = _call(same, **{w: shared})
            for k, v in got.items():
                if k not in (w, a):
                    np.testing.assert_array_equal(v, want[k], err_msg=f"{name} in place: {k}")
            np.testing.assert_allclose(got[w], want[w], rtol=1e-6, atol=1e-7, err_msg=f"{name} in place")
        else:
            with pytest.raises(ValueError, match=_names_both(w, a)):
                _call(same, **{w: shared})
                pytest.fail(f"{name}: {w} given as {a} itself was accepted")


# -- scalars ----------------------------------------------------------------------------------------------


def _scalars(rec):
    return {k: v for k, v in rec.args.items() if isinstance(v, (bool, int, float))}


SCALAR_CASES = [name for name in NAMES if _scalars(calls()[name])]


def _same_results(x, y, what, exact=True):
    (rx, ax), (ry, ay) = x, y
    if isinstance(rx, tuple):  # rope_cache
        ax, ay = dict(enumerate(rx)), dict(enumerate(ry))
    elif rx is not None:
        assert (rx == ry) if exact else math.isclose(rx, ry, rel_tol=1e-5), what
    for k in ax:
        if exact:
            np.testing.assert_array_equal(ay[k], ax[k], err_msg=f"{what}: {k}")
        else:
            np.testing.assert_allclose(ay[k], ax[k], rtol=1e-4, atol=1e-6, err_msg=f"{what}: {k}")


@pytest.mark.parametrize("name", SCALAR_CASES)
def test_numpy_scalars_work_as_python_scalars_and_bools_are_not_numbers(name):
    want = _call(calls()[name])
    for k, v in _scalars(calls()[name]).items():
        if isinstance(v, bool):
            _same_results(want, _call(calls()[name], **{k: np.bool_(v)}), f"{name}: {k} as np.bool_")
            for bad in (int(v), np.int64(v)):
                with pytest.raises(TypeError, match=f"^{k}: expected a bool"):
                    _call(calls()[name], **{k: bad})
            continue
        if isinstance(v, int):
            for t in (np.int64, np.int32):
                _same_results(want, _call(calls()[name], **{k: t(v)}), f"{name}: {k} as {t.__name__}")
        else:
            _same_results(want, _call(calls()[name], **{k: np.float64(v)}), f"{name}: {k} as float64")
            _same_results(want, _call(calls()[name], **{k: np.float32(v)}), f"{name}: {k} as float32", exact=False)
        for bad in (True, np.bool_(False)):
            with pytest.raises((TypeError, ValueError), match=f"^{k}: expected "):
                _call(calls()[name], **{k: bad})
                pytest.fail(f"{name}: {k}={bad!r} was accepted")


# -- sizes of 0 -------------------------------------------------------------------------------------------

EMPTY_CASES = [(name, dim) for name in NAMES for dim in DIMS]


@pytest.mark.parametrize("name,dim", EMPTY_CASES, ids=[f"{n}-{d}=0" for n, d in EMPTY_CASES])
def test_a_size_of_zero_gives_an_empty_result_or_a_value_error_naming_an_argument(name, dim):
    rec = calls(**{dim: 0})
    rec = rec[name]
    params = list(inspect.signature(rec.fn).parameters)
    try:
        result, after = _call(rec)
    except ValueError as e:
        assert _named(e, params), f"{name} with {dim}=0: {e}"
        return
    for k, v in after.items():  # what was computed is finite (no 0/0)
        if v.dtype.kind == "f" and k != "work":
            assert np.isfinite(v).all() or (name, k) == ("attention_forward", "lse"), f"{name} with {dim}=0: {k}"
    if isinstance(result, float):
        assert math.isfinite(result), f"{name} with {dim}=0"
