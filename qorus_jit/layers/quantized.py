"""Linear layers with bf16 or int8 (q8_0) weights, for inference: decoding reads every weight once a token, so
fewer bytes a weight is a faster token.

Formats (docs/formats.md, "Quantized folders"): ``bf16`` keeps the upper 16 bits of each float32 weight after
round-to-nearest-even (``w16``, uint16 ``(out, in)``); ``q8_0`` (ggml's Q8_0) keeps int8 ``qs (out, in)`` and
one scale a group of 32 inputs, ``d (out, in // 32)`` (float32 values exact in float16): weight
``qs[o, i] * d[o, i // 32]``. Activations stay float32. The kernels are ``kernels.quant``'s.

:class:`QuantizedLinear` holds the quantized weight (not a parameter: :meth:`QuantizedLinear.quantized_tensors`
lists it) and a frozen float32 bias; it does not train (backward raises). :func:`quantize_layers` swaps
chosen layers of a model for it; ``models.quantize.quantize_model`` picks those of a Llama or GPT-2.
"""

from __future__ import annotations

import numpy as np

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.check import check_choice, check_index
from qorus_jit.kernels import quant as _quant
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import LAZY_BYTES, Layer, check_input, named_layers, replace_child

#: The ``dtype`` names the user gives (``load_pretrained``, ``qorus generate --dtype``) -> weight format
#: (None: plain float32 layers).
DTYPES = {"fp32": None, "bf16": "bf16", "int8": "q8_0"}
#: The weight formats of :class:`QuantizedLinear`.
FORMATS = ("bf16", "q8_0")
#: q8_0 quantizes groups of this many inputs, one scale each.
GROUP = 32


def weight_format(dtype: str) -> str | None:
    """The weight format of a ``dtype`` name ("fp32" -> None, "bf16" -> "bf16", "int8" or "q8_0" -> "q8_0");
    a ValueError naming ``dtype`` otherwise."""
    if dtype == "q8_0":
        return "q8_0"
    check_choice("dtype", dtype, tuple(DTYPES))
    return DTYPES[dtype]


def check_quantizable(name: str, in_features: int) -> None:
    """The quantized kernels take ``in_features`` a multiple of :data:`GROUP` (q8_0's groups; bf16's kernels
    read rows in blocks of as many): a ValueError naming the layer otherwise."""
    if in_features % GROUP:
        raise ValueError(f"{name or 'layer'}: in_features = {in_features} is not a multiple of {GROUP}, which "
                         "the bf16 and int8 (q8_0) kernels need; this model stays fp32")


def quantize_weight(weight: np.ndarray, fmt: str, name: str = "") -> dict[str, np.ndarray]:
    """A float32 ``(out, in)`` weight in format ``fmt``: ``{"w16": ...}`` (bf16) or ``{"qs": ..., "d": ...}``."""
    check_choice("fmt", fmt, FORMATS)
    check_quantizable(name, weight.shape[1])
    if fmt == "bf16":
        return {"w16": _quant.quantize_bf16(weight)}
    qs, d = _quant.quantize_q8_0(weight)
    return {"qs": qs, "d": d}


