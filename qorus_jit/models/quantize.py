"""Llama and GPT-2 with bf16 or int8 (q8_0) weights: :func:`quantize_model` swaps the linear layers of the
attention, the MLP and the LM head for :class:`~qorus_jit.layers.quantized.QuantizedLinear`; quantized folders
(docs/formats.md, "Quantized folders") are written by :func:`save_quantized` and read back, without
re-quantizing, by ``load_pretrained``.

The norms, the biases and an untied embedding table stay float32. A tied embedding table is held once,
quantized, by the head (:class:`~qorus_jit.layers.quantized.QuantizedEmbedding` reads its rows for the lookups).
"""

from __future__ import annotations

import ctypes
import gc
import json
from pathlib import Path

import numpy as np

from qorus_jit.core.check import UNFILLED
from qorus_jit.core.files import atomic_write, atomic_write_text, check_path
from qorus_jit.formats.hf import CONFIG_NAME, WEIGHTS_NAME, make_folder, read_hf_shapes
from qorus_jit.formats.safetensors import raw_header, read_raw_tensor, read_safetensors_header
from qorus_jit.layers.base import Layer, named_layers, replace_child
from qorus_jit.layers.head import TiedLMHead
from qorus_jit.layers.linear import Linear
from qorus_jit.layers.lora import lora_layers
from qorus_jit.layers.quantized import (
    GROUP,
    QuantizedLinear,
    check_quantizable,
    quantize_layers,
    quantized_layers,
    quantized_tensors,
    share_tied_table,
    weight_format,
)
from qorus_jit.tokenizers.hf import hf_tokenizer_files

#: The architectures whose layers quantize (by short name).
QUANTIZABLE = ("llama", "gpt2")
#: The table of a quantized folder's ``config.json`` that says so.
QUANTIZATION_KEY = "quantization"


def model_format(model) -> str | None:
    """The weight format of ``model``'s quantized layers ("bf16", "q8_0"), or None for a float32 model."""
    formats = {layer.weight_format for layer in quantized_layers(model).values()}
    if len(formats) > 1:
        raise ValueError(f"model: mixes weight formats {sorted(formats)}")
    return formats.pop() if formats else None


def _check_model(model) -> None:
    arch = getattr(type(model), "arch", None)
    if not isinstance(model, Layer) or arch not in QUANTIZABLE:
        raise ValueError(f"model: a {type(model).__name__} cannot be quantized: bf16 and int8 weights are for "
                         "Llama and GPT-2 models")


def _targets(model) -> list[tuple[str, Layer]]:
    """(dotted name, layer) of the layers that quantize: every plain Linear (attention, MLP, an untied head)
    and a tied head."""
    return [(d, c) for _, _, d, c in named_layers(model) if type(c) is Linear or isinstance(c, TiedLMHead)]


def _in_features(layer) -> int:
    return layer.embedding.weight.shape[1] if isinstance(layer, TiedLMHead) else layer.in_features


def quantize_model(model, dtype: str):
    """Quantize ``model`` (a Llama or GPT-2) in place to ``dtype``: "fp32" (nothing changes), "bf16" or
    "int8" (q8_0). The linear layers of the attention and the MLP and the LM head become
    :class:`~qorus_jit.layers.quantized.QuantizedLinear` (a tied head: a quantized copy of the embedding
    table, which then serves the lookups too); norms, biases and an untied embedding table stay float32.
    Returns ``model``.

    Refused with a one-line ValueError before anything changes: another architecture (BERT), LoRA adapters
    (merge them first), a model quantized already to another format (fp32 included; the same format is
    nothing to do), and a layer whose ``in_features`` is
    not a multiple of 32, which the kernels need (the error names it)."""
    fmt = weight_format(dtype)
    _check_model(model)
    held = model_format(model)
    if held is not None and held != fmt:
        raise ValueError(f"model: is quantized already ({held}); for {dtype} start from the fp32 model")
    if fmt is None:
        return model
    if lora_layers(model):
        raise ValueError("model: has LoRA adapters; merge them into the weights first (merge_lora)")
    targets = _targets(model)
    for dotted, layer in targets:
        check_quantizable(dotted, _in_features(layer))
    layer = None  # the loop's last float32 layer, not to be kept past the swap

    def make(dotted, layer):
        if isinstance(layer, TiedLMHead):  # a quantized copy; the embedding table stays for the lookups
            return QuantizedLinear.from_weight(layer.embedding.weight, None, dtype, name=dotted)
        if type(layer) is Linear:
            return QuantizedLinear.from_linear(layer, dtype, name=dotted)
        return None

    quantize_layers(model, make)
    share_tied_table(model)
    del targets  # the float32 layers: nothing else holds them now
    _forget_decoder(model)
    _return_freed_memory()
    return model


