"""``qorus train --init SOURCE``: fine-tuning starts from a Hugging Face folder made by transformers (with a
tokenizer.json made by the ``tokenizers`` package), a llama2.c file with its tokenizer.bin, or a run folder;
fully or with LoRA adapters. Checked: the run starts from the source's weights (its first loss equals
transformers' on the same batch), resumes bit-exactly, writes adapters that ``peft`` loads with equal logits,
loads back in one call, and refuses bad input in one line with exit code 2, writing nothing."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.formats.checkpoint import latest_checkpoint, load_checkpoint
from qorus_jit.models import Llama, LlamaConfig
from qorus_jit.models.llama import save_llama2c
from qorus_jit.models.sources import load_source
from qorus_jit.tokenizers import Llama2cTokenizer
from qorus_jit.train.plot import read_metrics
from tests.test_hf import transformers_or_skip

PAIRS = [(f"Q: what is {a} plus {b}?\nA:", f" {a + b}.") for a in range(12) for b in range(3)]
SMALL = ["--seq-len", "32", "--batch-size", "2", "--eval-batches", "2", "--val-fraction", "0.2", "--warmup-steps",
         "1", "--lr", "1e-3", "--sample-tokens", "0", "--no-progress"]


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_pairs(path):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS), encoding="utf-8")
    return path


def hf_tokenizer(folder, vocab_size, extra=0):
    """A byte-level BPE tokenizer.json trained by the ``tokenizers`` package on the pairs' text (with ``extra``
    added tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([p + c for p, c in PAIRS] * 3, trainer)
    tok.add_tokens([f"<extra_{i}>" for i in range(extra)])
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def hf_folder(request, tmp_path_factory):
    """A random tiny transformers model of ``arch`` saved with its tokenizer.json (vocab padded past it)."""
    transformers = transformers_or_skip()
    import torch

    folder = tmp_path_factory.mktemp(f"hf-{request.param}")
    n = hf_tokenizer(folder, 300)
    torch.manual_seed(0)
    if request.param == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=n + 8,
                                          max_position_embeddings=64, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=n + 8, n_positions=64,
                                         bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    return request.param, folder


def train(tmp_path, *args, name="ft"):
    res = invoke(["train", *SMALL, "--data", write_pairs(tmp_path / "pairs.jsonl"), "--out-dir", tmp_path / "runs",
                  "--name", name, *args])
    assert res.exit_code == 0, res.output
    return tmp_path / "runs" / name


def first_loss_in_transformers(folder, run_dir):
    """The loss transformers computes for the run's first training batch, with the source's weights."""
    transformers = transformers_or_skip()
    import torch

    from qorus_jit.data import InstructDataset
    from qorus_jit.train.run import read_run_config

    cfg = read_run_config(run_dir)
    src = load_source(run_dir)
    ds = InstructDataset.from_jsonl(cfg.data, src.tokenizer, cfg.seq_len, cfg.val_fraction, cfg.seed)
    x, y = ds.train_batch(cfg.batch_size)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = hf(torch.from_numpy(x.astype(np.int64))).logits
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       torch.from_numpy(y.astype(np.int64)).reshape(-1),
                                                       ignore_index=-100))


@pytest.mark.parametrize("lora", [False, True, "dropout"])
def test_hf_init_starts_from_the_source_and_resumes_exactly(hf_folder, tmp_path, lora):
    arch, folder = hf_folder
    extra = ["--lora-rank", "4", "--lora-alpha", "8"] if lora else []
    extra += ["--lora-dropout", "0.3"] if lora == "dropout" else []
    straight = train(tmp_path, "--init", folder, "--steps", "4", "--ckpt-every", "2", "--eval-every", "2", *extra,
                     name="straight")
    record = json.loads((straight / "run.json").read_text())
    hf = json.loads((folder / "config.json").read_text())
    assert record["model"]["arch"] == arch and record["model"]["vocab_size"] == hf["vocab_size"]
    assert record["init"] == {"source": str(folder.resolve()), "kind": "hf"}
    assert ("lora" in record) == bool(lora)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert json.loads((straight / "tokenizer.json").read_text()) == tokenizer
    rows = [r for r in read_metrics(straight) if "loss" in r]
    # step 1's loss is computed before any update: the source's weights, as transformers computes it
    assert rows[0]["loss"] == pytest.approx(first_loss_in_transformers(folder, straight), rel=1e-4)

    split = train(tmp_path, "--init", folder, "--steps", "2", "--ckpt-every", "2", "--eval-every", "2", *extra,
                  name="split")
    res = invoke(["train", "--resume", split, "--steps", "4", "--no-progress", "--sample-tokens", "0"])
    assert res.exit_code == 0, res.output
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(split))
    assert a.step == b.step == 4 and a.model.keys() == b.model.keys()
    for k in a.model:
        np.testing.assert_array_equal(a.model[k], b.model[k], err_msg=k)
    assert [r["loss"] for r in read_metrics(split) if "loss" in r] == [r["loss"] for r in rows]
    if lora:  # the base stays as the source had it; only the adapters and their optimizer state change
        assert any(".lora_A." in k for k in a.model)
        assert all(".lora_" in k for k in a.optimizer)


