"""Sentence embeddings (qorus_jit.embed) against transformers' BertModel with sentence-transformers' pooling.

Every folder is built here: a random BertModel saved by transformers, a WordPiece tokenizer built with the
tokenizers package, the sentence-transformers module files written by hand. Nothing is downloaded.
"""

import json
import shutil

import numpy as np
import pytest

import qorus_jit
from qorus_jit.infer.embeddings import SentenceEncoder, embed, embed_command
from qorus_jit.models import Llama, LlamaConfig
from tests.helpers import torch_or_skip
from tests.models.reference import saved_reference, transformers_or_skip

VOCAB = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat ran on mat and big small red blue fast slow walk play "
         "bird sing ##s ##ing ##ed ##ly . , !").split()
TEXTS = [
    "The cat sat on the mat.",
    "a dog",
    "",
    "The big red dogs walked fast, and the small blue cats played slowly!",
    "zebra",                                # unknown word: [UNK]
    "birds singing",
    "a",
    "Dogs and cats, birds and dogs.",
]
MAX_POSITIONS = 64
TOL = 1e-5
MODULES = {"Transformer": "sentence_transformers.models.Transformer",
           "Pooling": "sentence_transformers.models.Pooling",
           "Normalize": "sentence_transformers.models.Normalize",
           "Dense": "sentence_transformers.models.Dense"}


def make_tokenizer(lowercase=True):
    tk = pytest.importorskip("tokenizers")
    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = tk.Tokenizer(tk.models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = tk.normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = tk.decoders.WordPiece()
    return tok


def pooling_config(*modes, dim=32, **extra):
    keys = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
    cfg = {"word_embedding_dimension": dim, **{k: m in modes for m, k in keys.items()},
           "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    cfg.update(extra)
    return cfg


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def modules_json(*kinds, paths=None):
    paths = paths or {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    return [{"idx": i, "name": str(i), "path": paths[k], "type": MODULES[k]} for i, k in enumerate(kinds)]


class Ref:
    """The transformers BertModel of the base folder, its tokenizer, and sentence-transformers' pooling."""

    def __init__(self, torch, transformers, model, tok):
        self.torch, self.model = torch, model
        self.tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                                        cls_token="[CLS]", sep_token="[SEP]")

    def __call__(self, texts, modes=("mean",), normalize=True, max_len=MAX_POSITIONS, per_text=False):
        if per_text:  # each text alone: no padding at all
            return np.concatenate([self(texts[i:i + 1], modes, normalize, max_len) for i in range(len(texts))])
        torch = self.torch
        batch = self.tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                         return_token_type_ids=True)
        with torch.no_grad():
            h = self.model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        parts = []
        for mode in ("cls", "max", "mean", "mean_sqrt_len"):  # sentence-transformers' Pooling.forward order
            if mode not in modes:
                continue
            if mode == "cls":
                parts.append(h[:, 0])
            elif mode == "max":
                parts.append(h.masked_fill(m == 0, -1e9).max(dim=1).values)
            elif mode == "mean":
                parts.append((h * m).sum(1) / m.sum(1).clamp(min=1e-9))
            else:
                parts.append((h * m).sum(1) / m.sum(1).clamp(min=1e-9).sqrt())
        v = torch.cat(parts, dim=1)
        if normalize:
            v = torch.nn.functional.normalize(v, p=2, dim=1)
        return v.numpy()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """``(folder, ref)``: a sentence-transformers folder with mean pooling and no modules.json."""
    torch = torch_or_skip()
    transformers = transformers_or_skip()
    folder = tmp_path_factory.mktemp("st_base")
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    model = saved_reference(torch, transformers.BertModel, cfg, folder,
                            lambda n: "LayerNorm" in n or n.endswith("bias"))
    tok = make_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "1_Pooling" / "config.json", pooling_config("mean"))
    return folder, Ref(torch, transformers, model, tok)


