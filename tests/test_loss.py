import numpy as np
import pytest

from qorus_jit.core.numerics import SERIAL_WORK
from qorus_jit.kernels import loss as K
from tests.helpers import assert_close, fd_grad, rand, torch_or_skip
from tests.naive import loss as naive

# with sizes on both sides of numerics.SERIAL_WORK (the largest serial one, the smallest parallel one); MSE also
# with two chunks of 2**14 elements summed serially
CE_SHAPES = [(1, 1), (1, 7), (5, 7), (17, 33), (64, 1000), (3, 5003), (SERIAL_WORK // 1000, 1000),
             (SERIAL_WORK // 1000 + 1, 1000), (1, SERIAL_WORK + 3)]
MSE_SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (40000,), (20000,), (SERIAL_WORK,), (SERIAL_WORK + 1,)]


def _targets(rng, N, V, ignore_index=-100, every=3):
    t = rng.integers(0, V, N)
    t[1::every] = ignore_index
    return t


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_cross_entropy_matches_naive(shape, index_dtype):
    rng = np.random.default_rng(0)
    N, V = shape
    logits = rand(rng, N, V, scale=4.0)
    targets = _targets(rng, N, V).astype(index_dtype)
    want_losses, want_mean = naive.cross_entropy(logits, targets)
    want_grad = naive.cross_entropy_grad(logits, targets)

    losses = np.full(N, np.nan, np.float32)
    mean = K.cross_entropy_forward(losses, logits, targets)
    assert isinstance(mean, float)
    assert_close(losses, want_losses)
    assert_close(mean, want_mean)

    dlogits = np.zeros_like(logits)
    K.cross_entropy_backward(dlogits, logits, targets)
    assert_close(dlogits, want_grad)

    dfused = np.full_like(logits, np.nan)
    assert_close(K.cross_entropy_forward_backward(dfused, logits, targets), want_mean)
    assert_close(dfused, want_grad)


def test_cross_entropy_wide_logit_range_matches_naive():
    rng = np.random.default_rng(1)
    logits = rand(rng, 6, 4099, scale=40.0)
    targets = rng.integers(0, 4099, 6)
    losses = np.empty(6, np.float32)
    K.cross_entropy_forward(losses, logits, targets)
    assert_close(losses, naive.cross_entropy(logits, targets)[0], rtol=1e-5, atol=1e-4)
    dlogits = np.empty_like(logits)
    K.cross_entropy_forward_backward(dlogits, logits, targets)
    assert_close(dlogits, naive.cross_entropy_grad(logits, targets))


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_backward_matches_finite_differences(ignore_index):
    rng = np.random.default_rng(2)
    logits = rand(rng, 4, 5, dtype=np.float64)
    targets = np.array([1, 2, 4, 0])
    targets[1] = ignore_index
    losses = np.empty(4)

    def mean_loss():
        return K.cross_entropy_forward(losses, logits, targets, ignore_index)

    want = fd_grad(mean_loss, logits)
    assert np.abs(want[1]).max() == 0.0
    got = np.zeros_like(logits)
    K.cross_entropy_backward(got, logits, targets, ignore_index)
    assert_close(got, want, rtol=1e-6, atol=1e-9)
    fused = np.empty_like(logits)
    K.cross_entropy_forward_backward(fused, logits, targets, ignore_index)
    assert_close(fused, want, rtol=1e-6, atol=1e-9)

    def scaled_sum():
        K.cross_entropy_forward(losses, logits, targets, ignore_index)
        return 0.37 * float(losses.sum())

    got = np.zeros_like(logits)
    K.cross_entropy_backward(got, logits, targets, ignore_index, scale=0.37)
    assert_close(got, fd_grad(scaled_sum, logits), rtol=1e-6, atol=1e-9)


def test_cross_entropy_backward_accumulates_and_fused_overwrites():
    rng = np.random.default_rng(3)
    logits = rand(rng, 3, 6)
    targets = np.array([0, -100, 5])
    want = naive.cross_entropy_grad(logits, targets)
    dlogits = np.full_like(logits, 2.0)
    K.cross_entropy_backward(dlogits, logits, targets)
    assert_close(dlogits, want + 2.0)
    K.cross_entropy_forward_backward(dlogits, logits, targets)
    assert_close(dlogits, want)
    assert np.all(dlogits[1] == 0.0)


@pytest.mark.parametrize("shape", [(5, 11), (64, 5003)])  # one row at a time; wide rows in parallel
def test_cross_entropy_fused_in_place(shape):
    rng = np.random.default_rng(4)
    logits = rand(rng, *shape)
    targets = rng.integers(0, shape[1], shape[0])
    targets[2] = -100
    _, want_mean = naive.cross_entropy(logits, targets)
    want_grad = naive.cross_entropy_grad(logits, targets)
    apart = np.empty_like(logits)
    mean_apart = K.cross_entropy_forward_backward(apart, logits, targets)
    buf = logits.copy()
    assert_close(K.cross_entropy_forward_backward(buf, buf, targets), want_mean)
    assert_close(buf, want_grad)
    assert np.array_equal(buf, apart) and K.cross_entropy_forward_backward(buf, logits, targets) == mean_apart


def test_cross_entropy_large_logits_finite():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]], np.float32)
    targets = np.array([1, 2, 0])
    losses = np.empty(3, np.float32)
    mean = K.cross_entropy_forward(losses, logits, targets)
    assert np.all(np.isfinite(losses)) and np.isfinite(mean)
    assert_close(losses, [2e4, 0.0, np.log(2.0)])
    dlogits = np.empty_like(logits)
    assert_close(K.cross_entropy_forward_backward(dlogits, logits, targets), mean)
    assert np.all(np.isfinite(dlogits))
    assert_close(dlogits, naive.cross_entropy_grad(logits, targets))


