"""Fine-tuning a GPT-2-shaped model: a full step and a LoRA step, qorus beside PyTorch eager (+ PEFT).

    python -m perf.bench_finetune [--quick] [--steps 5] [--rounds 3] [--threads 2] [--json PATH]

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

First both sides are checked to compute the same thing (:func:`check`): the same weights (HF's, copied into
qorus through the registry's name mapping and the Conv1D transpose, adapters copied too with a nonzero
``lora_B`` so the adapter path counts) give the same first-step loss (rel 1e-4) and, after one AdamW step, the
same second-step loss (rel 1e-3). Then each configuration runs in its own fresh process (so peaks do not mix):
``warmup`` steps, then ``steps`` timed ones; the process reports its median step and its peak RSS (``VmHWM``:
interpreter, libraries, model, gradients, optimizer state and activations; not ``ru_maxrss``, which Linux
carries over from the parent across ``exec``). The four configurations alternate ``rounds`` times, so a busy
moment slows both sides alike. Reported: medians over the rounds, the speed ratio torch / qorus (above 1:
qorus faster; goal >= 1.2), peak RSS qorus LoRA / qorus full (goal <= 0.6) and qorus / torch, the CPU and the
load average.
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
    from qorus_jit.train.losses import CrossEntropyLoss
    from qorus_jit.train.optim import AdamW

    config = GPT2Config(**shape)
    model = GPT2(config, rng=0)
    if hf_state is not None:
        model.load_parameters(GPT2.from_hf_tensors(check_tensors(config, hf_state, "transformers' GPT-2")))
    if lora:
        apply_lora(model, list(TARGETS["gpt2"]), rank=RANK, alpha=ALPHA, rng=0)
    return model, AdamW(model, **OPT), CrossEntropyLoss()


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


def check(shape: dict = SHAPE, B: int = BATCH, T: int = SEQ, threads: int | None = None) -> dict:
    """The first- and second-step losses of both sides with the same weights, full and LoRA.

    Returns ``{"full": {...}, "lora": {...}}``, each with the losses and their relative differences;
    raises AssertionError when the first loss differs by more than 1e-4 relative or the second by 1e-3."""
    import torch

    if threads is not None:
        from qorus_jit.core.numerics import set_num_threads

        set_num_threads(threads)
        torch.set_num_threads(threads)
    data = batches(shape, B, T)
    out = {}
    for kind in ("full", "lora"):
        lora = kind == "lora"
        tm, topt = torch_model(shape, lora)
        base = tm.get_base_model() if lora else tm
        hf_state = {k.replace(".base_layer.", "."): v.detach().numpy().copy()  # PEFT's wrapped names back to HF's
                    for k, v in base.state_dict().items() if "lora_" not in k}
        qm, qopt, loss_fn = qorus_model(shape, lora, hf_state)
        if lora:  # same adapters on both sides; lora_B nonzero so the first loss goes through them
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
        losses = {"torch": [], "qorus": []}
        for x, y in data:
            losses["torch"].append(torch_step(tm, topt, torch.from_numpy(x), torch.from_numpy(y)))
            losses["qorus"].append(qorus_step(qm, qopt, loss_fn, x, y))
        rel = [abs(a - b) / abs(a) for a, b in zip(losses["torch"], losses["qorus"], strict=True)]
        out[kind] = {"torch_losses": losses["torch"], "qorus_losses": losses["qorus"], "rel_diff": rel}
        assert rel[0] <= 1e-4, f"{kind}: first-step loss torch {losses['torch'][0]} vs qorus {losses['qorus'][0]}"
        assert rel[1] <= 1e-3, f"{kind}: second-step loss torch {losses['torch'][1]} vs qorus {losses['qorus'][1]}"
        del tm, topt, qm, qopt, base, hf_state
        gc.collect()
    return out


# -- one configuration in its own process -------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


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


def run_worker(config: str, steps: int, warmup: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "perf.bench_finetune", "--worker", config, "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        raise RuntimeError(f"{config} process failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
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


def run(steps: int = 5, warmup: int = 2, rounds: int = 3, threads: int = 2, do_check: bool = True,
        label: str = "") -> dict:
    import qorus_jit

    res = {"label": label, "qorus_jit": str(Path(qorus_jit.__file__).parent),
           "shape": dict(SHAPE, batch=BATCH, seq=SEQ), "optimizer": OPT, "lora": {"rank": RANK, "alpha": ALPHA},
           "threads": threads, "steps": steps, "warmup": warmup, "rounds": rounds, "machine_before": machine()}
    if do_check:
        t0 = time.perf_counter()
        res["check"] = check(threads=threads)
        res["check_s"] = time.perf_counter() - t0
        gc.collect()
    runs = {c: [] for c in CONFIGS}
    for r in range(rounds):
        for c in CONFIGS:
            got = run_worker(c, steps, warmup, threads)
            runs[c].append(got)
            print(f"round {r + 1}/{rounds} {c:10s} step {got['step_s']:.3f} s  peak RSS {got['peak_rss_MB']:.0f} MB",
                  flush=True)
    res["runs"] = runs
    med = statistics.median
    s = {}
    for c in CONFIGS:
        s[c] = {"step_s": med(g["step_s"] for g in runs[c]), "peak_rss_MB": med(g["peak_rss_MB"] for g in runs[c])}
    for kind in ("full", "lora"):
        pairs = zip(runs[f"torch-{kind}"], runs[f"qorus-{kind}"], strict=True)
        per_round = [t["step_s"] / q["step_s"] for t, q in pairs]
        s[f"speed_{kind}_torch_over_qorus"] = med(per_round)
        s[f"speed_{kind}_per_round"] = per_round
        s[f"rss_{kind}_qorus_over_torch"] = s[f"qorus-{kind}"]["peak_rss_MB"] / s[f"torch-{kind}"]["peak_rss_MB"]
    s["rss_qorus_lora_over_full"] = s["qorus-lora"]["peak_rss_MB"] / s["qorus-full"]["peak_rss_MB"]
    s["rss_torch_lora_over_full"] = s["torch-lora"]["peak_rss_MB"] / s["torch-full"]["peak_rss_MB"]
    res["summary"] = s
    res["machine_after"] = machine()
    return res


def table(res: dict) -> str:
    s, m0, m1 = res["summary"], res["machine_before"], res["machine_after"]
    sh = res["shape"]
    lines = [f"qorus_jit: {res['qorus_jit']} {res['label']}".rstrip(),
             f"GPT-2 shape: dim {sh['dim']}, {sh['n_heads']} heads, {sh['n_layers']} layers, vocab {sh['vocab_size']}, "
             f"{sh['max_seq_len']} positions, batch {sh['batch']} x {sh['seq']}; threads {res['threads']}; "
             f"{res['rounds']} rounds x {res['steps']} steps (+{res['warmup']} warm-up) a configuration",
             f"CPU: {m0['cpu']} ({m0['cpus']} CPUs; SIMD {' '.join(m0['simd'])}; AVX2 {'yes' if m0['avx2'] else 'no'},"
             f" AVX-512 {'yes' if m0['avx512'] else 'no'}); load average before "
             f"{' '.join(f'{x:.2f}' for x in m0['loadavg'])}, after {' '.join(f'{x:.2f}' for x in m1['loadavg'])}"]
    if "check" in res:
        c = res["check"]
        lines.append("check (same weights): " + "; ".join(
            f"{k} first loss {v['qorus_losses'][0]:.6f} (rel diff {v['rel_diff'][0]:.1e}), second rel diff "
            f"{v['rel_diff'][1]:.1e}" for k, v in c.items()))
    lines.append("")
    lines.append(f"{'step':6s} {'qorus s':>9s} {'torch s':>9s} {'torch/qorus':>12s} {'qorus MB':>9s} {'torch MB':>9s} "
                 f"{'qorus/torch':>12s}")
    for kind in ("full", "lora"):
        q, t = s[f"qorus-{kind}"], s[f"torch-{kind}"]
        lines.append(f"{kind:6s} {q['step_s']:9.3f} {t['step_s']:9.3f} {s[f'speed_{kind}_torch_over_qorus']:11.2f}x "
                     f"{q['peak_rss_MB']:9.0f} {t['peak_rss_MB']:9.0f} {s[f'rss_{kind}_qorus_over_torch']:12.2f}")
    lines.append(f"speed ratio per round: full {' '.join(f'{x:.2f}' for x in s['speed_full_per_round'])}; "
                 f"lora {' '.join(f'{x:.2f}' for x in s['speed_lora_per_round'])}  (goal >= 1.2)")
    lines.append(f"peak RSS LoRA / full: qorus {s['rss_qorus_lora_over_full']:.2f} (goal <= 0.6), "
                 f"torch+PEFT {s['rss_torch_lora_over_full']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps a process (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes a configuration (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 steps after 1 warm-up step")
    ap.add_argument("--no-check", action="store_true", help="skip the equal-loss check")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--label", default="", help="a note kept in the JSON (e.g. the commit measured)")
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.warmup, args.threads)))
        return 0
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 1
    res = run(args.steps, args.warmup, args.rounds, args.threads, not args.no_check, args.label)
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
