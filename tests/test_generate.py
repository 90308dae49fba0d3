"""Generation: cached decoding equals full forwards, greedy tokens equal transformers' generate, sampling
is reproducible and its top-k / top-p filter matches a NumPy reference."""

import numpy as np
import pytest

import qorus_jit
from qorus_jit.infer.generate import (
    filter_logits,
    generate,
    generate_text,
    sample,
    sample_text,
    sample_tokens,
    warm_up,
)
from qorus_jit.layers import DecodeState
from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig
from qorus_jit.tokenizers import ByteTokenizer
from tests.helpers import torch_or_skip
from tests.models.reference import saved_reference, transformers_or_skip
from tests.naive import sampling as naive


def llama(n_kv_heads=2, max_seq_len=48):
    cfg = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, hidden_dim=48, vocab_size=53,
                      max_seq_len=max_seq_len, norm_eps=1e-5)
    return Llama(cfg, rng=0)


def gpt2(max_seq_len=48):
    return GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=53, max_seq_len=max_seq_len),
                rng=0)


@pytest.mark.parametrize("make", [llama, gpt2])
def test_cached_decoding_gives_the_full_forward_logits_at_every_step(make):
    model = make()
    ids = np.random.default_rng(0).integers(0, 53, 30)
    full = model.forward(ids[None]).copy()[0]  # (30, V): every position at once, no cache
    state = DecodeState(batch=1, max_seq_len=30)
    prefill = model.forward_decode(ids[None, :10], state=state)[0]
    state.advance(10)
    np.testing.assert_allclose(prefill, full[:10], atol=1e-4, rtol=0)
    for t in range(10, 30):
        step = model.forward_decode(ids[None, t:t + 1], state=state)[0, 0]
        state.advance(1)
        np.testing.assert_allclose(step, full[t], atol=1e-4, rtol=0, err_msg=f"position {t}")


def _greedy_reference(torch, model_cls, hf_cfg, folder, prompt, n):
    ref = saved_reference(torch, model_cls, hf_cfg, folder, lambda name: "norm" in name or "ln_" in name)
    with torch.no_grad():
        out = ref.generate(torch.tensor(prompt[None]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                           pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].numpy()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generation_equals_transformers_generate(tmp_path, arch):
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        cls = transformers.GPT2LMHeadModel
    prompt = np.random.default_rng(3).integers(0, 97, 7)
    want = _greedy_reference(torch, cls, cfg, tmp_path, prompt, 32)
    model = qorus_jit.load_pretrained(tmp_path)
    got = np.array(list(generate(model, prompt, max_new_tokens=32, temperature=0.0)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.5), (None, 0.9), (10, 0.8), (1, None), (None, 1e-9)])
def test_top_k_top_p_filter_matches_reference(top_k, top_p):
    rng = np.random.default_rng(7)
    for _ in range(20):
        logits = rng.standard_normal(40) * 2
        got = np.isfinite(filter_logits(logits, top_k, top_p))
        np.testing.assert_array_equal(got, naive.keep_mask(logits, top_k, top_p))


def test_sampling_draws_from_the_filtered_distribution():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    rng = np.random.default_rng(0)
    draws = np.array([sample(logits, rng, 1.0, top_p=0.7) for _ in range(20000)])
    # top_p 0.7 keeps {0, 1} (0.5 + 0.25 >= 0.7), renormalized to 2/3, 1/3
    assert set(np.unique(draws)) == {0, 1}
    assert abs((draws == 0).mean() - 2 / 3) < 0.015
    draws = np.array([sample(logits, rng, 1.0) for _ in range(20000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / draws.size, [0.5, 0.25, 0.15, 0.1], atol=0.015)
    assert sample(logits, rng, 0.0) == 0


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = llama()
    runs = [list(generate(model, [1, 2, 3], 20, temperature=1.0, top_k=20, seed=s)) for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stop_tokens_context_limit_and_bad_arguments():
    model = llama(max_seq_len=16)
    greedy = list(generate(model, [4, 5], 10, temperature=0.0))
    gen = generate(model, [4, 5], 10, temperature=0.0, stop_tokens=[greedy[3]])
    assert list(gen) == greedy[:greedy.index(greedy[3]) + 1] and gen.finish_reason == "stop"
    gen = generate(model, list(range(10)), 50, temperature=0.0, slide=False)
    out = list(gen)
    assert gen.finish_reason == "context" and len(out) == 16 - 10 + 1
    with pytest.raises(TypeError, match="slide"):
        generate(model, [1], 5, slide=1)
    with pytest.raises(ValueError, match="exceed the model's context"):
        generate(model, list(range(17)), 5)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [60], 5)  # id out of the vocabulary
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1], 5, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], 5, top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [1], 5, top_k=0)


