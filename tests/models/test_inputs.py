"""What the models accept and refuse at their entry points: configs of NumPy scalars are the configs of the
Python values, and a bad argument (ids, token_type_ids, attention_mask, state, dy, rng, a config too large) is
refused naming the model's own argument, before any layer sees it."""

import dataclasses
import json

import numpy as np
import pytest

from qorus_jit.layers import DecodeState
from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig, mean_pool

V, T_MAX = 11, 8
PLAIN = {
    Llama: LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=V, max_seq_len=T_MAX,
                       norm_eps=1e-5, rope_theta=500.0, tie_embeddings=True),
    GPT2: GPT2Config(dim=16, n_layers=1, n_heads=2, vocab_size=V, max_seq_len=T_MAX, norm_eps=1e-5),
    Bert: BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=V, max_seq_len=T_MAX, norm_eps=1e-12),
}
ARCHS = list(PLAIN)
DECODERS = [Llama, GPT2]


def ids(B=2, T=5, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def numpy_scalars(config):
    """The config's fields as NumPy scalars of several kinds (np.float32 of a value exact in float32)."""
    kinds = (np.int64, np.int32, np.uint8)
    out = {}
    for i, f in enumerate(dataclasses.fields(config)):
        v = getattr(config, f.name)
        if isinstance(v, bool):
            out[f.name] = np.bool_(v)
        elif isinstance(v, int):
            out[f.name] = kinds[i % 3](v)
        elif isinstance(v, float):
            out[f.name] = np.float32(v) if float(np.float32(v)) == v else np.float64(v)
        else:
            out[f.name] = np.str_(v)
    return out


@pytest.mark.parametrize("cls", ARCHS, ids=lambda c: c.__name__)
def test_config_of_numpy_scalars_is_the_config_of_python_values(cls):
    plain = PLAIN[cls]
    config = type(plain)(**numpy_scalars(plain))
    assert config == plain
    assert json.dumps(config.to_dict()) == json.dumps(plain.to_dict())  # Python values: JSON as the plain config
    assert all(type(getattr(config, f.name)) is type(getattr(plain, f.name)) for f in dataclasses.fields(plain))
    np.testing.assert_array_equal(cls(config, rng=0).forward(ids()), cls(plain, rng=0).forward(ids()))


@pytest.mark.parametrize("cls", ARCHS, ids=lambda c: c.__name__)
def test_config_refuses_bools_as_numbers_and_numbers_as_bools(cls):
    plain = PLAIN[cls]
    for field in ("dim", "n_layers", "norm_eps"):
        for bad in (True, np.bool_(True)):
            with pytest.raises(ValueError, match=field):
                dataclasses.replace(plain, **{field: bad})
    if hasattr(plain, "tie_embeddings"):
        with pytest.raises(ValueError, match="tie_embeddings"):
            dataclasses.replace(plain, tie_embeddings=np.int64(1))


@pytest.mark.parametrize("cls", ARCHS, ids=lambda c: c.__name__)
def test_forward_ids_errors_name_ids(cls):
    model = cls(PLAIN[cls], rng=0)
    for bad, error in ((ids()[0], ValueError), (ids()[None], ValueError), (ids(1, T_MAX + 1), ValueError),
                       (ids().astype(np.float32), TypeError), (ids() + V, ValueError), ("abc", TypeError)):
        with pytest.raises(error, match="^ids: "):
            model.forward(bad)
    np.testing.assert_array_equal(model.forward(ids(1, T_MAX)).shape[:2], (1, T_MAX))  # T = max_seq_len is fine


def test_bert_token_types_and_mask_are_checked_by_name():
    model = Bert(PLAIN[Bert], rng=0)
    x = ids()
    types = np.zeros(x.shape, np.int64)
    types[:, 3:] = 1
    mask = np.ones(x.shape, np.int64)
    mask[0, -2:] = 0
    want = model.forward(x, mask, types).copy()
    # lists, bool and int32 give the same hidden states as int64 arrays
    np.testing.assert_array_equal(model.forward(x.tolist(), mask.astype(bool), types.astype(np.int32)), want)
    np.testing.assert_array_equal(model.forward(x, mask.tolist(), types.tolist()), want)
    for bad, error in ((types[0], ValueError), (types[:, :-1], ValueError), (types * 2, ValueError),
                       (-types, ValueError), (types.astype(np.float32), TypeError), ("abc", TypeError)):
        with pytest.raises(error, match="^token_type_ids: "):
            model.forward(x, token_type_ids=bad)
    for bad, error in ((mask[0], ValueError), (mask[:, :-1], ValueError), (mask.astype(np.float32), TypeError),
                       (-mask, ValueError), ("abc", TypeError)):
        with pytest.raises(error, match="^attention_mask: "):
            model.forward(x, attention_mask=bad)


@pytest.mark.parametrize("cls", DECODERS, ids=lambda c: c.__name__)
def test_forward_decode_checks_state_and_ids(cls):
    model = cls(PLAIN[cls], rng=0)
    x = ids(1, 3)
    for bad in (None, "abc"):
        with pytest.raises(TypeError, match="^state: "):
            model.forward_decode(x, state=bad)
    with pytest.raises(ValueError, match="^state: .*batch"):
        model.forward_decode(x, state=DecodeState(2, T_MAX))
    with pytest.raises(ValueError, match="^state: .*DecodeState's max_seq_len = 2"):
        model.forward_decode(x, state=DecodeState(1, 2))
    with pytest.raises(ValueError, match="^ids: .*model's max_seq_len"):
        model.forward_decode(ids(1, T_MAX + 1), state=DecodeState(1, 64))
    with pytest.raises(ValueError, match="^ids: "):
        model.forward_decode(x[0], state=DecodeState(1, T_MAX))
    # one token past the model's context, after a full one decoded a token at a time
    state = DecodeState(1, T_MAX)
    for t in range(T_MAX):
        model.forward_decode(np.array([[t % V]]), state=state)
        state.advance(1)
    with pytest.raises(ValueError, match=f"^ids: position {T_MAX} "):
        model.forward_decode(np.array([[1]]), state=state)
    # the checks let a valid decode through: the logits of a full forward
    state = DecodeState(1, T_MAX)
    got = [model.forward_decode(x[:, :2], state=state).copy()]
    state.advance(2)
    got.append(model.forward_decode(x[:, 2:], state=state).copy())
    np.testing.assert_allclose(np.concatenate(got, axis=1), model.forward(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", ARCHS, ids=lambda c: c.__name__)
def test_backward_checks_dy(cls):
    model = cls(PLAIN[cls], rng=0)
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.zeros((2, 5, 16), np.float32))
    y = model.forward(ids())
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    for bad, error in ((None, TypeError), ("abc", TypeError), ({}, TypeError), (True, TypeError),
                       (dy.tolist(), TypeError), (dy[None], ValueError), (dy[:, 1:], ValueError),
                       (dy.astype(np.float64), TypeError)):
        with pytest.raises(error, match="^dy: "):
            model.backward(bad)
    assert all(not g.any() for g in model.gradients().values())  # nothing accumulated by the refused calls
    model.backward(dy)
    assert any(g.any() for g in model.gradients().values())


@pytest.mark.parametrize("cls", ARCHS, ids=lambda c: c.__name__)
def test_rng_and_size_are_checked_before_building(cls):
    for bad, error in (("abc", TypeError), (-1, ValueError), (0.5, TypeError), ({}, TypeError), (True, TypeError)):
        with pytest.raises(error, match="^rng: "):
            cls(PLAIN[cls], rng=bad)
    np.testing.assert_array_equal(cls(PLAIN[cls], rng=np.int64(3)).forward(ids()),
                                  cls(PLAIN[cls], rng=np.random.default_rng(3)).forward(ids()))
    # every layer alone is small, the whole model is not: refused naming n_layers, nothing allocated
    huge = dataclasses.replace(PLAIN[cls], n_layers=10**9)
    with pytest.raises(ValueError, match="n_layers=1000000000.*do not fit in memory"):
        cls(huge)


def test_mean_pool_matches_numpy_and_checks_its_arguments():
    rng = np.random.default_rng(4)
    hidden = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    h64 = hidden.astype(np.float64)
    want = np.stack([h64[0, :2].mean(0), h64[1].mean(0)])
    for m in (mask, mask.astype(bool), mask.tolist(), mask * 2):
        np.testing.assert_allclose(mean_pool(hidden, m), want, rtol=1e-6, atol=1e-6)
    for bad, error in ((None, TypeError), ("abc", TypeError), (mask[0], ValueError), (mask[:, :3], ValueError),
                       (-mask, ValueError)):
        with pytest.raises(error, match="^attention_mask: "):
            mean_pool(hidden, bad)
    for bad, error in ((None, TypeError), ("abc", TypeError), (hidden[0], ValueError), (mask, TypeError)):
        with pytest.raises(error, match="^hidden: "):
            mean_pool(bad, mask)


def test_mlp_checks_sizes_activation_and_rng_by_name():
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    want = MLP([4, 8, 3], rng=0).forward(x).copy()
    for sizes in ((4, 8, 3), np.array([4, 8, 3]), [np.int64(4), np.int32(8), np.uint8(3)]):
        model = MLP(sizes, rng=np.int64(0))
        assert model.sizes == [4, 8, 3] and all(type(n) is int for n in model.sizes)
        np.testing.assert_array_equal(model.forward(x), want)
    for bad, error in ((None, TypeError), ("483", TypeError), ([4], ValueError), ([4, 0, 3], ValueError),
                       ([4, -1, 3], ValueError), ([4.0, 8, 3], ValueError), ([True, 8, 3], ValueError),
                       (["4", 8, 3], ValueError)):
        with pytest.raises(error, match="^sizes"):
            MLP(bad)
    for bad in ([1], {}, "tanh", None):
        with pytest.raises(ValueError, match="^activation: "):
            MLP([4, 3], activation=bad)
    for bad, error in (("abc", TypeError), (-1, ValueError), (0.5, TypeError), ({}, TypeError)):
        with pytest.raises(error, match="^rng: "):
            MLP([4, 3], rng=bad)
