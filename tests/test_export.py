"""``qorus export``: a tiny ``qorus train`` run written as a Hugging Face folder that transformers loads as it
is (AutoModelForCausalLM, AutoTokenizer), checked against qorus itself: the same logits, the same greedy
continuation, the same token ids; as llama2.c's model.bin + tokenizer.bin, checked against a NumPy reader
of llama2.c's layout that runs the files as run.c does (tests/naive/llama2c.py); a LoRA model merged or as a
PEFT folder beside its base, checked with transformers and peft; bad arguments are one-line errors with exit
code 2 that write nothing."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.infer.export import export_run
from qorus_jit.infer.generate import generate
from qorus_jit.layers.lora import lora_layers
from qorus_jit.models.quantize import quantize_model
from qorus_jit.models.registry import save_pretrained
from qorus_jit.models.sources import SourceError, load_run_model, load_source
from qorus_jit.tokenizers import ByteTokenizer, load_tokenizer
from tests.naive import llama2c as naive_l2c
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


# ------------------------------------------------------------------------------------------ llama2c, LoRA

L2C_FILES = {"model.bin", "tokenizer.bin"}
CORPUS = "once upon a time the cat sat on the mat and then the hat. "


def llama2c_tokenizer():
    """A small llama2.c tokenizer: <unk>, <s>, </s>, the 256 byte tokens, then pieces by falling score."""
    from qorus_jit.tokenizers import Llama2cTokenizer

    pieces = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)]
    words = [" ", "o", "n", "c", "e", "t", "h", "a", " o", "on", "nce", " once", "th", " th", "the", " the",
             "at", " at", "a", " a", " c", " cat", " s", " sat", "m", " m", " mat"]
    return Llama2cTokenizer(pieces + words, [0.0] * 259 + [float(-i) for i in range(len(words))])


@pytest.fixture(scope="module")
def l2c_run(tmp_path_factory):
    """A Llama run trained with llama2.c's tokenizer for 30 steps on a repeated sentence (so that its greedy
    continuation is not one token over and over): the run folder."""
    tmp = tmp_path_factory.mktemp("export-l2c")
    llama2c_tokenizer().save(tmp / "tok.bin")
    (tmp / "corpus.txt").write_text(CORPUS * 400, encoding="utf-8")
    args = [*TINY, "--steps", "30", "--lr", "0.02", "--eval-every", "30"]  # the later ones win
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QORUS_CACHE_DIR", str(tmp / "token-cache"))
        res = invoke(["train", *args, "--arch", "llama", "--tokenizer", tmp / "tok.bin", "--data",
                      tmp / "corpus.txt", "--out-dir", tmp / "runs", "--name", "r"])
    assert res.exit_code == 0, res.output
    return tmp / "runs" / "r"


@pytest.fixture(scope="module")
def l2c_exported(l2c_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-l2c-out") / "l2c"
    result = export_run(l2c_run, out, format="llama2c")
    return l2c_run, out, result


def test_llama2c_writes_model_and_tokenizer_bin(l2c_exported):
    run_dir, out, result = l2c_exported
    assert {p.name for p in out.iterdir()} == L2C_FILES
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert result.path == out and result.format == "llama2c" and os.fspath(result) == str(out)
    # the run's tokenizer.bin written back as it is
    assert (out / "tokenizer.bin").read_bytes() == (run_dir / "tokenizer.bin").read_bytes()
    model, _ = load_run_model(run_dir)
    cfg, _ = naive_l2c.read_checkpoint(out / "model.bin")
    c = model.config
    assert (cfg["dim"], cfg["hidden_dim"], cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["vocab_size"],
            cfg["seq_len"]) == (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                                c.max_seq_len)
    # qorus trains with norm_eps 1e-6, llama2.c runs 1e-5: the stream is rescaled, the tied classifier apart
    assert c.norm_eps == 1e-6 and c.tie_embeddings and not cfg["shared"]
    assert len(result.notes) == 1 and result.notes[0].startswith("norm_eps: ") and "\n" not in result.notes[0]


def test_llama2c_logits_as_run_c_computes_them(l2c_exported):
    run_dir, out, _ = l2c_exported
    model, tokenizer = load_run_model(run_dir)
    cfg, w = naive_l2c.read_checkpoint(out / "model.bin")
    ids = tokenizer.encode("once upon a time, café 👍")  # BOS first; byte fallback too
    assert ids.size <= cfg["seq_len"]
    want = naive_l2c.forward(cfg, w, ids.tolist())
    got = model.forward(ids[None].astype(np.int64))[0]
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max(), rtol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_llama2c_greedy_continuation_equals_qorus(l2c_exported):
    run_dir, out, _ = l2c_exported
    model, tokenizer = load_run_model(run_dir)
    cfg, w = naive_l2c.read_checkpoint(out / "model.bin")
    prompt = tokenizer.encode("once upon", bos=True).astype(np.int64)  # what run.c feeds: BOS, then the text
    ours = list(generate(model, prompt, 16, temperature=0))
    assert len(set(ours)) > 2  # the run learned more than one token
    assert naive_l2c.greedy(cfg, w, prompt.tolist(), 16) == ours
    src = load_source(out / "model.bin", tokenizer=out / "tokenizer.bin")  # qorus generate OUT/model.bin
    assert src.kind == "llama2c" and src.encode("once upon").tolist() == prompt.tolist()
    got = list(generate(src.model, src.encode("once upon"), 16, temperature=0, stop_tokens=src.stop_ids))
    assert got == ours[:len(got)] and (len(got) == 16 or ours[len(got)] in src.stop_ids)


def test_generate_bin_equals_generate_run_dir(l2c_exported):
    run_dir, out, _ = l2c_exported
    a, b = load_source(run_dir), load_source(out / "model.bin", tokenizer=out / "tokenizer.bin")
    assert a.encode("once upon").tolist() == b.encode("once upon").tolist()
    gen_a = list(generate(a.model, a.encode("once upon"), 16, temperature=0, stop_tokens=a.stop_ids))
    gen_b = list(generate(b.model, b.encode("once upon"), 16, temperature=0, stop_tokens=b.stop_ids))
    assert gen_a == gen_b


def test_llama2c_tokenizer_encodes_and_decodes_as_run_c(l2c_exported):
    run_dir, out, _ = l2c_exported
    _, tokenizer = load_run_model(run_dir)
    pieces, scores = naive_l2c.read_tokenizer(out / "tokenizer.bin", tokenizer.vocab_size)
    for text in [*TEXTS, CORPUS, "the cat sat on the mat"]:
        ids = naive_l2c.encode(pieces, scores, text)
        assert ids == tokenizer.encode(text, bos=False).tolist()
        assert naive_l2c.decode(pieces, ids).decode("utf-8", errors="replace") == text \
            == tokenizer.decode([1, *ids])  # the space run.c puts first is dropped after the BOS


def test_real_run_c_prints_qorus_greedy_text(l2c_exported, tmp_path):
    """llama2.c's own run.c, when a copy is at $QORUS_LLAMA2C_RUN_C and a C compiler is here: its greedy
    output for the exported files equals qorus's (run.c's source is not part of this repository)."""
    import shutil
    import subprocess

    src, cc = os.environ.get("QORUS_LLAMA2C_RUN_C"), shutil.which("cc")
    if not src or not cc:
        pytest.skip("set QORUS_LLAMA2C_RUN_C to llama2.c's run.c (and have cc) to run the exported files with it")
    run_dir, out, _ = l2c_exported
    exe = tmp_path / "run"
    subprocess.run([cc, "-O2", "-o", exe, src, "-lm"], check=True, capture_output=True)
    n = 24  # run.c's steps: positions fed, its BOS first; the prompt's tokens then come out, then new ones
    proc = subprocess.run([exe, out / "model.bin", "-z", out / "tokenizer.bin", "-t", "0", "-n", str(n), "-i",
                           "once upon"], check=True, capture_output=True)
    src_bin = load_source(out / "model.bin", tokenizer=out / "tokenizer.bin")
    prompt = src_bin.encode("once upon")
    ids = list(generate(src_bin.model, prompt, n - prompt.size + 1, temperature=0, stop_tokens={1}))  # run.c: at BOS
    want = src_bin.tokenizer.decode([*prompt.tolist(), *ids]) + "\n"
    assert proc.stdout.decode("utf-8") == want


def lora_model(run_dir, targets=None):
    """The run's model with LoRA adapters of rank 2 whose B is not zero (so they change the logits), the
    same every call."""
    from qorus_jit.layers.lora import apply_lora

    model, tokenizer = load_run_model(run_dir)
    rng = np.random.default_rng(7)
    for a in apply_lora(model, targets, rank=2, alpha=4.0, rng=1).values():
        a.lora_B[...] = rng.normal(0.0, 0.2, a.lora_B.shape)
    return model, tokenizer


@pytest.fixture
def as_lora_run(monkeypatch):
    """Make export_run load a run's model with adapters, as load_run_model does for a LoRA run."""
    import qorus_jit.infer.export as E

    monkeypatch.setattr(E, "load_run_model", lora_model)


