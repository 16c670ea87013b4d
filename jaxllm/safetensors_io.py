"""The safetensors file format: reading a file's header (checked as the safetensors library checks
it) and its tensors lazily, and writing tensors as one file or as shards with an index.

Tensors are read lazily from safetensors files: `get` returns a LazyTensor, and bytes are read
only when asked, whole or by row blocks, as read-only arrays over a memory map of just those bytes
(no copy out of the page cache; unmapped when the array is dropped, so no file pages stay mapped),
so a converter can build a transposed copy without ever holding a second full copy. We parse the (simple,
documented) safetensors header ourselves because safetensors' numpy backend cannot return
bfloat16, the dtype most checkpoints ship in; ml_dtypes gives numpy that dtype.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import reprlib
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxllm.errors import CheckpointError, unique_keys

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32, "U16": np.uint16,
    "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}


_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def write_safetensors(folder: Path, layout: dict[str, tuple[tuple, np.dtype]], tensors, max_shard_bytes: int = 5 << 30,
                      progress=None) -> list[str]:
    """Write tensors as safetensors files in `folder`, streaming: `layout` {name: (shape, dtype)} gives
    every header up front, `tensors` yields (name, array) in any order, and each array is written
    and dropped. One model.safetensors, or model-0000i-of-0000n.safetensors shards of at most
    `max_shard_bytes` plus model.safetensors.index.json. Returns the file names."""
    groups, size = [[]], 0
    for name, (shape, dtype) in layout.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    n = len(groups)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    where = {}
    for file, names in zip(files, groups):  # every header, each file at its full length (sparse until written)
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            shape, dtype = layout[name]
            end = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, end]}
            offset = end
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        with open(folder / file, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            f.truncate(8 + len(blob) + offset)
        for name in names:
            where[name] = (file, 8 + len(blob) + header[name]["data_offsets"][0])
    # One file open at a time (a tensor's file opened when it differs from the last one's): small
    # shards of a large model (--shard-size) would take more descriptors than the process may open.
    handle, open_file = None, None
    try:
        written = set()
        for name, array in tensors:
            shape, dtype = layout[name]
            if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
                raise CheckpointError(f"tensor {name} is {array.dtype}{list(array.shape)}, its header says {np.dtype(dtype)}{list(shape)}")
            file, at = where[name]
            if file != open_file:
                if handle is not None:
                    handle.close()
                handle, open_file = open(folder / file, "r+b"), file
            handle.seek(at)
            handle.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            written.add(name)
            if progress is not None:
                progress(name)
        missing = set(layout) - written
        if missing:
            raise CheckpointError(f"{len(missing)} tensors were never written, e.g. {sorted(missing)[0]}")
    finally:
        if handle is not None:
            handle.close()
    if n > 1:
        index = {"metadata": {"total_size": sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in layout.values())},
                 "weight_map": {name: file for file, names in zip(files, groups) for name in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        files.append("model.safetensors.index.json")
    return files


class LazyTensor:
    """A tensor in a file, read on demand: `read()` for all of it, `read(a, b)` for rows a..b.

    A read maps just the rows' bytes (page-aligned) and returns a read-only array over the map, so
    nothing is copied out of the page cache; `populate` False maps lazily (only pages touched are
    read from disk: a process slicing out its shards reads only those), True reads them all at once
    (MAP_POPULATE: a reading thread takes the disk's time, not the thread that consumes the array).
    The map goes away with the last array over it."""

    def __init__(self, path: Path, offset: int, dtype, shape):
        self.path, self.offset, self.dtype, self.shape = path, offset, np.dtype(dtype), tuple(shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    def read(self, start: int = 0, stop: int | None = None, populate: bool = False) -> np.ndarray:
        rows = self.shape[0] if self.shape else 1
        stop = rows if stop is None else min(stop, rows)
        start = min(start, stop)
        row_bytes = self.dtype.itemsize * (math.prod(self.shape[1:]) if self.shape else 1)
        n = (stop - start) * row_bytes
        shape = (stop - start,) + self.shape[1:] if self.shape else ()
        if n == 0:
            return np.empty(shape, self.dtype)
        begin = self.offset + start * row_bytes
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb", buffering=0) as f:
            # A file shorter than the header says would fault (SIGBUS) when read through a map.
            if os.fstat(f.fileno()).st_size < begin + n:
                raise CheckpointError(f"{self.path} ends early (truncated download?): re-download it")
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            mapped = mmap.mmap(f.fileno(), begin + n - aligned, flags=flags, prot=mmap.PROT_READ, offset=aligned)
        return np.frombuffer(mapped, self.dtype, count=n // self.dtype.itemsize, offset=begin - aligned).reshape(shape)

    def __array__(self, dtype=None, copy=None):
        x = self.read()
        return x.astype(dtype) if dtype is not None else np.array(x) if copy else x


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit
_short = reprlib.Repr()  # header values in messages: long lists cut, tensor names whole
_short.maxstring, _short.maxother = 200, 60


def _unreadable(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({problem}): re-download or re-save it")


def _read_header(path: Path) -> tuple[int, dict]:
    """(bytes before the data, {tensor name: entry}) of a safetensors file; the header's length is
    checked against the file (and the 100 MB limit) before anything is read or parsed."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if head == b"version ":  # "version https://git-lfs.github.com/spec/v1 ...": a pointer, not the file
                raise CheckpointError(f"{path} is a Git LFS pointer ({size} bytes), not the weights: run 'git lfs pull' in "
                                      "the clone, or download the model with huggingface_hub")
            if len(head) < 8:
                raise _unreadable(path, f"{size} bytes, fewer than the header's 8-byte length")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise _unreadable(path, f"header length {n} is more than the {size - 8} bytes after it or the 100 MB limit")
            text = f.read(n).decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("the header is not a JSON object")
        header = json.loads(text, object_pairs_hook=unique_keys)  # a tensor named twice: DuplicateKey
    except OSError as err:
        raise _unreadable(path, err.strerror or type(err).__name__) from None
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, or JSON nested too deep
        raise _unreadable(path, f"header: {str(err)[:100] or type(err).__name__}") from None
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _unreadable(path, "__metadata__ must map names to strings")
    _check_entries(path, header, size - 8 - n)
    return 8 + n, header


def _check_entries(path: Path, header: dict, data_bytes: int) -> None:
    """What the safetensors library checks: every entry well formed and as long as its dtype and
    shape say, and the entries tiling the data bytes in order, without gaps or overlaps."""
    spans = []
    for name, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise _unreadable(path, f"tensor {_short.repr(name)}: {problem}")
        spans.append((*entry["data_offsets"], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            where = "overlaps the tensor before it" if start < end else "leaves a gap after the tensor before it"
            raise _unreadable(path, f"tensor {_short.repr(name)} starts at data byte {start}: it {where} (ending at {end})")
        end = stop
    if end != data_bytes:
        raise _unreadable(path, f"the tensors take {end} data bytes but the file holds {data_bytes} (truncated download?)")


def _entry_problem(entry) -> str | None:
    """What is wrong with one header entry, or None."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        return "its entry needs 'dtype', 'shape' and 'data_offsets'"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return f"dtype {_short.repr(dtype)} is not one jaxllm reads ({', '.join(_DTYPES)})"
    if not _whole_numbers(shape):
        return f"shape {_short.repr(shape)} is not a list of non-negative integers"
    if not _whole_numbers(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"data_offsets {_short.repr(offsets)} are not [start, end] with 0 <= start <= end"
    elements = 1
    for d in shape:  # as the safetensors library multiplies: refused once past 64 bits
        elements *= d
        if elements >= 2**64:
            return f"shape {_short.repr(shape)} holds more than 2**64 elements"
    nbytes = elements * np.dtype(_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        return f"data_offsets {_short.repr(offsets)} span {offsets[1] - offsets[0]} bytes, but {dtype}{_short.repr(shape)} takes {nbytes}"
    return None


def _whole_numbers(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


class SafetensorsFile:
    """One .safetensors file: the header at once (checked as the safetensors library checks it),
    tensors lazily."""

    def __init__(self, path: Path):
        self.path = path
        self.offset, self.header = _read_header(path)

    def names(self):
        return self.header.keys()

    def shape(self, name):
        return tuple(self.header[name]["shape"])

    def dtype(self, name):
        return np.dtype(_DTYPES[self.header[name]["dtype"]])

    def get(self, name) -> LazyTensor:
        info = self.header[name]
        return LazyTensor(self.path, self.offset + info["data_offsets"][0], _DTYPES[info["dtype"]], info["shape"])
