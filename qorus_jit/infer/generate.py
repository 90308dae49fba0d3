"""Text generation: prefill the prompt in one forward, then decode one token at a time from a KV cache.

>>> from qorus_jit.models import Llama, LlamaConfig
>>> model = Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=256, max_seq_len=64), rng=0)
>>> gen = generate(model, [72, 105], max_new_tokens=5, temperature=0.0)   # greedy
>>> tokens = list(gen)                                                    # token ids as they come
>>> len(tokens), gen.finish_reason
(5, 'length')

The KV cache is allocated once for the whole run (``DecodeState``); no position is computed twice.
Sampling is greedy (``temperature=0``) or from ``softmax(logits / temperature)`` restricted by ``top_k``
and ``top_p`` (nucleus), drawn with ``numpy.random.default_rng(seed)``: the same seed gives the same text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

import numpy as np

from qorus_jit.layers import DecodeState, Layer


def filter_logits(logits: np.ndarray, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """A float64 copy of ``logits (V,)`` with every token outside the top-k and the top-p nucleus at -inf.

    ``top_k``: keep the ``k`` largest (ties at the k-th value kept). ``top_p``: keep the smallest set of
    most likely tokens whose probabilities sum to at least ``top_p`` (the most likely token always stays).
    Both: top-k first, then top-p over what remains (as ``transformers`` applies them).
    """
    x = np.array(logits, np.float64)
    if top_k is not None and top_k < x.size:
        kth = np.partition(x, x.size - top_k)[x.size - top_k]
        x[x < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        before = np.cumsum(p) - p  # probability mass of the tokens ranked above each one
        x[order[before >= top_p]] = -np.inf
    return x


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None) -> int:
    """One token id from ``logits (V,)``: argmax at ``temperature == 0``, else a draw from the filtered
    softmax of ``logits / temperature`` (one ``rng.random()`` per call)."""
    if temperature == 0:
        return int(np.argmax(logits))
    x = filter_logits(np.asarray(logits, np.float64) / temperature, top_k, top_p)
    p = np.exp(x - x.max())
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), x.size - 1))


def _check_options(max_new_tokens, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k: expected an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected a number in (0, 1] or None, got {top_p!r}")


class Generation(Iterator[int]):
    """What :func:`generate` returns: an iterator over up to ``max_new_tokens`` ids generated after
    ``prompt`` (a sequence of ids) by ``model`` (a Llama or GPT-2, or any graph whose attention layers
    decode from a KV cache), yielded as they come.

    Stops early at any id in ``stop_tokens`` (which is yielded, then generation ends) and at the model's
    context limit (``finish_reason`` tells which: ``"length"``, ``"stop"`` or ``"context"``). A prompt
    longer than the context raises a ValueError. After the run, ``prefill_seconds``/``decode_seconds`` and
    ``prefill_tokens_per_s``/``decode_tokens_per_s`` say how fast it went.
    """

    def __init__(self, model, prompt: Iterable[int], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_tokens: Iterable[int] = (), max_seq_len: int | None = None):
        _check_options(max_new_tokens, temperature, top_k, top_p)
        if not isinstance(model, Layer) or not model.incremental or not hasattr(model, "config"):
            raise TypeError(f"model: expected a Llama or GPT-2 model, got {type(model).__name__}")
        limit = model.config.max_seq_len if max_seq_len is None else min(max_seq_len, model.config.max_seq_len)
        ids = np.asarray(list(prompt), np.int64)
        vocab = model.config.vocab_size
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("prompt: expected at least one token id")
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"prompt: token ids must lie in [0, {vocab}), got {ids.min()}..{ids.max()}")
        if ids.size > limit:
            raise ValueError(f"prompt: {ids.size} tokens exceed the model's context of {limit} positions")
        self.model, self.prompt = model, ids
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.stop_tokens = frozenset(int(t) for t in stop_tokens)
        self.rng = np.random.default_rng(seed)
        self.limit = limit
        self.state = DecodeState(batch=1, max_seq_len=min(limit, ids.size + max_new_tokens))
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.prefill_seconds = self.decode_seconds = 0.0

    def _logits(self, ids: np.ndarray) -> np.ndarray:
        out = self.model.forward_decode(ids[None], state=self.state, last_only=True)
        self.state.advance(ids.size)
        return out[0, -1]

    def __next__(self) -> int:
        if self.finish_reason is not None:
            raise StopIteration
        if len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
            raise StopIteration
        t0 = time.perf_counter()
        if self.state.pos == 0:
            logits = self._logits(self.prompt)
            self.prefill_seconds = time.perf_counter() - t0
        elif self.state.pos >= self.limit:
            self.finish_reason = "context"
            raise StopIteration
        else:
            logits = self._logits(np.asarray([self.tokens[-1]], np.int64))
        tok = sample(logits, self.rng, self.temperature, self.top_k, self.top_p)
        if self.state.pos > self.prompt.size:
            self.decode_seconds += time.perf_counter() - t0
        self.tokens.append(tok)
        if tok in self.stop_tokens:
            self.finish_reason = "stop"
        elif len(self.tokens) == self.max_new_tokens:
            self.finish_reason = "length"
        return tok

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt.size / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.tokens) - 1, 0)  # the first new token comes from the prefill
        return n / self.decode_seconds if self.decode_seconds else 0.0


def generate(model, prompt: Iterable[int], max_new_tokens: int = 128, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_tokens: Iterable[int] = (), max_seq_len: int | None = None) -> Generation:
    """Token ids generated after ``prompt`` by ``model``, as an iterator (see :class:`Generation`)."""
    return Generation(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, max_seq_len)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 128, **kw) -> str:
    """The prompt and its continuation as text: :func:`generate` on ``tokenizer.encode(prompt)``."""
    ids = tokenizer.encode(prompt)
    return prompt + tokenizer.decode(list(generate(model, ids, max_new_tokens, **kw)))


def sample_tokens(model, ids, n: int, max_len: int, temperature: float, rng) -> np.ndarray:
    """``n`` new token ids after ``ids`` (at least one) by temperature sampling (greedy at 0), each from a
    full forward over the last ``max_len`` tokens: unlike :func:`generate`, which decodes from a KV cache up
    to the model's context, it slides a window and so goes on past the context."""
    seq = [int(i) for i in ids]
    if not seq:
        raise ValueError("ids: expected at least one token to start from")
    out = []
    for _ in range(n):
        window = np.asarray(seq[-max_len:], np.int64)[None]
        tok = sample(model.forward(window)[0, -1], rng, temperature)
        seq.append(tok)
        out.append(tok)
    return np.asarray(out, np.int64)


def sample_text(model, tokenizer, prompt: str, n_tokens: int, temperature: float = 0.8, seed: int | None = 0) -> str:
    """The prompt and ``n_tokens`` sampled after it by :func:`sample_tokens` over the model's context (token
    0 starts an empty prompt): the sample ``qorus train`` prints at the end of a run."""
    ids = tokenizer.encode(prompt) if prompt else np.zeros(1, np.int64)
    out = sample_tokens(model, np.asarray(ids, np.int64), n_tokens, model.config.max_seq_len, temperature,
                        np.random.default_rng(seed))
    return prompt + tokenizer.decode(out)
