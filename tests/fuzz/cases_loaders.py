"""Fuzz cases of the loaders: Hugging Face folders (single and sharded), llama2.c files and tokenizer.bin,
tokenizer files, run folders (``load_source``, ``resume_run``), sentence-transformers folders, TOML configs,
text and token files, metrics files, and the writers' path arguments.

Each case copies a valid fixture (fixtures.py), damages one file (missing, empty, truncated, garbage bytes,
invalid UTF-8, JSON nested 100,000 deep, wrong JSON types, huge sizes in headers, bad values of one key) and
calls the loader: it must raise a ValueError or TypeError naming the file (or the key), or an OSError for a
file that is missing or is a folder; never another exception, a crash or an allocation of the size a header
claims.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from qorus_jit.infer.embeddings import SentenceEncoder, embed
from qorus_jit.models import Llama, LlamaConfig, load_pretrained, save_pretrained
from qorus_jit.models.llama import load_llama2c, save_llama2c
from qorus_jit.models.sources import load_source
from qorus_jit.tokenizers import BPETokenizer, Llama2cTokenizer, load_tokenizer
from qorus_jit.train import TrainConfig, resume_run
from qorus_jit.train.plot import plot_run, read_metrics
from tests.fuzz import fixtures
from tests.fuzz.harness import Case, HarnessError
from tests.fuzz.mutate import DELETE, case_dir, damage, edit_json, file_damages, nested_json

FILE_ERRORS = (TypeError, ValueError, OSError)
CONTENT_ERRORS = (TypeError, ValueError)


def _loader_case(cid, fixture, target, mutate, call, names, fix, expect="error", check=None, errors=None):
    """Copy ``fixture``, apply ``mutate(path of target in the copy)``, then ``call(copy folder)``."""
    def run():
        try:
            d = fixtures.copy(fixture, case_dir(cid) / fixture)
            if target is not None:
                mutate(d / target)
        except Exception as e:
            raise HarnessError(f"preparing: {type(e).__name__}: {e}") from e
        return call(d)
    return Case(cid, run, expect, tuple(names), check or (lambda r: None), errors or CONTENT_ERRORS, fix=fix)


def _damage_cases(prefix, fixture, target, call, fix, text, names=None, also=(), expects=None, only=None,
                  check=None):
    """The generic damages of one file: missing (an OSError may say so), a folder in its place, empty,
    truncated, garbage and (text files) invalid UTF-8, deep nesting, not JSON, a JSON list or null.
    ``expects[label]`` overrides "error" (an optional file may be missing); ``only`` keeps those labels."""
    name = Path(target).name
    names = names or (name,)
    expects = expects or {}
    out = []
    damages = {**file_damages(text), **dict(also), "folder": _to_folder}
    for label, fn in damages.items():
        if only is not None and label not in only:
            continue
        errors = FILE_ERRORS if label in ("missing", "folder") else CONTENT_ERRORS
        mutate = fn if label == "folder" else (lambda p, fn=fn: damage(p, fn))
        expect, nm = expects.get(label, "error"), names
        if isinstance(expect, tuple):
            expect, nm = expect
        out.append(_loader_case(f"{prefix}/{target}/{label}", fixture, target, mutate, call, nm, fix,
                                expect=expect, errors=errors, check=check))
    return out


def _to_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


# ------------------------------------------------------------------------------------- Hugging Face folders

_HF_KEYS = {
    "hf_llama": {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                 "num_key_value_heads": "n_kv_heads", "intermediate_size": "hidden_dim", "vocab_size": "vocab_size",
                 "max_position_embeddings": "max_seq_len", "rms_norm_eps": "norm_eps", "rope_theta": "rope_theta",
                 "tie_word_embeddings": "tie_embeddings", "head_dim": "head_dim"},
    "hf_gpt2": {"n_embd": "dim", "n_layer": "n_layers", "n_head": "n_heads", "vocab_size": "vocab_size",
                "n_positions": "max_seq_len", "layer_norm_epsilon": "norm_eps", "n_inner": "hidden_dim"},
    "hf_bert": {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                "intermediate_size": "hidden_dim", "vocab_size": "vocab_size", "max_position_embeddings": "max_seq_len",
                "type_vocab_size": "type_vocab_size", "layer_norm_eps": "norm_eps", "pad_token_id": "pad_token_id"},
}
_FLOAT_KEYS = {"rms_norm_eps", "rope_theta", "layer_norm_epsilon", "layer_norm_eps"}
_OPTIONAL = {"num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
             "head_dim", "n_positions", "layer_norm_epsilon", "n_inner", "type_vocab_size", "layer_norm_eps",
             "pad_token_id"}
_BAD_INTS = (("str", "16"), ("negative", -1), ("zero", 0), ("fraction", 1.5), ("bool", True), ("list", [16]),
             ("dict", {}), ("huge", 2**62), ("beyond-int64", 2**64), ("float-huge", 1e308))
_BAD_FLOATS = (("str", "1e-5"), ("negative", -1.0), ("zero", 0), ("bool", True), ("list", [1e-5]), ("nan", "NaN"),
               ("inf", "Infinity"), ("dict", {}))


def _set_key(key, value):
    """Set ``key`` of a config.json (``rope_theta`` in both places a Llama config.json may hold it)."""
    def mutate(p: Path) -> None:
        d = json.loads(p.read_text())
        v = float(value.replace("Infinity", "inf")) if value in ("NaN", "Infinity") else value
        if key == "rope_theta" and "rope_parameters" in d:
            d["rope_parameters"]["rope_theta"] = v
        if v is DELETE:
            d.pop(key, None)
        else:
            d[key] = v
        p.write_text(json.dumps(d))  # NaN and Infinity as JSON's non-standard literals, which Python reads
    return mutate


def _first_tensor(fixture):
    """The name of the first tensor (sorted) of a fixture's checkpoint, from its architecture's shapes."""
    from qorus_jit.models import GPT2, Bert, BertConfig, GPT2Config, Llama, LlamaConfig

    cls, cfg = {"hf_llama": (Llama, LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32,
                                                 vocab_size=256, max_seq_len=32)),
                "hf_gpt2": (GPT2, GPT2Config(dim=16, n_layers=1, n_heads=2, vocab_size=256, max_seq_len=32)),
                "hf_bert": (Bert, BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=50,
                                             max_seq_len=32))}[fixture]
    return sorted(cls.hf_shapes(cfg))[0]


def _hf_cases():
    fix_hf, fix_reg = "qorus_jit/formats/hf.py", "qorus_jit/models/registry.py"
    out = []
    for fixture in ("hf_llama", "hf_gpt2", "hf_bert"):
        prefix = f"loaders/load_pretrained/{fixture}"
        out += _damage_cases(prefix, fixture, "config.json", load_pretrained, fix_hf, text=True)
        out += _damage_cases(prefix, fixture, "model.safetensors", load_pretrained, "qorus_jit/formats/safetensors.py",
                             text=False, also=_safetensors_damages())
        arch_file = {"hf_llama": "llama", "hf_gpt2": "gpt2", "hf_bert": "bert"}[fixture]
        first = _first_tensor(fixture)
        for key, field in _HF_KEYS[fixture].items():
            bad = _BAD_FLOATS if key in _FLOAT_KEYS else _BAD_INTS
            for label, value in bad + (() if key in _OPTIONAL else (("null", None), ("deleted", DELETE))):
                expect = "error"
                if (key == "pad_token_id" and label == "zero") or (
                        key in ("max_position_embeddings", "n_positions") and label in ("huge", "beyond-int64")):
                    expect = "either"  # a valid value (positions are not allocated up front)
                out.append(_loader_case(f"{prefix}/config.json/{key}/{label}", fixture, "config.json",
                                        _set_key(key, value), load_pretrained, (key, field, "config.json"),
                                        f"qorus_jit/models/{arch_file}.py", expect=expect))
        for key, value, expect in (("architectures", ["Nope"], "error"), ("architectures", "Nope", "error"),
                                   ("architectures", 3, "error"), ("architectures", [None], "error"),
                                   ("architectures", {}, "either"), ("model_type", 3, "either"),
                                   ("model_type", ["x"], "either")):
            out.append(_loader_case(f"{prefix}/config.json/{key}/{json.dumps(value)}", fixture, "config.json",
                                    _set_key(key, value), load_pretrained, (key, "config.json"), fix_reg,
                                    expect=expect))
        out.append(_loader_case(f"{prefix}/config.json/model_type-only-nope", fixture, "config.json",
                                lambda p: (edit_json(p, ("architectures",), DELETE),
                                           edit_json(p, ("model_type",), "nope")),
                                load_pretrained, ("model_type", "config.json"), fix_reg))
        out.append(_loader_case(f"{prefix}/extra-tensor", fixture, "model.safetensors", _add_tensor, load_pretrained,
                                ("extra.weight", "model.safetensors"), fix_reg))
        out.append(_loader_case(f"{prefix}/tensor-int32", fixture, "model.safetensors", _int_tensor, load_pretrained,
                                ("model.safetensors", first), fix_reg))
        out.append(_loader_case(f"{prefix}/tensor-missing", fixture, "model.safetensors", _drop_tensor,
                                load_pretrained, ("model.safetensors", first), fix_reg))
        out.append(_loader_case(f"{prefix}/pickle-only", fixture, "model.safetensors",
                                lambda p: p.rename(p.parent / "pytorch_model.bin"), load_pretrained,
                                ("pytorch_model.bin",), fix_hf))
    for label, value in (("huge-rope", {"rope_type": "linear", "factor": 2.0}), ("str", "x"), ("list", [1])):
        out.append(_loader_case(f"loaders/load_pretrained/hf_llama/config.json/rope_scaling/{label}", "hf_llama",
                                "config.json", _set_key("rope_scaling", value), load_pretrained,
                                ("rope_scaling", "config.json"), "qorus_jit/models/llama.py"))
    for label, value in (("gelu", "gelu"), ("int", 3)):
        out.append(_loader_case(f"loaders/load_pretrained/hf_llama/config.json/hidden_act/{label}", "hf_llama",
                                "config.json", _set_key("hidden_act", value), load_pretrained,
                                ("hidden_act", "config.json"), "qorus_jit/models/llama.py"))
    # the sharded folder
    prefix = "loaders/load_pretrained/hf_sharded"
    out += _damage_cases(prefix, "hf_sharded", "model.safetensors.index.json", load_pretrained, fix_hf, text=True)
    out += _damage_cases(prefix, "hf_sharded", "model-00001-of-00002.safetensors", load_pretrained, fix_hf,
                         text=False)
    for label, edit in (("weight_map-list", lambda d: d.__setitem__("weight_map", [])),
                        ("weight_map-empty", lambda d: d.__setitem__("weight_map", {})),
                        ("weight_map-str", lambda d: d.__setitem__("weight_map", "x")),
                        ("shard-traversal", lambda d: _remap(d, "../model-00001-of-00002.safetensors")),
                        ("shard-absolute", lambda d: _remap(d, "/etc/passwd")),
                        ("shard-missing", lambda d: _remap(d, "nope.safetensors")),
                        ("shard-int", lambda d: _remap(d, 3)),
                        ("shard-other", lambda d: _remap(d, "model-00002-of-00002.safetensors"))):
        def mutate(p, edit=edit):
            d = json.loads(p.read_text())
            edit(d)
            p.write_text(json.dumps(d))
        out.append(_loader_case(f"{prefix}/model.safetensors.index.json/{label}", "hf_sharded",
                                "model.safetensors.index.json", mutate, load_pretrained,
                                ("model.safetensors.index.json", "weight_map", "nope.safetensors"), fix_hf,
                                errors=FILE_ERRORS))
    # the path argument
    for label, path, expect, errors in (("None", None, "error", CONTENT_ERRORS), ("int", 3, "error", CONTENT_ERRORS),
                                        ("bytes", b"x", "error", CONTENT_ERRORS), ("missing", "/nonexistent/x",
                                                                                  "error", FILE_ERRORS),
                                        ("file", "FILE", "error", FILE_ERRORS)):
        def call(path=path):
            p = fixtures.get("hf_llama") / "config.json" if path == "FILE" else path
            return load_pretrained(p)
        out.append(Case(f"loaders/load_pretrained/path/{label}", call, expect,
                        ("path", "/nonexistent/x", "config.json", "folder"), errors=errors, fix=fix_hf))
    out.append(Case("loaders/load_pretrained/path/Path", lambda: load_pretrained(Path(fixtures.get("hf_llama"))),
                    "ok", (), lambda r: None, fix=fix_hf))
    return out


def _remap(d, shard):
    first = sorted(d["weight_map"])[0]
    d["weight_map"][first] = shard


def _safetensors_damages():
    """Damages of a safetensors file's header (label -> function of the file's bytes)."""
    def rewrite(edit):
        def fn(data: bytes) -> bytes:
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            body = data[8 + n:]
            out = edit(header, body)
            if isinstance(out, bytes):
                return out
            h, b = out
            raw = json.dumps(h).encode()
            return len(raw).to_bytes(8, "little") + raw + b
        return fn

    def first(h):
        return next(k for k in sorted(h) if k != "__metadata__")

    def set_field(field, value):
        def edit(h, b):
            h[first(h)][field] = value
            return h, b
        return rewrite(edit)

    return {
        "header-len-huge": lambda data: (2**62).to_bytes(8, "little") + data[8:],
        "header-len-beyond-file": lambda data: (len(data) + 100).to_bytes(8, "little") + data[8:],
        "header-len-zero": lambda data: (0).to_bytes(8, "little") + data[8:],
        "header-not-json": lambda data: (9).to_bytes(8, "little") + b"{not json" + data[17:],
        "header-invalid-utf8": lambda data: data[:8] + b"\xff\xfe" + data[10:],
        "header-nested": lambda data: len(nested_json(5000)).to_bytes(8, "little") + nested_json(5000),
        "offsets-beyond-data": set_field("data_offsets", [0, 10**9]),
        "offsets-reversed": set_field("data_offsets", [8, 0]),
        "offsets-negative": set_field("data_offsets", [-8, 0]),
        "shape-huge": set_field("shape", [2**40, 2**40]),
        "shape-negative": set_field("shape", [-1, 16]),
        "shape-str": set_field("shape", "16"),
        "dtype-unknown": set_field("dtype", "X9"),
        "dtype-int": set_field("dtype", 3),
        "body-truncated": rewrite(lambda h, b: (h, b[: len(b) // 2])),
        "metadata-not-str": rewrite(lambda h, b: ({**h, "__metadata__": {"format": 1}}, b)),
    }


def _edit_tensors(fn):
    def mutate(p: Path) -> None:
        from safetensors.numpy import load_file, save_file

        t = load_file(str(p))
        fn(t)
        save_file(t, str(p), metadata={"format": "pt"})
    return mutate


_add_tensor = _edit_tensors(lambda t: t.__setitem__("extra.weight", np.zeros(2, np.float32)))
_drop_tensor = _edit_tensors(lambda t: t.pop(sorted(t)[0]))
_int_tensor = _edit_tensors(lambda t: t.__setitem__(sorted(t)[0], t[sorted(t)[0]].astype(np.int32)))


# ------------------------------------------------------------------------------------------ llama2.c files


def _l2c_cases():
    fix_fmt, fix_tok = "qorus_jit/formats/llama2c.py", "qorus_jit/tokenizers/llama2c.py"
    out = []
    for target in ("v0.bin", "v1.bin"):
        def call(d, target=target):
            return load_llama2c(d / target)
        prefix = "loaders/load_llama2c"
        out += _damage_cases(prefix, "l2c", target, call, fix_fmt, text=False,
                             also={"extra-bytes": lambda b: b + b"\0" * 12})
        off = 0 if target == "v0.bin" else 8
        for i, field in enumerate(("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")):
            for label, value in (("zero", 0), ("negative", -3), ("huge", 2**31 - 1), ("odd", 7)):
                def mutate(p, i=i, value=value, off=off):
                    data = bytearray(p.read_bytes())
                    struct.pack_into("<i", data, off + 4 * i, value)
                    p.write_bytes(bytes(data))
                # version 1 files hold no RoPE tables: any positive seq_len fits the same bytes
                expect = "either" if target == "v1.bin" and field == "seq_len" and value > 0 else "error"
                out.append(_loader_case(f"{prefix}/{target}/{field}/{label}", "l2c", target, mutate, call,
                                        (target, field), fix_fmt, expect=expect))
        if target == "v1.bin":
            for label, off_, fmt, value in (("version-2", 4, "<i", 2), ("version-0", 4, "<i", 0),
                                            ("shared-7", 36, "<B", 7)):
                def mutate(p, off_=off_, fmt=fmt, value=value):
                    data = bytearray(p.read_bytes())
                    struct.pack_into(fmt, data, off_, value)
                    p.write_bytes(bytes(data))
                out.append(_loader_case(f"{prefix}/v1.bin/{label}", "l2c", "v1.bin", mutate, call,
                                        ("v1.bin", "version", "shared"), fix_fmt))
    for label, path in (("None", None), ("int", 3), ("bytes", b"x")):
        out.append(Case(f"loaders/load_llama2c/path/{label}", lambda path=path: load_llama2c(path), "error", ("path",),
                        fix=fix_fmt))
    out.append(Case("loaders/load_llama2c/path/folder", lambda: load_llama2c(fixtures.get("l2c")), "error",
                    ("path", "l2c"), errors=FILE_ERRORS, fix=fix_fmt))

    # tokenizer.bin
    n_tokens = 282

    def tok(vocab=n_tokens):
        return lambda d: Llama2cTokenizer.load(d / "tokenizer.bin", vocab)
    prefix = "loaders/Llama2cTokenizer.load"
    out += _damage_cases(prefix, "l2c", "tokenizer.bin", tok(), fix_tok, text=False,
                         also={"extra-bytes": lambda b: b + b"\0" * 5})
    for label, off, value in (("max_len-negative", 0, -1), ("max_len-huge", 0, 2**31 - 1),
                              ("len-negative", 8, -1), ("len-huge", 8, 2**31 - 1), ("len-beyond", 8, 10**6)):
        def mutate(p, off=off, value=value):
            data = bytearray(p.read_bytes())
            struct.pack_into("<i", data, off, value)
            p.write_bytes(bytes(data))
        expect = "either" if label == "max_len-huge" else "error"
        out.append(_loader_case(f"{prefix}/tokenizer.bin/{label}", "l2c", "tokenizer.bin", mutate, tok(),
                                ("tokenizer.bin",), fix_tok, expect=expect))
    out.append(_loader_case(f"{prefix}/tokenizer.bin/score-nan", "l2c", "tokenizer.bin",
                            lambda p: p.write_bytes(p.read_bytes()[:4] + struct.pack("<f", float("nan"))
                                                    + p.read_bytes()[8:]), tok(), ("tokenizer.bin", "score"), fix_tok,
                            expect="either"))
    for label, vocab, expect in (("zero", 0, "error"), ("negative", -1, "error"), ("str", "282", "error"),
                                 ("float", 282.0, "either"), ("np.int64", np.int64(n_tokens), "ok"),
                                 ("more-than-file", 10**6, "error"), ("fewer", 3, "error"), ("bool", True, "error"),
                                 ("None", None, "ok"), ("huge", 2**62, "error")):
        out.append(_loader_case(f"{prefix}/vocab_size/{label}", "l2c", None, None, tok(vocab),
                                ("vocab_size", "tokenizer.bin"), fix_tok, expect=expect,
                                check=lambda t: None if t.vocab_size == n_tokens else f"vocab_size {t.vocab_size}"))
    return out


# ------------------------------------------------------------------------------------------------ tokenizers


def _tokenizer_cases():
    fix = "qorus_jit/tokenizers/__init__.py"
    out = []
    for target, loader in (("byte.json", load_tokenizer), ("bpe.json", load_tokenizer), ("bpe.json",
                                                                                          BPETokenizer.load)):
        name = "load_tokenizer" if loader is load_tokenizer else "BPETokenizer.load"
        out += _damage_cases(f"loaders/{name}", "tokenizers", target, lambda d, target=target, loader=loader:
                             loader(d / target), fix if name == "load_tokenizer" else "qorus_jit/tokenizers/bpe.py",
                             text=True)
    for label, key_path, value in (("model-str", ("model",), "x"), ("vocab-str", ("model", "vocab"), "x"),
                                   ("model-type", ("model", "type"), "Nope"), ("merges-int", ("model", "merges"), 3),
                                   ("added-tokens-str", ("added_tokens",), "x")):
        out.append(_loader_case(f"loaders/load_tokenizer/bpe.json/{label}", "tokenizers", "bpe.json",
                                lambda p, key_path=key_path, value=value: edit_json(p, key_path, value),
                                lambda d: load_tokenizer(d / "bpe.json"), ("bpe.json",), "qorus_jit/tokenizers/bpe.py"))
    for label, value in (("vocab_size-str", "256"), ("vocab_size-300", 300), ("format-int", 3)):
        key = "vocab_size" if "vocab" in label else "format"
        out.append(_loader_case(f"loaders/load_tokenizer/byte.json/{label}", "tokenizers", "byte.json",
                                lambda p, key=key, value=value: edit_json(p, (key,), value),
                                lambda d: load_tokenizer(d / "byte.json"), ("byte.json", key), fix))
    for label, spec, expect, errors in (("None", None, "error", CONTENT_ERRORS), ("int", 3, "error", CONTENT_ERRORS),
                                        ("bytes", b"byte", "error", CONTENT_ERRORS),
                                        ("BYTE", "BYTE", "error", FILE_ERRORS),
                                        ("missing", "/nonexistent/tokenizer.json", "error", FILE_ERRORS),
                                        ("list", ["byte"], "error", CONTENT_ERRORS),
                                        ("np.str_", np.str_("byte"), "ok", CONTENT_ERRORS),
                                        ("empty-folder", "EMPTY", "error", FILE_ERRORS)):
        def call(spec=spec):
            if spec == "EMPTY":
                spec = case_dir("empty-tokenizer-folder")
            return load_tokenizer(spec)
        out.append(Case(f"loaders/load_tokenizer/spec/{label}", call, expect,
                        ("spec", "tokenizer.json", "BYTE", "empty-tokenizer-folder"), lambda t: None,
                        errors, fix=fix))
    return out


# ------------------------------------------------------------------------------------------------ run folders


def _run_cases():
    fix_src, fix_ckpt = "qorus_jit.models.sources.py", "qorus_jit/formats/checkpoint.py"
    out = []

    def src(d):
        return load_source(d / "r")

    def res(d):
        return resume_run(d / "r", {"steps": 4}, progress=False)  # the fixture finished its 2 steps

    for name, call, fx in (("load_source", src, fix_src), ("resume_run", res, "qorus_jit/train/run.py")):
        prefix = f"loaders/{name}/run"
        out += _damage_cases(prefix, "run", "r/run.json", call, fx, text=True)
        out += _damage_cases(prefix, "run", "r/checkpoints/step_0000002/model.safetensors", call, fix_ckpt,
                             text=False)
        out += _damage_cases(prefix, "run", "r/checkpoints/step_0000002/state.json", call, fix_ckpt, text=True,
                             expects={"missing": ("error", ("*",)), "folder": ("error", ("*",))})  # incomplete
        out += _damage_cases(prefix, "run", "r/tokenizer.json", call, fx, text=True,
                             expects={"missing": "either", "folder": "either"} if name == "resume_run" else None)
        for label, text in (("empty", ""), ("traversal", "../../../etc"), ("missing-step", "step_0000009"),
                            ("garbage", "\x00\xff"), ("absolute", "/tmp")):
            out.append(_loader_case(f"{prefix}/latest/{label}", "run", "r/checkpoints/latest",
                                    lambda p, text=text: p.write_bytes(text.encode("utf-8", "surrogateescape")),
                                    call, ("latest", "checkpoints", "step_0000009", "r"), fix_ckpt,
                                    expect="either", errors=FILE_ERRORS,
                                    check=lambda r: None))
        for label, key_path, value in (("arch-nope", ("model", "arch"), "nope"), ("arch-int", ("model", "arch"), 3),
                                       ("dim-str", ("model", "dim"), "16"), ("dim-negative", ("model", "dim"), -1),
                                       ("dim-huge", ("model", "dim"), 2**40), ("vocab-huge", ("model", "vocab_size"),
                                                                               2**40),
                                       ("model-missing", ("model",), DELETE), ("config-missing", ("config",), DELETE),
                                       ("config-list", ("config",), [1]), ("steps-str", ("config", "steps"), "x"),
                                       ("lr-str", ("config", "lr"), "x"), ("unknown-field", ("model", "nope"), 1),
                                       ("layers-zero", ("model", "n_layers"), 0)):
            field = key_path[-1]
            # inference reads the model record only, and resuming the settings only
            expect = "error"
            if name == "load_source" and key_path[0] == "config" and len(key_path) > 1:
                expect = "either"
            if name == "resume_run" and key_path[0] == "model":
                expect = "either"
            out.append(_loader_case(f"{prefix}/run.json/{label}", "run", "r/run.json",
                                    lambda p, key_path=key_path, value=value: edit_json(p, key_path, value), call,
                                    ("run.json", field), fx, expect=expect, errors=CONTENT_ERRORS))
    for label, ov, names in (("not-a-dict", "x", ("overrides",)), ("unknown", {"nope": 1}, ("nope",)),
                             ("model-change", {"dim": 32}, ("dim",)), ("steps-str", {"steps": "x"}, ("steps",)),
                             ("steps-fewer", {"steps": 1}, ("steps",)), ("None-value", {"lr": None}, ("lr",)),
                             ("np.int64", {"steps": np.int64(5)}, ("steps",))):
        out.append(_loader_case(f"loaders/resume_run/overrides/{label}", "run", None, None,
                                lambda d, ov=ov: resume_run(d / "r", ov if not isinstance(ov, dict) else
                                                            {"steps": 4, **ov}, progress=False), names,
                                "qorus_jit/train/run.py", expect="ok" if label == "np.int64" else "error"))
    for label, source, expect, errors in (("None", None, "error", CONTENT_ERRORS), ("int", 3, "error", CONTENT_ERRORS),
                                          ("missing", "/nonexistent/run", "error", FILE_ERRORS),
                                          ("empty-folder", "EMPTY", "error", FILE_ERRORS)):
        def call(source=source):
            return load_source(case_dir("empty-source") if source == "EMPTY" else source)
        out.append(Case(f"loaders/load_source/source/{label}", call, expect, ("source", "run", "empty-source"),
                        errors=errors, fix=fix_src))
    # a Hugging Face source and a llama2.c one
    out += _damage_cases("loaders/load_source/hf", "hf_llama", "tokenizer.json", lambda d: load_source(d), fix_src,
                         text=True)
    for label, value in (("eos-str", "x"), ("eos-floats", [1.5]), ("eos-dict", {}), ("bos-str", "x"),
                         ("bos-huge", 2**40)):
        key = "eos_token_id" if label.startswith("eos") else "bos_token_id"
        out.append(_loader_case(f"loaders/load_source/hf/config.json/{label}", "hf_llama", "config.json",
                                _set_key(key, value), lambda d: _generate_once(load_source(d)), (key, "config.json"),
                                fix_src))
    out += _damage_cases("loaders/load_source/llama2c", "l2c", "tokenizer.bin",
                         lambda d: load_source(d / "v0.bin", d / "tokenizer.bin"), fix_src, text=False)
    for label, tok, names in (("None", None, ("tokenizer",)), ("int", 3, ("tokenizer",)),
                              ("byte", "byte", ("tokenizer",))):
        out.append(_loader_case(f"loaders/load_source/llama2c/tokenizer/{label}", "l2c", None, None,
                                lambda d, tok=tok: _generate_once(load_source(d / "v0.bin", tok)), names, fix_src,
                                expect="either" if label == "byte" else "error", check=lambda r: None))
    return out


def _generate_once(src):
    from qorus_jit.infer.generate import generate

    ids = src.encode("the")
    return list(generate(src.model, ids, 2, temperature=0.0, stop_tokens=src.stop_ids))


# --------------------------------------------------------------------------------- sentence-transformers


def _st_cases():
    fix = "qorus_jit/infer/embeddings.py"
    out = []

    def load(d):
        return SentenceEncoder.load(d)

    prefix = "loaders/SentenceEncoder.load"
    for target in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "tokenizer.json",
                   "config.json"):
        optional = target in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
        out += _damage_cases(prefix, "st_bert", target, load, fix, text=True, names=(Path(target).name, target),
                             expects={"missing": "either"} if optional else None)
    for target, key_path, value, label in (
            ("modules.json", (0, "path"), "../../..", "path-traversal"), ("modules.json", (0, "path"), 3, "path-int"),
            ("modules.json", (1, "type"), "sentence_transformers.models.Dense", "dense"),
            ("modules.json", (0,), "x", "entry-str"),
            ("1_Pooling/config.json", ("pooling_mode_mean_tokens",), False, "no-mode"),
            ("1_Pooling/config.json", ("pooling_mode_lasttoken",), True, "lasttoken"),
            ("1_Pooling/config.json", ("word_embedding_dimension",), 7, "wrong-dim"),
            ("1_Pooling/config.json", ("pooling_mode_mean_tokens",), "yes", "mode-str"),
            ("sentence_bert_config.json", ("max_seq_length",), "x", "max-str"),
            ("sentence_bert_config.json", ("max_seq_length",), -1, "max-negative"),
            ("sentence_bert_config.json", ("max_seq_length",), 0, "max-zero"),
            ("sentence_bert_config.json", ("max_seq_length",), 10**9, "max-huge"),
            ("sentence_bert_config.json", ("max_seq_length",), 1.5, "max-fraction"),
            ("sentence_bert_config.json", ("do_lower_case",), "yes", "lower-str")):
        field = str(key_path[-1])
        expect = "either" if label == "max-huge" else "error"
        out.append(_loader_case(f"{prefix}/{target}/{label}", "st_bert", target,
                                lambda p, key_path=key_path, value=value: edit_json(p, key_path, value), load,
                                (Path(target).name, target, field), fix, expect=expect))

    def encode(texts=None, **kw):
        def call(d):
            texts_ = ["a cat", "the dog sat"] if texts is None else texts()
            return embed(d, texts_, **kw)
        return call

    def rows(n):
        return lambda r: None if np.shape(r) == (n, 16) and np.all(np.isfinite(r)) else f"got shape {np.shape(r)}"

    for label, texts, expect, chk in (
            ("valid", lambda: ["a cat", "the dog sat"], "ok", rows(2)),
            ("empty-list", lambda: [], "ok", rows(0)), ("tuple", lambda: ("a cat",), "ok", rows(1)),
            ("generator", lambda: (t for t in ["a", "b"]), "either", rows(2)),
            ("None", lambda: None, "error", None), ("str", lambda: "a cat", "either", rows(1)),
            ("ints", lambda: [1, 2], "error", None), ("None-item", lambda: ["a", None], "error", None),
            ("bytes-item", lambda: [b"a"], "error", None), ("surrogate", lambda: ["a\ud800"], "error", None),
            ("empty-text", lambda: [""], "ok", rows(1)), ("long-text", lambda: ["cat " * 500], "ok", rows(1)),
            ("np-array", lambda: np.array(["a", "b"]), "either", rows(2))):
        out.append(_loader_case(f"loaders/embed/texts/{label}", "st_bert", None, None, encode(texts),
                                ("texts", "texts[1]", "texts[0]"), fix, expect=expect, check=chk))
    for label, kw, expect, names in (("batch-zero", dict(batch_size=0), "error", ("batch_size",)),
                                     ("batch-negative", dict(batch_size=-1), "error", ("batch_size",)),
                                     ("batch-str", dict(batch_size="2"), "error", ("batch_size",)),
                                     ("batch-np.int64", dict(batch_size=np.int64(1)), "ok", ()),
                                     ("normalize-str", dict(normalize="yes"), "error", ("normalize",)),
                                     ("normalize-np.bool_", dict(normalize=np.bool_(False)), "ok", ()),
                                     ("unknown-kw", dict(nope=1), "error", ("nope",))):
        out.append(_loader_case(f"loaders/embed/{label}", "st_bert", None, None, encode(**kw), names, fix,
                                expect=expect, check=rows(2)))
    for label, folder, errors in (("None", None, CONTENT_ERRORS), ("int", 3, CONTENT_ERRORS),
                                  ("missing", "/nonexistent/st", FILE_ERRORS)):
        out.append(Case(f"loaders/embed/folder/{label}", lambda folder=folder: embed(folder, ["a"]), "error",
                        ("model_or_folder", "folder", "st"), errors=errors, fix=fix))
    out.append(Case("loaders/embed/folder/a-llama", lambda: embed(fixtures.get("hf_llama"), ["a"]), "error",
                    ("config.json", "hf_llama", "folder", "model_or_folder"), fix=fix))
    return out


# ------------------------------------------------------------------------------------- configs, data, metrics


def _toml_cases():
    fix = "qorus_jit/train/run.py"
    out = []

    def load(d):
        return TrainConfig.from_toml(d / "train.toml")

    out += _damage_cases("loaders/TrainConfig.from_toml", "toml", "train.toml", load, fix, text=True,
                         also={"nested-toml": lambda b: b"a = " + b"[" * 50_000 + b"]" * 50_000 + b"\n",
                               "huge-line": lambda b: b"steps = " + b"9" * 5000 + b"\n"},
                         expects={"empty": "either", "truncated-half": "either"})  # TOML that still parses
    for label, line, names in (("unknown-key", "nope = 1", ("nope",)), ("steps-str", 'steps = "x"', ("steps",)),
                               ("steps-fraction", "steps = 1.5", ("steps",)), ("steps-negative", "steps = -1",
                                                                               ("steps",)),
                               ("lr-nan", "lr = nan", ("lr",)), ("lr-inf", "lr = inf", ("lr",)),
                               ("dim-zero", "dim = 0", ("dim",)), ("arch-nope", 'arch = "nope"', ("arch",)),
                               ("batch-float", "batch_size = 1e30", ("batch_size",)),
                               ("tie-str", 'tie_embeddings = "yes"', ("tie_embeddings",)),
                               ("data-int", "data = 3", ("data",)), ("table", "[section]\nx = 1", ("section",)),
                               ("dim-huge", "dim = 9223372036854775807", ("dim",)),
                               ("date", "seed = 1979-05-27", ("seed",)), ("array", "steps = [1, 2]", ("steps",))):
        def mutate(p, line=line):
            text = p.read_text()
            key = line.split(" =")[0]
            kept = [x for x in text.splitlines() if not x.startswith(key + " =")]
            p.write_text("\n".join(kept + [line]) + "\n")
        out.append(_loader_case(f"loaders/TrainConfig.from_toml/train.toml/{label}", "toml", "train.toml", mutate,
                                load, names + ("train.toml",), fix))
    for label, ov, names in (("not-a-dict", "x", ("overrides",)), ("unknown", {"nope": 1}, ("nope",)),
                             ("steps-str", {"steps": "x"}, ("steps",)), ("np.int64", {"steps": np.int64(3)}, ())):
        out.append(_loader_case(f"loaders/TrainConfig.from_toml/overrides/{label}", "toml", None, None,
                                lambda d, ov=ov: TrainConfig.from_toml(d / "train.toml", ov), names, fix,
                                expect="ok" if label == "np.int64" else "error",
                                check=lambda c: None if c.steps == 3 and type(c.steps) is int
                                else f"steps {c.steps!r}"))
    return out


def _data_cases():
    from qorus_jit.data import TextDataset
    from qorus_jit.tokenizers import ByteTokenizer

    fix = "qorus_jit/data/text.py"
    out = []

    def load(d):
        return TextDataset.from_text_file(d / "corpus.txt", ByteTokenizer(), 16)
    out += _damage_cases("loaders/TextDataset.from_text_file", "tokenizers", "corpus.txt", load, fix, text=True,
                         only=("missing", "folder", "empty", "truncated-7", "garbage", "invalid-utf8"))
    out.append(_loader_case("loaders/TextDataset.from_text_file/corpus.txt/shorter-than-seq_len", "tokenizers",
                            "corpus.txt", lambda p: p.write_text("abc"), load, ("corpus.txt", "seq_len"), fix))
    for label, kw, expect, names in (("seq_len-zero", dict(seq_len=0), "error", ("seq_len",)),
                                     ("seq_len-str", dict(seq_len="16"), "error", ("seq_len",)),
                                     ("seq_len-np.int64", dict(seq_len=np.int64(16)), "ok", ()),
                                     ("seq_len-huge", dict(seq_len=2**40), "error", ("seq_len", "corpus.txt")),
                                     ("val-1.5", dict(val_fraction=1.5), "error", ("val_fraction",)),
                                     ("val-nan", dict(val_fraction=float("nan")), "error", ("val_fraction",)),
                                     ("val-negative", dict(val_fraction=-0.1), "error", ("val_fraction",)),
                                     ("val-np.float32", dict(val_fraction=np.float32(0.1)), "ok", ()),
                                     ("seed-str", dict(seed="x"), "error", ("seed",)),
                                     ("tokenizer-None", dict(tokenizer=None), "error", ("tokenizer",)),
                                     ("tokenizer-str", dict(tokenizer="byte"), "either", ("tokenizer",)),
                                     ("path-None", dict(path=None), "error", ("path",))):
        def call(d, kw=kw):
            args = dict(path=d / "corpus.txt", tokenizer=ByteTokenizer(), seq_len=16)
            args.update(kw)
            return TextDataset.from_text_file(**args)
        out.append(_loader_case(f"loaders/TextDataset.from_text_file/{label}", "tokenizers", None, None, call, names,
                                fix, expect=expect, check=lambda ds: None))

    def tokens(d):
        return TextDataset.from_tokens_file(d / "tokens.npy", 4)

    def write_npy(arr=None, raw=None):
        def mutate(p):
            p = p.parent / "tokens.npy"
            if raw is not None:
                p.write_bytes(raw)
            else:
                np.save(p, arr, allow_pickle=True)
        return mutate
    for label, mut in (("valid", write_npy(np.arange(100, dtype=np.int32) % 7)),
                       ("garbage", write_npy(raw=b"\x93NUMPY garbage")),
                       ("pickled-object", write_npy(np.array([{"a": 1}, 2], dtype=object))),
                       ("float", write_npy(np.arange(100, dtype=np.float32))),
                       ("2-D", write_npy(np.zeros((10, 10), np.int32))),
                       ("negative", write_npy(-np.ones(100, np.int32))),
                       ("empty", write_npy(raw=b"")),
                       ("header-huge-shape", write_npy(raw=_npy_huge_header()))):
        out.append(_loader_case(f"loaders/TextDataset.from_tokens_file/tokens.npy/{label}", "tokenizers", "corpus.txt",
                                mut, tokens, ("tokens.npy",), fix, expect="ok" if label == "valid" else "error",
                                check=lambda ds: None))
    return out


def _npy_huge_header() -> bytes:
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': (1152921504606846976,), }"
    header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64


def _metrics_cases():
    fix = "qorus_jit/train/plot.py"
    out = []
    # damaged lines are skipped by design (a kill cuts the last one): a read may return fewer rows; a plot
    # of no training row must say so
    also = {"nan-loss": lambda b: b + b'{"step": 3, "loss": NaN}\n',
            "step-str": lambda b: b + b'{"step": "x", "loss": 1.0}\n', "line-list": lambda b: b + b"[1, 2]\n"}
    labels = [*file_damages(True), *also]
    for name, call, chk in (("read_metrics", lambda d: read_metrics(d / "r"),
                             lambda r: None if isinstance(r, list) and all(isinstance(x, dict) for x in r)
                             else f"returned {r!r}"),
                            ("plot_run", lambda d: plot_run(d / "r", d / "curves.png"),
                             lambda r: None if Path(r).is_file() else f"no file at {r}")):
        out += _damage_cases(f"loaders/{name}/run", "run", "r/metrics.jsonl", call, fix, text=True, also=also,
                             expects={k: "either" for k in labels if k != "missing"}, check=chk)
    out.append(_loader_case("loaders/plot_run/out-is-folder", "run", None, None,
                            lambda d: plot_run(d / "r", d / "r"), ("out", "/r ("), fix, errors=FILE_ERRORS))
    out.append(_loader_case("loaders/plot_run/out-in-missing-folder", "run", None, None,
                            lambda d: plot_run(d / "r", d / "nope" / "x.png"), ("out", "nope", "x.png"), fix,
                            expect="either", errors=FILE_ERRORS))
    return out


# ------------------------------------------------------------------------------------------------- writers


def _writer_cases():
    out = []

    def llama():
        return Llama(LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=20, max_seq_len=8,
                                 norm_eps=1e-5), rng=0)

    def in_file(d):
        f = d / "file"
        f.write_text("x")
        return f / "sub"

    for name, fn, fix in (("save_pretrained", lambda m, p: save_pretrained(m, p), "qorus_jit/models/registry.py"),
                          ("save_llama2c", lambda m, p: save_llama2c(m, p), "qorus_jit/models/llama.py")):
        for label, path, names, errors in (("None", lambda d: None, ("path",), CONTENT_ERRORS),
                                           ("int", lambda d: 3, ("path",), CONTENT_ERRORS),
                                           ("inside-a-file", in_file, ("path", "/file"), FILE_ERRORS),
                                           ("bytes", lambda d: b"x", ("path",), CONTENT_ERRORS)):
            def call(fn=fn, path=path, label=label, name=name):
                return fn(llama(), path(case_dir(f"{name}-{label}")))
            out.append(Case(f"loaders/{name}/path/{label}", call, "error", names, errors=errors, fix=fix))
        for label, m in (("None", None), ("str", "x"), ("MLP", "MLP")):
            def call(fn=fn, m=m, name=name, label=label):
                from qorus_jit.models import MLP

                model = MLP([2, 2]) if m == "MLP" else m
                return fn(model, case_dir(f"{name}-model-{label}") / "out")
            out.append(Case(f"loaders/{name}/model/{label}", call, "error", ("model",), fix=fix))
    for label, version, expect in (("2", 2, "error"), ("str", "0", "error"), ("bool", True, "error"),
                                   ("np.int64", np.int64(1), "ok"), ("None", None, "error")):
        out.append(Case(f"loaders/save_llama2c/version/{label}",
                        lambda version=version, label=label: save_llama2c(llama(), case_dir(f"ver-{label}") / "m.bin",
                                                                          version),
                        expect, ("version",), lambda r: None, fix="qorus_jit/models/llama.py"))
    return out


def cases():
    return (_hf_cases() + _l2c_cases() + _tokenizer_cases() + _run_cases() + _st_cases() + _toml_cases()
            + _data_cases() + _metrics_cases() + _writer_cases())
