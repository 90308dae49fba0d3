"""Compiling the kernels before they are needed: ``qorus compile``, and the first use of ``qorus train``.

numba compiles a kernel at its first call, for the types of that call, and keeps the machine code in its
on-disk cache (``cache=True``; ``qorus info`` shows where). On a cold cache (a fresh install, ``qorus
clear-cache``, another CPU) the first step of the default ``qorus train`` run compiles 20 kernels, about 90 s
of one core on an AMD EPYC (Zen 1), more than half of it in the two attention kernels (docs/design.md, "Cold
start"). Compiling is single-threaded, so the work is cut into tasks that compile different kernels:

- ``attention-forward`` and ``attention-backward``: one attention layer of the model, forward and backward,
  the other attention kernel replaced by a stand-in that zeroes its outputs;
- ``model``: a training step, an evaluation and the final sample of the whole model, both attention kernels
  stood in;
- ``generate``: prefill and token-by-token decoding from a KV cache (``qorus generate``), attention forward
  stood in.

Tasks run in worker processes (``python -m qorus_jit.precompile --worker``), at most one per core; each stores
what it compiles in the shared on-disk cache and prints one line per kernel, which the progress bar counts.
A stand-in changes values only, never the types a kernel is called with, so the kernels compiled are those of
the real run. A training run then loads them from the cache at its first step; ``qorus compile`` takes each
path once itself (:func:`warm_pass`), compiling in place whatever a worker missed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: CPU seconds of each task alone in a fresh process for the default run (generate: its run folders) on the AMD
#: EPYC (Zen 1) of docs/design.md, and the kernels it compiles (called from Python) beside the others: the plan's
#: weights and the progress bar's total. Alone an attention task compiles 5 (the projections and RoPE too).
COST = {"model": (42.0, 19), "attention-backward": (30.0, 1), "attention-forward": (25.0, 1),
        "generate": (58.0, 14)}

#: What the tasks compile, in a few words (``qorus compile --list``).
WHAT = {
    "model": "embedding, norms, MLP, head, loss, optimizer, evaluation, sample (attention stood in)",
    "attention-backward": "attention backward, with the q/k/v projections and rotary positions",
    "attention-forward": "attention forward (training and prefill)",
    "generate": "prefill, token-by-token decoding and sampling (attention forward stood in)",
}

#: The tasks of a spec's kind, heaviest first.
TASKS_OF = {"train": ("model", "attention-backward", "attention-forward"),
            "generate": ("generate", "attention-forward")}

#: Tasks that share one worker: the decoding of every model calls the same kernels (the KV cache, the products
#: of one token), which one process then compiles once.
ONE_WORKER = ("generate",)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to compile for: ``kind`` ``"train"`` (``config``: a TrainConfig dict, with ``vocab_size``) or
    ``"generate"`` (``config``: a model record, ``{"arch": ..., **model config}``); ``name`` labels it."""

    name: str
    kind: str
    config: dict
    vocab_size: int = 0

    def to_json(self) -> str:
        """The spec as one line of JSON (how a worker process receives it)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """The spec :meth:`to_json` wrote."""
        return cls(**json.loads(text))


def train_spec(cfg, vocab_size: int, name: str = "train") -> Spec:
    """The spec of a ``qorus train`` run of TrainConfig ``cfg`` over ``vocab_size`` token ids."""
    return Spec(name, "train", cfg.to_dict(), int(vocab_size))


def generate_spec(model, name: str = "generate") -> Spec:
    """The spec of generating with ``model`` (a Llama or GPT-2)."""
    from qorus_jit.models.registry import model_record

    return Spec(name, "generate", model_record(model))


def default_specs() -> list[Spec]:
    """What ``qorus compile`` compiles: the default ``qorus train`` run (its evaluation and final sample
    included), and ``qorus generate`` from its run folders, from a Llama with an untied head and grouped-query
    attention (Hugging Face and llama2.c checkpoints) and from a GPT-2."""
    from qorus_jit.models.registry import model_record
    from qorus_jit.train.run import TrainConfig, build_model

    cfg = TrainConfig()
    llama = {"arch": "llama", "dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 128,
             "vocab_size": 512, "max_seq_len": 64, "tie_embeddings": False}
    gpt2 = {"arch": "gpt2", "dim": 64, "n_layers": 1, "n_heads": 4, "hidden_dim": 256, "vocab_size": 512,
            "max_seq_len": 64}
    return [train_spec(cfg, 256), Spec("generate-run", "generate", model_record(build_model(cfg, 256))),
            Spec("generate-llama", "generate", llama), Spec("generate-gpt2", "generate", gpt2)]


# ------------------------------------------------------------------------------------------------ the tasks


def _zero_attention_forward(out, lse, *args, **kwargs):
    out.fill(0)
    lse.fill(0)


def _zero_attention_backward(dq, dk, dv, *args, **kwargs):
    dq.fill(0)
    dk.fill(0)
    dv.fill(0)


_STAND_INS = {"attention_forward": _zero_attention_forward, "attention_backward": _zero_attention_backward}


@contextlib.contextmanager
def stand_ins(*names: str):
    """Replace the kernels ``names`` of the layers' namespace (``kernels.trusted``) by stand-ins that zero their
    outputs, as the profiler swaps its entries: the kernels they stand for are not compiled here."""
    from qorus_jit.kernels import trusted as K

    saved = {n: getattr(K, n) for n in names}
    try:
        for n in names:
            setattr(K, n, _STAND_INS[n])
        yield
    finally:
        for n, fn in saved.items():
            setattr(K, n, fn)


def _model(spec: Spec):
    if spec.kind == "train":
        from qorus_jit.train.run import TrainConfig
        from qorus_jit.train.run import build_model as build_run_model

        return build_run_model(TrainConfig.from_dict(spec.config), spec.vocab_size)
    from qorus_jit.models.registry import build_model

    fields = dict(spec.config)
    return build_model(fields.pop("arch"), fields, rng=0)


def _attention(spec: Spec, *stood_in: str) -> None:
    """One attention layer of the spec's model, forward and backward on one sequence."""
    from qorus_jit.layers import MultiHeadAttention

    layers = [_model(spec)]
    while layers and not isinstance(layers[0], MultiHeadAttention):
        layers[:1] = list(layers[0].children().values())
    if not layers:
        return
    attn = layers[0]
    T = spec.config["seq_len"] if spec.kind == "train" else min(8, attn.max_seq_len)
    x = np.random.default_rng(0).standard_normal((1, T, attn.dim)).astype(np.float32)
    with stand_ins(*stood_in):
        y = attn.forward(x)
        attn.backward(np.ones_like(y))


