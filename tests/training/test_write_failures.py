"""A write the disk refuses during training (full, read-only, permission denied) stops the run with one line
naming the file, the OS's reason and the checkpoint that stays intact; the run then resumes bit-exactly.

Every low-level write a run makes is recorded (tests/training/faults.py) and each write site is made to
fail in turn, at its first use and at a later one; a real failure comes from a file-size limit
(``RLIMIT_FSIZE``) in a child process, and a real read-only run folder from permissions (not as root).
"""

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner
from safetensors import SafetensorError

from qorus_jit.cli import main
from qorus_jit.formats.checkpoint import checkpoint_step, latest_checkpoint, load_checkpoint
from qorus_jit.train.run import TrainConfig, resume_run, start_run
from qorus_jit.train.trainer import TrainingError
from tests.training.faults import ERRNOS, Faults, site

SETTINGS = dict(dim=16, n_heads=2, hidden_dim=32, n_layers=1, seq_len=8, batch_size=2, steps=6, warmup_steps=1,
                eval_every=3, eval_batches=1, ckpt_every=2, sample_tokens=0)
TINY = ["--dim", "16", "--n-heads", "2", "--hidden-dim", "32", "--n-layers", "1", "--seq-len", "8", "--batch-size",
        "2", "--warmup-steps", "1", "--eval-batches", "1", "--sample-tokens", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))


def metrics_lines(run_dir) -> list[str]:
    """The lines of metrics.jsonl (none if it was never made), each checked to be a whole JSON row."""
    path = Path(run_dir) / "metrics.jsonl"
    data = path.read_bytes() if path.exists() else b""
    assert data == b"" or data.endswith(b"\n"), data[-80:]
    lines = data.decode("utf-8").splitlines()
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    return lines


def outcome(run_dir) -> tuple[list, dict]:
    """The training rows (without timings) and the final weights of a finished run."""
    rows = [json.loads(line) for line in metrics_lines(run_dir)]
    rows = [{k: v for k, v in r.items() if k not in ("elapsed", "tok_per_s")} for r in rows]
    return rows, load_checkpoint(latest_checkpoint(run_dir)).model


