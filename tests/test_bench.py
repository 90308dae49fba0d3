"""``qorus bench`` and the perf gate: the compare logic on synthetic results, the baseline's tolerances, the
choice of a baseline by CPU, and the command on one tiny figure against synthetic baselines, also from a copy of
the package alone (no source checkout). No assertion here depends on how fast anything ran."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qorus_jit.bench import suite
from qorus_jit.cli import main

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"cpu": {"model": "test cpu"}, "threads": {"cpu_count": 2}}


def results(figures: dict, only=(), name_suite="quick", spread=0.05) -> dict:
    """Synthetic results: a float is a measured ratio, a str starting 'skip' a skipped figure, else an error."""
    out = {}
    for name, v in figures.items():
        if isinstance(v, str):
            out[name] = {"skipped": v} if v.startswith("skip") else {"error": v}
        else:
            runs = [{"ours": 1.0, "ref": v * (1 + d), "ratio": v * (1 + d)} for d in (-spread / 2, 0.0, spread / 2)]
            out[name] = {"unit": "s", "ref": "numpy", "gated": True, **suite._stats(runs)}
    return {"suite": name_suite, "threads": 2, "only": list(only), "machine": MACHINE, "figures": out,
            "wall_s": 1.0, "time": "now"}


def baseline(figures: dict, tolerance=0.2, **extra) -> dict:
    """Synthetic baseline: name -> ratio (gated, with ``tolerance``) or name -> dict (the entry itself)."""
    entries = {n: v if isinstance(v, dict) else {"ratio": v, "tolerance": tolerance, "gated": True}
               for n, v in figures.items()}
    return {"suite": "quick", "threads": 2, "machine": MACHINE, "rule": dict(suite.RULE), "figures": entries,
            **extra}


def verdicts(outcome) -> dict:
    return {r["name"]: r["verdict"] for r in outcome["rows"]}


def test_regression_beyond_tolerance_fails():
    out = suite.compare(results({"a.x": 1.5, "a.y": 2.0}), baseline({"a.x": 2.0, "a.y": 2.0}))
    assert not out["passed"]
    assert out["failed"] == ["a.x"]
    assert verdicts(out) == {"a.x": "regressed", "a.y": "ok"}
    msg = suite.gate_message(out, "perf/baseline.json")
    assert msg.startswith("perf gate FAILED") and "a.x" in msg and "-25%" in msg and "a.y" not in msg


def test_within_tolerance_and_improvements_pass():
    out = suite.compare(results({"a.x": 1.7, "a.y": 3.0}), baseline({"a.x": 2.0, "a.y": 2.0}))
    assert out["passed"] and out["failed"] == []
    assert verdicts(out) == {"a.x": "ok", "a.y": "improved"}
    assert out["improved"] == ["a.y"]
    msg = suite.gate_message(out, "B.json")
    assert msg.startswith("perf gate passed: 2 gated figures within tolerance of B.json") and "1 improved" in msg


def test_skipped_new_and_ungated_figures_do_not_fail():
    base = baseline({"w.speed": 1.0, "k.ungated": {"ratio": 5.0, "tolerance": 0.2, "gated": False}})
    out = suite.compare(results({"w.speed": "skipped: torch not importable", "k.ungated": 0.5, "k.new": 0.1}), base)
    assert out["passed"]
    assert verdicts(out) == {"w.speed": "skipped", "k.ungated": "ungated", "k.new": "new"}
    assert "1 skipped" in suite.gate_message(out, "B.json")


def test_a_failed_benchmark_fails_the_gate():
    out = suite.compare(results({"a.x": "RuntimeError: boom"}), baseline({"a.x": 1.0}))
    assert not out["passed"] and out["failed"] == ["a.x"] and verdicts(out) == {"a.x": "error"}


def test_missing_gated_figure_fails_only_when_the_whole_suite_ran():
    base = baseline({"a.x": 1.0, "a.gone": 1.0})
    whole = suite.compare(results({"a.x": 1.0}), base)
    assert not whole["passed"] and whole["failed"] == ["a.gone"]
    assert "not measured" in suite.gate_message(whole, "B.json")
    narrowed = suite.compare(results({"a.x": 1.0}, only=["a.x"]), base)
    assert narrowed["passed"] and narrowed["missing"] == ["a.gone"]


def test_tolerance_widens_with_this_runs_spread_up_to_the_cap():
    base = baseline({"a.x": 1.0}, tolerance=0.15)
    assert not suite.compare(results({"a.x": 0.7}, spread=0.05), base)["passed"]  # -30% > 15%
    assert suite.compare(results({"a.x": 0.7}, spread=0.8), base)["passed"]  # a noisy run widens it to 0.8 / 2
    cap = suite.RULE["cap"]
    assert not suite.compare(results({"a.x": 0.9 * (1 - cap)}, spread=0.9), base)["passed"]  # never past the cap


def test_a_json_results_file_serves_as_baseline():
    """Without stored tolerances, each comes from the rule and the baseline figure's own spread."""
    prev = results({"a.x": 2.0}, spread=0.01)
    assert suite.compare(results({"a.x": 1.8}), prev)["passed"]  # -10%: within the 15% floor
    assert not suite.compare(results({"a.x": 1.5}), prev)["passed"]


