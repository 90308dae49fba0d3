"""Fuzz cases of the ``qorus`` command: ``train``, ``generate``, ``embed``, ``plot``, ``bench --list`` and
``info`` with bad options, values and files.

A bad call must exit with code 2 (1 for a failure at run time) and write exactly one line to stderr,
``error: ...``, naming the option or the file, with no traceback; a valid one exits 0. Most cases run the
command through click's CliRunner inside the worker (a subprocess already); a few run ``python -m
qorus_jit.cli`` in a process of their own, as a user does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fuzz import fixtures
from tests.fuzz.harness import Case, HarnessError, names_in
from tests.fuzz.mutate import case_dir, damage, edit_json, file_damages, nested_json

FIX = "qorus_jit/cli.py"


def _invoke(args):
    from click.testing import CliRunner

    from qorus_jit.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args])
    exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    return r.exit_code, r.stdout, r.stderr, exc


def _subprocess(args):
    r = subprocess.run([sys.executable, "-m", "qorus_jit.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    exc = "Traceback" if "Traceback (most recent call last)" in r.stderr else None
    return r.returncode, r.stdout, r.stderr, exc


def _verdict(names, codes=(2,), valid=None):
    """The check of a command's (code, stdout, stderr, exception): a bad call's one-line error naming one of
    ``names``; a valid call (``codes`` (0,)) exits 0 and passes ``valid(stdout)``."""
    def check(res):
        code, out, err, exc = res
        if exc is not None:
            name = type(exc).__name__ if not isinstance(exc, str) else "traceback"
            return f"exception:{name}", f"{exc}" if not isinstance(exc, str) else err[-300:]
        if "Traceback (most recent call last)" in err:
            return "exception:traceback", err[-300:]
        if codes == (0,):
            if code != 0:
                return "refused", f"exit code {code}: {err.strip()[-300:]}"
            return valid(out) if valid else None
        if code == 0 and 0 in codes:  # either way: a valid call, or a one-line error
            return valid(out) if valid else None
        if code == 0:
            return "accepted", f"exit code 0; stdout {out[:120]!r}; stderr {err[-160:]!r}"
        if code not in codes:
            return "cli-exit", f"exit code {code} (expected {' or '.join(map(str, codes))}): {err.strip()[-200:]}"
        lines = [x for x in err.splitlines() if x.strip()]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return "cli-format", f"stderr is not one 'error: ...' line: {err.strip()[:300]!r}"
        if names != ("*",) and not names_in(lines[0], names):
            return "unnamed", f"{lines[0]} (should name one of {', '.join(map(repr, names))})"
        return None
    return check


def _case(cid, args, names, codes=(2,), prepare=None, valid=None, runner=_invoke):
    """``args`` may hold callables of the case folder (paths made by ``prepare(folder)``; a list returned is
    spliced in)."""
    def call():
        try:
            d = case_dir(cid)
            if prepare:
                prepare(d)
            argv = []
            for a in args:
                v = a(d) if callable(a) else a
                argv.extend(v if isinstance(v, list) else [v])
        except Exception as e:
            raise HarnessError(f"preparing: {type(e).__name__}: {e}") from e
        return runner(argv)
    return Case(cid, call, "ok", (), _verdict(tuple(names), codes, valid), fix=FIX)


def _copy(name):
    """An argument: a fresh copy of fixture ``name`` in the case folder."""
    def arg(d):
        target = d / name
        if not target.exists():
            fixtures.copy(name, target)
        return target
    return arg


def _in(name, rel):
    """An argument: the path ``rel`` inside the copy of fixture ``name``."""
    return lambda d: _copy(name)(d) / rel


def _damaged(name, rel, fn):
    """A preparation: copy fixture ``name`` and damage its file ``rel``."""
    def prepare(d):
        damage(_copy(name)(d) / rel, fn)
    return prepare


def _write(rel, data: bytes):
    def prepare(d):
        (d / rel).write_bytes(data)
    return prepare


# ---------------------------------------------------------------------------------------------- generate


def _generate_cases():
    out = []
    hf = _copy("hf_llama")
    for label, extra, names in (
            ("n-negative", ["-n", "-1"], ("--max-new-tokens", "-n")),
            ("n-str", ["-n", "abc"], ("--max-new-tokens", "-n")),
            ("t-nan", ["-t", "nan"], ("--temperature", "-t", "temperature")),
            ("t-negative", ["-t", "-1"], ("--temperature", "-t")),
            ("t-inf", ["-t", "inf"], ("--temperature", "-t", "temperature")),
            ("top-k-zero", ["--top-k", "0"], ("--top-k",)),
            ("top-k-str", ["--top-k", "x"], ("--top-k",)),
            ("top-p-zero", ["--top-p", "0"], ("--top-p",)),
            ("top-p-above-1", ["--top-p", "1.5"], ("--top-p",)),
            ("top-p-nan", ["--top-p", "nan"], ("--top-p", "top_p")),
            ("seed-str", ["--seed", "abc"], ("--seed",)),
            ("seed-negative", ["--seed", "-1"], ("--seed", "seed")),
            ("tokenizer-missing", ["--tokenizer", "/nonexistent/tok.json"], ("--tokenizer", "tokenizer",
                                                                             "/nonexistent/tok.json")),
            ("unknown-option", ["--nope"], ("--nope",))):
        out.append(_case(f"cli/generate/{label}", ["generate", hf, "-p", "ab", *extra], names))
    out.append(_case("cli/generate/n-huge", ["generate", hf, "-p", "ab", "-n", "99999999999999999999999"],
                     ("--max-new-tokens", "-n"), codes=(2,)))  # beyond int64: refused (the window slides on)
    out.append(_case("cli/generate/n-huge-valid-seed", ["generate", hf, "-p", "ab", "-n", "2", "--seed",
                                                        "99999999999999999999999"], (), codes=(0,)))
    out.append(_case("cli/generate/valid", ["generate", hf, "-p", "ab", "-n", "3", "-t", "0"], (), codes=(0,),
                     valid=lambda o: None if o.startswith("ab") else f"stdout {o!r}"))
    out.append(_case("cli/generate/n-zero", ["generate", hf, "-p", "ab", "-n", "0"], (), codes=(0,)))
    out.append(_case("cli/generate/source-missing", ["generate", "/nonexistent/model"],
                     ("/nonexistent/model", "source", "SOURCE")))
    out.append(_case("cli/generate/source-empty-folder", ["generate", lambda d: d], ("source", "run.json",
                                                                                    "config.json")))
    out.append(_case("cli/generate/llama2c-without-tokenizer", ["generate", _in("l2c", "v0.bin")],
                     ("--tokenizer", "tokenizer")))
    out.append(_case("cli/generate/llama2c-valid", ["generate", _in("l2c", "v0.bin"), "--tokenizer",
                                                    _in("l2c", "tokenizer.bin"), "-n", "3", "-t", "0"], (),
                     codes=(0,)))
    out.append(_case("cli/generate/bert", ["generate", _copy("hf_bert")], ("source", "Bert", "hf_bert")))
    out.append(_case("cli/generate/source-is-a-text-file", ["generate", _in("tokenizers", "corpus.txt")],
                     ("corpus.txt", "source")))
    for label, fn in list(file_damages(True).items())[1:]:
        out.append(_case(f"cli/generate/config.json/{label}", ["generate", _copy("hf_llama"), "-n", "1"],
                         ("config.json",), prepare=_damaged("hf_llama", "config.json", fn)))
        out.append(_case(f"cli/generate/run.json/{label}", ["generate", _in("run", "r"), "-n", "1"],
                         ("run.json",), prepare=_damaged("run", "r/run.json", fn)))
        out.append(_case(f"cli/generate/tokenizer.json/{label}", ["generate", _copy("hf_llama"), "-n", "1"],
                         ("tokenizer.json",), prepare=_damaged("hf_llama", "tokenizer.json", fn)))
    for label, fn in file_damages(False).items():
        if label == "missing":
            continue
        out.append(_case(f"cli/generate/model.safetensors/{label}", ["generate", _copy("hf_llama"), "-n", "1"],
                         ("model.safetensors",), prepare=_damaged("hf_llama", "model.safetensors", fn)))
        out.append(_case(f"cli/generate/tokenizer.bin/{label}",
                         ["generate", _in("l2c", "v0.bin"), "--tokenizer", _in("l2c", "tokenizer.bin"), "-n", "1"],
                         ("tokenizer.bin",), prepare=_damaged("l2c", "tokenizer.bin", fn)))
        out.append(_case(f"cli/generate/v0.bin/{label}",
                         ["generate", _in("l2c", "v0.bin"), "--tokenizer", _in("l2c", "tokenizer.bin"), "-n", "1"],
                         ("v0.bin",), prepare=_damaged("l2c", "v0.bin", fn)))
    return out


# ------------------------------------------------------------------------------------------------- embed


def _embed_cases():
    st = _copy("st_bert")

    def rows(o):
        try:
            v = json.loads(o)
        except ValueError:
            return f"stdout is not JSON: {o[:100]!r}"
        return None if len(v) == 1 and len(v[0]) == 16 else f"got {len(v)} rows"

    out = [
        _case("cli/embed/valid", ["embed", st, "a cat"], (), codes=(0,), valid=rows),
        _case("cli/embed/folder-missing", ["embed", "/nonexistent/st", "a"], ("/nonexistent/st", "folder",
                                                                              "FOLDER")),
        _case("cli/embed/no-texts", ["embed", st], ("TEXTS", "texts")),
        _case("cli/embed/out-suffix", ["embed", st, "a", "--out", lambda d: d / "x.txt"], ("--out", "x.txt", "out")),
        _case("cli/embed/out-folder", ["embed", st, "a", "--out", lambda d: d], ("--out", "out")),
        _case("cli/embed/out-folder-npy", ["embed", st, "a", "--out", lambda d: _mkdir(d / "x.npy")],
              ("--out", "out", "x.npy")),
        _case("cli/embed/out-missing-folder", ["embed", st, "a", "--out", lambda d: d / "nope" / "x.npy"],
              ("--out", "out", "nope")),
        _case("cli/embed/a-llama", ["embed", _copy("hf_llama"), "a"], ("hf_llama", "folder", "config.json",
                                                                      "Llama")),
    ]
    for target in ("modules.json", "1_Pooling/config.json", "tokenizer.json", "config.json"):
        for label in ("garbage", "nested", "invalid-utf8", "json-null"):
            out.append(_case(f"cli/embed/{target}/{label}", ["embed", _copy("st_bert"), "a"],
                             (Path(target).name, target), prepare=_damaged("st_bert", target,
                                                                           file_damages(True)[label])))
    return out


def _mkdir(p):
    p.mkdir()
    return p


# -------------------------------------------------------------------------------------------------- plot


def _plot_cases():
    run = _in("run", "r")
    out = [
        _case("cli/plot/valid", ["plot", run, "--out", lambda d: d / "c.png"], (), codes=(0,)),
        _case("cli/plot/run-missing", ["plot", "/nonexistent/run"], ("/nonexistent/run", "RUN_DIR")),
        _case("cli/plot/run-is-a-file", ["plot", _in("tokenizers", "corpus.txt")], ("corpus.txt", "RUN_DIR")),
        _case("cli/plot/out-folder", ["plot", run, "--out", lambda d: d], ("--out",)),
        _case("cli/plot/out-missing-folder", ["plot", run, "--out", lambda d: d / "nope" / "c.png"],
              ("--out", "/nope/c.png")),
        _case("cli/plot/no-metrics", ["plot", lambda d: d], ("metrics.jsonl",)),
    ]
    for label in ("garbage", "empty", "invalid-utf8", "nested", "json-null"):
        # damaged lines are skipped by design: a plot of the rows left, or an error when none is left
        out.append(_case(f"cli/plot/metrics.jsonl/{label}", ["plot", run], ("metrics.jsonl",), codes=(0, 2),
                         prepare=_damaged("run", "r/metrics.jsonl", file_damages(True)[label])))
    return out


# ------------------------------------------------------------------------------------------------- train


def _tiny(d):
    return ["--steps", "2", "--dim", "16", "--n-heads", "2", "--n-layers", "1", "--hidden-dim", "32", "--seq-len",
            "16", "--batch-size", "2", "--sample-tokens", "0", "--eval-every", "0", "--ckpt-every", "0",
            "--no-progress", "--data", str(fixtures.get("tokenizers") / "corpus.txt"), "--out-dir", str(d / "runs")]


def _train_case(cid, extra, names, config=None, prepare=None, codes=(2,)):
    """``qorus train [CONFIG] <tiny settings> EXTRA`` (the last of a repeated option wins)."""
    return _case(cid, ["train", *([config] if config is not None else []), _tiny, *extra], names, codes=codes,
                 prepare=prepare)


def _train_cases():
    out = []
    for label, extra, names in (
            ("steps-negative", ["--steps", "-1"], ("--steps", "steps")),
            ("steps-str", ["--steps", "abc"], ("--steps",)),
            ("steps-fraction", ["--steps", "1.5"], ("--steps",)),
            ("lr-nan", ["--lr", "nan"], ("--lr", "lr")),
            ("lr-negative", ["--lr", "-1"], ("--lr", "lr")),
            ("lr-inf", ["--lr", "inf"], ("--lr", "lr")),
            ("lr-str", ["--lr", "abc"], ("--lr",)),
            ("dim-zero", ["--dim", "0"], ("--dim", "dim")),
            ("dim-not-multiple", ["--dim", "15"], ("--dim", "dim", "--n-heads", "n_heads")),
            ("dim-huge", ["--dim", "99999999"], ("--dim", "dim")),
            ("batch-zero", ["--batch-size", "0"], ("--batch-size", "batch_size")),
            ("arch-nope", ["--arch", "nope"], ("--arch",)),
            ("optimizer-nope", ["--optimizer", "nope"], ("--optimizer",)),
            ("data-missing", ["--data", "/nonexistent/corpus.txt"], ("--data", "data", "/nonexistent/corpus.txt")),
            ("tokenizer-missing", ["--tokenizer", "/nonexistent/tok.json"], ("--tokenizer", "tokenizer",
                                                                             "/nonexistent/tok.json")),
            ("threads-negative", ["--threads", "-1"], ("--threads", "threads")),
            ("warmup-negative", ["--warmup-steps", "-5"], ("--warmup-steps", "warmup_steps")),
            ("val-fraction-above-1", ["--val-fraction", "1.5"], ("--val-fraction", "val_fraction")),
            ("seq-len-longer-than-data", ["--seq-len", "100000"], ("--seq-len", "seq_len", "data", "corpus.txt")),
            ("beta1-one", ["--beta1", "1"], ("--beta1", "beta1")),
            ("clip-negative", ["--clip", "-1"], ("--clip", "clip")),
            ("unknown-option", ["--nope", "1"], ("--nope",)),
            ("out-dir-a-file", ["--out-dir", str(Path(__file__))], ("--out-dir", "out_dir", "cases_cli.py")),
            ("name-traversal", ["--name", "../../x"], ("--name", "name"))):
        out.append(_train_case(f"cli/train/{label}", extra, names))
    for label, data in (("invalid-utf8", b"\xff\xfe\xfa abc" * 100), ("empty", b"")):
        out.append(_train_case(f"cli/train/data-{label}", ["--data", lambda d: d / "bad.txt"],
                               ("--data", "data", "bad.txt"), prepare=_write("bad.txt", data)))
    out.append(_train_case("cli/train/tokenizer-garbage", ["--tokenizer", lambda d: d / "tok.json"],
                           ("--tokenizer", "tokenizer", "tok.json"), prepare=_write("tok.json", b"\x00garbage")))
    for label, data, names in (("invalid-utf8", b"\xff\xfe steps = 2", ("train.toml", "CONFIG")),
                               ("garbage", b"=== x ===", ("train.toml", "CONFIG")),
                               ("nested", b"a = " + nested_json(50_000) + b"\n", ("train.toml", "CONFIG")),
                               ("unknown-key", b"nope = 1\n", ("nope", "train.toml")),
                               ("warmup-str", b'warmup_steps = "x"\n', ("warmup_steps", "train.toml")),
                               ("lr-nan", b"lr = nan\n", ("lr", "train.toml")),
                               ("table", b"[model]\ndim = 16\n", ("model", "train.toml"))):
        out.append(_train_case(f"cli/train/config-{label}", [], names, config=lambda d: d / "train.toml",
                               prepare=_write("train.toml", data)))
    out.append(_train_case("cli/train/config-missing", [], ("CONFIG", "/nonexistent/train.toml"),
                           config="/nonexistent/train.toml"))
    out.append(_case("cli/train/resume-missing", ["train", "--resume", "/nonexistent/run"],
                     ("--resume", "/nonexistent/run")))
    out.append(_case("cli/train/resume-with-config", ["train", lambda d: fixtures.get("toml") / "train.toml",
                                                      "--resume", _in("run", "r")], ("CONFIG", "--resume")))
    out.append(_case("cli/train/resume-finished", ["train", "--resume", _in("run", "r")], ("--steps", "--resume")))
    out.append(_case("cli/train/resume-model-change", ["train", "--resume", _in("run", "r"), "--steps", "4",
                                                       "--dim", "32"], ("--dim", "dim")))
    for label in ("garbage", "nested", "invalid-utf8", "json-null"):
        out.append(_case(f"cli/train/resume-run.json-{label}", ["train", "--resume", _in("run", "r"), "--steps", "4"],
                         ("run.json", "--resume"), prepare=_damaged("run", "r/run.json", file_damages(True)[label])))
    out.append(_case("cli/train/resume-state.json-garbage", ["train", "--resume", _in("run", "r"), "--steps", "4"],
                     ("state.json", "checkpoint"), codes=(1, 2),
                     prepare=_damaged("run", "r/checkpoints/step_0000002/state.json", file_damages(True)["garbage"])))

    def bad_field(d):
        edit_json(_copy("run")(d) / "r" / "run.json", ("config", "lr"), "x")
    out.append(_case("cli/train/resume-run.json-lr-str", ["train", "--resume", _in("run", "r"), "--steps", "4"],
                     ("lr", "run.json"), prepare=bad_field))
    return out


# ------------------------------------------------------------------------------------------- fine-tuning


def _ft(d):
    """``qorus train`` settings for a tiny fine-tuning run: the model's sizes come from ``--init``."""
    return ["--steps", "2", "--seq-len", "16", "--batch-size", "2", "--sample-tokens", "0", "--eval-every", "0",
            "--ckpt-every", "0", "--no-progress", "--data", str(fixtures.get("tokenizers") / "corpus.txt"),
            "--out-dir", str(d / "runs")]