def hf_logits(folder, ids, adapter=None):
    transformers = transformers_or_skip()
    import torch

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    if adapter is not None:
        peft = pytest.importorskip("peft")
        hf = peft.PeftModel.from_pretrained(hf, adapter)
    with torch.no_grad():
        return hf.eval()(torch.from_numpy(np.asarray(ids, np.int64)[None])).logits[0].numpy()


def test_lora_merged_hf_folder_equals_model_with_adapters(exported, tmp_path, as_lora_run):
    run_dir, _ = exported
    result = export_run(run_dir, tmp_path / "merged", merge_lora=True)
    assert {p.name for p in (tmp_path / "merged").iterdir()} == HF_FILES
    model, tokenizer = lora_model(run_dir)
    assert result.notes == (f"merged the run's {len(lora_layers(model))} LoRA adapters into the weights",)
    ids = tokenizer.encode("Once upon a time, café open.")
    want = model.forward(ids[None].astype(np.int64))[0]
    plain, _ = load_run_model(run_dir)
    assert np.abs(plain.forward(ids[None].astype(np.int64))[0] - want).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(hf_logits(tmp_path / "merged", ids), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_lora_unmerged_hf_folder_with_peft_adapter(exported, tmp_path, as_lora_run):
    run_dir, _ = exported
    out = tmp_path / "unmerged"
    result = export_run(run_dir, out)
    assert {p.name for p in out.iterdir()} == HF_FILES | {"adapter"}
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(out.absolute())
    assert len(result.notes) == 1 and "adapter" in result.notes[0] and "--merge-lora" in result.notes[0]
    model, tokenizer = lora_model(run_dir)
    ids = tokenizer.encode("Once upon a time, café open.")
    want = model.forward(ids[None].astype(np.int64))[0]
    base, _ = load_run_model(run_dir)  # the folder alone is the base model
    np.testing.assert_allclose(hf_logits(out, ids), base.forward(ids[None].astype(np.int64))[0], rtol=1e-4,
                               atol=2e-4)
    np.testing.assert_allclose(hf_logits(out, ids, adapter=out / "adapter"), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def test_lora_merged_llama2c_equals_model_with_adapters(l2c_run, tmp_path, as_lora_run):
    out = tmp_path / "l2c"
    result = export_run(l2c_run, out, format="llama2c", merge_lora=True)
    assert {p.name for p in out.iterdir()} == L2C_FILES and len(result.notes) == 2  # merged, rescaled
    model, tokenizer = lora_model(l2c_run)
    ids = tokenizer.encode("once upon a time the cat")
    want = model.forward(ids[None].astype(np.int64))[0]
    cfg, w = naive_l2c.read_checkpoint(out / "model.bin")
    np.testing.assert_allclose(naive_l2c.forward(cfg, w, ids.tolist()), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def test_merge_lora_without_adapters_is_a_noop_with_a_note(exported, tmp_path):
    run_dir, out = exported
    result = export_run(run_dir, tmp_path / "m", merge_lora=True)
    assert result.notes == ("merge_lora: the run has no LoRA adapters; its model is exported as it is",)
    for name in HF_FILES:
        assert (tmp_path / "m" / name).read_bytes() == (out / name).read_bytes(), name


def test_llama2c_without_rescaling_keeps_the_tied_classifier(l2c_run, tmp_path, monkeypatch):
    """A Llama with llama2.c's own eps (1e-5) is written as it is: a shared classifier, no note."""
    import dataclasses

    import qorus_jit.infer.export as E
    from qorus_jit.models.llama import Llama

    def load(run_dir):
        model, tokenizer = load_run_model(run_dir)
        same = Llama(dataclasses.replace(model.config, norm_eps=1e-5))
        same.load_parameters(model.parameters())
        return same, tokenizer

    monkeypatch.setattr(E, "load_run_model", load)
    result = export_run(l2c_run, tmp_path / "l2c", format="llama2c")
    assert result.notes == ()
    cfg, w = naive_l2c.read_checkpoint(tmp_path / "l2c" / "model.bin")
    assert cfg["shared"]
    model, tokenizer = load(l2c_run)
    assert model.config.tie_embeddings
    ids = tokenizer.encode("once upon a time the cat")
    want = naive_l2c.forward(cfg, w, ids.tolist())
    np.testing.assert_allclose(model.forward(ids[None].astype(np.int64))[0], want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", ["gpt2_to_llama2c", "byte_to_llama2c", "bpe_to_llama2c", "lora_to_llama2c",
                                  "llama2c_tokenizer_to_hf", "bad_format", "bad_merge_lora", "out_not_empty"])
def test_bad_export_arguments_write_nothing(exported, l2c_run, tmp_path, monkeypatch, case):
    import qorus_jit.infer.export as E
    from qorus_jit.tokenizers import BPETokenizer

    run_dir, _ = exported
    arch = json.loads((run_dir / "run.json").read_text())["model"]["arch"]
    kw, needle = {"format": "llama2c"}, "format: "
    if case == "gpt2_to_llama2c":
        if arch != "gpt2":
            pytest.skip("a GPT-2 case")
        needle = "format: llama2.c's format holds a Llama without biases with RoPE theta 10000; the run's model " \
                 "is a GPT2: use --format hf"
    elif arch != "llama":
        pytest.skip("a Llama case")
    elif case == "byte_to_llama2c":
        needle = "format: llama2c needs llama2.c's own tokenizer"
    elif case == "bpe_to_llama2c":
        model, _ = load_run_model(run_dir)
        bpe = BPETokenizer.train(["the cat sat on the mat"], vocab_size=256, min_frequency=1)
        monkeypatch.setattr(E, "load_run_model", lambda d: (model, bpe))
        needle = "format: llama2c needs a tokenizer that llama2.c's run.c encodes as the run's does"
    elif case == "lora_to_llama2c":
        run_dir = l2c_run
        monkeypatch.setattr(E, "load_run_model", lora_model)
        needle = "merge_lora: llama2.c's format holds no adapters: pass --merge-lora"
    elif case == "llama2c_tokenizer_to_hf":
        run_dir, kw = l2c_run, {"format": "hf"}
        needle = "format: a Hugging Face folder holds a tokenizer.json"
    elif case == "bad_format":
        kw, needle = {"format": "onnx"}, "format: expected one of hf, llama2c, gguf, got 'onnx'"
    elif case == "bad_merge_lora":
        kw, needle = {"merge_lora": "yes"}, "merge_lora: expected True or False"
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        needle = "out: expected a new or empty folder"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SourceError) as e:
        export_run(run_dir, tmp_path / "out", **kw)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value), str(e.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def lora_run(exported, tmp_path_factory):
    """A LoRA run of ``qorus train --init`` on the exported fixture's run (rank 2 on every target): its folder."""
    run_dir, _ = exported
    tmp = tmp_path_factory.mktemp("export-lora")
    args = ["--steps", "4", "--warmup-steps", "1", "--lr", "0.05", "--seq-len", "32", "--batch-size", "4",
            "--eval-every", "4", "--eval-batches", "1", "--sample-tokens", "0", "--no-progress"]  # sizes: the source's
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QORUS_CACHE_DIR", str(tmp / "token-cache"))
        res = invoke(["train", *args, "--init", run_dir, "--lora-rank", "2", "--out-dir", tmp / "runs", "--name",
                      "lora"])
    assert res.exit_code == 0, res.output
    return tmp / "runs" / "lora"


def test_lora_run_exports_merged_and_as_peft_adapter(lora_run, tmp_path):
    """A real LoRA run (run.json's "lora" table): transformers on the merged folder, and peft on the base
    folder with its adapter/, give the logits of the run's model with its adapters."""
    assert json.loads((lora_run / "run.json").read_text())["lora"]["rank"] == 2
    model, tokenizer = load_run_model(lora_run)
    n = len(lora_layers(model))
    assert n > 0 and all(np.abs(a.lora_B).max() > 0 for a in lora_layers(model).values())  # trained
    ids = tokenizer.encode("Once upon a time, café open.")
    want = model.forward(ids[None].astype(np.int64))[0]
    merged = export_run(lora_run, tmp_path / "merged", merge_lora=True)
    assert merged.notes == (f"merged the run's {n} LoRA adapters into the weights",)
    np.testing.assert_allclose(hf_logits(tmp_path / "merged", ids), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    export_run(lora_run, tmp_path / "apart")
    np.testing.assert_allclose(hf_logits(tmp_path / "apart", ids, adapter=tmp_path / "apart" / "adapter"), want,
                               rtol=1e-4, atol=1e-4 * np.abs(want).max())
    with pytest.raises(SourceError, match="^(merge_lora: llama2.c's format holds no adapters|format: llama2.c's)"):
        export_run(lora_run, tmp_path / "l2c", format="llama2c")
    assert not (tmp_path / "l2c").exists()


def test_cli_export_formats_and_lora(exported, l2c_run, lora_run, tmp_path):
    """qorus export: --format llama2c writes model.bin + tokenizer.bin; a LoRA run's hf export says where its
    adapters went; refusals (llama2c without --merge-lora, a GPT-2 to llama2c) are one line with exit code 2."""
    res = invoke(["export", l2c_run, tmp_path / "l2c", "--format", "llama2c"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "l2c").iterdir()} == {"model.bin", "tokenizer.bin"}
    res = invoke(["export", lora_run, tmp_path / "apart"])
    assert res.exit_code == 0 and "adapter" in res.output, res.output
    assert (tmp_path / "apart" / "adapter" / "adapter_config.json").is_file()
    res = invoke(["export", lora_run, tmp_path / "merged", "--merge-lora"])
    assert res.exit_code == 0 and "merged the run's" in res.output, res.output
    assert not (tmp_path / "merged" / "adapter").exists()
    refusals = [[lora_run, tmp_path / "no", "--format", "llama2c"]]
    if json.loads((exported[0] / "run.json").read_text())["model"]["arch"] == "gpt2":
        refusals.append([exported[0], tmp_path / "no", "--format", "llama2c"])
    for args in refusals:
        res = invoke(["export", *args])
        assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
        assert not (tmp_path / "no").exists()


SP_PIECES = ["\u2581", "o", "n", "c", "e", "t", "h", "a", "s", "m", "p", "u", "i", "\u2581o", "on", "\u2581on", "ce",
             "\u2581once", "th", "\u2581th", "the", "\u2581the", "at", "\u2581at", "\u2581a", "\u2581c", "\u2581cat",
             "\u2581s", "\u2581sat", "\u2581m", "\u2581mat", "up", "\u2581up", "\u2581upon", "\u2581\u2581"]


def sentencepiece_json(pieces=SP_PIECES, drop=()):
    """A tokenizer.json laid out as Llama's (<unk>, <s>, </s>, the byte tokens, then ``pieces``; byte fallback;
    "▁" put first and for spaces), merging every split of each piece into two pieces, piece by piece (what
    the conversion of a sentencepiece model gives), less the merges ``drop``."""
    tk = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    merges = [(p[:k], p[k:]) for p in pieces for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
    merges = [m for m in merges if m not in drop]
    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                     fuse_unk=True))
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.Prepend("\u2581"),
                                              tk.normalizers.Replace(" ", "\u2581")])
    tok.decoder = tk.decoders.Sequence([tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(),
                                        tk.decoders.Fuse(), tk.decoders.Strip(" ", 1, 0)])
    return tok.to_str()