def test_a_baseline_from_another_machine_warns():
    other = baseline({"a.x": 1.0}) | {"machine": {"cpu": {"model": "another"}, "threads": {"cpu_count": 64}}}
    out = suite.compare(results({"a.x": 1.0}), other)
    assert out["passed"] and any("another machine" in w for w in out["warnings"])


def test_make_baseline_sets_tolerances_from_the_spread_of_the_rounds():
    rule = suite.RULE
    rounds = [results({"a.steady": 2.0 * f, "a.noisy": 1.0 * g, "w.torch": 1.0, "startup.cold": 0.1}, spread=0.02)
              for f, g in ((1.0, 1.0), (1.02, 1.6), (0.98, 0.7))]
    rounds[1]["figures"]["w.torch"] = {"skipped": "torch not importable"}
    base = suite.make_baseline(rounds)
    steady, noisy = base["figures"]["a.steady"], base["figures"]["a.noisy"]
    assert steady["ratio"] == pytest.approx(2.0) and steady["round_ratios"] == pytest.approx([2.0, 2.04, 1.96])
    assert steady["between_spread"] == pytest.approx(0.04)
    assert steady["within_spread"] == pytest.approx(0.02)
    assert steady["tolerance"] == pytest.approx(max(rule["floor"], rule["k"] * 0.04)) and steady["gated"]
    assert not noisy["gated"] and "too noisy" in noisy["why_not_gated"] and noisy["tolerance"] == rule["cap"]
    assert not base["figures"]["w.torch"]["gated"]
    assert not base["figures"]["startup.cold"]["gated"]  # the registry says: reported only
    assert base["rounds"] == 3 and base["machine"] == MACHINE and base["rule"] == rule
    assert base["command"] == suite.BASELINE_COMMAND
    # the gate reads what it wrote
    assert suite.compare(results({"a.steady": 2.0, "a.noisy": 0.1}), base)["passed"]
    assert not suite.compare(results({"a.steady": 1.0, "a.noisy": 1.0}), base)["passed"]


def test_pool_joins_the_runs_of_rounds():
    pooled = suite.pool([results({"a.x": 1.0}), results({"a.x": 3.0})])
    e = pooled["figures"]["a.x"]
    assert e["n"] == 6 and e["round_ratios"] == [1.0, 3.0] and e["ratio_min"] < 1.0 < 3.0 < e["ratio_max"]


def test_remeasure_keeps_the_second_measurement(monkeypatch):
    base = baseline({"a.x": 2.0, "a.y": 2.0})
    first = results({"a.x": 1.0, "a.y": 2.0})
    for second, passed in ((3.0, True), (1.0, False)):
        calls = []

        def fake_run_suite(name_suite, only, threads, log=None, runs=0, second=second, calls=calls):
            calls.append((only, runs))
            return results({"a.x": second})

        monkeypatch.setattr(suite, "run_suite", fake_run_suite)
        res, outcome, again = suite.remeasure(first, base, threads=2)
        assert calls == [(["a.x"], 6)] and again == ["a.x"]  # twice the quick suite's 3 runs
        assert outcome["passed"] is passed
        assert res["figures"]["a.x"]["first_attempt"]["ratio"] == pytest.approx(1.0)


def test_select_figures_groups_and_kinds():
    quick = suite.select("quick")
    assert {f.group for f in quick} >= {"matmul", "attention", "norm", "softmax", "loss", "optim", "w-train",
                                       "w-decode", "prefill", "mlp", "startup"}
    assert [f.name for f in suite.select("quick", "norm.rmsnorm_fwd")] == ["norm.rmsnorm_fwd"]
    assert {f.group for f in suite.select("quick", "norm,loss")} == {"norm", "loss"}
    assert {f.kind for f in suite.select("quick", "kernels")} == {"kernels"}
    assert "startup.cold" in [f.name for f in suite.select("full", "startup")]
    assert "startup.cold" not in [f.name for f in suite.select("quick", "startup")]
    with pytest.raises(suite.BenchError, match="unknown figures or groups nope"):
        suite.select("quick", "norm,nope")
    with pytest.raises(suite.BenchError, match="no figure of the quick suite"):
        suite.select("quick", "startup.cold")


