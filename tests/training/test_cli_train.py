"""``qorus train`` and ``qorus plot`` as a user meets them: one-line errors that leave nothing behind, a smoke
run on the default corpus, TOML configs, Ctrl-C and ``--resume`` (exact), a NaN loss, and the curves PNG.

Runs are tiny (a 32-wide model, at most 16 steps); the ones whose output a user sees directly run in a
subprocess (``python -m qorus_jit.cli``), the rest through click's CliRunner.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from qorus_jit.cli import main
from qorus_jit.data import default_corpus
from qorus_jit.formats.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from qorus_jit.train.losses import CrossEntropyLoss
from qorus_jit.train.run import ConfigError, TrainConfig, start_run
from qorus_jit.train.trainer import TrainingError

# A tiny model on the default corpus (the smoke settings; --ckpt-every 2 so that pruning shows).
TINY = ["--warmup-steps", "1", "--dim", "32", "--n-heads", "2", "--hidden-dim", "64", "--seq-len", "32",
        "--batch-size", "4", "--no-progress"]
SMOKE = ["--steps", "6", *TINY, "--eval-every", "3", "--ckpt-every", "2", "--sample-tokens", "20"]
# Long enough to be stopped in the middle, short enough to finish in seconds.
LONG = ["--steps", "16", *TINY, "--n-layers", "1", "--eval-every", "8", "--eval-batches", "2", "--ckpt-every", "8",
        "--sample-tokens", "0"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))


def env(tmp):
    return {**os.environ, "QORUS_CACHE_DIR": str(Path(tmp) / "token-cache")}


def qorus(args, cwd, timeout=300):
    """``qorus ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "qorus_jit.cli", *map(str, args)], cwd=cwd, env=env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(code, stdout, stderr, expected_code=2, needle=""):
    assert code == expected_code, f"exit code {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stderr + stdout, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    assert stdout == ""


def snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


