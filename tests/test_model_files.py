"""Model files that lie: every config.json field of every architecture, and every llama2.c header field, given
bad values fails with one line naming the file and the field; sizes the weights do not hold fail before
anything is allocated (checked in a subprocess whose address space is capped at 2 GiB, where an allocation
would be a MemoryError); links out of a model folder are refused while Hugging Face hub cache snapshots load.

The cases are generated from the config dataclasses (``dataclasses.fields``), their ``hf_names`` maps and
the architectures' ``hf_sizes``, and from the seven llama2.c header fields, not listed by hand."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qorus_jit.formats.hf import read_hf_config, read_hf_folder, read_hf_shapes
from qorus_jit.models import GPT2, Bert, BertConfig, GPT2Config, Llama, LlamaConfig
from qorus_jit.models.llama import load_llama2c
from qorus_jit.models.registry import load_pretrained, save_pretrained
from tests.test_llama2c import DIMS, random_weights, write_legacy, write_v1

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 2 << 30  # RLIMIT_AS of the subprocess: a stray table of 2**31 positions cannot hide under it

MODELS = {
    "llama": (Llama, LlamaConfig(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=24, vocab_size=30,
                                 max_seq_len=8)),
    "gpt2": (GPT2, GPT2Config(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8)),
    "bert": (Bert, BertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8)),
}
#: Bad JSON values by the kind of field they are given to.
BAD = {
    "int": ["4", 4.5, True, [4], {"v": 4}, 0, -3],
    "float": ["1e-5", True, [1e-5], {"v": 1.0}, 0, -1.0, float("nan"), float("inf")],
    "bool": ["true", 1, 0.0, [True], {"v": True}],
    "str": [5, ["gelu"], {"v": "gelu"}, "no-such-activation", "x" * 5000],
}
ZERO_OK = {("bert", "pad_token_id")}  # a pad id of 0 is the default
HUGE = (2**31, 10**9)
LOADS_WHEN_HUGE = {("llama", "max_seq_len")}  # sizes no tensor: only the (lazy) RoPE tables, which cost nothing


def kind(field: dataclasses.Field) -> str:
    return field.type.split(" ")[0]  # "int | None" -> "int" (annotations are strings here)


def fields_of(arch: str):
    return dataclasses.fields(MODELS[arch][1])


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny valid Hugging Face folder per architecture, and its model."""
    out = {}
    for arch, (cls, config) in MODELS.items():
        folder = tmp_path_factory.mktemp(arch)
        model = cls(config, rng=1)
        save_pretrained(model, folder)
        out[arch] = folder, model
    return out


def with_config(saved, arch, tmp_path, **changes) -> Path:
    """A copy of ``arch``'s folder whose config.json has ``changes`` (the key's value; ``...`` deletes it)."""
    src = saved[arch][0]
    folder = tmp_path / arch
    folder.mkdir(parents=True)
    shutil.copy(src / "model.safetensors", folder)
    hf = json.loads((src / "config.json").read_text())
    for key, value in changes.items():
        if value is ...:
            hf.pop(key, None)
        else:
            hf[key] = value
    (folder / "config.json").write_text(json.dumps(hf))
    return folder


def field_changes(arch: str, key: str, value) -> dict:
    changes = {key: value}
    if key == "rope_theta":
        changes["rope_parameters"] = ...  # it takes precedence over the top-level rope_theta
    if arch == "llama" and key in ("hidden_size", "num_attention_heads"):
        changes["head_dim"] = ...  # optional, and checked against these two first
    return changes


# ------------------------------------------------------------------------------- config.json, field by field


TYPE_CASES = [(arch, f.name, bad) for arch in MODELS for f in fields_of(arch) for bad in BAD[kind(f)]
              if not (bad == 0 and (arch, f.name) in ZERO_OK)]


@pytest.mark.parametrize("arch, field, bad", TYPE_CASES, ids=[f"{a}-{f}-{str(b)[:12]}" for a, f, b in TYPE_CASES])
def test_bad_config_value_names_file_and_key(saved, tmp_path, arch, field, bad):
    key = MODELS[arch][1].hf_names[field]
    folder = with_config(saved, arch, tmp_path, **field_changes(arch, key, bad))
    with pytest.raises(ValueError) as e:
        load_pretrained(folder)
    msg = one_line(e)
    assert msg.startswith(f"{folder / 'config.json'}: ") and key in msg, msg


@pytest.mark.parametrize("arch, field", [(a, f.name) for a in MODELS for f in fields_of(a)])
def test_null_config_value_is_the_default_or_names_the_key(saved, tmp_path, arch, field):
    cls, config = MODELS[arch]
    key = config.hf_names[field]
    folder = with_config(saved, arch, tmp_path, **field_changes(arch, key, None))
    default = {f.name: f.default for f in fields_of(arch)}[field]
    try:
        model = load_pretrained(folder)
    except ValueError as e:
        assert "\n" not in str(e) and str(folder) in str(e) and key in str(e), str(e)
        return
    assert default is not dataclasses.MISSING
    assert getattr(model.config, field) == getattr(config, field) or default in (None, getattr(model.config, field))


