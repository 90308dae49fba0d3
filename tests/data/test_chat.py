"""Chat data: ``{"messages": [...]}`` lines rendered with the tokenizer's chat template. The text and ids are
checked against transformers' ``apply_chat_template`` on the same folder, the loss mask against the assistant
spans found in the rendered text by pattern (and against transformers' own assistant mask for a template with
``{% generation %}`` markers), bad lines by their number, and ``qorus train --data chat.jsonl --tokenizer FOLDER``
by a short run."""

import json
import re
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.data import InstructDataset
from qorus_jit.data.instruct import IGNORE_INDEX
from qorus_jit.tokenizers import chat as chat_mod
from qorus_jit.tokenizers import load_tokenizer
from tests.tokenizers.chat_folders import TEMPLATES, make_folder

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."},
     {"role": "user", "content": "Tell me a joke about cats."},
     {"role": "assistant", "content": "  Why did the cat sit on the computer? To keep an eye on the mouse!\n"}],
    [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "that is funny."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"}],
]

# Where each template puts an assistant message's text (group 1: its content and end-of-turn), found by pattern
# in the rendered text: the reference spans the loss counts.
ASSISTANT = {"chatml": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>\n)",
             "llama3": r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?<\|eot_id\|>)",
             "zephyr": r"<\|assistant\|>\n(.*?</s>\n)",  # its generation prompt ends with the line's "\n"
             "llama2": r"\[/INST\]( .*?</s>)"}


def hf_ids(out):
    """The ids of transformers' apply_chat_template(tokenize=True) (a list, or a BatchEncoding in v5)."""
    return list(out) if isinstance(out, list) else list(out["input_ids"])


def reference_mask(hf_tok, ids, text, spans):
    """Token k counts when its characters overlap a span; a token's characters are found by decoding the ids
    up to it with transformers (ASCII text: one character a byte)."""
    assert text.isascii()
    ends = [len(hf_tok.decode(ids[:k + 1])) for k in range(len(ids))]
    assert ends[-1] == len(text)
    starts = [0, *ends[:-1]]
    return np.array([any(s < b and a < e for a, b in spans) for s, e in zip(starts, ends, strict=True)])


def test_hf_template_text_and_ids_match_transformers(tmp_path):
    for kind in ("chatml", "llama3", "zephyr", "llama2"):
        folder = make_folder(tmp_path / kind, kind)
        tok, hf = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
        for conv in CONVERSATIONS[:2]:
            for gen in (False, True):
                msgs = conv[:-1] if gen else conv
                want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == want, (kind, gen)
                got = tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True)
                assert got.tolist() == hf_ids(hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen))
                assert got.dtype == np.int32
        if kind == "llama3":  # the bos_token variable is used: the text starts with it, as one token
            assert want.startswith("<|begin_of_text|><|start_header_id|>user")
            assert got[0] == tok.tokenizer.token_to_id("<|begin_of_text|>")


@pytest.mark.parametrize("kind", ["chatml", "llama3", "zephyr", "llama2"])
def test_mask_covers_exactly_the_assistant_spans(tmp_path, kind):
    folder = make_folder(tmp_path / kind, kind)
    tok, hf = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
    convs = CONVERSATIONS[:2] if kind == "llama2" else CONVERSATIONS  # llama2's needs alternating roles
    for conv in convs:
        ids, mask = tok.encode_chat(conv)
        text = hf.apply_chat_template(conv, tokenize=False)
        assert ids.tolist() == hf_ids(hf.apply_chat_template(conv, tokenize=True))
        spans = [m.span(1) for m in re.finditer(ASSISTANT[kind], text, re.S)]
        assert len(spans) == sum(m["role"] == "assistant" for m in conv)
        ref = reference_mask(hf, ids.tolist(), text, spans)
        np.testing.assert_array_equal(mask, ref)
        # what is counted decodes to the assistant texts and their end-of-turn tokens, nothing else
        assert tok.decode(ids[mask]) == "".join(text[a:b] for a, b in spans)


def test_mask_matches_transformers_generation_mask(tmp_path):
    folder = make_folder(tmp_path / "gen", "chatml_generation")
    tok, hf = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
    unicode_conv = [{"role": "user", "content": "café?"}, {"role": "assistant", "content": "naïve 猫 🐈"},
                    {"role": "user", "content": "🐈"}, {"role": "assistant", "content": "猫, café"}]
    for conv in [*CONVERSATIONS, unicode_conv]:
        ids, mask = tok.encode_chat(conv)
        out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert ids.tolist() == list(out["input_ids"])
        np.testing.assert_array_equal(mask, np.asarray(out["assistant_masks"], bool))


