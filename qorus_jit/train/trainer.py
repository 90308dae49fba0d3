"""Training: the :class:`Trainer` loop (mini-batches, accumulation, clipping, schedules,
evaluation, JSONL metrics, atomic checkpoints and exact resume).

>>> import numpy as np
>>> from qorus_jit.data import ArrayDataset
>>> from qorus_jit.models import MLP
>>> from qorus_jit.train.optim import AdamW
>>> from qorus_jit.train.trainer import Trainer
>>> X = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
>>> y = (X[:, 0] > 0).astype(np.int64)
>>> model = MLP([8, 32, 2], rng=0)
>>> trainer = Trainer(model, AdamW(model, lr=1e-2), ArrayDataset(X, y, batch_size=32), steps=50,
...                   val_data=[(X, y)], progress=False)
>>> history = trainer.fit()
>>> history["val_accuracy"] > 0.9
True
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from qorus_jit.core import distributed as dist
from qorus_jit.core.check import check_bool, check_nonnegative, check_real
from qorus_jit.core.files import atomic_write, final_path, os_reason
from qorus_jit.core.numerics import auto_threads, max_threads, set_num_threads
from qorus_jit.core.threads import ThreadTuner
from qorus_jit.formats import checkpoint as ckpt
from qorus_jit.layers.base import Layer
from qorus_jit.train.losses import CrossEntropyLoss, make_loss
from qorus_jit.train.schedule import constant


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or gradient, a write the disk refused); the message names the
    step, and for a failed write the file, the OS's reason and the checkpoint that stays intact.
    ``resumable``: the message names that checkpoint, and resuming from it is what to do once the disk
    takes writes again (a NaN, by contrast, would come back)."""

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