def test_cross_entropy_masked_and_nan_logits():
    logits = np.array([[0.5, -np.inf, 1.0, -np.inf], [0.0, np.nan, 1.0, 2.0]], np.float32)
    targets = np.array([2, 3])
    losses = np.empty(2, np.float32)
    K.cross_entropy_forward(losses, logits, targets)
    want = naive.cross_entropy(logits[:1, [0, 2]], [1])[0][0]
    assert_close(losses[0], want)
    assert np.isnan(losses[1])
    dlogits = np.zeros_like(logits)
    K.cross_entropy_backward(dlogits, logits, targets)
    assert np.all(dlogits[0, [1, 3]] == 0.0) and np.all(np.isfinite(dlogits[0]))


def test_cross_entropy_all_ignored_is_zero():
    logits = rand(np.random.default_rng(5), 4, 9)
    targets = np.full(4, -100, np.int32)
    losses = np.full(4, np.nan, np.float32)
    assert K.cross_entropy_forward(losses, logits, targets) == 0.0
    assert np.all(losses == 0.0)
    dlogits = np.zeros_like(logits)
    K.cross_entropy_backward(dlogits, logits, targets)
    assert np.all(dlogits == 0.0)
    dlogits[:] = np.nan
    assert K.cross_entropy_forward_backward(dlogits, logits, targets) == 0.0
    assert np.all(dlogits == 0.0)
    empty = np.zeros((0, 9), np.float32)
    assert K.cross_entropy_forward(np.empty(0, np.float32), empty, np.zeros(0, np.int64)) == 0.0


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_cross_entropy_matches_torch(ignore_index):
    torch = torch_or_skip()
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    logits = rand(rng, 13, 37, scale=3.0)
    targets = rng.integers(0, 37, 13)
    targets[::4] = ignore_index
    tl = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(tl, torch.tensor(targets), ignore_index=ignore_index)
    want.backward()
    want_rows = F.cross_entropy(tl.detach(), torch.tensor(targets), ignore_index=ignore_index,
                                reduction="none")

    losses = np.empty(13, np.float32)
    assert_close(K.cross_entropy_forward(losses, logits, targets, ignore_index), want.item())
    assert_close(losses, want_rows.numpy())
    dlogits = np.zeros_like(logits)
    K.cross_entropy_backward(dlogits, logits, targets, ignore_index)
    assert_close(dlogits, tl.grad.numpy())
    fused = np.empty_like(logits)
    assert_close(K.cross_entropy_forward_backward(fused, logits, targets, ignore_index), want.item())
    assert_close(fused, tl.grad.numpy())


