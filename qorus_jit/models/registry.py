"""The architectures of the model library, and what is done with each of them alike: find one by its Hugging
Face or short name, check a checkpoint's tensors against it, load and save Hugging Face folders, and rebuild
a model from a run folder's record.

Adding an architecture: write its module (a :class:`~qorus_jit.models.base.Config` and an
:class:`~qorus_jit.models.base.Architecture`, as ``models/gpt2.py`` does) and list its class here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from qorus_jit.core.check import UNFILLED
from qorus_jit.core.files import atomic_write_text
from qorus_jit.formats.gguf import is_gguf
from qorus_jit.formats.hf import CONFIG_NAME, read_hf_config, read_hf_shapes, read_hf_weights, write_hf_folder
from qorus_jit.models.base import Architecture, Config, _brief
from qorus_jit.models.bert import Bert
from qorus_jit.models.gpt2 import GPT2
from qorus_jit.models.llama import Llama
from qorus_jit.tokenizers.hf import hf_tokenizer_files

#: Every architecture, in the order error messages list them.
ARCHITECTURES: tuple[type[Architecture], ...] = (Llama, GPT2, Bert)

#: By the ``architectures`` entry of a ``config.json`` ...
BY_HF_ARCHITECTURE: dict[str, type[Architecture]] = {a.config_class.hf_architecture: a for a in ARCHITECTURES}
#: ... and by its ``model_type``, when that list is absent.
BY_MODEL_TYPE: dict[str, type[Architecture]] = {a.config_class.hf_model_type: a for a in ARCHITECTURES}
#: By short name: ``TrainConfig.arch`` and the ``arch`` of a run folder's model record.
BY_ARCH: dict[str, type[Architecture]] = {a.arch: a for a in ARCHITECTURES}
_BY_CONFIG: dict[type[Config], type[Architecture]] = {a.config_class: a for a in ARCHITECTURES}
_CONFIG_PREFIX = re.compile(r"^[\w-]+ config\.json: ")  # what from_hf's messages begin with


def architecture(arch: str) -> type[Architecture]:
    """The model class of a short name (``"llama"``, ``"gpt2"``, ``"bert"``)."""
    cls = BY_ARCH.get(arch) if isinstance(arch, str) else None
    if cls is None:
        raise ValueError(f"arch: expected one of {', '.join(BY_ARCH)}, got {arch!r}")
    return cls


def architecture_of(config) -> type[Architecture]:
    """The model class of a config (a :class:`LlamaConfig`, ...)."""
    cls = _BY_CONFIG.get(type(config))
    if cls is None:
        names = [c.__name__ for c in _BY_CONFIG]
        raise ValueError(f"config: expected a {', '.join(names[:-1])} or {names[-1]}, got {type(config).__name__}")
    return cls


# -------------------------------------------------------------------------------------------- run records


def model_record(model: Architecture) -> dict:
    """What a run folder keeps to rebuild ``model``: ``{"arch": ..., **model.config.to_dict()}`` (JSON)."""
    if not isinstance(model, Architecture):
        raise TypeError(f"model: expected one of {', '.join(a.__name__ for a in ARCHITECTURES)}, "
                        f"got {type(model).__name__}")
    return {"arch": type(model).arch, **model.config.to_dict()}


def build_model(arch: str, config: dict | Config, rng=None) -> Architecture:
    """A new model of architecture ``arch`` (a short name) from ``config``: its config, or the dict of its
    fields (``config.to_dict()``, the rest of a :func:`model_record`); weights drawn from ``rng``.

    >>> model = build_model("llama", {"dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32, "vocab_size": 10})
    >>> record = model_record(model)  # {"arch": "llama", "dim": 16, ...}, as run.json keeps it
    >>> build_model(record.pop("arch"), record).config == model.config
    True
    """
    cls = architecture(arch)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    elif not isinstance(config, cls.config_class):
        raise TypeError(f"config: expected a {cls.config_class.__name__} or a dict of its fields for arch "
                        f"{arch!r}, got {type(config).__name__}")
    return cls(config, rng=rng)


# ---------------------------------------------------------------------------------- Hugging Face folders


def config_from_hf(hf_config: dict) -> Config:
    """The qorus config of a Hugging Face ``config.json`` dict, chosen by ``architectures`` or ``model_type``.

    An unknown architecture raises a ValueError naming it and the supported ones.
    """
    if not isinstance(hf_config, dict):
        raise ValueError(f"config_from_hf: expected the config.json dict, got {type(hf_config).__name__}")
    supported = ", ".join(BY_HF_ARCHITECTURE)
    archs = hf_config.get("architectures")
    if archs:
        if isinstance(archs, str):
            archs = [archs]
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ValueError(f"architectures: expected a list of names, got {_brief(archs)}")
        for a in archs:
            if a in BY_HF_ARCHITECTURE:
                return BY_HF_ARCHITECTURE[a].config_class.from_hf(hf_config)
        names = ", ".join(_brief(a)[1:-1] for a in archs[:5]) + (", ..." if len(archs) > 5 else "")
        raise ValueError(f"unsupported architecture {names}; supported: {supported}")
    model_type = hf_config.get("model_type")
    if isinstance(model_type, str) and model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type].config_class.from_hf(hf_config)
    raise ValueError(f"unsupported model_type {_brief(model_type)} (and no 'architectures' list); supported: "
                     f"{supported} (model_type {', '.join(BY_MODEL_TYPE)})")


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """The Hugging Face tensor names of an architecture and their shapes, in the transformers layout
    (:meth:`Architecture.hf_shapes`): linear weights are ``(out, in)`` as ``nn.Linear``, except GPT-2's
    ``Conv1D`` weights, which are ``(in, out)``; ``lm_head.weight`` is listed only when the embeddings are
    untied."""
    try:
        cls = architecture_of(config)
    except ValueError as e:
        raise ValueError(f"expected_shapes: {e}") from None
    return cls.hf_shapes(config)


def _canonical(cls: type[Architecture], named: dict) -> dict:
    """``named`` (tensors or shapes by name) under the model's names: the base-model prefix added when a
    checkpoint omits it (``h.0...`` -> ``transformer.h.0...``), the ignored buffers dropped."""
    prefix = cls.hf_base_prefix
    if prefix and named and not any(k.startswith(prefix) for k in named):
        named = {(k if k.startswith("lm_head.") else prefix + k): v for k, v in named.items()}
    ignored = re.compile("|".join(f"(?:{p})" for p in cls.hf_ignored) or r"(?!)")
    return {k: v for k, v in named.items() if not ignored.fullmatch(k)}


def _first(names: list[str], what: str) -> str:
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{what} {names[0]!r}{more}"


def check_shapes(config: Config, shapes: dict[str, tuple[int, ...]], source="tensors") -> dict[str, tuple[int, ...]]:
    """Check a checkpoint's tensor shapes (name -> shape, as :func:`~qorus_jit.formats.hf.read_hf_shapes`
    reads them from the safetensors headers, before any data) against ``config``; return
    :func:`expected_shapes`.

    In this order, each a ValueError naming ``source``: the number of layers the checkpoint holds
    (``hf_layers``) must be ``n_layers``, counted before anything is sized by it; no tensor may be missing
    or unexpected; each size field (``hf_sizes``: dims, vocabulary, positions, ...) must be the length of
    its tensor's axis, the error naming the config.json key, its value and the shape the file holds; then
    every other shape. A ``lm_head.weight`` beside a tied embedding must have its shape (its values are
    compared by :func:`check_tensors`).
    """
    cls = architecture_of(config)
    if not isinstance(shapes, dict):
        raise ValueError(f"{source}: expected a dict of tensor shapes, got {type(shapes).__name__}")
    shapes = _canonical(cls, {k: tuple(v) for k, v in shapes.items()})
    label = type(config).hf_label
    layer = re.compile(cls.hf_layers)
    held = {m.group(1) for k in shapes if (m := layer.match(k))}  # index strings: no int() of a huge one
    if config.n_layers != len(held):
        raise ValueError(f"{source}: {label('n_layers')} = {config.n_layers} does not match the weights, which "
                         f"hold {len(held)} layers")
    expected = cls.hf_shapes(config)  # now as long as the checkpoint's own list
    names = set(shapes)
    emb = cls.hf_embedding
    if "lm_head.weight" in names and "lm_head.weight" not in expected and emb in shapes:
        if shapes["lm_head.weight"] != shapes[emb]:
            raise ValueError(f"{source}: tensor 'lm_head.weight' differs from {emb!r}, but the config ties the "
                             "embeddings (tie_word_embeddings=true)")
        names.discard("lm_head.weight")
    missing = [k for k in expected if k not in names and k not in cls.hf_optional]
    if missing:
        raise ValueError(f"{source}: missing {_first(missing, 'tensor')} for {type(config).__name__}")
    unexpected = [k for k in shapes if k in names and k not in expected]
    if unexpected:
        raise ValueError(f"{source}: unexpected {_first(unexpected, 'tensor')} for {type(config).__name__}")
    for field, (name, axis) in cls.hf_sizes.items():
        got, want = shapes[name], expected[name]
        if len(got) == len(want) and got[axis] != want[axis]:
            raise ValueError(f"{source}: {label(field)} = {getattr(config, field)} does not match the weights: "
                             f"tensor {name!r} has shape {got}, expected {want}")
    for name in names:
        if shapes[name] != expected[name]:
            raise ValueError(f"{source}: tensor {name!r} has shape {shapes[name]}, expected {expected[name]}")
    return expected


def check_tensors(config: Config, tensors: dict[str, np.ndarray], source="tensors") -> dict[str, np.ndarray]:
    """Check checkpoint tensors against :func:`expected_shapes`; return them by canonical name.

    ``source`` (a file or folder) is named in every error. The shapes are checked by :func:`check_shapes`
    (layers, missing and unexpected tensors, each size field, each shape); then a floating dtype. The
    returned dict drops the buffers the architecture ignores (``hf_ignored``: causal masks, rotary tables,
    position ids), adds the base-model prefix when a checkpoint omits it (``h.0...`` ->
    ``transformer.h.0...``), and drops a ``lm_head.weight`` that equals the embedding of a tied model (a
    different one raises). Optional tensors (BERT's pooler) may be absent.
    """
    cls = architecture_of(config)
    if not isinstance(tensors, dict):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(tensors).__name__}")
    for name, arr in tensors.items():
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{source}: tensor {name!r} is a {type(arr).__name__}, not a numpy array")
    expected = check_shapes(config, {k: a.shape for k, a in tensors.items()}, source)
    params = _canonical(cls, tensors)
    if "lm_head.weight" in params and "lm_head.weight" not in expected:
        if not np.array_equal(params["lm_head.weight"], params[cls.hf_embedding]):
            raise ValueError(f"{source}: tensor 'lm_head.weight' differs from {cls.hf_embedding!r}, but the "
                             "config ties the embeddings (tie_word_embeddings=true)")
        del params["lm_head.weight"]
    for name, arr in params.items():
        if arr.dtype.kind != "f":
            raise ValueError(f"{source}: tensor {name!r} has dtype {arr.dtype}, expected a floating dtype")
    return params


def load_pretrained(path, dtype: str | None = None) -> Architecture:
    """Read a Hugging Face folder (``config.json`` + safetensors, sharded or not) into the matching model.

    Supported: ``LlamaForCausalLM``, ``GPT2LMHeadModel`` and ``BertModel`` (its pooler is skipped).
    The config is checked against the tensor shapes of the safetensors headers (:func:`check_shapes`)
    before any tensor is read or the model built, so memory stays bounded by the files whatever the config
    says. Errors are one-line ValueErrors naming the folder or file, the config.json key and the tensor.
    Links out of the folder are refused (see :mod:`qorus_jit.formats.hf`).

    ``dtype``: the weights of the linear layers of a Llama or GPT-2 (:func:`~qorus_jit.models.quantize.
    quantize_model`): "fp32", "bf16" or "int8" (q8_0); None (the default) keeps what the folder holds. A
    quantized folder (written by ``qorus quantize`` / :func:`~qorus_jit.models.quantize.save_quantized`, its
    config.json has a ``"quantization"`` table) loads as it is stored, never re-quantized; another ``dtype``
    for it is refused, as is "bf16" or "int8" for a BERT.

    A GGUF file (told by its magic) is read by :func:`qorus_jit.models.gguf.load_gguf`: a Llama whose Q8_0 / BF16
    weights load as stored with ``dtype`` None (see :func:`~qorus_jit.models.gguf.gguf_model`).
    """
    from qorus_jit.layers.quantized import weight_format
    from qorus_jit.models.quantize import (
        QUANTIZABLE,
        load_quantized,
        quantize_model,
        quantized_layout,
        read_quantization,
    )

    if isinstance(path, (str, os.PathLike)) and is_gguf(path):  # a GGUF file: a Llama, its blocks as stored
        from qorus_jit.models.gguf import load_gguf

        return load_gguf(path, dtype)
    fmt = None if dtype is None else weight_format(dtype)
    hf_config = read_hf_config(path)
    stored = read_quantization(hf_config, Path(path) / CONFIG_NAME)
    try:
        config = config_from_hf(hf_config)
    except ValueError as e:  # "Llama config.json: x" -> "<folder>/config.json: x"
        raise ValueError(f"{Path(path) / CONFIG_NAME}: {_CONFIG_PREFIX.sub('', str(e))}") from None
    cls = architecture_of(config)
    if fmt is not None and cls.arch not in QUANTIZABLE:
        raise ValueError(f"dtype: {path} holds a {cls.__name__}, whose weights stay fp32 ({dtype!r} is for Llama "
                         "and GPT-2 models)")
    if stored is not None:
        if dtype is not None and fmt != stored:
            own = "int8" if stored == "q8_0" else stored
            raise ValueError(f"dtype: {path} is a quantized folder of {stored} weights, which load as they are "
                             f"(dtype=None or {own!r}), not as {dtype!r}; for {dtype} start from the fp32 model")
        layout = quantized_layout(path, cls, stored)
        check_shapes(config, layout["shapes"], source=str(path))
        return load_quantized(layout, cls, config, stored)
    check_shapes(config, read_hf_shapes(path), source=str(path))
    params = cls.from_hf_tensors(check_tensors(config, read_hf_weights(path), source=str(path)))
    model = cls(config, rng=UNFILLED)  # no random weights drawn and written only to be overwritten
    model.load_parameters(params)
    del params
    if fmt is not None:
        quantize_model(model, dtype)
    return model


def save_pretrained(model: Architecture, path, tokenizer=None) -> None:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``), each file atomically.

    With a ``tokenizer`` (a :class:`~qorus_jit.tokenizers.ByteTokenizer` or
    :class:`~qorus_jit.tokenizers.BPETokenizer`) the folder also gets ``tokenizer.json`` (the byte
    tokenizer in the ``tokenizers`` package's form), ``tokenizer_config.json`` and ``generation_config.json``,
    so that transformers' ``AutoTokenizer`` and ``AutoModelForCausalLM`` load it as it is; the config's
    ``bos_token_id`` and ``eos_token_id`` are written (null unless the architecture sets them), so that
    transformers adds no default special ids the tokenizer does not have.
    """
    if not isinstance(model, Architecture):
        raise TypeError(f"model: expected one of {', '.join(a.__name__ for a in ARCHITECTURES)}, "
                        f"got {type(model).__name__}")
    from qorus_jit.layers.quantized import quantized_layers

    if quantized_layers(model):
        raise ValueError("model: has quantized layers; write it with save_quantized (qorus quantize), or save "
                         "the fp32 model")
    hf = model.config.to_hf()
    files = {}
    if tokenizer is not None:
        files = hf_tokenizer_files(tokenizer, model.config.max_seq_len)
        for key in ("bos_token_id", "eos_token_id"):
            hf.setdefault(key, None)
        files["generation_config.json"] = _json({"bos_token_id": hf["bos_token_id"],
                                                 "eos_token_id": hf["eos_token_id"]})
    write_hf_folder(path, hf, type(model).to_hf_tensors(model.parameters()))
    for name, text in files.items():
        atomic_write_text(Path(path) / name, text)


def _json(data) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
