"""Fine-tuning a GPT-2-shaped model: a full step and a LoRA step, qorus beside PyTorch eager (+ PEFT).

    python -m perf.bench_finetune [--quick] [--steps 6] [--rounds 1] [--threads 2] [--json PATH]

Shape: GPT-2 (dim 768, 12 heads, 4 layers, vocab 50257, 1024 positions, GELU-tanh MLP, tied head), batch 4 x
256 tokens, no dropout. One step is forward + cross-entropy (mean over the tokens, as the Trainer computes it:
``CrossEntropyLoss``) + backward + AdamW (lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01; each side's
default parameter groups: qorus decays no norm, bias or embedding, ``torch.optim.AdamW`` decays every tensor it
is given; no gradient clipping on either side).

- full: ``qorus_jit.models.GPT2`` + ``qorus_jit.train.optim.AdamW`` against ``transformers``'
  ``GPT2LMHeadModel`` (its default attention, ``sdpa``) + ``torch.optim.AdamW``, eager, with
  ``torch.set_num_threads`` equal to qorus's thread count;
- lora: rank 8, alpha 16 on every GPT-2 target (qkv, o, up, down: ``apply_lora``) against ``peft``'s
  ``get_peft_model`` (``c_attn``, ``c_proj``, ``c_fc``, ``fan_in_fan_out=True``), the rest frozen.

Time: one fresh process a kind (full, LoRA) builds both sides with the same weights (transformers' GPT-2
copied into qorus through the registry's name mapping and the Conv1D transpose; for LoRA the adapters copied
too, with a nonzero ``lora_B`` so the adapter path counts). Its first two steps on each side are the check
(:func:`compare`: the first-step loss equal within 1e-4 relative, the second, after one AdamW step, within
1e-3) and the warm-up; then ``steps`` pairs of steps alternate (qorus, torch / torch, qorus ...), so that a
busy moment of the shared machine slows both sides alike: alternating whole processes, a step of 5-20 s on the
busy 2-core AMD EPYC (Zen 1, AVX2), proved far too noisy. Reported: the median step of each side, and the ratio
torch / qorus (above 1: qorus faster; goal >= 1.2) as the median of the pairs' ratios, with their spread.

Peak RSS: each configuration (qorus full, torch full, qorus LoRA, torch+PEFT LoRA) in its own fresh process,
so peaks do not mix: one warm-up step and ``rss_steps`` more, then ``VmHWM`` (interpreter, libraries, model,
gradients, optimizer state and activations; not ``ru_maxrss``, which Linux carries over from the parent across
``exec``). Reported: qorus LoRA / qorus full (goal <= 0.6) and qorus / torch. The CPU and the load average
(before and after) are printed with the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from qorus_jit.bench._timing import in_turn, spread

#: GPT-2 small's block shape with 4 layers (GPT2Config field names).
SHAPE = dict(dim=768, n_layers=4, n_heads=12, vocab_size=50257, max_seq_len=1024)
BATCH, SEQ = 4, 256
#: The same optimizer hyperparameters on both sides.
OPT = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
RANK, ALPHA = 8, 16.0
PEFT_TARGETS = ["c_attn", "c_proj", "c_fc"]
CONFIGS = ("qorus-full", "torch-full", "qorus-lora", "torch-lora")
TINY = dict(dim=64, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=32)  # the smoke test's shape


# -- the two sides ------------------------------------------------------------------------------------------


def batches(shape: dict, B: int, T: int, n: int = 2, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (inputs, next-token targets) pairs of random token ids, each (B, T)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.integers(0, shape["vocab_size"], (B, T + 1))
        out.append((np.ascontiguousarray(s[:, :-1]), np.ascontiguousarray(s[:, 1:])))
    return out


def torch_model(shape: dict, lora: bool, seed: int = 0):
    """``GPT2LMHeadModel`` of ``shape`` (no dropout), wrapped by PEFT when ``lora``; with its AdamW."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=shape["dim"], n_layer=shape["n_layers"], n_head=shape["n_heads"],
                     vocab_size=shape["vocab_size"], n_positions=shape["max_seq_len"],
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, tie_word_embeddings=True,
                     **({} if shape["vocab_size"] > 50256 else {"bos_token_id": None, "eos_token_id": None}))
    model = GPT2LMHeadModel(cfg).float().train()
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=PEFT_TARGETS,
                                                 fan_in_fan_out=True, lora_dropout=0.0, bias="none"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **OPT)
    return model, opt