def size_fields(arch):
    """The fields a checkpoint's tensors determine: the layer count and each of ``hf_sizes``."""
    return ["n_layers", *MODELS[arch][0].hf_sizes]


MISMATCH_CASES = [(arch, field, how) for arch in MODELS for field in size_fields(arch) for how in ("double", "half")]


@pytest.mark.parametrize("arch, field, how", MISMATCH_CASES)
def test_size_the_weights_do_not_hold_names_key_value_and_shape(saved, tmp_path, arch, field, how):
    cls, config = MODELS[arch]
    key = config.hf_names[field]
    value = getattr(config, field)
    value = 2 * value if how == "double" else value // 2  # the config stays valid: the file must catch it
    folder = with_config(saved, arch, tmp_path, **field_changes(arch, key, value))
    with pytest.raises(ValueError) as e:
        load_pretrained(folder)
    msg = one_line(e)
    assert msg.startswith(f"{folder}: ") and f"{key} ({type(config).__name__}.{field}) = {value} " in msg, msg
    assert "does not match the weights" in msg, msg
    if field != "n_layers":
        name, _ = cls.hf_sizes[field]
        assert f"tensor {name!r} has shape {read_hf_shapes(folder)[name]}" in msg, msg


@pytest.mark.parametrize("arch", list(MODELS))
def test_head_size_zero_is_a_named_error(saved, tmp_path, arch):
    """hidden_size < num_attention_heads: heads of zero width."""
    config = MODELS[arch][1]
    changes = field_changes(arch, config.hf_names["n_heads"], 2 * config.dim)
    folder = with_config(saved, arch, tmp_path, **changes, num_key_value_heads=...)
    with pytest.raises(ValueError, match="divisible") as e:
        load_pretrained(folder)
    assert config.hf_names["n_heads"] in one_line(e)


