"""Data-parallel processes over MPI, in Horovod's manner: :func:`init`, :func:`rank`, :func:`size`,
:func:`local_rank`; in-place :func:`allreduce` of float32 arrays in buckets, :func:`broadcast` from a root,
:func:`broadcast_json` (JSON, never pickle), :func:`barrier` and :func:`abort` (a one-line error naming the
rank, then ``MPI_Abort``: the launcher stops every process, none hangs).

The processes talk through MPI's collectives (``mpi4py``: ``pip install "qorus-jit[mpi]"``, docs/distributed.md).
Outside an MPI launcher (``mpiexec``/``mpirun``/``srun``), or without ``mpi4py``, this is one process: size 1,
rank 0, every call a no-op, and ``mpi4py`` is never imported. A process started by a launcher whose
``mpi4py`` is missing refuses to run as a lone rank 0 (N copies would write the same run directory).

>>> from qorus_jit.core import distributed as dist
>>> dist.size(), dist.rank()   # run as a plain process
(1, 0)
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import numpy as np

#: Gradients are summed in buckets of about this many bytes: one MPI call per bucket, not per tensor.
BUCKET_BYTES = 4 << 20

#: Environment variables one of which every common launcher sets in the processes it starts (MPICH's Hydra,
#: Open MPI, PMIx, Slurm's srun with PMI), and which a plain process lacks.
LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")

_ABORT_GRACE = 0.5  # seconds between abort's error line and MPI_Abort


class _World:
    """The communicators of this process, or none (size 1)."""

    def __init__(self):
        self.comm = self.local = self.MPI = None
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.pids: list[int] = [os.getpid()]
        self.hosts: list[str] = [socket.gethostname()]


_world: _World | None = None


def launched() -> bool:
    """Whether an MPI launcher started this process (its environment says so; MPI is not loaded to tell)."""
    return any(v in os.environ for v in LAUNCHER_VARS)


def _launcher_size() -> int | None:
    """The process count the launcher's environment states (MPICH, Open MPI), or None."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def init() -> None:
    """Join the MPI job this process belongs to (idempotent). Without a launcher: a job of one process."""
    global _world
    if _world is not None:
        return
    world = _World()
    if launched():
        try:
            from mpi4py import MPI
        except ImportError:
            if _launcher_size() == 1:  # a launcher's single process (srun python ...): alone indeed
                _world = world
                return
            raise RuntimeError("an MPI launcher started this process, but mpi4py is not installed here "
                               "(pip install \"qorus-jit[mpi]\"; docs/distributed.md)") from None
        comm = MPI.COMM_WORLD
        world.MPI, world.comm, world.rank, world.size = MPI, comm, comm.Get_rank(), comm.Get_size()
        world.local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=world.rank)
        world.local_rank, world.local_size = world.local.Get_rank(), world.local.Get_size()
        pids = np.zeros(world.size, np.int64)
        comm.Allgather(np.array([os.getpid()], np.int64), pids)
        world.pids = [int(p) for p in pids]
        world.hosts = allgather_json_with(comm, socket.gethostname())
    _world = world


def _get() -> _World:
    if _world is None:
        init()
    return _world


def rank() -> int:
    """This process's rank, 0 to ``size() - 1`` (0 alone)."""
    return _get().rank


def size() -> int:
    """The number of processes in the job (1 alone)."""
    return _get().size


def local_rank() -> int:
    """This process's rank among those on its machine."""
    return _get().local_rank


def local_size() -> int:
    """The number of the job's processes on this machine."""
    return _get().local_size


def processes() -> str:
    """Where each rank runs, in one line: ``rank 0 pid 123 on host, rank 1 pid 124 on host`` (the pids
    name the ranks in a launcher's messages, which speak of pids)."""
    w = _get()
    return ", ".join(f"rank {r} pid {p} on {h}" for r, (p, h) in enumerate(zip(w.pids, w.hosts, strict=True)))


