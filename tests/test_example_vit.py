"""``examples/vit_digits.py``, a vision transformer built from the public layers and the example's own, checked
from the outside.

- The example's layers (``Patchify``, ``ClassToken``, ``TakeToken``, ``MeanPool``): forward against a NumPy
  reference written here, backward (input and parameter gradients) against central finite differences of
  a random projection of the output, computed in float64 here. The layers are linear, so the differences
  carry rounding only; the whole small model's gradients with respect to the [CLS] vector and the pixels
  are checked the same way, which proves the hand-written backwards are wired into the graph.
- Training with the example's defaults (500 steps) for seeds 0 and 1: the held-out digits are rebuilt from
  scikit-learn's arrays and the documented permutation of ``train_test_split``, and the trained model is
  scored by argmax in NumPy; the docstring promises about 98-99%, the bar is 96%. The model holds no layer
  class beyond the public layers and the example's own.
- The script runs once as ``python examples/vit_digits.py``.

The runs use one thread: the model is tiny, and on shared CI cores idle worker threads only slow it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import qorus_jit
import qorus_jit.layers
from qorus_jit.layers import TransformerBlock
from qorus_jit.layers.embedding import PositionEmbedding
from tests.helpers import fd_grad, load_example, rand, split_digits

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vit_digits.py"



@pytest.fixture(scope="module")
def vit():
    return load_example("vit_digits")


@pytest.fixture(autouse=True)
def one_thread():
    before = qorus_jit.get_num_threads()
    qorus_jit.set_num_threads(1)
    yield
    qorus_jit.set_num_threads(before)


# ------------------------------------------------------------------------------ finite differences



def projection(layer, x: np.ndarray, rng) -> tuple[np.ndarray, Callable[[], float]]:
    """A random ``r`` of the output's shape and ``f() = sum(r * layer(x))`` in float64; ``dL/dy = r``."""
    r = rng.standard_normal(layer.forward(x).shape)

    def f():
        return float(np.sum(r * layer.forward(x).astype(np.float64)))

    return r, f


def check_backward(layer, x: np.ndarray, rng, params=()) -> None:
    """The input gradient (and the gradients of the named ``params``) of ``layer`` match finite differences."""
    r, f = projection(layer, x, rng)
    want_dx = fd_grad(f, x, eps=1e-2)
    want_params = {name: fd_grad(f, layer.parameters()[name], eps=1e-2) for name in params}
    layer.zero_grad()
    layer.forward(x)
    dx = layer.backward(r.astype(np.float32))
    assert dx.shape == x.shape and dx.dtype == np.float32
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
    for name, want in want_params.items():
        np.testing.assert_allclose(layer.gradients()[name], want, rtol=1e-4, atol=1e-5, err_msg=name)



@pytest.mark.parametrize("patch", [2, 4])
def test_patchify(vit, patch):
    rng = np.random.default_rng(patch)
    layer = vit.Patchify(8, patch)
    x = rand(rng, 3, 64)
    g = 8 // patch
    want = np.empty((3, g * g, patch * patch), np.float32)  # token i*g + j, feature a*p + c of pixel (row, col)
    for i in range(g):
        for j in range(g):
            for a in range(patch):
                for c in range(patch):
                    want[:, i * g + j, a * patch + c] = x[:, (i * patch + a) * 8 + j * patch + c]
    np.testing.assert_array_equal(layer.forward(x), want)
    check_backward(layer, x, rng)


def test_class_token(vit):
    rng = np.random.default_rng(1)
    layer = vit.ClassToken(5, rng=0)
    assert list(layer.parameters()) == ["cls"] and layer.cls.shape == (5,)
    x = rand(rng, 3, 4, 5)
    y = layer.forward(x)
    assert y.shape == (3, 5, 5)
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(layer.cls, (3, 5)))
    np.testing.assert_array_equal(y[:, 1:], x)
    check_backward(layer, x, rng, params=["cls"])
    once = layer.gradients()["cls"].copy()  # backward accumulates, as the protocol requires
    layer.forward(x)
    layer.backward(np.ones(y.shape, np.float32))  # adds the sum over the 3 sequences of dy[:, 0]
    np.testing.assert_allclose(layer.gradients()["cls"], once + 3.0, rtol=1e-6)