def _finetune_cases():
    out = []
    hf = _copy("hf_llama")
    for label, extra, names in (
            ("lora-rank-negative", ["--lora-rank", "-1"], ("--lora-rank", "lora_rank")),
            ("lora-rank-huge", ["--lora-rank", "99999"], ("--lora-rank", "lora_rank")),
            ("lora-alpha-zero", ["--lora-rank", "2", "--lora-alpha", "0"], ("--lora-alpha", "lora_alpha")),
            ("lora-alpha-nan", ["--lora-rank", "2", "--lora-alpha", "nan"], ("--lora-alpha", "lora_alpha")),
            ("lora-dropout-one", ["--lora-rank", "2", "--lora-dropout", "1"], ("--lora-dropout", "lora_dropout")),
            ("lora-targets-unknown", ["--lora-rank", "2", "--lora-targets", "q,nope"], ("lora_targets", "nope")),
            ("lora-targets-empty", ["--lora-rank", "2", "--lora-targets", ",,"], ()),
            ("lora-targets-without-rank", ["--lora-targets", "q"], ("lora_targets", "lora_rank")),
            ("dim-contradicts", ["--dim", "8"], ("dim", "--init")),
            ("arch-contradicts", ["--arch", "gpt2"], ("arch", "--init")),
            ("seq-len-past-model", ["--seq-len", "100000"], ("seq_len",)),
            ("tokenizer-missing", ["--tokenizer", "/nonexistent/tok.json"], ("tokenizer", "/nonexistent/tok.json"))):
        codes = (0,) if label == "lora-targets-empty" else (2,)  # no target named: all of them
        out.append(_case(f"cli/finetune/{label}", ["train", _ft, "--init", hf, *extra], names, codes=codes))
    out.append(_case("cli/finetune/valid-lora", ["train", _ft, "--init", hf, "--lora-rank", "2"], (), codes=(0,)))
    out.append(_case("cli/finetune/valid-run", ["train", _ft, "--init", _in("run", "r")], (), codes=(0,)))
    out.append(_case("cli/finetune/init-missing", ["train", _ft, "--init", "/nonexistent/model"],
                     ("init", "/nonexistent/model")))
    out.append(_case("cli/finetune/init-empty-folder", ["train", _ft, "--init", lambda d: d],
                     ("init", "run.json", "config.json")))
    out.append(_case("cli/finetune/init-text-file", ["train", _ft, "--init", _in("tokenizers", "corpus.txt")],
                     ("init", "corpus.txt", "not a model")))
    out.append(_case("cli/finetune/init-bert", ["train", _ft, "--init", _copy("hf_bert")], ("init", "hf_bert")))
    out.append(_case("cli/finetune/llama2c-without-tokenizer", ["train", _ft, "--init", _in("l2c", "v0.bin")],
                     ("--tokenizer", "tokenizer")))
    for label, fn in list(file_damages(True).items())[1:]:
        out.append(_case(f"cli/finetune/config.json/{label}", ["train", _ft, "--init", _copy("hf_llama")],
                         ("config.json",), prepare=_damaged("hf_llama", "config.json", fn)))
        out.append(_case(f"cli/finetune/run.json/{label}", ["train", _ft, "--init", _in("run", "r")],
                         ("run.json",), prepare=_damaged("run", "r/run.json", fn)))
    for label, fn in file_damages(False).items():
        if label != "missing":
            out.append(_case(f"cli/finetune/model.safetensors/{label}", ["train", _ft, "--init", _copy("hf_llama")],
                             ("model.safetensors",), prepare=_damaged("hf_llama", "model.safetensors", fn)))

    def bad_lora(d):
        edit_json(_copy("run")(d) / "r" / "run.json", ("lora",), {"rank": "x"})
    out.append(_case("cli/finetune/run.json-lora-damaged", ["train", _ft, "--init", _in("run", "r")],
                     ("run.json", "lora"), prepare=bad_lora))
    return out