def default_threads(cores: int | None = None) -> int:
    """Threads a process takes by default: the machine's cores shared among the job's processes on it."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // local_size())


# -- collectives -------------------------------------------------------------------------------------------


def _buckets(arrays: list[np.ndarray], bucket_bytes: int) -> list[list[int]]:
    """Consecutive groups of ``arrays`` (indices) of about ``bucket_bytes`` each; a larger array goes alone."""
    out, cur, nbytes = [], [], 0
    for i, a in enumerate(arrays):
        if cur and nbytes + a.nbytes > bucket_bytes:
            out.append(cur)
            cur, nbytes = [], 0
        cur.append(i)
        nbytes += a.nbytes
    if cur:
        out.append(cur)
    return out


def _check_arrays(what: str, arrays) -> list[np.ndarray]:
    arrays = list(arrays)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
            got = f"{a.dtype} {'C-contiguous' if a.flags.c_contiguous else 'strided'}" if isinstance(
                a, np.ndarray) else type(a).__name__
            raise TypeError(f"{what}[{i}]: expected a C-contiguous float32 array, got {got}")
        if not a.flags.writeable:
            raise ValueError(f"{what}[{i}]: expected a writeable array (written in place)")
    return arrays


def _bucketed(arrays: list[np.ndarray], bucket_bytes: int, start) -> None:
    """Run ``start(buffer) -> request`` on each bucket of ``arrays``: one array is its own buffer; several
    are packed into one (and unpacked once all requests are done). Buckets are in flight together."""
    w = _get()
    pending = []
    for group in _buckets(arrays, bucket_bytes):
        if len(group) == 1:
            pending.append((start(arrays[group[0]].reshape(-1)), None, None))
            continue
        flat = np.concatenate([arrays[i].reshape(-1) for i in group])
        pending.append((start(flat), flat, group))
    w.MPI.Request.Waitall([req for req, _, _ in pending])
    for _, flat, group in pending:
        if flat is None:
            continue
        at = 0
        for i in group:
            n = arrays[i].size
            arrays[i].reshape(-1)[:] = flat[at:at + n]
            at += n


def allreduce(arrays, average: bool = True, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum ``arrays`` (C-contiguous float32, the same shapes in the same order on every rank) across the ranks
    in place, then divide by :func:`size` when ``average``. Buckets of about ``bucket_bytes`` go out as
    nonblocking allreduces, all in flight at once. Alone: nothing happens."""
    arrays = _check_arrays("arrays", arrays)
    w = _get()
    if w.size == 1 or not arrays:
        return
    MPI = w.MPI
    _bucketed(arrays, bucket_bytes, lambda buf: w.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
    if average:
        scale = np.float32(1.0 / w.size)
        for a in arrays:
            a *= scale


def broadcast(arrays, root: int = 0, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Overwrite ``arrays`` (C-contiguous float32, the same shapes on every rank) with those of rank ``root``,
    in buckets. Alone: nothing happens."""
    arrays = _check_arrays("arrays", arrays)
    w = _get()
    if w.size == 1 or not arrays:
        return
    _bucketed(arrays, bucket_bytes, lambda buf: w.comm.Ibcast(buf, root=root))


def sum_values(values) -> list[float]:
    """The sums over the ranks of a few numbers (float64), e.g. the losses and token counts of a step."""
    buf = np.asarray(values, dtype=np.float64).copy()
    w = _get()
    if w.size > 1:
        w.comm.Allreduce(w.MPI.IN_PLACE, buf, op=w.MPI.SUM)
    return [float(v) for v in buf]


def broadcast_json(obj=None, root: int = 0):
    """Rank ``root``'s ``obj`` (JSON data) on every rank; the others' ``obj`` is ignored. Alone: ``obj``."""
    w = _get()
    if w.size == 1:
        return obj
    data = json.dumps(obj).encode("utf-8") if w.rank == root else b""
    n = np.array([len(data)], np.int64)
    w.comm.Bcast(n, root=root)
    buf = np.frombuffer(data, np.uint8).copy() if w.rank == root else np.empty(int(n[0]), np.uint8)
    w.comm.Bcast(buf, root=root)
    return json.loads(buf.tobytes().decode("utf-8"))


def allgather_json_with(comm, obj) -> list:
    """Every rank's ``obj`` (JSON data), in rank order, over ``comm``."""
    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    counts = np.zeros(comm.Get_size(), np.int64)
    comm.Allgather(np.array([data.size], np.int64), counts)
    out = np.empty(int(counts.sum()), np.uint8)
    comm.Allgatherv(data, [out, counts.tolist()])
    ends = np.cumsum(counts)
    return [json.loads(out[e - c:e].tobytes().decode("utf-8")) for e, c in zip(ends, counts, strict=True)]


def barrier() -> None:
    """Wait until every rank gets here."""
    w = _get()
    if w.size > 1:
        w.comm.Barrier()


def abort(message: str, code: int = 1):
    """Print ``error: rank R of N: message`` on one line and stop the whole job (``MPI_Abort``: the launcher
    ends every rank, so none waits forever in a collective). Alone: the same line without the rank, then
    ``SystemExit(code)``."""
    w = _get()
    text = " ".join(str(message).split())
    if w.size == 1:
        print(f"error: {text}", file=sys.stderr, flush=True)
        raise SystemExit(code)
    print(f"error: rank {w.rank} of {w.size} (pid {os.getpid()} on {w.hosts[w.rank]}): {text}", file=sys.stderr,
          flush=True)
    # the launcher forwards our stderr from a pipe, and an abort can end it before the line is read (seen once
    # in a CI run, never on a quiet machine): give it a moment
    time.sleep(_ABORT_GRACE)
    try:
        w.comm.Abort(code)
    finally:
        os._exit(code)  # MPICH's MPI_Abort may return before the launcher ends this process