def test_dataset_rows_from_mixed_jsonl(tmp_path):
    folder = make_folder(tmp_path / "tok", "chatml")
    tok = load_tokenizer(folder)
    f = tmp_path / "chat.jsonl"
    lines = [{"messages": CONVERSATIONS[0]}, {"prompt": "What is the capital of France?", "completion": " Paris."},
             {"messages": CONVERSATIONS[1]}, {"messages": CONVERSATIONS[2]}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    seq_len = 40  # the first conversation is longer: cut to seq_len + 1 tokens
    ds = InstructDataset.from_jsonl(f, folder, seq_len, val_fraction=0.25)
    assert ds.n_train_examples == 3 and ds.n_val_examples == 1 and ds.n_dropped == 0
    x, y = ds._gather(np.arange(4))
    eos = tok.tokenizer.token_to_id("<|im_end|>")  # the folder's eos_token ends a completion and pads
    for row, line in enumerate(lines):
        if "messages" in line:
            ids, mask = tok.encode_chat(line["messages"])
        else:
            p, c = tok.encode(line["prompt"]), tok.encode(line["completion"])
            ids = np.concatenate([p, c, [eos]])
            mask = np.arange(len(ids)) >= len(p)
        ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        m = len(ids) - 1
        want_x = np.full(seq_len, eos)
        want_x[:m] = ids[:-1]
        want_y = np.full(seq_len, IGNORE_INDEX)
        want_y[:m] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
        np.testing.assert_array_equal(x[row], want_x)
        np.testing.assert_array_equal(y[row], want_y)
    assert (y[0] != IGNORE_INDEX).any() and (y[0] == IGNORE_INDEX).any()


def write_lines(path, *objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


GOOD = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}


@pytest.mark.parametrize("bad, needle", [
    ({"messages": [{"role": "user", "content": "a"}]}, 'at least one "assistant" message'),
    ({"messages": [{"role": "bot", "content": "a"}]}, 'messages[0].role: expected "system", "user" or "assistant"'),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]},
     "messages[1].content: expected a string, got nothing"),
    ({"messages": [{"role": "user", "content": ["a"]}]}, "messages[0].content: expected a string, got list"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]},
     "the chat template raised an error: Conversation roles must alternate"),
])
def test_bad_messages_line_names_file_and_line(tmp_path, bad, needle):
    folder = make_folder(tmp_path / "tok", "llama2")
    f = write_lines(tmp_path / "bad.jsonl", GOOD, {"prompt": "p", "completion": "c"}, "", bad, GOOD)
    with pytest.raises(ValueError) as e:
        InstructDataset.from_jsonl(f, folder, 16)
    msg = str(e.value)
    assert msg.startswith(f"{f}, line 4: ") and needle in msg and "\n" not in msg, msg


def test_messages_need_a_chat_template(tmp_path):
    f = write_lines(tmp_path / "chat.jsonl", {"prompt": "p", "completion": "c"}, GOOD)
    bare = tmp_path / "bare"
    make_folder(tmp_path / "tok", "chatml")
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    for tok in ("byte", bare):
        with pytest.raises(ValueError) as e:
            InstructDataset.from_jsonl(f, tok, 16)
        msg = str(e.value)
        assert msg.startswith(f"{f}, line 2: ") and "no chat template" in msg and "\n" not in msg
        assert "prompt/completion lines work with any tokenizer" in msg


def test_bad_template_is_one_line(tmp_path):
    folder = make_folder(tmp_path / "tok", "chatml")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] }"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    f = write_lines(tmp_path / "chat.jsonl", GOOD, GOOD)
    with pytest.raises(ValueError, match=r"line 1: the chat template is not valid Jinja \(template line 1"):
        InstructDataset.from_jsonl(f, folder, 16)


def test_without_jinja_says_what_to_install(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "tok", "chatml")
    f = write_lines(tmp_path / "chat.jsonl", {"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"})
    monkeypatch.setitem(sys.modules, "jinja2", None)  # "import jinja2" now fails
    chat_mod._compile.cache_clear()
    assert InstructDataset.from_jsonl(f, folder, 16).n_train_examples == 1  # no conversation: no Jinja needed
    write_lines(f, GOOD, GOOD)
    with pytest.raises(ImportError) as e:
        InstructDataset.from_jsonl(f, folder, 16)
    assert "pip install" in str(e.value) and "jinja2" in str(e.value) and "\n" not in str(e.value)
    chat_mod._compile.cache_clear()


TINY = ["--steps", "2", "--warmup-steps", "1", "--dim", "32", "--n-heads", "2", "--hidden-dim", "64", "--n-layers",
        "1", "--seq-len", "48", "--batch-size", "2", "--eval-batches", "1", "--val-fraction", "0.25",
        "--sample-tokens", "0", "--no-progress", "--out-dir", "runs"]


def test_qorus_train_on_chat_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_folder(tmp_path / "tok", "llama3")
    convs = [CONVERSATIONS[i % 3] for i in range(12)]
    write_lines(tmp_path / "chat.jsonl", *({"messages": c} for c in convs), {"prompt": "hi", "completion": " there"})
    res = CliRunner().invoke(main, ["train", "--data", "chat.jsonl", "--tokenizer", str(folder), *TINY,
                                    "--name", "chat"])
    assert res.exit_code == 0, res.output + str(res.exception)
    run = tmp_path / "runs" / "chat"
    metrics = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 2
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    # the run folder's tokenizer keeps the template: the run resumes and exports with it
    saved = load_tokenizer(run / "tokenizer.json")
    assert saved.chat_template == TEMPLATES["llama3"][0]
    assert saved.special_tokens == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    # a resume reads the conversations again with the run's own tokenizer, its source folder gone
    shutil.rmtree(folder)
    res = CliRunner().invoke(main, ["train", "--resume", str(run), "--steps", "3", "--no-progress"])
    assert res.exit_code == 0, res.output + str(res.exception)
    metrics = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 3


def test_qorus_train_chat_jsonl_without_template_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "chat.jsonl", {"prompt": "hi", "completion": " there"}, GOOD, GOOD)
    res = CliRunner().invoke(main, ["train", "--data", "chat.jsonl", *TINY, "--name", "chat"])
    assert res.exit_code == 2
    out = res.output.strip()
    assert "line 2" in out and "no chat template" in out and len(out.splitlines()) == 1, out
    assert not (tmp_path / "runs").exists()
