"""safetensors files, read and written with the ``safetensors`` package's NumPy API (never pickle).

Reading gives every tensor C-contiguous; float16, bfloat16 and float64 become float32 (NumPy has no
bfloat16: its bits are widened by hand, exactly), integer and bool tensors keep their dtype. A corrupt
or truncated file raises a ValueError naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from qorus_jit.core import alloc as _alloc
from qorus_jit.core.files import fsync_file

_TO_FLOAT32 = {"F16", "F64", "BF16"}
_KEEP = {"F32", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"}


def read_safetensors_header(file) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of every tensor of one safetensors file, from its header alone (nothing is
    read into memory). The safetensors package checks the header against the file: each tensor's bytes
    lie inside the file and match its shape and dtype, so the shapes are bounded by the file's size.
    A corrupt file or an unsupported dtype raises a ValueError naming the file."""
    out = {}
    with _opened(file) as (path, f):
        for name in f.keys():
            sl = f.get_slice(name)
            dtype = sl.get_dtype()
            if dtype not in _TO_FLOAT32 and dtype not in _KEEP:
                raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
            out[name] = (dtype, tuple(int(n) for n in sl.get_shape()))
    return out


def load_safetensors(file) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, floating ones as float32; corrupt files raise ValueError."""
    tensors: dict[str, np.ndarray] = {}
    read_safetensors_header(file)  # validated by the package first
    header = raw_header(file)
    for name in header[1]:
        arr = read_raw_tensor(file, name, header)
        if header[1][name]["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        tensors[name] = arr
    return tensors


#: The NumPy dtype of each safetensors dtype as stored (BF16: its bits, uint16).
_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2", "I8": "i1", "I16": "<i2", "I32": "<i4",
          "I64": "<i8", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


def raw_header(file) -> tuple[int, dict]:
    """(header length, the header's tensor table) of a safetensors file that :func:`read_safetensors_header`
    has validated."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        table = json.loads(f.read(n))
    table.pop("__metadata__", None)
    return n, table


def read_raw_tensor(file, name: str, header: tuple[int, dict] | None = None, *, weights: bool = False) -> np.ndarray:
    """Tensor ``name`` of a validated safetensors file as stored (BF16 as its uint16 bits), C-contiguous, read
    with file reads rather than through a memory map: a loader that keeps the arrays does not also hold the
    file's pages in its resident memory (a quantized model's peak RSS halved). ``header``: :func:`raw_header`'s
    (read again if None). ``weights``: read straight into :func:`qorus_jit.core.alloc.weights` memory (a model's
    weights to keep: no second copy)."""
    n, table = raw_header(file) if header is None else header
    info = table[name]
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    dtype = np.dtype(_NUMPY[info["dtype"]]).newbyteorder("<")
    count = (end - start) // dtype.itemsize
    if count != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{file}: tensor {name!r} is truncated or its size does not match its shape")
    arr = _alloc.weights(count, dtype.newbyteorder("=")) if weights else np.empty(count, dtype.newbyteorder("="))
    with open(file, "rb") as f:
        f.seek(8 + n + start)
        got = f.readinto(memoryview(arr).cast("B")) if count else 0
    if got != count * dtype.itemsize:
        raise ValueError(f"{file}: tensor {name!r} is truncated or its size does not match its shape")
    if sys.byteorder == "big":
        arr.byteswap(inplace=True)
    return arr.reshape(shape)


@contextlib.contextmanager
def _opened(file):
    """``(path, safe_open handle)``; the package's errors (header garbage, a file cut short) become a
    ValueError naming the file."""
    from safetensors import safe_open

    file = Path(file)
    size = file.stat().st_size
    if size < 8:
        raise ValueError(f"{file}: not a valid safetensors file ({size} bytes; truncated?)")
    try:
        with safe_open(str(file), framework="np") as f:
            yield file, f
    except (ValueError, MemoryError):
        raise
    except Exception as e:  # safetensors' SafetensorError and friends
        raise ValueError(f"{file}: not a valid safetensors file, truncated or corrupt ({e})") from None


def contiguous_tensors(tensors, what: str = "tensors") -> dict[str, np.ndarray]:
    """``tensors`` checked (a dict of str -> NumPy array; errors name ``what``), each array C-contiguous."""
    if not isinstance(tensors, dict):
        raise ValueError(f"{what}: expected a dict of name -> numpy array, got {type(tensors).__name__}")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise ValueError(f"{what}: tensor {name!r} must be a numpy array under a str name, "
                             f"got {type(arr).__name__}")
        arrays[name] = np.ascontiguousarray(arr)
    return arrays


def write_safetensors(file, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> NumPy array, each stored in its own dtype) and ``metadata`` to ``file``,
    flushed to disk. Not atomic on its own: callers write to a temporary name and rename. A failed write is an
    OSError: safetensors reports one (a full disk) as its own ``SafetensorError`` with the OS's error number."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        save_file(contiguous_tensors(tensors), str(file), metadata=metadata)
    except SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(file)) from None
    fsync_file(Path(file))
