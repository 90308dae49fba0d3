"""A language-model training run from a config: what ``qorus train`` does, usable from Python.

:class:`TrainConfig` lists every setting with its default and meaning (the ``qorus train --help`` text
comes from here). :func:`start_run` validates the config, the data and the tokenizer *before* it creates
the run directory, so a bad config leaves nothing behind; :func:`resume_run` picks a run up from its newest
checkpoint. A run directory holds ``run.json`` (the config, the model record and the data),
``tokenizer.json``, ``metrics.jsonl`` and ``checkpoints/`` (:mod:`qorus_jit.formats.checkpoint` names them;
:func:`qorus_jit.models.sources.load_run_model` reads a run's model back for inference).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qorus_jit.core import distributed as dist
from qorus_jit.core.alloc import memory_bytes
from qorus_jit.core.check import check_fields
from qorus_jit.core.files import atomic_write_json, os_reason, read_json
from qorus_jit.formats.checkpoint import RUN_FILE, read_run_record, run_tokenizer_name


class ConfigError(ValueError):
    """A bad setting, data file or run directory: reported as one line (exit code 2 on the command line)."""


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Every setting of a training run (defaults: a byte-level Llama on the standard library's docs)."""

    # data
    data: str = _f("", "Text file to train on (UTF-8), or a .jsonl file of prompt/completion pairs (or chat "
                       "messages) whose loss counts only the completions. Empty: the standard library's "
                       "documentation topics (pydoc_data), which every Python installation carries.")
    tokenizer: str = _f("byte", "'byte' (256 ids, always works) or a tokenizer.json file / a folder holding one. "
                                "With --init: the source's own unless given (llama2.c: its tokenizer.bin).")
    # fine-tuning
    init: str = _f("", "Start from this model instead of new weights: a Hugging Face folder (Llama or GPT-2 with "
                       "its tokenizer.json), a llama2.c .bin (with --tokenizer tokenizer.bin) or a run folder. "
                       "The architecture, its sizes and the tokenizer come from it.")
    lora_rank: int = _f(0, "Train LoRA adapters of this rank on a frozen model (0: train every weight).")
    lora_alpha: float = _f(16.0, "LoRA scale numerator: the adapters' update is multiplied by alpha / rank.")
    lora_targets: str = _f("", "Layers that get adapters, comma-separated (llama: q,k,v,o,gate,up,down; "
                               "gpt2: qkv,o,up,down). Empty: all of them.")
    lora_dropout: float = _f(0.0, "Dropout on the adapters' input while training (0: none).")
    val_fraction: float = _f(0.05, "Share of the tokens (at the end of the text) held out for validation.")
    # model
    arch: str = _f("llama", "Architecture: 'llama' or 'gpt2'.", choices=("llama", "gpt2"))
    dim: int = _f(128, "Model width (embedding size).")
    n_layers: int = _f(4, "Transformer blocks.")
    n_heads: int = _f(4, "Attention heads (dim must be a multiple).")
    n_kv_heads: int = _f(0, "Key/value heads for grouped-query attention (llama); 0: as many as n_heads.")
    hidden_dim: int = _f(384, "Hidden size of the feed-forward block (SwiGLU for llama, GELU for gpt2).")
    seq_len: int = _f(128, "Tokens per training window.")
    max_seq_len: int = _f(0, "Longest sequence the model accepts (positions); 0: seq_len.")
    tie_embeddings: bool = _f(True, "Share the token embedding with the output head (llama).")
    # optimization
    steps: int = _f(600, "Optimizer steps.")
    batch_size: int = _f(16, "Windows per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step (gradient accumulation).")
    optimizer: str = _f("adamw", "'adamw', 'adam' or 'sgd'.", choices=("adamw", "adam", "sgd"))
    lr: float = _f(3e-3, "Peak learning rate.")
    min_lr: float = _f(3e-4, "Final learning rate of the cosine or linear schedule.")
    schedule: str = _f("cosine", "'cosine', 'linear', 'step' or 'constant' (after the warmup).",
                       choices=("cosine", "linear", "step", "constant"))
    warmup_steps: int = _f(-1, "Linear warmup steps; -1: a twentieth of steps (30 of the default 600).")
    weight_decay: float = _f(0.1, "Weight decay (AdamW: decoupled; not applied to norms, biases, embeddings).")
    beta1: float = _f(0.9, "Adam beta1.")
    beta2: float = _f(0.95, "Adam beta2.")
    momentum: float = _f(0.9, "SGD momentum.")
    clip: float = _f(1.0, "Clip the global gradient norm to this (0: no clipping).")
    # bookkeeping
    eval_every: int = _f(100, "Evaluate the validation loss every N steps (and at the end).")
    eval_batches: int = _f(8, "Validation batches per evaluation (the same windows every time).")
    ckpt_every: int = _f(200, "Save a checkpoint every N steps (and at the end, and on Ctrl-C).")
    keep_checkpoints: int = _f(2, "Newest checkpoints to keep.")
    out_dir: str = _f("runs", "Folder that receives run directories.")
    name: str = _f("", "Run directory name under out_dir; empty: a timestamp.")
    seed: int = _f(0, "Seed of the weights and of the batch order.")
    threads: int = _f(0, "Threads for kernels and BLAS; 0: auto, every core and fewer while other processes "
                         "keep the cores busy, chosen by timing the steps (under MPI: the cores shared among the "
                         "processes on the machine).")
    sample_tokens: int = _f(200, "Tokens of text to generate at the end (0: none).")
    sample_prompt: str = _f("The ", "Prompt of the sample generated at the end.")
    temperature: float = _f(0.8, "Sampling temperature of the final sample.")

    #: The names of the settings given (by from_dict, from_toml and the command line), or None when not known
    #: (built directly: then a setting counts as given when it differs from its default). Not a setting.
    given = None

    # -- validation -------------------------------------------------------------------------------------

    def __post_init__(self):
        """Check every setting; a bad one raises a ConfigError naming it and what it expects. NumPy scalars
        stand for Python ones (they become Python's); a bool is no number."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        at_least = {name: 1 for name in ("dim", "n_layers", "n_heads", "hidden_dim", "seq_len", "steps", "batch_size",
                                         "grad_accum", "eval_batches", "keep_checkpoints")}
        at_least.update({name: 0 for name in ("n_kv_heads", "max_seq_len", "eval_every", "ckpt_every", "seed",
                                              "threads", "sample_tokens", "lora_rank")})
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name}: expected an int >= {low}, got {getattr(self, name)}")
        if self.warmup_steps < -1:
            raise ConfigError(f"warmup_steps: expected an int >= 0, or -1 for a twentieth of steps, got "
                              f"{self.warmup_steps}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction: expected a number between 0 and 1, got {self.val_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"lr: expected a number > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr: expected a number in [0, lr = {self.lr}], got {self.min_lr}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a number in [0, 1), got {getattr(self, name)}")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha: expected a number > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout: expected a number in [0, 1), got {self.lora_dropout}")
        if not self.lora_rank and (self.lora_targets or self.lora_dropout):
            what = "lora_targets" if self.lora_targets else "lora_dropout"
            raise ConfigError(f"{what}: applies to LoRA adapters only; set lora_rank too (e.g. 8)")
        for name in ("clip", "weight_decay", "temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        if self.warmup_steps >= self.steps and self.warmup_steps > 0:
            raise ConfigError(f"warmup_steps: expected fewer than steps = {self.steps}, got {self.warmup_steps}")
        if self.dim % self.n_heads:
            raise ConfigError(f"n_heads: expected a divisor of dim = {self.dim}, got {self.n_heads}")
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads: expected a divisor of n_heads = {self.n_heads}, got {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2 and self.arch == "llama":
            raise ConfigError(f"n_heads: dim / n_heads must be even for rotary positions, got "
                              f"{self.dim // self.n_heads}")
        if self.max_seq_len and self.seq_len > self.max_seq_len:
            raise ConfigError(f"seq_len: expected at most max_seq_len = {self.max_seq_len}, got {self.seq_len}")
        if self.name in (".", "..") or any(sep in self.name for sep in {"/", os.sep}):
            raise ConfigError(f"name: expected the name of one folder under out_dir (no /, not . or ..), "
                              f"got {self.name!r}")

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> TrainConfig:
        """Build from a dict (a TOML table, ``run.json``); unknown keys raise a ConfigError."""
        check_fields(cls, d, where or "config", ConfigError, "setting", " (see qorus train --help)")
        try:
            cfg = cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None
        cfg.given = frozenset(d)
        return cfg

    @classmethod
    def from_toml(cls, path, overrides: dict | None = None) -> TrainConfig:
        """Read a TOML file of settings (top level or a ``[train]`` table), then apply ``overrides``."""
        _check_overrides(overrides)
        p = Path(path)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such config file") from None
        except IsADirectoryError:
            raise ConfigError(f"{p}: is a directory, expected a TOML config file") from None
        except RecursionError:
            raise ConfigError(f"{p}: not a config (arrays or tables nested too deeply to read)") from None
        except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError, or an int of over 4300 digits
            raise ConfigError(f"{p}: not valid TOML ({' '.join(str(e).split())})") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e})") from None
        if isinstance(d.get("train"), dict):
            if len(d) > 1:
                raise ConfigError(f"{p}: settings both at the top level ({', '.join(sorted(set(d) - {'train'}))}) "
                                  f"and in a [train] table; put them all in one place")
            d = d["train"]
        return cls.from_dict({**d, **(overrides or {})}, where=str(p))

    def to_dict(self) -> dict:
        """Every setting by name (what ``run.json``'s config table holds; :meth:`from_dict` reads it back)."""
        return dataclasses.asdict(self)


def _check_overrides(overrides) -> None:
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"overrides: expected a dict of settings or None, got {type(overrides).__name__}")


