"""Where a model comes from: a run directory of ``qorus train``, a Hugging Face folder, a llama2.c ``.bin``
file or a GGUF file, each with its tokenizer. What ``qorus generate`` runs and ``qorus train --init`` starts
from.

>>> src = load_source("runs/my-run")                                     # doctest: +SKIP
>>> src.encode("Once upon a time")                                       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qorus_jit.core.files import check_path, read_json
from qorus_jit.formats.checkpoint import (
    MODEL_FILE,
    RUN_FILE,
    latest_checkpoint,
    load_checkpoint,
    read_run_record,
    run_tokenizer_path,
)
from qorus_jit.layers import Layer
from qorus_jit.tokenizers import Llama2cTokenizer, load_tokenizer


class SourceError(ValueError):
    """A model source that cannot be used: reported as one line (exit code 2 on the command line)."""


@dataclass
class Source:
    """A model with its tokenizer: ``kind`` is ``"run"``, ``"hf"``, ``"llama2c"`` or ``"gguf"``; ``bos`` is
    prepended to prompts when set; generation stops at ``stop_ids``; ``vocab_limit`` is the tokenizer's size
    (at most the model's vocab_size, often padded past it): generation picks no id the tokenizer cannot
    decode."""

    model: object
    tokenizer: object
    kind: str
    path: Path
    bos: int | None = None
    stop_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def vocab_limit(self) -> int:
        """Ids at or past this are never sampled: the tokenizer's size (a padded vocabulary's extra ids are
        not its tokens)."""
        return tokenizer_size(self.tokenizer)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as int64 ids for the model, with the source's BOS first where it has one (llama2.c's
        tokenizer: its own BOS unless the source sets one)."""
        if isinstance(self.tokenizer, Llama2cTokenizer):  # its BOS, as llama2.c and training put it, unless set
            ids = np.asarray(self.tokenizer.encode(text, bos=self.bos is None), np.int64)
        else:
            ids = np.asarray(self.tokenizer.encode(text), np.int64)
        return ids if self.bos is None else np.concatenate([[self.bos], ids])

    def decode(self, ids) -> str:
        """The text of token ``ids`` (any sequence of ints)."""
        return self.tokenizer.decode(list(ids))


def check_model(model) -> None:
    """``model`` must generate text: a Llama or GPT-2 (a causal language model with a ``config`` of
    ``vocab_size`` and ``max_seq_len`` whose layers all decode incrementally); else a one-line TypeError."""
    config = getattr(model, "config", None)
    sizes = (getattr(config, "vocab_size", None), getattr(config, "max_seq_len", None))
    if isinstance(model, Layer) and model.incremental and all(isinstance(v, (int, np.integer)) for v in sizes):
        return
    why = ""
    if isinstance(model, Layer) and not model.incremental:
        why = " (its attention is bidirectional or its layers mix positions: it cannot decode token by token)"
    elif isinstance(model, Layer):
        why = " (no config with vocab_size and max_seq_len: not a language model)"
    kind = "None" if model is None else type(model).__name__
    raise TypeError(f"model: generation needs a Llama or GPT-2 model, got {kind}{why}")


def tokenizer_size(tokenizer) -> int | None:
    """How many ids ``tokenizer`` decodes: its ``vocab_size``, else its ``len``, else None (not known)."""
    n = getattr(tokenizer, "vocab_size", None)
    if n is None and hasattr(tokenizer, "__len__"):
        n = len(tokenizer)
    ok = isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1
    return int(n) if ok else None


def load_source(source, tokenizer=None, dtype: str | None = None) -> Source:
    """Load ``source``: a ``qorus train`` run directory (``run.json``; newest checkpoint), a Hugging Face
    folder (``config.json``; its ``tokenizer.json``), a GGUF file (told by its magic; the tokenizer of its
    metadata) or a llama2.c checkpoint (a file; ``tokenizer`` must name its ``tokenizer.bin``). ``tokenizer``
    overrides the source's own (any :func:`load_tokenizer` spec).

    ``dtype`` ("fp32", "bf16", "int8"; None: as the source holds them) is that of the linear layers and the
    head, as for ``load_pretrained`` (a GGUF file's blocks in that format kept as stored, a quantized folder
    only in its own format); a model that cannot take it is a :class:`SourceError` naming ``dtype``.
    """
    src = _load_source(source, tokenizer, dtype)
    if dtype is not None and src.kind in ("run", "llama2c"):  # the loaders of the others take dtype themselves
        from qorus_jit.models.quantize import quantize_model

        try:
            quantize_model(src.model, dtype)
        except ValueError as e:
            raise SourceError(f"dtype: {e}") from None
    return src


