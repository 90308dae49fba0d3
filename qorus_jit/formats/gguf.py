"""GGUF files (llama.cpp's model format), read with the ``gguf`` package of PyPI (an optional dependency,
``pip install "qorus-jit[gguf]"``): the metadata and the tensors, checked.

A GGUF file holds a header (magic ``GGUF``, version 2 or 3), typed key/value metadata (``general.architecture``,
``llama.block_count``, ``tokenizer.ggml.tokens``, ...), a table of tensors (name, dims, ggml type, offset) and
their data, aligned. :func:`read_gguf` memory-maps the file through ``gguf.GGUFReader``, every read bounded by
the file's size, and checks the tensor table (offsets aligned, inside the file, not overlapping). Tensors come
out as NumPy arrays in the ``(out, in)`` order of ``nn.Linear`` (ggml lists the dims the other way round):

- :meth:`GGUFFile.tensor_f32`: float32 (F32 as is, F16 and BF16 widened, Q8_0 dequantized);
- :meth:`GGUFFile.tensor_q8_0`: a Q8_0 tensor's ``(qs int8 (out, in), d float32 (out, in // 32))``, the
  bytes as they are (``d`` is the block's fp16 scale widened), value ``qs[o, i] * d[o, i // 32]``;
- :meth:`GGUFFile.tensor_bf16`: a BF16 tensor's raw ``uint16 (out, in)``.

Other tensor types (Q4_0, Q4_K, ...) are refused when read, the message naming the type and the tensor.
Damaged files (truncated, a wrong magic or version, offsets out of the file) are one-line ValueErrors
naming the file. What the metadata means for a model is ``models/gguf.py``'s business.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qorus_jit.core.files import check_file

GGUF_INSTALL_HINT = 'pip install "qorus-jit[gguf]"'
MAGIC = b"GGUF"
VERSIONS = (2, 3)  #: the GGUF versions the gguf package reads
TYPES = ("F32", "F16", "BF16", "Q8_0")  #: the tensor types read here
Q8_0_BLOCK = 32  #: values per Q8_0 block (an fp16 scale, then 32 int8)
_Q8_0_BYTES = 2 + Q8_0_BLOCK

_MISSING = object()


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(f'reading GGUF files needs the "gguf" package: {GGUF_INSTALL_HINT}') from None
    return gguf


def is_gguf(path) -> bool:
    """Whether ``path`` is a file that begins with the GGUF magic (nothing else is read)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except (OSError, TypeError, ValueError):
        return False


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: ``shape`` in NumPy order (``(out, in)`` for a matrix), ``type`` the ggml
    type's name (``"F32"``, ``"Q8_0"``, ...), ``data`` the reader's view into the mapped file."""

    name: str
    type: str
    shape: tuple[int, ...]
    data: np.ndarray


class GGUFFile:
    """A GGUF file read by :func:`read_gguf`: :attr:`metadata` keys, :attr:`tensors` by name, and the tensor
    data as arrays (views into the memory-mapped file are never handed out: every array returned is a copy)."""

    def __init__(self, path: Path, reader):
        self.path = path
        self._reader = reader
        self._fields = reader.fields
        self.version = int(self._fields["GGUF.version"].parts[0][0])
        self.tensors: dict[str, GGUFTensor] = {}
        self._offsets = {t.name: int(t.data_offset) for t in reader.tensors}
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors[t.name] = GGUFTensor(t.name, t.tensor_type.name, shape, t.data)

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, version={self.version}, {len(self.tensors)} tensors)"

    # -- metadata

    def keys(self) -> list[str]:
        """The metadata keys (the reader's ``GGUF.*`` header fields left out)."""
        return [k for k in self._fields if not k.startswith("GGUF.")]

    def __contains__(self, key: str) -> bool:
        return key in self._fields and not key.startswith("GGUF.")

    def get(self, key: str, kind: str, default=_MISSING):
        """The value of metadata ``key`` as ``kind``: ``"str"``, ``"int"``, ``"float"`` (an int is taken too; a
        float32 is read as the shortest decimal that rounds to it),
        ``"bool"``, or a list of them (``"[str]"``, ``"[int]"``, ``"[float]"``). A missing key returns
        ``default`` when given; missing without a default, or of another type, is a ValueError naming the
        file and the key."""
        gguf = _import_gguf()
        V = gguf.GGUFValueType
        field = self._fields.get(key) if not key.startswith("GGUF.") else None
        if field is None:
            if default is not _MISSING:
                return default
            raise ValueError(f"{self.path}: missing metadata key {key!r}")
        ints = {V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64, V.INT64}
        want = {"str": {V.STRING}, "int": ints, "float": ints | {V.FLOAT32, V.FLOAT64}, "bool": {V.BOOL}}
        many = kind.startswith("[")
        base = kind.strip("[]")
        types = list(field.types)
        ok = (len(types) == 2 and types[0] == V.ARRAY and types[1] in want[base]) if many else \
            (len(types) == 1 and types[0] in want[base])
        if many and len(types) == 1 and types[0] == V.ARRAY:  # an empty array: no element type recorded
            return []
        if not ok:
            got = "/".join(t.name.lower() for t in types)
            raise ValueError(f"{self.path}: metadata key {key!r}: expected {'an array of ' if many else 'a '}"
                             f"{base}{'s' if many else ''}, got {got}")
        try:
            value = field.contents()
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: metadata key {key!r}: invalid UTF-8 ({e.reason})") from None
        if base == "float":  # a float32 as the shortest decimal that rounds to it (1e-05, not 9.9999997e-06)
            f32 = types[-1] == V.FLOAT32
            conv = (lambda v: float(str(np.float32(v)))) if f32 else float  # noqa: E731
            return [conv(v) for v in value] if many else conv(value)
        if base == "bool":
            return [bool(v) for v in value] if many else bool(value)
        return value

    # -- tensors

    def tensor(self, name: str) -> GGUFTensor:
        """The tensor ``name`` of the file's table; a ValueError naming the file when it has none."""
        t = self.tensors.get(name)
        if t is None:
            raise ValueError(f"{self.path}: missing tensor {name!r}")
        return t

    def check_type(self, name: str, types=TYPES) -> GGUFTensor:
        """The tensor ``name``, whose type must be one of ``types``; else a ValueError naming the type, the tensor
        and the file."""
        t = self.tensor(name)
        if t.type not in types:
            raise ValueError(f"{self.path}: tensor {name!r} has type {t.type}, which is not supported (supported: "
                             f"{', '.join(types)})")
        if t.type == "Q8_0" and (len(t.shape) == 0 or t.shape[-1] % Q8_0_BLOCK):
            raise ValueError(f"{self.path}: tensor {name!r}: a Q8_0 tensor's rows must hold whole blocks of "
                             f"{Q8_0_BLOCK}, got shape {t.shape}")
        return t

    def release(self, name: str) -> None:
        """Let the pages of tensor ``name``'s data go from memory (read again from the file if asked for again):
        a model read tensor by tensor then holds its own copy alone, not the mapped file's pages too."""
        t = self.tensor(name)
        m = getattr(self._reader.data, "_mmap", None)  # np.memmap's mmap object
        if m is None or not hasattr(m, "madvise") or not t.data.nbytes:
            return
        start = self._offsets[name] // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            m.madvise(mmap.MADV_DONTNEED, start, self._offsets[name] + t.data.nbytes - start)
        except (OSError, ValueError, AttributeError):  # only advice
            pass

    def tensor_f32(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a new float32 array of its NumPy shape: F32 as stored, F16 and BF16 widened
        exactly, Q8_0 dequantized (``qs * d`` in float32, as ggml and the gguf package do)."""
        t = self.check_type(name)
        if t.type == "F32":
            return np.array(t.data, dtype=np.float32)
        if t.type == "F16":
            return t.data.astype(np.float32)
        if t.type == "BF16":
            return bf16_to_f32(self.tensor_bf16(name))
        qs, d = self.tensor_q8_0(name)
        return dequantize_q8_0(qs, d)

    def tensor_q8_0(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A Q8_0 tensor's blocks, unchanged: ``qs`` int8 ``(*rows, in)`` and ``d`` float32 ``(*rows, in // 32)``
        (each an fp16 value, widened)."""
        t = self.check_type(name, ("Q8_0",))
        *rows, cols = t.shape
        blocks = t.data.reshape(*rows, cols // Q8_0_BLOCK, _Q8_0_BYTES)
        d = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)
        qs = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(*rows, cols)
        return qs, d

    def tensor_bf16(self, name: str) -> np.ndarray:
        """A BF16 tensor's raw ``uint16`` values (the upper halves of float32), as a new array of its shape."""
        t = self.check_type(name, ("BF16",))
        return np.ascontiguousarray(t.data).view(np.uint16).reshape(t.shape).copy()


def bf16_to_f32(w16: np.ndarray) -> np.ndarray:
    """bf16 values (``uint16``) as float32: exact."""
    return (w16.astype(np.uint32) << 16).view(np.float32)


def dequantize_q8_0(qs: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``qs[..., i] * d[..., i // 32]`` in float32: the values of a Q8_0 tensor."""
    *rows, cols = qs.shape
    w = qs.reshape(*rows, cols // Q8_0_BLOCK, Q8_0_BLOCK).astype(np.float32) * d[..., None]
    return w.reshape(*rows, cols)


class _Truncated(ValueError):
    pass


def _bounded_reader(gguf):
    """``gguf.GGUFReader`` whose every read must lie inside the file: a truncated or corrupt file then fails
    at its first read past the end (the plain reader would read short arrays and, for an array of absurd
    length, loop on them)."""

    class Reader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            count = int(count)
            n = np.dtype(dtype).itemsize * count
            if offset < 0 or count < 0 or offset + n > self.data.size:
                raise _Truncated(f"a read of {n} bytes at offset {offset} goes past the end of the file "
                                 f"({self.data.size} bytes): truncated or corrupt")
            return super()._get(offset, dtype, count, override_order)

    return Reader


def read_gguf(path) -> GGUFFile:
    """Read the GGUF file ``path`` (memory-mapped; tensors read when asked for).

    FileNotFoundError / IsADirectoryError for a missing file or a folder; a one-line ValueError naming the file
    for anything else wrong: too short, not GGUF (the magic), a version other than 2 or 3, a big-endian file,
    metadata or a tensor table that runs past the end of the file or is otherwise corrupt, tensor data
    misaligned, outside the file or overlapping. Needs the ``gguf`` package.
    """
    file = check_file("path", path, "GGUF file")
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{file}: too short for a GGUF file ({size} bytes; the header alone is 24)")
    if head[:4] != MAGIC:
        raise ValueError(f"{file}: not a GGUF file (it begins with {head[:4]!r}, expected the magic b'GGUF')")
    version = struct.unpack_from("<I", head, 4)[0]
    if version & 0xFFFF == 0 and struct.unpack_from(">I", head, 4)[0] in VERSIONS:
        raise ValueError(f"{file}: a big-endian GGUF file, which is not supported (little-endian only)")
    if version not in VERSIONS:
        raise ValueError(f"{file}: GGUF version {version} is not supported (expected "
                         f"{' or '.join(map(str, VERSIONS))})")
    gguf = _import_gguf()
    try:
        reader = _bounded_reader(gguf)(os.fspath(file), "r")
    except _Truncated as e:
        raise ValueError(f"{file}: {e}") from None
    except (ValueError, KeyError, IndexError, OverflowError, TypeError, MemoryError) as e:
        why = str(e).replace("\n", " ") or type(e).__name__
        raise ValueError(f"{file}: corrupt GGUF file ({why})") from None
    _check_layout(file, reader, size)
    return GGUFFile(file, reader)


def _check_layout(file: Path, reader, size: int) -> None:
    """Tensor data aligned, inside the file and not overlapping."""
    spans = []
    for t in reader.tensors:
        rel = t.data_offset - reader.data_offset
        if rel % reader.alignment:
            raise ValueError(f"{file}: tensor {t.name!r}: data offset {rel} is not a multiple of the alignment "
                             f"{reader.alignment}: corrupt tensor table")
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{file}: tensor {t.name!r}: its {t.n_bytes} bytes at offset {t.data_offset} go past "
                             f"the end of the file ({size} bytes): truncated or corrupt")
        spans.append((t.data_offset, t.data_offset + t.n_bytes, t.name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"{file}: tensors {a!r} and {b!r} overlap: corrupt tensor table")
