"""The benchmark suite behind ``qorus bench``: the figures, their runner, the table, JSON and the perf gate.

Every figure is a ratio of our figure to a reference's measured in the same run, oriented so that above 1
means ours is better (reference time / our time, our rate / the reference's rate, reference memory / ours).
A figure is measured ``n`` times (kernels: ``n`` calls of the benchmark, each timing ours and the reference in
pairs of back-to-back samples, ``_timing.paired_times``, its ratio the median of the pairs'; model workloads:
``n`` pairs of fresh processes or calls, one of each side back to back, in turn first); the table shows the
median ratio and its spread. The
kernel benchmarks, model workloads and their references live in the other modules of ``qorus_jit.bench``;
this module picks the shapes. ``docs/perf.md`` lists every figure.

The gate (:func:`compare`) flags a figure whose ratio falls below its baseline ratio by more than the
figure's tolerance. :func:`make_baseline` sets the tolerances from the spread measured over several rounds
of the suite (:data:`RULE`). A baseline gates only the CPU it was recorded on: ``--compare`` takes a file or
a folder of baselines and picks the one of this CPU (:func:`find_baseline`); with none, the figures are
printed and the gate says on one line that it did not run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUITES = ("quick", "full")
KINDS = ("kernels", "models")

#: How a baseline's per-figure tolerance is set from the spread of its rounds (see :func:`make_baseline`).
#: Spreads are relative: (max - min) / median of the ratio. A round's figure is the median of its n runs; the
#: rounds' medians show how much that median moves ("between"); the runs within a round show how much one
#: run moves, and a median of n = 3 runs moves about half the range of its runs ("within / 2").
RULE = {
    "floor": 0.15,  # never tighter than 15%
    "k": 2.0,  # times the noise: max(between-round spread, median within-round spread / 2)
    "cap": 0.5,  # a figure that would need more than 50% is too noisy to gate: reported, not gated
    "text": "tolerance = max(floor, k * noise) with noise = max(spread of the rounds' median ratios, median "
            "spread of the runs within a round / 2), spreads being (max - min) / median; a figure whose tolerance "
            "would exceed cap is not gated. The gate fails a figure whose ratio < baseline ratio * (1 - t), "
            "t = min(cap, max(tolerance, this run's own spread / 2)), in two measurements in a row.",
}
#: A kernel figure measured again after a regression makes this many times the suite's runs: a median of 6 runs
#: instead of 3 (quick). softmax.fwd_bwd's single runs spread 2.4-3.1x on the shared AMD EPYC against its 15%.
RETRY_RUNS = 2
#: Above this share of the CPU taken by other processes during a workload, its figures are flagged unreliable.
BUSY = 0.2
#: The folder of CI's baselines in a source checkout, one file per CPU (docs/perf.md).
BASELINES = "perf/baselines/"
#: The command that records this CPU's baseline into that folder.
BASELINE_COMMAND = f"qorus bench --suite quick --write-baseline {BASELINES}"
#: How to install the references of the model figures and of GELU (torch, transformers, scipy).
INSTALL_HINT = 'pip install "qorus-jit[test]"'


class BenchError(ValueError):
    """A usage error (unknown figure, unreadable baseline): ``qorus bench`` prints it on one line."""


class Skipped(str):
    """Why a figure was not measured here (e.g. torch is not importable)."""


class Failed(str):
    """The error a figure's workload raised."""


@dataclass(frozen=True)
class Figure:
    """One figure of the suite. ``row`` and ``shape`` pick its value among its workload's rows: the row's name
    and a prefix of the row's shape (kernel benchmarks, whose shapes may end in a thread tag), or ``row``
    alone (model workloads, whose rows carry no shape)."""

    name: str  # "<group>.<figure>", e.g. "norm.rmsnorm_fwd"
    kind: str  # "kernels" or "models"
    workload: str  # key of WORKLOADS
    row: str
    shape: str
    ref: str  # the reference's name
    unit: str  # of ours and ref: "s" (lower is better), "MB" (lower), "tok/s", "samples/s" (higher)
    what: str
    suites: tuple[str, ...] = SUITES
    gated: bool = True  # may be gated when in the baseline (still subject to RULE's cap)

    @property
    def group(self) -> str:
        """The group of the figure: its name up to the first dot (``norm`` for ``norm.rmsnorm_fwd``)."""
        return self.name.split(".")[0]

    @property
    def lower_is_better(self) -> bool:
        """Whether a lower value is better: absolute figures in seconds or MB (ratios are oriented so that higher
        is better)."""
        return self.unit in ("s", "MB")

    def ratio(self, ours: float, ref: float) -> float:
        """Oriented so that above 1 means ours is better."""
        return ref / ours if self.lower_is_better else ours / ref


@dataclass
class Context:
    """What a workload needs to know: the suite, the thread count and how many runs to make (0: the suite's,
    3 quick, 5 full)."""

    suite: str
    threads: int
    runs: int = 0

    def __post_init__(self):
        self.runs = self.runs or (3 if self.suite == "quick" else 5)

    @property
    def full(self) -> bool:
        """Whether this is the full suite (more repeats and figures) rather than the quick one."""
        return self.suite == "full"

    def kernel_kw(self) -> dict:
        """``_timing.paired_times`` settings of one run of a kernel benchmark."""
        return dict(repeat=5, warmup=1, min_time=0.03) if not self.full else dict(repeat=7, warmup=2, min_time=0.05)


def _kernel(rows_fn: Callable[[Context, list[Figure]], list[dict]]):
    """A workload calling a kernel benchmark ``ctx.runs`` times: (row name, shape) -> [(ours_s, ref_s, the
    row's paired ratios), ...]."""

    def workload(ctx: Context, wanted: list[Figure]) -> dict:
        got: dict = {}
        for _ in range(ctx.runs):
            for r in rows_fn(ctx, wanted):
                if "skipped" in r:  # {"name", "shape": "", "skipped": why}: a row whose reference is missing
                    got[(r["name"], r["shape"])] = Skipped(r["skipped"])
                else:
                    got.setdefault((r["name"], r["shape"]), []).append((r["ours_s"], r["ref_s"], r["pair_ratios"]))
        return got

    return workload


def _wants(wanted: list[Figure], *rows: str) -> bool:
    return any(f.row in rows for f in wanted)


