"""``qorus generate`` on each kind of source, as a user runs it: a run directory, a Hugging Face folder and a
llama2.c checkpoint with its tokenizer.bin; its greedy text equals the Python API's."""

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import qorus_jit
from qorus_jit.cli import main
from qorus_jit.infer.generate import generate
from qorus_jit.models import Bert, BertConfig, Llama, LlamaConfig
from qorus_jit.models.llama import save_llama2c
from qorus_jit.models.sources import SourceError, load_run_model, load_source
from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer, Llama2cTokenizer
from qorus_jit.train.run import TrainConfig, start_run


def run_cli(*args):
    result = CliRunner().invoke(main, ["generate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def tiny_llama(vocab):
    return Llama(LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=vocab,
                             max_seq_len=64, norm_eps=1e-5), rng=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(steps=3, warmup_steps=1, dim=32, n_heads=2, hidden_dim=64, seq_len=32, batch_size=2,
                      eval_every=0, ckpt_every=0, sample_tokens=0, out_dir=str(out), name="r")
    start_run(cfg, progress=False).fit()
    return out / "r"


def test_run_directory_greedy_text_equals_the_python_api(run_dir):
    code, out, err = run_cli(run_dir, "--prompt", "def ", "-n", 20, "-t", 0)
    assert code == 0, err
    model, tok = load_run_model(run_dir)
    ids = list(generate(model, tok.encode("def "), 20, temperature=0.0))
    assert out == "def " + tok.decode(ids) + "\n"
    assert "[length] prefill 4 tokens" in err and "decode 19 tokens" in err


@pytest.mark.parametrize("command", ["generate", "quantize", "embed", "export"])
def test_commands_that_compute_take_threads(run_dir, tmp_path, command):
    """--threads N sets numba's and BLAS's threads for the command, --threads auto the auto policy; 0 and a word
    are refused in one line."""
    from qorus_jit.core.numerics import auto_threads, get_num_threads, max_threads, set_num_threads

    before = get_num_threads()
    args = {"generate": [str(run_dir), "-n", "3", "-t", "0"],
            "quantize": [str(run_dir), str(tmp_path / "q"), "--dtype", "int8"],
            "embed": [str(tmp_path / "no-folder"), "text"],
            "export": [str(run_dir), str(tmp_path / "gguf"), "--format", "gguf", "--dtype", "int8"]}[command]
    try:
        set_num_threads(2 if before > 1 else 1)
        CliRunner().invoke(main, [command, *args, "--threads", "1"])
        assert get_num_threads() == 1 and not auto_threads()
        CliRunner().invoke(main, [command, *args, "--threads", "AUTO"])
        assert get_num_threads() == max_threads() and auto_threads()
    finally:
        set_num_threads(before)
    for bad in ("0", "many"):
        res = CliRunner().invoke(main, [command, *args, "--threads", bad])
        assert res.exit_code == 2 and "--threads" in res.output and "expected 'auto' or a thread count" in res.output


def test_seeded_sampling_through_the_cli_is_reproducible(run_dir):
    a = run_cli(run_dir, "-p", "x", "-n", 15, "--seed", 3, "--top-k", 20)
    b = run_cli(run_dir, "-p", "x", "-n", 15, "--seed", 3, "--top-k", 20)
    assert a[0] == 0 and a[1] == b[1]


def test_hugging_face_folder_with_its_tokenizer_json(tmp_path):
    tok = BPETokenizer.train(["the cat sat on the mat " * 20, "a dog and a cat"], vocab_size=300)
    model = tiny_llama(tok.vocab_size)
    qorus_jit.save_pretrained(model, tmp_path)
    tok.save(tmp_path / "tokenizer.json")
    code, out, err = run_cli(tmp_path, "-p", "the cat", "-n", 12, "-t", 0)
    assert code == 0, err
    loaded = qorus_jit.load_pretrained(tmp_path)
    ids = list(generate(loaded, tok.encode("the cat"), 12, temperature=0.0))
    assert out.rstrip("\n") == "the cat" + tok.decode(ids)


def llama2c_tokenizer():
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = [" ", "o", "n", "c", "e", " o", "on", "nce", " once", "u", "p", " up", "pon", " upon"]
    return Llama2cTokenizer(pieces + words, [0.0] * 259 + [float(-i) for i in range(len(words))])


def test_llama2c_checkpoint_with_tokenizer_bin(tmp_path):
    tok = llama2c_tokenizer()
    tok.save(tmp_path / "tokenizer.bin")
    model = tiny_llama(tok.vocab_size)
    save_llama2c(model, tmp_path / "model.bin")
    code, out, err = run_cli(tmp_path / "model.bin", "--tokenizer", tmp_path / "tokenizer.bin", "-p", "once upon",
                             "-n", 10, "-t", 0)
    assert code == 0, err
    ids = [i for i in generate(model, tok.encode("once upon", bos=True), 10, temperature=0.0)]
    stop = next((k for k, i in enumerate(ids) if i in (1, 2)), len(ids))
    assert out.rstrip("\n") == "once upon" + tok.decode(ids[:stop])
    code, out, err = run_cli(tmp_path / "model.bin", "-p", "x")
    assert code == 2 and err.count("\n") == 1 and "tokenizer.bin" in err


def test_damaged_run_directories_give_one_line(run_dir, tmp_path):
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(run_dir, no_ckpt)
    shutil.rmtree(no_ckpt / "checkpoints")
    code, _, err = run_cli(no_ckpt)
    assert code == 2 and err.count("\n") == 1 and "no complete checkpoint" in err and str(no_ckpt) in err
    no_record = tmp_path / "no_record"
    shutil.copytree(run_dir, no_record)
    record = json.loads((no_record / "run.json").read_text())
    assert record["model"]["arch"] == "llama" and record["model"]["dim"] == 32
    del record["model"]
    (no_record / "run.json").write_text(json.dumps(record))
    code, _, err = run_cli(no_record)
    assert code == 2 and err.count("\n") == 1 and "no model record" in err
    (no_record / "run.json").write_text("{not json")
    code, _, err = run_cli(no_record)
    assert code == 2 and err.count("\n") == 1 and "not valid JSON" in err


def test_bad_sources_give_one_line(tmp_path):
    code, _, err = run_cli(tmp_path / "missing")
    assert code == 2 and "no such file" in err and err.count("\n") == 1
    code, _, err = run_cli(tmp_path)
    assert code == 2 and "neither a run directory" in err
    (tmp_path / "junk.bin").write_bytes(b"\x01\x02")
    code, _, err = run_cli(tmp_path / "junk.bin", "--tokenizer", "byte")
    assert code == 2 and "junk.bin" in err and "Traceback" not in err
    bert = tmp_path / "bert"
    qorus_jit.save_pretrained(Bert(BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=256,
                                              max_seq_len=16), rng=0), bert)
    ByteTokenizer().save(bert / "tokenizer.json")
    code, _, err = run_cli(bert)
    assert code == 2 and "does not generate text" in err
    code, _, err = run_cli(tmp_path / "missing", "--temperature", "-1")
    assert code == 2 and err.count("\n") == 1


# -- malformed inputs (issue 15)


def padded_folder(folder, pad=64):
    """A Hugging Face Llama of 256 + pad ids with the byte tokenizer (256 ids): the padded rows of the head
    are pairs +-100 v, so one of each pair has the largest logit at every position."""
    model = tiny_llama(256 + pad)
    head = model.parameters()["lm_head.weight"]
    v = np.random.default_rng(1).standard_normal((pad // 2, head.shape[1])).astype(np.float32)
    head[256::2], head[257::2] = 100 * v, -100 * v
    qorus_jit.save_pretrained(model, folder)
    ByteTokenizer().save(folder / "tokenizer.json")
    return model


def test_a_padded_vocabulary_never_samples_past_the_tokenizer(tmp_path):
    model = padded_folder(tmp_path)
    assert max(t for s in range(3) for t in generate(model, [97], 10, temperature=2.0, seed=s)) >= 256
    for seed in range(8):
        code, out, err = run_cli(tmp_path, "-p", "a", "-n", 24, "-t", 3, "--top-p", 1, "--seed", seed)
        assert code == 0 and "Traceback" not in err, err
        want = generate(model, [97], 24, temperature=3.0, top_p=1.0, seed=seed, vocab_limit=256)
        assert out == "a" + ByteTokenizer().decode(list(want)) + "\n"


def test_a_tokenizer_that_does_not_fit_is_refused_in_one_line(tmp_path):
    small = tmp_path / "small"
    qorus_jit.save_pretrained(tiny_llama(200), small)  # fewer ids than the byte tokenizer's 256
    ByteTokenizer().save(small / "tokenizer.json")
    code, out, err = run_cli(small, "-p", "a")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: tokenizer: expected at most the model's vocab_size of 200 ids, got a ByteTokenizer "
                          "of 256 ids")
    tok = llama2c_tokenizer()
    save_llama2c(tiny_llama(tok.vocab_size), tmp_path / "model.bin")
    ByteTokenizer().save(tmp_path / "tokenizer.json")
    for spec in (tmp_path / "tokenizer.json", "byte"):  # a tokenizer of the wrong kind for a llama2.c file
        code, out, err = run_cli(tmp_path / "model.bin", "--tokenizer", spec, "-p", "once")
        assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert "tokenizer: a llama2.c checkpoint needs llama2.c's tokenizer.bin, got ByteTokenizer" in err
    save_llama2c(tiny_llama(tok.vocab_size - 5), tmp_path / "smaller.bin")  # tokenizer.bin past the model
    tok.save(tmp_path / "tokenizer.bin")
    code, _, err = run_cli(tmp_path / "smaller.bin", "--tokenizer", tmp_path / "tokenizer.bin")
    assert code == 2 and err.count("\n") == 1 and f"vocab_size of {tok.vocab_size - 5} ids" in err


def test_non_decoding_models_are_refused_in_one_line(tmp_path):
    bert = tmp_path / "bert"
    qorus_jit.save_pretrained(Bert(BertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=256,
                                              max_seq_len=16), rng=0), bert)
    ByteTokenizer().save(bert / "tokenizer.json")
    for args in ([], ["--tokenizer", "byte"]):
        code, out, err = run_cli(bert, *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and "Bert" in err and "Traceback" not in err


def test_nan_weights_stop_with_one_line_naming_non_finite_logits(tmp_path):
    model = tiny_llama(256)
    model.parameters()["model.norm.weight"][:] = np.nan
    qorus_jit.save_pretrained(model, tmp_path)
    ByteTokenizer().save(tmp_path / "tokenizer.json")
    code, out, err = run_cli(tmp_path, "-p", "ab", "-n", 5)
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "new token 1 (position 2)" in err and "non-finite logits" in err and out == "ab\n"


@pytest.mark.parametrize("args", [["--seed", -1], ["--top-k", 0], ["-t", "nan"], ["-n", "1.5"]])
def test_bad_options_give_one_line(run_dir, args):
    code, out, err = run_cli(run_dir, "-p", "x", *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err


def test_the_speed_line_leaves_loading_and_warm_up_out(run_dir):
    code, out, err = run_cli(run_dir, "-p", "def ", "-n", 6, "-t", 0)
    assert code == 0
    last = err.splitlines()[-1]
    assert re.fullmatch(r"\[length\] prefill 4 tokens at [\d,.]+ tok/s, decode 5 tokens at [\d,.]+ tok/s "
                        r"\(not counted: loading [\d.]+ s, kernel warm-up [\d.]+ s\)", last), last
    code, out, err = run_cli(run_dir, "-p", "def ", "-n", 0)
    assert code == 0 and out == "def \n" and err.startswith("[length] no token generated (not counted: loading")
    code, out, err = run_cli(run_dir, "-p", "def ", "-n", 1, "-t", 0)
    assert re.search(r"prefill 4 tokens at [\d,.]+ tok/s \(", err) and "decode" not in err


# -- sources checked when loading (fuzz wave 1)


@pytest.mark.parametrize("field", ["dim", "vocab_size"])
def test_a_run_record_that_does_not_fit_its_checkpoint_is_refused_before_building(run_dir, tmp_path, field):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    record = json.loads((bad / "run.json").read_text())
    record["model"][field] = 2**40  # building it would allocate petabytes
    (bad / "run.json").write_text(json.dumps(record))
    with pytest.raises(SourceError, match=rf"run\.json: the model record does not fit .*model\.safetensors.*"
                                          rf"LlamaConfig\.{field}\) = {2**40} does not match the weights"):
        load_source(bad)
    code, out, err = run_cli(bad, "-p", "x")
    assert code == 2 and out == "" and err.count("\n") == 1 and "run.json" in err and field in err


def test_a_run_record_with_an_unknown_field_names_it(run_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    record = json.loads((bad / "run.json").read_text())
    record["model"]["nope"] = 1
    (bad / "run.json").write_text(json.dumps(record))
    with pytest.raises(SourceError, match=r"run\.json: model: .*nope"):
        load_source(bad)


@pytest.mark.parametrize("key, value", [("eos_token_id", "x"), ("eos_token_id", [1.5]), ("eos_token_id", {}),
                                        ("eos_token_id", [2, 300]), ("eos_token_id", True),
                                        ("bos_token_id", "x"), ("bos_token_id", 2**40), ("bos_token_id", -1)])
def test_bad_special_token_ids_in_config_json_are_named_when_loading(tmp_path, key, value):
    qorus_jit.save_pretrained(tiny_llama(256), tmp_path)
    ByteTokenizer().save(tmp_path / "tokenizer.json")
    hf = json.loads((tmp_path / "config.json").read_text())
    hf[key] = value
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(SourceError, match=rf"config\.json: {key}: expected a token id in \[0, 256\)"):
        load_source(tmp_path)


def test_good_special_token_ids_in_config_json_are_used(tmp_path):
    qorus_jit.save_pretrained(tiny_llama(256), tmp_path)
    ByteTokenizer().save(tmp_path / "tokenizer.json")
    hf = json.loads((tmp_path / "config.json").read_text())
    for eos, stop in ((7, {7}), ([7, 9], {7, 9}), (None, set()), ([], set())):
        hf.update(eos_token_id=eos, bos_token_id=5)
        (tmp_path / "config.json").write_text(json.dumps(hf))
        src = load_source(tmp_path)
        assert src.stop_ids == stop and src.bos == 5
        assert src.encode("ab").tolist() == [5, 97, 98]


@pytest.mark.parametrize("source", [None, 3, 2.5])
def test_a_source_that_is_not_a_path_is_named(source):
    with pytest.raises(TypeError, match="source: expected a path"):
        load_source(source)


def test_a_tokenizer_spec_of_the_wrong_type_is_named_once(run_dir):
    with pytest.raises(SourceError, match=r"^tokenizer: expected 'byte', a tokenizer"):
        load_source(run_dir, 3)