def _load_source(source, tokenizer, dtype) -> Source:
    path = check_path("source", source)
    if not path.exists():
        raise SourceError(f"source: no such file or folder: {path}")
    try:
        tok = None if tokenizer is None else load_tokenizer(tokenizer, "tokenizer")
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise SourceError(str(e) if str(e).startswith("tokenizer: ") else f"tokenizer: {e}") from None
    if path.is_dir() and (path / RUN_FILE).is_file():
        model, own = load_run_model(path)
        return _checked(Source(model, tok or own, "run", path))
    if path.is_dir() and (path / "config.json").is_file():
        return _checked(_hf_source(path, tok, dtype))
    if path.is_dir():
        raise SourceError(f"source: {path} is neither a run directory (run.json) nor a Hugging Face folder "
                          f"(config.json)")
    from qorus_jit.formats.gguf import is_gguf
    from qorus_jit.formats.llama2c import read_llama2c_header
    from qorus_jit.models.llama import load_llama2c

    if is_gguf(path):  # by its magic
        return _checked(_gguf_source(path, tok, dtype))
    try:  # a file that is no model is told so before its tokenizer is asked for
        read_llama2c_header(path)
    except (OSError, ValueError) as e:
        raise SourceError(f"source: {path} is not a model: not a run directory or a Hugging Face folder, not a "
                          f"GGUF file (magic b'GGUF'), and not a llama2.c checkpoint ({e})") from None
    if tok is None:
        raise SourceError(f"tokenizer: a llama2.c checkpoint needs its tokenizer.bin (--tokenizer) for {path}")
    try:
        model = load_llama2c(path)
    except (OSError, ValueError) as e:
        raise SourceError(str(e)) from None
    if not isinstance(tok, Llama2cTokenizer):
        raise SourceError(f"tokenizer: a llama2.c checkpoint needs llama2.c's tokenizer.bin, got {_describe(tok)}")
    stop = {tok.eos_id, tok.bos_id}
    return _checked(Source(model, tok, "llama2c", path, stop_ids=frozenset(stop)))


def load_run_model(run_dir):
    """``(model, tokenizer)`` of a ``qorus train`` run directory: the model rebuilt from the model record of
    its ``run.json`` through the models registry, with the weights of its newest complete checkpoint, and
    the run's tokenizer. The record is checked against the checkpoint's tensor shapes (as for a Hugging Face
    folder) before the model is built, so memory stays bounded by the files whatever the record says. A
    SourceError names the directory, or ``run.json`` and the field, when something is missing or damaged."""
    from qorus_jit.models.registry import architecture, build_model, check_shapes

    run_dir = Path(run_dir)
    record_file = run_dir / RUN_FILE
    try:
        record = read_run_record(run_dir)
    except (OSError, ValueError) as e:
        raise SourceError(f"{run_dir}: {e}") from None
    fields = record.get("model")
    if not isinstance(fields, dict) or not isinstance(fields.get("arch"), str):
        raise SourceError(f"{record_file}: no model record (expected a 'model' table with an 'arch')")
    try:
        cls = architecture(fields["arch"])
        config = cls.config_class.from_dict({k: v for k, v in fields.items() if k != "arch"})
    except (ValueError, TypeError) as e:
        raise SourceError(f"{record_file}: model: {e}") from None
    found = latest_checkpoint(run_dir)
    if found is None:
        raise SourceError(f"{run_dir}: the run has no complete checkpoint yet")
    try:
        tokenizer = load_tokenizer(run_tokenizer_path(run_dir))
        tensors = load_checkpoint(found).model  # bounded by the file's size
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise SourceError(f"{run_dir}: {e}") from None
    base = {k: v for k, v in tensors.items() if not _is_adapter(k)}
    try:  # the record against the weights, in the Hugging Face layout that check_shapes knows
        check_shapes(config, {k: v.shape for k, v in cls.to_hf_tensors(base).items()},
                     source=str(found / MODEL_FILE))
    except ValueError as e:
        raise SourceError(f"{record_file}: the model record does not fit the checkpoint: {e}") from None
    try:
        model = build_model(fields["arch"], config)
        apply_run_lora(model, record.get("lora"), record_file)
        model.load_parameters(tensors)
    except (ValueError, TypeError) as e:
        raise SourceError(f"{run_dir}: {e}") from None
    return model, tokenizer


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_record(adapters: dict, targets: list[str]) -> dict:
    """What a run folder's ``run.json`` keeps of a model's LoRA adapters (``apply_lora``'s result) so that
    :func:`apply_run_lora` puts the same ones on a rebuilt model: rank, alpha, dropout and the target names."""
    first = next(iter(adapters.values()))
    return {"rank": first.rank, "alpha": first.alpha, "targets": list(targets), "dropout": first.dropout}