def test_registry_is_consistent():
    names = [f.name for f in suite.FIGURES]
    assert len(names) == len(set(names))
    for f in suite.FIGURES:
        assert f.workload in suite.WORKLOADS and f.kind in suite.KINDS and set(f.suites) <= set(suite.SUITES)
        assert f.unit in ("s", "MB", "tok/s", "samples/s")
    assert suite.BY_NAME["w-train.speed"].ratio(2.0, 1.0) == 0.5  # torch 1 s a step, ours 2 s: 0.5x
    assert suite.BY_NAME["w-decode.speed"].ratio(400.0, 200.0) == 2.0  # tokens/s: ours / reference


def test_table_shows_ratios_skips_and_verdicts():
    res = results({"a.x": 1.5, "w.speed": "skipped: torch not importable"})
    table = suite.format_table(res, suite.compare(res, baseline({"a.x": 2.0})))
    assert "a.x" in table and "1.5x" in table and "REGRESSED" in table
    assert "skipped: torch not importable" in table


def test_the_checked_in_baselines_match_the_registry():
    """CI's baselines (perf/baselines/, one per CPU): each holds exactly the quick suite's figures and is named
    for the CPU it records, so that --write-baseline into the folder replaces it."""
    paths = sorted((ROOT / suite.BASELINES).glob("*.json"))
    assert paths, f"no baseline in {suite.BASELINES}"
    quick = {f.name for f in suite.select("quick")}
    for path in paths:
        base = suite.load_json(str(path), "baseline")
        assert set(base["figures"]) == quick, f"{path.name}: refresh it on its CPU: " + suite.BASELINE_COMMAND
        assert base["suite"] == "quick" and base["rule"] and suite.cpu_key(base["machine"]["cpu"])
        assert path.name.startswith(suite.cpu_slug(base["machine"]["cpu"])), path.name
        for name, e in base["figures"].items():
            if e.get("gated"):
                assert 0 < e["tolerance"] <= base["rule"]["cap"] and e["ratio"] > 0, (path.name, name)


# --- the command ------------------------------------------------------------------------------------------


def run_bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


@pytest.mark.parametrize("ratio, code, line", [(1000.0, 1, "perf gate FAILED"), (0.0001, 0, "perf gate passed")])
def test_bench_compare_against_a_synthetic_baseline(tmp_path, ratio, code, line):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline({"optim.adamw": ratio}, machine={"cpu": suite.this_cpu()})))
    out = tmp_path / "results.json"
    res = run_bench("--only", "optim.adamw", "--compare", str(path), "--json", str(out))
    assert res.exit_code == code, res.output
    assert line in res.output and "optim.adamw" in res.output
    data = json.loads(out.read_text())
    fig = data["figures"]["optim.adamw"]
    assert fig["n"] == len(fig["runs"]) >= 2 and fig["ratio"] > 0
    assert data["machine"]["versions"]["numba"] and data["compare"]["passed"] is (code == 0)
    if code:  # measured once more before failing
        assert "once more" in res.output and data["remeasured"] == ["optim.adamw"]


