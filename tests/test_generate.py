"""Generation: cached decoding equals full forwards, greedy tokens equal transformers' generate, sampling
is reproducible and its top-k / top-p filter matches a NumPy reference."""

import numpy as np
import pytest

import qorus_jit
from qorus_jit.infer.generate import filter_logits, generate, sample, sample_text, sample_tokens
from qorus_jit.layers import DecodeState
from qorus_jit.models import GPT2, GPT2Config, Llama, LlamaConfig
from qorus_jit.tokenizers import ByteTokenizer
from tests.helpers import torch_or_skip
from tests.models.reference import saved_reference, transformers_or_skip


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


def ref_filter(logits, top_k, top_p):
    """Top-k then top-p by sorting, in float64: the tokens kept, as a boolean mask."""
    x = np.asarray(logits, np.float64)
    keep = np.ones(x.size, bool)
    if top_k is not None:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    if top_p is not None:
        order = sorted(np.flatnonzero(keep), key=lambda i: -x[i])
        probs = np.exp(x[order] - x[order].max())
        probs /= probs.sum()
        total, chosen = 0.0, []
        for i, p in zip(order, probs, strict=True):
            chosen.append(i)
            total += p
            if total >= top_p:
                break
        keep = np.zeros(x.size, bool)
        keep[chosen] = True
    return keep


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.5), (None, 0.9), (10, 0.8), (1, None), (None, 1e-9)])
def test_top_k_top_p_filter_matches_reference(top_k, top_p):
    rng = np.random.default_rng(7)
    for _ in range(20):
        logits = rng.standard_normal(40) * 2
        got = np.isfinite(filter_logits(logits, top_k, top_p))
        np.testing.assert_array_equal(got, ref_filter(logits, top_k, top_p))


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
    gen = generate(model, list(range(10)), 50, temperature=0.0)
    out = list(gen)
    assert gen.finish_reason == "context" and len(out) == 16 - 10 + 1
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
