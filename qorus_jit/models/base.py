"""What the architectures of the model library share: the config base class and its field checks, the
``config.json`` helpers, the Hugging Face activation names, and :class:`Architecture`, the interface of a
model class that the registry (``models/registry.py``) lists.

An architecture's module (``models/llama.py``, ...) holds its config dataclass (a :class:`Config`, which
maps to and from the ``config.json`` of its ``transformers`` counterpart) and its model class (an
:class:`Architecture`, which names the checkpoint's tensors and their shapes and converts them to the
model's parameters and back).
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from typing import Any, ClassVar

import numpy as np

from qorus_jit.core.alloc import check_fits
from qorus_jit.core.check import check_fields, check_index
from qorus_jit.kernels.decode import one_row_float32
from qorus_jit.layers import DecodeState, Graph, Linear
from qorus_jit.layers.base import check_input, named_layers, structure_version
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.layers.quantized import quantized_layers

#: Feed-forward kind (``layers.FeedForward``) of each activation name a ``config.json`` may give (GPT-2's
#: ``activation_function``, BERT's ``hidden_act``): ``gelu`` is exact (erf); ``gelu_new`` and
#: ``gelu_pytorch_tanh`` are the tanh approximation.
HF_ACTIVATIONS: dict[str, str] = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                                  "relu": "relu"}


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel = 3


def _brief(value) -> str:
    """``repr(value)`` cut short (long strings, big or deeply nested containers): error messages stay one
    short line whatever a config file holds."""
    return _REPR.repr(value)


def _check_int(cls_name: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls_name}.{name}: expected an int >= {minimum}, got {_brief(value)}")


def _check_float(cls_name: str, name: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{cls_name}.{name}: expected a finite float > 0, got {_brief(value)}")


def _check_bool(cls_name: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{cls_name}.{name}: expected a bool, got {_brief(value)}")


def _check_choice(cls_name: str, name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{cls_name}.{name}: expected one of {', '.join(choices)}, got {_brief(value)}")


def _hf_get(hf: dict, key: str, what: str, default=dataclasses.MISSING):
    """``hf[key]``, or ``default`` when it is absent or null; a required key raises a ValueError naming it."""
    if not isinstance(hf, dict):
        raise ValueError(f"{what} config: expected a dict (the parsed config.json), got {type(hf).__name__}")
    if key in hf and hf[key] is not None:
        return hf[key]
    if default is dataclasses.MISSING:
        raise ValueError(f"{what} config.json: missing required key {key!r} (absent or null)")
    return default


def _hf_reject(hf: dict, what: str, key: str, allowed) -> None:
    """Raise if ``hf[key]`` is present and not in ``allowed`` (a setting these configs cannot express)."""
    if key in hf and hf[key] not in allowed:
        raise ValueError(f"{what} config.json: {key}={_brief(hf[key])} is not supported (expected {allowed[0]!r})")


class Config:
    """Base of the config dataclasses: ``to_dict``/``from_dict``, field checks, and the ``config.json`` names.

    A subclass is a frozen, keyword-only dataclass that checks itself on construction (a ``ValueError``
    naming the field) and implements ``from_hf`` / ``to_hf``. ``from_hf`` rejects settings that would
    change the computation in a way the config cannot express, so a config that parses describes the
    checkpoint exactly.
    """

    _what: ClassVar[str] = ""  #: the architecture's name in error messages ("Llama", "GPT-2", ...)
    hf_architecture: ClassVar[str] = ""  #: the ``architectures`` entry of its config.json
    hf_model_type: ClassVar[str] = ""  #: the ``model_type`` of its config.json
    #: The ``config.json`` key of every field (``{"n_layers": "num_hidden_layers", ...}``): ``from_hf`` reads
    #: the fields through it, ``to_hf`` writes them, and errors about a config.json name both.
    hf_names: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        """NumPy scalars in the fields become the Python values they hold (``np.int64(16)`` -> ``16``,
        ``np.bool_`` -> ``bool``, which the int and float checks still refuse), so that a config compares,
        prints and saves (JSON) as one made of Python values. A subclass's ``__post_init__`` calls this first,
        then checks the fields."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                object.__setattr__(self, f.name, value.item())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict of fields, as made by :meth:`to_dict`; unknown keys raise a ValueError."""
        check_fields(cls, d, f"{cls.__name__}.from_dict")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf_config: dict):
        """Build from the parsed ``config.json`` of the ``transformers`` counterpart."""
        raise NotImplementedError

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` dict that ``transformers`` loads as the counterpart of this shape."""
        raise NotImplementedError

    @classmethod
    def hf_label(cls, field: str) -> str:
        """A field as errors name it: ``"num_hidden_layers (LlamaConfig.n_layers)"``."""
        return f"{cls.hf_names[field]} ({cls.__name__}.{field})" if field in cls.hf_names else f"{cls.__name__}.{field}"

    @classmethod
    def _from_hf_fields(cls, hf_config: dict, **given):
        """The config of a ``config.json`` dict: each field read from its key in :attr:`hf_names` (absent or
        null: the field's default; a required field raises), ``given`` taking precedence. A bad value raises
        a one-line ValueError naming the key and the field (:meth:`hf_label`)."""
        values = {}
        for f in dataclasses.fields(cls):
            values[f.name] = given[f.name] if f.name in given else _hf_get(hf_config, cls.hf_names[f.name],
                                                                            cls._what, f.default)
        try:
            return cls(**values)
        except ValueError as e:
            # the checks name "LlamaConfig.n_layers"; a config.json's reader wants its key as well
            msg = re.sub(rf"^{cls.__name__}\.(\w+)", lambda m: cls.hf_label(m.group(1)), str(e))
            raise ValueError(f"{cls._what} config.json: {msg}") from None

    def _check_fields(self, ints=(), floats=(), bools=()) -> None:
        name = type(self).__name__
        for f in ints:
            _check_int(name, f, getattr(self, f))
        for f in floats:
            _check_float(name, f, getattr(self, f))
        for f in bools:
            _check_bool(name, f, getattr(self, f))

    def _hf_header(self) -> dict[str, Any]:
        """The ``architectures`` and ``model_type`` entries that begin :meth:`to_hf`."""
        return {"architectures": [self.hf_architecture], "model_type": self.hf_model_type}


def as_array(value):
    """Nested lists or tuples as a numpy array (a model's inputs may be given so); anything else unchanged, for
    the checks to name."""
    return np.asarray(value) if isinstance(value, (list, tuple)) else value


def check_ids(name: str, ids, high: int, *, max_len: int | None = None, shape=None) -> np.ndarray:
    """Integer inputs of a model (token ids, token types): an int32/int64 numpy array of shape ``(B, T)``
    (``shape`` if given), values in ``[0, high)``, at most ``max_len`` positions. Returns it C-contiguous."""
    if not isinstance(ids, np.ndarray) or isinstance(ids, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected an integer numpy array of shape (B, T), got {type(ids).__name__}")
    if ids.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (B, T), got shape {ids.shape}")
    if shape is not None and ids.shape != tuple(shape):
        raise ValueError(f"{name}: expected the shape of ids {tuple(shape)}, got {ids.shape}")
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{name}: expected at most max_seq_len = {max_len} positions, got T = {ids.shape[1]}")
    ids = np.ascontiguousarray(ids)
    check_index(name, ids, ("B", "T"), high)
    return ids


class Architecture(Graph):
    """A model class of the library, built from its config: ``cls(config, rng=None)``.

    The class attributes and static methods describe its checkpoints in the ``transformers`` layout, which
    ``models/registry.py`` uses to check, load and save Hugging Face folders for every architecture alike.
    """

    #: Its config dataclass (a :class:`Config`).
    config_class: ClassVar[type[Config]]
    #: Short name, used by run folders (``run.json``) and ``TrainConfig.arch``.
    arch: ClassVar[str]
    #: Prefix of the base model that some causal-LM checkpoints omit (the original ``gpt2``), or "".
    hf_base_prefix: ClassVar[str] = ""
    #: The embedding table that a tied checkpoint's ``lm_head.weight`` equals, or None.
    hf_embedding: ClassVar[str | None] = None
    #: Regular expressions of non-parameter buffers a checkpoint may hold; recomputed from the config.
    hf_ignored: ClassVar[tuple[str, ...]] = ()
    #: Tensors listed by :meth:`hf_shapes` that a checkpoint may leave out (and the model does not build).
    hf_optional: ClassVar[frozenset[str]] = frozenset()
    #: A regular expression matching the per-layer tensor names, its group 1 the layer index
    #: (``r"model\.layers\.(\d+)\."``): a checkpoint's layers are counted by it.
    hf_layers: ClassVar[str] = ""
    #: The tensor and axis whose length each size field of the config sets, ``{field: (name, axis)}``; the
    #: length is a multiple of the field (``n_kv_heads * head_dim`` rows). Checked against a checkpoint's
    #: shapes before anything is built, so that a wrong size is named by its field.
    hf_sizes: ClassVar[dict[str, tuple[str, int]]] = {}

    config: Config

    # -- the checks at the entry points, so that an error names the model's own argument (not a layer's)

    @classmethod
    def _check_fits(cls, config) -> None:
        """Before building: the parameters of ``config`` and their gradients fit in this machine's memory, else a
        ValueError naming the config's sizes (each layer alone may fit while the whole model does not)."""
        def count(c):
            return sum(math.prod(shape) for shape in cls.hf_shapes(c).values())
        # the per-layer count from one and two layers: no loop over a huge n_layers
        one = count(dataclasses.replace(config, n_layers=1))
        total = one + (config.n_layers - 1) * (count(dataclasses.replace(config, n_layers=2)) - one)
        sizes = {f: getattr(config, f) for f in ("vocab_size", "dim", "hidden_dim", "n_layers")}
        check_fits("parameters and gradients", 2 * total, **sizes)

    def _check_ids(self, ids) -> np.ndarray:
        """``ids (B, T)`` of :meth:`forward`: token ids below ``vocab_size``, at most ``max_seq_len`` of them."""
        return check_ids("ids", ids, self.config.vocab_size, max_len=self.config.max_seq_len)

    def _check_decode(self, ids, state) -> np.ndarray:
        """``ids (B, T)`` and ``state`` of :meth:`forward_decode`: a DecodeState of batch ``B`` with room for
        positions ``state.pos .. state.pos + T - 1``, which must also be below the model's ``max_seq_len``."""
        if not isinstance(state, DecodeState):
            raise TypeError(f"state: expected a DecodeState, got {type(state).__name__}")
        ids = check_ids("ids", ids, self.config.vocab_size)
        B, T = ids.shape
        if B != state.batch:
            raise ValueError(f"state: expected a DecodeState of batch {B} (the batch of ids), got batch {state.batch}")
        pos, end = state.pos, state.pos + T
        span = f"position {pos}" if T == 1 else f"positions {pos}..{end - 1} (state.pos = {pos}, T = {T})"
        if end > self.config.max_seq_len:
            raise ValueError(f"ids: {span} is past the model's max_seq_len = {self.config.max_seq_len}")
        if end > state.max_seq_len:
            raise ValueError(f"state: {span} is past the DecodeState's max_seq_len = {state.max_seq_len}")
        return ids

    def _check_dy(self, dy) -> None:
        """``dy`` of :meth:`backward`: float32, C-contiguous, the shape of the last forward's output."""
        if not self._values:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        check_input("dy", dy)
        want = self._values[self.output].shape
        if dy.shape != want:
            raise ValueError(f"dy: expected the shape of the output {want}, got {dy.shape}")

    def forward(self, ids):
        """``ids (B, T)`` int32/int64 -> the output (logits ``(B, T, vocab_size)`` for a language model)."""
        return super().forward(self._check_ids(ids))

    def forward_decode(self, ids, *, state: DecodeState, last_only: bool = False):
        """:meth:`Graph.forward_decode` of ``ids (B, T)`` at positions ``state.pos ..``, checked first."""
        return super().forward_decode(self._check_decode(ids, state), state=state, last_only=last_only)

    def decode_one(self, tok: int, state: DecodeState) -> np.ndarray:
        """The logits ``(vocab_size,)`` of one new token ``tok`` at ``state.pos`` of a batch-1 ``state``, which is
        then advanced by one: the step of a generation loop. Checked with integer comparisons only, so that the
        Python between two tokens stays short; the array returned may be a buffer that the next call overwrites."""
        self._check_one(tok, state)
        self._read_by_size()
        out = Graph.forward_decode(self, np.full((1, 1), tok, np.int64), state=state, last_only=True)
        state.pos += 1
        return out[0, -1]

    def _read_by_size(self) -> None:
        """Sets every float32 linear layer's and tied head's ``one_row`` (how a one-row product reads W) for this
        model's bytes, as the one-call decoder sets its own (``one_row_float32``): a token reads every weight once,
        so whether W comes from memory depends on the model's size, not on one matrix's. Once per
        ``structure_version``. A GPT-2 small token on an Intel Xeon with AMX took 0.95 of the time on 2 threads and 0.92
        on 1 (docs/design.md, "The layers' one-token product by the model's size")."""
        version = structure_version()
        if getattr(self, "_read_version", None) == version:
            return
        nbytes = sum(p.nbytes for p in self.parameters().values())
        nbytes += sum(layer.weight_nbytes for layer in quantized_layers(self).values())
        rows = one_row_float32(nbytes)
        for _, _, _, layer in named_layers(self):
            if isinstance(layer, (Linear, TiedLMHead)):
                layer.one_row = rows
        self._read_version = version

    def decode_argmax(self, tok: int, state: DecodeState) -> tuple[int, np.ndarray]:
        """:meth:`decode_one`'s logits and their argmax as NumPy's (the first NaN, else the first maximum), as
        ``(argmax, logits)``: the step of greedy generation."""
        logits = self.decode_one(tok, state)
        return int(logits.argmax()), logits

    def decode_greedy(self, tok: int, state: DecodeState, n: int, stop_tokens=()) -> tuple[np.ndarray, np.ndarray]:
        """Greedy decoding from one new token ``tok`` at ``state.pos``: up to ``n`` tokens, each the argmax (as
        :meth:`decode_argmax`'s) of the logits of the one before, ``state`` advanced by each. The run stops after
        an id in ``stop_tokens`` (int ids) and after an argmax whose logit is not finite (NaN or inf, which the
        caller reports). Returns ``(tokens, logits)``: the int64 ids generated (at least one) and the logits of
        the last step. Llama runs it in one kernel call: no Python between the tokens."""
        stops = self._check_greedy(tok, state, n, stop_tokens)
        toks = []
        for _ in range(n):
            tok, logits = self.decode_argmax(tok, state)
            toks.append(tok)
            if tok in stops or not math.isfinite(logits[tok]):
                break
        return np.asarray(toks, np.int64), logits

    def _check_greedy(self, tok, state, n, stop_tokens) -> np.ndarray:
        """:meth:`decode_greedy`'s arguments (those of :meth:`decode_one`, and room in the cache for ``n``
        positions); returns the stop ids as int64."""
        self._check_one(tok, state)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected an int >= 1, got {n!r}")
        room = min(self.config.max_seq_len, state.max_seq_len) - state.pos
        if n > room:
            raise ValueError(f"n: {n} tokens from position {state.pos} would pass the context ({room} positions "
                             f"left)")
        stops = np.asarray(stop_tokens, np.int64).reshape(-1) if len(stop_tokens) else np.zeros(0, np.int64)
        return stops

    def _check_one(self, tok, state) -> None:
        """``tok`` and ``state`` of :meth:`decode_one`, as :meth:`_check_decode` checks ``ids (1, 1)``."""
        if not isinstance(state, DecodeState):
            raise TypeError(f"state: expected a DecodeState, got {type(state).__name__}")
        V = self.config.vocab_size
        if not isinstance(tok, (int, np.integer)) or isinstance(tok, bool) or not 0 <= tok < V:
            raise ValueError(f"tok: expected a token id, an int in [0, {V}), got {tok!r}")
        if state.batch != 1:
            raise ValueError(f"state: expected a DecodeState of batch 1, got batch {state.batch}")
        if state.pos >= self.config.max_seq_len or state.pos >= state.max_seq_len:
            raise ValueError(f"state: position {state.pos} is past the model's max_seq_len = {self.config.max_seq_len} "
                             f"or the DecodeState's = {state.max_seq_len}")

    def backward(self, dy):
        """Accumulates the gradient of every parameter not frozen from ``dy`` (the output's shape); the inputs
        are integers, so nothing is returned."""
        self._check_dy(dy)
        super().backward(dy)

    @staticmethod
    def hf_shapes(config) -> dict[str, tuple[int, ...]]:
        """Every tensor name of a checkpoint of ``config`` and its shape, in the ``transformers`` layout."""
        raise NotImplementedError

    @classmethod
    def from_hf_tensors(cls, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked checkpoint tensors (:func:`~qorus_jit.models.registry.check_tensors`) to the model's
        parameters: the optional tensors the model does not build are dropped."""
        return {k: v for k, v in tensors.items() if k not in cls.hf_optional}

    @classmethod
    def to_hf_tensors(cls, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's parameters to checkpoint tensors (the inverse of :meth:`from_hf_tensors`)."""
        return dict(params)
