import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import embedding as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import embedding as naive

CASES = [((1, 1), 1, 1), ((2, 5), 50, 13), ((3, 7), 11, 130), ((17,), 4, 64), ((2, 2, 3), 9, 7),
         # N * C on both sides of numerics.SERIAL_WORK (the largest serial one, parallel ones)
         ((SERIAL_WORK // 130,), 20, 130), ((2, SERIAL_WORK // 260 + 1), 20, 130), ((3, 200), 30, 70)]


@pytest.mark.parametrize("ids_shape,V,C", CASES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_forward_matches_naive(ids_shape, V, C, index_dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, ids_shape).astype(index_dtype)
    weight = rand(rng, V, C)
    out = np.empty(ids_shape + (C,), np.float32)
    K.embedding_forward(out, ids, weight)
    assert_close(out, naive.embedding(ids, weight), rtol=0, atol=0)


@pytest.mark.parametrize("ids_shape,V,C", CASES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_backward_matches_naive(ids_shape, V, C, index_dtype):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, ids_shape).astype(index_dtype)
    dout = rand(rng, *ids_shape, C)
    dweight = np.zeros((V, C), np.float32)
    K.embedding_backward(dweight, dout, ids)
    assert_close(dweight, naive.embedding_backward(dout, ids, V))


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-12)])
def test_backward_with_heavily_repeated_ids(dtype, tol):
    rng = np.random.default_rng(2)
    V, C = 6, 200
    ids = rng.integers(0, 3, (8, 500)).astype(np.int64)
    ids[0, :300] = 1
    dout = rand(rng, 8, 500, C, dtype=dtype)
    dweight = np.full((V, C), 0.5, dtype)
    K.embedding_backward(dweight, dout, ids)
    want = naive.embedding_backward(dout, ids, V) + 0.5
    assert_close(dweight, want, rtol=tol, atol=tol)
    assert_close(dweight[3:], 0.5, rtol=0, atol=0, what="rows never looked up")


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(3)
    ids = np.array([[0, 2, 2], [3, 0, 2]], np.int32)
    weight = rand(rng, 5, 4, dtype=np.float64)
    g = rand(rng, 2, 3, 4, dtype=np.float64)
    out = np.empty((2, 3, 4))

    def loss():
        K.embedding_forward(out, ids, weight)
        return float((out * g).sum())

    dweight = np.zeros_like(weight)
    K.embedding_backward(dweight, g, ids)
    assert_close(dweight, fd_grad(loss, weight), rtol=1e-6, atol=1e-8)


def test_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 20, (4, 33)).astype(np.int64)
    weight, g = rand(rng, 20, 70), rand(rng, 4, 33, 70)
    tw = torch.tensor(weight, requires_grad=True)
    ty = torch.nn.functional.embedding(torch.tensor(ids), tw)
    ty.backward(torch.tensor(g))
    out, dweight = np.empty((4, 33, 70), np.float32), np.zeros_like(weight)
    K.embedding_forward(out, ids, weight)
    K.embedding_backward(dweight, g, ids)
    assert_close(out, ty.detach().numpy(), rtol=0, atol=0)
    assert_close(dweight, tw.grad.numpy())


def test_bad_inputs_raise():
    weight = np.zeros((5, 4), np.float32)
    ids = np.array([[0, 1, 4]], np.int64)
    out = np.empty((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 5\), got 5"):
        K.embedding_forward(out, np.array([[0, 5, 1]]), weight)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 5\), got -1"):
        K.embedding_forward(out, np.array([[0, -1, 1]], np.int32), weight)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 5\), got 7"):
        K.embedding_backward(np.zeros_like(weight), out, np.array([[7, 0, 0]], np.int32))
    with pytest.raises(TypeError, match="ids: expected dtype int32 or int64"):
        K.embedding_forward(out, ids.astype(np.float32), weight)
    with pytest.raises(TypeError, match="ids: expected dtype int32 or int64"):
        K.embedding_forward(out, ids.astype(np.uint8), weight)
    with pytest.raises(ValueError, match="ids: expected an array with at least 1 dimensions"):
        K.embedding_forward(np.empty(4, np.float32), np.array(1), weight)
    with pytest.raises(TypeError, match="ids: expected a numpy array"):
        K.embedding_forward(out, [[0, 1, 4]], weight)
    with pytest.raises(ValueError, match="ids: expected a C-contiguous"):
        K.embedding_forward(out, np.array([[0, 9, 1, 9, 4, 9]])[:, ::2], weight)
    with pytest.raises(ValueError, match="weight: expected 2-D array"):
        K.embedding_forward(out, ids, np.zeros(20, np.float32))
    with pytest.raises(ValueError, match="out: expected shape"):
        K.embedding_forward(np.empty((1, 3, 5), np.float32), ids, weight)
    with pytest.raises(ValueError, match="out: expected 3-D array"):
        K.embedding_forward(np.empty((3, 4), np.float32), ids, weight)
    with pytest.raises(TypeError, match="out: expected the dtype of weight"):
        K.embedding_forward(out.astype(np.float64), ids, weight)
    with pytest.raises(ValueError, match="dout: expected shape"):
        K.embedding_backward(np.zeros((5, 3), np.float32), out, ids)
    with pytest.raises(ValueError, match="out: expected a buffer that does not overlap weight"):
        K.embedding_forward(weight[:3].reshape(1, 3, 4), ids, weight)
    with pytest.raises(ValueError, match="dweight: expected a buffer that does not overlap dout"):
        K.embedding_backward(weight, weight[:3].reshape(1, 3, 4), ids)
    ro = np.zeros_like(weight)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dweight: expected a writeable array"):
        K.embedding_backward(ro, out, ids)
