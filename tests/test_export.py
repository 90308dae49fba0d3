"""``qorus export``: a tiny ``qorus train`` run written as a Hugging Face folder that transformers loads as it
is (AutoModelForCausalLM, AutoTokenizer), checked against qorus itself: the same logits, the same greedy
continuation, the same token ids; bad arguments are one-line errors with exit code 2 that write nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.infer.generate import generate
from qorus_jit.models.registry import save_pretrained
from qorus_jit.models.sources import load_run_model, load_source
from qorus_jit.tokenizers import ByteTokenizer, load_tokenizer
from tests.test_hf import transformers_or_skip

TINY = ["--steps", "2", "--warmup-steps", "1", "--dim", "32", "--n-heads", "2", "--hidden-dim", "64",
        "--n-layers", "1", "--seq-len", "32", "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1",
        "--sample-tokens", "0", "--no-progress"]
TEXTS = ["The cat sat.", "café crème brûlée, naïve", "emoji 👍🏽 and 日本語\n\ttabs  and  spaces", "", " leading"]
HF_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def exported(request, tmp_path_factory):
    """A 2-step run of ``arch`` on the default corpus and its export: ``(run_dir, out)``."""
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QORUS_CACHE_DIR", str(tmp / "token-cache"))
        res = invoke(["train", *TINY, "--arch", request.param, "--out-dir", tmp / "runs", "--name", "r"])
    assert res.exit_code == 0, res.output
    run_dir, out = tmp / "runs" / "r", tmp / "hf"
    res = invoke(["export", run_dir, out])
    assert res.exit_code == 0, res.output
    return run_dir, out


def test_writes_the_hf_files_and_nothing_else(exported):
    run_dir, out = exported
    assert {p.name for p in out.iterdir()} == HF_FILES
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None  # no default ids the tokenizer lacks


def test_transformers_logits_and_greedy_equal_qorus(exported):
    transformers = transformers_or_skip()
    import torch

    run_dir, out = exported
    model, tokenizer = load_run_model(run_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    text = "Once upon a time, café open."  # 29 bytes: within max_seq_len 32
    ids = tokenizer.encode(text).astype(np.int64)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids[None])).logits[0].numpy()
    got = model.forward(ids[None])[0]
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))  # teacher-forced greedy picks

    prompt = tokenizer.encode("The ").astype(np.int64)
    with torch.no_grad():
        hf_ids = hf.generate(torch.from_numpy(prompt[None]), do_sample=False, max_new_tokens=20, min_new_tokens=20,
                             pad_token_id=0)[0, prompt.size:].tolist()
    ours = list(generate(model, prompt, 20, temperature=0))
    assert len(hf_ids) == 20 and hf_ids == ours
    src = load_source(out)  # what `qorus generate OUT -t 0` runs: the exported folder through qorus
    assert list(generate(src.model, src.encode("The "), 20, temperature=0, stop_tokens=src.stop_ids)) == ours


def test_auto_tokenizer_gives_qorus_ids(exported):
    transformers = transformers_or_skip()
    run_dir, out = exported
    ours = load_tokenizer(run_dir / "tokenizer.json")
    assert isinstance(ours, ByteTokenizer)
    hf = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = hf(text, add_special_tokens=True)["input_ids"]
        assert ids == ours.encode(text).tolist() == list(text.encode("utf-8"))
        assert hf.decode(ids) == text
    assert hf.decode([0xE2, 0x82]) == ours.decode([0xE2, 0x82])  # a cut character: U+FFFD both ways


def test_byte_tokenizer_hf_json_covers_every_byte():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_str(ByteTokenizer().to_hf_json())
    assert tok.get_vocab_size() == 256
    every = bytes(range(256)).decode("latin-1")  # code points 0..255: 2 bytes each from 128 on
    assert tok.encode(every).ids == ByteTokenizer().encode(every).tolist()
    assert len({tok.id_to_token(b) for b in range(256)}) == 256  # one single-character token per byte value
    assert all(len(tok.id_to_token(b)) == 1 for b in range(256))
    assert sorted(tok.get_vocab().values()) == list(range(256))


def test_save_pretrained_without_tokenizer_writes_the_model_only(exported, tmp_path):
    run_dir, _ = exported
    model, tokenizer = load_run_model(run_dir)
    save_pretrained(model, tmp_path / "plain")
    assert {p.name for p in (tmp_path / "plain").iterdir()} == {"config.json", "model.safetensors"}
    save_pretrained(model, tmp_path / "full", tokenizer=tokenizer)
    assert {p.name for p in (tmp_path / "full").iterdir()} == HF_FILES
    with pytest.raises(TypeError, match="tokenizer: expected a ByteTokenizer or BPETokenizer"):
        save_pretrained(model, tmp_path / "bad", tokenizer="byte")


def test_export_into_an_empty_folder(exported, tmp_path):
    run_dir, _ = exported
    (tmp_path / "empty").mkdir()
    res = invoke(["export", run_dir, tmp_path / "empty", "--format", "hf"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "empty").iterdir()} == HF_FILES


@pytest.mark.parametrize("case", ["not_a_run", "missing", "out_not_empty", "out_is_file", "bad_format"])
def test_bad_arguments_are_one_line_errors(exported, tmp_path, case):
    run_dir, _ = exported
    out = tmp_path / "out"
    args = [run_dir, out]
    needle = {"not_a_run": "run_dir", "missing": "run_dir", "out_not_empty": "out: expected a new or empty folder",
              "out_is_file": "out: expected a new or empty folder", "bad_format": "--format"}[case]
    if case == "not_a_run":
        args[0] = run_dir.parent
    elif case == "missing":
        args[0] = tmp_path / "nowhere"
    elif case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out_is_file":
        out.write_text("mine")
    else:
        args += ["--format", "onnx"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = invoke(["export", *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing left behind
    assert Path(run_dir / "run.json").is_file()


def test_bpe_run_exports_its_tokenizer(tmp_path, monkeypatch):
    transformers = transformers_or_skip()
    from qorus_jit.tokenizers import BPETokenizer

    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. Le café est noir. 👍 ok.\n" * 300, encoding="utf-8")
    bpe = BPETokenizer.train([corpus.read_text(encoding="utf-8")], vocab_size=300, min_frequency=1)
    bpe.save(tmp_path / "bpe.json")
    res = invoke(["train", *TINY, "--data", corpus, "--tokenizer", tmp_path / "bpe.json", "--out-dir",
                  tmp_path / "runs", "--name", "r"])
    assert res.exit_code == 0, res.output
    res = invoke(["export", tmp_path / "runs" / "r", tmp_path / "hf"])
    assert res.exit_code == 0, res.output
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in [*TEXTS, "The cat sat on the mat."]:
        assert hf(text)["input_ids"] == bpe.encode(text).tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.vocab_size == load_run_model(tmp_path / "runs" / "r")[0].config.vocab_size
