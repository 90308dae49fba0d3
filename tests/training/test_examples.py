"""The examples in ``examples/`` run and do what their docstrings say, checked from the outside.

- ``mlp_digits``: the test rebuilds the held-out digits itself (scikit-learn's arrays and the documented
  permutation of ``train_test_split``), checks that the example trains on the other rows only, and scores
  the trained model by argmax against the labels in NumPy.
- ``train_tiny_llama``: a short run must bring the validation loss far below the uniform ln 256; the test
  recomputes the loss of the trained model in float64 NumPy on windows cut from the corpus itself.
- Both run once as scripts (``python examples/...``) to prove the ``__main__`` path.

The runs use one thread: the models are tiny, and on shared CI cores idle worker threads only slow them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qorus_jit
from qorus_jit.data import default_corpus
from tests.helpers import load_example, split_digits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LN256 = math.log(256)



@pytest.fixture(autouse=True)
def one_thread():
    before = qorus_jit.get_num_threads()
    qorus_jit.set_num_threads(1)
    yield
    qorus_jit.set_num_threads(before)


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


# --------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_example("mlp_digits")




def test_digits_trains_on_the_training_rows_only(digits):
    X, y, train, test = split_digits()
    X_train, X_test, y_train, y_test = digits.load_data()
    assert (len(train), len(test)) == (1438, 359)
    np.testing.assert_array_equal(X_train, X[train].astype(np.float32))
    np.testing.assert_array_equal(y_train, y[train])
    np.testing.assert_array_equal(X_test, X[test].astype(np.float32))
    np.testing.assert_array_equal(y_test, y[test])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_test_accuracy(digits, seed):
    X, y, train, test = split_digits()
    X_train, _, y_train, _ = digits.load_data()
    model = digits.train(X_train, y_train, seed=seed)
    logits = model.forward(X[test].astype(np.float32))
    acc = np.mean(np.argmax(logits, axis=1) == y[test])
    assert acc >= 0.96, f"seed {seed}: test accuracy {acc:.4f}"
    if seed == 0:  # main reports the accuracy of the same run
        assert digits.main(["--seed", "0"]) == pytest.approx(acc, abs=2 / len(test))


def test_digits_script():
    res = run_script("mlp_digits", "--steps", "100", "--seed", "1")
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("test accuracy: ") and line.endswith("on 359 held-out digits"), res.stdout
    assert float(line.split()[2].rstrip("%")) > 80


# ------------------------------------------------------------------------------------------ tiny llama


def corpus_loss(model, n_windows: int = 64, seq_len: int = 64) -> float:
    """Mean next-byte cross-entropy (float64) of ``model`` over windows spread over the last 5% of the corpus."""
    tail = np.frombuffer(default_corpus()[1].encode("utf-8"), np.uint8)
    tail = tail[len(tail) - int(len(tail) * 0.05):].astype(np.int64)
    starts = np.linspace(0, len(tail) - seq_len - 1, n_windows).astype(np.int64)
    windows = tail[starts[:, None] + np.arange(seq_len + 1)]
    logits = model.forward(np.ascontiguousarray(windows[:, :-1])).astype(np.float64)
    m = logits.max(axis=-1, keepdims=True)
    log_z = m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1))
    target = np.take_along_axis(logits, windows[:, 1:, None], axis=-1)[..., 0]
    return float(np.mean(log_z - target))


def test_tiny_llama_learns_and_samples(capsys):
    llama = load_example("train_tiny_llama")
    out = llama.main(["--steps", "30", "--sample-len", "40", "--seed", "0"])
    before, after = out["val_loss_before"], out["val_loss_after"]
    assert abs(before - LN256) < 0.3, before  # small random weights: close to a uniform guess
    assert after < LN256 - 1.5 and after < before - 1.5, (before, after)
    assert corpus_loss(out["model"]) == pytest.approx(after, abs=0.25)
    ids = np.asarray(out["sample_ids"])
    assert ids.shape == (40,) and ids.min() >= 0 and ids.max() < 256
    assert out["sample"] == bytes(ids.astype(np.uint8)).decode("utf-8", errors="replace")
    assert out["sample"].strip()
    printed = capsys.readouterr().out
    assert f"validation loss before training: {before:.3f}" in printed
    assert f"validation loss after 30 steps: {after:.3f}" in printed
    assert out["sample"] in printed


def test_tiny_llama_script():
    res = run_script("train_tiny_llama", "--steps", "4", "--sample-len", "8")
    assert "validation loss before training:" in res.stdout
    assert "validation loss after 4 steps:" in res.stdout
    assert "sample:\nThe " in res.stdout
