"""Small Hugging Face tokenizer folders with the chat templates of real models (ChatML, Llama 3, Zephyr, a
Llama 2-style one that raises on bad role order, and ChatML with transformers' ``{% generation %}`` markers),
shared by the chat tests."""

import json

from qorus_jit.tokenizers import BPETokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>", "<|user|>", "<|system|>", "<|assistant|>", "<s>", "</s>"]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Meta-Llama-3-8B-Instruct's template, as published.
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# zephyr-7b-beta's template: one statement a line, so trim_blocks / lstrip_blocks decide the whitespace.
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

# Llama 2-style: roles must alternate user/assistant (raise_exception otherwise); a system message is folded in.
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}"
          "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
          "{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")

# ChatML with transformers' assistant markers, so that apply_chat_template(return_assistant_tokens_mask=True)
# gives an assistant mask of its own to compare with.
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

TEMPLATES = {"chatml": (CHATML, {"eos_token": "<|im_end|>"}),
             "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
             "zephyr": (ZEPHYR, {"eos_token": "</s>"}),
             "llama2": (LLAMA2, {"bos_token": "<s>", "eos_token": "</s>"}),
             "chatml_generation": (CHATML_GENERATION, {"eos_token": "<|im_end|>"})}

CORPUS = ("You are a helpful assistant. What is the capital of France? The capital of France is Paris. "
          "Tell me a joke about cats. Why did the cat sit on the computer? To keep an eye on the mouse! "
          "Thanks, that is funny. café, naïve, 猫 and 🐈. ") * 20

_BASE = {}


def base_tokenizer() -> BPETokenizer:
    """A byte-level BPE trained on a small corpus, with every template's special tokens (trained once)."""
    if "tok" not in _BASE:
        _BASE["tok"] = BPETokenizer.train([CORPUS], vocab_size=600, special_tokens=SPECIAL)
    return _BASE["tok"]


def make_folder(path, kind: str = "chatml", config_template: bool = True):
    """A tokenizer folder as transformers writes it: tokenizer.json and tokenizer_config.json with the
    template of ``kind`` (or, with ``config_template=False``, the template in chat_template.jinja)."""
    template, special = TEMPLATES[kind]
    path.mkdir(parents=True, exist_ok=True)
    base_tokenizer().save(path)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    if config_template:
        config["chat_template"] = template
    else:
        (path / "chat_template.jinja").write_text(template, encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
