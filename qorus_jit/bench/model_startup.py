"""Start-up: seconds from a fresh process to the first finished forward + backward of a small Llama, and the
first use of the command line: from launch to the first step of ``qorus train`` and to the first token of
``qorus generate``.

    python -m qorus_jit.bench.model_startup [--threads 2] [--no-torch] [--out perf/results/model_startup.json]
    python -m qorus_jit.bench.model_startup --cli [--threads 2]

Config (the layer issue's bar, W-train's shape): dim 256, 4 layers, 8 heads, SwiGLU hidden 768, vocab 256,
seq 256, batch 8. Runs in fresh interpreters: with the machine's numba cache (warm; a first run may fill it)
and with an empty cache directory (cold: every kernel compiles). The reference is the same for PyTorch and
transformers (``LlamaForCausalLM``, eager): a fresh process importing them, building the model and running its
first forward, cross-entropy and backward. Each run of ours is paired with one of the reference back to back,
the side going first alternating from pair to pair. :func:`measure` returns the figures.

The command line's first use (:func:`measure_cli`): ``qorus train`` (the default run, its steps cut to 2) and
``qorus generate`` (a run folder of the default model, made here with its weights at step 0), each in a fresh
process with the machine's numba cache (warm) and with an empty temporary ``NUMBA_CACHE_DIR`` (cold: numba then
reads and writes only there, and the shared cache stays as it was). The seconds are counted from launch to the
first row of the run's ``metrics.jsonl`` (its first step done) and to the first byte the generation prints; the
process is stopped then. Each cold launch is paired with a warm launch of the same command back to back.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qorus_jit.bench._timing import in_turn, write_results

CODE = """
import time
t0 = time.perf_counter()
import numpy as np
from qorus_jit.kernels.loss import cross_entropy_forward_backward
from qorus_jit.models import Llama, LlamaConfig
t1 = time.perf_counter()
cfg = LlamaConfig(dim=256, n_layers=4, n_heads=8, hidden_dim=768, vocab_size=256, max_seq_len=256)
model = Llama(cfg, rng=0)
t2 = time.perf_counter()
ids = np.random.default_rng(0).integers(0, 256, (8, 256))
logits = model.forward(ids)
dlogits = np.empty((8 * 256, 256), np.float32)
loss = cross_entropy_forward_backward(dlogits, logits.reshape(-1, 256), ids.reshape(-1))
model.backward(dlogits.reshape(8, 256, 256))
t3 = time.perf_counter()
logits = model.forward(ids)
cross_entropy_forward_backward(dlogits, logits.reshape(-1, 256), ids.reshape(-1))
model.backward(dlogits.reshape(8, 256, 256))
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3)
"""

#: The same first step with PyTorch and transformers (same config, untied head as ours).
TORCH_CODE = """
import time
t0 = time.perf_counter()
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM
t1 = time.perf_counter()
cfg = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                  intermediate_size=768, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).float().train()
t2 = time.perf_counter()
ids = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 256)))
loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.view(-1, 256), ids.view(-1))
loss.backward()
t3 = time.perf_counter()
loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.view(-1, 256), ids.view(-1))
loss.backward()
t4 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, t4 - t3)
"""

KEYS = ("import_s", "build_s", "first_step_s", "total_s", "second_step_s")

#: Thread-count variables a fresh process reads at start (numba, OpenMP as torch uses it, OpenBLAS, MKL).
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run_once(env=None, code: str = CODE, threads: int | None = None) -> dict:
    """One fresh process running ``code``; ``threads`` sets the libraries' thread counts through the
    environment (read at start, so nothing is timed for it)."""
    env = dict(os.environ if env is None else env)
    if threads:
        env.update({k: str(threads) for k in THREAD_ENV})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"start-up process failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return dict(zip(KEYS, (float(v) for v in out.stdout.split()[-5:]), strict=True))


def torch_available() -> bool:
    """Whether PyTorch and transformers can be imported (the reference side of the figures)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def measure(runs: int = 2, threads: int | None = None, fill: bool = True, cold: bool = True,
            torch: bool | None = None) -> dict:
    """``runs`` pairs of a warm-cache process of ours and one of the reference, back to back, in turn first
    (after one run of ours that may fill the cache, when ``fill``), then one cold-cache run of ours paired
    with one more of the reference (when ``cold``).

    Returns lists of per-process dicts under 'warm', 'torch' (when torch and transformers are importable
    and ``torch`` is not False; the i-th from the same pair as the i-th of 'warm'), 'cold', 'torch_cold' (the
    reference's run paired with the cold one) and 'warm_fill'."""
    torch = torch_available() if torch is None else torch
    rows: dict = {"warm": []}
    if fill:
        rows["warm_fill"] = [run_once(threads=threads)]
    if torch:
        rows["torch"] = []
    for i in range(runs):
        for side in in_turn(i, "warm", "torch") if torch else ("warm",):
            rows[side].append(run_once(code=TORCH_CODE if side == "torch" else CODE, threads=threads))
    if cold:
        with tempfile.TemporaryDirectory() as cache:
            rows["cold"] = [run_once(dict(os.environ, NUMBA_CACHE_DIR=cache), threads=threads)]
        if torch:
            rows["torch_cold"] = [run_once(code=TORCH_CODE, threads=threads)]
    return rows


# --------------------------------------------------------------------------------- the command line's first use

#: The default run of ``qorus train``, 2 steps (the kernels are those of the 600), into a folder of the bench.
TRAIN_ARGS = ("train", "--steps", "2", "--no-progress")
#: ``qorus generate`` from a run folder: a few tokens from an empty prompt.
GENERATE_ARGS = ("generate", "-n", "16", "--seed", "0")


