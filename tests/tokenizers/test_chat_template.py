"""Chat templates on tokenizers: read from a Hugging Face folder as transformers reads them (tokenizer_config.json,
chat_template.jinja, additional_chat_templates/, the list form), kept through ``save`` into a run folder or a
folder transformers wrote, rendered as transformers renders them (checked against ``apply_chat_template``), and
sandboxed."""

import json

import numpy as np
import pytest

from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer, load_tokenizer
from tests.tokenizers.chat_folders import CHATML, LLAMA3, TEMPLATES, ZEPHYR, base_tokenizer, make_folder

pytest.importorskip("tokenizers")

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "café?"},
        {"role": "assistant", "content": "Paris."}]


def test_folder_template_and_special_tokens_are_read(tmp_path):
    tok = load_tokenizer(make_folder(tmp_path / "a", "llama3"))
    assert tok.chat_template == LLAMA3
    assert tok.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    # the same from the tokenizer.json file, and from chat_template.jinja
    assert load_tokenizer(tmp_path / "a" / "tokenizer.json").chat_template == LLAMA3
    assert BPETokenizer.from_folder(make_folder(tmp_path / "b", "zephyr", config_template=False)).chat_template \
        == ZEPHYR
    # no template: None, and nothing to render
    plain = tmp_path / "plain"
    base_tokenizer().save(plain / "tokenizer.json")
    tok = load_tokenizer(plain)
    assert tok.chat_template is None and tok.special_tokens == {}
    with pytest.raises(ValueError, match="chat_template: this tokenizer has no chat template"):
        tok.apply_chat_template(CONV)
    assert ByteTokenizer().chat_template is None and Llama2cTokenizer.chat_template is None


def test_jinja_file_list_form_and_added_token_objects(tmp_path):
    f = make_folder(tmp_path / "a", "chatml")
    cfg = json.loads((f / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": ZEPHYR}]
    cfg["eos_token"] = {"content": "<|im_end|>", "lstrip": False, "rstrip": False, "special": True}
    (f / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(f)
    assert tok.chat_template == {"default": CHATML, "tool_use": ZEPHYR}
    assert tok.special_tokens == {"eos_token": "<|im_end|>"}
    assert tok.apply_chat_template(CONV).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    # chat_template.jinja (and additional_chat_templates/) win over the config's template, as in transformers
    (f / "chat_template.jinja").write_text(LLAMA3)
    assert load_tokenizer(f).chat_template == LLAMA3
    (f / "additional_chat_templates").mkdir()
    (f / "additional_chat_templates" / "other.jinja").write_text(ZEPHYR)
    assert load_tokenizer(f).chat_template == {"default": LLAMA3, "other": ZEPHYR}
    (f / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="several chat templates \\(other\\) and none named 'default'"):
        load_tokenizer(f).apply_chat_template(CONV)


def test_a_tokenizer_json_of_another_name_reads_no_config(tmp_path):
    f = make_folder(tmp_path / "a", "chatml")
    (f / "other.json").write_bytes((f / "tokenizer.json").read_bytes())
    assert load_tokenizer(f / "other.json").chat_template is None


def test_save_keeps_the_template(tmp_path):
    tok = load_tokenizer(make_folder(tmp_path / "src", "llama3"))
    run = tmp_path / "run"
    tok.save(run / "tokenizer.json")  # as a run folder gets it
    cfg = json.loads((run / "tokenizer_config.json").read_text())
    assert cfg == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3}
    back = load_tokenizer(run)
    assert back.chat_template == tok.chat_template and back.special_tokens == tok.special_tokens
    assert back.fingerprint == tok.fingerprint == base_tokenizer().fingerprint  # the ids do not depend on it
    assert back.apply_chat_template(CONV) == tok.apply_chat_template(CONV)
    # several templates are written in the list form
    tok.chat_template = {"default": CHATML, "tool_use": ZEPHYR}
    tok.save(tmp_path / "run2" / "tokenizer.json")
    assert load_tokenizer(tmp_path / "run2").chat_template == {"default": CHATML, "tool_use": ZEPHYR}
    # nothing beside a tokenizer without template or special tokens
    base_tokenizer().save(tmp_path / "plain" / "tokenizer.json")
    assert not (tmp_path / "plain" / "tokenizer_config.json").exists()


def test_save_into_a_transformers_folder_merges_its_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(make_folder(tmp_path / "src", "zephyr"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "model_max_length": 64, "chat_template": "stale"}))
    tok.save(out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["model_max_length"] == 64 and cfg["chat_template"] == ZEPHYR and cfg["eos_token"] == "</s>"
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.apply_chat_template(CONV, tokenize=False) == tok.apply_chat_template(CONV)


def test_render_helpers_match_transformers(tmp_path):
    """tojson (no HTML escaping), loop controls, strftime_now's presence, raise_exception."""
    transformers = pytest.importorskip("transformers")
    template = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                "{{ m | tojson }}{{ '\n' }}{% if loop.index > 3 %}{% break %}{% endif %}{% endfor %}"
                "{% if strftime_now is defined %}T{% endif %}{{ bos_token | default('none') }}")
    f = make_folder(tmp_path / "a", "chatml")
    cfg = json.loads((f / "tokenizer_config.json").read_text())
    (f / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    tok, hf = load_tokenizer(f), transformers.AutoTokenizer.from_pretrained(f)
    conv = [*CONV, {"role": "user", "content": "<b>&'\"</b>"}, {"role": "assistant", "content": "x"}]
    want = hf.apply_chat_template(conv, tokenize=False)
    assert tok.apply_chat_template(conv) == want and "<b>&'" in want and want.endswith("Tnone")
    ids = tok.apply_chat_template(conv, tokenize=True)
    assert isinstance(ids, np.ndarray) and tok.decode(ids) == want


def test_template_is_sandboxed(tmp_path):
    f = make_folder(tmp_path / "a", "chatml")
    cfg = json.loads((f / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    (f / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="the chat template raised an error: .*unsafe"):
        load_tokenizer(f).apply_chat_template(CONV)
    cfg["chat_template"] = "{% set x = messages.append(1) %}{{ x }}"  # immutable: no changing the messages
    (f / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="the chat template raised an error"):
        load_tokenizer(f).apply_chat_template(CONV)


def test_bad_arguments(tmp_path):
    tok = load_tokenizer(make_folder(tmp_path / "a", "chatml"))
    with pytest.raises(ValueError, match="messages: messages\\[0\\].role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match='messages: expected at least one "assistant" message'):
        tok.encode_chat([{"role": "user", "content": "x"}])
    with pytest.raises(TypeError, match="chat_template: expected a str"):
        BPETokenizer(tok.tokenizer, chat_template=3)
    with pytest.raises(ValueError, match="special_tokens: expected names among"):
        BPETokenizer(tok.tokenizer, special_tokens={"eos": "</s>"})
    assert TEMPLATES  # the shared folders module is importable