def torch_step(model, opt, x, y) -> float:
    import torch

    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()


def qorus_model(shape: dict, lora: bool, hf_state: dict | None = None):
    """``GPT2`` of ``shape`` (HF tensors ``hf_state`` loaded through the registry's mapping when given), with
    all its GPT-2 targets adapted when ``lora``; with its AdamW and the Trainer's loss."""
    from qorus_jit.layers.lora import TARGETS, apply_lora
    from qorus_jit.models import GPT2
    from qorus_jit.models.gpt2 import GPT2Config
    from qorus_jit.models.registry import check_tensors
    from qorus_jit.train.losses import make_loss
    from qorus_jit.train.optim import AdamW

    config = GPT2Config(**shape)
    model = GPT2(config, rng=0)
    if hf_state is not None:
        model.load_parameters(GPT2.from_hf_tensors(check_tensors(config, hf_state, "transformers' GPT-2")))
    if lora:
        apply_lora(model, list(TARGETS["gpt2"]), rank=RANK, alpha=ALPHA, rng=0)
    return model, AdamW(model, **OPT), make_loss("cross_entropy")  # the Trainer's: its gradient over the logits


def qorus_step(model, opt, loss_fn, x, y) -> float:
    """One step as ``Trainer.train_step`` takes it (one micro-batch, no clipping)."""
    opt.zero_grad()
    loss, dlogits = loss_fn(model.forward(x), y)
    model.backward(dlogits)
    opt.step()
    return loss


# -- the check: both sides compute the same thing -----------------------------------------------------------


def _peft_name(dotted: str) -> str:
    """qorus adapter name -> PEFT's module name (``transformer.h.0.attn.c_attn`` -> ``base_model.model.<it>``)."""
    return "base_model.model." + dotted


def set_threads(threads: int) -> None:
    """The same thread count for qorus (numba and BLAS) and PyTorch."""
    import torch

    from qorus_jit.core.numerics import set_num_threads

    set_num_threads(threads)
    torch.set_num_threads(threads)


def build_pair(shape: dict, kind: str):
    """Both sides of ``kind`` ('full' or 'lora') with the same weights: transformers' initial GPT-2 copied into
    qorus; for LoRA qorus's adapters copied into PEFT's, with ``lora_B`` made nonzero on both so the adapter
    path counts in the loss. Returns ``(torch_model, torch_opt, qorus_model, qorus_opt, loss_fn)``."""
    import torch

    lora = kind == "lora"
    tm, topt = torch_model(shape, lora)
    base = tm.get_base_model() if lora else tm
    hf_state = {k.replace(".base_layer.", "."): v.detach().numpy().copy()  # PEFT's wrapped names back to HF's
                for k, v in base.state_dict().items() if "lora_" not in k}
    qm, qopt, loss_fn = qorus_model(shape, lora, hf_state)
    del hf_state
    if lora:
        from qorus_jit.layers.lora import lora_layers

        rng = np.random.default_rng(1)
        modules = dict(tm.named_modules())
        for dotted, a in lora_layers(qm).items():
            a.lora_B[...] = rng.normal(0.0, 0.02, a.lora_B.shape)
            m = modules[_peft_name(dotted)]
            with torch.no_grad():
                m.lora_A["default"].weight.copy_(torch.from_numpy(a.lora_A))
                m.lora_B["default"].weight.copy_(torch.from_numpy(a.lora_B))
        n_torch = sum(p.numel() for p in tm.parameters() if p.requires_grad)
        n_qorus = sum(qm.parameters()[k].size for k in qm.trainable())
        assert n_torch == n_qorus, f"trainable parameters: torch+PEFT {n_torch}, qorus {n_qorus}"
    return tm, topt, qm, qopt, loss_fn


