"""LoRA adapters (``y = base(x) + alpha / r * (dropout(x) @ A.T) @ B.T``) over a frozen :class:`Linear`, in
PEFT's format.

:func:`apply_lora` swaps the named ``Linear`` children of a model (Llama's ``q_proj`` ... ``down_proj``) for
:class:`LoRALinear` and freezes everything else, so the optimizers update only the adapters and backward
computes no gradient of the frozen weights (see ``layers.base``). The optional ``dropout`` on the adapter input
applies in training mode only (``model.train()``; masks seeded by ``model.seed_dropout(...)``);
:func:`merge_lora` folds them back into plain ``Linear`` layers. :func:`save_lora` / :func:`load_lora` write and
read a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) that ``peft.PeftModel`` loads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qorus_jit.core.check import check_int, check_positive_float, check_real, check_rng
from qorus_jit.core.files import atomic_write, atomic_write_json, check_path, read_json
from qorus_jit.kernels import trusted as K
from qorus_jit.layers.base import Layer, check_input
from qorus_jit.layers.base import named_layers as _layers
from qorus_jit.layers.base import replace_child as _replace_child
from qorus_jit.layers.linear import Linear

#: LoRA target names (as ``--lora-targets`` takes them) -> the end of the dotted name of the layer each adapts,
#: per architecture (Hugging Face naming; GPT-2's c_proj is both the attention output and the MLP down layer).
TARGETS = {
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
}

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: PEFT names a tensor by the wrapped model's name behind this prefix (the adapter name "default" left out).
PEFT_PREFIX = "base_model.model."


class LoRALinear(Layer):
    """A frozen :class:`Linear` ``base`` plus a trainable low-rank update: ``lora_A.weight (r, in)`` initialised
    as PEFT does (kaiming-uniform with ``a=sqrt(5)``: uniform in ``+-1/sqrt(in)``) and ``lora_B.weight
    (out, r)`` zeros, so the layer starts equal to ``base``. The base weight and bias keep their names
    (``weight``, ``bias``) and get no gradient; backward runs the base's backward (``dx`` alone, its
    parameters frozen) and adds the adapter's part through the linear kernels.

    ``dropout`` (PEFT's ``lora_dropout``, ``0 <= p < 1``): in training mode (:meth:`Layer.train`) the adapter
    reads ``dropout(x)``, each element zeroed with probability ``p`` and the others scaled by ``1 / (1 - p)``:
    ``y = base(x) + alpha / r * B(A(dropout(x)))``; the mask comes from :meth:`Layer.dropout_rng` and backward
    uses the same one. In evaluation mode (the default) and in ``forward_decode`` nothing is dropped."""

    rowwise = True
    backward_variants = frozenset({"out", "accumulate"})

    def __init__(self, base: Linear, rank: int = 8, alpha: float = 16.0, rng=None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"base: expected a Linear, got {type(base).__name__}")
        check_int(rank=rank)
        check_positive_float(alpha=alpha)
        dropout = check_dropout(dropout)
        if not 1 <= rank <= min(base.in_features, base.out_features):
            raise ValueError(f"rank: expected 1 <= rank <= min(in_features, out_features) = "
                             f"{min(base.in_features, base.out_features)}, got {rank}")
        rng = check_rng("rng", rng)
        self.base = self.add_child("", base)
        base.set_trainable(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.dropout = dropout
        bound = 1.0 / math.sqrt(self.in_features)
        self.lora_A = self.add_parameter("lora_A.weight", rng.uniform(-bound, bound, (self.rank, self.in_features)))
        self.lora_B = self.add_parameter("lora_B.weight", np.zeros((self.out_features, self.rank)))
        self._x = self._x_lora = None  # the input, and what the adapter read (x, or x with dropout)
        self._mask = None  # the elements the last forward kept (bool), None without dropout

    def forward(self, x):
        """``x (..., in_features)`` float32 -> ``base(x) + alpha / rank * dropout(x) @ lora_A.T @ lora_B.T``, shaped
        ``(..., out_features)``; dropout only in training mode. Raises ValueError when the last axis is not
        ``in_features``."""
        check_input("x", x, self.in_features)
        y = self.base.forward(x)
        x2 = x.reshape(-1, self.in_features)
        self._mask = None
        if self.training and self.dropout > 0:
            self._mask = keep = self.buffer("keep", x2.shape, np.bool_)
            np.greater_equal(self.dropout_rng().random(x2.shape, dtype=np.float32), np.float32(self.dropout), out=keep)
            x2 = self._drop(self.buffer("x_drop", x2.shape), x2)  # what A reads
        h = self.buffer("h", (x2.shape[0], self.rank))  # alpha / r * x @ A.T, what backward reads for B
        K.linear_forward(h, x2, self.lora_A, None)
        h *= self.scale
        # y += h @ B.T in the gemm, into the base's output buffer (its backward does not read it): no buffer of
        # the update's own (the kernel namespace has no gemm entry: kernels.matmul's, as Linear.backward)
        K.gemm_blas(y.reshape(-1, self.out_features), h, self.lora_B.T, 1.0)
        self._x, self._x_lora = x.view(), x2
        return y

    def _drop(self, out, x2):
        """out = dropout(x2) with the last forward's mask: x2 * keep / (1 - p). Returns out."""
        np.multiply(x2, self._mask, out=out)
        out *= np.float32(1.0 / (1.0 - self.dropout))
        return out

    def forward_decode(self, x, *, state):
        """:meth:`forward` with no dropout, whatever the mode (decoding is inference)."""
        training, self.training = self.training, False
        try:
            return self.forward(x)
        finally:
            self.training = training

    def backward(self, dy, out=None, accumulate: bool = False, residual=None):
        """Accumulate the gradients of ``lora_A`` and ``lora_B`` and return ``dx``: the base's ``dx`` (its
        backward, which computes no gradient of its frozen parameters) plus the adapter's."""
        self.check_variants(out, accumulate, residual)
        x = self._x
        if x is None:
            raise RuntimeError("LoRALinear.backward called before forward")
        check_input("dy", dy, self.out_features)
        if dy.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"dy: expected shape {x.shape[:-1] + (self.out_features,)}, got {dy.shape}")
        dy2 = dy.reshape(-1, self.out_features)
        h = self._buffers["h"]
        dh = self.buffer("dh", h.shape)  # dL/dh = dy @ B; dB += dy.T @ h (adapters frozen too: no gradient)
        if self.requires_grad("lora_B.weight"):
            K.linear_backward_into(dh, self._grads["lora_B.weight"], None, dy2, h, self.lora_B, 0.0)
        else:
            K.gemm_blas(dh, dy2, self.lora_B, 0.0)
        dh *= self.scale
        dx = self.base.backward(dy, out=out, accumulate=accumulate)  # dy @ W (+ what out holds)
        dx2 = dx.reshape(-1, self.in_features)
        # dA += dh.T @ x_lora; the input's part dh @ A, through the dropout mask when there is one
        train_a = self.requires_grad("lora_A.weight")
        if self._mask is None:
            if train_a:
                K.linear_backward_into(dx2, self._grads["lora_A.weight"], None, dh, self._x_lora, self.lora_A, 1.0)
            else:
                K.gemm_blas(dx2, dh, self.lora_A, 1.0)
        else:  # one buffer: dropout(x) again (what forward read), then the input's part dh @ A masked
            xd = self._buffers["x_drop"]
            if train_a:
                K.gemm_blas(self._grads["lora_A.weight"], dh.T, self._drop(xd, x.reshape(-1, self.in_features)),
                               1.0)
            K.gemm_blas(xd, dh, self.lora_A, 0.0)
            dx2 += self._drop(xd, xd)
        return dx

    def merged(self) -> Linear:
        """The base ``Linear`` with ``alpha / r * B @ A`` added to its weight (trainable again)."""
        self.base.weight += (self.scale * (self.lora_B.astype(np.float64) @ self.lora_A)).astype(np.float32)
        self.base.set_trainable(True)
        return self.base

    def extra_repr(self) -> str:
        """``in_features, out_features, rank, alpha`` (and ``dropout`` when set), as ``repr`` shows them."""
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}{drop}"