# --- kernel workloads -------------------------------------------------------------------------------------


def _matmul(ctx, wanted):
    from qorus_jit.bench import bench_matmul

    rows = []
    for route in ("blas", "numba"):
        keep = {(f.row.removesuffix(f" [{route}]"), f.shape) for f in wanted if f.row.endswith(f"[{route}]")}
        if keep:
            # quick's repeats in both suites: the suite repeats the whole benchmark ctx.runs times
            rows += bench_matmul.run(quick=True, select=lambda name, shape, keep=keep: (name, shape) in keep,
                                     routes=(route,), one_count=True)
    return rows


def _attention(ctx, wanted):
    import numpy as np

    from qorus_jit.bench import bench_attention as ba

    rng, kw, tag = np.random.default_rng(0), ctx.kernel_kw(), f" {ctx.threads}T"
    shapes = {f.shape for f in wanted}
    rows = []
    if any(s.startswith("B4 T256") for s in shapes):
        rows += ba.train_rows(4, 256, 6, 6, 48, True, rng, kw, tag)
    if any(s.startswith("B1 T512") for s in shapes):
        rows += ba.train_rows(1, 512, 8, 2, 64, True, rng, kw, tag)
    if any(s.startswith("B4 H6 Hkv6 D48 len700") for s in shapes):
        rows.append(ba.decode_row(4, 1024, 6, 6, 48, 700, rng, kw, tag))
    return rows


def _norm(ctx, wanted):
    from qorus_jit.bench import bench_norm

    rows, shapes = [], {f.shape for f in wanted}
    for N, C in ((4096, 768), (16384, 288)):
        if f"({N}, {C})" in shapes:
            rows += bench_norm.norm_rows(N, C, ctx.kernel_kw())
    if _wants(wanted, "rope forward rotate-half"):
        rows += bench_norm.rope_rows(4, 256, 8, 64, ctx.kernel_kw())
    return rows


def _softmax(ctx, wanted):
    from qorus_jit.bench import bench_softmax as bs

    rows, shapes, kw = [], {f.shape for f in wanted}, ctx.kernel_kw()
    for N, C in ((4096, 1024), (256, 32000)):
        if f"({N}, {C})" in shapes and _wants(wanted, "softmax forward", "softmax forward+backward"):
            rows += bs.softmax_rows(N, C, kw)
    if _wants(wanted, "causal softmax forward+backward"):
        rows += bs.causal_rows(48, 256, kw)
    if any(f.group == "act" for f in wanted):
        rows += bs.activation_rows(2048, 768, kw)
        why = _missing("scipy")  # GELU's reference; activation_rows leaves the row out without it
        if why:
            rows.append({"name": "gelu forward", "shape": "", "skipped": why})
    return rows


def _loss(ctx, wanted):
    from qorus_jit.bench import bench_loss

    rows = []
    for N, V in bench_loss.SHAPES:
        if f"({N}, {V})" in {f.shape for f in wanted}:
            rows += bench_loss.cross_entropy_rows(N, V, ctx.kernel_kw())
    return rows


def _optim(ctx, wanted):
    from qorus_jit.bench import bench_optim

    return bench_optim.adamw_rows(bench_optim.SIZES[0], ctx.kernel_kw())


# --- model workloads --------------------------------------------------------------------------------------