def variant(base_folder, tmp_path, pooling=None, modules=None, sbert=None, name="model"):
    """A copy of the base folder with other module files (``pooling`` a config dict, or "delete")."""
    folder = tmp_path / name
    shutil.copytree(base_folder, folder)
    if pooling == "delete":
        shutil.rmtree(folder / "1_Pooling")
    elif pooling is not None:
        write_json(folder / "1_Pooling" / "config.json", pooling)
    if modules is not None:
        write_json(folder / "modules.json", modules)
    if sbert is not None:
        write_json(folder / "sentence_bert_config.json", sbert)
    return folder


def max_diff(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want).max())


# ------------------------------------------------------------------------------------------------ parity


def test_mean_pooling_matches_transformers_with_padding_in_batches(base):
    folder, ref = base
    enc = SentenceEncoder.load(folder)
    assert enc.pooling == ("mean",) and enc.normalize and enc.max_seq_len == MAX_POSITIONS and enc.dim == 32
    lengths = [len(ref.tok(t)["input_ids"]) for t in TEXTS]
    assert len(set(lengths)) >= 5  # the batches of 3 mix lengths: padding happens inside batches
    got = enc.encode(TEXTS, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert max_diff(got, ref(TEXTS)) < TOL
    assert max_diff(got, ref(TEXTS, per_text=True)) < TOL
    assert np.abs(got[0] - got[1]).max() > 1e-2  # the texts give different vectors


@pytest.mark.parametrize("modes", [("cls",), ("max",), ("mean_sqrt_len",), ("cls", "mean"), ("mean", "max")])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_modes_match_transformers(base, tmp_path, modes, normalize):
    folder, ref = base
    enc = SentenceEncoder.load(variant(folder, tmp_path, pooling=pooling_config(*modes)))
    assert enc.dim == 32 * len(modes)
    got = enc.encode(TEXTS, batch_size=4, normalize=normalize)
    want = ref(TEXTS, modes, normalize=normalize)
    assert max_diff(got, want) < TOL
    if not normalize:
        assert np.abs(np.linalg.norm(got, axis=1) - 1).max() > 1e-2


def test_normalize_false_and_true(base):
    folder, ref = base
    enc = SentenceEncoder.load(folder)
    raw = enc.encode(TEXTS, normalize=False)
    assert max_diff(raw, ref(TEXTS, normalize=False)) < TOL
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 1e-2
    unit = enc.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_batch_size_does_not_change_the_result(base):
    folder, ref = base
    enc = SentenceEncoder.load(folder)
    one = enc.encode(TEXTS, batch_size=1)
    for bs in (2, 3, 5, 100):
        assert max_diff(enc.encode(TEXTS, batch_size=bs), one) < 1e-6, bs
    assert max_diff(one, ref(TEXTS)) < TOL


def test_output_order_is_input_order(base):
    folder, _ = base
    enc = SentenceEncoder.load(folder)
    got = enc.encode(TEXTS, batch_size=3)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = enc.encode([TEXTS[i] for i in perm], batch_size=3)
    assert max_diff(shuffled, got[perm]) < 1e-6
    twice = enc.encode(TEXTS + TEXTS[::-1], batch_size=4)
    assert max_diff(twice, np.concatenate([got, got[::-1]])) < 1e-6
    single = enc.encode(TEXTS[3])  # one str is one text
    assert single.shape == (1, 32) and max_diff(single, got[3:4]) < 1e-6


def test_empty_list_gives_shape_0_dim(base, tmp_path):
    folder, _ = base
    for texts in ([], ()):
        out = SentenceEncoder.load(folder).encode(texts)
        assert out.shape == (0, 32) and out.dtype == np.float32
    out = SentenceEncoder.load(variant(folder, tmp_path, pooling=pooling_config("cls", "max"))).encode([])
    assert out.shape == (0, 64)


def test_truncation_to_max_seq_length(base, tmp_path):
    folder, ref = base
    long = " ".join(["the big dog ran and the small cat sat"] * 12)  # 96 words: longer than the 64 positions
    texts = [long, "a cat", long + " fast"]
    assert len(ref.tok(long)["input_ids"]) > MAX_POSITIONS
    got = SentenceEncoder.load(folder).encode(texts, batch_size=2)  # the model's positions
    assert max_diff(got, ref(texts, max_len=MAX_POSITIONS)) < TOL
    enc = SentenceEncoder.load(variant(folder, tmp_path, sbert={"max_seq_length": 6, "do_lower_case": False}))
    assert enc.max_seq_len == 6
    short = enc.encode(texts, batch_size=2)
    assert max_diff(short, ref(texts, max_len=6)) < TOL
    assert max_diff(short[0], ref(["the big dog ran"])[0]) < TOL  # [CLS] + 4 words + [SEP]
    big = SentenceEncoder.load(variant(folder, tmp_path, sbert={"max_seq_length": 512}, name="big"))
    assert big.max_seq_len == MAX_POSITIONS  # never past the model's positions
    tok_cfg = variant(folder, tmp_path, name="tok_cfg")
    write_json(tok_cfg / "tokenizer_config.json", {"model_max_length": 7})  # used when sentence_bert_config is absent
    assert SentenceEncoder.load(tok_cfg).max_seq_len == 7
    assert max_diff(SentenceEncoder.load(tok_cfg).encode(texts), ref(texts, max_len=7)) < TOL
    write_json(tok_cfg / "tokenizer_config.json", {"model_max_length": int(1e30)})  # transformers' "no limit"
    assert SentenceEncoder.load(tok_cfg).max_seq_len == MAX_POSITIONS


def test_do_lower_case(base, tmp_path):
    folder, _ = base
    cased = variant(folder, tmp_path, name="cased")
    make_tokenizer(lowercase=False).save(str(cased / "tokenizer.json"))
    enc = SentenceEncoder.load(cased)
    a, b = enc.encode(["THE CAT", "the cat"])
    assert np.abs(a - b).max() > 1e-2  # uppercase words are [UNK] to this tokenizer
    write_json(cased / "sentence_bert_config.json", {"max_seq_length": 32, "do_lower_case": True})
    a, b = SentenceEncoder.load(cased).encode(["THE CAT", "the cat"])
    np.testing.assert_array_equal(a, b)


def test_modules_json_normalize_and_subfolder_layout(base, tmp_path):
    folder, ref = base
    plain = variant(folder, tmp_path, modules=modules_json("Transformer", "Pooling"), name="plain")
    enc = SentenceEncoder.load(plain)
    assert not enc.normalize
    assert max_diff(enc.encode(TEXTS), ref(TEXTS, normalize=False)) < TOL
    assert max_diff(enc.encode(TEXTS, normalize=True), ref(TEXTS)) < TOL  # the argument overrides the folder
    normed = variant(folder, tmp_path, modules=modules_json("Transformer", "Pooling", "Normalize"), name="normed")
    (normed / "2_Normalize").mkdir()
    assert SentenceEncoder.load(normed).normalize
    assert max_diff(SentenceEncoder.load(normed).encode(TEXTS), ref(TEXTS)) < TOL

    # older layout: the transformer in 0_Transformer, modules listed in idx order but written shuffled
    old = tmp_path / "old"
    shutil.copytree(folder, old / "0_Transformer", ignore=shutil.ignore_patterns("1_Pooling"))
    shutil.copytree(folder / "1_Pooling", old / "1_Pooling")
    write_json(old / "1_Pooling" / "config.json", pooling_config("cls"))
    write_json(old / "0_Transformer" / "sentence_bert_config.json", {"max_seq_length": 8, "do_lower_case": False})
    mods = modules_json("Transformer", "Pooling", "Normalize", paths={"Transformer": "0_Transformer",
                                                                      "Pooling": "1_Pooling",
                                                                      "Normalize": "2_Normalize"})
    write_json(old / "modules.json", mods[::-1])
    enc = SentenceEncoder.load(old)
    assert enc.pooling == ("cls",) and enc.normalize and enc.max_seq_len == 8
    assert max_diff(enc.encode(TEXTS), ref(TEXTS, ("cls",), max_len=8)) < TOL


def test_no_pooling_config_means_mean_pooling(base, tmp_path):
    folder, ref = base
    enc = SentenceEncoder.load(variant(folder, tmp_path, pooling="delete"))
    assert enc.pooling == ("mean",)
    assert max_diff(enc.encode(TEXTS), ref(TEXTS)) < TOL


def test_embed_function(base):
    folder, ref = base
    from_folder = embed(folder, TEXTS, batch_size=2)
    assert max_diff(from_folder, ref(TEXTS)) < TOL
    enc = SentenceEncoder.load(str(folder))
    np.testing.assert_array_equal(embed(enc, TEXTS, batch_size=2), from_folder)
    assert max_diff(embed(enc, TEXTS, normalize=False), ref(TEXTS, normalize=False)) < TOL
    with pytest.raises(TypeError, match="SentenceEncoder or the path"):
        embed(enc.model, TEXTS)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_tokenizer_json(base, tmp_path):
    folder, _ = base
    broken = variant(folder, tmp_path)
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").write_text("\n".join(VOCAB))
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json.*vocab\.txt"):
        SentenceEncoder.load(broken)


@pytest.mark.parametrize("cfg, match", [
    (pooling_config("mean", dim=16), "word_embedding_dimension is 16"),
    (pooling_config(), "no pooling mode is enabled"),
    (pooling_config("mean", pooling_mode_cls_token="yes"), "pooling_mode_cls_token: expected true or false"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_pooling_config(base, tmp_path, cfg, match):
    folder, _ = base
    with pytest.raises(ValueError, match=match):
        SentenceEncoder.load(variant(folder, tmp_path, pooling=cfg))


def test_pooling_config_not_json(base, tmp_path):
    folder, _ = base
    broken = variant(folder, tmp_path)
    (broken / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SentenceEncoder.load(broken)


@pytest.mark.parametrize("key, what", [("pooling_mode_weightedmean_tokens", "weighted-mean"),
                                       ("pooling_mode_lasttoken", "last-token"),
                                       ("pooling_mode_median_tokens", "pooling_mode_median_tokens")])
def test_unsupported_pooling_mode(base, tmp_path, key, what):
    folder, _ = base
    with pytest.raises(ValueError, match=f"{what} pooling is not supported"):
        SentenceEncoder.load(variant(folder, tmp_path, pooling=pooling_config(**{key: True})))


def test_not_a_bert_folder(base, tmp_path):
    folder, _ = base
    llama = tmp_path / "llama"
    qorus_jit.save_pretrained(Llama(LlamaConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=len(VOCAB),
                                                max_seq_len=32), rng=0), llama)
    shutil.copy(folder / "tokenizer.json", llama / "tokenizer.json")
    with pytest.raises(ValueError, match=r"Llama \(LlamaForCausalLM\), not a BERT encoder"):
        SentenceEncoder.load(llama)
    with pytest.raises(ValueError, match="not a BERT encoder"):
        embed(llama, ["a cat"])
    cfg = json.loads((folder / "config.json").read_text())
    other = variant(folder, tmp_path, name="roberta")
    write_json(other / "config.json", {**cfg, "architectures": ["RobertaModel"], "model_type": "roberta"})
    with pytest.raises(ValueError, match="unsupported architecture RobertaModel.*need a BertModel"):
        SentenceEncoder.load(other)


@pytest.mark.parametrize("mods, error, match", [
    (modules_json("Transformer", "Pooling", "Dense"), ValueError, "Dense.*is not supported"),
    (modules_json("Pooling", "Transformer"), ValueError, "in that order"),
    (modules_json("Transformer", "Pooling", paths={"Transformer": "..", "Pooling": "1_Pooling"}), ValueError,
     "leads out of the folder"),
    (modules_json("Transformer", "Pooling", paths={"Transformer": "", "Pooling": "3_Pool"}), FileNotFoundError,
     "3_Pool"),
    ({"modules": []}, ValueError, "JSON list"),
])
def test_bad_modules_json(base, tmp_path, mods, error, match):
    folder, _ = base
    with pytest.raises(error, match=match):
        SentenceEncoder.load(variant(folder, tmp_path, modules=mods))


@pytest.mark.parametrize("sbert, match", [({"max_seq_length": 0}, "max_seq_length: expected a positive int"),
                                          ({"max_seq_length": 2}, "leaves no room for text"),
                                          ({"do_lower_case": "no"}, "do_lower_case")])
def test_bad_sentence_bert_config(base, tmp_path, sbert, match):
    folder, _ = base
    with pytest.raises(ValueError, match=match):
        SentenceEncoder.load(variant(folder, tmp_path, sbert=sbert))


def test_bad_arguments(base, tmp_path):
    folder, _ = base
    with pytest.raises(FileNotFoundError, match="not found"):
        SentenceEncoder.load(tmp_path / "nowhere")
    enc = SentenceEncoder.load(folder)
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str"):
        enc.encode(["a", 3])
    with pytest.raises(TypeError, match="texts"):
        enc.encode(5)
    with pytest.raises(ValueError, match=r"^texts\[1\]: expected valid Unicode, got a lone surrogate at index 1"):
        enc.encode(["a", "a\ud800"])
    with pytest.raises(ValueError, match=r"^texts: expected valid Unicode, got a lone surrogate at index 0"):
        embed(enc, "\udfff")
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match="normalize"):
        enc.encode(["a"], normalize="yes")
    with pytest.raises(ValueError, match="pooling: mode 'median'"):
        SentenceEncoder(enc.model, enc.tokenizer, pooling="median")
    with pytest.raises(ValueError, match="at most the model's 64 positions"):
        SentenceEncoder(enc.model, enc.tokenizer, max_seq_len=65)


# ------------------------------------------------------------------------------------------------ command


def test_embed_command_writes_npy_and_json(base, tmp_path, capsys):
    folder, ref = base
    texts = TEXTS[:4]
    want = SentenceEncoder.load(folder).encode(texts)
    npy, js = tmp_path / "out" / "emb.npy", tmp_path / "out" / "emb.json"
    npy.parent.mkdir()
    got = embed_command(folder, texts, out=npy)
    np.testing.assert_array_equal(got, want)
    loaded = np.load(npy, allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, want)
    embed_command(str(folder), tuple(texts), out=str(js))
    rows = json.loads(js.read_text())
    np.testing.assert_array_equal(np.asarray(rows, np.float32), want)  # exact float32 values
    assert sorted(p.name for p in npy.parent.iterdir()) == ["emb.json", "emb.npy"]  # no temporary files left
    captured = capsys.readouterr()
    assert captured.out == "" and "wrote 4 embeddings of dimension 32" in captured.err
    assert max_diff(want, ref(texts)) < TOL


def test_embed_command_prints_json(base, capsys):
    folder, _ = base
    want = SentenceEncoder.load(folder).encode(TEXTS[:3])
    embed_command(folder, TEXTS[:3])
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert isinstance(rows, list) and len(rows) == 3 and all(len(r) == 32 for r in rows)
    np.testing.assert_allclose(np.asarray(rows), want, rtol=1e-6, atol=1e-9)
    assert max(len(x) for x in out.replace("[", "").replace("]", "").split(",")) <= 16  # rounded, not float64 noise


def test_embed_command_rejects_bad_outputs_before_loading(tmp_path):
    missing_model = tmp_path / "no_model"  # never read: the output is checked first
    for name in ("emb.txt", "emb", "emb.npz"):
        with pytest.raises(ValueError, match=r"ending in \.npy or \.json"):
            embed_command(missing_model, ["a"], out=tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        embed_command(missing_model, ["a"], out=tmp_path / "no_dir" / "emb.npy")
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(IsADirectoryError):
        embed_command(missing_model, ["a"], out=tmp_path / "d.npy")
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        embed_command(missing_model, ["a"], out=tmp_path / "emb.npy")
    assert not (tmp_path / "emb.npy").exists()


def test_qorus_embed_command_line(base, tmp_path):
    from click.testing import CliRunner

    from qorus_jit.cli import main

    folder, ref = base
    result = CliRunner().invoke(main, ["embed", str(folder), *TEXTS[:2]])
    assert result.exit_code == 0, result.stderr
    assert max_diff(np.asarray(json.loads(result.stdout), np.float32), ref(TEXTS[:2])) < TOL
    result = CliRunner().invoke(main, ["embed", str(folder), "a", "--out", str(tmp_path / "e.txt")])
    assert result.exit_code == 2 and result.stderr.startswith("error: out:") and result.stderr.count("\n") == 1