def test_sentencepiece_tokenizer_json_becomes_tokenizer_bin(tmp_path, monkeypatch):
    """A run whose tokenizer.json is sentencepiece BPE (as Llama's): tokenizer.bin encodes every text as the
    tokenizer.json does when read and run by run.c's rules (tests/naive), and the model's logits are kept."""
    from qorus_jit.tokenizers import BPETokenizer

    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    (tmp_path / "sp.json").write_text(sentencepiece_json(), encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("once upon a time the cat sat on the mat. " * 200, encoding="utf-8")
    res = invoke(["train", *TINY, "--arch", "llama", "--tokenizer", tmp_path / "sp.json", "--data",
                  tmp_path / "corpus.txt", "--out-dir", tmp_path / "runs", "--name", "r"])
    assert res.exit_code == 0, res.output
    run_dir, out = tmp_path / "runs" / "r", tmp_path / "l2c"
    export_run(run_dir, out, format="llama2c")
    model, tokenizer = load_run_model(run_dir)
    assert isinstance(tokenizer, BPETokenizer)
    pieces, scores = naive_l2c.read_tokenizer(out / "tokenizer.bin", model.config.vocab_size)
    assert pieces[:4] == [b"<unk>", b"\n<s>\n", b"\n</s>\n", b"<0x00>"] and pieces[259] == b" "
    for text in [*TEXTS, "once upon a time the cat sat on the mat", "  the  mat ", "upon\tupon", "theatre"]:
        ids = naive_l2c.encode(pieces, scores, text)
        assert ids == tokenizer.encode(text).tolist(), text
        assert naive_l2c.decode(pieces, ids).decode("utf-8", errors="replace") == text == tokenizer.decode(ids)
    cfg, w = naive_l2c.read_checkpoint(out / "model.bin")
    ids = [1, *tokenizer.encode("once upon a time the cat").tolist()]
    want = naive_l2c.forward(cfg, w, ids)
    np.testing.assert_allclose(model.forward(np.array([ids]))[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("case", ["missing_merge", "byte_level"])
def test_other_tokenizer_json_to_llama2c_is_refused(exported, tmp_path, monkeypatch, case):
    import qorus_jit.infer.export as E
    from qorus_jit.tokenizers import BPETokenizer

    run_dir, _ = exported
    if json.loads((run_dir / "run.json").read_text())["model"]["arch"] != "llama":
        pytest.skip("a Llama case")
    if case == "missing_merge":  # the tokenizer.json never merges "▁on" + "ce"; run.c would
        (tmp_path / "sp.json").write_text(sentencepiece_json(drop={("\u2581on", "ce")}), encoding="utf-8")
        tok, why = BPETokenizer.load(tmp_path / "sp.json"), "does not merge '▁on' and 'ce' into '▁once'"
    else:
        tok = BPETokenizer.train(["the cat sat on the mat"] * 5, vocab_size=270, min_frequency=1)
        why = "is not BPE with byte fallback"
    model, _ = load_run_model(run_dir)
    monkeypatch.setattr(E, "load_run_model", lambda d: (model, tok))
    with pytest.raises(SourceError) as e:
        export_run(run_dir, tmp_path / "out", format="llama2c")
    assert str(e.value).startswith("format: llama2c needs a tokenizer that llama2.c's run.c encodes")
    assert why in str(e.value) and str(e.value).endswith("use --format hf") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_chat_template_survives_export(tmp_path, monkeypatch):
    """A run on chat data keeps its tokenizer's template; the exported folder's AutoTokenizer renders a
    conversation to the ids qorus trained on."""
    transformers = transformers_or_skip()
    from tests.tokenizers.chat_folders import make_folder

    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    folder = make_folder(tmp_path / "tok", "llama3")
    talk = [{"role": "user", "content": "Is the cat funny?"}, {"role": "assistant", "content": "Yes, café."}]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps({"messages": talk}) + "\n" for _ in range(40)))
    res = invoke(["train", *TINY, "--tokenizer", folder, "--data", tmp_path / "chat.jsonl", "--val-fraction", "0.2",
                  "--out-dir", tmp_path / "runs", "--name", "chat"])
    assert res.exit_code == 0, res.output
    res = invoke(["export", tmp_path / "runs" / "chat", tmp_path / "hf"])
    assert res.exit_code == 0, res.output
    ours = load_tokenizer(tmp_path / "runs" / "chat" / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    want = theirs.apply_chat_template(talk, tokenize=True, add_generation_prompt=False)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert ours.apply_chat_template(talk, tokenize=True).tolist() == list(want)
    assert theirs.eos_token == ours.special_tokens.get("eos_token")


def test_gguf_export_generates_as_the_run(exported, tmp_path):
    """qorus export --format gguf: a Llama run as model.gguf, which loads back as the run's model (logits to 1e-5,
    the same greedy continuation; the GGUF layout itself is checked against transformers' GGUF reader in
    tests/test_gguf.py); a GPT-2 run is refused in one line."""
    pytest.importorskip("gguf")
    run_dir, _ = exported
    res = invoke(["export", run_dir, tmp_path / "g", "--format", "gguf"])
    if json.loads((run_dir / "run.json").read_text())["model"]["arch"] != "llama":
        assert res.exit_code == 2 and res.output.count("\n") == 1 and "GGUF" in res.output, res.output
        assert not (tmp_path / "g").exists()
        return
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["model.gguf"]
    run, gg = load_source(run_dir), load_source(tmp_path / "g" / "model.gguf")
    ids = run.encode("Once upon a time")
    np.testing.assert_allclose(gg.model.forward(ids[None]), run.model.forward(ids[None]), rtol=1e-5, atol=1e-5)
    want = list(generate(run.model, ids, 12, temperature=0))
    assert list(generate(gg.model, gg.encode("Once upon a time"), 12, temperature=0)) == want
    # dtype="int8": Q8_0 matrices (the gguf package reads them so), loading as the run's model quantized to int8
    res = invoke(["export", run_dir, tmp_path / "g8", "--format", "gguf", "--dtype", "int8"])
    assert res.exit_code == 0 and "(gguf, int8)" in res.output, res.output
    import gguf

    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(tmp_path / "g8" / "model.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    q8 = load_source(tmp_path / "g8" / "model.gguf").model
    want = quantize_model(load_source(run_dir).model, "int8")
    np.testing.assert_allclose(q8.forward(ids[None]), want.forward(ids[None]), rtol=1e-5, atol=1e-5)
    res = invoke(["export", run_dir, tmp_path / "h8", "--dtype", "int8"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "dtype: int8 is for --format gguf" in res.output
    assert not (tmp_path / "h8").exists()