def _missing(*modules: str) -> str | None:
    """Why a figure whose reference needs ``modules`` is skipped here (one line), or None when all import."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not importable ({INSTALL_HINT})" if missing else None


def _w_train(ctx, wanted):
    from qorus_jit.bench import train

    why = _missing("torch", "transformers")
    if why:
        return {("speed", ""): Skipped(why), ("memory", ""): Skipped(why)}
    steps, repeat = (10, 3) if ctx.full else (4, 2)
    res = train.measure(steps, repeat, ctx.threads, torch=True)
    return {("speed", ""): list(zip(res["ours_step_s"], res["torch_step_s"], strict=True)),
            ("memory", ""): list(zip(res["ours_peak_rss_MB"], res["torch_peak_rss_MB"], strict=True))}


def _w_decode(ctx, wanted):
    from qorus_jit.bench import decode

    why = _missing("torch", "transformers")
    tokens, repeat = (200, 5) if ctx.full else (100, 3)
    res = decode.measure(tokens, repeat, ctx.threads, with_reference=why is None, dram=False)
    out = {("bound", ""): list(zip(res["decode_runs"], res["bound_runs"], strict=True))}
    if why:
        out[("speed", "")] = out[("prefill", "")] = Skipped(why)
    else:
        out[("speed", "")] = list(zip(res["decode_runs"], res["transformers_decode_runs"], strict=True))
        out[("prefill", "")] = list(zip(res["prefill_runs"], res["transformers_prefill_runs"], strict=True))
    return out


def _mlp(ctx, wanted):
    from qorus_jit.bench import mlp_train

    why = _missing("torch")
    if why:
        return {("train", ""): Skipped(why)}
    steps, repeat = (200, 5) if ctx.full else (100, 3)
    res = mlp_train.measure(steps, repeat, ctx.threads, torch=True)
    return {("train", ""): list(zip(res["ours_samples_per_s"], res["torch_samples_per_s"], strict=True))}


def _startup(ctx, wanted):
    from qorus_jit.bench import model_startup

    why = _missing("torch", "transformers")
    if why:
        return {("warm", ""): Skipped(why), ("cold", ""): Skipped(why)}
    cold = _wants(wanted, "cold")
    res = model_startup.measure(runs=5 if ctx.full else 3, threads=ctx.threads, fill=True, cold=cold, torch=True)
    ref = [r["total_s"] for r in res["torch"]]
    out = {("warm", ""): list(zip((r["total_s"] for r in res["warm"]), ref, strict=True))}
    if cold:
        out[("cold", "")] = list(zip((r["total_s"] for r in res["cold"]), (r["total_s"] for r in res["torch_cold"]),
                                     strict=True))
    return out


def _first_use(ctx, wanted):
    """The command line's first use on an empty numba cache, against the same launch on the warm cache (each
    cold launch paired with a warm one)."""
    from qorus_jit.bench import model_startup

    res = model_startup.measure_cli(runs=1, threads=ctx.threads, cold=True, fill=True)
    return {(cmd, ""): list(zip(res[f"{cmd}_cold"], res[f"{cmd}_warm"], strict=True)) for cmd in ("train", "generate")}


def _load(ctx, wanted):
    from qorus_jit.bench import load
    from qorus_jit.core.numerics import set_num_threads

    which = [f.row for f in wanted]
    try:
        res = load.measure(rounds=ctx.runs + 2, tokens=200 if ctx.full else 100, which=which, log=lambda s: None)
        return {(name, ""): list(zip(res[name]["runs"]["auto"], res[name]["runs"][str(res[name]["best_fixed"])],
                                     strict=True)) for name in which}
    finally:
        set_num_threads(ctx.threads)  # the suite's count, fixed, for the figures after these


#: name -> (function(ctx, wanted figures) -> {(row, shape): runs | Skipped}), in the order they run: kernels in
#: this process first, then decode (ours here, the reference in a fresh process), then fresh-process workloads.
WORKLOADS: dict[str, Callable] = {
    "matmul": _kernel(_matmul), "attention": _kernel(_attention), "norm": _kernel(_norm),
    "softmax": _kernel(_softmax), "loss": _kernel(_loss), "optim": _kernel(_optim),
    "w-decode": _w_decode, "mlp": _mlp, "w-train": _w_train, "startup": _startup, "first-use": _first_use,
    "load": _load,
}

_LIN = "x (2048, 256) @ W (768, 256).T + b"
_LINB = "dout (2048, 768), x (2048, 256), W (768, 256)"
_QK = "(32, 256, 64) @ (32, 256, 64).T"
_ATT = "B4 T256 H6 Hkv6 D48 causal"
_FULL = ("full",)
_W_TRAIN = "Llama dim 256, 4 layers, 8 heads, hidden 768, vocab 256, batch 8 x 256"
_STORIES = "stories15M: dim 288, 6 layers, vocab 32000"


def _k(name, workload, row, shape, what, ref="numpy", suites=SUITES, gated=True):
    return Figure(name, "kernels", workload, row, shape, ref, "s", what, suites, gated)


FIGURES: list[Figure] = [
    _k("matmul.linear_fwd", "matmul", "linear forward [blas]", _LIN,
       "linear layer forward, BLAS route (the default)", "numpy @"),
    _k("matmul.linear_bwd", "matmul", "linear backward [blas]", _LINB,
       "linear layer backward (dx, dW, db accumulated), BLAS route", "numpy @"),
    _k("matmul.bmm_qk", "matmul", "bmm forward q @ k.T [numba]", _QK,
       "batched q @ k^T, numba route (the default for bmm)", "numpy @"),
    *(_k(f"matmul.square_{n}", "matmul", "matmul forward [blas]", f"({n}, {n}) @ ({n}, {n})",
         "square matrix product, BLAS route", "numpy @", _FULL) for n in (512, 1024, 2048)),
    _k("matmul.bmm_pv", "matmul", "bmm forward p @ v [numba]", "(32, 256, 256) @ (32, 256, 64)",
       "batched p @ v, numba route", "numpy @", _FULL),
    _k("matmul.bmm_bwd", "matmul", "bmm backward q @ k.T [numba]", _QK, "batched q @ k^T backward, numba route",
       "numpy @", _FULL),
    _k("matmul.linear_fwd_numba", "matmul", "linear forward [numba]", _LIN,
       "linear layer forward, numba route (not the default)", "numpy @", _FULL),
    _k("attention.fwd", "attention", "attention fwd", _ATT, "fused causal attention forward (out, logsumexp)",
       "numpy (materialized scores)"),
    _k("attention.fwd_bwd", "attention", "attention fwd+bwd", _ATT, "fused causal attention forward + backward",
       "numpy (materialized scores)"),
    _k("attention.gqa_fwd_bwd", "attention", "attention fwd+bwd", "B1 T512 H8 Hkv2 D64 causal",
       "grouped-query causal attention forward + backward", "numpy (materialized scores)", _FULL),
    _k("attention.decode", "attention", "attention decode", "B4 H6 Hkv6 D48 len700",
       "one query per row over a 700-position KV cache", "numpy", _FULL),
    _k("norm.rmsnorm_fwd", "norm", "rmsnorm forward", "(4096, 768)", "RMSNorm forward (saves rstd)"),
    _k("norm.rmsnorm_fwd_bwd", "norm", "rmsnorm forward+backward", "(4096, 768)", "RMSNorm forward + backward"),
    _k("norm.layernorm_fwd", "norm", "layernorm forward", "(4096, 768)", "LayerNorm forward (saves mean, rstd)"),
    _k("norm.layernorm_fwd_bwd", "norm", "layernorm forward+backward", "(4096, 768)",
       "LayerNorm forward + backward"),
    _k("norm.rmsnorm_fwd_bwd_288", "norm", "rmsnorm forward+backward", "(16384, 288)",
       "RMSNorm forward + backward, narrow rows", suites=_FULL),
    _k("norm.layernorm_fwd_bwd_288", "norm", "layernorm forward+backward", "(16384, 288)",
       "LayerNorm forward + backward, narrow rows", suites=_FULL),
    _k("norm.rope_fwd", "norm", "rope forward rotate-half", "(4, 256, 8, 64)", "rotary positions, rotate-half",
       suites=_FULL),
    _k("softmax.fwd", "softmax", "softmax forward", "(4096, 1024)", "row softmax forward"),
    _k("softmax.fwd_bwd", "softmax", "softmax forward+backward", "(4096, 1024)", "row softmax forward + backward"),
    _k("softmax.fwd_bwd_32000", "softmax", "softmax forward+backward", "(256, 32000)",
       "row softmax forward + backward, vocabulary-wide rows", suites=_FULL),
    _k("softmax.causal_fwd_bwd", "softmax", "causal softmax forward+backward", "(48, 256, 256)",
       "causal (masked) softmax forward + backward", suites=_FULL),
    *(_k(f"act.{key}", "softmax", f"{row} forward", "(2048, 768)", f"{row} activation forward",
         "scipy erf" if key == "gelu" else "numpy", _FULL)
      for key, row in (("silu", "silu"), ("gelu", "gelu"), ("gelu_tanh", "gelu tanh"), ("swiglu", "swiglu"))),
    _k("loss.ce_2048x256", "loss", "cross-entropy forward+backward", "(2048, 256)",
       "fused cross-entropy loss and dlogits, byte vocabulary"),
    _k("loss.ce_512x32000", "loss", "cross-entropy forward+backward", "(512, 32000)",
       "fused cross-entropy loss and dlogits, 32000-token vocabulary"),
    _k("optim.adamw", "optim", "adamw update", "1,048,576 float32 params",
       "one AdamW step in place (param, m, v from grad)", "numpy (same update)"),
    Figure("w-train.speed", "models", "w-train", "speed", _W_TRAIN, "torch eager + transformers", "s",
           "seconds per training step (forward, cross-entropy, backward, AdamW), fresh process a side"),
    Figure("w-train.memory", "models", "w-train", "memory", _W_TRAIN, "torch eager + transformers", "MB",
           "peak RSS of the training process"),
    Figure("w-decode.speed", "models", "w-decode", "speed", _STORIES + ", greedy, batch 1", "transformers generate",
           "tok/s", "decode tokens/s (KV cache), the reference in a fresh process"),
    Figure("w-decode.bound", "models", "w-decode", "bound", _STORIES + ", greedy, batch 1",
           "bandwidth bound", "tok/s", "decode tokens/s over the bound: streaming-read rate / bytes read per token",
           gated=False),  # the bound moved with the shared L3's other tenants (19-40 GB/s in one day): reported
    Figure("prefill.speed", "models", "w-decode", "prefill", _STORIES + ", 255-token prompt",
           "transformers forward", "tok/s", "tokens/s of one forward over the prompt (with KV cache)"),
    Figure("mlp.train", "models", "mlp", "train", "MLP [784, 256, 256, 10] ReLU, batch 128, AdamW", "torch eager",
           "samples/s", "training samples/s (forward, cross-entropy, backward, AdamW), fresh process a side"),
    Figure("startup.warm", "models", "startup", "warm", "W-train's Llama, one forward + backward",
           "torch + transformers fresh process", "s",
           "fresh process to the first forward + backward, numba cache warm"),
    Figure("startup.cold", "models", "startup", "cold", "W-train's Llama, one forward + backward",
           "torch + transformers fresh process", "s",
           "the same with an empty numba cache (every kernel compiles)", _FULL, gated=False),
    Figure("startup.train_cold", "models", "first-use", "train", "qorus train, the default run",
           "the same, numba cache warm", "s",
           "launch to the first step with an empty numba cache (the kernels compile first)", _FULL, gated=False),
    Figure("startup.generate_cold", "models", "first-use", "generate", "qorus generate, a default run's folder",
           "the same, numba cache warm", "s",
           "launch to the first token printed with an empty numba cache", _FULL, gated=False),
    Figure("load.decode", "models", "load", "decode", _STORIES + ", greedy, one busy process per core",
           "the best fixed thread count", "tok/s",
           "decode tokens/s with the default (auto) thread policy while other processes keep every core busy",
           _FULL, gated=False),
    Figure("load.train", "models", "load", "train", "W-train's Llama, batch 2 x 256, one busy process per core",
           "the best fixed thread count", "s",
           "seconds per Trainer step with the default (auto) thread policy while other processes keep every "
           "core busy", _FULL, gated=False),
]
BY_NAME = {f.name: f for f in FIGURES}


def select(suite: str = "quick", only: str | list[str] | None = None) -> list[Figure]:
    """The figures of ``suite``, narrowed by ``only``: figure names, groups (``norm``, ``w-train``) or kinds
    (``kernels``, ``models``), comma-separated or as a list. Unknown names raise :class:`BenchError`."""
    if suite not in SUITES:
        raise BenchError(f"--suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    figs = [f for f in FIGURES if suite in f.suites]
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only or []) if n.strip()]
    if not names:
        return figs
    groups = {f.group for f in FIGURES}
    unknown = [n for n in names if n not in BY_NAME and n not in groups and n not in KINDS]
    if unknown:
        raise BenchError(f"--only: unknown figures or groups {', '.join(unknown)}; groups: "
                         f"{', '.join(sorted(groups))}; kinds: {', '.join(KINDS)} (see qorus bench --list)")
    chosen = [f for f in figs if f.name in names or f.group in names or f.kind in names]
    if not chosen:
        raise BenchError(f"--only {','.join(names)}: no figure of the {suite} suite (qorus bench --list)")
    return chosen


def _summary(fig: Figure, got) -> dict:
    """A figure's entry in the results: what it is, and its median ratio, spread and raw runs (or why not)."""
    out = {"kind": fig.kind, "what": fig.what, "shape": fig.shape, "ref": fig.ref, "unit": fig.unit,
           "gated": fig.gated}
    if isinstance(got, Skipped):
        return out | {"skipped": str(got)}
    if isinstance(got, Failed):
        return out | {"error": str(got)}
    if not got:
        return out | {"error": "the workload produced no value for this figure"}
    runs = []
    for o, r, *pairs in got:  # (ours, ref): one pair; (ours, ref, ratios): a kernel run's pairs (ref / ours)
        run = {"ours": o, "ref": r, "ratio": fig.ratio(o, r)}
        if pairs:
            run.update(ratio=statistics.median(pairs[0]), pair_ratios=pairs[0])
        runs.append(run)
    return out | _stats(runs)