def _train_path(spec: Spec) -> None:
    """A training step, an evaluation and a sampled token of the run's model as ``qorus train`` makes them
    (one window per batch, random token ids)."""
    from qorus_jit.data import TextDataset
    from qorus_jit.infer.generate import sample_text
    from qorus_jit.tokenizers import load_tokenizer
    from qorus_jit.train.run import TrainConfig, build_model, build_optimizer, build_schedule
    from qorus_jit.train.trainer import Trainer

    cfg = TrainConfig.from_dict(spec.config)
    model = build_model(cfg, spec.vocab_size)
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, 8 * (cfg.seq_len + 1), dtype=np.int64)
    data = TextDataset(ids, cfg.seq_len, 0.5, cfg.seed, vocab_size=spec.vocab_size)
    trainer = Trainer(model, build_optimizer(cfg, model), data, steps=cfg.steps, batch_size=1,
                      schedule=build_schedule(cfg), grad_accum=cfg.grad_accum, clip=cfg.clip or None,
                      eval_batches=1, progress=False)
    trainer.train_step()
    trainer.evaluate()
    if cfg.sample_tokens:
        sample_text(model, load_tokenizer(cfg.tokenizer), cfg.sample_prompt, 1, cfg.temperature, seed=0)


def _generate(spec: Spec) -> None:
    """Prefill and decoding of the spec's model, as generation does them."""
    from qorus_jit.infer.generate import warm_up

    warm_up(_model(spec))


def run_task(task: str, spec: Spec) -> None:
    """Take ``task``'s path for ``spec`` in this process (what a worker does)."""
    if task == "attention-forward":
        _attention(spec, "attention_backward")
    elif task == "attention-backward":
        _attention(spec, "attention_forward")
    elif task == "model":
        with stand_ins("attention_forward", "attention_backward"):
            _train_path(spec)
    elif task == "generate":
        with stand_ins("attention_forward"):
            _generate(spec)
    else:
        raise ValueError(f"task: expected one of {', '.join(COST)}, got {task!r}")


def warm_pass(spec: Spec) -> None:
    """The path of ``spec`` in this process, nothing stood in: each kernel it calls is loaded from the cache, or
    compiled if no worker did."""
    (_train_path if spec.kind == "train" else _generate)(spec)


# ----------------------------------------------------------------------------------------------- the plan


def tasks(specs: list[Spec], only: list[str] | None = None) -> list[tuple[Spec, str]]:
    """(spec, task) pairs of ``specs``, the attention tasks once (their kernels are the same for every model),
    narrowed to ``only`` (task names or spec names)."""
    out, seen = [], set()
    for spec in specs:
        for task in TASKS_OF[spec.kind]:
            if task.startswith("attention") and task in seen:
                continue
            seen.add(task)
            if not only or task in only or spec.name in only:
                out.append((spec, task))
    return out