def check_dropout(dropout) -> float:
    """LoRA's ``dropout`` (PEFT's ``lora_dropout``): a probability ``0 <= p < 1``, as a float."""
    return check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)


def _matches(dotted: str, suffix: str) -> bool:
    return dotted == suffix or dotted.endswith("." + suffix)


def _table(model: Layer) -> tuple[str, dict[str, str]]:
    """``(architecture, its TARGETS table)``: the first table some layer of ``model`` matches."""
    dotted = [d for _, _, d, c in _layers(model) if isinstance(c, Linear | LoRALinear)]
    for kind, table in TARGETS.items():
        if any(_matches(d, suffix) for d in dotted for suffix in table.values()):
            return kind, table
    raise ValueError(f"model: a {type(model).__name__} has none of the layers LoRA adapts "
                     f"({', '.join(f'{k}: {list(t.values())}' for k, t in TARGETS.items())})")


def _check_targets(targets, table: dict[str, str]) -> list[str]:
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = list(targets)
    if not targets:
        raise ValueError(f"targets: expected at least one of {list(table)}, got none")
    unknown = [t for t in targets if t not in table]
    if unknown:
        raise ValueError(f"targets: unknown {unknown[0]!r} (expected some of {', '.join(table)})")
    return list(dict.fromkeys(targets))


