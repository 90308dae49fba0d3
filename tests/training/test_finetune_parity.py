"""Fine-tuning equals PyTorch: qorus's Trainer on a Hugging Face folder against the same steps in PyTorch
(full fine-tuning) and in PEFT + PyTorch (LoRA), on the same batches with masked (-100) targets.

Both sides: AdamW with the same hyperparameters and the same no-decay set (qorus's ``decay_groups``), the lr of
qorus's warmup+cosine schedule set per step, global gradient-norm clipping at 1.0, ``grad_accum`` micro-batches
whose mean loss is the step's loss (each micro-batch's loss the mean over its counted tokens). The last test runs
``start_run(TrainConfig(init=..., data=<JSONL>))``, what ``qorus train --init`` does, against the same steps."""

import json

import numpy as np
import pytest

from qorus_jit.layers.lora import TARGETS, apply_lora, lora_layers
from qorus_jit.models import load_pretrained
from qorus_jit.train.optim import AdamW, decay_groups
from qorus_jit.train.schedule import warmup_cosine
from qorus_jit.train.trainer import Trainer
from tests.helpers import torch_or_skip
from tests.models.reference import transformers_or_skip

STEPS, WARMUP = 20, 3
LR, LORA_LR = 3e-3, 1e-2  # LoRA takes a larger lr (as usual), so that 20 steps move the loss
# (at 2e-2 a LoRA run spikes at step 18 and float32 rounding grows to 3e-4 there, torch against torch in float64)
BETAS, EPS, WD, CLIP = (0.9, 0.95), 1e-8, 0.1, 1.0
V, B, T = 256, 4, 32
RTOL = 1e-3  # the bar for the per-step losses


class FixedBatches:
    """A dataset that yields fixed ``(x, y)`` batches in order (what the Trainer reads through ``next_batch``)."""

    def __init__(self, batches):
        self.batches, self.pos = batches, 0

    def next_batch(self):
        x, y = self.batches[self.pos]
        self.pos += 1
        return x, y

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])


def make_batches(n, seed=0):
    """``n`` batches of ids from a noisy rule (so that training lowers the loss), targets the next ids, with
    a prompt of 3..12 positions per row set to -100 as instruction data has, and one row's tail padded so."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.empty((B, T + 1), np.int64)
        ids[:, 0] = rng.integers(0, V, B)
        for t in range(1, T + 1):
            noise = rng.random(B) < 0.2
            ids[:, t] = np.where(noise, rng.integers(0, V, B), (ids[:, t - 1] * 5 + 7) % V)
        x, y = ids[:, :-1].copy(), ids[:, 1:].copy()
        for r, p in enumerate(rng.integers(3, 13, B)):
            y[r, :p] = -100
        y[-1, T - rng.integers(1, 8):] = -100  # a padded tail
        out.append((x, y))
    return out


def read_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def qorus_losses(model, batches, grad_accum, run_dir, lr=LR):
    """Train ``model`` with qorus's Trainer over ``batches``; returns the per-step losses of metrics.jsonl."""
    opt = AdamW(model, lr=lr, betas=BETAS, eps=EPS, weight_decay=WD)
    schedule = warmup_cosine(lr, WARMUP, STEPS, lr / 10)
    trainer = Trainer(model, opt, FixedBatches(batches), steps=STEPS, schedule=schedule, grad_accum=grad_accum,
                      clip=CLIP, run_dir=run_dir, progress=False)
    trainer.fit()
    return read_losses(run_dir), opt


def torch_losses(torch, model, named, no_decay, batches, grad_accum, lr=LR):
    """The same steps in PyTorch: ``named`` are the trainable parameters by qorus name; returns the losses."""
    F = torch.nn.functional
    groups = [{"params": [p for n, p in named.items() if n not in no_decay], "weight_decay": WD},
              {"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, foreach=False)
    schedule = warmup_cosine(lr, WARMUP, STEPS, lr / 10)
    params = list(named.values())
    model.train()
    losses, it = [], iter(batches)
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = schedule(step)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(grad_accum):
            x, y = next(it)
            logits = model(torch.from_numpy(x)).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                                   ignore_index=-100)
            (loss / grad_accum).backward()
            total += loss.item() / grad_accum
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        losses.append(total)
    return losses


def rel_diff(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.abs(ours - theirs) / np.abs(theirs)


def llama_folder(transformers, torch, folder, tie=False):
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=tie)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # norms off 1 so that their gradients and updates count
        for n, p in ref.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(folder)
    return transformers.LlamaForCausalLM


def gpt2_folder(transformers, torch, folder):
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).float().save_pretrained(folder)
    return transformers.GPT2LMHeadModel