def _stats(runs: list[dict]) -> dict:
    ratios = [r["ratio"] for r in runs]
    med = statistics.median(ratios)
    return {"ratio": med, "ratio_min": min(ratios), "ratio_max": max(ratios),
            "spread": (max(ratios) - min(ratios)) / med if med else math.inf,
            "ours": statistics.median(r["ours"] for r in runs), "ref_value": statistics.median(r["ref"] for r in runs),
            "n": len(runs), "runs": runs}


def _pick(fig: Figure, got: dict):
    """The runs of ``fig`` among a workload's {(row, shape): runs}."""
    for (row, shape), runs in got.items():
        if row == fig.row and (shape == "" or shape.startswith(fig.shape)):
            return runs
    return None


def _machine() -> dict:
    from qorus_jit.sysinfo import collect

    return collect()


def run_suite(suite: str = "quick", only=None, threads: int = 2, log=None, runs: int = 0) -> dict:
    """Measure the figures of ``suite`` (narrowed by ``only``, see :func:`select`) at ``threads`` threads; ``runs``:
    how many times the kernel benchmarks and the load figures run (0: the suite's, :class:`Context`; the model
    workloads keep their own repeats).

    Returns the results: {'suite', 'threads', 'only', 'time', 'wall_s', 'workload_s', 'machine', 'node',
    'figures': {name: entry}}, each entry with 'ratio', 'ratio_min', 'ratio_max', 'spread', 'ours',
    'ref_value', 'n', 'runs' (or 'skipped' / 'error') and 'other_cpu': the share of the machine's CPU that
    other processes used during its workload (a busy machine makes figures unreliable). ``log(str)`` receives
    progress lines."""
    from qorus_jit.core.numerics import set_num_threads
    from qorus_jit.core.threads import cpu_sample, other_cpu

    figs = select(suite, only)
    try:
        set_num_threads(threads)
    except ValueError as e:
        raise BenchError(f"--threads: {e}") from None
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    ctx = Context(suite, threads, runs)
    results = {"suite": suite, "threads": threads, "only": select_names(only),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": _machine(), "node": platform.node()}
    figures, workload_s = {}, {}
    t_all = time.perf_counter()
    for name, fn in WORKLOADS.items():
        wanted = [f for f in figs if f.workload == name]
        if not wanted:
            continue
        log(f"[{time.perf_counter() - t_all:5.0f} s] {name}: {', '.join(f.name for f in wanted)}")
        t0, cpu0 = time.perf_counter(), cpu_sample()
        try:
            got = fn(ctx, wanted)
        except Exception as e:  # a broken workload fails its figures, not the whole suite
            got = {(f.row, ""): Failed(f"{type(e).__name__}: {str(e).strip()[-500:]}") for f in wanted}
        workload_s[name] = time.perf_counter() - t0
        other = other_cpu(cpu0, cpu_sample())
        for f in wanted:
            figures[f.name] = _summary(f, _pick(f, got)) | ({"other_cpu": other} if other is not None else {})
    results.update(wall_s=time.perf_counter() - t_all, workload_s=workload_s, figures=figures)
    return results


def select_names(only) -> list[str]:
    """``only`` (a comma-separated string, a list of names or None) as a list of stripped, non-empty names."""
    return [n.strip() for n in (only.split(",") if isinstance(only, str) else only or []) if n.strip()]


def pool(rounds: list[dict]) -> dict:
    """Several results of the same figures as one: every figure's runs together, and each round's ratio."""
    if len(rounds) == 1:
        return rounds[0]
    out = dict(rounds[-1])
    out.update(rounds=len(rounds), wall_s=sum(r["wall_s"] for r in rounds),
               round_wall_s=[r["wall_s"] for r in rounds], figures={})
    for name, last in rounds[-1]["figures"].items():
        per = [r["figures"].get(name, {}) for r in rounds]
        runs = [run for p in per for run in p.get("runs", [])]
        entry = {k: v for k, v in last.items() if k not in ("runs", "skipped", "error")}
        others = [p["other_cpu"] for p in per if "other_cpu" in p]
        if others:
            entry["other_cpu"] = max(others)
        if runs:
            entry |= _stats(runs) | {"round_ratios": [p["ratio"] for p in per if "ratio" in p]}
        else:
            entry |= {k: last[k] for k in ("skipped", "error") if k in last}
        out["figures"][name] = entry
    return out


# --- baseline and gate ------------------------------------------------------------------------------------


def make_baseline(rounds: list[dict], rule: dict = RULE) -> dict:
    """A baseline from one or more results of the same suite (see :data:`RULE`): per figure the median of the
    rounds' ratios, the between-round spread ``(max - min) / median`` of those ratios, the median within-round
    spread, the tolerance, whether the figure is gated and the largest CPU share other processes took."""
    last = rounds[-1]
    figures = {}
    for name, entry in last["figures"].items():
        per = [r["figures"].get(name, {}) for r in rounds]
        ratios = [p["ratio"] for p in per if "ratio" in p]
        base = {k: entry[k] for k in ("kind", "what", "shape", "ref", "unit") if k in entry}
        if len(ratios) < len(rounds):
            why = next((p.get("skipped") or p.get("error") for p in per if "ratio" not in p), "not measured")
            figures[name] = base | {"gated": False, "why_not_gated": f"not measured in every round: {why}"}
            continue
        ratio = statistics.median(ratios)
        between = (max(ratios) - min(ratios)) / ratio
        within = statistics.median(p["spread"] for p in per)
        tol = max(rule["floor"], rule["k"] * max(between, within / 2))
        fig = BY_NAME.get(name)
        gated = bool(entry.get("gated", True) and (fig is None or fig.gated) and tol <= rule["cap"])
        e = base | {"ratio": ratio, "round_ratios": ratios, "between_spread": between, "within_spread": within,
                    "tolerance": min(tol, rule["cap"]), "gated": gated,
                    "ours": statistics.median(p["ours"] for p in per),
                    "ref_value": statistics.median(p["ref_value"] for p in per)}
        others = [p["other_cpu"] for p in per if p.get("other_cpu") is not None]
        if others:
            e["other_cpu"] = max(others)
        if not gated:
            e["why_not_gated"] = ("reported only (its figure is not gated)" if fig is not None and not fig.gated
                                  else f"too noisy: tolerance {tol:.0%} > cap {rule['cap']:.0%}")
        figures[name] = e
    return {"kind": "qorus bench baseline", "suite": last["suite"], "threads": last["threads"], "rounds": len(rounds),
            "only": last.get("only", []), "time": last["time"], "round_wall_s": [r["wall_s"] for r in rounds],
            "machine": last["machine"], "node": last.get("node"), "rule": dict(rule), "command": BASELINE_COMMAND,
            "figures": figures}


def _tolerance(base: dict, cur: dict, rule: dict) -> float:
    """The allowed relative drop: the baseline's tolerance (or, for a baseline written by --json, one set from
    its own spread), widened to half this run's own spread (see :data:`RULE`), at most ``rule['cap']``."""
    tol = base.get("tolerance")
    if tol is None:
        tol = max(rule["floor"], rule["k"] * base.get("spread", 0.0) / 2)
    return min(rule["cap"], max(tol, cur.get("spread", 0.0) / 2))


def compare(results: dict, baseline: dict) -> dict:
    """The gate: each figure's verdict against ``baseline`` (a file of --write-baseline, or of --json).

    Verdicts: 'ok', 'improved', 'regressed' (ratio < baseline ratio * (1 - tolerance)), 'ungated' (in the
    baseline, not gated: change shown only), 'new' (not in the baseline), 'skipped' (not measured here, e.g.
    torch missing), 'error' (its workload failed), 'missing' (gated in the baseline, not in these results).
    The gate fails on 'regressed' and 'error', and on 'missing' when the results cover the whole suite of the
    baseline (no --only): a figure that vanished must be taken out of the baseline on purpose."""
    rule = baseline.get("rule", RULE)
    rows, bfigs = [], baseline.get("figures", {})
    for name, cur in results["figures"].items():
        base = bfigs.get(name)
        row = {"name": name, "ratio": cur.get("ratio"), "baseline": base.get("ratio") if base else None}
        if "skipped" in cur:
            row["verdict"] = "skipped"
        elif "error" in cur:
            row["verdict"] = "error"
        elif base is None or "ratio" not in base:
            row["verdict"] = "new"
        else:
            row["change"] = cur["ratio"] / base["ratio"] - 1
            if not base.get("gated", True):
                row["verdict"] = "ungated"
            else:
                tol = row["tolerance"] = _tolerance(base, cur, rule)
                row["verdict"] = ("regressed" if cur["ratio"] < base["ratio"] * (1 - tol) else
                                  "improved" if cur["ratio"] > base["ratio"] * (1 + tol) else "ok")
        rows.append(row)
    whole = not results.get("only") and results.get("suite") == baseline.get("suite")
    missing = [n for n, b in bfigs.items() if n not in results["figures"] and b.get("gated", True) and "ratio" in b]
    bad = {"regressed", "error"}
    failed = [r["name"] for r in rows if r["verdict"] in bad] + (missing if whole else [])
    gated = [r for r in rows if r["verdict"] in ("ok", "improved", "regressed")]
    warnings = []
    bm, cm = baseline.get("machine", {}), results.get("machine", {})
    if bm.get("cpu", {}).get("model") != cm.get("cpu", {}).get("model") or (
            bm.get("threads", {}).get("cpu_count") != cm.get("threads", {}).get("cpu_count")):
        warnings.append(f"the baseline was measured on another machine ({_machine_line(bm)}; this one: "
                        f"{_machine_line(cm)}): ratios carry over only roughly")
    if baseline.get("threads") not in (None, results.get("threads")):
        warnings.append(f"the baseline ran at {baseline['threads']} threads, this run at {results.get('threads')}")
    return {"passed": not failed, "failed": failed, "rows": rows, "missing": missing, "whole_suite": whole,
            "gated": len(gated), "improved": [r["name"] for r in rows if r["verdict"] == "improved"],
            "warnings": warnings}


def _machine_line(m: dict) -> str:
    cpu, th = m.get("cpu", {}), m.get("threads", {})
    return f"{cpu.get('model', '?')}, {th.get('cpu_count', '?')} CPUs"


def gate_message(outcome: dict, baseline_path: str) -> str:
    """The gate's verdict in one line (and one line per failure)."""
    by = {r["name"]: r for r in outcome["rows"]}
    if outcome["passed"]:
        extra = [f"{len(outcome['improved'])} improved"] if outcome["improved"] else []
        n_skip = sum(r["verdict"] == "skipped" for r in outcome["rows"])
        extra += [f"{n_skip} skipped"] if n_skip else []
        extra += [f"{len(outcome['missing'])} not measured"] if outcome["missing"] else []
        return (f"perf gate passed: {outcome['gated']} gated figures within tolerance of {baseline_path}"
                + (f" ({', '.join(extra)})" if extra else ""))
    lines = [f"perf gate FAILED against {baseline_path}: {len(outcome['failed'])} figure(s): "
             + ", ".join(outcome["failed"])]
    for name in outcome["failed"]:
        r = by.get(name)
        if r is None:
            lines.append(f"  {name}: gated in the baseline but not measured (refresh the baseline if it was "
                         f"removed on purpose: {BASELINE_COMMAND})")
        elif r["verdict"] == "error":
            lines.append(f"  {name}: its benchmark failed (see the table)")
        else:
            lines.append(f"  {name}: ratio {r['ratio']:.3g}x vs baseline {r['baseline']:.3g}x ({r['change']:+.0%}; "
                         f"tolerance -{r['tolerance']:.0%})")
    return "\n".join(lines)


# --- baselines per CPU ------------------------------------------------------------------------------------

#: The SIMD tier a baseline's file name carries, widest first (the file records the full feature list).
_TIERS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"))


def this_cpu() -> dict:
    """This machine's CPU as a baseline records it (``qorus info``): {'model', 'llvm_target', 'simd'}."""
    return _machine()["cpu"]


def cpu_key(cpu: dict | None) -> tuple | None:
    """What makes two CPUs the same for the gate: the model name and the SIMD features (None: not recorded)."""
    if not cpu or not cpu.get("model"):
        return None
    return cpu["model"], tuple(sorted(cpu.get("simd") or ()))


def _tier(cpu: dict) -> str:
    simd = cpu.get("simd") or ()
    return next((name for feature, name in _TIERS if feature in simd), "sse")


def cpu_line(cpu: dict | None) -> str:
    """A CPU in a few words: its model name and widest SIMD."""
    return f"{cpu['model']}, {_tier(cpu)}" if cpu_key(cpu) else "a CPU it does not record"


def cpu_slug(cpu: dict) -> str:
    """The file name stem of ``cpu``'s baselines: model name and widest SIMD, e.g. 'intel-xeon-processor-avx512'."""
    model = re.sub(r"\((r|tm)\)", "", str(cpu.get("model") or "unknown").lower())
    return f"{re.sub(r'[^a-z0-9]+', '-', model).strip('-') or 'unknown'}-{_tier(cpu)}"


def baseline_name(cpu: dict, suite: str = "quick", threads: int = 2) -> str:
    """The file of ``cpu``'s baseline in a folder of baselines: the slug, then the suite and thread count
    when they are not the gate's (quick, 2 threads)."""
    return (cpu_slug(cpu) + ("" if suite == "quick" else f"-{suite}")
            + ("" if threads == 2 else f"-{threads}t") + ".json")


@dataclass
class Pick:
    """The baseline ``--compare`` chose (its data and file), or, with ``data`` None, why there is none."""

    data: dict | None
    path: str | None
    why_none: str = ""


def _recorded_cpu(data: dict) -> dict | None:
    machine = data.get("machine")
    return machine.get("cpu") if isinstance(machine, dict) else None


def find_baseline(path: str, cpu: dict, suite: str = "quick", threads: int = 2) -> Pick:
    """The baseline at ``path`` for a run on ``cpu``: a file (used when recorded on this CPU, or when it
    records no CPU) or a folder of files (the one recorded on this CPU; among several, the one of this
    suite, then of this thread count, then the one named :func:`baseline_name`, then the newest). An
    unreadable file or a missing path raises :class:`BenchError`."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
    elif p.is_file():
        files = [p]
    else:
        raise BenchError(f"--compare {path}: no such file or folder")
    loaded = [(str(f), load_json(str(f), "--compare")) for f in files]
    if p.is_file() and cpu_key(_recorded_cpu(loaded[0][1])) is None:
        return Pick(loaded[0][1], path)
    mine = [(f, d) for f, d in loaded if cpu_key(_recorded_cpu(d)) == cpu_key(cpu)]
    if not mine:
        held = "; ".join(sorted({cpu_line(_recorded_cpu(d)) for _, d in loaded})) or "none"
        if p.is_file():
            return Pick(None, None, f"{path} was recorded on another CPU ({held}; this one: {cpu_line(cpu)})")
        return Pick(None, None, f"no baseline in {path} was recorded on this CPU ({cpu_line(cpu)}; it has: {held})")
    name = baseline_name(cpu, suite, threads)
    path_, data = max(mine, key=lambda fd: (fd[1].get("suite") == suite, fd[1].get("threads") == threads,
                                            Path(fd[0]).name == name, str(fd[1].get("time", ""))))
    return Pick(data, path_)


def no_baseline_message(pick: Pick, path: str, suite: str = "quick", threads: int = 2) -> str:
    """The one line the gate prints instead of a verdict when no baseline was recorded on this CPU."""
    folder = path if Path(path).is_dir() else str(Path(path).parent)
    command = (f"qorus bench --suite {suite}" + (f" --threads {threads}" if threads != 2 else "")
               + f" --write-baseline {folder.rstrip('/')}/")
    return f"perf gate NOT RUN: {pick.why_none}; record one on a quiet machine with: {command}"


def baseline_target(path: str, cpu: dict, suite: str = "quick", threads: int = 2) -> str:
    """Where ``--write-baseline PATH`` writes: PATH when it names a .json file, else this CPU's file in the
    folder PATH (:func:`baseline_name`; a short hash of the CPU is added when a file of that name holds
    another CPU with the same name and SIMD tier)."""
    p = Path(path)
    if p.suffix == ".json" and not p.is_dir():
        return path
    target = p / baseline_name(cpu, suite, threads)
    if target.is_file():
        try:
            held = _recorded_cpu(json.loads(target.read_text()))
        except (OSError, ValueError, AttributeError):
            held = None
        if cpu_key(held) not in (None, cpu_key(cpu)):
            digest = hashlib.sha1(repr(cpu_key(cpu)).encode()).hexdigest()[:6]
            target = target.with_name(f"{target.stem}-{digest}.json")
    return str(target)


# --- the table --------------------------------------------------------------------------------------------


def fmt_value(v: float, unit: str) -> str:
    """``v`` in ``unit`` for the table: seconds as s, ms or us with three significant digits, MB and other units as
    integers with thousands separators."""
    if unit == "s":
        return f"{v:.3f} s" if v >= 1 else f"{v * 1e3:.3g} ms" if v >= 1e-3 else f"{v * 1e6:.3g} us"
    if unit == "MB":
        return f"{v:,.0f} MB"
    return f"{v:,.0f} {unit}"


def format_table(results: dict, outcome: dict | None = None) -> str:
    """One row per figure: ours, the reference (value and name), the median ratio (above 1: ours better),
    the ratios' min-max over the runs and their count; with ``outcome`` the baseline ratio and the verdict."""
    verdicts = {r["name"]: r for r in (outcome or {}).get("rows", [])}
    head = f"{'figure':26s} {'ours':>12s}  {'reference':40s} {'ratio':>7s} {'min-max':>13s} {'n':>2s} {'other':>5s}"
    if outcome:
        head += f" {'baseline':>8s} {'change':>6s} {'tol':>4s}  verdict"
    lines = [head, "-" * len(head)]
    for name, e in results["figures"].items():
        if "ratio" not in e:
            lines.append(f"{name:26s} " + (f"skipped: {e['skipped']}" if "skipped" in e else f"ERROR: {e['error']}"))
            continue
        ref = f"{fmt_value(e['ref_value'], e['unit'])} {e['ref']}"
        spread = f"{e['ratio_min']:.3g}-{e['ratio_max']:.3g}"
        other = f"{e['other_cpu']:.0%}" if e.get("other_cpu") is not None else "?"
        line = (f"{name:26s} {fmt_value(e['ours'], e['unit']):>12s}  {ref[:40]:40s} {e['ratio']:6.3g}x "
                f"{spread:>13s} {e['n']:>2d} {other:>5s}")
        v = verdicts.get(name)
        if v:
            base = f"{v['baseline']:.3g}x" if v.get("baseline") else "-"
            change = f"{v['change']:+.0%}" if "change" in v else ""
            tol = f"{v['tolerance']:.0%}" if "tolerance" in v else ""
            verdict = v["verdict"].upper() if v["verdict"] == "regressed" else v["verdict"]
            line += f" {base:>8s} {change:>6s} {tol:>4s}  {verdict}"
        lines.append(line)
    lines.append(f"ratio: reference / ours for times and memory, ours / reference for rates (above 1: ours better); "
                 f"median of n runs, min-max over them; {results['threads']} threads")
    lines.append(f"other: CPU share other processes took during the figure's workload (above {BUSY:.0%}, the machine "
                 f"was busy and the figure is unreliable)")
    return "\n".join(lines)


def format_list() -> str:
    """The registry: every figure, its suites, its reference and shape."""
    lines = [f"{'figure':26s} {'suites':10s} {'gate':4s} {'reference':34s} shape"]
    for f in FIGURES:
        gate = "yes" if f.gated and "quick" in f.suites else "no"
        lines.append(f"{f.name:26s} {'+'.join(f.suites):10s} {gate:4s} {f.ref[:34]:34s} {f.shape}")
    lines.append("gate: in the quick suite's baseline and gated there (unless too noisy; docs/perf.md)")
    groups = sorted({f.group for f in FIGURES})
    lines.append(f"--only takes figure names, groups ({', '.join(groups)}) or kinds ({', '.join(KINDS)})")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------------


def load_json(path: str, what: str) -> dict:
    """The JSON object of ``qorus bench --json`` or ``--write-baseline`` at ``path``. Raises BenchError, naming ``what``
    and the path, when the file cannot be read, is not JSON or has no ``figures`` object."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BenchError(f"{what} {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{what} {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
        raise BenchError(f"{what} {path}: expected the JSON of qorus bench --json or --write-baseline "
                         f"(an object with 'figures')")
    return data


def _write(path: str, data: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(p)


def remeasure(results: dict, baseline: dict, threads: int, log=None) -> tuple[dict, dict, list[str]]:
    """Measure the figures that regressed once more, with :data:`RETRY_RUNS` times the suite's runs (a noise burst
    on a shared machine rarely lasts through both, and the longer second median moves less): each keeps its
    second measurement (the first under 'first_attempt'), so it fails only if it regressed twice. Returns the
    results, the new gate outcome and the names measured again."""
    outcome = compare(results, baseline)
    again = [r["name"] for r in outcome["rows"] if r["verdict"] == "regressed"]
    if not again:
        return results, outcome, []
    second = run_suite(results["suite"], again, threads, log, runs=RETRY_RUNS * Context(results["suite"], threads).runs)
    figures = dict(results["figures"])
    for name in again:
        figures[name] = second["figures"][name] | {"first_attempt": results["figures"][name]}
    results = results | {"figures": figures, "remeasured": again}
    return results, compare(results, baseline), again


def bench(suite: str = "quick", json_out: str | None = None, threads: int = 2, baseline: str | None = None,
          only: str | None = None, breakdown: bool = False, write_baseline: str | None = None,
          rounds: int | None = None, list_figures: bool = False, retry: bool = True, out=print) -> int:
    """``qorus bench``: run the suite and print the table; returns the exit code (1: the gate failed).

    ``baseline``: a baseline file or a folder of them, one per CPU (:func:`find_baseline`). Without one
    recorded on this CPU the figures are printed with one line saying the gate did not run, and the exit code
    is 0. Figures that regressed are measured once more (``retry``) before the verdict. ``write_baseline``:
    a .json file, or a folder to write this CPU's file into (:func:`baseline_target`)."""
    if list_figures:
        out(format_list())
        return 0
    select(suite, only)  # unknown names and unreadable baselines fail before anything runs
    cpu = this_cpu() if baseline or write_baseline else None
    pick = find_baseline(baseline, cpu, suite, threads) if baseline else None
    base = pick.data if pick else None
    write_path = baseline_target(write_baseline, cpu, suite, threads) if write_baseline else None
    if rounds is not None and rounds < 1:
        raise BenchError(f"--rounds: expected at least 1, got {rounds}")
    rounds = rounds or (3 if write_baseline else 1)
    done = []
    for i in range(rounds):
        if rounds > 1:
            print(f"round {i + 1} of {rounds}", file=sys.stderr, flush=True)
        done.append(run_suite(suite, only, threads))
    results = pool(done)
    outcome = compare(results, base) if base else None
    out(format_table(results, outcome))
    walls = ", ".join(f"{w:.0f} s" for w in (r["wall_s"] for r in done))
    out(f"{suite} suite: {len(results['figures'])} figures in {walls} ({threads} threads)")
    if outcome is not None and retry and any(r["verdict"] == "regressed" for r in outcome["rows"]):
        regressed = [r["name"] for r in outcome["rows"] if r["verdict"] == "regressed"]
        out(f"measuring {', '.join(regressed)} once more: a figure fails the gate only if it regresses again")
        results, outcome, again = remeasure(results, base, threads)
        out(format_table(results | {"figures": {n: results["figures"][n] for n in again}}, outcome))
    if breakdown:
        from qorus_jit.bench.breakdown import main_table

        out(main_table(threads=threads))
    not_run = no_baseline_message(pick, baseline, suite, threads) if pick and base is None else None
    if json_out:
        gate = ({"compare": outcome | {"baseline": pick.path}} if outcome else
                {"compare": {"passed": None, "baseline": None, "not_run": not_run}} if not_run else {})
        _write(json_out, results | gate | ({"round_results": done} if len(done) > 1 else {}))
        out(f"wrote {json_out}")
    if write_path:
        made = make_baseline(done)
        _write(write_path, made)
        gated = [n for n, e in made["figures"].items() if e.get("gated")]
        out(f"wrote {write_path}: {len(gated)} gated figures of {len(made['figures'])}, from {rounds} rounds")
        busy = [n for n, e in made["figures"].items() if e.get("other_cpu", 0) > BUSY]
        if busy:
            out(f"warning: other processes took more than {BUSY:.0%} of the CPU while {', '.join(busy)} ran: "
                f"their tolerances may be wider than a quiet machine needs; consider writing the baseline again")
    if not_run:
        out(not_run)
    if outcome is None:
        return 0
    for w in outcome["warnings"]:
        out(f"warning: {w}")
    busy = [n for n in outcome["failed"] if (results["figures"].get(n, {}).get("other_cpu") or 0) > BUSY]
    if busy:
        out(f"warning: other processes took more than {BUSY:.0%} of the CPU while {', '.join(busy)} ran: "
            f"re-run on a quiet machine before trusting the verdict")
    out(gate_message(outcome, pick.path))
    return 0 if outcome["passed"] else 1