class QuantizedLinear(Layer):
    """``y = x @ W.T + bias`` with ``W`` held in ``weight_format`` ("bf16": ``w16``; "q8_0": ``qs`` and ``d``,
    see the module's docstring), for inference only. ``bias`` (float32 ``(out,)`` or None) is a parameter,
    frozen; the weight is no parameter: :meth:`quantized_tensors` lists it, :meth:`dequantized` gives it back
    in float32. ``name`` (the dotted name in its model) is what errors call the layer.

    Several rows (a prompt's prefill) go through ``kernels.quant.linear_*`` (BLAS on dequantized tiles, float32
    activations); one row (decoding a token) through ``matvec_*``, which reads the small weight straight (q8_0's
    is an integer dot: the activations quantized per group of 32, as ggml does). ``backward`` raises: quantized
    layers do not train (fine-tune the float32 model, then quantize)."""

    rowwise = True

    def __init__(self, weight_format: str, *, w16=None, qs=None, d=None, bias=None, name: str = ""):
        super().__init__()
        check_choice("weight_format", weight_format, FORMATS)
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        self.weight_format, self.name = weight_format, name
        if weight_format == "bf16":
            if qs is not None or d is not None:
                raise ValueError("qs, d: a bf16 layer holds w16 alone")
            self.w16 = _matrix("w16", w16, np.uint16)
            self.qs = self.d = None
            self.out_features, self.in_features = self.w16.shape
            check_quantizable(name, self.in_features)
        else:
            if w16 is not None:
                raise ValueError("w16: a q8_0 layer holds qs and d")
            self.qs = _matrix("qs", qs, np.int8)
            self.d = _matrix("d", d, np.float32)
            self.w16 = None
            self.out_features, self.in_features = self.qs.shape
            check_quantizable(name, self.in_features)
            want = (self.out_features, self.in_features // GROUP)
            if self.d.shape != want:
                raise ValueError(f"d: expected shape {want} (one scale a group of {GROUP} of qs's {self.qs.shape}), "
                                 f"got {self.d.shape}")
        self.bias = None
        if bias is not None:
            self.bias = self.add_parameter("bias", bias, decay=False)
            if self.bias.shape != (self.out_features,):
                raise ValueError(f"bias: expected shape ({self.out_features},), got {self.bias.shape}")
            self.set_trainable(False)

    @classmethod
    def from_linear(cls, linear, dtype: str, name: str = "") -> QuantizedLinear:
        """``linear`` (a :class:`~qorus_jit.layers.Linear`) with its weight quantized to ``dtype`` ("bf16",
        "int8" / "q8_0"); the bias is copied. The Linear is left as it was."""
        from qorus_jit.layers.linear import Linear

        if type(linear) is not Linear:  # a LoRALinear is a Linear's subclass in spirit: merge it first
            raise TypeError(f"linear: expected a Linear, got {type(linear).__name__}"
                            + (" (merge its adapters first: merge_lora)" if hasattr(linear, "lora_A") else ""))
        return cls.from_weight(linear.weight, linear.bias, dtype, name)

    @classmethod
    def from_weight(cls, weight, bias, dtype: str, name: str = "") -> QuantizedLinear:
        """A layer of ``weight (out, in)`` (float32) and ``bias`` (or None) quantized to ``dtype``."""
        fmt = weight_format(dtype)
        if fmt is None:
            raise ValueError("dtype: expected 'bf16' or 'int8' for a quantized layer, got 'fp32'")
        weight = np.ascontiguousarray(weight, np.float32)
        if weight.ndim != 2:
            raise ValueError(f"weight: expected a matrix (out, in), got shape {weight.shape}")
        return cls(fmt, **quantize_weight(weight, fmt, name), bias=bias, name=name)

    # -- what it holds

    def quantized_tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The weight as stored, by name: ``{prefix + "weight": w16}`` (bf16) or ``{prefix + "weight.qs": qs,
        prefix + "weight.d": d}`` (q8_0), the names of a quantized folder."""
        if self.weight_format == "bf16":
            return {prefix + "weight": self.w16}
        return {prefix + "weight.qs": self.qs, prefix + "weight.d": self.d}

    def dequantized(self) -> np.ndarray:
        """The weight in float32 ``(out, in)``, a new array (exactly what the kernels multiply by)."""
        if self.weight_format == "bf16":
            return _quant.dequantize_bf16(self.w16)
        return _quant.dequantize_q8_0(self.qs, self.d)

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the quantized weight (scales included)."""
        return sum(a.nbytes for a in self.quantized_tensors().values())

    def num_parameters(self) -> int:
        """The weight's elements (quantized, not listed by ``parameters()``) and the bias's."""
        return self.out_features * self.in_features + (0 if self.bias is None else self.out_features)

    # -- the protocol

    def forward(self, x):
        """``x (..., in_features)`` float32 -> ``(..., out_features)`` float32 from the bf16 or q8_0 weight (one row: a
        matrix-vector product over the small weight). Raises ValueError when the last axis is not ``in_features``."""
        check_input("x", x, self.in_features)
        y = self.buffer("y", x.shape[:-1] + (self.out_features,))
        if x.size == self.in_features:  # one row (decoding): a matrix-vector product over the small weight
            y1, x1 = y.reshape(-1), x.reshape(-1)
            if self.weight_format == "bf16":
                K.matvec_bf16(y1, self.w16, x1)
            else:
                K.matvec_q8_0(y1, self.qs, self.d, x1)
            if self.bias is not None:
                y1 += self.bias
        else:
            y2, x2 = y.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
            if self.weight_format == "bf16":
                K.linear_bf16(y2, x2, self.w16, self.bias)
            else:
                K.linear_q8_0(y2, x2, self.qs, self.d, self.bias)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Always raises RuntimeError: quantized layers do not train (train or fine-tune the float32 model, then
        quantize it)."""
        where = f" {self.name}" if self.name else ""
        raise RuntimeError(f"QuantizedLinear{where} ({self.weight_format}): backward: quantized layers do not "
                           "train (train or fine-tune the fp32 model, then quantize it)")

    def extra_repr(self) -> str:
        """``in_features, out_features, weight_format, bias``, as ``repr`` shows them."""
        return f"{self.in_features}, {self.out_features}, {self.weight_format}, bias={self.bias is not None}"


class QuantizedEmbedding(Layer):
    """``ids (...) -> (..., dim)``: rows of the quantized table of ``head`` (the :class:`QuantizedLinear` a tied
    LM head became), so a tied model holds its table once, in bf16 or q8_0, for both the lookups and the head.
    Each row comes back in float32 exactly as the head multiplies by it. Inference only (backward raises). The
    head is not a child: its arrays are listed once, by the head."""

    incremental = True  # each position's row from its own id

    def __init__(self, head: QuantizedLinear):
        super().__init__()
        if not isinstance(head, QuantizedLinear):
            raise TypeError(f"head: expected a QuantizedLinear, got {type(head).__name__}")
        self._head = head
        self.num_embeddings, self.dim = head.out_features, head.in_features

    @property
    def head(self) -> QuantizedLinear:
        """The layer whose table this one reads."""
        return self._head

    def forward(self, ids):
        """``ids`` (an integer array, at least one axis, each in ``0..num_embeddings-1``) -> ``(*ids.shape, dim)``
        float32. Raises TypeError for a non-array, ValueError naming the first id out of range."""
        if not isinstance(ids, np.ndarray) or ids.ndim < 1:
            raise TypeError(f"ids: expected an integer numpy array with at least one axis, got {type(ids).__name__}")
        check_index("ids", ids, tuple(f"d{i}" for i in range(ids.ndim)), self.num_embeddings)
        y = self.buffer("y", ids.shape + (self.dim,))
        h, flat = self._head, ids.reshape(-1)
        if h.weight_format == "bf16":
            y.reshape(-1, self.dim).view(np.uint32)[...] = h.w16[flat].astype(np.uint32) << 16
        else:
            y.reshape(-1, self.dim)[...] = (h.qs[flat].reshape(-1, GROUP) * h.d[flat].reshape(-1, 1)).reshape(
                flat.size, self.dim)
        return y

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Always raises RuntimeError: quantized layers do not train (train or fine-tune the float32 model, then
        quantize it)."""
        raise RuntimeError(f"QuantizedEmbedding ({self._head.weight_format}): backward: quantized layers do not "
                           "train (train or fine-tune the fp32 model, then quantize it)")

    def extra_repr(self) -> str:
        """``num_embeddings, dim, format``, as ``repr`` shows them."""
        return f"{self.num_embeddings}, {self.dim}, {self._head.weight_format}"


def share_tied_table(model: Layer) -> bool:
    """Where ``model``'s LM head is a :class:`QuantizedLinear` made from a tied embedding (named ``lm_head``,
    beside an :class:`~qorus_jit.layers.Embedding` the model's config ties to it), put a
    :class:`QuantizedEmbedding` of the head in the embedding's place, dropping its float32 table. Returns
    whether it did."""
    from qorus_jit.layers.embedding import Embedding

    config = getattr(model, "config", None)
    if not getattr(config, "tie_embeddings", False):
        return False
    layers = {dotted: (parent, name, layer) for parent, name, dotted, layer in named_layers(model)}
    head = layers.get("lm_head", (None, None, None))[2]
    tables = [(p, n, c) for p, n, c in layers.values() if type(c) is Embedding and c.num_embeddings == getattr(
        head, "out_features", None) and c.dim == getattr(head, "in_features", None)]
    if not isinstance(head, QuantizedLinear) or not tables:
        return False
    parent, name, table = tables[0]  # the token embedding: the first table the model holds of the head's shape
    replace_child(parent, name, table, QuantizedEmbedding(head))
    return True


def _matrix(name: str, value, dtype) -> np.ndarray:
    """A 2-D C-contiguous array of exactly ``dtype`` (not converted: a wrong dtype is a wrong format)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array of {np.dtype(dtype).name}, got {type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype).name}, got {value.dtype}")
    if value.ndim != 2 or 0 in value.shape:
        raise ValueError(f"{name}: expected a non-empty matrix (out, in), got shape {value.shape}")
    if value.nbytes < LAZY_BYTES or (value.flags.c_contiguous and _alloc.in_weights(value)):
        return np.ascontiguousarray(value)
    out = _alloc.weights(value.shape, dtype)  # on huge pages with the other weights, as decoding streams them
    out[...] = value
    return out


def quantized_layers(model: Layer) -> dict[str, QuantizedLinear]:
    """The :class:`QuantizedLinear` layers of ``model`` by dotted name (``model.layers.0.self_attn.q_proj``)."""
    return {dotted: layer for _, _, dotted, layer in named_layers(model) if isinstance(layer, QuantizedLinear)}


def quantized_tensors(model: Layer) -> dict[str, np.ndarray]:
    """Every quantized weight of ``model`` by the name a quantized folder stores it under
    (:meth:`QuantizedLinear.quantized_tensors`: ``<layer>.weight`` or ``<layer>.weight.qs`` / ``.weight.d``)."""
    out = {}
    for dotted, layer in quantized_layers(model).items():
        out.update(layer.quantized_tensors(f"{dotted}." if dotted else ""))
    return out


def quantize_layers(model: Layer, make) -> int:
    """Replace layers of ``model`` in place: ``make(dotted name, layer)`` returns the new layer or None (keep
    it). Every new layer is made before any is put in, so an error leaves the model as it was. Returns the
    number replaced."""
    swaps = []
    for parent, name, dotted, layer in list(named_layers(model)):
        if any(dotted.startswith(f"{d}.") for _, _, d, _, _ in swaps):
            continue  # under a layer already replaced
        new = make(dotted, layer)
        if new is not None:
            swaps.append((parent, name, dotted, layer, new))
    for parent, name, _, layer, new in swaps:
        replace_child(parent, name, layer, new)
    return len(swaps)