#: Settings that name a file or folder (a NUL byte in one is refused: no path can hold it).
_PATHS = ("data", "tokenizer", "init", "out_dir", "name")


def _checked(f, value):
    """``value`` of setting ``f`` as the Python type the setting declares; a ConfigError names what is wrong."""
    kind, name = _type_of(f), f.name
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    elif kind is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    value = kind(value)
    if kind is int and not -2**63 <= value < 2**63:  # what NumPy, kernels and checkpoints hold
        raise ConfigError(f"{name}: expected an int below 2**63, got {value}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise ConfigError(f"{name}: expected one of {', '.join(f.metadata['choices'])}, got {value!r}")
    if name in _PATHS and "\0" in value:
        raise ConfigError(f"{name}: expected a path, got {value!r} (it holds a NUL byte)")
    return value


def _type_of(f) -> type:
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return {"bool": bool, "int": int, "float": float, "str": str}[name]


def config_fields() -> list[tuple[str, type, object, str, tuple | None]]:
    """``(name, type, default, help, choices)`` of every setting, in order (the CLI's options)."""
    return [(f.name, _type_of(f), f.default, f.metadata["help"], f.metadata.get("choices"))
            for f in dataclasses.fields(TrainConfig)]


# --------------------------------------------------------------------------------------------- building


def build_model(cfg: TrainConfig, vocab_size: int):
    """The model of ``cfg`` for ``vocab_size`` token ids, its weights drawn from ``cfg.seed``."""
    from qorus_jit.models.registry import build_model as build_arch

    fields = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "hidden_dim": cfg.hidden_dim,
              "vocab_size": vocab_size, "max_seq_len": cfg.max_seq_len or cfg.seq_len}
    if cfg.arch == "llama":
        fields.update(n_kv_heads=cfg.n_kv_heads or None, tie_embeddings=cfg.tie_embeddings)
    return build_arch(cfg.arch, fields, rng=cfg.seed)


