"""Every setting of TrainConfig given bad values (the wrong type, a bool for a number, negative, NaN or inf,
past int64, a bad choice): a ConfigError naming the setting, from TrainConfig and on the command line in one
line; NumPy scalars stand for Python ones. The bad values are generated from each field's declared type."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.train.run import ConfigError, TrainConfig, config_fields, start_run

TINY = dict(dim=16, n_heads=2, hidden_dim=32, n_layers=1, seq_len=8, batch_size=2, steps=4, warmup_steps=1,
            eval_batches=1, sample_tokens=0)


def bad_values(kind, choices) -> list:
    """Values no setting of type ``kind`` takes (``choices``: the allowed strings, if any)."""
    nothing = [None, [1], {"a": 1}]
    if kind is bool:
        return [1, 0, 1.0, "yes", np.int64(1), *nothing]
    if kind is int:
        return ["3", 1.5, 2.0, np.float64(2.0), True, np.bool_(False), float("nan"), -5, np.int64(-5), 2**63,
                -2**63 - 1, 10**30, *nothing]
    if kind is float:
        return ["0.1", True, np.bool_(True), float("nan"), float("inf"), -float("inf"), np.float32("nan"), -5.0, -5,
                *nothing]
    return [5, 1.5, b"bytes", True, *nothing, *(["bogus"] if choices else [])]


CASES = [(name, bad) for name, kind, _, _, choices in config_fields() for bad in bad_values(kind, choices)]


@pytest.mark.parametrize("name, bad", CASES, ids=[f"{n}={b!r}" for n, b in CASES])
def test_each_bad_value_of_each_setting_names_it(name, bad):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{name: bad})
    assert str(e.value).startswith(f"{name}: expected "), str(e.value)
    assert "\n" not in str(e.value)


def test_paths_with_a_nul_byte_and_names_that_leave_out_dir():
    for name in ("data", "tokenizer", "out_dir", "name"):
        with pytest.raises(ConfigError, match=f"^{name}: expected a path"):
            TrainConfig(**{name: "a\0b"})
    for bad in ("a/b", "..", ".", "../up"):
        with pytest.raises(ConfigError, match=r"^name: expected the name of one folder"):
            TrainConfig(name=bad)


def test_numpy_scalars_stand_for_python_ones():
    cfg = TrainConfig(dim=np.int64(32), n_heads=np.int32(2), seed=np.uint8(3), steps=np.int16(40),
                      lr=np.float32(0.01), val_fraction=np.float64(0.1), clip=np.int64(2),
                      tie_embeddings=np.bool_(False), name=np.str_("run"))
    d = cfg.to_dict()
    assert d["dim"] == 32 and d["seed"] == 3 and d["steps"] == 40 and d["clip"] == 2.0 and d["name"] == "run"
    assert d["lr"] == float(np.float32(0.01)) and d["tie_embeddings"] is False
    for value, kind in ((d["dim"], int), (d["seed"], int), (d["lr"], float), (d["clip"], float),
                        (d["tie_embeddings"], bool), (d["name"], str)):
        assert type(value) is kind, (value, kind)
    json.dumps(d)  # run.json takes it
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg


def test_the_seed():
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1  # any int numpy's generators take
    for bad, expected in ((-1, "an int >= 0"), (1.5, "int"), (2**64, "an int below 2**63"), (True, "int"),
                          ("7", "int")):
        with pytest.raises(ConfigError, match="^seed: expected " + re.escape(expected)):
            TrainConfig(seed=bad)


def cli_values(kind) -> list[str]:
    """Values the command line parses as ``kind`` that the setting must refuse."""
    if kind is int:
        return ["-5", str(2**63), str(10**30)]
    if kind is float:
        return ["nan", "inf", "-5"]
    return []


CLI_CASES = [(name, value) for name, kind, _, _, _ in config_fields() for value in cli_values(kind)]


@pytest.mark.parametrize("name, value", CLI_CASES, ids=[f"{n}={v}" for n, v in CLI_CASES])
def test_each_bad_value_on_the_command_line_is_one_line(tmp_path, monkeypatch, name, value):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["train", f"--{name.replace('_', '-')}", value, "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.stderr.startswith(f"error: {name}: expected ") and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", [name for name, kind, *_ in config_fields() if kind is int])
def test_a_huge_size_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, name):
    """2**40 of each int setting: a one-line refusal naming it (it cannot fit in memory, or fails a check),
    or a run that is built (2**40 steps, a seed, a thread count: nothing to allocate for them)."""
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    settings = {**TINY, name: 2**40, "out_dir": str(tmp_path), "name": "r"}
    if name == "warmup_steps":
        settings["steps"] = 2**41  # a warmup below steps
    try:
        cfg = TrainConfig(**settings)
        run = start_run(cfg, progress=False)
    except ConfigError as e:
        assert name in str(e).split(":")[0], str(e)
        assert not (tmp_path / "r").exists()
        return
    assert getattr(run.cfg, name) == 2**40
    assert name in ("steps", "grad_accum", "eval_every", "ckpt_every", "keep_checkpoints", "seed", "threads",
                    "sample_tokens", "warmup_steps"), name


def test_memory_refusal_names_the_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("QORUS_CACHE_DIR", str(tmp_path / "token-cache"))
    with pytest.raises(ConfigError, match=r"^dim=1048576, n_layers=1, hidden_dim=32, .*: training this model needs "
                                          r"at least [\d.e+]+ GiB .* more than the [\d.]+ GiB of memory here$"):
        start_run(TrainConfig(**{**TINY, "dim": 2**20, "out_dir": str(tmp_path), "name": "r"}), progress=False)
    assert not (tmp_path / "r").exists()
    # the default settings are far from it
    from qorus_jit.train.run import check_memory

    check_memory(TrainConfig(), 256)
    assert math.isfinite(TrainConfig().lr)


@pytest.mark.parametrize("text, what", [("a = " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
                                        ("steps = " + "9" * 5000, "not valid TOML"),
                                        ("steps = [", "not valid TOML")])
def test_a_toml_file_too_deep_or_too_long_names_the_file(tmp_path, text, what):
    p = tmp_path / "train.toml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=f"train.toml: .*{what}"):
        TrainConfig.from_toml(p)


def test_overrides_and_cfg_of_the_wrong_type_are_named(tmp_path):
    from qorus_jit.train.run import resume_run

    p = tmp_path / "train.toml"
    p.write_text("steps = 3\n")
    assert TrainConfig.from_toml(p, {"steps": np.int64(5)}).steps == 5
    for bad in ("x", [("steps", 4)]):
        with pytest.raises(ConfigError, match="^overrides: expected a dict"):
            TrainConfig.from_toml(p, bad)
        with pytest.raises(ConfigError, match="^overrides: expected a dict"):
            resume_run(tmp_path / "run", bad, progress=False)
    for bad in (None, {"steps": 1}):
        with pytest.raises(TypeError, match="^cfg: expected a TrainConfig"):
            start_run(bad, progress=False)