def test_cross_entropy_bad_inputs_raise():
    logits = np.zeros((4, 5), np.float32)
    targets = np.array([0, 1, 4, -100])
    losses = np.empty(4, np.float32)
    dlogits = np.zeros_like(logits)
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 5\) or -100, got 5"):
        K.cross_entropy_forward(losses, logits, np.array([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 5\) or -100, got -1"):
        K.cross_entropy_backward(dlogits, logits, np.array([0, -1, 2, 2]))
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 5\) or -1, got -100"):
        K.cross_entropy_forward_backward(dlogits, logits, targets, ignore_index=-1)
    with pytest.raises(TypeError, match="targets: expected dtype int32 or int64, got float32"):
        K.cross_entropy_forward(losses, logits, targets.astype(np.float32))
    with pytest.raises(ValueError, match=r"targets: expected shape \(N,\)"):
        K.cross_entropy_forward(losses, logits, targets[:3])
    with pytest.raises(ValueError, match="logits: expected 2-D array"):
        K.cross_entropy_forward(losses, logits.reshape(-1), targets)
    with pytest.raises(ValueError, match=r"losses: expected shape \(N,\)"):
        K.cross_entropy_forward(np.empty(3, np.float32), logits, targets)
    with pytest.raises(TypeError, match="losses: expected the dtype of logits"):
        K.cross_entropy_forward(np.empty(4, np.float64), logits, targets)
    with pytest.raises(TypeError, match="logits: expected dtype float32 or float64"):
        K.cross_entropy_forward(losses, logits.astype(np.float16), targets)
    with pytest.raises(ValueError, match=r"dlogits: expected shape \(N, V\)"):
        K.cross_entropy_backward(np.zeros((4, 6), np.float32), logits, targets)
    with pytest.raises(ValueError, match="logits: expected a C-contiguous array"):
        K.cross_entropy_backward(dlogits, np.zeros((5, 4), np.float32).T, targets)
    with pytest.raises(ValueError, match="targets: expected a C-contiguous array"):
        K.cross_entropy_forward(losses, logits, np.zeros(8, np.int64)[::2])
    readonly = np.zeros_like(logits)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="dlogits: expected a writeable array"):
        K.cross_entropy_forward_backward(readonly, logits, targets)
    with pytest.raises(TypeError, match="ignore_index: expected an int, got 1.5"):
        K.cross_entropy_forward(losses, logits, targets, ignore_index=1.5)
    with pytest.raises(ValueError, match="scale: expected a finite real number, got nan"):
        K.cross_entropy_backward(dlogits, logits, targets, scale=float("nan"))
    with pytest.raises(ValueError, match="dlogits: expected a buffer that does not overlap logits"):
        K.cross_entropy_backward(logits, logits, targets)
    with pytest.raises(ValueError, match="dlogits: expected either logits itself"):
        big = np.zeros((5, 5), np.float32)
        K.cross_entropy_forward_backward(big[1:], big[:4], targets)


@pytest.mark.parametrize("shape", MSE_SHAPES)
def test_mse_matches_naive(shape):
    rng = np.random.default_rng(7)
    pred, target = rand(rng, *shape), rand(rng, *shape)
    got = K.mse_forward(pred, target)
    assert isinstance(got, float)
    assert_close(got, naive.mse(pred, target))
    dpred = np.zeros_like(pred)
    K.mse_backward(dpred, pred, target)
    assert_close(dpred, naive.mse_grad(pred, target))
    K.mse_backward(dpred, pred, target, scale=0.5)
    assert_close(dpred, naive.mse_grad(pred, target) + naive.mse_grad(pred, target, scale=0.5))