def test_bench_list_and_one_line_errors(tmp_path):
    res = run_bench("--list")
    assert res.exit_code == 0 and "w-train.speed" in res.output and "startup.cold" in res.output
    res = run_bench("--only", "nope")
    assert res.exit_code == 2 and res.output.startswith("error: --only: unknown figures or groups nope")
    assert len(res.output.splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    res = run_bench("--only", "optim", "--compare", str(bad))
    assert res.exit_code == 2 and "expected the JSON of qorus bench" in res.output


def test_bench_runs_from_the_package_alone(tmp_path):
    """A copy of qorus_jit/ alone (what a wheel installs: no perf/, no tests/) run from a folder outside the
    checkout lists the figures and measures one."""
    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "qorus_jit", site / "qorus_jit")  # with numba's caches, whose stamps copy2 keeps
    code = ("import importlib.util, sys, qorus_jit\n"
            "assert importlib.util.find_spec('perf') is None, 'perf/ is importable'\n"
            "print('package:', qorus_jit.__file__)\n"
            "from qorus_jit.cli import main\n"
            "main(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def qorus(*args):
        return subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    res = qorus("bench", "--list")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"package: {site / 'qorus_jit' / '__init__.py'}" in res.stdout
    assert "w-train.speed" in res.stdout and "optim.adamw" in res.stdout
    res = qorus("bench", "--only", "optim.adamw", "--json", "out.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((work / "out.json").read_text())["figures"]["optim.adamw"]["ratio"] > 0


def test_breakdown_prints_the_step_breakdown_after_the_table(monkeypatch):
    from qorus_jit.bench import breakdown

    monkeypatch.setattr(suite, "run_suite", lambda name_suite, only, threads, log=None: results({"a.x": 1.0}))
    monkeypatch.setattr(breakdown, "main_table", lambda threads: f"W-train step breakdown at {threads} threads")
    lines = []
    assert suite.bench(only="optim", breakdown=True, threads=1, out=lines.append) == 0
    assert lines[-1] == "W-train step breakdown at 1 threads" and "a.x" in lines[0]


def test_the_noise_of_a_median_is_half_the_range_of_its_runs():
    """A figure whose single runs jump but whose round medians agree gets k * within / 2, not k * within."""
    rounds = [results({"a.jumpy": r}, spread=0.3) for r in (2.0, 2.01, 1.99)]
    e = suite.make_baseline(rounds)["figures"]["a.jumpy"]
    assert e["within_spread"] == pytest.approx(0.3) and e["between_spread"] == pytest.approx(0.01)
    assert e["tolerance"] == pytest.approx(suite.RULE["k"] * 0.3 / 2) and e["gated"]


def test_model_figures_are_skipped_without_torch(monkeypatch):
    monkeypatch.setattr(suite, "_missing", lambda *modules: "torch not importable")
    res = suite.run_suite("quick", "w-train,mlp,startup", log=lambda line: None)
    assert set(res["figures"]) == {"w-train.speed", "w-train.memory", "mlp.train", "startup.warm"}
    assert all(e["skipped"] == "torch not importable" for e in res["figures"].values())
    assert suite.compare(res, baseline({"w-train.speed": 1.0, "mlp.train": 1.0}))["passed"]


def test_bench_threads_beyond_the_machine_is_a_usage_error():
    res = run_bench("--only", "optim", "--threads", "4096")
    assert res.exit_code == 2 and res.output.startswith("error: --threads:")


def test_a_figure_whose_reference_library_is_missing_is_skipped_with_the_install_hint(monkeypatch):
    from qorus_jit.bench import bench_softmax

    monkeypatch.setattr(bench_softmax, "activation_rows", lambda N, C, kw: [])  # as without scipy
    monkeypatch.setattr(suite.importlib.util, "find_spec", lambda name: None)
    res = suite.run_suite("full", "act.gelu", log=lambda line: None)
    assert res["figures"]["act.gelu"]["skipped"] == 'scipy not importable (pip install "qorus-jit[test]")'
    assert "act.gelu" in suite.format_table(res) and "Traceback" not in suite.format_table(res)


# --- baselines per CPU ------------------------------------------------------------------------------------

XEON = {"model": "Intel(R) Xeon(R) Processor", "llvm_target": "emeraldrapids",
        "simd": ["sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw"]}
EPYC = {"model": "AMD EPYC", "llvm_target": "znver1", "simd": ["sse4.2", "avx", "avx2", "fma", "f16c"]}


def write_baseline(folder: Path, name: str, cpu: dict, ratio: float = 2.0, **extra) -> Path:
    path = folder / name
    path.write_text(json.dumps(baseline({"a.x": ratio}, machine={"cpu": cpu, "threads": {"cpu_count": 2}},
                                        **extra)))
    return path


def test_baseline_file_names_carry_the_cpu_model_and_widest_simd():
    assert suite.cpu_slug(XEON) == "intel-xeon-processor-avx512"
    assert suite.cpu_slug(EPYC) == "amd-epyc-avx2"
    assert suite.cpu_slug({"model": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "simd": ["avx"]}) == \
        "intel-core-i7-8700-cpu-3-20ghz-avx"
    assert suite.baseline_name(EPYC) == "amd-epyc-avx2.json"
    assert suite.baseline_name(EPYC, "full", 1) == "amd-epyc-avx2-full-1t.json"
    assert suite.cpu_key(EPYC) != suite.cpu_key(EPYC | {"simd": EPYC["simd"] + ["avx512f"]})
    assert suite.cpu_key(EPYC) == suite.cpu_key(EPYC | {"llvm_target": "other", "simd": EPYC["simd"][::-1]})
    assert suite.cpu_key({"simd": ["avx"]}) is None


def test_a_folder_of_baselines_gives_the_one_of_this_cpu(tmp_path):
    write_baseline(tmp_path, "intel-xeon-processor-avx512.json", XEON, 1.0)
    mine = write_baseline(tmp_path, "amd-epyc-avx2.json", EPYC, 2.0, time="2026-01-01T00:00:00")
    write_baseline(tmp_path, "amd-epyc-avx2-1t.json", EPYC, 3.0, threads=1)
    write_baseline(tmp_path, "amd-epyc-avx2-full.json", EPYC, 4.0, suite="full")
    pick = suite.find_baseline(str(tmp_path), EPYC)
    assert pick.path == str(mine) and pick.data["figures"]["a.x"]["ratio"] == 2.0
    assert suite.find_baseline(str(tmp_path), EPYC, threads=1).data["figures"]["a.x"]["ratio"] == 3.0
    assert suite.find_baseline(str(tmp_path), EPYC, suite="full").data["figures"]["a.x"]["ratio"] == 4.0
    assert suite.find_baseline(str(tmp_path), XEON).data["figures"]["a.x"]["ratio"] == 1.0
    # same CPU, suite and threads in two files: the one named for the CPU, then the newest
    write_baseline(tmp_path, "copy.json", EPYC, 5.0, time="2027-01-01T00:00:00")
    assert suite.find_baseline(str(tmp_path), EPYC).path == str(mine)
    mine.unlink()
    assert suite.find_baseline(str(tmp_path), EPYC).data["figures"]["a.x"]["ratio"] == 5.0


def test_no_baseline_of_this_cpu_is_said_in_one_line(tmp_path):
    folder = tmp_path / "baselines"
    folder.mkdir()
    write_baseline(folder, "intel-xeon-processor-avx512.json", XEON)
    pick = suite.find_baseline(str(folder), EPYC)
    assert pick.data is None and pick.path is None
    msg = suite.no_baseline_message(pick, str(folder))
    assert len(msg.splitlines()) == 1 and msg.startswith("perf gate NOT RUN: no baseline in")
    assert "AMD EPYC, avx2" in msg and "Intel(R) Xeon(R) Processor, avx512" in msg
    assert msg.endswith(f"qorus bench --suite quick --write-baseline {folder}/")
    # a file recorded on another CPU gates nothing either; an empty folder has none
    xeon_file = folder / "intel-xeon-processor-avx512.json"
    pick = suite.find_baseline(str(xeon_file), EPYC)
    assert pick.data is None and "was recorded on another CPU (Intel(R) Xeon(R) Processor, avx512" in pick.why_none
    assert suite.no_baseline_message(pick, str(xeon_file)).endswith(f"--write-baseline {folder}/")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "it has: none" in suite.find_baseline(str(empty), EPYC).why_none
    # a file that records no CPU (hand-made) is used as given; a missing path or a broken file is a usage error
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"figures": {"a.x": {"ratio": 1.0}}}))
    assert suite.find_baseline(str(bare), EPYC).path == str(bare)
    with pytest.raises(suite.BenchError, match="no such file or folder"):
        suite.find_baseline(str(tmp_path / "nope"), EPYC)
    (folder / "broken.json").write_text("[]")
    with pytest.raises(suite.BenchError, match="expected the JSON of qorus bench"):
        suite.find_baseline(str(folder), EPYC)


