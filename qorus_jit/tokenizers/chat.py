"""Chat templates of Hugging Face tokenizer folders: read from ``tokenizer_config.json`` / ``chat_template.jinja``,
written back the same way, and rendered as transformers' ``apply_chat_template`` renders them (a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception``, the named special tokens as
variables). Jinja is imported only when a template is rendered (``pip install "qorus-jit[chat]"``)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from qorus_jit.core.files import read_json

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"  # older folders keep the special tokens here
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"     # named templates other than the default, NAME.jinja

#: The named special tokens a template sees as variables (transformers' ``special_tokens_map``).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

#: The roles a message may have.
ROLES = ("system", "user", "assistant")

CHAT_INSTALL_HINT = 'pip install "qorus-jit[chat]" (or pip install "jinja2>=3.1.6")'


def read_chat_config(folder) -> tuple[str | dict[str, str] | None, dict[str, str]]:
    """``(chat_template, special_tokens)`` of a Hugging Face tokenizer folder, as transformers reads them:
    the template from ``chat_template.jinja`` (and ``additional_chat_templates/*.jinja``), else from
    ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of ``{"name", "template"}``); several
    templates come back as a dict name -> template. The special tokens (``bos_token``, ``eos_token``, ...) as
    strings, from ``tokenizer_config.json`` then ``special_tokens_map.json``. Missing files give ``None, {}``."""
    f = Path(folder)
    config = _read_object(f / TOKENIZER_CONFIG_FILE)
    template = config.get("chat_template")
    if isinstance(template, list):
        try:
            template = {t["name"]: t["template"] for t in template}
        except (TypeError, KeyError):
            raise ValueError(f"{f / TOKENIZER_CONFIG_FILE}: chat_template: expected a string or a list of "
                             "{\"name\", \"template\"} objects") from None
    files = {}
    if (f / CHAT_TEMPLATE_FILE).is_file():
        files["default"] = (f / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (f / CHAT_TEMPLATE_DIR).is_dir():
        for t in sorted((f / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            files[t.name.removesuffix(".jinja")] = t.read_text(encoding="utf-8")
    if files:  # the .jinja files take precedence over the config's template
        template = files["default"] if list(files) == ["default"] else files
    if template is not None and not (isinstance(template, str) or (
            isinstance(template, dict) and all(isinstance(v, str) for v in template.values()))):
        raise ValueError(f"{f / TOKENIZER_CONFIG_FILE}: chat_template: expected a string or a list of "
                         f"{{\"name\", \"template\"}} objects, got {type(template).__name__}")
    special = {}
    legacy = _read_object(f / SPECIAL_TOKENS_MAP_FILE)
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name, legacy.get(name))
        if isinstance(value, dict):  # an AddedToken: {"content": ..., "lstrip": ...}
            value = value.get("content")
        if isinstance(value, str):
            special[name] = value
    return template, special


def chat_config(chat_template, special_tokens: dict[str, str]) -> dict:
    """The ``tokenizer_config.json`` entries that keep ``chat_template`` and ``special_tokens`` (empty when
    there is neither): the form :func:`read_chat_config` and transformers read."""
    out = dict(special_tokens)
    if isinstance(chat_template, dict):
        out["chat_template"] = [{"name": k, "template": v} for k, v in chat_template.items()]
    elif chat_template is not None:
        out["chat_template"] = chat_template
    return out


def default_template(chat_template) -> str | None:
    """The template :func:`render` uses: the only one, or the one named ``default`` (as transformers picks it
    when no tools are given)."""
    if isinstance(chat_template, dict):
        if "default" not in chat_template:
            raise ValueError(f"chat_template: the tokenizer has several chat templates ({', '.join(chat_template)}) "
                             "and none named 'default'")
        return chat_template["default"]
    return chat_template


def check_messages(name: str, messages, need_assistant: bool = True) -> list[dict[str, str]]:
    """``messages`` must be a non-empty list of ``{"role": "system" | "user" | "assistant", "content": str}``
    objects (other keys are ignored), with at least one assistant message if ``need_assistant``; returns them
    as role/content dicts. A bad one is a ValueError naming ``name``."""
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else type(messages).__name__
        raise ValueError(f"{name}: expected \"messages\" to be a non-empty list of {{\"role\", \"content\"}} "
                         f"objects, got {got}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"{name}: messages[{i}]: expected an object with \"role\" and \"content\", "
                             f"got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            got = "nothing" if "role" not in m else json.dumps(role)[:40]
            raise ValueError(f"{name}: messages[{i}].role: expected \"system\", \"user\" or \"assistant\", got {got}")
        if not isinstance(content, str):
            got = "nothing" if "content" not in m else type(content).__name__
            raise ValueError(f"{name}: messages[{i}].content: expected a string, got {got}")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"{name}: expected at least one \"assistant\" message (the text the loss counts), got none")
    return out


def render(template: str, messages: list[dict], special_tokens: dict[str, str],
           add_generation_prompt: bool = False) -> str:
    """``template`` rendered on ``messages`` as transformers' ``apply_chat_template(tokenize=False)`` does.
    A template that does not compile or raises is a ValueError; no Jinja is an ImportError."""
    compiled = _compile(template)
    try:
        return compiled.render(messages=messages, tools=None, documents=None,
                               add_generation_prompt=bool(add_generation_prompt), **special_tokens)
    except Exception as e:  # raise_exception's TemplateError, or any error of the template's own code
        text = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"the chat template raised an error: {text}") from None


def assistant_spans(template: str, messages: list[dict], special_tokens: dict[str, str]) -> tuple[str, list]:
    """``(text, spans)``: the rendered conversation and the ``(start, end)`` character span of each assistant
    message's rendered text in it (its content and what the template puts after it, e.g. the end-of-turn token).

    The span of message ``i`` is the difference between the conversation rendered through message ``i`` and
    the one rendered before it with the generation prompt; a template for which the one is not a prefix of
    the other, or of the whole, is a ValueError."""
    text = render(template, messages, special_tokens)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(template, messages[:i], special_tokens, add_generation_prompt=True)
        through = text if i == len(messages) - 1 else render(template, messages[:i + 1], special_tokens)
        if not through.startswith(before) or not text.startswith(through):
            raise ValueError(f"messages[{i}]: the chat template renders the conversation before this assistant "
                             "message (with the generation prompt) other than as the start of the conversation "
                             "through it, so its tokens cannot be told apart")
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return text, spans


@lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError(f"chat templates need the jinja2 package: {CHAT_INSTALL_HINT}") from None
    version = tuple(int(v) for v in re.findall(r"\d+", getattr(jinja2, "__version__", "0"))[:3])
    if version < (3, 1, 6):  # older ones have known sandbox escapes, and a template is someone else's code
        raise ImportError(f"chat templates need jinja2 >= 3.1.6, got {jinja2.__version__}: pip install -U jinja2")

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask markers): the body as is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # no HTML escaping
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the chat template is not valid Jinja (template line {e.lineno}: {e.message})") from None


def _read_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = read_json(path, path.name)
    return data if isinstance(data, dict) else {}