def assert_same(run_dir, reference) -> None:
    (rows, weights), (want_rows, want_weights) = outcome(run_dir), reference
    assert rows == want_rows  # every loss, lr and gradient norm, bit for bit
    assert weights.keys() == want_weights.keys()
    for name in want_weights:
        assert np.array_equal(weights[name], want_weights[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and the write events it makes (the sites to fail)."""
    tmp = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("QORUS_CACHE_DIR", str(tmp / "token-cache"))
        run = start_run(TrainConfig(**SETTINGS, out_dir=str(tmp), name="ref"), progress=False)
        faults = Faults(tmp / "ref").install(mp)
        run.fit()
    finally:
        mp.undo()
    return outcome(tmp / "ref"), faults.events


def cases(events):
    """Each write site (its kind and file, step numbers aside) at its first use and at its second."""
    seen, out = Counter(), []
    for i, event in enumerate(events):
        seen[site(event)] += 1
        if seen[site(event)] <= 2:
            out.append(i)
    return out


def test_the_run_makes_the_writes_expected(reference):
    """The fault sites cover every kind of file a run writes (so no write escapes the tests below)."""
    _, events = reference
    files = {site(e)[1] for e in events}
    assert {"metrics.jsonl", "checkpoints", "checkpoints/latest", "checkpoints/step_N",
            "checkpoints/step_N/model.safetensors", "checkpoints/step_N/optimizer.safetensors",
            "checkpoints/step_N/state.json"} <= files, files
    assert len(cases(events)) >= 20


def test_each_write_site_failing_in_turn(reference, tmp_path, monkeypatch):
    (want_rows, want_weights), events = reference
    tolerated = []
    for n, index in enumerate(cases(events)):
        code = ERRNOS[n % len(ERRNOS)]
        out = tmp_path / f"case{n}"
        run = start_run(TrainConfig(**SETTINGS, out_dir=str(out), name="r"), progress=False)
        run_dir = out / "r"
        with monkeypatch.context() as mp:
            faults = Faults(run_dir, fail_at=index, code=code).install(mp)
            try:
                run.fit()
                error = None
            except TrainingError as e:
                error, resumable = str(e), e.resumable
        assert faults.failed is not None and site(faults.failed) == site(events[index]), (faults.failed, index)
        kind, rel = faults.failed
        metrics_lines(run_dir)  # whole lines only, failed or not
        found = latest_checkpoint(run_dir)
        if error is None:  # a best-effort write (pruning an old checkpoint): the run finished regardless
            tolerated.append(faults.failed)
            assert_same(run_dir, (want_rows, want_weights))
            continue
        assert "\n" not in error
        assert error.startswith(f"step {run.trainer.step}: cannot write {run_dir / rel} ({os.strerror(code)}); "), \
            error
        assert resumable == (found is not None)
        if found is None:
            assert error.endswith("no checkpoint was written yet"), error
            continue
        step = checkpoint_step(found)
        assert error.endswith(f"the checkpoint of step {step} ({found}) is intact and the run resumes from it"), error
        assert load_checkpoint(found).step == step <= run.trainer.step
        resumed = resume_run(run_dir, progress=False)
        assert resumed.trainer.step == step
        resumed.fit()
        assert_same(run_dir, (want_rows, want_weights))
    # the writes that may fail: making a folder that exists already (Path.mkdir(exist_ok=True) passes over
    # the error), and pruning's rename (a checkpoint that cannot be moved aside is left as it is)
    assert tolerated == [("os.mkdir", "."), ("os.mkdir", "checkpoints"),
                         ("os.rename", "checkpoints/.step_0000002.pruned.tmp")], tolerated


def test_a_metrics_line_cut_short_is_undone(tmp_path, monkeypatch, reference):
    """A write that stores half a line (the disk filled up in the middle), then fails: the half line goes."""
    run = start_run(TrainConfig(**SETTINGS, out_dir=str(tmp_path), name="r"), progress=False)
    real_write, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == 3:  # the row of step 3: half of it on disk, then the disk is full
            real_write(fd, data[:len(data) // 2])
            return len(data) // 2
        if calls[0] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(TrainingError, match=r"^step 3: cannot write .*metrics\.jsonl \(No space left on device\); "
                                            r"the checkpoint of step 2 .* is intact"):
        run.fit()
    monkeypatch.undo()
    assert [json.loads(line)["step"] for line in metrics_lines(tmp_path / "r")] == [1, 2]
    resume_run(tmp_path / "r", progress=False).fit()
    assert_same(tmp_path / "r", reference[0])


def test_a_partial_last_line_is_dropped_on_resume(tmp_path, reference):
    """A line cut by a kill (no newline, not JSON) and garbage bytes: the resume drops them and goes on."""
    run = start_run(TrainConfig(**SETTINGS, out_dir=str(tmp_path), name="r"), progress=False)
    step = run.trainer.train_step

    def stop_after_4():  # as Ctrl-C does: the step under way ends, a checkpoint is saved
        row = step()
        run.trainer._stop = run.trainer.step == 4
        return row

    run.trainer.train_step = stop_after_4
    run.fit()
    assert run.trainer.interrupted and load_checkpoint(latest_checkpoint(tmp_path / "r")).step == 4
    metrics = tmp_path / "r" / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b'\xff\xfe garbage\n{"step": 5, "loss": 4.1')
    run = resume_run(tmp_path / "r", progress=False)
    run.fit()
    assert_same(tmp_path / "r", reference[0])


def test_the_command_line_reports_a_full_disk_in_one_line(tmp_path, monkeypatch):
    """The model file of the second checkpoint meets a full disk, as safetensors reports it."""
    real = safetensors.numpy.save_file

    def save_file(tensors, filename, metadata=None):
        if "step_0000004" in filename and "model" in filename:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    runner = CliRunner()
    res = runner.invoke(main, ["train", *TINY, "--steps", "6", "--eval-every", "3", "--ckpt-every", "2",
                               "--out-dir", str(tmp_path), "--name", "r"])
    monkeypatch.undo()
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    checkpoints = tmp_path / "r" / "checkpoints"
    assert last.startswith(f"error: step 4: cannot write {checkpoints / 'step_0000004' / 'model.safetensors'} (No "
                           f"space left on device); the checkpoint of step 2 ({checkpoints / 'step_0000002'}) is "
                           f"intact"), last
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_0000002"]  # no leftover
    assert load_checkpoint(latest_checkpoint(tmp_path / "r")).step == 2
    res = runner.invoke(main, ["train", "--resume", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "at step 2 of 6" in res.stderr and "done: step 6" in res.stderr


# A child process whose files may not grow past a limit: the kernel cuts a write short, then refuses it
# (EFBIG), as a disk that fills up does; no Python function is replaced.
LIMITED = """
import resource, signal, sys
from qorus_jit.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
main(sys.argv[2:])
"""


def qorus_limited(limit, args, cwd):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(LIMITED), str(limit), *map(str, args)], cwd=cwd,
                          env={**os.environ, "QORUS_CACHE_DIR": str(Path(cwd) / "token-cache")},
                          capture_output=True, text=True, timeout=600)


def test_a_real_file_size_limit_on_the_metrics_and_on_a_checkpoint(tmp_path):
    run_dir = tmp_path / "r"
    ok = qorus_limited(1 << 30, ["train", *TINY, "--steps", "4", "--eval-every", "0", "--ckpt-every", "2",
                                 "--out-dir", tmp_path, "--name", "r"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    size = (run_dir / "metrics.jsonl").stat().st_size
    biggest = max(p.stat().st_size for p in run_dir.rglob("*.safetensors"))
    assert size + 2000 < biggest

    # no checkpoint until the end: the metrics file reaches the limit first, in the middle of a line
    res = qorus_limited(size + 1000, ["train", "--resume", run_dir, "--steps", "400", "--ckpt-every", "1000",
                                      "--no-progress"], tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert f"cannot write {run_dir / 'metrics.jsonl'} (File too large); the checkpoint of step 4 " in last, last
    lines = metrics_lines(run_dir)  # whole lines only: the cut one was undone
    assert size < sum(len(line) + 1 for line in lines) <= size + 1000
    steps = [row["step"] for row in map(json.loads, lines) if "loss" in row]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 6
    assert load_checkpoint(latest_checkpoint(run_dir)).step == 4

    # a limit below a checkpoint's size: safetensors' own write fails, reported like any other
    res = qorus_limited(biggest // 2, ["train", "--resume", run_dir, "--steps", "6", "--ckpt-every", "2",
                                       "--no-progress"], tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert f"error: step 6: cannot write {run_dir / 'checkpoints' / 'step_0000006'}/" in last, last
    assert "(File too large); the checkpoint of step 4 " in last, last
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    res = qorus_limited(1 << 30, ["train", "--resume", run_dir, "--steps", "6", "--no-progress"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(latest_checkpoint(run_dir)).step == 6


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions, so none is refused")
def test_a_read_only_run_folder(tmp_path):
    run_dir = tmp_path / "r"
    res = CliRunner().invoke(main, ["train", *TINY, "--steps", "2", "--eval-every", "0", "--ckpt-every", "2",
                                    "--out-dir", str(tmp_path), "--name", "r"])
    assert res.exit_code == 0, res.output
    folders = [run_dir, *[p for p in run_dir.rglob("*") if p.is_dir()]]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    try:
        for p in files:
            p.chmod(0o444)
        for p in folders:
            p.chmod(0o555)
        res = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--steps", "4", "--no-progress"])
    finally:
        for p in folders:
            p.chmod(0o755)
        for p in files:
            p.chmod(0o644)
    assert res.exit_code in (1, 2), res.output
    assert "Traceback" not in res.output
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Permission denied" in last and str(run_dir) in last, last
    assert load_checkpoint(latest_checkpoint(run_dir)).step == 2
    res = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--steps", "4", "--no-progress"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("code", ERRNOS)
def test_qorus_plot_that_cannot_write_keeps_the_old_png(tmp_path, monkeypatch, code):
    figure = pytest.importorskip("matplotlib.figure").Figure
    monkeypatch.setattr(figure, "tight_layout", lambda self: None)  # the figure is not what is tested here
    monkeypatch.setattr(figure, "savefig", lambda self, out, **kw: Path(out).write_bytes(b"\x89PNG\r\n\x1a\nnew"))
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0, "lr": 0.1}\n')
    (run_dir / "curves.png").write_bytes(b"old")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "curves.png":
            raise OSError(code, os.strerror(code), src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = CliRunner().invoke(main, ["plot", str(run_dir)])
    assert res.exit_code == 2, res.output
    assert res.stderr == f"error: cannot write {run_dir / 'curves.png'} ({os.strerror(code)})\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temporary file
    assert (run_dir / "curves.png").read_bytes() == b"old"
    monkeypatch.setattr(os, "replace", real)
    res = CliRunner().invoke(main, ["plot", str(run_dir)])
    assert res.exit_code == 0 and (run_dir / "curves.png").read_bytes().endswith(b"new")


@pytest.mark.parametrize("target", ["tokenizer.json", "run.json"])
def test_a_new_run_whose_first_files_cannot_be_written(tmp_path, monkeypatch, target):
    """Before training: one line, exit 2, and no run folder left behind."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = CliRunner().invoke(main, ["train", *TINY, "--steps", "2", "--out-dir", str(tmp_path), "--name", "r"])
    assert res.exit_code == 2, res.output
    assert res.stderr == (f"error: out_dir: cannot write {tmp_path / 'r' / target} (No space left on device); "
                          f"nothing was kept\n")
    assert not (tmp_path / "r").exists()


def test_a_resume_that_cannot_record_its_new_settings(tmp_path, monkeypatch):
    res = CliRunner().invoke(main, ["train", *TINY, "--steps", "2", "--ckpt-every", "2", "--out-dir", str(tmp_path),
                                    "--name", "r"])
    assert res.exit_code == 0, res.output
    before = (tmp_path / "r" / "run.json").read_bytes()
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == "run.json":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), src)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    res = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "r"), "--steps", "4", "--no-progress"])
    assert res.exit_code == 2, res.output
    checkpoint = tmp_path / "r" / "checkpoints" / "step_0000002"
    assert res.stderr == (f"error: --resume: cannot write {tmp_path / 'r' / 'run.json'} (Read-only file system); the "
                          f"checkpoint of step 2 ({checkpoint}) is intact\n")
    assert (tmp_path / "r" / "run.json").read_bytes() == before