@pytest.mark.parametrize("make", [llama, gpt2])
def test_sliding_window_sampler_matches_cached_greedy_generation_and_goes_past_the_context(make):
    model = make(max_seq_len=16)
    prompt = np.array([5, 17, 2], np.int64)
    cached = list(generate(model, prompt, max_new_tokens=13, temperature=0.0))  # fills the 16 positions
    slid = sample_tokens(model, prompt, 30, max_len=16, temperature=0.0, rng=np.random.default_rng(0))
    assert slid.dtype == np.int64 and slid.shape == (30,)
    assert slid[:13].tolist() == cached
    seq = np.concatenate([prompt, slid])
    for t in (20, 32):  # past the context: greedy over the last 16 tokens only
        assert slid[t - 3] == int(np.argmax(model.forward(seq[None, t - 16:t])[0, -1]))
    with pytest.raises(ValueError, match="ids"):
        sample_tokens(model, [], 3, 16, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("make", [llama, gpt2])
def test_generation_slides_its_window_past_the_context(make):
    """At a full cache the last half of the context is prefilled again from position 0: each token equals the
    greedy argmax of a full forward over the tokens fed since the last slide (an independent reference)."""
    model = make(max_seq_len=16)
    prompt = [5, 17, 2, 9, 30]
    gen = generate(model, prompt, 40, temperature=0.0)
    out = list(gen)
    assert len(out) == 40 and gen.finish_reason == "length" and gen.slides >= 2
    seq, start = list(prompt), 0
    for i, tok in enumerate(out):
        if len(seq) - start > 16:  # the window would pass the context: keep its last half
            start = len(seq) - 8
        want = int(np.argmax(model.forward(np.asarray(seq[start:], np.int64)[None])[0, -1]))
        assert tok == want, f"token {i}"
        seq.append(tok)


def test_sample_text_is_the_prompt_and_seeded_samples():
    model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=256, max_seq_len=32), rng=0)
    tok = ByteTokenizer()
    a = sample_text(model, tok, "The ", 40, temperature=0.8, seed=3)
    b = sample_text(model, tok, "The ", 40, temperature=0.8, seed=3)
    assert a == b and a.startswith("The ")
    ids = sample_tokens(model, tok.encode("The "), 40, 32, 0.8, np.random.default_rng(3))
    assert a == "The " + tok.decode(ids)
    empty = sample_text(model, tok, "", 5, temperature=0.0)  # token 0 starts an empty prompt
    assert empty == tok.decode(sample_tokens(model, [0], 5, 32, 0.0, np.random.default_rng(0)))


# -- malformed inputs (issue 15): each class of bad input, as a new user gives it


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-300, np.float64(1e-310)])
def test_a_tiny_positive_temperature_is_greedy(temperature):
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.standard_normal(64) * 3
        logits[rng.integers(0, 64, 5)] = -np.inf  # masked tokens stay allowed
        for top_k, top_p in [(None, None), (10, None), (None, 0.9)]:
            assert sample(logits, rng, temperature, top_k, top_p) == int(np.argmax(logits))
    model = llama()
    greedy = list(generate(model, [3, 9], 12, temperature=0.0))
    assert list(generate(model, [3, 9], 12, temperature=temperature, seed=1)) == greedy


