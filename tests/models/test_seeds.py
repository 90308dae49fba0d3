"""A model built twice with the same seed has the same parameters, and a different seed gives others."""

import numpy as np
import pytest

from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig

BUILDERS = {
    "llama": lambda rng: Llama(LlamaConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=32,
                                           max_seq_len=8), rng=rng),
    "gpt2": lambda rng: GPT2(GPT2Config(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=32, max_seq_len=8,
                                        tie_embeddings=False), rng=rng),
    "bert": lambda rng: Bert(BertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=32,
                                        max_seq_len=8), rng=rng),
    "mlp": lambda rng: MLP([4, 8, 3], rng=rng),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_same_seed_same_parameters(name):
    a, b, c = (BUILDERS[name](seed).parameters() for seed in (0, 0, 1))
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
