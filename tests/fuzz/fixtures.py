"""The valid files the loader and CLI cases damage, written once per fuzz run into ``$FUZZ_TMP/fixtures``:
Hugging Face folders (Llama, GPT-2, BERT, a sharded Llama), a sentence-transformers folder, llama2.c files
(versions 0 and 1) with their tokenizer.bin, tokenizer files, a trained run folder and a TOML config."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

FIXTURES = ("hf_llama", "hf_gpt2", "hf_bert", "hf_sharded", "st_bert", "l2c", "tokenizers", "run", "toml")


def root() -> Path:
    return Path(os.environ.get("FUZZ_TMP", "/tmp/qorus-fuzz")) / "fixtures"


def get(name: str) -> Path:
    """The fixture folder ``name``, written on first use (a ``.done`` marker is written last)."""
    folder = root() / name
    if not (folder / ".done").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _MAKERS[name](folder)
        (folder / ".done").write_text("")
    return folder


def copy(name: str, dest: Path) -> Path:
    """A fresh copy of fixture ``name`` at ``dest`` (the cases damage copies, never the fixture)."""
    shutil.copytree(get(name), dest, ignore=shutil.ignore_patterns(".done"))
    return dest


def _llama(vocab=256, **kw):
    from qorus_jit.models import Llama, LlamaConfig

    cfg = dict(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=vocab, max_seq_len=32,
               norm_eps=1e-5)
    return Llama(LlamaConfig(**{**cfg, **kw}), rng=0)


def _hf_llama(folder: Path) -> None:
    from qorus_jit.models import save_pretrained
    from qorus_jit.tokenizers import ByteTokenizer

    save_pretrained(_llama(), folder)
    ByteTokenizer().save(folder / "tokenizer.json")


def _hf_gpt2(folder: Path) -> None:
    from qorus_jit.models import GPT2, GPT2Config, save_pretrained
    from qorus_jit.tokenizers import ByteTokenizer

    save_pretrained(GPT2(GPT2Config(dim=16, n_layers=1, n_heads=2, vocab_size=256, max_seq_len=32), rng=0), folder)
    ByteTokenizer().save(folder / "tokenizer.json")


def _bert(vocab):
    from qorus_jit.models import Bert, BertConfig

    return Bert(BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=vocab, max_seq_len=32), rng=0)


def _hf_bert(folder: Path) -> None:
    from qorus_jit.models import save_pretrained

    save_pretrained(_bert(50), folder)


def _hf_sharded(folder: Path) -> None:
    """The Llama folder with its weights in two shards and an index."""
    from safetensors.numpy import load_file, save_file

    src = get("hf_llama")
    shutil.copy(src / "config.json", folder / "config.json")
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _st_bert(folder: Path) -> None:
    """A sentence-transformers folder: a BERT, a WordPiece tokenizer.json, the module files."""
    from qorus_jit.models import save_pretrained
    from tests.test_embeddings import VOCAB, make_tokenizer, modules_json, pooling_config

    save_pretrained(_bert(len(VOCAB)), folder)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "modules.json").write_text(json.dumps(modules_json("Transformer", "Pooling", "Normalize")))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config("mean", dim=16)))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))


def _l2c(folder: Path) -> None:
    """llama2.c checkpoints (versions 0 and 1) and a tokenizer.bin of as many tokens."""
    from qorus_jit.models.llama import save_llama2c
    from tests.test_llama2c import make_vocab, write_tokenizer

    pieces, scores = make_vocab()
    model = _llama(vocab=len(pieces))
    save_llama2c(model, folder / "v0.bin", version=0)
    save_llama2c(model, folder / "v1.bin", version=1)
    write_tokenizer(folder / "tokenizer.bin", pieces, scores)


def _tokenizers(folder: Path) -> None:
    from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer

    ByteTokenizer().save(folder / "byte.json")
    BPETokenizer.train(["the cat sat on the mat " * 20, "a dog and a cat ran"], vocab_size=300).save(
        folder / "bpe.json")
    (folder / "corpus.txt").write_text("the cat sat on the mat. " * 200, encoding="utf-8")


def _run(folder: Path) -> None:
    """A finished run of ``qorus train`` (two steps of a tiny Llama on a small text), as ``folder/r``."""
    from qorus_jit.train import TrainConfig, start_run

    text = folder / "corpus.txt"
    text.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    cfg = TrainConfig(data=str(text), steps=2, warmup_steps=1, dim=16, n_heads=2, n_layers=1, hidden_dim=32,
                      seq_len=16, batch_size=2, eval_every=0, ckpt_every=0, sample_tokens=0, out_dir=str(folder),
                      name="r")
    start_run(cfg, progress=False).fit()


def _toml(folder: Path) -> None:
    (folder / "train.toml").write_text('steps = 2\ndim = 16\nn_heads = 2\nn_layers = 1\nhidden_dim = 32\n'
                                       'seq_len = 16\nbatch_size = 2\nlr = 0.001\nsample_tokens = 0\n',
                                       encoding="utf-8")


_MAKERS = {"hf_llama": _hf_llama, "hf_gpt2": _hf_gpt2, "hf_bert": _hf_bert, "hf_sharded": _hf_sharded,
           "st_bert": _st_bert, "l2c": _l2c, "tokenizers": _tokenizers, "run": _run, "toml": _toml}


def safetensors_header(path: Path) -> tuple[dict, bytes]:
    """The parsed JSON header of a safetensors file and the data after it."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_safetensors_raw(path: Path, header, body: bytes, length: int | None = None) -> None:
    """A safetensors file from a header (a dict, or raw bytes) and data; ``length`` overrides the stored header
    length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little", signed=False) + raw + body)


def np_header(path: Path) -> np.ndarray:
    """The 7 int32 sizes of a legacy llama2.c file."""
    return np.frombuffer(path.read_bytes()[:28], "<i4").copy()
