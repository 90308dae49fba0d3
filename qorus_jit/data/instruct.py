"""Instruction data (:class:`InstructDataset`): JSONL prompt/completion pairs, or chat conversations rendered with
the tokenizer's chat template, whose loss counts the completion (assistant) tokens only (the other positions and
the padding get the ignore index -100)."""

from __future__ import annotations

import json
import re

import numpy as np

from qorus_jit.core.check import check_int, check_positive, check_real
from qorus_jit.core.files import check_file
from qorus_jit.data._state import SeededBatchesState
from qorus_jit.tokenizers import load_tokenizer
from qorus_jit.tokenizers.chat import check_messages

#: The target of a position the loss skips (a prompt token's prediction, padding): CrossEntropyLoss's default.
IGNORE_INDEX = -100


class InstructDataset(SeededBatchesState):
    """Prompt/completion examples or chat conversations as fixed-length ``(x, y)`` rows; the loss counts the
    completion (the assistant messages) only.

    An example is a ``(prompt, completion)`` pair of strings or a ``{"messages": [{"role", "content"}, ...]}``
    dict (roles ``system``, ``user``, ``assistant``; at least one assistant message). A pair's ids are
    ``prompt ids + completion ids (+ the tokenizer's end-of-text id, when it has one)``, the completion's
    counted. A conversation's ids are those of its text rendered with the tokenizer's chat template (as
    transformers' ``apply_chat_template(messages, tokenize=True)`` gives them; only a tokenizer read from a
    Hugging Face folder with a template has one), the tokens of each assistant message counted: its content
    and what the template puts after it (the end-of-turn token), found as the difference between the
    conversation rendered through the message and rendered before it with the generation prompt.

    The ids are cut to ``seq_len + 1`` tokens; ``x = ids[:-1]`` and ``y = ids[1:]`` (the next token), with
    ``y`` set to :data:`IGNORE_INDEX` where the next token is not counted, and both padded to ``seq_len``
    (``x`` with the end-of-text id or 0, ``y`` with :data:`IGNORE_INDEX`). An example whose window holds no
    counted token to predict (a prompt of ``seq_len`` tokens or more) is dropped.

    The last ``val_fraction`` of the examples (rounded down, at least one) are held out for validation.
    :meth:`train_batch` draws training examples uniformly with ``np.random.default_rng(seed)``;
    :meth:`val_batches` returns the same batches on every call; :meth:`state_dict` / :meth:`load_state_dict`
    save and restore the random state. ``n_train`` / ``n_val`` count tokens (as
    :class:`~qorus_jit.data.TextDataset`'s do); ``n_train_examples`` / ``n_val_examples`` count examples.

    Example::

        >>> ds = InstructDataset([("Q: 1+1? A:", " 2")] * 10, "byte", seq_len=16, val_fraction=0.2)
        >>> x, y = ds.train_batch(2)
        >>> x.shape, int((y[0] != -100).sum())  # the 2 completion bytes (the byte tokenizer has no end id)
        ((2, 16), 2)
    """

    def __init__(self, examples, tokenizer, seq_len: int, val_fraction: float = 0.1, seed: int = 0):
        tok = load_tokenizer(tokenizer, "tokenizer")
        check_positive(seq_len=seq_len)
        check_real("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int(seed=seed)
        if seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed}")
        examples = list(examples)
        self.end_id = end_of_text_id(tok)
        self.pad_id = 0 if self.end_id is None else self.end_id
        self.seq_len, self.seed, self.val_fraction = int(seq_len), int(seed), float(val_fraction)
        pieces, counted, dropped = [], [], 0
        for i, ex in enumerate(examples):
            ids, keep = _example_ids(tok, ex, f"examples[{i}]", self.end_id)
            ids, keep = ids[:self.seq_len + 1], keep[:self.seq_len + 1]
            if not keep[1:].any():  # no counted token to predict inside the window
                dropped += 1
                continue
            pieces.append(ids.astype(np.int32))
            counted.append(keep)
        n = len(pieces)
        if n < 2:
            raise ValueError(f"examples: expected at least 2 examples with a completion token within seq_len = "
                             f"{self.seq_len} (one to train on, one to validate), got {n}"
                             + (f" ({dropped} dropped: their prompt fills the window)" if dropped else ""))
        self.n_val_examples = max(1, int(n * self.val_fraction))
        self.n_train_examples = n - self.n_val_examples
        self.n_dropped = dropped
        self.vocab_size = int(tok.vocab_size)
        self.ids = np.concatenate(pieces)
        self.starts = np.zeros(n + 1, np.int64)
        self.starts[1:] = np.cumsum([len(q) for q in pieces])
        self.counted = np.concatenate(counted)  # per token of ids: is it a target the loss counts
        lens = np.diff(self.starts) - 1  # (x, y) positions of each example
        self.n_train = int(lens[:self.n_train_examples].sum())
        self.n_val = int(lens[self.n_train_examples:].sum())
        self.batches_drawn = 0
        self.source: dict = {"tokenizer": tok.name, "tokenizer_sha256": tok.fingerprint}
        self._rng = np.random.default_rng(self.seed)

    @classmethod
    def from_jsonl(cls, path, tokenizer, seq_len: int, val_fraction: float = 0.1, seed: int = 0) -> InstructDataset:
        """Read a UTF-8 JSONL file of ``{"prompt": str, "completion": str}`` or ``{"messages": [...]}`` objects,
        one a line, the two forms mixed as needed (blank lines skipped; other keys ignored). Every line is
        checked first: a bad one (a conversation when the tokenizer has no chat template, or one its template
        cannot render) is a ValueError naming the file and its line number."""
        p = check_file("path", path)
        examples, lines = _read_jsonl(p)
        try:
            ds = cls(examples, tokenizer, seq_len, val_fraction, seed)
        except ValueError as e:
            msg = str(e)
            m = re.match(r"examples\[(\d+)\]: ", msg)
            if m:
                raise ValueError(f"{p}, line {lines[int(m.group(1))]}: {msg[m.end():]}") from None
            if not msg.startswith("examples: "):
                raise
            raise ValueError(f"path: {p}: {msg[len('examples: '):]}") from None
        ds.source = {"jsonl_file": str(p), **ds.source}
        return ds

    # -- batches

    @property
    def n_tokens(self) -> int:
        """Tokens of the training and validation examples together (``n_train + n_val``)."""
        return self.n_train + self.n_val

    @property
    def n_val_windows(self) -> int:
        """Number of distinct validation rows (examples) :meth:`val_batches` can hand out."""
        return self.n_val_examples

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        B, T = len(rows), self.seq_len
        x = np.full((B, T), self.pad_id, np.int32)
        y = np.full((B, T), IGNORE_INDEX, np.int32)
        for b, r in enumerate(rows):
            ids = self.ids[self.starts[r]:self.starts[r + 1]]
            keep = self.counted[self.starts[r] + 1:self.starts[r + 1]]
            m = len(ids) - 1
            x[b, :m] = ids[:-1]
            y[b, :m] = np.where(keep, ids[1:], IGNORE_INDEX)  # predictions of prompt tokens are not counted
        return x, y

    def train_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)``, each ``(batch_size, seq_len)`` C-contiguous int32, from random training examples."""
        check_positive(batch_size=batch_size)
        rows = self._rng.integers(0, self.n_train_examples, size=int(batch_size), dtype=np.int64)
        self.batches_drawn += 1
        return self._gather(rows)

    def val_batches(self, batch_size: int, n_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``n_batches`` batches ``(x, y)`` of ``(batch_size, seq_len)`` int32 of evenly spaced validation
        examples (distinct; at most :attr:`n_val_windows` of them), the same on every call."""
        check_positive(batch_size=batch_size, n_batches=n_batches)
        total = int(batch_size) * int(n_batches)
        if total > self.n_val_examples:
            raise ValueError(f"batch_size * n_batches: expected at most {self.n_val_examples} (the validation "
                             f"examples), got {batch_size} * {n_batches} = {total}")
        rows = self.n_train_examples + np.linspace(0, self.n_val_examples - 1, total).round().astype(np.int64)
        return [self._gather(r) for r in rows.reshape(int(n_batches), int(batch_size))]

    # -- state (state_dict, load_state_dict: SeededBatchesState) and record

    @property
    def info(self) -> dict:
        """Sizes and source of the dataset, as plain JSON types (for a run's record)."""
        return {"n_tokens": self.n_tokens, "n_train": self.n_train, "n_val": self.n_val,
                "n_train_examples": self.n_train_examples, "n_val_examples": self.n_val_examples,
                "n_dropped": self.n_dropped, "seq_len": self.seq_len, "val_fraction": self.val_fraction,
                "seed": self.seed, "vocab_size": self.vocab_size, **self.source}

    def __repr__(self) -> str:
        return (f"InstructDataset(n_train_examples={self.n_train_examples}, n_val_examples={self.n_val_examples}, "
                f"seq_len={self.seq_len}, seed={self.seed})")