@pytest.fixture
def fake_run(monkeypatch):
    """bench() on this 'EPYC' with a suite run of one figure, a.x, at ratio 1.0 (no benchmark runs)."""
    monkeypatch.setattr(suite, "this_cpu", lambda: EPYC)
    monkeypatch.setattr(suite, "run_suite", lambda name_suite, only, threads, log=None:
                        results({"a.x": 1.0}) | {"machine": {"cpu": EPYC, "threads": {"cpu_count": 2}}})


def test_the_gate_without_a_baseline_of_this_cpu_prints_the_figures_and_exits_0(tmp_path, fake_run):
    write_baseline(tmp_path, "intel-xeon-processor-avx512.json", XEON, ratio=1000.0)  # would fail the gate
    lines = []
    code = suite.bench(baseline=str(tmp_path), json_out=str(tmp_path / "out.json"), out=lines.append)
    assert code == 0
    text = "\n".join(lines)
    assert "a.x" in text and "REGRESSED" not in text and "perf gate FAILED" not in text
    not_run = [line for line in lines if line.startswith("perf gate NOT RUN")]
    assert len(not_run) == 1 and "--write-baseline" in not_run[0]
    assert json.loads((tmp_path / "out.json").read_text())["compare"] == {"passed": None, "baseline": None,
                                                                          "not_run": not_run[0]}