# ------------------------------------------------------------------------------------------ bench, info


def _bench_info_cases():
    def is_json(o):
        try:
            json.loads(o)
        except ValueError:
            return f"stdout is not JSON: {o[:100]!r}"
        return None

    return [
        _case("cli/bench/list", ["bench", "--list"], (), codes=(0,)),
        _case("cli/bench/suite-bogus", ["bench", "--suite", "bogus", "--list"], ("--suite",)),
        _case("cli/bench/threads-zero", ["bench", "--threads", "0", "--list"], ("--threads",)),
        _case("cli/bench/threads-str", ["bench", "--threads", "x", "--list"], ("--threads",)),
        _case("cli/bench/rounds-zero", ["bench", "--rounds", "0", "--list"], ("--rounds",)),
        _case("cli/bench/unknown-option", ["bench", "--bogus"], ("--bogus",)),
        _case("cli/bench/extra-argument", ["bench", "extra", "--list"], ("extra",)),
        _case("cli/info/valid", ["info"], (), codes=(0,)),
        _case("cli/info/json", ["info", "--json"], (), codes=(0,), valid=is_json),
        _case("cli/info/unknown-option", ["info", "--bogus"], ("--bogus",)),
        _case("cli/info/extra-argument", ["info", "extra"], ("extra",)),
        _case("cli/unknown-command", ["nope"], ("nope",)),
        _case("cli/unknown-top-option", ["--bogus"], ("--bogus",)),
        _case("cli/clear-cache-extra-argument", ["clear-cache", "extra"], ("extra",)),
    ]


def _subprocess_cases():
    """A few commands in a process of their own: what a user sees, interpreter exit included."""
    out = []
    for label, args, names, codes in (
            ("generate-source-missing", ["generate", "/nonexistent/model"], ("/nonexistent/model", "source"), (2,)),
            ("train-steps-negative", ["train", "--steps", "-1"], ("--steps", "steps"), (2,)),
            ("plot-run-missing", ["plot", "/nonexistent/run"], ("/nonexistent/run", "RUN_DIR"), (2,)),
            ("embed-folder-missing", ["embed", "/nonexistent/st", "a"], ("/nonexistent/st", "folder"), (2,)),
            ("info-unknown-option", ["info", "--bogus"], ("--bogus",), (2,)),
            ("bench-list", ["bench", "--list"], (), (0,))):
        out.append(_case(f"cli/subprocess/{label}", args, names, codes=codes, runner=_subprocess))
    return out


def cases():
    out = _generate_cases() + _embed_cases() + _plot_cases() + _train_cases() + _finetune_cases()
    out += _bench_info_cases()
    return out + _subprocess_cases()