def test_a_huge_temperature_samples_uniformly():
    logits = np.array([50.0, 0.0, -50.0, -np.inf])
    rng = np.random.default_rng(0)
    draws = np.array([sample(logits, rng, 1e300) for _ in range(9000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / draws.size, [1 / 3, 1 / 3, 1 / 3, 0], atol=0.02)


@pytest.mark.parametrize("prompt", [[1.7], [1, 2.0], np.array([1.5, 2.0]), [True, 2], np.array([True]), ["a"],
                                    [None], "abc", 5])
def test_token_ids_that_are_not_integers_are_refused(prompt):
    model = llama()
    with pytest.raises(TypeError, match="prompt"):
        generate(model, prompt, 3)
    with pytest.raises(TypeError, match="ids"):
        sample_tokens(model, prompt, 3, 16, 0.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="stop_tokens"):
        generate(model, [1], 3, stop_tokens=[2.5])


def test_numpy_ints_are_token_ids_and_numpy_scalars_are_options():
    model = llama()
    want = list(generate(model, [4, 7], 6, temperature=0.7, top_k=5, top_p=0.9, seed=2))
    ids = [np.int64(4), np.int32(7)]
    for got in (generate(model, ids, np.int64(6), np.float32(0.7), np.int16(5), np.float64(0.9), np.uint8(2)),
                generate(model, np.array([4, 7], np.uint16), 6, 0.7, 5, 0.9, 2, max_seq_len=np.int64(48))):
        assert list(got) == want
    assert sample_tokens(model, ids, 3, np.int64(16), np.float32(0.0), np.random.default_rng(0)).shape == (3,)


@pytest.mark.parametrize("name,value", [("max_new_tokens", True), ("temperature", True), ("top_k", True),
                                        ("top_p", True), ("seed", True), ("max_new_tokens", 2.0),
                                        ("temperature", np.nan), ("temperature", np.inf), ("top_p", np.float32(1.5)),
                                        ("top_k", np.int64(0)), ("max_seq_len", 0), ("vocab_limit", 0),
                                        ("vocab_limit", 54)])
def test_bad_options_name_themselves(name, value):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        generate(llama(), [1], **{name: value})


@pytest.mark.parametrize("seed", [-1, 1.5, "7", np.float64(3.0), [1, 2], True])
def test_a_bad_seed_is_named(seed):
    model, tok = llama(), ByteTokenizer()
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0 or None"):
        generate(model, [1], 3, seed=seed)
    big = Llama(LlamaConfig(dim=32, n_layers=1, n_heads=4, hidden_dim=48, vocab_size=256, max_seq_len=16), rng=0)
    with pytest.raises(ValueError, match=r"^seed: expected"):
        sample_text(big, tok, "a", 3, seed=seed)


def test_a_numpy_seed_equals_the_python_one():
    model = llama()
    assert list(generate(model, [1], 8, seed=np.int64(9))) == list(generate(model, [1], 8, seed=9))


def poisoned(value, rows):
    """llama() whose head rows ``rows`` are ``value``: those tokens' logits are NaN or +-inf."""
    model = llama()
    model.parameters()["lm_head.weight"][rows] = value
    return model


@pytest.mark.parametrize("value,what", [(np.nan, "NaN"), (np.inf, r"\+inf|NaN")])
def test_non_finite_logits_stop_generation_with_an_error_saying_so(value, what):
    model = poisoned(value, [7])
    gen = generate(model, [1, 2, 3], 5, temperature=0.8, seed=0)
    with pytest.raises(ValueError, match=rf"new token 1 \(position 3\).*not finite \(({what})\).*weights or inputs"):
        next(gen)
    assert gen.finish_reason == "error" and list(gen) == []
    with pytest.raises(ValueError, match="non-finite logits"):
        list(generate(model, [1], 5, temperature=0.0))  # greedy does not hide it
    with pytest.raises(ValueError, match=r"new token 1 \(position 2\).*non-finite logits"):
        sample_tokens(model, [1, 2], 3, 16, 0.0, np.random.default_rng(0))


def test_nan_appearing_mid_generation_names_its_step():
    model = llama()
    gen = generate(model, [1, 2], 5, temperature=0.0)
    assert len([next(gen), next(gen)]) == 2
    model.parameters()["model.norm.weight"][:] = np.nan
    with pytest.raises(ValueError, match=r"new token 3 \(position 4\): the logits are not finite \(NaN\)"):
        next(gen)


def test_minus_inf_logits_are_masked_tokens_but_not_all_of_them():
    logits = np.array([-np.inf, 1.0, -np.inf, 0.5])
    rng = np.random.default_rng(0)
    assert {sample(logits, rng, 1.0) for _ in range(200)} == {1, 3}
    for bad, what in [(np.full(4, -np.inf), "-inf at every token"), (np.array([0.0, np.nan, 1, 2]), "NaN"),
                      (np.array([0.0, np.inf, 1, 2]), r"\+inf")]:
        for t in (0.0, 1.0):
            with pytest.raises(ValueError, match=f"logits: the logits are not finite \\({what}\\)"):
                sample(bad, rng, t)
        with pytest.raises(ValueError, match="not finite"):
            filter_logits(bad, top_k=2)


def padded(make, pad=64):
    """A 256-id model padded to 256 + pad ids whose padded rows would win: pairs of rows +-100 v, so that one
    of each pair has a logit as large as 100 |h . v| at every position, far above the others."""
    vocab = 256 + pad
    if make == "llama":
        model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=vocab, max_seq_len=48),
                      rng=0)
        head = model.parameters()["lm_head.weight"]
    else:
        model = GPT2(GPT2Config(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=vocab, max_seq_len=48),
                     rng=0)
        head = model.parameters()["transformer.wte.weight"]  # tied: the head is the embedding
    v = np.random.default_rng(1).standard_normal((pad // 2, head.shape[1])).astype(np.float32)
    head[256::2], head[257::2] = 100 * v, -100 * v
    return model


@pytest.mark.parametrize("make", ["llama", "gpt2"])
def test_a_padded_vocabulary_never_samples_past_the_vocab_limit(make):
    model = padded(make)
    unlimited = [t for s in range(5) for t in generate(model, [10, 20], 8, temperature=2.0, seed=s)]
    assert max(unlimited) >= 256  # without the limit the padded ids win
    for seed in range(40):
        for top_k, top_p in [(None, None), (50, None), (None, 0.99)]:
            got = list(generate(model, [10, 20], 8, temperature=3.0, top_k=top_k, top_p=top_p, seed=seed,
                                vocab_limit=256))
            assert max(got) < 256, (seed, top_k, top_p)
    greedy = list(generate(model, [10, 20], 8, temperature=0.0, vocab_limit=256))
    state = DecodeState(batch=1, max_seq_len=10)  # greedy over the first 256 logits, step by step
    seq = [10, 20]
    logits = model.forward_decode(np.array([seq]), state=state)[0, -1]
    state.advance(2)
    for tok in greedy:
        assert tok == int(np.argmax(np.asarray(logits[:256], np.float64)))
        logits = model.forward_decode(np.array([[tok]]), state=state)[0, -1]
        state.advance(1)
    tok = ByteTokenizer()
    for seed in range(10):
        out = sample_tokens(model, [10, 20], 8, 16, 3.0, np.random.default_rng(seed), vocab_limit=256)
        assert out.max() < 256
        text = sample_text(model, tok, "ab", 8, temperature=3.0, seed=seed)  # the tokenizer's size by itself
        assert isinstance(text, str) and text.startswith("ab")
        assert generate_text(model, tok, "ab", 8, temperature=3.0, seed=seed).startswith("ab")


def test_padded_rows_that_are_not_finite_do_not_matter_below_the_limit():
    model = padded("llama")
    model.parameters()["lm_head.weight"][300] = np.nan
    assert len(list(generate(model, [1], 5, temperature=1.0, seed=0, vocab_limit=256))) == 5
    with pytest.raises(ValueError, match="NaN"):
        list(generate(model, [1], 5, temperature=1.0, seed=0))


def test_models_that_do_not_generate_are_refused_at_every_entry_point():
    from qorus_jit.models import MLP, Bert, BertConfig

    tok = ByteTokenizer()
    bert = Bert(BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=256, max_seq_len=16), rng=0)
    calls = [lambda m: generate(m, [1], 3), lambda m: generate_text(m, tok, "a", 3),
             lambda m: sample_tokens(m, [1], 3, 16, 0.0, np.random.default_rng(0)),
             lambda m: sample_text(m, tok, "a", 3), warm_up]
    for model, what in [(bert, "got Bert .*bidirectional"), (MLP([4, 8, 4], rng=0), "got MLP"),
                        (None, "got None"), ("llama", "got str")]:
        for call in calls:
            with pytest.raises(TypeError, match=f"^model: generation needs a Llama or GPT-2 model, {what}"):
                call(model)


@pytest.mark.parametrize("make", [llama, gpt2])
def test_warm_up_decodes_on_a_throwaway_cache(make):
    model = make(max_seq_len=16)
    want = list(generate(model, [3, 4, 5], 6, temperature=0.0))
    assert warm_up(model) > 0
    assert list(generate(model, [3, 4, 5], 6, temperature=0.0)) == want
    for n in (1, 2):  # a context too short for the 2-token prompt
        assert warm_up(make(max_seq_len=n)) > 0


@pytest.mark.parametrize("prompt", [{6: 1, 8: 2}, {6, 8}, {}])
def test_a_dict_or_set_prompt_is_refused_a_set_of_stop_tokens_is_not(prompt):
    model = llama()
    with pytest.raises(TypeError, match="^prompt: expected a sequence"):
        generate(model, prompt, 3)
    with pytest.raises(TypeError, match="^ids: expected a sequence"):
        sample_tokens(model, prompt, 3, 16, 0.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="^stop_tokens: expected"):
        generate(model, [1], 3, stop_tokens={2: 0})
    greedy = list(generate(model, [4, 5], 10, temperature=0.0))
    stop = greedy[3]
    for tokens in ({stop}, frozenset([stop, 50]), [stop]):
        assert list(generate(model, [4, 5], 10, temperature=0.0, stop_tokens=tokens)) == greedy[:greedy.index(stop) + 1]


@pytest.mark.parametrize("tokenizer", [None, "byte", b"x", 3, object()])
def test_a_tokenizer_without_encode_and_decode_is_named(tokenizer):
    big = Llama(LlamaConfig(dim=32, n_layers=1, n_heads=4, hidden_dim=48, vocab_size=256, max_seq_len=16), rng=0)
    with pytest.raises(TypeError, match="^tokenizer: expected a tokenizer with encode and decode"):
        generate_text(big, tokenizer, "a", 3)
    with pytest.raises(TypeError, match="^tokenizer: expected a tokenizer with encode and decode"):
        sample_text(big, tokenizer, "a", 3)


@pytest.mark.parametrize("n_tokens", [-1, 1.5, "3", None, True])
def test_sample_text_names_n_tokens(n_tokens):
    big = Llama(LlamaConfig(dim=32, n_layers=1, n_heads=4, hidden_dim=48, vocab_size=256, max_seq_len=16), rng=0)
    with pytest.raises(ValueError, match=r"^n_tokens: expected an int >= 0"):
        sample_text(big, ByteTokenizer(), "a", n_tokens)
    assert sample_text(big, ByteTokenizer(), "a", np.int64(2), temperature=0.0) == \
        sample_text(big, ByteTokenizer(), "a", 2, temperature=0.0)
