"""``qorus export``: a ``qorus train`` run, from its newest complete checkpoint, as

- ``hf``: a Hugging Face folder that transformers loads as it is (``config.json``, ``model.safetensors``,
  ``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``), with the LoRA adapters of a
  LoRA run in ``adapter/`` (a PEFT folder) unless they are merged;
- ``llama2c``: a folder holding llama2.c's ``model.bin`` (the legacy version 0 that its ``run.c`` reads) and
  ``tokenizer.bin`` (the run's own, or made from a sentencepiece-style ``tokenizer.json``).

>>> export_run("runs/my-run", "my-model")                                # doctest: +SKIP
>>> export_run("runs/my-lora-run", "my-l2c", format="llama2c", merge_lora=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qorus_jit.core.files import check_path, fsync_dir, os_reason
from qorus_jit.formats.checkpoint import RUN_FILE
from qorus_jit.models.sources import SourceError, load_run_model

#: What ``--format`` accepts.
FORMATS = ("hf", "llama2c", "gguf")
#: The PEFT folder of an unmerged LoRA run's adapters, inside a ``hf`` export.
ADAPTER_DIR = "adapter"
#: The files of a ``llama2c`` export.
LLAMA2C_MODEL, LLAMA2C_TOKENIZER = "model.bin", "tokenizer.bin"
#: The file of a ``gguf`` export.
GGUF_MODEL = "model.gguf"


@dataclass(frozen=True)
class Exported:
    """What :func:`export_run` wrote: the folder ``path`` in ``format``, and ``notes`` for the user (one line
    each: adapters written apart or merged, a rescaling). ``os.fspath(exported)`` is the folder."""

    path: Path
    format: str
    notes: tuple[str, ...] = ()

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def export_run(run_dir, out, format: str = "hf", merge_lora: bool = False, dtype: str = "fp32") -> Exported:
    """Write the newest checkpoint of the run ``run_dir`` with its tokenizer to the new folder ``out``
    (absent or empty) in ``format`` (one of :data:`FORMATS`), atomically: everything is written to a hidden
    folder beside ``out``, then renamed, so ``out`` appears whole or not at all. A bad argument is a one-line
    SourceError naming it, before anything is written.

    A LoRA run (its model has adapters): with ``merge_lora`` the adapters are folded into the weights and the
    export is a plain model. Without it, ``hf`` writes the base model and the adapters as a PEFT folder
    ``out/adapter/`` (``base_model_name_or_path`` is ``out``'s absolute path; ``peft.PeftModel.from_pretrained``
    loads it over the base), and ``llama2c``, whose format holds no adapters, is refused. ``merge_lora`` on a
    run without adapters is a no-op with a note: the export is the plain model asked for either way.

    ``llama2c`` holds a Llama without biases with RoPE theta 10000; another architecture is refused. llama2.c's
    RMSNorm eps is 1e-5: a model with another ``norm_eps`` (qorus's default is 1e-6) is written with its
    residual stream scaled by ``sqrt(1e-5 / norm_eps)`` (the embeddings, ``o_proj`` and ``down_proj``; the
    classifier then stored apart), which gives the same logits. The tokenizer must be one that run.c encodes
    as the run does: run.c reads id 1 as BOS (before every prompt; generation stops there), puts a space
    before the prompt, looks each character up, encodes the bytes of others as id ``byte + 3`` and merges
    pieces by score. llama2.c's own tokenizer is written back as it is; a sentencepiece-style
    ``tokenizer.json`` (Llama's: ``<unk> <s> </s>`` and the 256 byte tokens at ids 0..258, byte fallback, a
    "▁" put first, every split of a piece into two pieces a listed merge) becomes a ``tokenizer.bin`` whose
    scores follow its merges. A byte tokenizer (id = byte) and other ``tokenizer.json`` files (byte-level
    BPE: their own ids, pre-tokenizer and merge rules) are refused with the reason (export ``hf`` instead).

    ``gguf`` writes ``out/model.gguf``, a Llama as llama.cpp's converter lays it out (F32 tensors, or with
    ``dtype="int8"`` its matrices as Q8_0, as the converter's ``--outtype q8_0``; its tokenizer as the file's
    vocabulary: :func:`qorus_jit.models.gguf.save_gguf`); another architecture, or unmerged adapters, are
    refused. ``dtype`` other than "fp32" is for ``gguf`` alone (a quantized Hugging Face folder is ``qorus
    quantize``'s).

    Returns an :class:`Exported` with the notes to show.
    """
    run_dir, out = check_path("run_dir", run_dir), check_path("out", out)
    if not isinstance(format, str) or format not in FORMATS:
        raise SourceError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if not isinstance(merge_lora, (bool, np.bool_)):
        raise SourceError(f"merge_lora: expected True or False, got {merge_lora!r}")
    if dtype not in ("fp32", "int8"):
        raise SourceError(f"dtype: expected 'fp32' or 'int8' (Q8_0, for --format gguf), got {dtype!r}")
    if dtype != "fp32" and format != "gguf":
        raise SourceError(f"dtype: {dtype} is for --format gguf (Q8_0 tensors); for a quantized Hugging Face "
                          "folder export hf, then run qorus quantize on it")
    if not (run_dir / RUN_FILE).is_file():
        raise SourceError(f"run_dir: expected a run directory of qorus train (holding {RUN_FILE}), got {run_dir}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        what = "a non-empty folder" if out.is_dir() else "a file"
        raise SourceError(f"out: expected a new or empty folder, got {what} {out}")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise SourceError(f"out: no such folder: {parent}")
    from qorus_jit.layers.lora import lora_layers

    model, tokenizer = load_run_model(run_dir)
    n_adapters, notes = len(lora_layers(model)), []
    if format in ("llama2c", "gguf"):
        what = "llama2.c's format" if format == "llama2c" else "a GGUF file"
        if format == "llama2c":
            _check_llama2c_fits(model)
        elif type(model).arch != "llama":
            raise SourceError(f"format: a GGUF export holds a Llama; the run's model is a {type(model).__name__}: "
                              "use --format hf")
        if n_adapters and not merge_lora:
            raise SourceError(f"merge_lora: {what} holds no adapters: pass --merge-lora (merge_lora="
                              f"True) to fold the run's {n_adapters} LoRA adapters into the weights")
        if format == "llama2c":
            l2c_tokenizer = _llama2c_tokenizer(tokenizer, model.config.vocab_size)
    else:
        _check_hf_tokenizer(tokenizer)
    if merge_lora:
        notes.append(_merge(model, n_adapters))
        n_adapters = 0
    if format == "llama2c":
        l2c_model, rescaled = _llama2c_model(model)
        if rescaled:
            notes.append(rescaled)

        def write(folder: Path) -> None:
            from qorus_jit.models.llama import save_llama2c

            save_llama2c(l2c_model, folder / LLAMA2C_MODEL)
            l2c_tokenizer.save(folder / LLAMA2C_TOKENIZER)
    elif format == "gguf":
        def write(folder: Path) -> None:
            from qorus_jit.models.gguf import save_gguf

            try:
                save_gguf(model, folder / GGUF_MODEL, tokenizer, dtype=dtype)
            except (ValueError, TypeError, ImportError) as e:
                raise SourceError(f"format: gguf: {e}") from None
    else:
        def write(folder: Path) -> None:
            from qorus_jit.layers.lora import save_lora
            from qorus_jit.models.registry import save_pretrained

            save_pretrained(_base_model(model) if n_adapters else model, folder, tokenizer=tokenizer)
            if n_adapters:
                save_lora(model, folder / ADAPTER_DIR, base_model_name_or_path=str(out.absolute()))

        if n_adapters:
            notes.append(f"wrote the base model and its {n_adapters} LoRA adapters apart, as a PEFT folder "
                         f"{out / ADAPTER_DIR} (transformers alone loads the base model without them; "
                         "peft.PeftModel.from_pretrained(model, that folder) applies them; --merge-lora "
                         "writes one merged model)")
    _write_folder(out, parent, write)
    return Exported(out, format, tuple(notes))


def _write_folder(out: Path, parent: Path, write) -> None:
    """``write(folder)`` into a hidden folder beside ``out``, then rename it to ``out``: all or nothing."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise SourceError(f"out: cannot write in {parent} ({os_reason(e)})") from None
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        write(tmp)
        os.replace(tmp, out)  # over an empty folder too
    except OSError as e:
        raise SourceError(f"out: cannot write {out} ({os_reason(e)}); nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(parent)


def _merge(model, n_adapters: int) -> str:
    from qorus_jit.layers.lora import merge_lora

    if not n_adapters:
        return "merge_lora: the run has no LoRA adapters; its model is exported as it is"
    merge_lora(model)
    return f"merged the run's {n_adapters} LoRA adapters into the weights"


def _base_model(model):
    """A copy of ``model`` without its LoRA adapters: the frozen base weights under their own names."""
    from qorus_jit.layers.lora import lora_layers

    adapter_params = {f"{dotted}.{name}" for dotted in lora_layers(model) for name in ("lora_A.weight",
                                                                                       "lora_B.weight")}
    base = type(model)(model.config)
    base.load_parameters({k: v for k, v in model.parameters().items() if k not in adapter_params})
    return base


def _check_hf_tokenizer(tokenizer) -> None:
    from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer

    if not isinstance(tokenizer, (ByteTokenizer, BPETokenizer)):
        raise SourceError(f"format: a Hugging Face folder holds a tokenizer.json, but the run's tokenizer is a "
                          f"{type(tokenizer).__name__} (llama2.c's tokenizer.bin): use --format llama2c")


def _check_llama2c_fits(model) -> None:
    """A SourceError naming the format unless llama2.c's format can hold ``model`` (see :func:`_llama2c_model`)."""
    from qorus_jit.formats import llama2c
    from qorus_jit.models.llama import Llama

    fits = "llama2.c's format holds a Llama without biases with RoPE theta 10000"
    if not isinstance(model, Llama):
        raise SourceError(f"format: {fits}; the run's model is a {type(model).__name__}: use --format hf")
    c = model.config
    for field in ("attention_bias", "mlp_bias"):
        if getattr(c, field):
            raise SourceError(f"format: {fits}; the run's Llama has {field}: use --format hf")
    if float(c.rope_theta) != llama2c.ROPE_THETA:
        raise SourceError(f"format: {fits}; the run's Llama has rope_theta={c.rope_theta:g}: use --format hf")
    if not float(c.norm_eps) > 0:
        raise SourceError(f"format: llama2.c's RMSNorm eps is {llama2c.NORM_EPS:g}; the run's Llama has "
                          f"norm_eps={c.norm_eps:g}, which no scaling matches: use --format hf")


def _llama2c_model(model):
    """``(model, note)``: the plain Llama ``model`` as llama2.c's format holds it. Another RMSNorm eps than
    llama2.c's is made up for by scaling the residual stream by ``c``: ``rmsnorm(c x, eps') = rmsnorm(x, eps'
    / c**2)``, so with ``c = sqrt(1e-5 / norm_eps)`` every norm gives the same output when the embeddings,
    ``o_proj`` and ``down_proj`` (all that writes the stream) are scaled by ``c``."""
    from qorus_jit.formats import llama2c
    from qorus_jit.models.llama import Llama

    c, eps = model.config, float(model.config.norm_eps)
    if eps == llama2c.NORM_EPS:
        return model, None
    scale = math.sqrt(llama2c.NORM_EPS / eps)
    p = model.parameters()
    out = {k: v for k, v in p.items()}
    out["lm_head.weight"] = p["model.embed_tokens.weight" if c.tie_embeddings else "lm_head.weight"]
    for k, v in p.items():
        if k == "model.embed_tokens.weight" or k.endswith((".self_attn.o_proj.weight", ".mlp.down_proj.weight")):
            out[k] = (v.astype(np.float64) * scale).astype(np.float32)
    scaled = Llama(replace(c, norm_eps=llama2c.NORM_EPS, tie_embeddings=False))
    scaled.load_parameters(out)
    note = (f"norm_eps: llama2.c's RMSNorm eps is {llama2c.NORM_EPS:g}, the run's {eps:g}: the residual stream is "
            f"written scaled by sqrt({llama2c.NORM_EPS:g}/{eps:g}) = {scale:.6g} (embeddings, o_proj, down_proj"
            f"{'; the tied classifier stored apart' if c.tie_embeddings else ''}), which gives the same logits")
    return scaled, note


def _llama2c_tokenizer(tokenizer, vocab_size: int):
    """The run's tokenizer as llama2.c's ``tokenizer.bin`` of ``vocab_size`` pieces, or a SourceError."""
    from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer

    if isinstance(tokenizer, BPETokenizer):
        converted = _from_sentencepiece(tokenizer)
        if isinstance(converted, str):
            raise SourceError(f"format: llama2c needs a tokenizer that llama2.c's run.c encodes as the run's does: "
                              f"run.c's is sentencepiece BPE (<unk>, <s>, </s>, <0x00>..<0xFF> at ids 0..258, "
                              f"a space put first, merges by score) and the run's tokenizer.json {converted}: "
                              f"use --format hf")
        tokenizer = converted
    if isinstance(tokenizer, Llama2cTokenizer):
        if tokenizer.vocab_size == vocab_size:
            return tokenizer
        if tokenizer.vocab_size > vocab_size:
            raise SourceError(f"format: the run's tokenizer has {tokenizer.vocab_size} ids, its model "
                              f"{vocab_size}: use --format hf")
        # run.c reads vocab_size pieces: empty ones for the ids the model has past the tokenizer's (never
        # produced by encoding; they decode to nothing)
        n = vocab_size - tokenizer.vocab_size
        return Llama2cTokenizer([*tokenizer.pieces, *[b""] * n], [*tokenizer.scores.tolist(), *[0.0] * n],
                                tokenizer.max_token_length)
    rules = ("llama2.c's run.c reads id 1 as BOS (put before every prompt; generation stops there), puts a "
             "space before the prompt and encodes other bytes as id byte+3")
    if isinstance(tokenizer, ByteTokenizer):
        why = "the run's byte tokenizer has id = byte, so the model would read other text than it learned"
    else:
        why = f"the run's tokenizer is a {type(tokenizer).__name__}"
    raise SourceError(f"format: llama2c needs llama2.c's own tokenizer: {rules}; {why}: use --format hf")


_SPACE = "\u2581"  # sentencepiece's "▁": a space inside a piece
_BOS_EOS_PIECES = {1: "\n<s>\n", 2: "\n</s>\n"}  # as llama2.c's tokenizer export writes them
_PROBES = ("Once upon a time", "  two  spaces, tabs\tand\nlines ", "café naïve 日本語 👍🏽", "a", "")


def _from_sentencepiece(tokenizer):
    """A Llama2cTokenizer that run.c encodes as the BPETokenizer ``tokenizer`` does (a sentencepiece-style
    tokenizer.json, as Llama's is), or the reason it cannot be made (a str). run.c merges any adjacent pair
    whose concatenation is a piece, highest score first; the tokenizer.json merges only the pairs it lists,
    lowest rank first. They agree when every split of a piece into two pieces is a listed merge and the
    merges of one piece are listed together: each piece then gets the score ``-(its place in that order)``."""
    from qorus_jit.tokenizers import Llama2cTokenizer

    spec = json.loads(tokenizer.to_json())
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not isinstance(vocab, dict):
        return "is not BPE with byte fallback"
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    if any(vocab.get(k) != v for k, v in specials.items()):
        return "does not have those 259 tokens at those ids"
    if not _sentencepiece_spaces(spec):
        return "does not put a space before the text and turn spaces into \u2581 without splitting"
    added = [t for t in spec.get("added_tokens") or [] if t.get("content") not in ("<unk>", "<s>", "</s>")]
    if added:
        return f"has added tokens ({added[0].get('content')!r}, ...) that run.c would not match"
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        return "does not number its vocabulary 0..n-1"
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    block, last = {}, None
    for a, b in merges:
        piece = a + b
        if piece not in vocab or a not in vocab or b not in vocab:
            return f"merges {a!r} and {b!r}, which are not all in its vocabulary"
        if piece in block and piece != last:
            return f"lists the merges giving {piece!r} apart (run.c scores pieces, not pairs)"
        block.setdefault(piece, len(block))
        last = piece
    listed = set(merges)
    for piece, _ in by_id[259:]:
        for k in range(1, len(piece)):
            if piece[:k] in vocab and piece[k:] in vocab and (piece[:k], piece[k:]) not in listed:
                return f"does not merge {piece[:k]!r} and {piece[k:]!r} into {piece!r}, which run.c would"
    pieces = [_BOS_EOS_PIECES.get(i, t).replace(_SPACE, " ").encode("utf-8") for t, i in by_id]
    if len(set(pieces)) != len(pieces):
        return "has two tokens that are the same text once \u2581 is a space"
    scores = [-float(block[t]) if t in block else 0.0 for t, _ in by_id]
    converted = Llama2cTokenizer(pieces, scores)
    for text in _PROBES:  # a last check on a few texts
        if converted.encode(text, bos=False).tolist() != tokenizer.encode(text).tolist():
            return f"encodes {text!r} otherwise than run.c would"
    return converted


def _sentencepiece_spaces(spec: dict) -> bool:
    """Spaces as sentencepiece (and run.c) make them: a "▁" put before the text, every " " a "▁", no
    splitting: Llama's legacy normalizer (Prepend + Replace) or a Metaspace pre-tokenizer that does not split."""
    norm, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    if norm and norm.get("type") == "Sequence" and pre is None:
        steps = [(n.get("type"), n.get("prepend"), n.get("content"), (n.get("pattern") or {}).get("String"))
                 for n in norm.get("normalizers", [])]
        return steps == [("Prepend", _SPACE, None, None), ("Replace", None, _SPACE, " ")]
    if norm is None and pre and pre.get("type") == "Metaspace":
        return (pre.get("replacement") == _SPACE and pre.get("split") is False
                and pre.get("prepend_scheme", "always") in ("always", "first"))
    return False
