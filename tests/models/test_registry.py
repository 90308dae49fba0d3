"""The registry of architectures: every architecture's Hugging Face names and shapes match its parameters,
lookups and config.json round trips agree, run-folder records rebuild the model, and errors name the argument."""

import json

import numpy as np
import pytest

from qorus_jit.models import GPT2, MLP, Bert, BertConfig, GPT2Config, Llama, LlamaConfig
from qorus_jit.models.registry import (
    ARCHITECTURES,
    BY_ARCH,
    BY_HF_ARCHITECTURE,
    BY_MODEL_TYPE,
    architecture,
    architecture_of,
    build_model,
    check_tensors,
    config_from_hf,
    expected_shapes,
    load_pretrained,
    model_record,
    save_pretrained,
)

CONFIGS = {
    "llama": LlamaConfig(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8),
    "llama_tied_bias": LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8,
                                   tie_embeddings=True, attention_bias=True, mlp_bias=True),
    "gpt2": GPT2Config(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8),
    "gpt2_untied": GPT2Config(dim=16, n_layers=1, n_heads=2, vocab_size=30, max_seq_len=8, tie_embeddings=False),
    "bert": BertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=24, vocab_size=30, max_seq_len=8),
}


def test_every_architecture_is_listed_under_each_name():
    assert [a.__name__ for a in ARCHITECTURES] == ["Llama", "GPT2", "Bert"]
    assert BY_ARCH == {"llama": Llama, "gpt2": GPT2, "bert": Bert}
    assert BY_HF_ARCHITECTURE == {"LlamaForCausalLM": Llama, "GPT2LMHeadModel": GPT2, "BertModel": Bert}
    assert BY_MODEL_TYPE == {"llama": Llama, "gpt2": GPT2, "bert": Bert}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_hf_names_and_shapes_are_the_parameters(case):
    """A checkpoint of zeros in the transformers layout passes the checks and maps onto exactly the model's
    parameters and shapes; the model's parameters map back onto the checkpoint's names and shapes."""
    config = CONFIGS[case]
    cls = architecture_of(config)
    assert isinstance(cls(config, rng=0), cls) and type(config) is cls.config_class
    hf = {name: np.zeros(shape, np.float32) for name, shape in expected_shapes(config).items()}
    params = cls.from_hf_tensors(check_tensors(config, hf, "x"))
    ours = cls(config, rng=0).parameters()
    assert list(params) == [n for n in hf if n not in cls.hf_optional]
    assert {n: p.shape for n, p in params.items()} == {n: p.shape for n, p in ours.items()}
    back = cls.to_hf_tensors(ours)
    assert {n: tuple(p.shape) for n, p in back.items()} == {n: s for n, s in expected_shapes(config).items()
                                                           if n not in cls.hf_optional}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_config_json_round_trip_and_lookup(case):
    config = CONFIGS[case]
    hf = config.to_hf()
    assert BY_HF_ARCHITECTURE[hf["architectures"][0]] is architecture_of(config)
    assert BY_MODEL_TYPE[hf["model_type"]] is architecture_of(config)
    assert config_from_hf(json.loads(json.dumps(hf))) == config
    del hf["architectures"]
    assert config_from_hf(hf) == config  # by model_type alone


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_save_and_load_pretrained_round_trip(tmp_path, case):
    model = architecture_of(CONFIGS[case])(CONFIGS[case], rng=3)
    save_pretrained(model, tmp_path)
    back = load_pretrained(tmp_path)
    assert type(back) is type(model) and back.config == model.config
    a, b = model.parameters(), back.parameters()
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_run_record_rebuilds_the_model(case):
    model = architecture_of(CONFIGS[case])(CONFIGS[case], rng=5)
    record = json.loads(json.dumps(model_record(model)))  # as run.json keeps it
    assert record["arch"] == type(model).arch and architecture(record["arch"]) is type(model)
    again = build_model(record.pop("arch"), record, rng=5)
    assert type(again) is type(model) and again.config == model.config
    for name, p in model.parameters().items():
        np.testing.assert_array_equal(again.parameters()[name], p, err_msg=name)
    assert build_model(type(model).arch, model.config).config == model.config


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"arch: expected one of llama, gpt2, bert, got 't5'"):
        build_model("t5", {})
    with pytest.raises(TypeError, match="config: expected a LlamaConfig or a dict of its fields.*GPT2Config"):
        build_model("llama", CONFIGS["gpt2"])
    with pytest.raises(ValueError, match="LlamaConfig.from_dict: unknown field.*n_embd"):
        build_model("llama", {**CONFIGS["llama"].to_dict(), "n_embd": 16})
    with pytest.raises(ValueError, match="expected_shapes: config: expected a LlamaConfig, GPT2Config or "
                                         "BertConfig, got dict"):
        expected_shapes({"dim": 16})
    with pytest.raises(TypeError, match="model: expected one of Llama, GPT2, Bert, got MLP"):
        save_pretrained(MLP([4, 2]), tmp_path)
    with pytest.raises(TypeError, match="model: expected one of Llama, GPT2, Bert, got MLP"):
        model_record(MLP([4, 2]))
    assert not any(tmp_path.iterdir())
