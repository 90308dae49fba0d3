"""The ``qorus`` command line."""

from __future__ import annotations

import json
import os

import click


def _usage_error(e: click.UsageError, where: str) -> None:
    click.echo(f"error: {e.format_message()} (see {where} --help)", err=True)
    raise SystemExit(2) from None


class _OneLineErrors(click.Command):
    """A command whose usage errors (unknown option, bad value, extra argument) print one line and exit 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _usage_error(e, f"qorus {info_name}")


class _OneLineGroup(click.Group):
    """The ``qorus`` group: an unknown command or option is one line too, and commands are _OneLineErrors."""

    command_class = _OneLineErrors

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _usage_error(e, "qorus")

    def list_commands(self, ctx):
        return sorted({*self.commands, "train"})

    def get_command(self, ctx, name):
        if name == "train" and name not in self.commands:
            self.add_command(click.command("train", cls=_OneLineErrors, context_settings={"max_content_width": 110})(
                _train_options(train)))
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args):
        if args and args[0] == "train" and not {"-h", "--help"} & set(args) and _looks_cold():
            _first_use_notice()  # before the command's modules load numba (about a second by themselves)
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            _usage_error(e, "qorus")


_NOTICE_SHOWN = False


def _first_use_notice() -> None:
    global _NOTICE_SHOWN
    if not _NOTICE_SHOWN:
        from qorus_jit.precompile import NOTICE

        click.echo(NOTICE, err=True)
        _NOTICE_SHOWN = True


def _looks_cold() -> bool:
    """Without importing numba: no index file of the attention forward kernel, or only ones older than its source,
    in the folders numba would cache it in (its locators: NUMBA_CACHE_DIR, beside the source, the user-wide cache).
    A quick guess for the notice at launch; the exact test (precompile.attention_cached) follows once loaded."""
    import hashlib
    import os
    from pathlib import Path

    source = Path(__file__).parent / "kernels" / "attention.py"
    folder = os.path.dirname(os.path.abspath(source))
    sub = f"{os.path.basename(folder)}_{hashlib.sha1(folder.encode()).hexdigest()}"
    if os.environ.get("NUMBA_CACHE_DIR"):  # then numba caches there alone
        places = [Path(os.environ["NUMBA_CACHE_DIR"]) / sub]
    else:
        places = [Path(folder) / "__pycache__", Path.home() / ".cache" / "numba" / sub]
    newer = source.stat().st_mtime
    return not any(f.stat().st_mtime >= newer for p in places for f in p.glob("attention._attention_forward-*.nbi"))


@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qorus-jit", prog_name="qorus")
def main():
    """Qorus: train and run small transformers and MLPs on a CPU, on numba-compiled kernels."""
    # The command forks no workers, so its parallel regions may run on GNU OpenMP, which is not fork-safe but
    # decodes faster than TBB (docs/design.md, "The threading layer"); a program importing qorus_jit keeps
    # numba's own choice. Set before the subcommand loads numba; NUMBA_THREADING_LAYER(_PRIORITY) given wins.
    os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp tbb workqueue")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json):
    """Show versions, threads, CPU/SIMD features, BLAS and the numba cache location."""
    from qorus_jit.sysinfo import collect

    data = collect()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    v, t, c = data["versions"], data["threads"], data["cpu"]
    click.echo("Qorus " + v["qorus_jit"])
    click.echo("  versions:   " + ", ".join(f"{k} {val}" for k, val in v.items() if k != "qorus_jit"))
    policy = ("auto: fewer while other processes keep the cores busy" if t["policy"] == "auto" else "fixed")
    click.echo(f"  threads:    numba {t['numba_threads']} of {t['numba_max_threads']} ({policy}; threading layer: "
               f"{t['numba_threading_layer']}), {t['cpu_count']} CPUs")
    click.echo(f"  cpu:        {c['model']} (LLVM target {c['llvm_target']})")
    click.echo(f"  simd:       {' '.join(c['simd']) or 'none'}")
    for lib in data["blas"]:
        threads = f"{lib['threads']} threads" + (f" on {lib['threading']}" if lib.get("threading") else "")
        where = ", ".join(str(v) for v in (lib["architecture"], threads) if v is not None)
        click.echo(f"  blas:       {lib['used_by']}: {lib['library']} {lib['version']} ({where})")
    q = data["quantized_kernels"]
    click.echo("  quantized:  decoding " + ", ".join(f"{fmt} {path}" for fmt, path in q["paths"].items())
               + (f" ({q['note']})" if q.get("note") else "") + f"; prompts: {q['prompts']}")
    click.echo(f"  cache:      {data['numba_cache']}")
    click.echo(f"  fastmath:   {' '.join(data['fastmath'])}")


@main.command("clear-cache")
def clear_cache():
    """Delete the compiled kernels numba cached for qorus_jit (they recompile on next use)."""
    from qorus_jit.sysinfo import clear_kernel_cache

    n, where = clear_kernel_cache()
    click.echo(f"removed {n} cached kernel files from {where}")


def _train_options(fn):
    """One option per TrainConfig setting (defaults None: only what is given overrides the config file)."""
    from qorus_jit.train.run import config_fields

    for name, kind, default, text, choices in reversed(config_fields()):
        flag = "--" + name.replace("_", "-")
        help_text = f"{text} [default: {default!r}]"
        if kind is bool:
            fn = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)(fn)
        else:
            ptype = click.Choice(choices) if choices else kind
            fn = click.option(flag, name, type=ptype, default=None, help=help_text)(fn)
    return fn


# Built on first use by the group (_OneLineGroup.get_command): its options come from TrainConfig, whose module
# loads numba, which `qorus train` must not wait for before it says that the kernels compile.
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", "resume", metavar="RUN_DIR", default=None,
              help="Continue the run in RUN_DIR from its newest checkpoint (its settings are kept; steps and "
                   "the bookkeeping settings may change).")
@click.option("--no-progress", is_flag=True, help="No progress bar (metrics still go to metrics.jsonl).")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train with N data-parallel processes on this machine (mpiexec -n N, the mpi extra); each takes "
                   "batch_size windows of every batch. Across machines: mpiexec -n N qorus train ... "
                   "(docs/distributed.md).")
def train(config, resume, no_progress, nproc, **settings):
    """Train a language model (by default a small byte-level Llama on the standard library's docs).

    CONFIG is an optional TOML file of settings (the names below, without dashes: batch_size = 16);
    options given here override it. Each run writes runs/NAME/: run.json, tokenizer.json, metrics.jsonl
    and checkpoints/. Ctrl-C saves a checkpoint and stops; --resume RUN_DIR continues exactly.
    """
    from qorus_jit.core import distributed as dist

    if nproc is not None and nproc > 1:
        _launch(nproc, config, resume, no_progress, settings)
        return
    try:
        dist.init()
    except RuntimeError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    world = dist.size()
    say = (lambda line: click.echo(line, err=True)) if dist.rank() == 0 else (lambda line: None)

    def fail(text: str, code: int):  # under MPI the other ranks may wait in a collective: stop them all
        if world > 1:
            dist.abort(text, code)
        click.echo(f"error: {text}", err=True)
        raise SystemExit(code) from None

    from qorus_jit.infer.generate import sample_text
    from qorus_jit.precompile import attention_cached, prepare, train_spec
    from qorus_jit.train import ConfigError, TrainConfig, TrainingError, resume_run, start_run
    from qorus_jit.train.run import is_finished

    cold = _NOTICE_SHOWN or not attention_cached()  # a first use: say so at once, compile once the run is set up
    if cold:
        _first_use_notice()
    overrides = {k: v for k, v in settings.items() if v is not None}
    progress = not no_progress and dist.rank() == 0
    try:
        if resume:
            if config:
                raise ConfigError("CONFIG: a run is resumed with its own settings; pass no config file with --resume")
            run = resume_run(resume, overrides, progress=progress)
            say(f"resuming {run.run_dir} at step {run.trainer.step} of {run.cfg.steps}")
        else:
            cfg = TrainConfig.from_toml(config, overrides) if config else TrainConfig.from_dict(overrides)
            run = start_run(cfg, progress=progress)
            n = run.model.num_parameters()
            what = f"{run.cfg.arch} with {n:,} parameters"
            if run.cfg.init:
                what += f" from {run.cfg.init}"
            if run.lora is not None:
                params = run.model.parameters()
                k = sum(params[name].size for name in run.model.trainable())
                what += f" (LoRA rank {run.cfg.lora_rank} on {','.join(run.lora['targets'])}: {k:,} train)"
            say(f"run {run.run_dir}: {what} on {run.data_name} ({run.data.n_train:,} train / "
                f"{run.data.n_val:,} val tokens), {run.cfg.steps} steps")
    except ConfigError as e:
        fail(str(e), 2)
    except KeyboardInterrupt:  # Ctrl-C before training began: nothing was written
        fail("interrupted before training began; nothing was written", 130)
    except Exception as e:  # under MPI: a rank that cannot set up stops the others (alone: the traceback)
        if world == 1:
            raise
        fail(f"{type(e).__name__}: {e}", 1)
    if world > 1:
        from qorus_jit.core.numerics import get_num_threads

        threads = get_num_threads()
        say(f"mpi: {world} processes x {threads} thread{'s' if threads > 1 else ''}, batch {world} x "
            f"{run.cfg.batch_size} windows ({dist.processes()}); run directory {run.run_dir}")
    try:  # a cold cache compiles here, in parallel, so the first step and the bar's rate leave it out
        for first in (True, False):  # under MPI one process a machine compiles, the others then load
            if (dist.local_rank() == 0) == first:
                prepare(train_spec(run.cfg, run.tokenizer.vocab_size), cold and first, progress=progress,
                        echo=say)
            dist.barrier()
    except KeyboardInterrupt:
        if not resume and dist.rank() == 0:
            _discard_new_run(run)
        fail("interrupted before training began" + ("" if resume else "; nothing was written"), 130)
    try:
        last = run.fit()  # under MPI a rank that fails stops every rank itself, naming it
    except TrainingError as e:  # a failed write names the intact checkpoint itself (e.resumable)
        then = (f"continue with: qorus train --resume {run.run_dir}" if e.resumable
                else _newest_checkpoint(run.run_dir, resumable=False))
        click.echo(f"error: {e}; {then}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # a second Ctrl-C: the step under way was abandoned
        click.echo(f"aborted at step {run.trainer.step}; {_newest_checkpoint(run.run_dir)}", err=True)
        raise SystemExit(130) from None
    t = run.trainer
    if t.interrupted and not is_finished(run.run_dir, run.cfg.steps):
        say(f"stopped at step {t.step}; checkpoint saved. Continue with: qorus train --resume {run.run_dir}"
            + (f" --nproc {world}" if world > 1 else ""))
        raise SystemExit(130)
    parts = [f"step {t.step}", f"loss {last.get('loss', float('nan')):.4f}"]
    if "val_loss" in last:
        parts.append(f"val_loss {last['val_loss']:.4f}")
    parts.append(f"{t.elapsed:.0f} s")
    say("done: " + ", ".join(parts) + f"; run directory {run.run_dir}")
    if run.cfg.sample_tokens and dist.rank() == 0:
        c = run.cfg
        click.echo("sample:\n" + sample_text(run.model, run.tokenizer, c.sample_prompt, c.sample_tokens, c.temperature,
                                             seed=c.seed))


def _launch(nproc: int, config, resume, no_progress, settings) -> None:
    """``qorus train --nproc N``: the same command under ``mpiexec -n N``, its output passed through. A rank
    that dies without a word (a kill) is named here: mpiexec's message names its pid, which rank 0's ``mpi:``
    line maps to a rank."""
    import importlib.util
    import os
    import re
    import selectors
    import shutil
    import signal
    import subprocess
    import sys

    from qorus_jit.core import distributed as dist

    def fail(text):
        click.echo(f"error: --nproc: {text}", err=True)
        raise SystemExit(2)

    if dist.launched():
        fail("this process runs under an MPI launcher already, which sets the process count; leave --nproc out")
    mpiexec = shutil.which("mpiexec")
    for what, missing in (("mpiexec", mpiexec is None), ("mpi4py", importlib.util.find_spec("mpi4py") is None)):
        if missing:
            fail(f"{what} is not installed: pip install \"qorus-jit[mpi]\" (or a cluster's MPI, docs/distributed.md)")
    args = ["train", *([config] if config else []), *(["--resume", resume] if resume else []),
            *(["--no-progress"] if no_progress else [])]
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args.append(f"{flag}={value}")
    proc = subprocess.Popen([mpiexec, "-n", str(nproc), sys.executable, "-m", "qorus_jit.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ranks, run_dir, dead, named = {}, None, None, False
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the ranks too; they stop together
    try:  # both streams passed through as they come (mpiexec's own messages go to stdout), and read
        streams = {proc.stdout.fileno(): [sys.stdout, b""], proc.stderr.fileno(): [sys.stderr, b""]}
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            while streams:
                for key, _ in sel.select():
                    out = streams[key.fd]
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                        del streams[key.fd]
                        continue
                    out[0].buffer.write(chunk)
                    out[0].flush()
                    *lines, out[1] = re.split(rb"[\r\n]", out[1] + chunk)
                    for line in (x.decode("utf-8", "replace") for x in lines):
                        if line.startswith("mpi: "):
                            ranks = {p: (int(r), h) for r, p, h in re.findall(r"rank (\d+) pid (\d+) on (\S+?)[,)]",
                                                                              line)}
                            run_dir = line.rsplit("; run directory ", 1)[-1]
                        named = named or line.startswith("error: rank ")
                        found = re.search(r"PID (\d+) RUNNING AT", line)
                        if found and dead is None:
                            dead = found.group(1)
                        found = re.search(r"EXIT STRING: (.+)", line)
                        if found and isinstance(dead, str):
                            dead = (dead, found.group(1).strip())
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
    if code and isinstance(dead, tuple) and not named and dead[0] in ranks:
        rank, host = ranks[dead[0]]
        where = _newest_checkpoint(run_dir) if run_dir else "no run directory was made"
        where += f" --nproc {nproc}" if "continue with" in where else ""
        click.echo(f"error: rank {rank} of {nproc} (pid {dead[0]} on {host}) ended without a word ({dead[1]}); "
                   f"mpiexec stopped the other ranks; {where}", err=True)
    if code:
        raise SystemExit(code if 0 < code < 256 else 1)


def _discard_new_run(run) -> None:
    """Remove what start_run wrote for a run that never trained (its run.json and tokenizer), and its folder
    when that leaves it empty."""
    from qorus_jit.formats.checkpoint import RUN_FILE, run_tokenizer_name

    for name in (RUN_FILE, run_tokenizer_name(run.tokenizer)):
        (run.run_dir / name).unlink(missing_ok=True)
    try:
        run.run_dir.rmdir()
    except OSError:
        pass


def _newest_checkpoint(run_dir, resumable: bool = True) -> str:
    """Where a stopped run can continue from, in words."""
    from qorus_jit.formats.checkpoint import latest_checkpoint, load_checkpoint

    found = latest_checkpoint(run_dir)
    if found is None:
        return f"no checkpoint was written, so {run_dir} cannot be resumed"
    try:
        step = load_checkpoint(found).step
    except (ValueError, OSError):
        return f"the newest checkpoint in {run_dir} is damaged or unreadable"
    where = f"the checkpoint of step {step} in {run_dir} is intact"
    return f"{where}; continue with: qorus train --resume {run_dir}" if resumable else where


class _Threads(click.ParamType):
    """``auto`` or a thread count >= 1."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        from qorus_jit.core.numerics import parse_threads

        try:
            return parse_threads(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _threads_option(fn):
    """``--threads N|auto`` on a command that computes: numba's and BLAS's threads, set as the option is parsed."""
    def apply(ctx, param, value):
        if value is not None:
            from qorus_jit.core.numerics import max_threads, set_num_threads

            set_num_threads(value if value == "auto" else min(value, max_threads()))
        return value

    return click.option("--threads", type=_Threads(), default=None, expose_value=False, callback=apply,
                        help="Threads for the kernels and BLAS [default: auto: every core, fewer while other "
                             "processes keep the cores busy, chosen by timing the work].")(fn)


@main.command()
@click.argument("source")
@click.option("--prompt", "-p", default="", help="Text to continue [default: empty, the model starts fresh].")
@click.option("--max-new-tokens", "-n", type=click.IntRange(min=0, max=2**63 - 1), default=256, show_default=True,
              help="Tokens to generate at most. Past the model's context (max_seq_len) the window slides: the "
                   "last half of the context is read again and generation goes on.")
@click.option("--temperature", "-t", type=click.FloatRange(min=0), default=0.8, show_default=True,
              help="Sampling temperature; 0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample from the k most likely tokens.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.95, show_default=True,
              help="Sample from the smallest set of tokens whose probability reaches p (nucleus); 1 disables.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible sampling.")
@click.option("--tokenizer", default=None, metavar="FILE",
              help="Tokenizer: tokenizer.bin (needed for llama2.c checkpoints) or tokenizer.json; at most as many "
                   "ids as the model's vocabulary (a padded vocabulary's extra ids are never sampled).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "int8"]), default=None,
              help="Weights of the linear layers and the head: fp32, bf16 or int8 (q8_0, int8 in groups of 32) "
                   "[default: as SOURCE holds them]. bf16 and int8 read 2x and 3.5x fewer bytes of those weights a "
                   "token.")
@_threads_option
def generate(source, prompt, max_new_tokens, temperature, top_k, top_p, seed, tokenizer, dtype):
    """Generate text from SOURCE: a run directory of qorus train, a Hugging Face folder (Llama, GPT-2; a
    quantized folder of qorus quantize too) or a llama2.c checkpoint (.bin, with --tokenizer). Tokens stream as
    they come; the last line reports prefill and decode speed, measured after a warm-up that compiles or loads
    the kernels, so loading the model and compiling are left out (their seconds are given apart)."""
    import time

    from qorus_jit.infer.generate import generate as run_generation
    from qorus_jit.infer.generate import warm_up
    from qorus_jit.models.sources import SourceError, load_source

    t0 = time.perf_counter()
    try:
        src = load_source(source, tokenizer, dtype)
        ids = src.encode(prompt)
        if ids.size == 0:  # nothing to start from: a newline (byte-level) or the first id
            import numpy as np

            ids = np.asarray(src.tokenizer.encode("\n") if src.kind != "llama2c" else [1], np.int64)
        gen = run_generation(src.model, ids, max_new_tokens, temperature, top_k, top_p, seed, src.stop_ids,
                             vocab_limit=src.vocab_limit)
    except (SourceError, ValueError, TypeError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    load_seconds = time.perf_counter() - t0
    from qorus_jit.precompile import generate_spec, prepare

    t0 = time.perf_counter()  # on a cold cache the kernels compile here, in parallel, with a notice and a bar
    prepare(generate_spec(src.model), echo=lambda line: click.echo(line, err=True))
    warm_seconds = time.perf_counter() - t0 + warm_up(src.model)
    click.echo(prompt, nl=False)
    shown, new = "", []
    context = [int(ids[-1])] if src.kind == "llama2c" and not prompt else []  # BOS: its next piece loses a space
    try:
        for tok in gen:
            if tok in src.stop_ids:
                break
            new.append(tok)
            text = src.decode(context + new)
            text = text.rstrip("\ufffd")  # a character whose bytes are not all out yet
            if len(text) > len(shown) and text.startswith(shown):
                click.echo(text[len(shown):], nl=False)
                shown = text
    except ValueError as e:  # non-finite logits: the model is broken, not the command line
        click.echo()
        click.echo(f"error: {e}", err=True)
        raise SystemExit(1) from None
    final = src.decode(context + new)  # what is left, bytes that never formed a character included
    click.echo(final[len(shown):] if final.startswith(shown) else "", nl=False)
    click.echo()
    n_decoded = max(len(gen.tokens) - 1, 0)  # the first new token comes from the prefill
    speeds = [f"prefill {gen.prompt.size} tokens at {gen.prefill_tokens_per_s:,.1f} tok/s"] if gen.tokens else []
    speeds += [f"decode {n_decoded} tokens at {gen.decode_tokens_per_s:,.1f} tok/s"] if n_decoded else []
    click.echo(f"[{gen.finish_reason}] {', '.join(speeds) or 'no token generated'} (not counted: loading "
               f"{load_seconds:.2f} s, kernel warm-up {warm_seconds:.2f} s)", err=True)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["hf", "llama2c", "gguf"]), default="hf", show_default=True,
              help="hf: a Hugging Face folder (config.json, model.safetensors, tokenizer files); llama2c: "
                   "model.bin + tokenizer.bin for llama2.c (a Llama with llama2.c's tokenizer or one like it); "
                   "gguf: model.gguf for llama.cpp (a Llama).")
@click.option("--merge-lora", is_flag=True,
              help="Fold a LoRA run's adapters into the weights (else hf writes them apart, as OUT/adapter/).")
@click.option("--dtype", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Tensors of a --format gguf file: F32, or the matrices as Q8_0 (int8 in groups of 32, as "
                   "llama.cpp's converter writes --outtype q8_0).")
@_threads_option
def export(run_dir, out, fmt, merge_lora, dtype):
    """Write the newest checkpoint of the run RUN_DIR, with its tokenizer, as the new folder OUT.

    OUT (absent or empty) appears whole or not at all. --format hf: transformers' AutoModelForCausalLM and
    AutoTokenizer load it as it is (a LoRA run's adapters, unless merged, load with peft from OUT/adapter),
    and so does qorus generate OUT. --format llama2c: llama2.c's run and qorus generate OUT/model.bin
    --tokenizer OUT/tokenizer.bin run it.
    """
    from qorus_jit.infer.export import export_run
    from qorus_jit.models.sources import SourceError

    try:
        done = export_run(run_dir, out, fmt, merge_lora=merge_lora, dtype=dtype)
    except (SourceError, ValueError, TypeError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    for note in done.notes:
        click.echo(note, err=True)
    click.echo(f"exported {run_dir} to {out} ({fmt}{', ' + dtype if dtype != 'fp32' else ''})", err=True)


@main.command()
@click.argument("source")
@click.argument("out", type=click.Path())
@click.option("--dtype", type=click.Choice(["int8", "bf16"]), default=None,
              help="Required. int8: q8_0 (int8 in groups of 32, one float16 scale each; GGUF's Q8_0); bf16: "
                   "bfloat16.")
@click.option("--tokenizer", default=None, metavar="FILE",
              help="Tokenizer to write beside the weights, as for qorus generate [default: SOURCE's own].")
@_threads_option
def quantize(source, out, dtype, tokenizer):
    """Write the Llama or GPT-2 of SOURCE (a run directory, a Hugging Face folder or a llama2.c checkpoint) with
    bf16 or int8 weights as the new folder OUT: config.json (with a "quantization" table), model.safetensors
    and the tokenizer files (docs/formats.md, "Quantized folders"). OUT (absent or empty) appears whole or not
    at all; qorus generate OUT and load_pretrained(OUT) load it without quantizing again."""
    from qorus_jit.infer.export import _write_folder
    from qorus_jit.models.quantize import model_format, quantize_model, save_quantized
    from qorus_jit.models.sources import SourceError
    from qorus_jit.tokenizers import BPETokenizer, ByteTokenizer

    if dtype is None:  # checked here: click's message for a missing choice spans lines
        click.echo("error: --dtype: expected int8 or bf16 (see qorus quantize --help)", err=True)
        raise SystemExit(2)
    try:
        out_path = _new_folder(out)
        model, tok = _quantize_source(source, tokenizer)
        held = model_format(model)
        if held is not None:
            raise SourceError(f"source: {source} is quantized already ({held}); quantize the fp32 model")
        quantize_model(model, dtype)
        # a Hugging Face folder holds a tokenizer.json: llama2.c's tokenizer.bin is left out (pass --tokenizer)
        kept = tok if isinstance(tok, (ByteTokenizer, BPETokenizer)) else None
        _write_folder(out_path, out_path.absolute().parent,
                      lambda folder: save_quantized(model, folder, tokenizer=kept))
    except (SourceError, ValueError, TypeError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    if kept is None:
        what = f"SOURCE's is a {type(tok).__name__}" if tok is not None else "SOURCE has none"
        click.echo(f"note: {out} holds no tokenizer ({what}); give qorus generate its --tokenizer", err=True)
    nbytes = sum(layer.weight_nbytes for layer in _quantized(model))
    click.echo(f"quantized {source} to {out} ({dtype}: {nbytes / 2**20:,.1f} MiB of linear weights)", err=True)


def _quantize_source(source, tokenizer):
    """``(model, tokenizer or None)`` of ``qorus quantize``'s SOURCE: a Hugging Face folder through
    load_pretrained (its tokenizer.json if it has one: none is needed to quantize), else load_source."""
    from pathlib import Path

    from qorus_jit.models.sources import load_source

    path = Path(source)
    if tokenizer is None and path.is_dir() and (path / "config.json").is_file() and not (path / "run.json").is_file():
        from qorus_jit.models import load_pretrained
        from qorus_jit.tokenizers import load_tokenizer

        model = load_pretrained(path)
        return model, load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    src = load_source(source, tokenizer)
    return src.model, src.tokenizer


def _new_folder(out):
    """``out`` as a Path, when it is a new or empty folder whose parent exists; else a SourceError."""
    from qorus_jit.core.files import check_path
    from qorus_jit.models.sources import SourceError

    path = check_path("out", out)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        what = "a non-empty folder" if path.is_dir() else "a file"
        raise SourceError(f"out: expected a new or empty folder, got {what} {path}")
    if not path.absolute().parent.is_dir():
        raise SourceError(f"out: no such folder: {path.absolute().parent}")
    return path


def _quantized(model):
    from qorus_jit.layers.quantized import quantized_layers

    return quantized_layers(model).values()


@main.command("compile")
@click.option("--list", "list_tasks", is_flag=True, help="List what would compile, and where to, and exit.")
@click.option("--only", metavar="NAMES", default=None, help="Comma-separated tasks or specs of --list.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Worker processes compiling side by side [default: one per core].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def compile_kernels(list_tasks, only, jobs, no_progress):
    """Compile the kernels that qorus train and qorus generate use (float32, the default options) into numba's
    cache, ahead of their first use, which otherwise compiles them before its first step (a minute or two, once
    per machine). Run it once after installing; qorus clear-cache removes them."""
    from qorus_jit import precompile as P
    from qorus_jit.sysinfo import cache_location

    specs = P.default_specs()
    work = P.tasks(specs)
    if list_tasks:
        click.echo(f"{'spec':15s} {'task':19s} {'about':>6s}  compiles")
        for spec, task in work:
            click.echo(f"{spec.name:15s} {task:19s} {P.COST[task][0]:4.0f} s  {P.WHAT[task]}")
        click.echo(f"about: one core's seconds on an AMD EPYC (Zen 1); into {cache_location()}")
        return
    names = [n.strip() for n in (only or "").split(",") if n.strip()]
    known = {t for _, t in work} | {s.name for s in specs}
    unknown = [n for n in names if n not in known]
    if unknown:
        click.echo(f"error: --only: unknown {', '.join(unknown)}; expected tasks or specs of qorus compile --list "
                   f"({', '.join(sorted(known))})", err=True)
        raise SystemExit(2)
    click.echo(f"compiling into {cache_location()}", err=True)
    report = P.compile_specs(specs, only=names or None, jobs=jobs, progress=not no_progress)
    click.echo(P.summary(report), err=True)
    if report.errors:
        raise SystemExit(1)


@main.command()
@click.argument("folder")
@click.argument("texts", nargs=-1, required=True)
@click.option("--out", "-o", default=None, metavar="FILE", help="Write .npy or .json instead of printing JSON.")
@_threads_option
def embed(folder, texts, out):
    """Sentence embeddings of TEXTS with the BERT-style sentence-transformers model in FOLDER (pooled as its
    1_Pooling/config.json says, L2-normalized): one JSON list per text, or a file with --out."""
    from qorus_jit.infer.embeddings import embed_command

    try:
        embed_command(folder, list(texts), out)
    except (ValueError, TypeError, ImportError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: RUN_DIR/curves.png].")
def plot(run_dir, out):
    """Draw the loss and learning-rate curves of RUN_DIR's metrics.jsonl to a PNG (needs matplotlib)."""
    from qorus_jit.train.plot import plot_run

    try:
        path = plot_run(run_dir, out)
    except (ValueError, ImportError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    click.echo(f"wrote {path}")


@main.command(context_settings={"max_content_width": 110})
@click.option("--suite", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="quick: one or two shapes per kernel family and short model runs (a few minutes); full: every "
                   "figure, more repeats, the cold-cache start-up.")
@click.option("--json", "json_out", metavar="OUT", default=None,
              help="Write every figure, its raw runs and the machine info to OUT.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads of numba and BLAS here and of every benchmark process.")
@click.option("--compare", "baseline", metavar="PATH", default=None,
              help="Gate against a baseline file or a folder of them (the one recorded on this CPU): exit 1 if a "
                   "figure's ratio fell below the baseline's by more than its tolerance. With no baseline of this "
                   "CPU, say so on one line and exit 0.")
@click.option("--only", metavar="NAMES", default=None,
              help="Comma-separated figures, groups (norm, w-train, ...) or kinds (kernels, models); see --list.")
@click.option("--breakdown", is_flag=True, help="After the table, print where a W-train step spends its time.")
@click.option("--write-baseline", metavar="PATH", default=None,
              help="Run the suite --rounds times (default 3) and write a baseline with per-figure tolerances to "
                   "PATH: a .json file, or a folder (this CPU's file in it).")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Run the whole suite this many times and pool the runs [default: 1, or 3 with --write-baseline].")
@click.option("--list", "list_figures", is_flag=True, help="List the figures of both suites and exit.")
def bench(suite, json_out, threads, baseline, only, breakdown, write_baseline, rounds, list_figures):
    """Run the benchmark suite (qorus_jit.bench) and print one row per figure: ours, the reference timed in the
    same run, their ratio (above 1: ours better), the median of several runs and its spread.

    Record this CPU's baseline on purpose with: qorus bench --suite quick --write-baseline perf/baselines/
    """
    from qorus_jit.bench import suite as suite_mod

    try:
        code = suite_mod.bench(suite=suite, json_out=json_out, threads=threads, baseline=baseline, only=only,
                               breakdown=breakdown, write_baseline=write_baseline, rounds=rounds,
                               list_figures=list_figures, out=click.echo)
    except suite_mod.BenchError as e:
        click.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