def _forget_decoder(model) -> None:
    """A Llama's fused decoder keeps views of the float32 weights: let them go (it is not used any more)."""
    if getattr(model, "_decoder", None) is not None:
        model._decoder = None


def _return_freed_memory() -> None:
    """Hand the float32 weights just freed back to the OS: glibc keeps freed blocks inside its heap (a stories110M
    int8 model held +442 MB instead of +211 MB without this); nothing where there is no ``malloc_trim``."""
    gc.collect()  # layers the swaps left in reference cycles
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------ quantized folders


def quantization_table(fmt: str) -> dict:
    """The ``"quantization"`` table of a quantized folder's ``config.json``."""
    return {"format": fmt, "group_size": GROUP} if fmt == "q8_0" else {"format": fmt}


def save_quantized(model, path, tokenizer=None) -> None:
    """Write a quantized ``model`` as a quantized folder ``path`` (created if missing): ``config.json`` (the
    Hugging Face config and a ``"quantization"`` table) and ``model.safetensors`` holding the float32 parameters
    (embeddings, norms, biases: F32) and the quantized weights, ``(out, in)`` whatever the architecture: for
    q8_0 ``<layer>.weight.qs`` (I8) and ``<layer>.weight.d`` (F16), for bf16 ``<layer>.weight`` (BF16); with a
    ``tokenizer``, its files as :func:`~qorus_jit.models.registry.save_pretrained` writes them. Each file is
    written atomically (the weights first)."""
    fmt = model_format(model)
    if fmt is None:
        raise ValueError("model: holds no quantized layers (quantize_model(model, 'int8' or 'bf16') first)")
    _check_model(model)
    folder = check_path("path", path)
    hf = {**model.config.to_hf(), QUANTIZATION_KEY: quantization_table(fmt)}
    files = {}
    if tokenizer is not None:
        files = hf_tokenizer_files(tokenizer, model.config.max_seq_len)
        for key in ("bos_token_id", "eos_token_id"):
            hf.setdefault(key, None)
    tensors = dict(model.parameters())  # float32: embeddings, norms, biases (no linear weight left)
    for name, arr in quantized_tensors(model).items():
        tensors[name] = arr.astype(np.float16) if name.endswith(".d") else arr  # d is exact in float16
    make_folder(folder)
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: _write_safetensors(tmp, tensors))
    files[CONFIG_NAME] = json.dumps(hf, indent=2, sort_keys=True, allow_nan=False) + "\n"
    for name, text in files.items():
        atomic_write_text(folder / name, text)


