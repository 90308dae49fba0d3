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
from collections.abc import Iterable, Iterator, Mapping, Set

import numpy as np

from qorus_jit.core.check import check_bool, check_real
from qorus_jit.core.threads import ThreadTuner
from qorus_jit.kernels import trusted as K
from qorus_jit.layers import DecodeState
from qorus_jit.models.sources import check_model, tokenizer_size


def _kind(value) -> str:
    return type(value).__name__ if value is not None else "None"


def _int(name: str, value, low: int, optional: bool = False) -> int | None:
    """An int option (Python or NumPy int, not a bool) >= ``low``, as a Python int (None if ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        none = " or None" if optional else ""
        raise ValueError(f"{name}: expected an int >= {low}{none}, got {value!r}")
    return int(value)


def _seed(seed) -> int | None:
    """``seed``: None (fresh entropy) or an int >= 0 (Python or NumPy), as :func:`numpy.random.default_rng` takes."""
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0 or None, got {seed!r}")
    return int(seed)


def _temperature(value) -> float:
    return check_real("temperature", value, low=0.0)


def _top_p(value) -> float | None:
    return None if value is None else check_real("top_p", value, low=0.0, high=1.0, low_open=True)


def token_ids(name: str, ids, high: int | None = None, *, as_set: bool = False) -> np.ndarray:
    """``ids`` (a sequence or 1-D array of integer token ids: Python or NumPy ints, not bools or floats; a set
    too when ``as_set``, their order then not mattering) as a 1-D int64 array, each in ``[0, high)`` when
    ``high`` is given; else a TypeError or ValueError naming ``name``. A dict is refused (keys are no ids)."""
    unordered = isinstance(ids, Mapping) or (isinstance(ids, Set) and not as_set)
    if isinstance(ids, np.ndarray):
        arr = ids
    elif isinstance(ids, (str, bytes)) or unordered or not isinstance(ids, Iterable):
        what = "a sequence, a set" if as_set else "a sequence"
        raise TypeError(f"{name}: expected {what} or 1-D array of int token ids, got {_kind(ids)}")
    else:
        items = list(ids)
        for i, v in enumerate(items):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected int token ids, got {v!r} at index {i}")
        try:
            arr = np.asarray(items, np.int64) if items else np.zeros(0, np.int64)
        except OverflowError:
            raise ValueError(f"{name}: expected token ids in [0, {high}), got an id beyond int64") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer token ids, got an array of dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or (high is not None and arr.max() >= high)):
        raise ValueError(f"{name}: token ids must lie in [0, {high}), got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def check_logits(logits: np.ndarray, where: str = "logits") -> None:
    """A row of logits must be finite where it is largest: NaN or +inf anywhere, or -inf everywhere (no token
    left to pick), raise a ValueError saying so at ``where``. A -inf entry alone is a masked token."""
    top = np.max(logits)  # NaN anywhere makes the maximum NaN
    if not np.isfinite(top):
        what = "NaN" if np.isnan(top) else "+inf" if top > 0 else "-inf at every token"
        raise ValueError(f"{where}: the logits are not finite ({what}): the model's weights or inputs gave "
                         f"non-finite logits")


def filter_logits(logits: np.ndarray, top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """A float64 copy of ``logits (V,)`` with every token outside the top-k and the top-p nucleus at -inf.

    ``top_k``: keep the ``k`` largest (ties at the k-th value kept). ``top_p``: keep the smallest set of
    most likely tokens whose probabilities sum to at least ``top_p`` (the most likely token always stays).
    Both: top-k first, then top-p over what remains (as ``transformers`` applies them). Non-finite logits
    (see :func:`check_logits`) raise a ValueError.
    """
    top_k, top_p = _int("top_k", top_k, 1, optional=True), _top_p(top_p)
    x = np.array(logits, np.float64)
    check_logits(x)
    _filter(x, top_k, top_p)
    return x


def _filter(x, top_k, top_p, p=None):
    """Top-k then top-p on float64 ``x`` (V,) in place (``kernels/sampling.py``), given the probabilities p of x
    (with max(x) = 0) or making them; returns p, 0 where cut."""
    mx = 0.0
    if p is None:
        mx, p = float(x.max()), np.empty(x.size, np.float64)
        K.probabilities(p, x, mx)
    if top_k is not None and top_k < x.size:
        K.cut_top_k(x, p, top_k, mx)
    if top_p is not None and top_p < 1.0:
        K.cut_top_p(x, p, top_p, mx)
    return p


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None) -> int:
    """One token id from ``logits (V,)``: argmax at ``temperature == 0``, else a draw from the filtered
    softmax of ``logits / temperature`` (one ``rng.random()`` per call). Logits are shifted to a maximum of 0
    before the division, so a temperature small enough to overflow it sends every token below the maximum
    to probability 0: the limit, greedy. Non-finite logits (see :func:`check_logits`) raise a ValueError."""
    return _sample(logits, rng, _temperature(temperature), _int("top_k", top_k, 1, optional=True), _top_p(top_p))


def _sample(logits, rng, temperature: float, top_k, top_p, where: str = "logits") -> int:
    """:func:`sample` with ``temperature`` checked; a ValueError for non-finite logits names ``where``."""
    if temperature == 0:  # the argmax of float32 logits is that of their float64 values: no copy
        logits = np.asarray(logits)
        i = int(logits.argmax())  # the first NaN, if any
        if not math.isfinite(logits[i]):
            check_logits(logits, where)
        return i
    logits = np.asarray(logits)
    if logits.ndim != 1 or not logits.size:
        raise ValueError(f"{where}: expected one row of logits (V,), V >= 1, got shape {logits.shape}")
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float64)
    mx = float(logits.max())  # NaN if any is (NumPy's maximum propagates it)
    if not math.isfinite(mx):
        check_logits(logits, where)
    x, p = np.empty(logits.shape[0], np.float64), np.empty(logits.shape[0], np.float64)
    K.scale_logits(x, p, logits, mx, temperature)  # (x - max) / temperature in float64
    return K.draw(_filter(x, top_k, top_p, p), rng.random())


def _vocab_limit(value, vocab: int) -> int:
    """``vocab_limit``: None (the whole vocabulary) or an int in [1, vocab]."""
    if value is None:
        return vocab
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 1 <= value <= vocab:
        raise ValueError(f"vocab_limit: expected an int in [1, {vocab}] (the model's vocab_size) or None, "
                         f"got {value!r}")
    return int(value)


def _tokenizer_limit(tokenizer, model) -> int:
    """The ids of ``model`` that ``tokenizer`` can decode: ``[0, limit)``."""
    n = tokenizer_size(tokenizer)
    return model.config.vocab_size if n is None else min(n, model.config.vocab_size)


def warm_up(model) -> float:
    """Take a 2-token prompt and one more token through ``model``'s decoding on a throwaway cache, as
    :class:`Generation` does, and sample its logits once: the kernels of prefill, decode and sampling compile
    (cold kernel cache) or load (warm) here, so speeds measured after it leave compiling and loading out.
    Returns the seconds it took."""
    check_model(model)
    t0 = time.perf_counter()
    limit = model.config.max_seq_len
    n = 2 if limit >= 3 else 1
    state = DecodeState(batch=1, max_seq_len=min(limit, n + 1))
    ids = np.zeros((1, n), np.int64)
    logits = model.forward_decode(ids, state=state, last_only=True)
    state.advance(n)
    if state.pos < state.max_seq_len:
        logits = model.forward_decode(ids[:, :1], state=state, last_only=True)
    # every step of the sampler (top-k and top-p), on zeros: the model's own logits may be NaN, which generation
    # then reports itself
    _sample(np.zeros_like(logits[0, -1]), np.random.default_rng(0), 1.0, 1, 0.5)
    return time.perf_counter() - t0


# Greedy generation decodes runs of tokens in one model call (no Python between them: about 30 us a token of a
# stories15M int8 model's 430, docs/design.md), each as long as takes about RUN_SECONDS, so that tokens still
# come as a stream; MAX_RUN bounds a run.
RUN_SECONDS, MAX_RUN = 0.02, 64


class Generation(Iterator[int]):
    """What :func:`generate` returns: an iterator over up to ``max_new_tokens`` ids generated after
    ``prompt`` (a sequence of int ids) by ``model`` (a Llama or GPT-2, or any graph whose attention layers
    decode from a KV cache), yielded as they come.

    Stops early at any id in ``stop_tokens`` (which is yielded, then generation ends; ``finish_reason`` tells
    which: ``"length"`` or ``"stop"``). When the cache is full at the model's context (``max_seq_len``), the
    window slides as llama.cpp's context shift does: the last half of the context is prefilled again from
    position 0 and decoding goes on from there (``slides`` counts it); with ``slide=False`` generation stops
    there instead, with ``finish_reason == "context"``. A prompt longer than the context raises a ValueError.
    ``vocab_limit``: only ids below it are ever picked (the size of a tokenizer whose model's vocabulary is
    padded, say, to a multiple of 64). Logits that are not
    finite (NaN or +inf; -inf at every allowed id) stop generation with a ValueError naming the new token
    and its position (``finish_reason`` is then ``"error"``).

    After the run, ``prefill_seconds``/``decode_seconds`` and ``prefill_tokens_per_s``/``decode_tokens_per_s``
    say how fast it went. The first run of a process also compiles (cold kernel cache) or loads the kernels
    in its prefill and first decoding step: call :func:`warm_up` first for speeds of running alone.
    """

    def __init__(self, model, prompt: Iterable[int], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_tokens: Iterable[int] = (), max_seq_len: int | None = None, vocab_limit: int | None = None,
                 slide: bool = True):
        check_model(model)
        check_bool(slide=slide)
        self.slide, self.slides = bool(slide), 0
        self.max_new_tokens = _int("max_new_tokens", max_new_tokens, 0)
        self.temperature = _temperature(temperature)
        self.top_k = _int("top_k", top_k, 1, optional=True)
        self.top_p = _top_p(top_p)
        self.rng = np.random.default_rng(_seed(seed))
        max_seq_len = _int("max_seq_len", max_seq_len, 1, optional=True)
        vocab = model.config.vocab_size
        self.vocab_limit = _vocab_limit(vocab_limit, vocab)
        limit = model.config.max_seq_len if max_seq_len is None else min(max_seq_len, model.config.max_seq_len)
        ids = token_ids("prompt", prompt, vocab)
        if ids.size == 0:
            raise ValueError("prompt: expected at least one token id")
        if ids.size > limit:
            raise ValueError(f"prompt: {ids.size} tokens exceed the model's context of {limit} positions")
        self.model, self.prompt = model, ids
        self._one = getattr(model, "decode_one", None)  # models.Architecture's; other graphs: forward_decode
        # greedy over the whole vocabulary: runs of tokens from the model (Llama's in one kernel call a run)
        whole = self.temperature == 0 and self.vocab_limit == vocab
        self._greedy = getattr(model, "decode_greedy", None) if whole else None
        self.stop_tokens = frozenset(token_ids("stop_tokens", stop_tokens, as_set=True).tolist())
        self._stops = np.asarray(sorted(self.stop_tokens), np.int64)
        self._run: list[int] = []  # tokens of the current greedy run not yet yielded, last first
        self._run_logits: np.ndarray | None = None  # the logits of the run's last token
        self._per_token = 0.0  # seconds a token of the last run
        self.limit = limit
        self.state = DecodeState(batch=1, max_seq_len=min(limit, ids.size + self.max_new_tokens))
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.prefill_seconds = self.decode_seconds = 0.0
        # the auto thread policy (qorus_jit.core.threads), the load seen before the first token
        self.tuner = ThreadTuner(sample_units=4, look_first=0.05)

    def _logits(self, ids: np.ndarray) -> np.ndarray:
        out = self.model.forward_decode(ids[None], state=self.state, last_only=True)
        self.state.advance(ids.size)
        return out[0, -1, :self.vocab_limit]  # ids past the limit are never picked

    def __next__(self) -> int:
        if self.finish_reason is not None:
            raise StopIteration
        if len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
            self.tuner.close()
            raise StopIteration
        try:  # a decoding step (not the prefill, nor a slide) runs at the count the auto thread policy chose
            if self.tuner.active and 0 < self.state.pos < self.limit and not self._run:
                with self.tuner.unit() as units:
                    tok = self._next_token()
                    units[0] = len(self._run) + 1  # a greedy run: its tokens share the time
                    return tok
            return self._next_token()
        finally:
            if self.finish_reason is not None:
                self.tuner.close()

    def __del__(self):
        tuner = getattr(self, "tuner", None)
        if tuner is not None:  # a generation left unfinished: the thread count as it was
            try:
                tuner.close()
            except Exception:  # noqa: S110 - at interpreter exit numba may be gone already
                pass

    def _next_token(self) -> int:
        t0 = time.perf_counter()
        tok = None
        if not self._run and self._greedy is not None and 0 < self.state.pos < self.limit:
            self._start_run()
        if self._run:  # the next token of a greedy run: only its last logits can be non-finite (the run ends there)
            tok = self._run.pop()
            logits = None if self._run else self._run_logits
        elif self.state.pos == 0:
            logits = self._logits(self.prompt)
            self.prefill_seconds = time.perf_counter() - t0
        elif self.state.pos >= self.limit:
            if not self.slide:
                self.finish_reason = "context"
                raise StopIteration
            # the context is full: prefill its last half again from position 0 (positions are absolute)
            seq = np.concatenate([self.prompt, np.asarray(self.tokens, np.int64)])
            self.state = DecodeState(batch=1, max_seq_len=self.limit)
            self.slides += 1
            logits = self._logits(seq[-max(1, self.limit // 2):])
        elif self._one is not None:  # the model's one-token step: no array checks between two tokens
            logits = self._one(self.tokens[-1], self.state)[:self.vocab_limit]
        else:
            logits = self._logits(np.asarray([self.tokens[-1]], np.int64))
        try:
            if tok is None:
                tok = _sample(logits, self.rng, self.temperature, self.top_k, self.top_p,
                              f"new token {len(self.tokens) + 1} (position {self.state.pos})")
            elif logits is not None and not math.isfinite(logits[tok]):  # then not every logit is finite (_sample)
                check_logits(logits, f"new token {len(self.tokens) + 1} (position {self.state.pos})")
        except ValueError:
            self.finish_reason = "error"
            raise
        if self.state.pos > self.prompt.size:
            self.decode_seconds += time.perf_counter() - t0
        self.tokens.append(tok)
        if tok in self.stop_tokens:
            self.finish_reason = "stop"
        elif len(self.tokens) == self.max_new_tokens:
            self.finish_reason = "length"
        return tok

    def _start_run(self) -> None:
        """A greedy run of tokens after the last one: as many as take about RUN_SECONDS at the last run's speed
        (one at first), within max_new_tokens and the context; it ends early at a stop token."""
        n = 1 if self._per_token <= 0 else max(1, min(MAX_RUN, int(RUN_SECONDS / self._per_token)))
        n = min(n, self.max_new_tokens - len(self.tokens), self.limit - self.state.pos)
        t0 = time.perf_counter()
        toks, self._run_logits = self._greedy(self.tokens[-1], self.state, n, self._stops)
        self._per_token = (time.perf_counter() - t0) / len(toks)
        self._run = toks.tolist()[::-1]

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second of the prefill (0.0 before it ran)."""
        return self.prompt.size / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second after the first (which the prefill yields); 0.0 before any decoding."""
        n = max(len(self.tokens) - 1, 0)  # the first new token comes from the prefill
        return n / self.decode_seconds if self.decode_seconds else 0.0


def generate(model, prompt: Iterable[int], max_new_tokens: int = 128, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_tokens: Iterable[int] = (), max_seq_len: int | None = None,
             vocab_limit: int | None = None, slide: bool = True) -> Generation:
    """Token ids generated after ``prompt`` by ``model``, as an iterator (see :class:`Generation`)."""
    return Generation(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, max_seq_len,
                      vocab_limit, slide)


def check_tokenizer(tokenizer) -> None:
    """``tokenizer`` must turn text into ids and back: an object with ``encode`` and ``decode`` methods (a
    :func:`~qorus_jit.tokenizers.load_tokenizer` tokenizer, not its spec); else a TypeError."""
    methods = all(callable(getattr(tokenizer, m, None)) for m in ("encode", "decode"))
    if isinstance(tokenizer, (str, bytes)) or not methods:
        hint = " (load it first: qorus_jit.tokenizers.load_tokenizer)" if isinstance(tokenizer, str) else ""
        raise TypeError(f"tokenizer: expected a tokenizer with encode and decode methods, got {_kind(tokenizer)}"
                        f"{hint}")


def _prompt_text(prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {_kind(prompt)}")
    return prompt


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 128, **kw) -> str:
    """The prompt and its continuation as text: :func:`generate` on ``tokenizer.encode(prompt)``, never
    picking an id the tokenizer cannot decode (``vocab_limit``: its size, unless given)."""
    check_model(model)
    check_tokenizer(tokenizer)
    kw.setdefault("vocab_limit", _tokenizer_limit(tokenizer, model))
    ids = tokenizer.encode(_prompt_text(prompt))
    return prompt + tokenizer.decode(list(generate(model, ids, max_new_tokens, **kw)))


def sample_tokens(model, ids, n: int, max_len: int, temperature: float, rng,
                  vocab_limit: int | None = None) -> np.ndarray:
    """``n`` new token ids after ``ids`` (at least one) by temperature sampling (greedy at 0), each from a
    full forward over the last ``max_len`` tokens: unlike :func:`generate`, which decodes from a KV cache up
    to the model's context, it slides a window and so goes on past the context. ``vocab_limit`` and
    non-finite logits as in :class:`Generation`."""
    check_model(model)
    vocab = model.config.vocab_size
    arr = token_ids("ids", ids, vocab)
    n = _int("n", n, 0)
    max_len = _int("max_len", max_len, 1)
    temperature = _temperature(temperature)
    limit = _vocab_limit(vocab_limit, vocab)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got {_kind(rng)}")
    if arr.size == 0:
        raise ValueError("ids: expected at least one token to start from")
    seq = arr.tolist()
    out = []
    for step in range(n):
        window = np.asarray(seq[-max_len:], np.int64)[None]
        logits = model.forward(window)[0, -1, :limit]
        tok = _sample(logits, rng, temperature, None, None, f"new token {step + 1} (position {len(seq)})")
        seq.append(tok)
        out.append(tok)
    return np.asarray(out, np.int64)


def sample_text(model, tokenizer, prompt: str, n_tokens: int, temperature: float = 0.8, seed: int | None = 0) -> str:
    """The prompt and ``n_tokens`` sampled after it by :func:`sample_tokens` over the model's context (token
    0 starts an empty prompt), never picking an id the tokenizer cannot decode: the sample ``qorus train``
    prints at the end of a run."""
    check_model(model)
    check_tokenizer(tokenizer)
    n_tokens = _int("n_tokens", n_tokens, 0)
    limit = _tokenizer_limit(tokenizer, model)
    ids = tokenizer.encode(prompt) if _prompt_text(prompt) else np.zeros(1, np.int64)
    out = sample_tokens(model, np.asarray(ids, np.int64), n_tokens, model.config.max_seq_len, temperature,
                        np.random.default_rng(_seed(seed)), vocab_limit=limit)
    return prompt + tokenizer.decode(out)