def test_mse_backward_matches_finite_differences():
    rng = np.random.default_rng(8)
    pred, target = rand(rng, 3, 4, dtype=np.float64), rand(rng, 3, 4, dtype=np.float64)

    def loss():
        return K.mse_forward(pred, target)

    dpred = np.zeros_like(pred)
    K.mse_backward(dpred, pred, target)
    assert_close(dpred, fd_grad(loss, pred), rtol=1e-6, atol=1e-9)
    assert_close(-dpred, fd_grad(loss, target), rtol=1e-6, atol=1e-9)
    dpred[:] = 0.0
    K.mse_backward(dpred, pred, target, scale=3.0)
    assert_close(dpred, fd_grad(lambda: 3.0 * pred.size * K.mse_forward(pred, target), pred),
                 rtol=1e-6, atol=1e-9)


def test_mse_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(9)
    pred, target = rand(rng, 5, 19), rand(rng, 5, 19)
    tp = torch.tensor(pred, requires_grad=True)
    want = torch.nn.functional.mse_loss(tp, torch.tensor(target))
    want.backward()
    assert_close(K.mse_forward(pred, target), want.item())
    dpred = np.zeros_like(pred)
    K.mse_backward(dpred, pred, target)
    assert_close(dpred, tp.grad.numpy())


def test_mse_bad_inputs_raise():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="target: expected shape"):
        K.mse_forward(a, np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="target: expected 2-D array"):
        K.mse_forward(a, np.zeros(12, np.float32))
    with pytest.raises(TypeError, match="target: expected the dtype of pred"):
        K.mse_forward(a, a.astype(np.float64))
    with pytest.raises(ValueError, match="pred: expected a C-contiguous array"):
        K.mse_forward(np.zeros((4, 3), np.float32).T, a)
    with pytest.raises(ValueError, match="pred: expected at least one element"):
        K.mse_forward(np.zeros(0, np.float32), np.zeros(0, np.float32))
    with pytest.raises(TypeError, match="pred: expected a numpy array"):
        K.mse_forward([1.0], a)
    with pytest.raises(TypeError, match="dpred: expected the dtype of pred"):
        K.mse_backward(a.astype(np.float64), a, a.copy())
    with pytest.raises(ValueError, match="scale: expected a finite real number"):
        K.mse_backward(np.zeros_like(a), a, a.copy(), scale=float("inf"))
    readonly = np.zeros_like(a)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="dpred: expected a writeable array"):
        K.mse_backward(readonly, a, a.copy())
    with pytest.raises(ValueError, match="dpred: expected a buffer that does not overlap pred"):
        K.mse_backward(a, a, a.copy())


@pytest.mark.parametrize("ignore_index", [2**64, -(2**70)])
def test_cross_entropy_ignore_index_beyond_int64_ignores_nothing(ignore_index):
    # no int32/int64 target can equal it: every row counts
    logits = rand(np.random.default_rng(1), 4, 5)
    targets = np.array([0, 4, 2, 1], np.int64)
    want_losses, want_mean = naive.cross_entropy(logits, targets)
    want_grad = naive.cross_entropy_grad(logits, targets)
    losses = np.empty(4, np.float32)
    assert_close(K.cross_entropy_forward(losses, logits, targets, ignore_index), want_mean)
    assert_close(losses, want_losses)
    d = np.zeros_like(logits)
    K.cross_entropy_backward(d, logits, targets, ignore_index)
    assert_close(d, want_grad)
    fused = logits.copy()
    assert_close(K.cross_entropy_forward_backward(fused, logits, targets, ignore_index), want_mean)
    assert_close(fused, want_grad)
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 5\), got -1"):
        K.cross_entropy_forward(losses, logits, np.array([0, -1, 2, 1], np.int64), ignore_index)