@pytest.mark.parametrize("grad_accum,tie", [(1, False), (2, False), (1, True)])
def test_full_finetuning_equals_pytorch(tmp_path, grad_accum, tie):
    """Tied: the head shares the embedding (one parameter on both sides, trained by both uses, not decayed)."""
    torch, transformers = torch_or_skip(), transformers_or_skip()
    cls = llama_folder(transformers, torch, tmp_path / "base", tie)
    batches = make_batches(STEPS * grad_accum)
    model = load_pretrained(tmp_path / "base")
    ours, opt = qorus_losses(model, batches, grad_accum, tmp_path / "run")
    _, no_decay = decay_groups(model)
    assert set(no_decay) == set(opt.not_decayed) and "model.embed_tokens.weight" in no_decay

    ref = cls.from_pretrained(tmp_path / "base", attn_implementation="eager").float()
    named = dict(ref.named_parameters())
    assert set(named) == set(model.parameters())  # the same names on both sides: the groups match
    assert ("lm_head.weight" in named) != tie
    theirs = torch_losses(torch, ref, named, set(no_decay), batches, grad_accum)

    assert len(ours) == STEPS
    assert theirs[-1] < theirs[0] - 0.3  # training moved the weights
    rel = rel_diff(ours, theirs)
    print(f"full fine-tuning, grad_accum {grad_accum}, tied {tie}: largest relative loss difference {rel.max():.2e}")
    assert rel.max() < RTOL, f"step {int(rel.argmax()) + 1}: {ours[rel.argmax()]} vs {theirs[rel.argmax()]}"
    # and the weights at the end (Frobenius norm of the difference over the tensor's)
    errs = {n: np.linalg.norm(p - named[n].detach().numpy()) / np.linalg.norm(named[n].detach().numpy())
            for n, p in model.parameters().items()}
    worst = max(errs, key=errs.get)
    print(f"  weights: largest relative difference {errs[worst]:.2e} ({worst})")
    assert errs[worst] < RTOL, f"{worst}: relative difference {errs[worst]:.2e}"


def _peft_lora(torch, peft, ref, model, arch, targets):
    """PEFT's adapters on ``ref`` over the same layers as qorus's, with qorus's initial lora_A copied in."""
    table = TARGETS[arch]
    modules = [table[t] if arch == "gpt2" else table[t].rsplit(".", 1)[-1] for t in targets.split(",")]
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules, lora_dropout=0.0, bias="none",
                          fan_in_fan_out=arch == "gpt2")
    ref = peft.get_peft_model(ref, cfg)
    named = {}  # qorus name -> PEFT's parameter
    prefix = "base_model.model."
    for n, p in ref.named_parameters():
        if p.requires_grad:
            assert ".lora_" in n, n  # the base is frozen
            named[n[len(prefix):].replace(".default.", ".")] = p
    ours = {n: p for n, p in model.parameters().items() if n in set(model.trainable())}
    assert set(named) == set(ours)
    with torch.no_grad():
        for n, p in named.items():
            if "lora_B" in n:
                assert not p.any() and not ours[n].any()
            else:
                p.copy_(torch.from_numpy(ours[n]))
    return ref, named


@pytest.mark.parametrize("arch,targets,grad_accum", [("llama", "q,k,v,o,gate,up,down", 1),
                                                     ("llama", "q,k,v,o,gate,up,down", 2),
                                                     ("gpt2", "qkv,o,up,down", 1)])
def test_lora_finetuning_equals_peft(tmp_path, arch, targets, grad_accum):
    torch, transformers = torch_or_skip(), transformers_or_skip()
    peft = pytest.importorskip("peft")
    cls = (llama_folder if arch == "llama" else gpt2_folder)(transformers, torch, tmp_path / "base")
    batches = make_batches(STEPS * grad_accum)
    model = load_pretrained(tmp_path / "base")
    adapters = apply_lora(model, targets, rank=4, alpha=8, rng=1)
    assert len(adapters) == 2 * len(targets.split(","))
    base_before = {n: p.copy() for n, p in model.parameters().items() if ".lora_" not in n}
    init = {n: p.copy() for n, p in model.parameters().items() if ".lora_" in n}

    ref = cls.from_pretrained(tmp_path / "base", **({"attn_implementation": "eager"} if arch == "llama" else {}))
    ref, named = _peft_lora(torch, peft, ref.float(), model, arch, targets)
    ours, opt = qorus_losses(model, batches, grad_accum, tmp_path / "run", LORA_LR)
    no_decay = set(opt.not_decayed)
    assert not no_decay & set(named)  # both sides decay every adapter
    theirs = torch_losses(torch, ref, named, no_decay, batches, grad_accum, LORA_LR)

    assert len(ours) == STEPS
    assert theirs[-1] < theirs[0] - 0.05  # the adapters learned something
    rel = rel_diff(ours, theirs)
    print(f"LoRA {arch} {targets}, grad_accum {grad_accum}: largest relative loss difference {rel.max():.2e}")
    assert rel.max() < RTOL, f"step {int(rel.argmax()) + 1}: {ours[rel.argmax()]} vs {theirs[rel.argmax()]}"

    for n, p in base_before.items():  # the base stayed frozen
        assert np.array_equal(model.parameters()[n], p), n
    worst = 0.0
    for n, p in named.items():
        got, want = model.parameters()[n], p.detach().numpy()
        assert np.abs(got - init[n]).max() > 1e-3, n  # trained
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        worst = max(worst, err)
        assert err < RTOL, f"{n}: relative difference {err:.2e}"
    print(f"  adapters: largest relative difference (Frobenius) {worst:.2e}")
    assert sorted(lora_layers(model)) == sorted({n.rsplit(".lora_", 1)[0] for n in named})