def compare(kind: str, torch_losses: list[float], qorus_losses: list[float]) -> dict:
    """The losses of the first two steps and their relative differences; AssertionError when the first differs by
    more than 1e-4 relative or the second (after one AdamW step) by more than 1e-3."""
    rel = [abs(a - b) / abs(a) for a, b in zip(torch_losses[:2], qorus_losses[:2], strict=True)]
    assert rel[0] <= 1e-4, f"{kind}: first-step loss torch {torch_losses[0]} vs qorus {qorus_losses[0]}"
    assert rel[1] <= 1e-3, f"{kind}: second-step loss torch {torch_losses[1]} vs qorus {qorus_losses[1]}"
    return {"torch_losses": torch_losses[:2], "qorus_losses": qorus_losses[:2], "rel_diff": rel}


def check(shape: dict = SHAPE, B: int = BATCH, T: int = SEQ, threads: int | None = None) -> dict:
    """The first- and second-step losses of both sides with the same weights (:func:`build_pair`), full and
    LoRA: ``{"full": {...}, "lora": {...}}`` as :func:`compare` returns them (it raises on a mismatch)."""
    import torch

    if threads is not None:
        set_threads(threads)
    data = batches(shape, B, T)
    out = {}
    for kind in ("full", "lora"):
        tm, topt, qm, qopt, loss_fn = build_pair(shape, kind)
        losses = {"torch": [], "qorus": []}
        for x, y in data:
            losses["torch"].append(torch_step(tm, topt, torch.from_numpy(x), torch.from_numpy(y)))
            losses["qorus"].append(qorus_step(qm, qopt, loss_fn, x, y))
        out[kind] = compare(kind, losses["torch"], losses["qorus"])
        del tm, topt, qm, qopt
        gc.collect()
    return out


# -- timing: both sides in one process, step by step ---------------------------------------------------------


def time_worker(kind: str, steps: int, threads: int) -> dict:
    """Both sides of ``kind`` in this process with the same weights: the two first steps of each are checked
    (:func:`compare`) and count as warm-up, then ``steps`` pairs of steps alternate, the order flipping each
    pair, so that a busy moment of the machine slows both sides alike."""
    import torch

    set_threads(threads)
    tm, topt, qm, qopt, loss_fn = build_pair(SHAPE, kind)
    data = batches(SHAPE, BATCH, SEQ)
    tdata = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    sides = {"torch": lambda i: torch_step(tm, topt, *tdata[i % len(tdata)]),
             "qorus": lambda i: qorus_step(qm, qopt, loss_fn, *data[i % len(data)])}
    times = {"torch": [], "qorus": []}
    losses = {"torch": [], "qorus": []}
    for i in range(2 + steps):
        for side in in_turn(i, "qorus", "torch"):
            t0 = time.perf_counter()
            losses[side].append(sides[side](i))
            times[side].append(time.perf_counter() - t0)
    res = {"kind": kind, "check": compare(kind, losses["torch"], losses["qorus"]),
           "warmup_s": {k: v[:2] for k, v in times.items()}, "steps_s": {k: v[2:] for k, v in times.items()},
           "losses": losses, "loadavg": list(os.getloadavg())}
    res["pair_ratios"] = [t / q for t, q in zip(res["steps_s"]["torch"], res["steps_s"]["qorus"], strict=True)]
    return res


# -- one configuration in its own process -------------------------------------------------------------------


def status_mb(key: str = "VmHWM") -> float:
    """A memory figure of this process from ``/proc/self/status``, in MB: ``VmHWM`` its own peak RSS, ``VmRSS``
    its RSS now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``), in MB."""
    return status_mb("VmHWM")