def _targeted(model: Layer, suffixes) -> list:
    """(parent, name, dotted, Linear) for the plain ``Linear`` layers whose dotted name ends in a suffix."""
    return [(p, n, d, c) for p, n, d, c in _layers(model)
            if type(c) is Linear and not isinstance(p, LoRALinear) and any(_matches(d, s) for s in suffixes)]


def lora_layers(model: Layer) -> dict[str, LoRALinear]:
    """The :class:`LoRALinear` layers of ``model`` by dotted name (``model.layers.0.self_attn.q_proj``)."""
    return {dotted: layer for _, _, dotted, layer in _layers(model) if isinstance(layer, LoRALinear)}


def apply_lora(model: Layer, targets=None, rank: int = 8, alpha: float = 16.0, rng=0,
               dropout: float = 0.0) -> dict[str, LoRALinear]:
    """Replace the ``Linear`` layers named by ``targets`` (keys of the model's :data:`TARGETS` table, a
    comma-separated string of them, or ``None`` for all: Llama's q, k, v, o, gate, up, down) with
    :class:`LoRALinear` adapters of ``rank``, ``alpha`` and ``dropout`` (on the adapter input in training
    mode, ``0 <= dropout < 1``), and freeze every other parameter. Checks everything before changing the
    model. Returns the adapters by dotted name."""
    if not isinstance(model, Layer):
        raise TypeError(f"model: expected a qorus Layer, got {type(model).__name__}")
    if lora_layers(model):
        raise ValueError("model: has LoRA adapters already (merge_lora or load_lora into a fresh model)")
    _, table = _table(model)
    targets = _check_targets(list(table) if targets is None else targets, table)
    check_int(rank=rank)
    check_positive_float(alpha=alpha)
    dropout = check_dropout(dropout)
    rng = check_rng("rng", rng)
    found = _targeted(model, [table[t] for t in targets])
    missing = [t for t in targets if not any(_matches(d, table[t]) for _, _, d, _ in found)]
    if missing:
        raise ValueError(f"targets: {missing[0]!r} ({table[missing[0]]}) is not a Linear layer of this "
                         f"{type(model).__name__}")
    for _, _, dotted, lin in found:
        if not 1 <= rank <= min(lin.in_features, lin.out_features):
            raise ValueError(f"rank: expected 1 <= rank <= {min(lin.in_features, lin.out_features)} "
                             f"(the smaller side of {dotted}, {lin.out_features}x{lin.in_features}), got {rank}")
    model.set_trainable(False)
    out = {}
    for parent, name, dotted, lin in found:
        out[dotted] = layer = LoRALinear(lin, rank, alpha, rng, dropout)
        _replace_child(parent, name, lin, layer)
    return out


def merge_lora(model: Layer) -> int:
    """Fold every adapter of ``model`` into its base weight (``W += alpha / r * B @ A``), put the plain
    ``Linear`` back and make every parameter trainable again. Returns the number of adapters merged."""
    n = 0
    for parent, name, _, layer in list(_layers(model)):
        if isinstance(layer, LoRALinear):
            _replace_child(parent, name, layer, layer.merged())
            n += 1
    model.set_trainable(True)
    return n


def _adapters(model: Layer) -> dict[str, LoRALinear]:
    adapters = lora_layers(model)
    if not adapters:
        raise ValueError(f"model: has no LoRA adapters (apply_lora first), a {type(model).__name__}")
    return adapters


def _module_name(table: dict[str, str], suffix: str) -> str:
    """How PEFT's target_modules names a layer: its last name when no other target ends the same, else more."""
    last = suffix.rsplit(".", 1)[-1]
    return last if sum(s.rsplit(".", 1)[-1] == last for s in table.values()) == 1 else suffix