def _cli_env(threads: int | None, cache: str | None) -> dict:
    """A fresh process's environment: this package importable (a source checkout too), the thread counts, and
    ``cache`` as numba's cache folder (None: the machine's)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("NUMBA_CACHE_DIR", None)
    if cache:
        env["NUMBA_CACHE_DIR"] = cache
    if threads:
        env.update({k: str(threads) for k in THREAD_ENV})
    return env


def _first_event(args, env, ready, cwd, timeout: float = 1800) -> float:
    """Seconds from launching ``python -m qorus_jit.cli *args`` to the moment ``ready(proc)`` reports (a
    ``time.perf_counter`` value, or None while not yet; polled every 20 ms), after which the process is
    stopped. A process that exits first raises with its stderr."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "qorus_jit.cli", *args], env=env, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        try:
            while True:
                exited = proc.poll() is not None
                at = ready(proc)
                if at is not None:
                    return at - t0
                if exited:
                    err.seek(0)
                    raise RuntimeError(f"qorus {args[0]} exited {proc.returncode} before its first "
                                       f"{'step' if args[0] == 'train' else 'token'}:\n"
                                       f"{err.read().decode(errors='replace')[-2000:]}")
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"qorus {args[0]}: nothing after {timeout:.0f} s")
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def train_first_step(folder: Path, env: dict, name: str) -> float:
    """Launch to the first step of ``qorus train`` (default run) writing into ``folder/name``: the first row
    of its metrics.jsonl (seen within 20 ms)."""
    metrics = folder / name / "metrics.jsonl"

    def ready(proc):
        return time.perf_counter() if metrics.is_file() and metrics.stat().st_size > 0 else None

    return _first_event((*TRAIN_ARGS, "--out-dir", str(folder), "--name", name), env, ready, folder)


def generate_first_token(run_dir: Path, env: dict) -> float:
    """Launch to the first byte ``qorus generate RUN_DIR`` prints (a thread reads it as it comes)."""
    import threading

    seen: list[float] = []

    def read(stdout):
        if stdout.read(1):
            seen.append(time.perf_counter())
        stdout.read()  # the rest, so that the process never blocks on a full pipe

    def ready(proc):
        if not hasattr(proc, "reader"):
            proc.reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
            proc.reader.start()
        if proc.poll() is not None:
            proc.reader.join(1.0)
        return seen[0] if seen else None

    return _first_event((*GENERATE_ARGS, str(run_dir)), env, ready, run_dir.parent)


def make_run_folder(folder: Path) -> Path:
    """A run folder of the default ``qorus train`` model (byte-level Llama) with its weights at step 0: what
    ``qorus generate`` reads, made without a training step (no kernel runs)."""
    from qorus_jit.train.run import TrainConfig, start_run

    run = start_run(TrainConfig(out_dir=str(folder), name="tiny"), progress=False)
    run.trainer.save()
    return run.run_dir


def _cache_files(folder: str) -> int:
    return sum(1 for _ in Path(folder).rglob("*.nbi"))


def measure_cli(runs: int = 1, threads: int | None = None, cold: bool = True, fill: bool = True) -> dict:
    """First use of the command line: ``runs`` warm-cache launches of ``qorus train`` and of ``qorus generate``
    (after one of each that may fill the machine's cache, when ``fill``), each paired, when ``cold``, with a
    launch of the same command on an empty cache, back to back and in turn first. Returns lists of seconds
    under 'train_warm', 'generate_warm', 'train_cold', 'generate_cold' (the i-th cold launch paired with the
    i-th warm one), and the kernel index files each cold process wrote under 'cold_cache_files' (none would
    mean the temporary cache was not used)."""
    rows: dict = {"train_warm": [], "generate_warm": []}
    if cold:
        rows.update(train_cold=[], generate_cold=[], cold_cache_files=[])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_dir = make_run_folder(folder)

        def launch(cmd: str, env: dict, name: str) -> float:
            return train_first_step(folder, env, name) if cmd == "train" else generate_first_token(run_dir, env)

        warm = _cli_env(threads, None)
        if fill:
            for cmd in ("train", "generate"):
                launch(cmd, warm, "fill")
        for i in range(runs):
            for cmd in ("train", "generate"):
                for side in in_turn(i, "warm", "cold") if cold else ("warm",):
                    if side == "warm":
                        rows[f"{cmd}_warm"].append(launch(cmd, warm, f"warm{i}"))
                        continue
                    with tempfile.TemporaryDirectory() as cache:
                        rows[f"{cmd}_cold"].append(launch(cmd, _cli_env(threads, cache), f"cold{i}"))
                        n = _cache_files(cache)
                    if not n:
                        raise RuntimeError(f"{cmd}_cold: the process wrote nothing into its NUMBA_CACHE_DIR "
                                           f"{cache}: it did not start from an empty cache")
                    rows["cold_cache_files"].append(n)
    return rows


def main(argv=None) -> int:
    """Measure the start-up of a model's first step (see the module's usage line) and print it; returns the exit status.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="threads of each process (default: the libraries')")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch + transformers reference")
    ap.add_argument("--cli", action="store_true", help="the command line's first use instead (measure_cli)")
    ap.add_argument("--out", default="perf/results/model_startup.json",
                    help="the JSON to write, from the working directory (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.cli:
        rows = measure_cli(runs=1, threads=args.threads)
        for name, values in rows.items():
            print(f"{name:16s} " + "  ".join(f"{v:7.2f}" for v in values))
        return 0
    rows = measure(runs=1, threads=args.threads, torch=False if args.no_torch else None)
    for name, runs in rows.items():
        for r in runs:
            print(f"{name:10s} " + "  ".join(f"{k} {v:7.2f}" for k, v in r.items()))
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