def worker(config: str, steps: int, warmup: int, threads: int) -> dict:
    """Build ``config``'s model, take ``warmup`` + ``steps`` steps; the timed steps and the peak RSS."""
    side, kind = config.split("-")
    data = batches(SHAPE, BATCH, SEQ)
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        model, opt = torch_model(SHAPE, kind == "lora")
        tdata = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]

        def step(i):
            return torch_step(model, opt, *tdata[i % len(tdata)])
    else:
        from qorus_jit.core.numerics import set_num_threads

        set_num_threads(threads)
        model, opt, loss_fn = qorus_model(SHAPE, kind == "lora")

        def step(i):
            return qorus_step(model, opt, loss_fn, *data[i % len(data)])
    rss_built = peak_rss_mb()
    times, losses = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t0)
    return {"config": config, "step_s": statistics.median(times[warmup:]), "steps_s": times[warmup:],
            "warmup_s": times[:warmup], "losses": losses, "peak_rss_MB": peak_rss_mb(),
            "rss_after_build_MB": rss_built}


def run_worker(*args: str) -> dict:
    """Run this module with ``args`` in a fresh interpreter; the JSON its last line prints."""
    cmd = [sys.executable, "-m", "perf.bench_finetune", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)}: process failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the machine ---------------------------------------------------------------------------------------------