# ----------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains ``model`` with ``optimizer`` on batches from ``data`` for ``steps`` optimizer steps.

    - ``data``: a :class:`~qorus_jit.data.TextDataset` (``train_batch(batch_size)``; ``batch_size``
      required) or an :class:`~qorus_jit.data.ArrayDataset` (``next_batch()``, its own batch size), or
      any object with one of those and ``state_dict``/``load_state_dict``.
    - ``val_data``: a list of ``(x, y)`` batches for evaluation; by default a text dataset's fixed
      ``val_batches(batch_size, eval_batches)`` (fewer when the held-out text is short).
    - ``schedule``: ``step -> lr`` (see :mod:`qorus_jit.train.schedule`); by default the optimizer's lr throughout.
    - ``grad_accum`` micro-batches per step (the loss is their mean); ``clip``: global gradient-norm limit.
    - ``eval_every`` / ``ckpt_every`` steps (0: only at the end); ``run_dir`` receives ``metrics.jsonl``
      and ``checkpoints/`` (nothing is written without it); ``keep_checkpoints`` newest are kept.
    - ``extra_state``: JSON data stored in every checkpoint's ``state.json`` beside the trainer's own.
    - ``seed``: of the dropout masks (a qorus ``Layer`` model): training steps run in training mode
      (``model.train()``), micro-batch ``m`` of step ``s`` seeded ``model.seed_dropout(seed, s, m)``, so a
      resumed run draws the same masks; evaluation runs in evaluation mode (no dropout).
    - ``progress``: a progress bar; ``print_evals``: print each evaluation's line (by default as ``progress``;
      ``qorus train --no-progress`` keeps the lines without the bar).

    ``fit()`` returns the last metrics. A NaN or inf loss or gradient norm raises :class:`TrainingError`
    naming the step before the optimizer touches the weights; the last checkpoint stays as it was. So does a
    write that fails (a full disk, a read-only or forbidden folder): the message names the file, the OS's
    reason and the newest checkpoint, which stays whole, and a metrics line is written whole or not at all.
    ``resume(path_or_run_dir)`` restores weights, optimizer, data position and step from a checkpoint, so
    that the run continues exactly as if it had never stopped.

    Under an MPI launcher (``mpiexec -n N``, :mod:`qorus_jit.core.distributed`) the N processes train one
    model: each draws its share of every batch (N processes with ``batch_size`` b see exactly the windows one
    process with batch N*b sees), the gradients are averaged by allreduce before clipping (so the clip sees the
    global norm), ``fit`` starts from rank 0's weights, optimizer and data state, evaluation is split among the
    ranks, and rank 0 alone writes metrics, progress and checkpoints. An exception in one rank stops every rank
    with a line naming it. A checkpoint resumes under as many processes as wrote it. A process whose thread
    count was left at the most takes the machine's cores divided by the job's processes on it.
    """

    def __init__(self, model, optimizer, data, *, steps: int, batch_size: int | None = None, loss="cross_entropy",
                 schedule=None, grad_accum: int = 1, clip: float | None = None, val_data=None,
                 eval_every: int = 0, eval_batches: int = 8, ckpt_every: int = 0, keep_checkpoints: int = 2,
                 run_dir=None, log_every: int = 1, progress: bool = True, print_evals: bool | None = None,
                 extra_state: dict | None = None, handle_sigint: bool = False, seed: int = 0):
        counts = {}
        for name, value, low in (("steps", steps, 1), ("grad_accum", grad_accum, 1), ("eval_every", eval_every, 0),
                                 ("eval_batches", eval_batches, 1), ("ckpt_every", ckpt_every, 0),
                                 ("keep_checkpoints", keep_checkpoints, 1), ("log_every", log_every, 1)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
            counts[name] = int(value)  # a NumPy int as a plain one (JSON metrics, checkpoints)
        steps, grad_accum, eval_every, eval_batches, ckpt_every, keep_checkpoints, log_every = counts.values()
        if clip is not None:
            clip = check_real("clip", clip, low=0.0, low_open=True)  # a NumPy float too
        _check_model_and_optimizer(model, optimizer)
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule: expected a function step -> lr (qorus_jit.train.schedule) or None, "
                            f"got {schedule!r}")
        if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(f"run_dir: expected a folder path or None, got {type(run_dir).__name__}")
        if extra_state is not None and not isinstance(extra_state, dict):
            raise TypeError(f"extra_state: expected a dict of JSON data or None, got {type(extra_state).__name__}")
        check_bool(progress=progress, handle_sigint=handle_sigint)
        check_nonnegative(seed=seed)
        if print_evals is not None:
            check_bool(print_evals=print_evals)
        self.model, self.optimizer, self.data = model, optimizer, data
        self.rank, self.world = dist.rank(), dist.size()
        if self.world > 1 and auto_threads():  # not fixed by the user: the machine's cores are shared
            set_num_threads(min(dist.default_threads(), max_threads()))
        self.steps, self.grad_accum, self.clip = steps, grad_accum, clip
        self.loss = make_loss(loss)
        self.schedule = schedule if schedule is not None else constant(optimizer.lr)
        self._next_batch = self._batch_source(data, batch_size)
        self.batch_size = batch_size
        if val_data is None and hasattr(data, "val_batches") and batch_size:
            n = min(eval_batches, getattr(data, "n_val_windows", eval_batches * batch_size) // batch_size)
            val_data = data.val_batches(batch_size, n) if n else None  # a short text: fewer batches, or none
        self.val_data = _val_batches(val_data)
        self.eval_every, self.ckpt_every, self.keep_checkpoints = eval_every, ckpt_every, keep_checkpoints
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log_every, self.progress, self.handle_sigint = log_every, bool(progress), bool(handle_sigint)
        self.print_evals = (self.progress if print_evals is None else bool(print_evals)) and self.rank == 0
        self.extra_state = dict(extra_state or {})
        self.seed = int(seed)
        self.step = 0
        self.tuner: ThreadTuner | None = None  # the auto thread policy's, of the last fit()
        self.elapsed = 0.0  # seconds of training before this process (restored on resume)
        self.last: dict = {}
        self.interrupted = False
        self._stop = False
        self._metrics_end = 0  # bytes of metrics.jsonl that hold whole lines

    def _batch_source(self, data, batch_size):
        """A function returning this rank's ``(x, y, weight)``: ``weight`` is its share of the global batch
        times the number of ranks (1 but for an uneven split of a dataset's own batches)."""
        rank, world = self.rank, self.world
        if hasattr(data, "train_batch"):
            if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, (bool, np.bool_))
                    or batch_size < 1):
                raise ValueError(f"batch_size: expected an int >= 1 for {type(data).__name__}, got {batch_size!r}")
            b = int(batch_size)
            if world > 1 and callable(getattr(data, "shard", None)):
                data.shard(rank, world)  # draws the global batch's windows, gathers its own
            elif world > 1:  # the global batch, of which this rank takes its rows
                return lambda: (*(a[rank * b:(rank + 1) * b] for a in data.train_batch(b * world)), 1.0)
            return lambda: (*data.train_batch(b), 1.0)
        if hasattr(data, "next_batch"):
            if batch_size is not None:
                raise ValueError(f"batch_size: {type(data).__name__} sets its own batch size; pass None")
            if world == 1:
                return lambda: (*data.next_batch(), 1.0)

            def share():  # rows [rank n / N, (rank + 1) n / N) of the dataset's batch of n
                x, y = data.next_batch()
                n = x.shape[0]
                lo, hi = rank * n // world, (rank + 1) * n // world
                return x[lo:hi], y[lo:hi], (hi - lo) * world / n

            return share
        raise TypeError(f"data: expected a dataset with train_batch(batch_size) or next_batch(), "
                        f"got {type(data).__name__}")

    # -- one step -----------------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics."""
        step = self.step
        lr = float(self.schedule(step))
        self.optimizer.lr = lr
        self.optimizer.zero_grad()
        loss, items = 0.0, 0
        layer = isinstance(self.model, Layer)  # training mode and seeded dropout masks (a qorus model)
        was_training = layer and self.model.training
        if layer:
            self.model.train()
        try:
            for micro in range(self.grad_accum):
                x, y, weight = self._next_batch()
                if weight == 0:  # no rows for this rank (a dataset batch smaller than the ranks)
                    continue
                if layer:  # each rank its own masks
                    self.model.seed_dropout(self.seed, step, micro * self.world + self.rank)
                out = self.model.forward(x)
                part, dout = self.loss(out, y, weight / self.grad_accum)
                if not math.isfinite(part):
                    raise TrainingError(f"step {step + 1}: the loss is {part}; stopping (the weights were not "
                                        f"updated)")
                self.model.backward(dout)
                loss += part * weight / self.grad_accum
                items += x.size if x.dtype.kind in "iu" else x.shape[0]  # tokens, or samples
        finally:
            if layer:
                self.model.train(was_training)
        if self.world > 1:  # the mean gradient of the ranks (before clipping: the global norm), loss and stop
            dist.allreduce(self._grads())
            loss, items, stop = dist.sum_values([loss, items, self._stop])
            loss, items, self._stop = loss / self.world, int(items), stop > 0
        norm = self.optimizer.clip_grad_norm(self.clip) if self.clip else self.optimizer.grad_norm()
        if not math.isfinite(norm):
            raise TrainingError(f"step {step + 1}: the gradient norm is {norm}; stopping (the weights were not "
                                f"updated)")
        self.optimizer.step()
        self.step = step + 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, "items": items}

    def _grads(self) -> list[np.ndarray]:
        """The gradients the optimizer reads (of the trainable parameters), in the same order on every rank."""
        grads = self.model.gradients()
        keep = set(self.model.trainable()) if isinstance(self.model, Layer) else grads
        return [g for name, g in grads.items() if name in keep]

    def evaluate(self) -> dict:
        """Mean loss (and accuracy for cross-entropy) over ``val_data``; empty if there is none. Under MPI each
        rank takes its share of the batches and every rank must call it (the sums are an allreduce)."""
        if not self.val_data:
            return {}
        total, count, correct = 0.0, 0, 0
        layer = isinstance(self.model, Layer)
        was_training = layer and self.model.training
        if layer:
            self.model.eval()  # no dropout
        try:
            for x, y in self.val_data[self.rank::self.world]:  # each rank its share of the batches
                s, n, c = self.loss.evaluate(self.model.forward(x), y)
                total, count, correct = total + s, count + n, correct + c
        finally:
            if layer:
                self.model.train(was_training)
        if self.world > 1:
            total, count, correct = dist.sum_values([total, count, correct])
        out = {"val_loss": total / max(count, 1)}
        if isinstance(self.loss, CrossEntropyLoss):
            out["val_accuracy"] = correct / max(count, 1)
        return out

    # -- the loop -----------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train from the current step to ``steps``; returns the last metrics (with the final evaluation).

        Ctrl-C (with ``handle_sigint``) finishes the step under way, saves a checkpoint and returns with
        ``interrupted`` set.
        """
        if self.world > 1:
            try:
                self._sync()
            except BaseException as e:
                dist.abort(self._failure(e))
        if self.step >= self.steps:  # nothing left (a finished run resumed): no duplicate evaluation
            self.interrupted = False
            return dict(self.last)
        try:
            return self._fit()
        except BaseException as e:
            if self.world > 1:  # the other ranks wait in a collective: stop them all, naming this rank
                dist.abort(self._failure(e))
            raise

    def _fit(self) -> dict:
        metrics = self._open_metrics()
        bar = self._bar()
        old_handler = self._install_sigint()
        unit = "tok/s"
        t_last, items_last = time.perf_counter(), 0
        start_elapsed, t_start = self.elapsed, time.perf_counter()
        # the auto thread policy: fewer threads while other processes are busy (the load seen before the first step)
        self.tuner = tuner = ThreadTuner(look_first=0.05)
        try:
            while self.step < self.steps and not self._stop:
                with tuner.unit():
                    row = self.train_step()
                items_last += row.pop("items")
                self.elapsed = start_elapsed + time.perf_counter() - t_start
                if self.step % self.log_every == 0 or self.step == self.steps:
                    now = time.perf_counter()
                    rate = items_last / max(now - t_last, 1e-9)
                    unit = "tok/s" if isinstance(self.loss, CrossEntropyLoss) and self._is_lm() else "samples/s"
                    row[unit.replace("/", "_per_")] = rate
                    t_last, items_last = now, 0
                    row["elapsed"] = self.elapsed
                    self._write(metrics, row)
                    if bar is not None:
                        # drawn by the update below, so the count and the loss shown are of the same step
                        bar.set_postfix_str(f"loss {row['loss']:.4f} lr {row['lr']:.2e} {rate:,.0f} {unit}",
                                            refresh=False)
                if bar is not None:
                    bar.update(1)
                self.last.update(row)
                end = self.step == self.steps
                if self.eval_every and (self.step % self.eval_every == 0) and not end:
                    self._eval_and_log(metrics, bar)
                if self._writes() and self.ckpt_every and self.step % self.ckpt_every == 0 and not end:
                    self.save()
            if self.step >= self.steps:
                self._eval_and_log(metrics, bar)
            if self._writes():
                self.save()
            dist.barrier()  # no rank leaves before rank 0's checkpoint is written
        finally:
            tuner.close()
            if bar is not None:
                bar.close()
            if metrics is not None:
                os.close(metrics)
            self._restore_sigint(old_handler)
        self.interrupted = self.step < self.steps
        return dict(self.last)

    def _writes(self) -> bool:
        """Whether this process writes checkpoints: it has a run directory and is rank 0."""
        return self.run_dir is not None and self.rank == 0

    def _sync(self) -> None:
        """Make every rank start from rank 0's weights, optimizer state, data position, step and metrics."""
        dist.broadcast(list(self.model.parameters().values()))
        tensors, meta = self.optimizer.state_dict()
        state = dist.broadcast_json({"optimizer": meta, "data": self.data.state_dict(), "step": self.step,
                                     "elapsed": self.elapsed, "last": self._finite_last()})
        params = self.model.parameters()
        if self.rank != 0:
            tensors = {f"{n}.{b}": np.empty_like(params[n]) for n, bufs in state["optimizer"]["buffers"].items()
                       for b in bufs}
        dist.broadcast([tensors[k] for k in sorted(tensors)])
        if self.rank != 0:
            self.optimizer.load_state_dict(tensors, state["optimizer"])
            self.data.load_state_dict(state["data"])
            self.step, self.elapsed, self.last = state["step"], state["elapsed"], state["last"]

    def _failure(self, e: BaseException) -> str:
        """What stopped a rank, for the line :func:`~qorus_jit.core.distributed.abort` prints: the error and
        the checkpoint that stays intact."""
        if isinstance(e, KeyboardInterrupt):
            text = f"interrupted at step {self.step}"
        elif isinstance(e, TrainingError):
            text = str(e)
        else:
            text = f"step {self.step + 1}: {type(e).__name__}: {e}"
        return text if "intact" in text or self.run_dir is None else f"{text}; {self._intact()[1]}"

    def _finite_last(self) -> dict:
        return {k: v for k, v in self.last.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    def _is_lm(self) -> bool:
        x = self.val_data[0][0] if self.val_data else None
        return hasattr(self.data, "train_batch") or (x is not None and x.dtype.kind in "iu")

    def _eval_and_log(self, metrics, bar) -> None:
        row = self.evaluate()
        if not row:
            return
        row = {"step": self.step, **row, "elapsed": self.elapsed}
        self.last.update(row)
        self._write(metrics, row)
        text = f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        if bar is not None:
            bar.write(text, file=sys.stderr)
        elif self.print_evals:
            print(text, file=sys.stderr)

    def _bar(self):
        if not self.progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                    disable=None, leave=True)

    def _open_metrics(self) -> int | None:
        """``metrics.jsonl`` opened for appending (a file descriptor), or None without a run directory. Rows
        past the current step (to be recomputed after a resume) and damaged lines (cut by a kill, not UTF-8,
        not JSON) are dropped first."""
        if self.run_dir is None or self.rank != 0:
            return None
        path = self.run_dir / ckpt.METRICS_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if path.exists():
                data = path.read_bytes()
                kept = b"".join(line + b"\n" for line in data.split(b"\n") if _row_step(line) <= self.step)
                if kept != data:
                    atomic_write(path, lambda tmp: tmp.write_bytes(kept))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise self._write_failed(path, e) from None
        self._metrics_end = os.fstat(fd).st_size
        return fd

    def _write(self, fd: int | None, row: dict) -> None:
        """Append ``row`` as one line, whole or not at all: a write cut short (a full disk) is undone."""
        if fd is None:
            return
        line = (json.dumps({k: (round(v, 8) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")
        data = line.encode("utf-8")
        try:
            done = os.write(fd, data)
            while done < len(data):  # a short write: the rest, or the error that cut it short
                done += os.write(fd, data[done:])
        except OSError as e:
            try:
                os.ftruncate(fd, self._metrics_end)
            except OSError:
                pass  # a resume drops the partial line
            raise self._write_failed(self.run_dir / ckpt.METRICS_FILE, e) from None
        self._metrics_end += len(data)

    def _write_failed(self, path, e: OSError) -> TrainingError:
        """The TrainingError of a failed write of ``path``: the step, the file, the OS's reason, and the newest
        checkpoint (written atomically, so whole) that a resume continues from."""
        found, intact = self._intact()
        return TrainingError(f"step {self.step}: cannot write {final_path(path)} ({os_reason(e)}); {intact}",
                             resumable=found is not None)

    def _intact(self) -> tuple[Path | None, str]:
        """The newest checkpoint (written atomically, so whole) and a sentence that says so."""
        try:
            found = ckpt.latest_checkpoint(self.run_dir)
            return found, ("no checkpoint was written yet" if found is None else
                           f"the checkpoint of step {ckpt.checkpoint_step(found)} ({found}) is intact and the run "
                           f"resumes from it")
        except OSError as err:
            return None, f"the checkpoints cannot be listed ({os_reason(err)})"

    # -- Ctrl-C -------------------------------------------------------------------------------------

    def _install_sigint(self):
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return None

        def stop(signum, frame):
            if self._stop:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop = True
            if self.rank == 0:  # under mpiexec every rank gets the Ctrl-C
                print("\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
                      file=sys.stderr)

        return signal.signal(signal.SIGINT, stop)

    @staticmethod
    def _restore_sigint(old) -> None:
        if old is not None:
            signal.signal(signal.SIGINT, old)

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self) -> Path:
        """Write a checkpoint of the current step into ``run_dir/checkpoints`` (atomically)."""
        if self.run_dir is None:
            raise ValueError("run_dir: the trainer has no run directory to save checkpoints into")
        opt_tensors, opt_meta = self.optimizer.state_dict()
        state = {"optimizer": opt_meta, "data": self.data.state_dict(), "elapsed": self.elapsed,
                 "last": self._finite_last(), "processes": self.world, **self.extra_state}
        try:
            return ckpt.save_checkpoint(self.run_dir, self.step, self.model.parameters(), opt_tensors, state,
                                        keep=self.keep_checkpoints)
        except OSError as e:  # the file that failed, else the folder of this step
            target = e.filename or self.run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(self.step)
            raise self._write_failed(target, e) from None

    def resume(self, path) -> Path:
        """Restore from a checkpoint folder, or from the newest complete one of a run directory."""
        path = Path(path)
        if not (path / ckpt.STATE_FILE).is_file():
            ckpt.remove_partial(path)
            found = ckpt.latest_checkpoint(path)
            if found is None:
                raise ValueError(f"{path}: no complete checkpoint to resume from")
            path = found
        c = ckpt.load_checkpoint(path)
        wrote = c.state.get("processes", 1)
        if wrote != self.world:  # each rank drew its share of every batch: another count sees other windows
            raise ValueError(f"{path}: written by {wrote} data-parallel process(es), resumed by {self.world}; resume "
                             f"it with {wrote} (mpiexec -n {wrote}, or qorus train --nproc {wrote}) to keep its "
                             f"batches")
        self.model.load_parameters(c.model)
        self.optimizer.load_state_dict(c.optimizer, c.state["optimizer"])
        self.data.load_state_dict(c.state["data"])
        self.step, self.elapsed = c.step, float(c.state.get("elapsed", 0.0))
        self.last = dict(c.state.get("last", {}))
        return path


def _check_model_and_optimizer(model, optimizer) -> None:
    """A model with forward, backward and parameters, and an optimizer that updates that model's parameters
    (one built for another model would leave this one's weights alone and see zero gradients)."""
    if not all(callable(getattr(model, a, None)) for a in ("forward", "backward", "parameters")):
        raise TypeError(f"model: expected a model with forward, backward and parameters, got {type(model).__name__}")
    if not all(callable(getattr(optimizer, a, None)) for a in ("zero_grad", "step", "grad_norm", "clip_grad_norm")):
        raise TypeError(f"optimizer: expected an optimizer (qorus_jit.train.optim) of the model, "
                        f"got {type(optimizer).__name__}")
    owner = getattr(optimizer, "model", model)
    if owner is not model:
        raise ValueError(f"optimizer: expected an optimizer of this model (built with it), got one of another "
                         f"{type(owner).__name__}")


def _val_batches(val_data) -> list:
    """``val_data`` as a list of (x, y) batches ([] for None)."""
    if val_data is None:
        return []
    batches = list(val_data) if isinstance(val_data, (list, tuple)) or hasattr(val_data, "__next__") else None
    if batches is None or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
        raise TypeError(f"val_data: expected a list of (x, y) batches or None, got {type(val_data).__name__}")
    return batches


def _row_step(line: bytes) -> int:
    """The step of a metrics line; a damaged one (cut by a kill, not UTF-8, not JSON) gets a step past any."""
    try:
        return int(json.loads(line.decode("utf-8")).get("step", 0))
    except (ValueError, AttributeError, TypeError, OverflowError, RecursionError):
        return 1 << 62