@pytest.mark.parametrize("index", [0, 2])
def test_take_token(vit, index):
    rng = np.random.default_rng(index)
    layer = vit.TakeToken(index)
    x = rand(rng, 3, 5, 6)
    np.testing.assert_array_equal(layer.forward(x), x[:, index])
    check_backward(layer, x, rng)


def test_mean_pool(vit):
    rng = np.random.default_rng(3)
    layer = vit.MeanPool()
    x = rand(rng, 3, 5, 6)
    np.testing.assert_allclose(layer.forward(x), x.astype(np.float64).mean(axis=1), rtol=1e-6, atol=1e-6)
    check_backward(layer, x, rng)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` against ``labels``, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_model_gradients(vit, pool):
    """Through the whole graph: the loss's gradient with respect to the [CLS] vector and to the pixels. The
    model is not linear and runs in float32, hence the looser tolerance."""
    rng = np.random.default_rng(0)
    model = vit.build_model(dim=16, n_layers=1, n_heads=2, hidden_dim=32, pool=pool, rng=0)
    x = rng.uniform(0, 1, (4, 64)).astype(np.float32)
    labels = np.array([0, 3, 7, 9])

    def f():
        return cross_entropy(model.forward(x), labels)

    logits = model.forward(x).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(4), labels] -= 1
    model.zero_grad()
    dx = model.backward((p / 4).astype(np.float32)).copy()
    np.testing.assert_allclose(dx, fd_grad(f, x, eps=1e-2), rtol=1e-2, atol=2e-5)
    if pool == "cls":  # a smaller step: the [CLS] vector is small, N(0, 0.02), and its norm curves fast at 1e-2
        cls = model.parameters()["cls_token.cls"]
        want = fd_grad(f, cls, eps=1e-3)
        np.testing.assert_allclose(model.gradients()["cls_token.cls"], want, rtol=1e-2, atol=2e-5)


# -------------------------------------------------------------------------------------------- training




def layer_classes(layer) -> set[type]:
    """The classes of ``layer`` and of every layer under it."""
    out = {type(layer)}
    for child in layer.children().values():
        out |= layer_classes(child)
    return out


def test_data_split(vit):
    X, y, train, test = split_digits()
    X_train, X_test, y_train, y_test = vit.load_data()
    np.testing.assert_array_equal(X_train, X[train].astype(np.float32))
    np.testing.assert_array_equal(y_train, y[train])
    np.testing.assert_array_equal(X_test, X[test].astype(np.float32))
    np.testing.assert_array_equal(y_test, y[test])


@pytest.mark.parametrize("seed", [0, 1])
def test_test_accuracy(vit, seed):
    X, y, train, test = split_digits()
    X_train, X_test, y_train, y_test = vit.load_data()
    model = vit.train(X_train, y_train, seed=seed)  # the defaults: 500 steps, 4x4 patches, a [CLS] token

    public = {getattr(qorus_jit.layers, name) for name in qorus_jit.layers.__all__}
    own = {vit.Patchify, vit.ClassToken, vit.TakeToken, vit.MeanPool}
    classes = layer_classes(model)
    assert classes <= public | own | {PositionEmbedding}, classes - public - own
    assert {vit.Patchify, vit.ClassToken, vit.TakeToken, PositionEmbedding, TransformerBlock} <= classes
    # patch projection 16*64+64, [CLS] 64, positions 5*64, 2 blocks of (2 norms 2*128, q/k/v/o 4*(64*64+64),
    # MLP 64*128+128 + 128*64+64), final norm 128, head 64*10+10
    assert model.num_parameters() == 1088 + 64 + 320 + 2 * (256 + 16640 + 16576) + 128 + 650 == 69194

    logits = model.forward(X[test].astype(np.float32))
    assert logits.shape == (len(test), 10)
    acc = np.mean(np.argmax(logits, axis=1) == y[test])
    assert acc >= 0.96, f"seed {seed}: test accuracy {acc:.4f}"
    assert vit.accuracy(model, X_test, y_test) == acc


def test_script():
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "100", "--seed", "1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-2].startswith("69,194 parameters, 100 steps in "), res.stdout
    line = lines[-1]
    assert line.startswith("test accuracy: ") and line.endswith("on 359 held-out digits"), res.stdout
    assert float(line.split()[2].rstrip("%")) > 80
