"""Every public kernel wrapper rejects bad arrays with TypeError/ValueError before any kernel runs.

For each wrapper a valid call is built; then each array argument in turn is replaced by None, a list,
a float16 array, a non-contiguous view and an array with an extra axis. Each must raise TypeError or
ValueError (a numba typing error or a crash is a failure), and the valid call must still work.
"""

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


def _z(*shape):
    return np.zeros(shape, F)


def _o(*shape):
    return np.ones(shape, F)


def recipes():
    """name -> (function, args, indices of optional array args that may be None)."""
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
                             [_z(1, 2, 4), _o(1, 2, 4), _o(1, 6, 2, 4), _o(1, 6, 2, 4), 3], ()),
        "kv_cache_write": (attention.kv_cache_write, [_z(1, 6, 2, 4), _z(1, 6, 2, 4), q, q, 2], ()),
        "cross_entropy_forward": (loss.cross_entropy_forward, [_z(3), _o(3, 5), np.array([0, 4, 2])], ()),
        "cross_entropy_backward": (loss.cross_entropy_backward, [_z(3, 5), _o(3, 5), np.array([0, 4, 2])], ()),
        "mse_backward": (loss.mse_backward, [_z(2, 3), _o(2, 3), _z(2, 3)], ()),
        "sgd_update": (optim.sgd_update, [_o(2, 3), _z(2, 3), _o(2, 3), 0.1, 0.9], ()),
        "adamw_update": (optim.adamw_update, [_o(2, 3), _z(2, 3), _z(2, 3), _o(2, 3), 1e-3, 0.9, 0.999, 1e-8,
                                              0.01, 1], ()),
    }


def _bad_versions(a):
    yield "None", None
    yield "list", a.tolist()
    yield "float16", a.astype(np.float16)
    strided = np.repeat(a, 2, axis=-1)[..., ::2]
    assert strided.shape == a.shape and not strided.flags.c_contiguous
    yield "non-contiguous", strided
    yield "extra axis", a[None]


CASES = [(name, i) for name, (fn, args, _) in recipes().items()
         for i, a in enumerate(args) if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-arg{i}" for n, i in CASES])
def test_each_bad_array_is_rejected(name, index):
    fn, args, optional = recipes()[name]
    fn(*args)  # the valid call works
    for what, bad in _bad_versions(args[index]):
        if bad is None and index in optional:
            continue
        call = list(recipes()[name][1])
        call[index] = bad
        with pytest.raises((TypeError, ValueError)):
            fn(*call)
            pytest.fail(f"{name}: argument {index} as {what} was accepted")


def test_wrong_dtype_pairs_and_integer_data_are_rejected():
    a = _o(2, 3)
    with pytest.raises(TypeError):
        elementwise.add_forward(_z(2, 3), a, a.astype(np.float64))
    with pytest.raises(TypeError):
        activations.relu_forward(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="ids"):
        embedding.embedding_forward(_z(1, 3, 4), np.array([[0, 5, 1]]), _o(5, 4))
    with pytest.raises(ValueError, match="targets"):
        loss.cross_entropy_forward(_z(3), _o(3, 5), np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="H"):
        q = _o(1, 3, 3, 4)
        attention.attention_forward(_z(1, 3, 3, 4), _z(1, 3, 3), q, _o(1, 3, 2, 4), _o(1, 3, 2, 4), True)