# -- qorus train --init: a run's metrics against PyTorch ---------------------------------------------------


def write_pairs(path, n=120, seed=0):
    """A JSONL file of ``n`` prompt/completion pairs (sums of two small numbers)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for a, b in rng.integers(0, 50, (n, 2)):
            f.write(json.dumps({"prompt": f"Q: {a}+{b}=?\nA:", "completion": f" {a + b}."}) + "\n")
    return path


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_train_init_run_equals_pytorch(tmp_path, lora_rank):
    """``start_run(TrainConfig(init=<HF folder>, data=<JSONL>))``: the losses of its metrics.jsonl equal
    PyTorch's (PEFT + PyTorch for LoRA) on the batches of the same dataset read in the trainer's order."""
    torch, transformers = torch_or_skip(), transformers_or_skip()
    from qorus_jit.data import InstructDataset
    from qorus_jit.tokenizers import ByteTokenizer, load_tokenizer
    from qorus_jit.train.run import TrainConfig, start_run

    cls = llama_folder(transformers, torch, tmp_path / "base")
    (tmp_path / "base" / "tokenizer.json").write_text(ByteTokenizer().to_hf_json(), encoding="utf-8")
    data = write_pairs(tmp_path / "pairs.jsonl")
    lr = LORA_LR if lora_rank else LR
    grad_accum = 2
    cfg = TrainConfig(init=str(tmp_path / "base"), data=str(data), seq_len=T, batch_size=B, grad_accum=grad_accum,
                      steps=STEPS, lr=lr, min_lr=lr / 10, warmup_steps=WARMUP, weight_decay=WD, beta1=BETAS[0],
                      beta2=BETAS[1], clip=CLIP, val_fraction=0.1, eval_batches=2, seed=3, out_dir=str(tmp_path),
                      name="run", sample_tokens=0, lora_rank=lora_rank, lora_alpha=8.0)
    run = start_run(cfg, progress=False)
    ref = cls.from_pretrained(tmp_path / "base", attn_implementation="eager").float()
    if lora_rank:
        peft = pytest.importorskip("peft")
        ref, named = _peft_lora(torch, peft, ref, run.model, "llama", "q,k,v,o,gate,up,down")
    else:
        named = dict(ref.named_parameters())
        assert set(named) == set(run.model.parameters())
    no_decay = set(run.optimizer.not_decayed)
    run.fit()
    ours = read_losses(tmp_path / "run")

    ds = InstructDataset.from_jsonl(data, load_tokenizer(tmp_path / "base"), T, 0.1, seed=3)
    batches = [tuple(a.astype(np.int64) for a in ds.train_batch(B)) for _ in range(STEPS * grad_accum)]
    assert sum(int((y == -100).sum()) for _, y in batches) > 0  # prompts and padding are masked
    theirs = torch_losses(torch, ref, named, no_decay, batches, grad_accum, lr)

    assert len(ours) == STEPS
    assert theirs[-1] < theirs[0] - 0.05
    rel = rel_diff(ours, theirs)
    print(f"qorus train --init, lora_rank {lora_rank}: largest relative loss difference {rel.max():.2e}")
    assert rel.max() < RTOL, f"step {int(rel.argmax()) + 1}: {ours[rel.argmax()]} vs {theirs[rel.argmax()]}"
    if lora_rank:  # the run's PEFT adapter folder holds PEFT's trained adapters, under PEFT's names
        from safetensors.numpy import load_file

        got = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
        want = {k: v.numpy() for k, v in peft.get_peft_model_state_dict(ref).items()}
    else:  # the trained weights
        got = run.model.parameters()
        want = {n: p.detach().numpy() for n, p in named.items()}
    assert set(got) == set(want)
    errs = {n: np.linalg.norm(got[n] - want[n]) / np.linalg.norm(want[n]) for n in want}
    worst = max(errs, key=errs.get)
    print(f"  weights: largest relative difference {errs[worst]:.2e} ({worst})")
    assert errs[worst] < RTOL, f"{worst}: relative difference {errs[worst]:.2e}"
