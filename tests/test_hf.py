"""Hugging Face checkpoint folders: read, check and write safetensors + config.json against transformers."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from qorus_jit.formats.hf import INDEX_NAME, read_hf_folder, write_hf_folder
from qorus_jit.models import BertConfig, GPT2Config, LlamaConfig
from qorus_jit.models.registry import check_tensors, config_from_hf, expected_shapes
from tests.helpers import torch_or_skip


def transformers_or_skip():
    """Import transformers (and torch) for parity tests. Skips locally without it; fails in CI."""
    torch_or_skip()
    try:
        import transformers
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("transformers is required in CI for the checkpoint tests (pip install -e '.[test]')")
        pytest.skip("transformers not installed")
    transformers.logging.set_verbosity_error()
    return transformers


# ------------------------------------------------------------------------------------------ tiny models

CASES = ["llama_gqa", "llama_tied", "gpt2", "bert"]


def _build(case):
    tf = transformers_or_skip()
    import torch

    torch.manual_seed(0)
    if case == "llama_gqa":  # grouped-query, untied, non-default rope theta, biases
        cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=48, vocab_size=100, max_position_embeddings=64, rms_norm_eps=1e-5,
                             rope_theta=5000.0, tie_word_embeddings=False, attention_bias=True)
        model = tf.LlamaForCausalLM(cfg)
    elif case == "llama_tied":
        cfg = tf.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                             intermediate_size=48, vocab_size=100, max_position_embeddings=64,
                             tie_word_embeddings=True)
        model = tf.LlamaForCausalLM(cfg)
    elif case == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
                            bos_token_id=99, eos_token_id=99)
        model = tf.GPT2LMHeadModel(cfg)
    else:
        cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                            vocab_size=100, max_position_embeddings=64, type_vocab_size=2)
        model = tf.BertModel(cfg)
    with torch.no_grad():  # make norms non-trivial so a swapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("ln_1.weight") or name.endswith("ln_2.weight"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module", params=CASES)
def saved(request, tmp_path_factory):
    """(case, model, folder) of a tiny transformers model saved with safetensors."""
    model = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder, safe_serialization=True)
    return request.param, model, folder


def _outputs(model):
    import torch

    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 7]])
    with torch.no_grad():
        out = model(input_ids=ids)
    if hasattr(out, "logits"):
        return [out.logits.numpy()]
    return [out.last_hidden_state.numpy(), out.pooler_output.numpy()]


def _state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _reload(folder, like):
    return type(like).from_pretrained(folder).eval()


# ---------------------------------------------------------------------------------------------- reading


def test_read_matches_state_dict(saved):
    case, model, folder = saved
    hf_config, tensors = read_hf_folder(folder)
    state = _state(model)
    for name, arr in tensors.items():
        assert arr.dtype == np.float32 and arr.flags.c_contiguous, name
        np.testing.assert_array_equal(arr, state[name], err_msg=name)
    config = config_from_hf(hf_config)
    shapes = expected_shapes(config)
    params = check_tensors(config, tensors, folder)
    assert set(params) == set(shapes)
    for name, shape in shapes.items():
        assert tuple(state[name].shape) == shape, name
    # every parameter of the torch model is listed (tied heads only by their embedding)
    torch_params = {k for k, _ in model.named_parameters()}
    assert torch_params == set(shapes)


def test_config_from_hf(saved):
    case, model, folder = saved
    hf_config, _ = read_hf_folder(folder)
    config = config_from_hf(hf_config)
    if case == "llama_gqa":
        assert config == LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=100,
                                     max_seq_len=64, norm_eps=1e-5, rope_theta=5000.0, tie_embeddings=False,
                                     attention_bias=True, mlp_bias=False)
        assert "model.layers.1.self_attn.k_proj.weight" in expected_shapes(config)
        assert expected_shapes(config)["model.layers.1.self_attn.k_proj.weight"] == (16, 32)
        assert expected_shapes(config)["lm_head.weight"] == (100, 32)
    elif case == "llama_tied":
        assert config.tie_embeddings and config.n_kv_heads == 4 and config.rope_theta == 10000.0
        assert "lm_head.weight" not in expected_shapes(config)
    elif case == "gpt2":
        assert config == GPT2Config(dim=32, n_layers=2, n_heads=4, vocab_size=100, max_seq_len=64, norm_eps=1e-5,
                                    activation="gelu_new", hidden_dim=128, tie_embeddings=True)
        assert expected_shapes(config)["transformer.h.0.attn.c_attn.weight"] == (32, 96)  # Conv1D (in, out)
        assert expected_shapes(config)["transformer.h.0.mlp.c_proj.weight"] == (128, 32)
    else:
        assert config == BertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=100, max_seq_len=64,
                                    type_vocab_size=2, norm_eps=1e-12, activation="gelu", pad_token_id=0)
    assert type(config).from_dict(config.to_dict()) == config
    assert config_from_hf(config.to_hf()) == config


def test_write_roundtrip_loads_in_transformers(saved, tmp_path):
    case, model, folder = saved
    hf_config, tensors = read_hf_folder(folder)
    out = tmp_path / "copy"
    write_hf_folder(out, hf_config, tensors)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    back = _reload(out, model)
    want = _state(model)
    got = _state(back)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # same weights; BLAS on differently aligned buffers may differ in the last bit (as transformers' own
    # save/load round trip of BertModel does), hence a tolerance of a few ulps
    for a, b in zip(_outputs(back), _outputs(model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert read_hf_folder(out)[0] == hf_config


def test_to_hf_config_builds_same_architecture(saved, tmp_path):
    case, model, folder = saved
    hf_config, tensors = read_hf_folder(folder)
    config = config_from_hf(hf_config)
    params = check_tensors(config, tensors, folder)
    write_hf_folder(tmp_path, config.to_hf(), params)
    back = _reload(tmp_path, model)
    assert type(back) is type(model)
    for a, b in zip(_outputs(back), _outputs(model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_sharded_checkpoint(tmp_path):
    model = _build("llama_gqa")
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    hf_config, tensors = read_hf_folder(tmp_path)
    state = _state(model)
    assert set(tensors) == set(index["weight_map"])
    for name, arr in tensors.items():
        np.testing.assert_array_equal(arr, state[name], err_msg=name)
    check_tensors(config_from_hf(hf_config), tensors, tmp_path)
    # writing a single file over a sharded folder removes the stale index and shards
    write_hf_folder(tmp_path, hf_config, tensors)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "generation_config.json") == [
        "config.json", "model.safetensors"]
    np.testing.assert_array_equal(read_hf_folder(tmp_path)[1]["lm_head.weight"], state["lm_head.weight"])


def test_reduced_precision_becomes_float32(tmp_path):
    torch = torch_or_skip()
    from safetensors.torch import save_file

    src = {"bf": torch.randn(3, 5).to(torch.bfloat16), "f16": torch.randn(4).half(),
           "f64": torch.randn(2, 2, dtype=torch.float64), "ids": torch.arange(6).reshape(1, 6)}
    save_file(src, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text("{}")
    _, tensors = read_hf_folder(tmp_path)
    for name in ("bf", "f16", "f64"):
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], src[name].float().numpy())
    assert tensors["ids"].dtype == np.int64
    np.testing.assert_array_equal(tensors["ids"], src["ids"].numpy())


# ---------------------------------------------------------------------------------------------- configs


def _llama_hf(**extra):
    d = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": 100}
    d.update(extra)
    return d


def test_rope_theta_both_forms():
    old = config_from_hf(_llama_hf(rope_theta=500000.0, rope_scaling=None))
    new = config_from_hf(_llama_hf(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
    assert old.rope_theta == new.rope_theta == 500000.0
    assert config_from_hf(_llama_hf()).rope_theta == 10000.0
    hf = old.to_hf()
    assert hf["rope_theta"] == hf["rope_parameters"]["rope_theta"] == 500000.0


def test_rope_theta_forms_load_in_transformers():
    tf = transformers_or_skip()
    for hf in (_llama_hf(rope_theta=5000.0), _llama_hf(rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
               LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=100,
                           rope_theta=5000.0).to_hf()):
        cfg = tf.LlamaConfig.from_dict(hf)
        theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
        assert theta == 5000.0


@pytest.mark.parametrize("form", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_rejected(form, kind):
    with pytest.raises(ValueError, match=f"{form}.*{kind}.*not supported"):
        config_from_hf(_llama_hf(**{form: {"rope_type": kind, "rope_theta": 1e4, "factor": 2.0}}))


def test_rope_scaling_old_key_rejected():
    with pytest.raises(ValueError, match="rope_scaling.*'linear'.*not supported"):
        config_from_hf(_llama_hf(rope_scaling={"type": "linear", "factor": 2.0}))


def test_unknown_architecture():
    supported = "supported: LlamaForCausalLM, GPT2LMHeadModel, BertModel"
    with pytest.raises(ValueError, match=f"MistralForCausalLM.*{supported}"):
        config_from_hf({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    with pytest.raises(ValueError, match="model_type 't5'.*supported"):
        config_from_hf({"model_type": "t5"})
    assert isinstance(config_from_hf({"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2,
                                      "vocab_size": 10}), GPT2Config)


@pytest.mark.parametrize("hf, pattern", [
    (_llama_hf(hidden_act="gelu"), "hidden_act"),
    (_llama_hf(head_dim=16), "head_dim"),
    (_llama_hf(num_attention_heads=5), "n_heads"),
    (_llama_hf(num_key_value_heads=3), "n_kv_heads"),
    ({k: v for k, v in _llama_hf().items() if k != "vocab_size"}, "missing required key 'vocab_size'"),
    ({"architectures": ["GPT2LMHeadModel"], "n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 10,
      "add_cross_attention": True}, "add_cross_attention"),
    ({"architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 8, "vocab_size": 10, "position_embedding_type": "relative_key"},
     "position_embedding_type"),
])
def test_unsupported_hf_settings(hf, pattern):
    with pytest.raises(ValueError, match=pattern):
        config_from_hf(hf)


@pytest.mark.parametrize("cls, kwargs, field", [
    (LlamaConfig, dict(dim=0), "LlamaConfig.dim"),
    (LlamaConfig, dict(n_heads=3), "LlamaConfig.n_heads"),
    (LlamaConfig, dict(n_kv_heads=3), "LlamaConfig.n_kv_heads"),
    (LlamaConfig, dict(dim=12, n_heads=4, n_kv_heads=4), "head_dim"),
    (LlamaConfig, dict(norm_eps=0.0), "LlamaConfig.norm_eps"),
    (LlamaConfig, dict(tie_embeddings=1), "LlamaConfig.tie_embeddings"),
    (LlamaConfig, dict(vocab_size=True), "LlamaConfig.vocab_size"),
    (GPT2Config, dict(activation="swish"), "GPT2Config.activation"),
    (GPT2Config, dict(n_heads=5), "GPT2Config.n_heads"),
    (BertConfig, dict(pad_token_id=100), "BertConfig.pad_token_id"),
    (BertConfig, dict(type_vocab_size=0), "BertConfig.type_vocab_size"),
])
def test_config_validation_names_field(cls, kwargs, field):
    base = {LlamaConfig: dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=100),
            GPT2Config: dict(dim=32, n_layers=2, n_heads=4, vocab_size=100),
            BertConfig: dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=100)}[cls]
    cls(**base)
    with pytest.raises(ValueError, match=field):
        cls(**{**base, **kwargs})


def test_config_dicts():
    c = LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=100)
    assert c.n_kv_heads == 4 and c.head_dim == 8
    assert LlamaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert dataclasses.replace(c, rope_theta=5.0).rope_theta == 5.0
    with pytest.raises(ValueError, match="unknown field.*n_embd"):
        GPT2Config.from_dict({"dim": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 10, "n_embd": 32})


# --------------------------------------------------------------------------------------- tensor checks

_GPT2 = GPT2Config(dim=8, n_layers=1, n_heads=2, vocab_size=10, max_seq_len=4)


def _zeros(config):
    return {k: np.zeros(s, np.float32) for k, s in expected_shapes(config).items()}


def test_check_tensors_errors():
    good = _zeros(_GPT2)
    assert set(check_tensors(_GPT2, good, "x.safetensors")) == set(good)
    t = dict(good)
    del t["transformer.h.0.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"x\.safetensors: missing tensor 'transformer\.h\.0\.mlp\.c_fc\.bias'"):
        check_tensors(_GPT2, t, "x.safetensors")
    with pytest.raises(ValueError, match=r"x\.safetensors: unexpected tensor 'transformer\.h\.0\.extra'"):
        check_tensors(_GPT2, {**good, "transformer.h.0.extra": np.zeros(8, np.float32)}, "x.safetensors")
    with pytest.raises(ValueError, match=r"x\.safetensors: n_layer \(GPT2Config\.n_layers\) = 1 does not match "
                                         r"the weights, which hold 2 layers"):
        check_tensors(_GPT2, {**good, "transformer.h.1.ln_1.weight": np.zeros(8, np.float32)}, "x.safetensors")
    t = {**good, "transformer.h.0.attn.c_attn.weight": np.zeros((24, 8), np.float32)}
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.attn\.c_attn\.weight' has shape \(24, 8\), "
                                         r"expected \(8, 24\)"):
        check_tensors(_GPT2, t, "x.safetensors")
    with pytest.raises(ValueError, match="dtype int64"):
        check_tensors(_GPT2, {**good, "transformer.ln_f.bias": np.zeros(8, np.int64)}, "x")


def test_check_tensors_buffers_prefix_and_tied_head():
    good = _zeros(_GPT2)
    bare = {k.removeprefix("transformer."): v for k, v in good.items()}  # the original gpt2 layout
    bare["h.0.attn.bias"] = np.ones((1, 1, 4, 4), np.float32)  # causal mask buffer, ignored
    bare["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    assert set(check_tensors(_GPT2, bare, "x")) == set(good)
    same = {**good, "lm_head.weight": good["transformer.wte.weight"].copy()}
    assert "lm_head.weight" not in check_tensors(_GPT2, same, "x")
    other = {**good, "lm_head.weight": np.ones((10, 8), np.float32)}
    with pytest.raises(ValueError, match="lm_head.weight.*differs"):
        check_tensors(_GPT2, other, "x")
    bert = BertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=16, vocab_size=10, max_seq_len=4)
    t = {k: v for k, v in _zeros(bert).items() if not k.startswith("pooler.")}  # add_pooling_layer=False
    t["embeddings.position_ids"] = np.arange(4).reshape(1, 4)
    assert set(check_tensors(bert, t, "x")) == set(t) - {"embeddings.position_ids"}


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture
def folder(tmp_path):
    """A tiny valid GPT-2 checkpoint folder written by write_hf_folder."""
    write_hf_folder(tmp_path, _GPT2.to_hf(), _zeros(_GPT2))
    return tmp_path


def test_missing_folder_and_files(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        read_hf_folder(tmp_path / "nope")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        read_hf_folder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        read_hf_folder(folder)


def test_bad_json(folder):
    (folder / "config.json").write_text('{"n_embd": 8,')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        read_hf_folder(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_hf_folder(folder)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_GPT2.to_hf()))
    # not even a real pickle: it must never be opened
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not a pickle")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*pickle checkpoints are not loaded.*safe_serialization"):
        read_hf_folder(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "cut_header", "garbage_header", "huge_header", "tiny", "offsets"])
def test_corrupt_safetensors(folder, damage):
    f = folder / "model.safetensors"
    b = f.read_bytes()
    n = int.from_bytes(b[:8], "little")
    if damage == "truncate":
        b = b[: len(b) - 100]
    elif damage == "cut_header":
        b = b[: 8 + n // 2]
    elif damage == "garbage_header":
        b = b[:8] + b"\xff\xfe garbage" + b[18:]
    elif damage == "huge_header":
        b = (2**62).to_bytes(8, "little") + b[8:]
    elif damage == "tiny":
        b = b[:5]
    else:  # a header whose offsets run past the data
        header = json.loads(b[8: 8 + n])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 4
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        b = len(h).to_bytes(8, "little") + h + b[8 + n:]
    f.write_bytes(b)
    with pytest.raises(ValueError, match=r"model\.safetensors.*(truncated|corrupt)"):
        read_hf_folder(folder)


def test_bad_shard_index(folder):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    names = list(expected_shapes(_GPT2))
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in names}}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    assert set(read_hf_folder(folder)[1]) == set(names)
    index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        read_hf_folder(folder)
    index["weight_map"] = {**{k: "model-00001-of-00001.safetensors" for k in names}, "extra.weight":
                           "model-00001-of-00001.safetensors"}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'extra.weight'.*missing from the shard"):
        read_hf_folder(folder)
    index["weight_map"] = {names[0]: "../elsewhere.safetensors"}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file name in the folder"):
        read_hf_folder(folder)
    (folder / INDEX_NAME).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_hf_folder(folder)


def test_missing_and_misshapen_tensor_in_file(folder):
    hf_config, tensors = read_hf_folder(folder)
    config = config_from_hf(hf_config)
    del tensors["transformer.ln_f.weight"]
    tensors["transformer.wpe.weight"] = np.zeros((5, 8), np.float32)
    write_hf_folder(folder, hf_config, tensors)
    hf_config, tensors = read_hf_folder(folder)
    with pytest.raises(ValueError, match=r"model\.safetensors: missing tensor 'transformer\.ln_f\.weight'"):
        check_tensors(config, tensors, folder / "model.safetensors")
    tensors["transformer.ln_f.weight"] = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"'transformer\.wpe\.weight' has shape \(5, 8\), expected \(4, 8\)"):
        check_tensors(config, tensors, folder / "model.safetensors")


def test_interrupted_write_leaves_old_files(folder, monkeypatch):
    import safetensors.numpy

    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(safetensors.numpy, "save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_hf_folder(folder, {"changed": True}, {"a": np.ones(3, np.float32)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no damage, no temp files left
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not JSON-serializable"):
        write_hf_folder(folder, {"bad": object()}, {"a": np.ones(3, np.float32)})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_write_path_errors_name_the_argument(tmp_path):
    from qorus_jit.models import GPT2
    from qorus_jit.models.registry import save_pretrained

    model = GPT2(_GPT2, rng=0)
    for bad in (None, 3, b"bytes"):
        with pytest.raises(TypeError, match="path: expected a path"):
            save_pretrained(model, bad)
    (tmp_path / "file").write_text("x")
    for inside in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(NotADirectoryError, match=f"path: cannot make the folder {inside}"):
            save_pretrained(model, inside)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
