"""The model graph: branches sum their gradients, residual merges, Sequential, summary, errors."""

import numpy as np
import pytest

from qorus_jit.layers import GELU, Add, Graph, LayerNorm, Linear, ReLU, Sequential
from tests.helpers import assert_close, fd_grad, rand


def branchy_graph():
    """y = norm(x + fc2(gelu(fc1(x))) + fc3(x)): x is read three times, two residual merges."""
    g = Graph(inputs=["x"], output="y")
    g.add("fc1", Linear(6, 10, rng=0), "x", "h")
    g.add("act", GELU("tanh"), "h", "a")
    g.add("fc2", Linear(10, 6, rng=1), "a", "b")
    g.add("fc3", Linear(6, 6, rng=2), "x", "c")
    g.add("res1", Add(), ["x", "b"], "r")
    g.add("res2", Add(), ["r", "c"], "s")
    g.add("norm", LayerNorm(6), "s", "y")
    return g


def test_branch_and_residual_gradients_match_finite_differences():
    g = branchy_graph()
    rng = np.random.default_rng(3)
    x = rand(rng, 3, 6)
    w = rand(rng, 3, 6)

    def loss():
        return float((g.forward(x).astype(np.float64) * w).sum())

    g.zero_grad()
    g.forward(x)
    dx = g.backward(w).copy()
    assert_close(dx, fd_grad(loss, x, eps=1e-2), rtol=2e-2, atol=2e-3, what="dx")
    for name, p in g.parameters().items():
        assert_close(g.gradients()[name], fd_grad(loss, p, eps=1e-2), rtol=2e-2, atol=2e-3, what=name)


def test_sequential_equals_manual_chain_and_names():
    layers = [Linear(4, 8, rng=0), ReLU(), Linear(8, 3, rng=1)]
    seq = Sequential(*layers)
    x = rand(np.random.default_rng(4), 5, 4)
    want = x @ layers[0].weight.T + layers[0].bias
    want = np.maximum(want, 0) @ layers[2].weight.T + layers[2].bias
    assert_close(seq.forward(x), want)
    assert list(seq.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    named = Sequential(("embed", Linear(4, 4)), ("head", Linear(4, 2)))
    assert list(named.parameters())[0] == "embed.weight"


def test_summary_lists_nodes_shapes_and_counts():
    g = branchy_graph()
    g.forward(rand(np.random.default_rng(5), 2, 6))
    text = g.summary()
    assert "fc1" in text and "(2, 10)" in text and f"{g.num_parameters():,}" in text


def test_graph_errors():
    g = Graph(inputs=["x"], output="y")
    with pytest.raises(ValueError, match="input tensor 'h' is not defined"):
        g.add("fc", Linear(2, 2), "h", "y")
    g.add("fc", Linear(2, 2), "x", "y")
    with pytest.raises(ValueError, match="already defined"):
        g.add("fc2", Linear(2, 2), "x", "y")
    with pytest.raises(ValueError, match="inputs: expected"):
        g.forward()
    with pytest.raises(RuntimeError, match="before forward"):
        Graph(inputs=["x"], output="x").backward(np.zeros(2, np.float32))


def test_forward_decode_last_only_gives_the_last_position():
    """The row-wise tail (final norm, head) runs on the last position alone; the result is that position's."""
    from qorus_jit.layers import DecodeState
    from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig

    ids = np.random.default_rng(3).integers(0, 40, (1, 9))
    for model, tail in ((Llama(LlamaConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=40,
                                            max_seq_len=16), rng=0), ["model.norm", "lm_head"]),
                        (GPT2(GPT2Config(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=40,
                                         max_seq_len=16), rng=0), ["transformer.ln_f", "lm_head"])):
        assert [n[0] for n in model.nodes[model._rowwise_tail():]] == tail
        full = model.forward_decode(ids, state=DecodeState(1, 16)).copy()
        last = model.forward_decode(ids, state=DecodeState(1, 16), last_only=True)
        assert last.shape == (1, 1, 40)
        np.testing.assert_allclose(last[0, 0], full[0, -1], rtol=1e-5, atol=1e-6)


def test_rowwise_tail_stops_at_a_layer_that_mixes_positions():
    g = Graph(inputs=["x"], output="y")
    g.add("fc", Linear(4, 4, rng=0), "x", "h")
    g.add("res", Add(), ["x", "h"], "y")
    assert g._rowwise_tail() is None
    seq = Sequential(Linear(4, 4, rng=0), ReLU(), Linear(4, 2, rng=1))
    assert seq._rowwise_tail() == 0


def test_graph_argument_checks():
    from qorus_jit.layers import DecodeState

    for kw, msg in ((dict(inputs=None, output="y"), "^inputs: expected"),
                    (dict(inputs=["x", "x"], output="y"), "^inputs: expected distinct"),
                    (dict(inputs=["x"], output=None), "^output: expected")):
        with pytest.raises((TypeError, ValueError), match=msg):
            Graph(**kw)
    assert Graph(inputs="x", output="y").inputs == ["x"]  # one name, as in add
    g = Graph(inputs=["x"], output="y")
    for args, msg in (((None, Linear(2, 2), "x", "h"), "^name: expected"),
                      (("fc", Linear(2, 2), None, "h"), "^fc: inputs: expected"),
                      (("fc", Linear(2, 2), 3, "h"), "^fc: inputs: expected"),
                      (("fc", Linear(2, 2), "x", None), "^fc: output: expected")):
        with pytest.raises(TypeError, match=msg):
            g.add(*args)
    g.add("fc", Linear(2, 2, rng=0), "x", "h")
    with pytest.raises(ValueError, match="^name: a node named 'fc'"):
        g.add("fc", Linear(2, 2), "h", "y")
    g.add("act", ReLU(), "h", "y")
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="^inputs: expected 1"):
        g.forward(x, x)
    with pytest.raises(ValueError, match="^inputs: 'x' given both"):
        g.forward(x, x=x)
    with pytest.raises(TypeError, match="^state: expected a DecodeState"):
        g.forward_decode(x, state=None)
    with pytest.raises(ValueError, match="^inputs: expected 1"):
        g.forward_decode(x, x, state=DecodeState(3, 4))
    y = g.forward(x)
    for bad, err in ((None, TypeError), ("abc", TypeError), (np.ones(3, np.float32), ValueError)):
        with pytest.raises(err, match="^dy: expected"):
            g.backward(bad)
    g.backward(np.ones_like(y))
    with pytest.raises(TypeError, match=r"^layers\[0\]: expected a Layer or a \(name, Layer\) pair"):
        Sequential(("a", Linear(2, 2), 3))
    with pytest.raises(TypeError, match=r"^layers\[1\]: expected"):
        Sequential(Linear(2, 2), (1, ReLU()))
    add = Add()
    add.forward(x, x)
    for bad in (None, np.ones(3, np.float32), np.float32(1.0)):
        with pytest.raises((TypeError, ValueError), match="^dy: expected"):
            add.backward(bad)