def _write_safetensors(file: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file of ``tensors``, uint16 ones stored as BF16: safetensors' NumPy API knows no bfloat16,
    so its writer is given each array's bytes and dtype name ("bfloat16" for the bf16 bits)."""
    from safetensors import TensorSpec, serialize_file

    specs = {}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        tensors[name] = arr  # alive until written
        dtype = "bfloat16" if arr.dtype == np.uint16 else arr.dtype.name
        specs[name] = TensorSpec(dtype=dtype, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    serialize_file(specs, str(file), metadata={"format": "pt"})


def read_quantization(hf_config: dict, where) -> str | None:
    """The weight format a ``config.json`` dict says its folder holds ("bf16", "q8_0"), or None (no table);
    a damaged table is a ValueError naming ``where``."""
    table = hf_config.get(QUANTIZATION_KEY)
    if table is None:
        return None
    fmt = table.get("format") if isinstance(table, dict) else None
    if fmt not in ("bf16", "q8_0"):
        raise ValueError(f"{where}: {QUANTIZATION_KEY}: expected a table with format 'q8_0' or 'bf16', got "
                         f"{table!r}")
    if fmt == "q8_0" and table.get("group_size", GROUP) != GROUP:
        raise ValueError(f"{where}: {QUANTIZATION_KEY}: group_size {table.get('group_size')!r} is not supported "
                         f"(q8_0 groups {GROUP} inputs)")
    return fmt


def _our_layout(cls, name: str, hf_shape: tuple[int, ...]) -> bool:
    """Whether the architecture stores tensor ``name`` transposed in its checkpoints (GPT-2's Conv1D weights):
    probed on a tiny array with :meth:`Architecture.from_hf_tensors`."""
    probe = cls.from_hf_tensors({name: np.zeros((1, 2), np.float32)}).get(name)
    return probe is not None and probe.shape == (2, 1)


def quantized_layout(path, cls, fmt: str) -> dict:
    """What the quantized folder ``path`` of a ``cls`` model in ``fmt`` holds, from its safetensors header alone
    (names and dtypes checked): ``{"file", "plain", "quant", "shapes"}``, ``shapes`` in the Hugging Face layout
    that the registry's ``check_shapes`` checks against the config before :func:`load_quantized` builds."""
    if cls.arch not in QUANTIZABLE:
        raise ValueError(f"{path}: a quantized folder of a {cls.__name__}; only Llama and GPT-2 quantize")
    folder = Path(path)
    read_hf_shapes(folder)  # the folder's weight files and their links checked
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise ValueError(f"{folder}: a quantized folder holds one {WEIGHTS_NAME} (no shards)")
    header = read_safetensors_header(file)
    plain, quant = {}, {}  # fp32 tensors, and each quantized weight's (out, in) by its layer weight's name
    for name, (dtype, shape) in header.items():
        if fmt == "q8_0" and name.endswith((".weight.qs", ".weight.d")):
            want = "I8" if name.endswith(".qs") else "F16"
            if dtype != want:
                raise ValueError(f"{file}: tensor {name!r} has dtype {dtype}, expected {want} for q8_0")
            if name.endswith(".qs"):
                quant[name[:-3]] = shape
        elif fmt == "bf16" and dtype == "BF16":
            quant[name] = shape
        elif dtype not in ("F32", "F16", "F64"):  # BF16 here: not a bf16 folder's weight
            raise ValueError(f"{file}: tensor {name!r} has dtype {dtype}, expected F32 (a float32 parameter)")
        else:
            plain[name] = shape
    shapes = dict(plain)
    if cls.hf_embedding not in plain and "lm_head.weight" in quant:  # a tied table, held by the head alone
        shapes[cls.hf_embedding] = quant["lm_head.weight"]
    for name, shape in quant.items():
        if len(shape) != 2:
            raise ValueError(f"{file}: tensor {name!r} has shape {shape}, expected a matrix (out, in)")
        shapes[name] = shape[::-1] if _our_layout(cls, name, shape) else shape
        if fmt == "q8_0":
            d = header.get(name + ".d", (None, None))[1]
            if d != (shape[0], shape[1] // GROUP) or shape[1] % GROUP:
                raise ValueError(f"{file}: tensor {name + '.d'!r} has shape {d}, expected "
                                 f"{(shape[0], shape[1] // GROUP)} (one scale a group of {GROUP} of {name}.qs's "
                                 f"{shape}, whose in_features must be a multiple of {GROUP})")
    return {"file": file, "plain": plain, "quant": quant, "shapes": shapes}


def load_quantized(layout: dict, cls, config, fmt: str):
    """The model of a quantized folder whose :func:`quantized_layout` fits ``config`` (``fmt`` its format): the
    quantized weights go straight into the layers (no re-quantizing)."""
    file, plain, quant = layout["file"], layout["plain"], layout["quant"]
    model = cls(config, rng=UNFILLED)  # float32 weights never written: those replaced take no memory
    targets = [(p, n, d, c) for p, n, d, c in named_layers(model) if type(c) is Linear or isinstance(c, TiedLMHead)]
    missing = [f"{d}.weight" for _, _, d, _ in targets if f"{d}.weight" not in quant]
    if missing:
        raise ValueError(f"{file}: missing tensor {missing[0] + ('.qs' if fmt == 'q8_0' else '')!r} (the {fmt} "
                         f"weight of a {cls.__name__} layer)")
    extra = sorted(set(quant) - {f"{d}.weight" for _, _, d, _ in targets})
    if extra:
        raise ValueError(f"{file}: unexpected quantized tensor {extra[0]!r} for this {cls.__name__}")
    header = raw_header(file)  # tensors read with file reads: the file's pages are not held (read_raw_tensor)
    while targets:  # popped, so that nothing keeps the float32 layer once replaced
        parent, name, dotted, layer = targets.pop(0)
        key = f"{dotted}.weight"
        if fmt == "bf16":  # read into the weights' memory (alloc.weights): no copy
            arrays = {"w16": read_raw_tensor(file, key, header, weights=True)}
        else:
            arrays = {"qs": read_raw_tensor(file, key + ".qs", header, weights=True),
                      "d": read_raw_tensor(file, key + ".d", header, weights=True).astype(np.float32, copy=False)}
        bias = getattr(layer, "bias", None)  # its value comes with the other parameters below
        replace_child(parent, name, layer, QuantizedLinear(fmt, **arrays, bias=bias, name=dotted))
        del layer, bias, arrays
    share_tied_table(model)
    own = model.parameters()  # a float32 tied table of an older folder is not one any more
    rest = {k: read_raw_tensor(file, k, header).astype(np.float32) for k in plain if k in own}
    _forget_decoder(model)
    try:
        model.load_parameters(rest)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    _return_freed_memory()
    return model