def test_lora_adapters_load_in_peft_with_equal_logits(hf_folder, tmp_path):
    transformers = transformers_or_skip()
    peft = pytest.importorskip("peft")
    import torch

    arch, folder = hf_folder
    targets = "q,v,down" if arch == "llama" else "qkv,up"
    run = train(tmp_path, "--init", folder, "--steps", "3", "--eval-every", "3", "--lora-rank", "4",
                "--lora-targets", targets, "--lr", "1e-2")
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(folder.resolve())
    src = load_source(run)  # the finished run, in one call: the model with its adapters, and its tokenizer
    ids = src.encode("Q: what is 3 plus 2?\nA: 5.")[None].astype(np.int64)
    got = src.model.forward(ids)[0]
    base = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        plain = base(torch.from_numpy(ids)).logits[0].numpy()
        want = peft.PeftModel.from_pretrained(base, run / "adapter").eval()(torch.from_numpy(ids)).logits[0].numpy()
    assert np.abs(want - plain).max() > 1e-3  # the adapters trained away from zero
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_llama2c_and_run_folder_sources(tmp_path):
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok = Llama2cTokenizer(pieces, [0.0] * len(pieces))
    tok.save(tmp_path / "tokenizer.bin")
    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=tok.vocab_size, max_seq_len=64,
                         norm_eps=1e-5, tie_embeddings=True)
    save_llama2c(Llama(config, rng=0), tmp_path / "model.bin")
    res = invoke(["train", *SMALL, "--init", tmp_path / "model.bin", "--out-dir", tmp_path / "runs", "--name", "c"])
    assert res.exit_code == 2 and "tokenizer.bin" in res.output and res.output.count("\n") == 1
    first = train(tmp_path, "--init", tmp_path / "model.bin", "--tokenizer", tmp_path / "tokenizer.bin", "--steps",
                  "2", "--eval-every", "2", name="c")
    assert (first / "tokenizer.bin").is_file()
    assert json.loads((first / "run.json").read_text())["init"]["kind"] == "llama2c"
    second = train(tmp_path, "--init", first, "--steps", "2", "--eval-every", "2", "--lora-rank", "2", name="d")
    trained = load_checkpoint(latest_checkpoint(first)).model
    start = load_checkpoint(latest_checkpoint(second)).model
    for k, v in trained.items():  # the frozen base is the first run's trained weights
        np.testing.assert_array_equal(start[k], v, err_msg=k)


def refused(tmp_path, *args):
    out = tmp_path / "runs"
    res = invoke(["train", *SMALL, "--out-dir", out, "--name", "bad", *args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert not out.exists() or not any(out.iterdir())
    return res.output


def test_bad_input_is_one_line_and_writes_nothing(hf_folder, tmp_path):
    arch, folder = hf_folder
    data = ["--data", write_pairs(tmp_path / "pairs.jsonl")]
    (tmp_path / "notes.txt").write_text("not a model\n")
    assert "init: " in refused(tmp_path, "--init", tmp_path / "notes.txt", *data)
    assert "is not a model" in refused(tmp_path, "--init", tmp_path / "notes.txt", *data)
    assert "init: " in refused(tmp_path, "--init", tmp_path / "missing", *data)
    assert "dim: the model of --init" in refused(tmp_path, "--init", folder, "--dim", "64", *data)
    other = "gpt2" if arch == "llama" else "llama"
    assert "arch: the model of --init" in refused(tmp_path, "--init", folder, "--arch", other, *data)
    assert "seq_len: " in refused(tmp_path, "--init", folder, "--seq-len", "128", *data)
    assert "lora_targets: unknown 'zz'" in refused(tmp_path, "--init", folder, "--lora-rank", "2",
                                                   "--lora-targets", "o,zz", *data)
    assert "lora_rank: expected 1 <= rank <= 32" in refused(tmp_path, "--init", folder, "--lora-rank", "33", *data)
    assert "lora_targets: applies to LoRA" in refused(tmp_path, "--init", folder, "--lora-targets", "o", *data)
    big = tmp_path / "big"
    big.mkdir()
    hf_tokenizer(big, 300, extra=20)  # more ids than the model's 8 padded ones
    assert "tokenizer: expected at most the model's vocab_size" in refused(tmp_path, "--init", folder,
                                                                           "--tokenizer", big, *data)
    lines = tmp_path / "no-completion.jsonl"
    lines.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only a prompt"}\n')
    assert ":2" in refused(tmp_path, "--init", folder, "--data", lines) or "line 2" in refused(
        tmp_path, "--init", folder, "--data", lines)


def test_bert_is_no_source_to_fine_tune(tmp_path):
    transformers = transformers_or_skip()
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert", safe_serialization=True)
    assert "does not generate text" in refused(tmp_path, "--init", tmp_path / "bert")


def test_quantized_source_is_refused(tmp_path):
    """A folder written by qorus quantize holds weights that do not train: one line, nothing written."""
    from qorus_jit.models import save_pretrained
    from qorus_jit.models.quantize import quantize_model, save_quantized
    from qorus_jit.tokenizers import ByteTokenizer

    model = Llama(LlamaConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=256, max_seq_len=64), rng=0)
    save_pretrained(model, tmp_path / "fp32", tokenizer=ByteTokenizer())
    quantize_model(model, "int8")
    save_quantized(model, tmp_path / "int8", tokenizer=ByteTokenizer())
    assert "quantized weights, which do not train" in refused(tmp_path, "--init", tmp_path / "int8")
    train(tmp_path, "--init", tmp_path / "fp32", "--steps", "2", "--eval-every", "2", "--val-fraction", "0.3",
          name="fp32-ok")