def plan(work: list[tuple[Spec, str]], jobs: int) -> list[list[tuple[Spec, str]]]:
    """``work`` in at most ``jobs`` groups of about equal :data:`COST`, heaviest first (one worker a group);
    the :data:`ONE_WORKER` tasks together."""
    units = [[it for it in work if it[1] in ONE_WORKER]] + [[it] for it in work if it[1] not in ONE_WORKER]
    units = sorted((u for u in units if u), key=lambda u: -sum(COST[t][0] for _, t in u))
    groups: list[list] = [[] for _ in range(max(1, min(jobs, len(units))))]
    loads = [0.0] * len(groups)
    for unit in units:
        i = loads.index(min(loads))
        groups[i] += unit
        loads[i] += sum(COST[t][0] for _, t in unit)
    return [g for g in groups if g]


def default_jobs() -> int:
    """Worker processes: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------ the cache state


def attention_cached() -> bool:
    """Whether numba's cache holds float32 code for this CPU of both training attention kernels (the largest
    part of a cold start): the quick test of a first use, made before anything is built."""
    from qorus_jit.kernels import attention
    from qorus_jit.sysinfo import kernel_cached

    return all(kernel_cached(attention.DISPATCHERS[d], np.float32) for d in ("forward", "backward"))


def cached(spec: Spec) -> bool:
    """Whether numba's cache holds float32 code for this CPU of the heaviest kernels ``spec`` calls: both
    attention kernels, and for a training run its norm's backward and the loss, for generation the decoding
    (a guess that stands for the rest: a kernel it misses compiles at its first call, as always)."""
    from qorus_jit.kernels import attention
    from qorus_jit.kernels import trusted as K
    from qorus_jit.sysinfo import kernel_cached

    arch = spec.config.get("arch", "llama")
    if spec.kind == "train":
        norm = K.rmsnorm_backward if arch == "llama" else K.layernorm_backward
        kernels = [attention.DISPATCHERS["forward"], attention.DISPATCHERS["backward"], norm,
                   K.cross_entropy_forward_backward]
    else:
        decode = K.llama_decode if arch in ("llama", "gpt2") else attention.DISPATCHERS["decode"]
        kernels = [attention.DISPATCHERS["forward"], decode]
    return all(kernel_cached(d, np.float32) for d in kernels)


class CompileCounter:
    """Counts the kernels numba compiles in this process while entered (``with CompileCounter() as c``), those
    called from Python only (a kernel another calls compiles within it); ``on_compiled(name)`` follows each."""

    def __init__(self, on_compiled: Callable[[str], None] | None = None):
        self.count, self.depth, self.on_compiled = 0, 0, on_compiled
        self.names: list[str] = []

    def __enter__(self):
        from numba.core import event

        counter = self

        class Listener(event.Listener):
            def on_start(self, ev):
                counter.depth += 1

            def on_end(self, ev):
                counter.depth -= 1
                if counter.depth == 0:
                    name = ev.data["dispatcher"].py_func.__qualname__.lstrip("_")
                    counter.count += 1
                    counter.names.append(name)
                    if counter.on_compiled:
                        counter.on_compiled(name)

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event

        event.unregister("numba:compile", self._listener)
        return False


# ------------------------------------------------------------------------------------------------- workers


class Worker:
    """A worker process taking ``group``'s tasks; its lines (``compiled NAME``, ``done TASK CPU_SECONDS``) go to
    ``lines`` as ``(self, kind, text)``, then ``(self, None, None)`` at its end."""

    def __init__(self, group: list[tuple[Spec, str]], lines: queue.Queue):
        args = [sys.executable, "-m", "qorus_jit.precompile", "--worker"]
        for spec, task in group:
            args += [task, spec.to_json()]
        env = dict(os.environ)  # this package importable from a source checkout too
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.group, self.compiled, self.cpu_s = group, 0, 0.0
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     stdin=subprocess.DEVNULL)
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines: queue.Queue) -> None:
        for s in self.proc.stdout:
            kind, _, text = s.strip().partition(" ")
            if kind == "compiled":
                self.compiled += 1
            elif kind == "done":  # "done TASK CPU_SECONDS": the worker's CPU time so far
                self.cpu_s = float(text.split()[-1])
            lines.put((self, kind, text))
        lines.put((self, None, None))

    def error(self) -> str | None:
        """Why the worker failed (after it ended), or None."""
        if self.proc.wait() == 0:
            return None
        tail = "".join(self._stderr).strip().splitlines()[-1:] or ["no message"]
        tasks = ", ".join(t for _, t in self.group)
        return f"compile worker of {tasks} failed (exit {self.proc.returncode}): {tail[0]}"

    def stop(self) -> None:
        """Kill the worker process if it still runs, and wait for it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_workers(groups: list[list[tuple[Spec, str]]], on_line: Callable[[str, str], None]):
    """One worker process per group, until all end; ``on_line(kind, text)`` receives each worker line as it
    comes. Returns the workers (their CPU seconds, kernels compiled) and the errors of those that failed."""
    lines: queue.Queue = queue.Queue()
    workers = [Worker(g, lines) for g in groups]
    try:
        running = len(workers)
        while running:
            _, kind, text = lines.get()
            if kind is None:
                running -= 1
            else:
                on_line(kind, text)
        return workers, [e for e in (w.error() for w in workers) if e]
    finally:
        for w in workers:
            w.stop()


