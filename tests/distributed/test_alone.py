"""``qorus_jit.distributed`` without MPI (one process: size 1, rank 0, no mpi4py import), its argument checks,
the bucketing of an allreduce, and ``TextDataset.shard`` (ranks that together draw one process's windows);
none of these needs mpiexec."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from qorus_jit.cli import main
from qorus_jit.core import distributed as dist
from qorus_jit.data import TextDataset


def test_alone_it_is_one_process_and_every_collective_leaves_the_data_alone():
    assert (dist.size(), dist.rank(), dist.local_rank(), dist.local_size()) == (1, 0, 0, 1)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    dist.allreduce([a])
    dist.broadcast([a])
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert dist.sum_values([1.5, 2]) == [1.5, 2.0]
    assert dist.broadcast_json({"a": [1, "x"]}) == {"a": [1, "x"]}
    assert dist.default_threads(8) == 8


def test_importing_it_does_not_load_mpi4py_without_a_launcher():
    code = ("import sys, os; [os.environ.pop(v, None) for v in ('PMI_RANK', 'PMI_SIZE', 'OMPI_COMM_WORLD_SIZE', "
            "'PMIX_RANK', 'MPI_LOCALNRANKS')]\nfrom qorus_jit import distributed as d\n"
            "assert d.size() == 1 and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_under_a_launcher_without_mpi4py_it_refuses_to_run_alone():
    code = ("import sys, os; os.environ['PMI_SIZE'] = '2'; sys.modules['mpi4py'] = None\n"
            "from qorus_jit.core import distributed as d\n"
            "try:\n    d.init()\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "an MPI launcher started this process, but mpi4py is not installed" in out
    assert 'pip install "qorus-jit[mpi]"' in out
    alone = code.replace("'PMI_SIZE'] = '2'", "'PMI_SIZE'] = '1'") + "print(d.size())\n"
    out = subprocess.run([sys.executable, "-c", alone], capture_output=True, text=True, check=True).stdout
    assert out == "1\n"  # a launcher's single process (srun python ...) runs alone without mpi4py


@pytest.mark.parametrize("bad, message", [
    (np.zeros(3, np.float64), r"arrays\[0\]: expected a C-contiguous float32 array, got float64"),
    (np.zeros((3, 4), np.float32)[:, ::2], r"arrays\[0\]: expected a C-contiguous float32 array, got float32 strided"),
    ([1.0, 2.0], r"arrays\[0\]: expected a C-contiguous float32 array, got list"),
])
def test_allreduce_names_the_array_it_cannot_take(bad, message):
    with pytest.raises(TypeError, match=message):
        dist.allreduce([bad])


def test_buckets_are_consecutive_and_a_large_array_goes_alone():
    arrays = [np.zeros(n, np.float32) for n in (10, 10, 100, 5, 5, 5)]  # 40, 40, 400, 20, 20, 20 bytes
    assert dist._buckets(arrays, 80) == [[0, 1], [2], [3, 4, 5]]
    assert dist._buckets(arrays, 1 << 20) == [[0, 1, 2, 3, 4, 5]]
    assert dist._buckets(arrays, 1) == [[i] for i in range(6)]


def test_shards_together_draw_the_windows_of_one_process_with_the_whole_batch():
    tokens = np.random.default_rng(1).integers(0, 50, 3000)
    one = TextDataset(tokens, seq_len=8, seed=4)
    ranks = [TextDataset(tokens, seq_len=8, seed=4) for _ in range(3)]
    for r, ds in enumerate(ranks):
        ds.shard(r, 3)
    for _ in range(4):
        x, y = one.train_batch(6)
        parts = [ds.train_batch(2) for ds in ranks]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert all(ds.state_dict() == one.state_dict() for ds in ranks)  # the data position is the global one
    with pytest.raises(ValueError, match=r"rank: expected an int in \[0, size = 3\), got 3"):
        one.shard(3, 3)


def test_nproc_under_a_launcher_is_refused_in_one_line():
    res = CliRunner().invoke(main, ["train", "--nproc", "2"], env={"PMI_SIZE": "2"})
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == ["error: --nproc: this process runs under an MPI launcher already, "
                                               "which sets the process count; leave --nproc out"]