@pytest.mark.parametrize("text, why", [
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    (b'{"hidden_size": "\xff\xfe"}', "UTF-8"),
    ('{"hidden_size": 1' + "0" * 5000 + "}", "digits"),
    ('{"hidden_size": 16,', "Expecting"),
    ("\ufeff{}", "BOM"),
])
def test_unreadable_config_json_names_the_file(saved, tmp_path, text, why):
    folder = with_config(saved, "llama", tmp_path)
    (folder / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    for read in (load_pretrained, read_hf_config):
        with pytest.raises(ValueError, match=why) as e:
            read(folder)
        assert one_line(e).startswith(f"{folder / 'config.json'}: not valid JSON"), str(e.value)


def test_deeply_nested_shard_index_names_the_file(saved, tmp_path):
    folder = with_config(saved, "llama", tmp_path)
    (folder / "model.safetensors").rename(folder / "model-1.safetensors")
    index = folder / "model.safetensors.index.json"
    index.write_text('{"weight_map": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply") as e:
        load_pretrained(folder)
    assert one_line(e).startswith(f"{index}: ")


@pytest.mark.parametrize("changes, match", [
    ({"architectures": 5}, "architectures: expected a list of names, got 5"),
    ({"architectures": [["LlamaForCausalLM"]]}, "architectures: expected a list of names"),
    ({"architectures": ..., "model_type": ["llama"]}, r"unsupported model_type \['llama'\]"),
    ({"rope_parameters": "x" * 10_000}, r"rope_parameters must be a dict, got 'xxx.*\.\.\..*x'$"),
    ({"hidden_act": {"a": [[[[1]]]]}}, r"hidden_act=\{'a': \[\[\[...\]\]\]\} is not supported"),
])
def test_other_config_keys_of_the_wrong_type(saved, tmp_path, changes, match):
    folder = with_config(saved, "llama", tmp_path, **changes)
    with pytest.raises(ValueError, match=match) as e:
        load_pretrained(folder)
    assert one_line(e).startswith(f"{folder / 'config.json'}: ")


def test_config_fields_and_hf_names_agree():
    """Every field has a config.json key, to_hf writes each under it, from_hf reads it back."""
    for arch, (cls, config) in MODELS.items():
        assert set(config.hf_names) == {f.name for f in fields_of(arch)}, arch
        hf = config.to_hf()
        for field, key in config.hf_names.items():
            assert hf[key] == getattr(config, field), (arch, field)
        assert set(cls.hf_sizes) <= set(config.hf_names)
        assert re_layers_match(cls, config)


def re_layers_match(cls, config) -> bool:
    import re

    names = [n for n in cls.hf_shapes(config) if re.match(cls.hf_layers, n)]
    return {re.match(cls.hf_layers, n).group(1) for n in names} == {str(i) for i in range(config.n_layers)}


# ------------------------------------------------------------------------------------- memory, capped


def run_capped(code: str, *args: str) -> list:
    """Run ``code`` in a fresh Python whose address space is capped at :data:`LIMIT`; its last stdout line
    is JSON, returned. A MemoryError or a kill shows in the assertion message."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600, preexec_fn=cap)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_EACH = """
import json, sys
import numpy as np
from qorus_jit.models.llama import load_llama2c
from qorus_jit.models.registry import load_pretrained

def layers(layer):
    yield layer
    for child in layer.children().values():
        yield from layers(child)


results = []
for path in json.loads(sys.argv[1]):
    try:
        model = (load_pretrained if not path.endswith(".bin") else load_llama2c)(path)
        model.forward(np.array([[1, 2, 3]]))
        rows = [l.rope_tables.length for l in layers(model) if getattr(l, "rope_tables", None) is not None]
        results.append(["ok", model.config.max_seq_len, max(rows, default=0)])
    except Exception as e:
        results.append([type(e).__name__, str(e)])
print(json.dumps(results))
"""


def test_huge_config_sizes_fail_before_allocating(saved, tmp_path):
    """Each int field of each architecture at 2**31 and 10**9: a named ValueError, or (sizes no tensor holds)
    a model that loads and runs, all within 2 GiB of address space."""
    cases = []
    for arch in MODELS:
        for f in fields_of(arch):
            if kind(f) != "int":
                continue
            for value in HUGE:
                key = MODELS[arch][1].hf_names[f.name]
                folder = with_config(saved, arch, tmp_path / f"{len(cases)}", **field_changes(arch, key, value))
                cases.append((arch, f.name, key, value, folder))
    results = run_capped(LOAD_EACH, json.dumps([str(c[-1]) for c in cases]))
    for (arch, field, key, value, folder), result in zip(cases, results, strict=True):
        if (arch, field) in LOADS_WHEN_HUGE:
            assert result[:2] == ["ok", value], (arch, field, result)
            assert result[2] <= 64, "the RoPE tables cover the positions used, not max_position_embeddings"
            continue
        assert result[0] == "ValueError", (arch, field, value, result)
        msg = result[1]
        assert "\n" not in msg and str(folder) in msg and key in msg, (arch, field, msg)


# ------------------------------------------------------------------------------------- llama2.c headers

FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
HOW = ("zero", "negative", "huge", "inconsistent")


def llama2c_file(tmp_path: Path, version: int, field: int, how: str) -> tuple[Path, int]:
    """A valid file (separate classifier) with header ``field`` set per ``how``; the value written."""
    path = tmp_path / f"v{version}-{FIELDS[field]}-{how}.bin"
    w = random_weights(np.random.default_rng(0), DIMS, shared=False)
    (write_legacy if version == 0 else write_v1)(path, DIMS, w)
    stored = DIMS[field] if not (version == 0 and field == 5) else -DIMS[field]  # legacy: -V = separate
    value = {"zero": 0, "negative": -stored, "huge": 2**31 - 1, "inconsistent": 2 * stored}[how]
    raw = bytearray(path.read_bytes())
    offset = (0 if version == 0 else 8) + 4 * field
    raw[offset:offset + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(raw))
    return path, value


def llama2c_loads(version: int, field: int, how: str) -> bool:
    """seq_len is not in a version 1 file's size (it holds no RoPE tables): any positive value loads."""
    return version == 1 and FIELDS[field] == "seq_len" and how in ("huge", "inconsistent")


HEADER_CASES = [(v, f, how) for v in (0, 1) for f in range(7) for how in HOW if how != "huge"]


@pytest.mark.parametrize("version, field, how", HEADER_CASES)
def test_llama2c_header_field_errors_name_the_field(tmp_path, version, field, how):
    path, value = llama2c_file(tmp_path, version, field, how)
    if llama2c_loads(version, field, how):
        assert load_llama2c(path).config.max_seq_len == value
        return
    with pytest.raises(ValueError) as e:
        load_llama2c(path)
    msg = one_line(e)
    assert msg.startswith(f"{path}: ") and f"{FIELDS[field]}=" in msg, msg


def test_llama2c_huge_header_fields_fail_before_allocating(tmp_path):
    cases = [(v, f, *llama2c_file(tmp_path, v, f, "huge")) for v in (0, 1) for f in range(7)]
    results = run_capped(LOAD_EACH, json.dumps([str(c[2]) for c in cases]))
    for (version, field, path, value), result in zip(cases, results, strict=True):
        if llama2c_loads(version, field, "huge"):
            assert result[:2] == ["ok", value] and result[2] <= 64, result
            continue
        assert result[0] == "ValueError", (version, FIELDS[field], result)
        assert "\n" not in result[1] and str(path) in result[1] and f"{FIELDS[field]}=" in result[1], result


def test_llama2c_size_hint_names_the_wrong_field(tmp_path):
    for field in range(7):
        path, value = llama2c_file(tmp_path, 0, field, "inconsistent")
        with pytest.raises(ValueError, match=rf"the size would fit (.* or )?{FIELDS[field]}={DIMS[field]}\b"):
            load_llama2c(path)


# ------------------------------------------------------------------------------------------------- links


def hub_snapshot(saved, arch, tmp_path: Path, sharded=False) -> Path:
    """A fake hub cache repo: ``blobs/<hash>`` holds the files, ``snapshots/<rev>/<name>`` links to
    ``../../blobs/<hash>``, as huggingface_hub lays them out."""
    repo = tmp_path / "hub" / f"models--org--{arch}"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / ("0123abcd" * 5)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    src = saved[arch][0]
    files = {"config.json": (src / "config.json").read_bytes()}
    if sharded:
        files["model-00001-of-00001.safetensors"] = (src / "model.safetensors").read_bytes()
        names = read_hf_shapes(src)
        files["model.safetensors.index.json"] = json.dumps(
            {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}).encode()
    else:
        files["model.safetensors"] = (src / "model.safetensors").read_bytes()
    for i, (name, data) in enumerate(files.items()):
        blob = f"{i:02d}" + "f" * 62
        (repo / "blobs" / blob).write_bytes(data)
        (snap / name).symlink_to(f"../../blobs/{blob}")
    return snap


@pytest.mark.parametrize("sharded", [False, True])
def test_hub_cache_snapshot_of_links_loads(saved, tmp_path, sharded):
    snap = hub_snapshot(saved, "gpt2", tmp_path, sharded)
    assert all(p.is_symlink() for p in snap.iterdir())
    model = load_pretrained(snap)
    want = saved["gpt2"][1].parameters()
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(p, want[name], err_msg=name)
    # the same snapshot reached through a link to its folder
    (tmp_path / "alias").symlink_to(snap)
    assert load_pretrained(tmp_path / "alias").config == model.config


def test_link_inside_the_folder_is_followed(saved, tmp_path):
    folder = with_config(saved, "gpt2", tmp_path)
    (folder / "weights").mkdir()
    (folder / "model.safetensors").rename(folder / "weights" / "real.safetensors")
    (folder / "model.safetensors").symlink_to("weights/real.safetensors")
    assert load_pretrained(folder).config == MODELS["gpt2"][1]


@pytest.mark.parametrize("what, name", [("weights file", "model.safetensors"), ("config file", "config.json"),
                                        ("shard", "model-00001-of-00001.safetensors"),
                                        ("shard index", "model.safetensors.index.json")])
def test_link_out_of_the_folder_is_refused(saved, tmp_path, what, name):
    folder = with_config(saved, "gpt2", tmp_path)
    if "shard" in what:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        weight_map = {n: "model-00001-of-00001.safetensors" for n in read_hf_shapes(saved["gpt2"][0])}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    outside = tmp_path / "elsewhere" / name  # a valid file of the right kind, outside the folder
    outside.parent.mkdir()
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    for read in (load_pretrained, read_hf_folder):
        with pytest.raises(ValueError) as e:
            read(folder)
        msg = one_line(e)
        assert msg.startswith(f"{folder}: {what} {name!r} links to {outside}, outside the model folder"), msg


def test_link_to_a_system_file_is_refused(saved, tmp_path):
    folder = with_config(saved, "gpt2", tmp_path)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match=r"config file 'config.json' links to /etc/passwd, outside"):
        load_pretrained(folder)


def test_snapshot_link_out_of_the_blobs_is_refused(saved, tmp_path):
    snap = hub_snapshot(saved, "gpt2", tmp_path)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(saved["gpt2"][0] / "model.safetensors", outside)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(os.path.relpath(outside, snap))
    with pytest.raises(ValueError) as e:
        load_pretrained(snap)
    msg = one_line(e)
    assert "'model.safetensors' links to" in msg and "outside the model folder or the hub cache's blobs/" in msg
    # a folder beside a blobs/ folder but not a snapshot gets no such allowance
    plain = tmp_path / "hub" / "models--org--gpt2" / "plain"
    plain.mkdir()
    shutil.copy(snap / "config.json", plain / "config.json")
    blob = next((snap.parent.parent / "blobs").glob("01*"))
    (plain / "model.safetensors").symlink_to(f"../blobs/{blob.name}")
    with pytest.raises(ValueError, match="'model.safetensors' links to .*, outside the model folder;"):
        load_pretrained(plain)