def save_lora(model: Layer, folder, base_model_name_or_path: str = "") -> Path:
    """Write ``model``'s adapters as a PEFT folder: ``adapter_config.json`` and ``adapter_model.safetensors``
    with PEFT's tensor names (``base_model.model.<layer>.lora_A.weight``), each file atomically."""
    from qorus_jit.formats.safetensors import write_safetensors

    adapters = _adapters(model)
    folder = check_path("folder", folder)
    first = next(iter(adapters.values()))
    if any((a.rank, a.alpha, a.dropout) != (first.rank, first.alpha, first.dropout) for a in adapters.values()):
        raise ValueError("model: its adapters differ in rank, alpha or dropout (PEFT's config holds one of each)")
    tensors = {}
    for dotted, a in adapters.items():
        tensors[f"{PEFT_PREFIX}{dotted}.lora_A.weight"] = a.lora_A
        tensors[f"{PEFT_PREFIX}{dotted}.lora_B.weight"] = a.lora_B
    kind, table = _table(model)
    modules = sorted({_module_name(table, suffix) for dotted in adapters for suffix in table.values()
                      if _matches(dotted, suffix)})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.rank, "lora_alpha": first.alpha,
              "target_modules": modules, "lora_dropout": first.dropout, "bias": "none",
              "fan_in_fan_out": kind == "gpt2",
              "inference_mode": True, "base_model_name_or_path": str(base_model_name_or_path)}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: write_safetensors(tmp, tensors, metadata={"format": "pt"}))
    atomic_write_json(folder / CONFIG_NAME, config)
    return folder


def load_lora(model: Layer, folder, rng=0) -> dict[str, LoRALinear]:
    """Read a PEFT LoRA folder into ``model``: adapters of its rank, alpha, dropout (``lora_dropout``, 0 when
    absent) and target modules are applied (unless ``model`` has adapters already, which must have that alpha
    and dropout), then its tensors copied in. The config, the tensor names and
    shapes are all checked before the model changes; errors name the file and the key or tensor."""
    from qorus_jit.formats.safetensors import load_safetensors

    folder = check_path("folder", folder)
    cfg_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    config = read_json(cfg_file, f"{folder}: {CONFIG_NAME}")
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type: expected 'LORA', got {config.get('peft_type')!r}")
    modules = config.get("target_modules")
    modules = [modules] if isinstance(modules, str) else modules
    _, table = _table(model)
    names = sorted({_module_name(table, s) for s in table.values()})
    if not isinstance(modules, list) or not modules or any(
            not any(m == s or m == s.rsplit(".", 1)[-1] for s in table.values()) for m in modules):
        raise ValueError(f"{cfg_file}: target_modules: expected a list of some of {names}, got {modules!r}")
    targets = [t for t, s in table.items() if any(m == s or m == s.rsplit(".", 1)[-1] for m in modules)]
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{cfg_file}: r: expected a positive int, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{cfg_file}: lora_alpha: expected a positive number, got {alpha!r}")
    dropout = config.get("lora_dropout", 0.0)
    try:
        dropout = check_dropout(dropout)
    except ValueError as e:
        raise ValueError(f"{cfg_file}: lora_{e}") from None
    tensors = {k.replace(".default.weight", ".weight"): v for k, v in load_safetensors(weights_file).items()}

    adapters = lora_layers(model)
    if adapters:  # the shapes the model's adapters have
        if any(a.alpha != float(alpha) for a in adapters.values()):
            raise ValueError(f"{cfg_file}: lora_alpha: {alpha} differs from the model's adapters' "
                             f"{next(iter(adapters.values())).alpha}")
        if any(a.dropout != dropout for a in adapters.values()):
            raise ValueError(f"{cfg_file}: lora_dropout: {dropout} differs from the model's adapters' "
                             f"{next(iter(adapters.values())).dropout}")
        shapes = {d: (a.rank, a.in_features, a.out_features) for d, a in adapters.items()}
    else:  # the shapes apply_lora would give
        shapes = {d: (rank, c.in_features, c.out_features) for _, _, d, c in _targeted(model, modules)}
    expected = {}
    for dotted, (r, i, o) in shapes.items():
        expected[f"{PEFT_PREFIX}{dotted}.lora_A.weight"] = (r, i)
        expected[f"{PEFT_PREFIX}{dotted}.lora_B.weight"] = (o, r)
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"{weights_file}: " + (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
                         + f" ({len(missing)} missing, {len(extra)} unexpected for this {type(model).__name__})")
    for k, shape in expected.items():
        if tensors[k].shape != shape:
            raise ValueError(f"{weights_file}: {k}: expected shape {shape}, got {tensors[k].shape}")

    if not adapters:
        adapters = apply_lora(model, targets, rank, float(alpha), rng, dropout)
    for dotted, a in adapters.items():
        a.lora_A[...] = tensors[f"{PEFT_PREFIX}{dotted}.lora_A.weight"]
        a.lora_B[...] = tensors[f"{PEFT_PREFIX}{dotted}.lora_B.weight"]
    return adapters
