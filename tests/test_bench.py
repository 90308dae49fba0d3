"""``qorus bench`` and the perf gate: the compare logic on synthetic results, the baseline's tolerances, and the
command on one tiny figure against synthetic baselines. No assertion here depends on how fast anything ran."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from perf import suite
from qorus_jit.cli import main

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

        def fake_run_suite(name_suite, only, threads, log=None, second=second, calls=calls):
            calls.append(only)
            return results({"a.x": second})

        monkeypatch.setattr(suite, "run_suite", fake_run_suite)
        res, outcome, again = suite.remeasure(first, base, threads=2)
        assert calls == [["a.x"]] and again == ["a.x"]
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


def test_the_checked_in_baseline_matches_the_registry():
    path = Path(suite.HERE) / "baseline.json"
    base = suite.load_json(str(path), "baseline")
    quick = {f.name for f in suite.select("quick")}
    assert set(base["figures"]) == quick, "refresh it: " + suite.BASELINE_COMMAND
    assert base["suite"] == "quick" and base["rule"] and base["machine"]["cpu"]
    for name, e in base["figures"].items():
        if e.get("gated"):
            assert 0 < e["tolerance"] <= base["rule"]["cap"] and e["ratio"] > 0, name


# --- the command ------------------------------------------------------------------------------------------


def run_bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


@pytest.mark.parametrize("ratio, code, line", [(1000.0, 1, "perf gate FAILED"), (0.0001, 0, "perf gate passed")])
def test_bench_compare_against_a_synthetic_baseline(tmp_path, ratio, code, line):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline({"optim.adamw": ratio})))
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


def test_bench_needs_a_source_checkout(monkeypatch, tmp_path):
    import qorus_jit.cli as cli

    monkeypatch.setattr(cli, "_repo_root", lambda: tmp_path)
    res = run_bench("--only", "optim")
    assert res.exit_code == 2
    assert res.output.startswith("error: qorus bench needs a source checkout") and len(res.output.splitlines()) == 1


def test_breakdown_without_its_module_is_a_clear_error(monkeypatch):
    real = suite.importlib.util.find_spec
    monkeypatch.setattr(suite.importlib.util, "find_spec", lambda n: None if n == "perf.breakdown" else real(n))
    with pytest.raises(suite.BenchError, match="perf/breakdown.py is not in this checkout"):
        suite.bench(only="optim", breakdown=True)


def test_the_noise_of_a_median_is_half_the_range_of_its_runs():
    """A figure whose single runs jump but whose round medians agree gets k * within / 2, not k * within."""
    rounds = [results({"a.jumpy": r}, spread=0.3) for r in (2.0, 2.01, 1.99)]
    e = suite.make_baseline(rounds)["figures"]["a.jumpy"]
    assert e["within_spread"] == pytest.approx(0.3) and e["between_spread"] == pytest.approx(0.01)
    assert e["tolerance"] == pytest.approx(suite.RULE["k"] * 0.3 / 2) and e["gated"]


def test_model_figures_are_skipped_without_torch(monkeypatch):
    monkeypatch.setattr(suite, "_torch_missing", lambda *modules: "torch not importable")
    res = suite.run_suite("quick", "w-train,mlp,startup", log=lambda line: None)
    assert set(res["figures"]) == {"w-train.speed", "w-train.memory", "mlp.train", "startup.warm"}
    assert all(e["skipped"] == "torch not importable" for e in res["figures"].values())
    assert suite.compare(res, baseline({"w-train.speed": 1.0, "mlp.train": 1.0}))["passed"]


def test_bench_threads_beyond_the_machine_is_a_usage_error():
    res = run_bench("--only", "optim", "--threads", "4096")
    assert res.exit_code == 2 and res.output.startswith("error: --threads:")