def test_the_gate_compares_against_this_cpus_baseline_in_the_folder(tmp_path, fake_run):
    write_baseline(tmp_path, "intel-xeon-processor-avx512.json", XEON, ratio=0.001)  # would pass
    mine = write_baseline(tmp_path, "amd-epyc-avx2.json", EPYC, ratio=1000.0)
    lines = []
    assert suite.bench(baseline=str(tmp_path), retry=False, out=lines.append) == 1
    assert lines[-1].startswith(f"perf gate FAILED against {mine}")


def test_write_baseline_into_a_folder_names_the_file_for_this_cpu(tmp_path, fake_run):
    folder = tmp_path / "baselines"
    lines = []
    assert suite.bench(write_baseline=f"{folder}/", rounds=2, out=lines.append) == 0
    written = folder / "amd-epyc-avx2.json"
    assert f"wrote {written}" in "\n".join(lines)
    assert suite.find_baseline(str(folder), EPYC).path == str(written)
    # a file of the same name recorded on a CPU with other SIMD features is kept: this one gets a hash suffix
    other = EPYC | {"simd": EPYC["simd"] + ["avx512vnni"]}
    written.write_text(json.dumps(baseline({"a.x": 1.0}, machine={"cpu": other})))
    target = Path(suite.baseline_target(str(folder), EPYC))
    assert target.parent == folder and target.name.startswith("amd-epyc-avx2-") and target != written
    assert suite.baseline_target(str(tmp_path / "one.json"), EPYC) == str(tmp_path / "one.json")


def test_first_use_figures_pair_each_cold_launch_with_the_warm_one(monkeypatch):
    """startup.train_cold and startup.generate_cold: full suite only, reported and never gated; ours is the
    cold launch, the reference the same launch on the warm cache (ratio warm / cold)."""
    from qorus_jit.bench import model_startup

    for name in ("startup.train_cold", "startup.generate_cold"):
        f = suite.BY_NAME[name]
        assert f.suites == ("full",) and not f.gated and f.workload == "first-use" and f.unit == "s"
    fake = {"train_warm": [2.0], "generate_warm": [1.0], "train_cold": [50.0], "generate_cold": [40.0],
            "cold_cache_files": [60, 30]}
    monkeypatch.setattr(model_startup, "measure_cli", lambda **kw: fake)
    res = suite.run_suite("full", "startup.train_cold,startup.generate_cold", log=lambda line: None)
    train, gen = res["figures"]["startup.train_cold"], res["figures"]["startup.generate_cold"]
    assert (train["ours"], train["ref_value"], train["ratio"]) == (50.0, 2.0, pytest.approx(2.0 / 50.0))
    assert (gen["ours"], gen["ref_value"], gen["ratio"]) == (40.0, 1.0, pytest.approx(1.0 / 40.0))
    base = suite.make_baseline([res])
    assert not base["figures"]["startup.train_cold"]["gated"]


def test_a_cold_launch_reads_and_writes_only_its_numba_cache_dir(tmp_path):
    """The environment of a cold launch sends every cache folder of the package into its NUMBA_CACHE_DIR
    (numba's locators as sysinfo.cache_dirs finds them), so the machine's cache is neither read nor cleared."""
    from qorus_jit.bench import model_startup

    env = model_startup._cli_env(1, str(tmp_path))
    code = "from qorus_jit.sysinfo import cache_dirs; print('\\n'.join(map(str, cache_dirs())))"
    dirs = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()
    assert len(dirs) >= 10 and all(Path(d).is_relative_to(tmp_path) for d in dirs)
    warm = model_startup._cli_env(1, None)
    assert "NUMBA_CACHE_DIR" not in warm and warm["NUMBA_NUM_THREADS"] == "1"