def apply_run_lora(model, lora, where) -> None:
    """Put the adapters a run record's ``lora`` table describes on ``model`` (nothing when it is None);
    a ValueError naming ``where`` and the field when the table is damaged."""
    from qorus_jit.layers.lora import apply_lora

    if lora is None:
        return
    ok = isinstance(lora, dict) and isinstance(lora.get("targets"), list) and all(
        isinstance(lora.get(k), (int, float)) and not isinstance(lora.get(k), bool)
        for k in ("rank", "alpha", "dropout"))
    if not ok:
        raise ValueError(f"{where}: lora: expected a table of rank, alpha, dropout and targets, got {lora!r}")
    try:
        apply_lora(model, lora["targets"], lora["rank"], float(lora["alpha"]), dropout=float(lora["dropout"]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: lora: {e}") from None


def _gguf_source(path: Path, tok, dtype=None) -> Source:
    """A GGUF file's Llama, with the tokenizer of its metadata unless ``tok`` overrides it; its BOS and stop
    ids from the metadata either way."""
    from qorus_jit.formats.gguf import read_gguf
    from qorus_jit.models.gguf import gguf_model, gguf_special_ids, gguf_tokenizer

    try:
        gf = read_gguf(path)
        model = gguf_model(gf, dtype)
        if tok is None:
            own = gguf_tokenizer(gf)
            tok, bos, stop = own.tokenizer, own.bos, own.stop_ids
        else:
            bos, stop = gguf_special_ids(gf, model.config.vocab_size)
    except (OSError, ValueError, ImportError) as e:
        raise SourceError(str(e)) from None
    return Source(model, tok, "gguf", path, bos=bos, stop_ids=stop)


def _hf_source(path: Path, tok, dtype=None) -> Source:
    from qorus_jit.models import load_pretrained

    try:
        model = load_pretrained(path, dtype)
    except (OSError, ValueError) as e:
        raise SourceError(str(e)) from None
    if not model.incremental:  # bidirectional attention (BERT) cannot decode token by token
        raise SourceError(f"source: {path} holds a {type(model).__name__}, which does not generate text")
    if tok is None:
        try:
            tok = load_tokenizer(path)
        except (OSError, ValueError, ImportError) as e:
            raise SourceError(f"tokenizer: {e} (pass --tokenizer)") from None
    file = path / "config.json"
    hf = read_json(file, "config.json")
    vocab = model.config.vocab_size
    stop = frozenset(_config_ids(file, "eos_token_id", hf.get("eos_token_id"), vocab, many=True))
    bos = None
    if hf.get("model_type") == "llama":
        bos = next(iter(_config_ids(file, "bos_token_id", hf.get("bos_token_id"), vocab)), None)
    return Source(model, tok, "hf", path, bos=bos, stop_ids=stop)


def _config_ids(file: Path, key: str, value, vocab: int, many: bool = False) -> list[int]:
    """The token ids of ``config.json``'s ``key``: none (``value`` None), an int in ``[0, vocab)`` or, when
    ``many``, a list of them; else a SourceError naming the file and the key (not a later prompt error)."""
    ids = [] if value is None else value if many and isinstance(value, list) else [value]
    for v in ids:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab:
            raise SourceError(f"{file}: {key}: expected a token id in [0, {vocab}) (the model's vocab_size)"
                              f"{' or a list of them' if many else ''}, got {value!r}")
    return ids


def _describe(tok) -> str:
    """A tokenizer in words, for errors: its kind, size and file."""
    where = getattr(tok, "source", None)
    return f"{type(tok).__name__} of {tokenizer_size(tok)} ids" + (f" ({where})" if where else "")


def _checked(src: Source) -> Source:
    """The model generates and its tokenizer fits it: at most as many ids as the model's vocabulary."""
    try:
        check_model(src.model)
    except TypeError as e:
        raise SourceError(f"source: {src.path}: {e}") from None
    vocab, n = src.model.config.vocab_size, tokenizer_size(src.tokenizer)
    if n is None:
        raise SourceError(f"tokenizer: expected a tokenizer with a vocab_size, got {type(src.tokenizer).__name__}")
    if n > vocab:
        raise SourceError(f"tokenizer: expected at most the model's vocab_size of {vocab} ids, got a "
                          f"{_describe(src.tokenizer)}")
    return src