def machine() -> dict:
    """CPU model name (lscpu), its widest SIMD (from /proc/cpuinfo's flags), cores and the load average."""
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    simd = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni") if f in flags]
    return {"cpu": model, "simd": simd, "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}


# -- the run -------------------------------------------------------------------------------------------------


def run(steps: int = 6, rounds: int = 1, rss_steps: int = 2, threads: int = 2, label: str = "") -> dict:
    """The timing processes (``rounds`` a kind, ``steps`` pairs each, the check first), then the peak-RSS
    processes (one a configuration: one warm-up step and ``rss_steps`` more); medians and ratios."""
    import qorus_jit

    res = {"label": label, "qorus_jit": str(Path(qorus_jit.__file__).parent),
           "shape": dict(SHAPE, batch=BATCH, seq=SEQ), "optimizer": OPT, "lora": {"rank": RANK, "alpha": ALPHA},
           "threads": threads, "steps": steps, "rounds": rounds, "rss_steps": rss_steps, "machine_before": machine()}
    med = statistics.median
    s = {}
    res["timing"] = {}
    for kind in ("full", "lora"):
        got = [run_worker("--time", kind, "--steps", str(steps), "--threads", str(threads)) for _ in range(rounds)]
        res["timing"][kind] = got
        q = [t for g in got for t in g["steps_s"]["qorus"]]
        t = [t for g in got for t in g["steps_s"]["torch"]]
        ratios = [r for g in got for r in g["pair_ratios"]]
        lo, hi = spread(ratios)
        s[kind] = {"qorus_step_s": med(q), "torch_step_s": med(t), "speed_torch_over_qorus": med(ratios),
                   "pair_ratio_min": lo, "pair_ratio_max": hi,
                   "fastest_torch_over_qorus": min(t) / min(q),
                   "check": got[0]["check"]}
        print(f"{kind}: qorus {med(q):.2f} s, torch {med(t):.2f} s a step; pair ratios "
              f"{' '.join(f'{r:.2f}' for r in ratios)}; load {got[-1]['loadavg'][0]:.2f}", flush=True)
    res["rss"] = {}
    for c in CONFIGS:
        got = run_worker("--rss", c, "--steps", str(rss_steps), "--threads", str(threads))
        res["rss"][c] = got
        print(f"{c:10s} peak RSS {got['peak_rss_MB']:.0f} MB (after building {got['rss_after_build_MB']:.0f} MB), "
              f"steps {' '.join(f'{x:.2f}' for x in got['steps_s'])} s", flush=True)
    for kind in ("full", "lora"):
        q, t = res["rss"][f"qorus-{kind}"]["peak_rss_MB"], res["rss"][f"torch-{kind}"]["peak_rss_MB"]
        s[kind].update(qorus_peak_rss_MB=q, torch_peak_rss_MB=t, rss_qorus_over_torch=q / t)
    s["rss_qorus_lora_over_full"] = s["lora"]["qorus_peak_rss_MB"] / s["full"]["qorus_peak_rss_MB"]
    s["rss_torch_lora_over_full"] = s["lora"]["torch_peak_rss_MB"] / s["full"]["torch_peak_rss_MB"]
    res["summary"] = s
    res["machine_after"] = machine()
    return res


def table(res: dict) -> str:
    s, m0, m1 = res["summary"], res["machine_before"], res["machine_after"]
    sh = res["shape"]
    load = " ".join(f"{x:.2f}" for x in m0["loadavg"]), " ".join(f"{x:.2f}" for x in m1["loadavg"])
    lines = [f"qorus_jit: {res['qorus_jit']} {res['label']}".rstrip(),
             f"GPT-2 shape: dim {sh['dim']}, {sh['n_heads']} heads, {sh['n_layers']} layers, vocab {sh['vocab_size']}, "
             f"{sh['max_seq_len']} positions, batch {sh['batch']} x {sh['seq']}; threads {res['threads']}; "
             f"{res['rounds']} x {res['steps']} alternating step pairs a kind after 2 checked ones",
             f"CPU: {m0['cpu']} ({m0['cpus']} CPUs; SIMD {' '.join(m0['simd'])}; AVX2 {'yes' if m0['avx2'] else 'no'},"
             f" AVX-512 {'yes' if m0['avx512'] else 'no'}); load average before {load[0]}, after {load[1]}",
             "check (same weights): " + "; ".join(
                 f"{k} first loss {s[k]['check']['qorus_losses'][0]:.6f} (rel diff {s[k]['check']['rel_diff'][0]:.1e}),"
                 f" second rel diff {s[k]['check']['rel_diff'][1]:.1e}" for k in ("full", "lora")),
             "",
             f"{'step':5s} {'qorus s':>8s} {'torch s':>8s} {'torch/qorus':>11s} {'pairs min-max':>14s} {'fastest':>8s} "
             f"{'qorus MB':>9s} {'torch MB':>9s} {'qorus/torch':>11s}"]
    for kind in ("full", "lora"):
        k = s[kind]
        lines.append(f"{kind:5s} {k['qorus_step_s']:8.2f} {k['torch_step_s']:8.2f} "
                     f"{k['speed_torch_over_qorus']:10.2f}x {k['pair_ratio_min']:6.2f}-{k['pair_ratio_max']:<7.2f} "
                     f"{k['fastest_torch_over_qorus']:7.2f}x "
                     f"{k['qorus_peak_rss_MB']:9.0f} {k['torch_peak_rss_MB']:9.0f} {k['rss_qorus_over_torch']:11.2f}")
    lines.append("speed goal: torch/qorus >= 1.2 (the median of the pairs' ratios; pairs: their min-max; fastest: "
                 "the ratio of each side's fastest step, the least disturbed by other processes)")
    lines.append(f"peak RSS LoRA / full: qorus {s['rss_qorus_lora_over_full']:.2f} (goal <= 0.6), "
                 f"torch+PEFT {s['rss_torch_lora_over_full']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed step pairs a process (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="timing processes a kind (default: %(default)s)")
    ap.add_argument("--rss-steps", type=int, default=2, help="steps of a peak-RSS process after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 step pairs and 1 step for the peak RSS")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--label", default="", help="a note kept in the JSON (e.g. the commit measured)")
    ap.add_argument("--time", choices=("full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--rss", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time:
        print(json.dumps(time_worker(args.time, args.steps, args.threads)))
        return 0
    if args.rss:
        print(json.dumps(worker(args.rss, args.steps, 1, args.threads)))
        return 0
    if args.quick:
        args.steps, args.rss_steps = 3, 1
    res = run(args.steps, args.rounds, args.rss_steps, args.threads, args.label)
    print(table(res))
    if args.json:
        from qorus_jit.core.files import atomic_write_json

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, res)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