def test_first_use_launches_reach_the_first_step_and_the_first_token(tmp_path):
    """The timing of a launch on the warm cache (no cold one: that compiles for minutes): qorus train's first
    step is seen in its metrics and qorus generate's first token on its output; both processes are stopped."""
    from qorus_jit.bench import model_startup

    run_dir = model_startup.make_run_folder(tmp_path)
    assert (run_dir / "run.json").is_file()
    env = model_startup._cli_env(1, None)
    t = model_startup.train_first_step(tmp_path, env, "first")
    assert t > 0 and (tmp_path / "first" / "metrics.jsonl").read_text().startswith('{"step": 1')
    assert model_startup.generate_first_token(run_dir, env) > 0
    with pytest.raises(RuntimeError, match="exited 2 before its first token"):
        model_startup.generate_first_token(tmp_path / "no-such-run", env)


# --- timing in pairs --------------------------------------------------------------------------------------


def test_paired_times_alternates_the_sides_and_takes_the_median_of_the_pairs_ratios(monkeypatch):
    """Two fake sides on a fake clock, each call advancing it by a cost chosen per pair: the pairs run back to
    back, the side going first alternating, and the speedup is the median of the pairs' ratios (2.5 here),
    not the ratio of the medians (4 / 2 = 2)."""
    from qorus_jit.bench import _timing

    clock, calls = [0.0], []
    costs = {"ours": [0.1, 0.1, 1.0, 2.0, 10.0], "ref": [0.1, 0.1, 3.0, 5.0, 4.0]}  # 2 warm-up calls, then 3 pairs

    def side(name):
        def call():
            clock[0] += costs[name][len([c for c in calls if c == name])]
            calls.append(name)
        return call

    monkeypatch.setattr(_timing.time, "perf_counter", lambda: clock[0])
    ours_s, ref_s, ratios = _timing.paired_times(side("ours"), side("ref"), repeat=3, warmup=2, min_time=0.0)
    assert calls == ["ours", "ref"] * 2 + ["ours", "ref", "ref", "ours", "ours", "ref"]
    assert (ours_s, ref_s) == (2.0, 4.0)
    assert ratios == pytest.approx([3.0, 2.5, 0.4])
    row = _timing.record("op", "(1,)", (ours_s, ref_s, ratios), "numpy")
    assert row["speedup"] == pytest.approx(2.5) and row["speedup_spread"] == pytest.approx([0.4, 3.0])
    assert (row["ours_s"], row["ref_s"], row["ref"]) == (2.0, 4.0, "numpy")


def test_a_kernel_runs_ratio_is_the_median_of_its_pairs():
    """The suite takes a kernel run's ratio from its pairs (ref / ours), a model run's from its one pair."""
    fig = suite.BY_NAME["optim.adamw"]
    e = suite._summary(fig, [(2.0, 4.0, [3.0, 2.5, 0.4]), (1.0, 1.0, [1.0])])
    assert [r["ratio"] for r in e["runs"]] == pytest.approx([2.5, 1.0])
    assert e["runs"][0]["pair_ratios"] == [3.0, 2.5, 0.4] and e["ratio"] == pytest.approx(1.75)
    e = suite._summary(suite.BY_NAME["w-train.speed"], [(2.0, 1.0), (1.0, 1.5)])
    assert [r["ratio"] for r in e["runs"]] == pytest.approx([0.5, 1.5])


def test_fresh_processes_alternate_pair_by_pair(monkeypatch):
    """W-train's processes run ours, torch, torch, ours, ...; the speedup is the median of the pairs' ratios."""
    from qorus_jit.bench import train

    order, step = [], {train.OURS: iter([1.0, 2.0, 10.0]), train.TORCH: iter([3.0, 5.0, 4.0])}

    def fake_run_side(code, steps, threads):
        order.append("ours" if code == train.OURS else "torch")
        return {"step_s": next(step[code]), "peak_rss_MB": 100.0}

    monkeypatch.setattr(train, "run_side", fake_run_side)
    res = train.measure(steps=1, repeat=3, threads=1, torch=True)
    assert order == ["ours", "torch", "torch", "ours", "ours", "torch"]
    s = train.summary(res)
    assert s["speedup_vs_torch"] == pytest.approx(2.5)  # pairs 3, 2.5, 0.4 (the medians' ratio: 4 / 2)
    assert (s["speedup_min"], s["speedup_max"]) == pytest.approx((0.4, 3.0))