def _worker(argv: list[str]) -> int:
    """``--worker TASK SPEC_JSON [TASK SPEC_JSON ...]``: run the tasks, one line per kernel compiled."""
    items = list(zip(argv[0::2], argv[1::2], strict=True))
    with CompileCounter(lambda name: print(f"compiled {name}", flush=True)):
        for task, spec in items:
            run_task(task, Spec.from_json(spec))
            print(f"done {task} {time.process_time():.2f}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ the front end


@dataclasses.dataclass
class Report:
    """What a compile did: worker processes, kernels compiled by them and here, seconds, worker errors."""

    workers: int = 0
    worker_cpu_s: list[float] = dataclasses.field(default_factory=list)
    compiled: int = 0
    compiled_here: int = 0
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)


def compile_specs(specs: list[Spec], only: list[str] | None = None, jobs: int | None = None,
                  progress: bool = True, warm: bool = True, desc: str = "compiling kernels") -> Report:
    """Compile what ``specs`` use in ``jobs`` worker processes (a progress bar on stderr counts the kernels),
    then, with ``warm``, take their paths here (:func:`warm_pass`), compiling whatever a worker missed.
    ``only``: just the tasks or specs named (see :func:`tasks`), no warm pass."""
    work = tasks(specs, only)
    groups = plan(work, jobs or default_jobs())
    bar = _bar(sum(COST[t][1] for _, t in work), desc) if progress else None
    report, t0 = Report(workers=len(groups)), time.perf_counter()

    def on_line(kind, text):
        if kind == "compiled":
            report.compiled += 1
            if bar is not None:
                bar.total = max(bar.total, report.compiled)
                bar.set_postfix_str(text, refresh=False)
                bar.update(1)

    try:
        workers, report.errors = run_workers(groups, on_line)
        report.worker_cpu_s = [w.cpu_s for w in workers]
        with CompileCounter(lambda name: on_line("compiled", name)) as here:
            for spec in ([] if only or not warm else specs):
                warm_pass(spec)
        report.compiled -= here.count
        report.compiled_here = here.count
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="kernel", dynamic_ncols=True, mininterval=0.2, disable=None,
                leave=False, file=sys.stderr, bar_format="{desc}: {n}/{total} {unit}s |{bar}| {elapsed}{postfix}")


def summary(report: Report) -> str:
    """The report in a line (after the errors of failed workers, one line each)."""
    cpu = " + ".join(f"{c:.0f}" for c in report.worker_cpu_s)
    line = (f"compiled {report.compiled + report.compiled_here} kernels in {report.seconds:.0f} s "
            f"({report.workers} worker process{'es' if report.workers != 1 else ''}"
            + (f", {cpu} s of CPU" if cpu else "") + (f"; {report.compiled_here} here" if report.compiled_here else "")
            + ")")
    return "\n".join(report.errors + [line])


NOTICE = ("first use on this machine: compiling the kernels for this CPU, once (they are cached for later runs; "
          "a minute or two; `qorus compile` does it ahead)")


def prepare(spec: Spec, announced: bool = False, progress: bool = True, echo: Callable[[str], None] | None = None,
            jobs: int | None = None) -> Report | None:
    """Before a run of ``spec``: when the kernel cache is cold for it (``announced``: the caller found
    :func:`attention_cached` false and said so; else :func:`cached`, and :data:`NOTICE` is said here), compile
    its kernels in parallel (:func:`compile_specs`), so that its first step loads them from the cache instead.
    ``echo`` prints a line (stderr). Returns the report, or None when the cache was warm (nothing is done: the
    run loads its kernels as it calls them)."""
    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    if not announced:
        if cached(spec):
            return None
        echo(NOTICE)
    report = compile_specs([spec], jobs=jobs, progress=progress, warm=False)
    echo(summary(report))
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        raise SystemExit(_worker(sys.argv[2:]))
    raise SystemExit("usage: python -m qorus_jit.precompile --worker TASK SPEC_JSON [TASK SPEC_JSON ...]")