def rows(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    out = [json.loads(line) for line in lines]
    return [r for r in out if "loss" in r], [r for r in out if "val_loss" in r]


def final_weights(run_dir):
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


# ------------------------------------------------------------------------------------------ the smoke run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``qorus train`` with the default corpus and tiny settings, in its own process."""
    tmp = tmp_path_factory.mktemp("smoke")
    res = qorus(["train", *SMOKE, "--out-dir", tmp / "runs", "--name", "smoke"], cwd=tmp, timeout=600)
    return tmp / "runs" / "smoke", res


def test_smoke_run_writes_the_run_directory_and_learns(smoke):
    run_dir, res = smoke
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert f"run {run_dir}: llama with " in res.stderr and "pydoc_data.topics" in res.stderr
    assert "done: step 6, loss " in res.stderr and "val_loss " in res.stderr
    assert res.stdout.startswith("sample:\nThe ") and len(res.stdout) > len("sample:\nThe ") + 5

    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["steps"] == 6 and record["config"]["dim"] == 32 and record["config"]["ckpt_every"] == 2
    assert record["model"]["arch"] == "llama" and record["model"]["vocab_size"] == 256
    assert record["data"] == "pydoc_data.topics" and record["tokens"]["train"] > 100_000
    assert json.loads((run_dir / "tokenizer.json").read_text())["vocab_size"] == 256

    train, val = rows(run_dir)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        assert set(r) == {"step", "loss", "lr", "grad_norm", "tok_per_s", "elapsed"}, r
        assert all(np.isfinite(r[k]) and r[k] > 0 for k in ("loss", "lr", "grad_norm", "tok_per_s", "elapsed"))
    assert [r["step"] for r in val] == [3, 6] and all(np.isfinite(r["val_loss"]) for r in val)
    assert [r["elapsed"] for r in train] == sorted(r["elapsed"] for r in train)
    # it learns: from ~ln(256) = 5.5 down, on the training and the held-out text
    losses = [r["loss"] for r in train]
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert val[1]["val_loss"] < val[0]["val_loss"], val

    # checkpoints at steps 2, 4, 6; the newest keep_checkpoints = 2 are kept
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000004", "step_0000006"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_0000006"
    c = load_checkpoint(latest_checkpoint(run_dir))
    assert c.step == 6 and c.model and all(v.dtype == np.float32 and np.isfinite(v).all() for v in c.model.values())
    assert sum(v.size for v in c.model.values()) == int(res.stderr.split(" with ")[1].split(" parameters")[0]
                                                         .replace(",", ""))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    # the checkpoint carries the settings and the model config, so it stands on its own
    assert c.state["config"]["dim"] == 32 and c.state["config"]["steps"] == 6
    assert c.state["model"]["vocab_size"] == 256 and c.state["model"]["dim"] == 32


def test_help_lists_every_setting():
    res = invoke(["train", "--help"])
    assert res.exit_code == 0, res.output
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in res.output, flag
    assert "--no-tie-embeddings" in res.output and "--resume" in res.output and "--no-progress" in res.output


# ---------------------------------------------------------------------------------- configuration errors


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working folder (the current directory) holding good and bad config and data files."""
    monkeypatch.chdir(tmp_path)
    text = default_corpus()[1]
    for name, content in {
        "unknown.toml": "bogus = 1\n",
        "steps_str.toml": 'steps = "ten"\n',
        "lr_bool.toml": "lr = true\n",
        "invalid.toml": "steps = \n",
        "mixed.toml": "steps = 10\n[train]\ndim = 32\n",
        "short.txt": "too short for a window",
        "val_short.txt": text[:600],  # 570 training tokens, 30 held out: less than one window of 33
    }.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes(("caf\u00e9 " * 400).encode("latin-1"))
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


CONFIG_ERRORS = {
    "toml_unknown_key": (["unknown.toml"], "bogus"),
    "toml_wrong_type_str": (["steps_str.toml"], "steps: expected int"),
    "toml_wrong_type_bool": (["lr_bool.toml"], "lr: expected float"),
    "toml_invalid": (["invalid.toml"], "not valid TOML"),
    "toml_mixed_forms": (["mixed.toml"], "[train]"),
    "config_missing": (["nowhere.toml"], "no such config file"),
    "config_is_a_directory": (["a_folder"], "directory"),
    "unknown_option": (["--bogus", "1"], "--bogus"),
    "bad_int": (["--steps", "abc"], "--steps"),
    "bad_choice": (["--arch", "foo"], "--arch"),
    "nan_lr": (["--lr", "nan"], "lr: expected a finite number"),
    "seq_len_over_max": (["--seq-len", "64", "--max-seq-len", "32"], "max_seq_len"),
    "heads_not_dividing_dim": (["--dim", "32", "--n-heads", "3"], "n_heads"),
    "warmup_not_below_steps": (["--steps", "10", "--warmup-steps", "10"], "warmup_steps"),
    "data_missing": (["--data", "nowhere.txt"], "not found"),
    "data_directory": (["--data", "a_folder"], "directory"),
    "data_empty": (["--data", "empty.txt"], "empty"),
    "data_too_short": (["--data", "short.txt", "--seq-len", "32"], "too short"),
    "data_val_split_too_short": (["--data", "val_short.txt", "--seq-len", "32"], "30 validation tokens"),
    "data_not_utf8": (["--data", "latin1.txt", "--seq-len", "32"], "not UTF-8"),
    "tokenizer_missing": (["--tokenizer", "nowhere/tokenizer.json"], "tokenizer"),
    "too_few_val_windows": (["--data", "val_short.txt", "--seq-len", "8", "--eval-batches", "8"], "eval_batches"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_error_is_one_line_exit_2_and_leaves_no_run_dir(files, case):
    args, needle = CONFIG_ERRORS[case]
    res = invoke(["train", *args, "--no-progress"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, needle)
    assert not (files / "runs").exists(), list((files / "runs").rglob("*"))


def test_out_dir_that_is_a_file_is_a_config_error(files):
    res = invoke(["train", *TINY, "--steps", "2", "--out-dir", "a_file", "--name", "x"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, "out_dir")
    res = invoke(["train", *TINY, "--steps", "2", "--out-dir", ".", "--name", "a_file"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, "is a file")
    assert (files / "a_file").read_text() == "not a folder"


def test_existing_run_name_is_refused_and_left_untouched(files):
    taken = files / "runs" / "taken"
    (taken / "checkpoints").mkdir(parents=True)
    (taken / "run.json").write_text('{"config": {}}\n')
    (taken / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    before = snapshot(taken)
    res = invoke(["train", *TINY, "--steps", "2", "--name", "taken"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, "exists already")
    assert "--resume" in res.stderr
    assert snapshot(taken) == before
    assert [p.name for p in (files / "runs").iterdir()] == ["taken"]


@pytest.mark.parametrize("args, needle", [
    (["--steps", "abc"], "Invalid value for '--steps'"),
    (["--data", "nowhere.txt"], "data: path: file not found"),
    (["steps_str.toml"], "steps: expected int, got 'ten'"),
])
def test_error_in_a_fresh_process_is_exactly_one_line(files, args, needle):
    res = qorus(["train", *args, "--no-progress"], cwd=files)
    assert_one_line_error(res.returncode, res.stdout, res.stderr, 2, needle)
    assert not (files / "runs").exists()


# ----------------------------------------------------------------------------------------- TOML configs


@pytest.mark.parametrize("form", ["table", "top_level"])
def test_toml_config_with_overrides_and_a_relative_data_path(tmp_path, monkeypatch, form):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    (work / "corpus.txt").write_text(default_corpus()[1][:40_000], encoding="utf-8")
    settings = ('data = "corpus.txt"\ndim = 32\nn_heads = 2\nhidden_dim = 64\nn_layers = 1\nseq_len = 16\n'
                'batch_size = 2\nsteps = 50\nwarmup_steps = 1\neval_batches = 1\nsample_tokens = 0\nlr = 1e-3\n'
                'name = "from_file"\n')
    (work / "cfg.toml").write_text(("[train]\n" if form == "table" else "") + settings, encoding="utf-8")
    monkeypatch.chdir(work)
    res = invoke(["train", "cfg.toml", "--steps", "2", "--name", "override", "--no-progress"])
    assert res.exit_code == 0, res.output
    run_dir = work / "runs" / "override"
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    assert cfg["steps"] == 2 and cfg["name"] == "override"  # the command line wins
    assert cfg["dim"] == 32 and cfg["n_layers"] == 1 and cfg["lr"] == 1e-3 and cfg["seq_len"] == 16  # the file
    assert cfg["data"] == str(work / "corpus.txt")  # absolute: the run resumes from anywhere
    assert not (work / "runs" / "from_file").exists()
    assert [r["step"] for r in rows(run_dir)[0]] == [1, 2]

    monkeypatch.chdir(elsewhere)  # the same data file named from here is no change of setting
    res = invoke(["train", "--resume", run_dir, "--steps", "3", "--data", "../work/corpus.txt", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"resuming {run_dir} at step 2 of 3" in res.stderr
    assert [r["step"] for r in rows(run_dir)[0]] == [1, 2, 3]


# --------------------------------------------------------------------------------------------- --resume


@pytest.fixture
def finished(smoke, tmp_path):
    """A copy of the finished smoke run."""
    run_dir, res = smoke
    assert res.returncode == 0, res.stderr
    return Path(shutil.copytree(run_dir, tmp_path / "runs" / "smoke"))


def test_resume_finished_run_with_more_steps_continues(finished):
    before = (finished / "metrics.jsonl").read_text().splitlines()
    res = invoke(["train", "--resume", finished, "--steps", "9", "--sample-tokens", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"resuming {finished} at step 6 of 9" in res.stderr and "done: step 9" in res.stderr
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    assert lines[:len(before)] == before  # the history is kept as it was
    train, val = rows(finished)
    assert [r["step"] for r in train] == list(range(1, 10))
    assert [r["step"] for r in val] == [3, 6, 9]
    assert all(b["elapsed"] >= a["elapsed"] for a, b in zip(train, train[1:], strict=False))
    assert load_checkpoint(latest_checkpoint(finished)).step == 9
    assert json.loads((finished / "run.json").read_text())["config"]["steps"] == 9  # later resumes know it
    # nothing left to do: one line, and the run stays as it is
    before = snapshot(finished)
    res = invoke(["train", "--resume", finished, "--no-progress"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, "finished all 9 steps")
    assert snapshot(finished) == before


@pytest.mark.parametrize("case", ["change_dim", "with_config", "fewer_steps", "nothing_left"])
def test_resume_refusals_are_one_line_and_touch_nothing(finished, case):
    (finished.parent / "cfg.toml").write_text("steps = 20\n")
    args, needle = {
        "change_dim": (["--dim", "64", "--steps", "12"], "dim cannot change"),
        "with_config": ([finished.parent / "cfg.toml"], "no config file with --resume"),
        "fewer_steps": (["--steps", "4"], "expected --steps of at least 6"),
        "nothing_left": ([], "finished all 6 steps"),
    }[case]
    before = snapshot(finished)
    res = invoke(["train", "--resume", finished, *args, "--no-progress"])
    assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, needle)
    assert snapshot(finished) == before


def test_resume_of_what_is_no_resumable_run(finished, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    started = tmp_path / "started"  # a run directory whose process died before its first checkpoint
    started.mkdir()
    shutil.copy(finished / "run.json", started / "run.json")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "run.json").write_text("{not json")
    for target, needle in ((empty, "not a run directory"), (tmp_path / "nowhere", "does not exist"),
                           (started, "no complete checkpoint"), (damaged, "not valid JSON"),
                           (finished / "run.json", "not a run directory")):
        before = snapshot(tmp_path)
        res = invoke(["train", "--resume", target, "--no-progress"])
        assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, needle)
        assert snapshot(tmp_path) == before


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    ref = qorus(["train", *LONG, "--out-dir", tmp_path / "runs", "--name", "ref"], cwd=tmp_path, timeout=600)
    assert ref.returncode == 0, ref.stderr

    run_dir = tmp_path / "runs" / "stopped"
    p = subprocess.Popen([sys.executable, "-m", "qorus_jit.cli", "train", *LONG, "--out-dir", str(tmp_path / "runs"),
                          "--name", "stopped"], cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "metrics.jsonl").read_text().strip():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)  # once, after the first step
    out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err and "stopped at step " in err and f"qorus train --resume {run_dir}" in err
    train, _ = rows(run_dir)
    stopped = train[-1]["step"]
    assert [r["step"] for r in train] == list(range(1, stopped + 1)) and stopped < 16
    assert f"stopped at step {stopped};" in err
    assert load_checkpoint(latest_checkpoint(run_dir)).step == stopped  # saved where it stopped

    res = qorus(["train", "--resume", run_dir, "--no-progress"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"resuming {run_dir} at step {stopped} of 16" in res.stderr and "done: step 16" in res.stderr
    (a, va), (b, vb) = rows(run_dir), rows(tmp_path / "runs" / "ref")
    assert [r["step"] for r in a] == list(range(1, 17))
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=0, atol=1e-6)
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [8, 16]
    np.testing.assert_allclose([r["val_loss"] for r in va], [r["val_loss"] for r in vb], rtol=0, atol=1e-6)
    got, want = final_weights(run_dir), final_weights(tmp_path / "runs" / "ref")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------------------- NaN


def tiny_config(out_dir, **kw):
    return TrainConfig(**{**dict(dim=32, n_heads=2, hidden_dim=64, n_layers=1, seq_len=16, batch_size=2, steps=8,
                                 warmup_steps=1, eval_every=0, eval_batches=1, ckpt_every=2, sample_tokens=0,
                                 out_dir=str(out_dir), name="nan"), **kw})


def test_nan_loss_stops_with_the_step_and_the_last_checkpoint_loads(tmp_path):
    run = start_run(tiny_config(tmp_path), progress=False)

    class NaNAtStep5(CrossEntropyLoss):
        def __call__(self, logits, targets, scale=1.0):
            loss, grad = super().__call__(logits, targets, scale)
            return (float("nan") if run.trainer.step + 1 == 5 else loss), grad

    run.trainer.loss = NaNAtStep5()
    with pytest.raises(TrainingError, match=r"^step 5: the loss is nan"):
        run.fit()
    assert [r["step"] for r in rows(run.run_dir)[0]] == [1, 2, 3, 4]
    c = load_checkpoint(latest_checkpoint(run.run_dir))
    assert c.step == 4
    now = run.model.parameters()  # the failed step changed no weight: they are still those of step 4
    assert c.model.keys() == now.keys()
    for name in now:
        assert np.array_equal(c.model[name], now[name]), name


@pytest.mark.parametrize("bad_step, checkpoint", [(5, "the checkpoint of step 4"), (1, "no checkpoint was written")])
def test_nan_loss_on_the_command_line_exits_1_naming_the_step(tmp_path, monkeypatch, bad_step, checkpoint):
    real, calls = CrossEntropyLoss.__call__, [0]

    def call(self, logits, targets, scale=1.0):
        calls[0] += 1
        loss, grad = real(self, logits, targets, scale)
        return (float("nan") if calls[0] == bad_step else loss), grad

    monkeypatch.setattr(CrossEntropyLoss, "__call__", call)
    res = invoke(["train", "--dim", 32, "--n-heads", 2, "--hidden-dim", 64, "--n-layers", 1, "--seq-len", 16,
                  "--batch-size", 2, "--steps", 8, "--warmup-steps", 1, "--eval-batches", 1, "--ckpt-every", 2,
                  "--out-dir", tmp_path, "--name", "nan", "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: step {bad_step}: the loss is nan"), last
    assert checkpoint in last and "--resume" not in last
    if bad_step == 5:
        assert load_checkpoint(latest_checkpoint(tmp_path / "nan")).step == 4
    else:
        assert latest_checkpoint(tmp_path / "nan") is None


# ------------------------------------------------------------------------------------------------ plot


def test_plot_writes_a_png(finished, tmp_path):
    res = invoke(["plot", finished, "--out", tmp_path / "curves.png"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"wrote {tmp_path / 'curves.png'}"
    data = (tmp_path / "curves.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    res = qorus(["plot", finished], cwd=tmp_path)  # default: RUN_DIR/curves.png, in a fresh process
    assert res.returncode == 0, res.stderr
    data = (finished / "curves.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_plot_errors_are_one_line(tmp_path):
    (tmp_path / "no_metrics").mkdir()
    (tmp_path / "no_steps").mkdir()
    (tmp_path / "no_steps" / "metrics.jsonl").write_text("")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0, "lr": 0.1}\n')
    for args, needle in (([tmp_path / "no_metrics"], "no metrics.jsonl"), ([tmp_path / "nowhere"], "no metrics.jsonl"),
                         ([tmp_path / "no_steps"], "no training step"), ([tmp_path / "a_file"], "a_file"),
                         ([tmp_path / "ok", "--out", tmp_path / "missing" / "c.png"], "c.png"),
                         ([tmp_path / "ok", "--bogus"], "--bogus")):
        res = invoke(["plot", *args])
        assert_one_line_error(res.exit_code, res.stdout, res.stderr, 2, needle)
    res = qorus(["plot", tmp_path / "no_metrics"], cwd=tmp_path)
    assert_one_line_error(res.returncode, res.stdout, res.stderr, 2, "no metrics.jsonl")
    assert not (tmp_path / "no_metrics" / "curves.png").exists()


def test_default_warmup_is_a_twentieth_of_steps(tmp_path):
    """The default warmup follows steps (a short run needs no --warmup-steps), and run.json keeps the number."""
    from qorus_jit.train.run import build_schedule

    assert TrainConfig().warmup_steps == -1
    for steps, warmup in ((600, 30), (20, 1), (10, 0)):
        cfg = TrainConfig(steps=steps)
        lrs = [build_schedule(cfg)(s) for s in range(steps)]
        # linear warmup: step s < warmup runs at lr * (s + 1) / warmup, then the cosine starts at the peak
        want = [cfg.lr * (s + 1) / warmup for s in range(warmup)] + [cfg.lr]
        assert np.allclose(lrs[:warmup + 1], want), (steps, lrs[:warmup + 1])
    run = start_run(TrainConfig(steps=20, dim=16, n_layers=1, n_heads=2, hidden_dim=32, seq_len=8, batch_size=2,
                                eval_batches=1, sample_tokens=0, out_dir=str(tmp_path), name="r"), progress=False)
    assert run.cfg.warmup_steps == 1
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["warmup_steps"] == 1
    with pytest.raises(ConfigError, match="warmup_steps: expected an int >= 0, or -1"):
        TrainConfig(warmup_steps=-2)


def test_no_progress_keeps_the_validation_lines(tmp_path):
    """--no-progress drops the bar, not the evaluations: each one prints its line."""
    res = qorus(["train", *SMOKE, "--sample-tokens", "0", "--out-dir", tmp_path / "runs", "--name", "r"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 3", "step 6"], res.stderr
    assert all("val_loss" in line for line in lines)