def build_optimizer(cfg: TrainConfig, model):
    """The optimizer ``cfg.optimizer`` names ("sgd", "adam", "adamw") over ``model``'s trainable parameters, with
    ``cfg``'s lr, momentum or betas, and weight decay."""
    from qorus_jit.train.optim import SGD, Adam, AdamW

    if cfg.optimizer == "sgd":
        return SGD(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = AdamW if cfg.optimizer == "adamw" else Adam
    return cls(model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def build_schedule(cfg: TrainConfig):
    """The learning-rate schedule ``cfg.schedule`` names, from ``cfg.lr`` over ``cfg.steps`` with
    :func:`warmup_of`'s warmup (cosine and linear decay to ``min_lr``; "step" thirds the steps after warmup)."""
    from qorus_jit.train.schedule import make_schedule

    kw = {"min_lr": cfg.min_lr} if cfg.schedule in ("cosine", "linear") else {}
    if cfg.schedule == "step":
        kw["step_size"] = max(1, (cfg.steps - warmup_of(cfg)) // 3)
    return make_schedule(cfg.schedule, cfg.lr, warmup_steps=warmup_of(cfg), total_steps=cfg.steps, **kw)


def warmup_of(cfg: TrainConfig) -> int:
    """The warmup steps of ``cfg``: its ``warmup_steps``, or a twentieth of ``steps`` when that is -1."""
    return cfg.steps // 20 if cfg.warmup_steps == -1 else cfg.warmup_steps


def load_data(cfg: TrainConfig, tokenizer):
    """The dataset of ``cfg`` and its source name: instruction data (:class:`~qorus_jit.data.InstructDataset`)
    for a ``.jsonl`` file, else the text of the file (the default corpus when ``cfg.data`` is empty)."""
    from qorus_jit.data import InstructDataset, TextDataset, default_corpus

    try:
        if cfg.data and Path(cfg.data).suffix.lower() == ".jsonl":
            ds = InstructDataset.from_jsonl(cfg.data, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.seed)
            name = str(Path(cfg.data).resolve())
        elif cfg.data:
            ds = TextDataset.from_text_file(cfg.data, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.seed)
            name = str(Path(cfg.data).resolve())
        else:
            name, text = default_corpus()
            ids = tokenizer.encode(text)
            ds = TextDataset(ids, cfg.seq_len, cfg.val_fraction, cfg.seed, vocab_size=tokenizer.vocab_size)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise ConfigError(f"data: {e}") from None
    if isinstance(ds, InstructDataset) and cfg.batch_size * cfg.eval_batches > ds.n_val_windows:
        raise ConfigError(f"batch_size * eval_batches: the validation part of the data holds {ds.n_val_windows:,} "
                          f"examples, fewer than {cfg.batch_size} * {cfg.eval_batches} (use fewer or smaller "
                          "batches, more examples or a larger val_fraction)")
    if cfg.batch_size * cfg.eval_batches > ds.n_val_windows:
        raise ConfigError(f"batch_size * eval_batches: the validation part of the data ({ds.n_val:,} tokens) holds "
                          f"{ds.n_val_windows:,} windows of seq_len + 1 = {cfg.seq_len + 1}, fewer than "
                          f"{cfg.batch_size} * {cfg.eval_batches} (use fewer or smaller batches, or more text)")
    return ds, name


#: The settings ``--init`` takes from its source: the architecture and its sizes.
SOURCE_SETTINGS = ("arch", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len", "tie_embeddings")


def load_init(cfg: TrainConfig, given=None):
    """``(cfg, source)``: the model and tokenizer ``cfg.init`` names (a
    :class:`~qorus_jit.models.sources.Source`), and ``cfg`` with the settings of :data:`SOURCE_SETTINGS` taken
    from it. One of them ``given`` (names; None: those that differ from their defaults) with a value other
    than the source's is refused (ConfigError)."""
    from qorus_jit.models.sources import SourceError, load_source

    try:
        source = load_source(cfg.init, None if cfg.tokenizer == "byte" else cfg.tokenizer)
    except SourceError as e:
        text = str(e)
        raise ConfigError(text if text.startswith("tokenizer: ") else
                          "init: " + text.removeprefix("source: ")) from None
    from qorus_jit.layers.quantized import quantized_layers

    if quantized_layers(source.model):
        raise ConfigError(f"init: {source.path} holds quantized weights, which do not train; start from the fp32 "
                          f"model it was made from")
    c, arch = source.model.config, type(source.model).arch
    own = {"arch": arch, "dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
           "n_kv_heads": 0 if (getattr(c, "n_kv_heads", None) or c.n_heads) == c.n_heads else c.n_kv_heads,
           "hidden_dim": c.hidden_dim or 4 * c.dim, "max_seq_len": c.max_seq_len,
           "tie_embeddings": c.tie_embeddings}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in SOURCE_SETTINGS:
        value = getattr(cfg, name)
        stated = name in given if given is not None else value != defaults[name]
        if stated and value != own[name]:
            raise ConfigError(f"{name}: the model of --init {cfg.init} has {name} = {own[name]}; leave {name} out "
                              f"(it comes from the model), got {value}")
    if cfg.seq_len > own["max_seq_len"]:
        raise ConfigError(f"seq_len: expected at most the --init model's max_seq_len = {own['max_seq_len']}, "
                          f"got {cfg.seq_len}")
    return dataclasses.replace(cfg, **own), source


def add_lora(cfg: TrainConfig, model) -> dict:
    """Freeze ``model`` and put the LoRA adapters of ``cfg`` on it; returns the ``lora`` table of run.json.
    Bad targets or a rank too large for a layer raise a ConfigError naming the setting."""
    from qorus_jit.layers.lora import TARGETS, apply_lora
    from qorus_jit.models.sources import lora_record

    table = TARGETS.get(type(model).arch, {})
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] or list(table)
    try:
        adapters = apply_lora(model, targets, cfg.lora_rank, cfg.lora_alpha, rng=cfg.seed, dropout=cfg.lora_dropout)
    except ValueError as e:
        text = str(e)
        for old, new in (("targets: ", "lora_targets: "), ("rank: ", "lora_rank: ")):
            if text.startswith(old):
                text = new + text.removeprefix(old)
        raise ConfigError(text) from None
    return lora_record(adapters, targets)


class Run:
    """A built run: config, tokenizer, dataset, model, optimizer and trainer, and its directory. Its final
    sample comes from inference (:func:`qorus_jit.infer.generate.sample_text`), as ``qorus train`` does.
    ``model``: the model to train (from ``--init`` or a checkpoint); None builds a new one from ``cfg``. LoRA
    settings put adapters on it (``lora`` is then the run record's table of them; a ``model`` with
    adapters already keeps them)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, tokenizer, data, data_name: str, progress: bool = True,
                 model=None, lora: dict | None = None):
        from qorus_jit.train.trainer import Trainer

        self.cfg, self.run_dir, self.tokenizer, self.data, self.data_name = cfg, run_dir, tokenizer, data, data_name
        if cfg.threads or dist.size() > 1:
            from qorus_jit.core.numerics import set_num_threads

            set_num_threads(min(cfg.threads or dist.default_threads(), _max_threads()))
        self.model = build_model(cfg, tokenizer.vocab_size) if model is None else model
        self.lora = lora
        if cfg.lora_rank and lora is None:
            self.lora = add_lora(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.trainer = Trainer(
            self.model, self.optimizer, data, steps=cfg.steps, batch_size=cfg.batch_size, schedule=build_schedule(cfg),
            grad_accum=cfg.grad_accum, clip=cfg.clip or None, eval_every=cfg.eval_every,
            eval_batches=cfg.eval_batches, ckpt_every=cfg.ckpt_every, keep_checkpoints=cfg.keep_checkpoints,
            run_dir=run_dir, progress=progress, print_evals=True, handle_sigint=True, seed=cfg.seed,
            extra_state={"config": cfg.to_dict(), "model": self.model.config.to_dict()})

    def fit(self) -> dict:
        """Train to the last step (or a Ctrl-C); a LoRA run that finished also writes its adapters as a PEFT
        folder, ``adapter/`` in the run folder, that ``peft.PeftModel.from_pretrained`` loads."""
        last = self.trainer.fit()
        if self.lora is not None and not self.trainer.interrupted and self.trainer.rank == 0:
            self.save_adapters()
        return last

    def save_adapters(self) -> Path:
        """Write a LoRA run's adapters as a PEFT folder ``run_dir/adapter`` (``base_model_name_or_path``: the
        ``--init`` folder, if one); returns it. A write the disk refuses is a :class:`TrainingError`."""
        from qorus_jit.formats.checkpoint import ADAPTER_DIR
        from qorus_jit.layers.lora import save_lora

        target = self.run_dir / ADAPTER_DIR
        base = self.cfg.init if self.cfg.init and Path(self.cfg.init).is_dir() else ""
        try:
            return save_lora(self.model, target, base_model_name_or_path=base)
        except OSError as e:
            from qorus_jit.train.trainer import TrainingError

            raise TrainingError(f"cannot write the adapters to {target} ({os_reason(e)}); the run's last "
                                f"checkpoint holds them, and qorus export writes them too") from None


def _max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


def start_run(cfg: TrainConfig, progress: bool = True) -> Run:
    """Validate ``cfg`` with its data and tokenizer, then create the run directory and build the run."""
    from qorus_jit.models.registry import model_record
    from qorus_jit.tokenizers import load_tokenizer

    if not isinstance(cfg, TrainConfig):  # a dict of settings: TrainConfig.from_dict(d)
        raise TypeError(f"cfg: expected a TrainConfig (TrainConfig.from_dict for a dict), got {type(cfg).__name__}")
    given = cfg.given
    cfg = dataclasses.replace(cfg, **_absolute_paths(cfg.to_dict()))  # run.json must not depend on the cwd
    # run.json keeps the warmup -1 resolved to, so a resume with more steps keeps it
    cfg = dataclasses.replace(cfg, warmup_steps=warmup_of(cfg))
    model = source = None
    if cfg.init:
        cfg, source = load_init(cfg, given)
        model, tokenizer = source.model, source.tokenizer
    else:
        try:
            tokenizer = load_tokenizer(cfg.tokenizer, "tokenizer")
        except (OSError, ValueError, TypeError, KeyError, ImportError, RecursionError) as e:
            raise ConfigError(_naming(cfg.tokenizer, e)) from None
    vocab = tokenizer.vocab_size if model is None else model.config.vocab_size
    check_memory(cfg, vocab)
    data, data_name = load_data(cfg, tokenizer)
    # under MPI, rank 0's timestamp, and rank 0 alone checks and writes the run directory
    name = cfg.name or dist.broadcast_json(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(cfg.out_dir) / name
    writes = dist.rank() == 0
    if writes and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        what = "exists already" if run_dir.is_dir() else "is a file"
        raise ConfigError(f"name: the run directory {run_dir} {what} (use --resume {run_dir}, or another --name)")
    try:
        run = Run(cfg, run_dir, tokenizer, data, data_name, progress, model=model)
    except ValueError as e:  # the model or optimizer refused a setting
        raise ConfigError(str(e)) from None
    record = {"config": cfg.to_dict(), "model": model_record(run.model), "data": data_name,
              "tokens": {"train": data.n_train, "val": data.n_val}}
    if source is not None:
        record["init"] = {"source": str(source.path), "kind": source.kind}
    if run.lora is not None:
        record["lora"] = run.lora
    if not writes:
        return run
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out_dir: cannot create the run directory {run_dir} ({e.strerror or e})") from None
    target = run_dir / run_tokenizer_name(tokenizer)
    try:
        tokenizer.save(target)
        target = run_dir / RUN_FILE
        atomic_write_json(target, record)
    except BaseException as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise ConfigError(f"out_dir: cannot write {target} ({os_reason(e)}); nothing was kept") from None
        raise
    return run


def check_memory(cfg: TrainConfig, vocab_size: int) -> None:
    """Refuse sizes whose training cannot fit in this machine's memory, before anything is allocated (a
    ConfigError naming the sizes): a lower bound of the bytes of the weights, their gradients and two
    optimizer moments (LoRA: the weights alone), and of the activations one step keeps for the backward pass."""
    d, h, layers = cfg.dim, cfg.hidden_dim, cfg.n_layers
    positions = cfg.max_seq_len or cfg.seq_len
    params = layers * (4 * d * d + (3 if cfg.arch == "llama" else 2) * d * h)
    params += vocab_size * d * (1 if cfg.arch == "llama" and cfg.tie_embeddings else 2)
    params += positions * d if cfg.arch == "gpt2" else positions * (d // cfg.n_heads)  # positions, or rope tables
    tokens = cfg.batch_size * cfg.seq_len
    activations = tokens * (layers * (4 * d + 2 * h + cfg.n_heads * cfg.seq_len) + 2 * vocab_size)
    need = 4 * ((1 if cfg.lora_rank else 4) * params + activations)  # float32; LoRA: no base grads, moments
    have = memory_bytes()
    if have and need > have:
        sizes = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("dim", "n_layers", "hidden_dim", "n_heads", "max_seq_len",
                                                             "seq_len", "batch_size"))
        raise ConfigError(f"{sizes}: training this model needs at least {need / 2**30:.3g} GiB (weights, gradients, "
                          f"optimizer state and activations), more than the {have / 2**30:.3g} GiB of memory here")


def _absolute_paths(d: dict) -> dict:
    """The ``data`` and ``tokenizer`` paths of settings ``d`` made absolute (a run resumes from anywhere)."""
    out = {}
    if d.get("data"):
        out["data"] = str(Path(d["data"]).resolve())
    if d.get("tokenizer") and d["tokenizer"] != "byte":
        out["tokenizer"] = str(Path(d["tokenizer"]).resolve())
    if d.get("init"):
        out["init"] = str(Path(d["init"]).resolve())
    return out


def _read_run_file(run_dir: Path) -> dict:
    try:
        return read_run_record(run_dir)
    except FileNotFoundError:
        what = "does not exist" if not run_dir.exists() else f"is not a run directory (no {RUN_FILE})"
        raise ConfigError(f"--resume: {run_dir} {what}") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"--resume: {e}") from None


def read_run_config(run_dir) -> TrainConfig:
    """The settings a run directory was started with (its ``run.json``)."""
    run_dir = Path(run_dir)
    return TrainConfig.from_dict(_read_run_file(run_dir)["config"], where=str(run_dir / RUN_FILE))


def is_finished(run_dir, steps: int) -> bool:
    """Whether the run in ``run_dir`` trained all ``steps`` and logged its final evaluation."""
    from qorus_jit.formats.checkpoint import METRICS_FILE
    from qorus_jit.train.plot import read_metrics

    if not (Path(run_dir) / METRICS_FILE).is_file():
        return False
    return any(r.get("step") == steps and "val_loss" in r for r in read_metrics(run_dir))


#: Settings that may change when a run is resumed (the rest would change the computation).
RESUMABLE_CHANGES = ("steps", "eval_every", "ckpt_every", "keep_checkpoints", "threads", "sample_tokens",
                     "sample_prompt", "temperature")


def resume_run(run_dir, overrides: dict | None = None, progress: bool = True) -> Run:
    """Rebuild the run of ``run_dir`` and restore its newest checkpoint (exact resume)."""
    from qorus_jit.formats.checkpoint import STATE_FILE, latest_checkpoint, remove_partial
    from qorus_jit.models.sources import SourceError, load_run_model

    _check_overrides(overrides)
    run_dir = Path(run_dir)
    record = _read_run_file(run_dir)
    cfg = TrainConfig.from_dict(record["config"], where=str(run_dir / RUN_FILE))
    overrides = dict(overrides or {})
    overrides.update(_absolute_paths({k: v for k, v in overrides.items() if k in ("data", "tokenizer")}))
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"--resume: unknown setting(s) {', '.join(unknown)}")
    fixed = sorted(k for k, v in overrides.items() if k not in RESUMABLE_CHANGES and getattr(cfg, k) != v)
    if fixed:
        raise ConfigError(f"--resume: {', '.join(fixed)} cannot change when resuming (only "
                          f"{', '.join(RESUMABLE_CHANGES)} can)")
    cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides}, where="--resume")
    if dist.rank() == 0:
        remove_partial(run_dir)
    found = latest_checkpoint(run_dir)
    if found is None:
        raise ConfigError(f"--resume: {run_dir} has no complete checkpoint yet")
    try:
        state = read_json(found / STATE_FILE, "checkpoint state")
    except ValueError as e:
        raise ConfigError(f"--resume: the newest checkpoint is damaged: {e}") from None
    except OSError as e:
        raise ConfigError(f"--resume: cannot read {found / STATE_FILE} ({os_reason(e)})") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ConfigError(f"--resume: the newest checkpoint is damaged: {found / STATE_FILE} is not a checkpoint "
                          f"state (a JSON object with the step, an int >= 0, expected)")
    if step > cfg.steps:
        raise ConfigError(f"--resume: the newest checkpoint is at step {step}, past steps = {cfg.steps}; "
                          f"expected --steps of at least {step}")
    if step == cfg.steps and is_finished(run_dir, cfg.steps):
        raise ConfigError(f"--resume: {run_dir} finished all {cfg.steps} steps; pass a larger --steps to train on")
    try:  # the model of run.json (with its adapters) and the run's tokenizer
        model, tokenizer = load_run_model(run_dir)
    except SourceError as e:
        raise ConfigError(f"--resume: {e}") from None
    data, data_name = load_data(cfg, tokenizer)
    try:
        run = Run(cfg, run_dir, tokenizer, data, data_name, progress, model=model, lora=record.get("lora"))
        run.trainer.resume(found)
    except (ValueError, TypeError, KeyError, OSError) as e:  # a damaged checkpoint, or data that changed since
        raise ConfigError(f"--resume: cannot restore the newest checkpoint: {_naming(found, e)}") from None
    if overrides and dist.rank() == 0:  # the new steps (etc.) hold for later resumes too
        try:
            atomic_write_json(run_dir / RUN_FILE, {**record, "config": cfg.to_dict()})
        except OSError as e:
            raise ConfigError(f"--resume: cannot write {run_dir / RUN_FILE} ({os_reason(e)}); the checkpoint of "
                              f"step {step} ({found}) is intact") from None
    return run


def _naming(path, e: Exception) -> str:
    """An error's text on one line (a parser may put a line break in it), naming ``path`` unless it does."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if str(path) in text else f"{path}: {text}"