def test_w_train_with_compile_turns_three_sides(monkeypatch):
    """With torch.compile the three sides turn round by round; each reference's ratio is the median of the rounds'."""
    from qorus_jit.bench import train

    names = {train.OURS: "ours", train.TORCH: "torch", train.TORCH_COMPILE: "compile"}
    order, step = [], {"ours": iter([1.0, 2.0, 1.0]), "torch": iter([3.0, 4.0, 1.5]), "compile": iter([2.0, 2.0, 2.0])}

    def fake_run_side(code, steps, threads):
        order.append(names[code])
        return {"step_s": next(step[names[code]]), "peak_rss_MB": 100.0}

    monkeypatch.setattr(train, "run_side", fake_run_side)
    res = train.measure(steps=1, repeat=3, threads=1, torch=True, compile=True)
    assert order == ["ours", "torch", "compile", "torch", "compile", "ours", "compile", "ours", "torch"]
    s = train.summary(res)
    assert s["speedup_vs_torch"] == pytest.approx(2.0) and s["speedup_vs_compile"] == pytest.approx(2.0)
    assert (s["speedup_vs_compile_min"], s["speedup_vs_compile_max"]) == pytest.approx((1.0, 2.0))
    assert "torch.compile(LlamaForCausalLM" in train.TORCH_COMPILE


def test_start_up_runs_pair_each_side_with_the_other(monkeypatch, tmp_path):
    """startup: warm runs of ours and torch's in turn, the cold run beside one of torch's; first-use: each cold
    launch of a command beside a warm one, in turn first."""
    from qorus_jit.bench import model_startup

    order = []

    def fake_run_once(env=None, code=model_startup.CODE, threads=None):
        side = "torch" if code == model_startup.TORCH_CODE else "cold" if env else "warm"
        order.append(side)
        return dict.fromkeys(model_startup.KEYS, float(len(order)))

    monkeypatch.setattr(model_startup, "run_once", fake_run_once)
    rows = model_startup.measure(runs=3, fill=True, cold=True, torch=True)
    assert order == ["warm", "warm", "torch", "torch", "warm", "warm", "torch", "cold", "torch"]
    assert [len(rows[k]) for k in ("warm", "torch", "cold", "torch_cold")] == [3, 3, 1, 1]

    launches = []

    def fake_launch(cmd):
        def launch(*args):
            env = args[1]
            launches.append((cmd, "cold" if "NUMBA_CACHE_DIR" in env else "warm"))
            return float(len(launches))
        return launch

    monkeypatch.setattr(model_startup, "make_run_folder", lambda folder: folder / "tiny")
    monkeypatch.setattr(model_startup, "train_first_step", fake_launch("train"))
    monkeypatch.setattr(model_startup, "generate_first_token", fake_launch("generate"))
    monkeypatch.setattr(model_startup, "_cache_files", lambda folder: 1)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    res = model_startup.measure_cli(runs=2, cold=True, fill=True)
    assert launches == [("train", "warm"), ("generate", "warm"),  # the fill
                        ("train", "warm"), ("train", "cold"), ("generate", "warm"), ("generate", "cold"),
                        ("train", "cold"), ("train", "warm"), ("generate", "cold"), ("generate", "warm")]
    assert res["train_warm"] == [3.0, 8.0] and res["train_cold"] == [4.0, 7.0]
    assert res["generate_warm"] == [5.0, 10.0] and res["generate_cold"] == [6.0, 9.0]


def test_decode_benchmark_of_gpt2_against_transformers(monkeypatch):
    """``bench.decode --arch gpt2`` on a tiny GPT-2: the same greedy tokens as transformers' generate of the same
    weights, every figure there, and a token's bytes counting one row of the position table."""
    pytest.importorskip("transformers")
    from qorus_jit.bench import decode

    tiny = dict(dim=32, n_layers=2, n_heads=4, vocab_size=300, max_seq_len=64)
    monkeypatch.setitem(decode.SHAPES, "gpt2", tiny)
    monkeypatch.setattr(decode, "prefill_prompt", lambda: list(range(3, 40)))
    row = decode.measure(tokens=12, repeat=3, threads=1, dram=False, arch="gpt2")
    assert row["arch"] == "gpt2" and row["shape"] == tiny and row["same_tokens_as_transformers"] is True
    assert len(row["decode_runs"]) == len(row["transformers_decode_runs"]) == 3
    assert row["speedup_vs_transformers"] > 0 and row["fraction_of_bound"] > 0
    model = decode.build("gpt2")
    params = sum(p.nbytes for p in model.parameters().values())
    kv = 2 * 2 * 32 * 4 * (1 + 12 / 2)  # layers, dim, float32, the mean cached length of positions 1..11
    assert decode.bytes_per_token(model, 1, 11) == params - (64 - 1) * 32 * 4 + kv
    with pytest.raises(ValueError, match="arch"):
        decode.measure(arch="bert")