def read_jsonl(path) -> list:
    """The examples of a JSONL file: ``(prompt, completion)`` pairs and ``{"messages": [...]}`` dicts (roles and
    contents checked); a bad line is a ValueError naming the file and line."""
    return _read_jsonl(path)[0]


def _read_jsonl(path) -> tuple[list, list[int]]:
    """The examples of a JSONL file and the line number of each."""
    p = check_file("path", path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"path: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    out, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{p}, line {n}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p}, line {n}: expected a JSON object with string \"prompt\" and \"completion\" "
                             f"(or a \"messages\" list), got {type(obj).__name__}")
        if "messages" in obj:
            out.append({"messages": check_messages(f"{p}, line {n}", obj["messages"])})
        else:
            for key in ("prompt", "completion"):
                if not isinstance(obj.get(key), str):
                    got = "nothing" if key not in obj else type(obj[key]).__name__
                    raise ValueError(f"{p}, line {n}: expected a string \"{key}\", got {got} (or a \"messages\" "
                                     "list instead of prompt and completion)")
            out.append((obj["prompt"], obj["completion"]))
        lines.append(n)
    if not out:
        raise ValueError(f"path: {p} holds no examples (expected one JSON object a line)")
    return out, lines


def _example_ids(tok, ex, name: str, end_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, counted)`` of one example: its int32 token ids and whether each is a token the loss counts."""
    if isinstance(ex, dict) and "messages" in ex:
        messages = check_messages(name, ex["messages"])
        if getattr(tok, "chat_template", None) is None:
            raise ValueError(f"{name}: the tokenizer ({tok.name}) has no chat template, which a \"messages\" "
                             "conversation needs (a Hugging Face tokenizer folder keeps it in tokenizer_config.json "
                             "or chat_template.jinja); prompt/completion lines work with any tokenizer")
        try:
            ids, counted = tok.encode_chat(messages)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return ids.astype(np.int32), counted
    if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and all(isinstance(s, str) for s in ex)):
        raise TypeError(f"{name}: expected a (prompt, completion) pair of strings or a {{\"messages\": [...]}} "
                        f"dict, got {ex!r:.80}")
    p, c = _encode(tok, ex[0], True), _encode(tok, ex[1], False)
    ids = np.concatenate([p, c] + ([np.array([end_id], np.int32)] if end_id is not None else []))
    counted = np.arange(len(ids)) >= len(p)
    return ids, counted


def end_of_text_id(tok) -> int | None:
    """The tokenizer's end-of-text id: llama2.c's EOS, a BPE's ``eos_token`` (from its tokenizer_config.json),
    ``<|endoftext|>`` or ``</s>``, else None."""
    eos = getattr(tok, "eos_id", None)
    if isinstance(eos, int):
        return eos
    inner = getattr(tok, "tokenizer", None)
    if inner is not None and hasattr(inner, "token_to_id"):
        named = (getattr(tok, "special_tokens", None) or {}).get("eos_token")
        for name in ([named] if named else []) + ["<|endoftext|>", "</s>"]:
            i = inner.token_to_id(name)
            if i is not None:
                return int(i)
    return None


def _encode(tok, text: str, first: bool) -> np.ndarray:
    """``text``'s ids; llama2.c's tokenizer puts its BOS before the prompt only."""
    if getattr(tok, "eos_id", None) is not None:
        return np.asarray(tok.encode(text, bos=first), np.int32)
    return np.asarray(tok.encode(text), np.int32)
