"""Finding a Hugging Face checkpoint and reading its files: config.json, generation_config.json,
tensors (HFCheckpoint: safetensors here, GGUF through jaxllm.gguf) and the tokenizer. A folder
written by `python -m jaxllm.convert` is read by jaxllm.converted behind the same interface.

Tensors are read lazily from safetensors files: `get` returns a LazyTensor, and bytes are read
(os.pread) only when asked, whole or by row blocks, so a converter can build a transposed copy
without ever holding a second full copy (nor keeping file pages mapped). We parse the (simple,
documented) safetensors header ourselves because safetensors' numpy backend cannot return
bfloat16, the dtype most checkpoints ship in; ml_dtypes gives numpy that dtype.
"""

from __future__ import annotations

import json
import os
import re
import struct
from functools import cached_property
from pathlib import Path

import ml_dtypes
import numpy as np
from huggingface_hub import snapshot_download
from huggingface_hub.errors import EntryNotFoundError

from jaxllm import gguf
from jaxllm.errors import CheckpointError, ConfigError
from jaxllm.models import weights

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local file or folder as it is; otherwise a hub id, fetched into (or found in) the HF cache."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_id)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"no such file or folder: '{text}'; pass a checkpoint folder, a .gguf file or a hub id like 'org/name'")
    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
    except (OSError, ValueError, EntryNotFoundError) as err:  # offline, unknown or gated repo, network
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"could not get '{text}' from the Hugging Face hub or its local cache ({type(err).__name__}: {reason[:200]}); "
            "check the id and your network, or pass a local folder"
        ) from None


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found at {path}: a Hugging Face checkpoint folder needs one") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what} at {path} is not valid JSON (line {err.lineno}: {err.msg}): fix or replace the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} at {path} must hold a JSON object")
    return data


def read_config(folder: Path) -> dict:
    return read_json(folder / "config.json", "config.json")


def read_generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    return read_json(path, "generation_config.json") if path.exists() else {}


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
    handles, where = {}, {}
    try:
        for file, names in zip(files, groups):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name in names:
                shape, dtype = layout[name]
                end = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
                header[name] = {"dtype": _DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, end]}
                offset = end
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
            f = handles[file] = open(folder / file, "wb")
            f.write(struct.pack("<Q", len(blob)) + blob)
            f.truncate(8 + len(blob) + offset)
            for name in names:
                where[name] = (f, 8 + len(blob) + header[name]["data_offsets"][0])
        written = set()
        for name, array in tensors:
            shape, dtype = layout[name]
            if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
                raise CheckpointError(f"tensor {name} is {array.dtype}{list(array.shape)}, its header says {np.dtype(dtype)}{list(shape)}")
            f, at = where[name]
            f.seek(at)
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
            written.add(name)
            if progress is not None:
                progress(name)
        missing = set(layout) - written
        if missing:
            raise CheckpointError(f"{len(missing)} tensors were never written, e.g. {sorted(missing)[0]}")
    finally:
        for f in handles.values():
            f.close()
    if n > 1:
        index = {"metadata": {"total_size": sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in layout.values())},
                 "weight_map": {name: file for file, names in zip(files, groups) for name in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        files.append("model.safetensors.index.json")
    return files


class LazyTensor:
    """A tensor in a file, read on demand: `read()` for all of it, `read(a, b)` for rows a..b."""

    def __init__(self, path: Path, offset: int, dtype, shape):
        self.path, self.offset, self.dtype, self.shape = path, offset, np.dtype(dtype), tuple(shape)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        rows = self.shape[0] if self.shape else 1
        stop = rows if stop is None else min(stop, rows)
        row_bytes = self.dtype.itemsize * (int(np.prod(self.shape[1:])) if self.shape else 1)
        n = (stop - start) * row_bytes
        buf = bytearray(n)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * row_bytes)
            got = f.readinto(buf)
        if got != n:
            raise CheckpointError(f"{self.path} ends early (truncated download?): re-download it")
        out = np.frombuffer(buf, self.dtype)
        return out.reshape((stop - start,) + self.shape[1:]) if self.shape else out.reshape(())

    def __array__(self, dtype=None, copy=None):
        x = self.read()
        return x if dtype is None else x.astype(dtype)


class SafetensorsFile:
    """One .safetensors file: the header at once, tensors lazily."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}): re-download or re-save it") from None
        header.pop("__metadata__", None)
        self.offset = 8 + n
        self.header = header

    def names(self):
        return self.header.keys()

    def shape(self, name):
        return tuple(self.header[name]["shape"])

    def get(self, name) -> LazyTensor:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, _ = info["data_offsets"]
        return LazyTensor(self.path, self.offset + start, _DTYPES[info["dtype"]], info["shape"])


class SafetensorsCheckpoint:
    """All tensors of a checkpoint folder: one file, or shards listed by model.safetensors.index.json."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no 'weight_map': re-download the checkpoint's index")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).exists()]
            if missing:
                raise CheckpointError(f"{folder} lacks shard(s) {', '.join(missing[:3])} named by its index: download them")
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            hint = " (PyTorch .bin files are not read: save the model with safetensors)" if list(folder.glob("*.bin")) else ""
            raise CheckpointError(f"no .safetensors files in {folder}{hint}")
        self.files = [SafetensorsFile(folder / f) for f in files]
        self._where = {}
        for f in self.files:
            for name in f.names():
                self._where[name] = f

    def names(self):
        return self._where.keys()

    def shape(self, name):
        return self._where[name].shape(name)

    def get(self, name) -> LazyTensor:
        return self._where[name].get(name)


# ----------------------------------------------------------------------------------------------
# The two kinds of checkpoint, and the tokenizer they ship


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


class HFCheckpoint:
    """Tensors under Hugging Face names: safetensors files in a folder, or a GGUF file."""

    def __init__(self, path: Path, raw: dict, generation_config: dict, tensors=None):
        self.path, self.raw, self.generation_config = path, raw, generation_config
        self._tensors = tensors  # None: the folder's safetensors files, opened on first use
        name = raw.get("dtype") or raw.get("torch_dtype")
        self.dtype = name if name in FLOAT_DTYPES else None
        self.load_dtype = "float32"

    @cached_property
    def tensors(self):
        """names(), shape(name), get(name) -> lazy tensor."""
        return self._tensors if self._tensors is not None else SafetensorsCheckpoint(self.path)

    def problems(self, arch, cfg, abstract) -> list[str]:
        return weights.problems(self.tensors, arch.weight_map(cfg), abstract, arch.ignored(cfg))

    def size(self, arch, cfg, abstract) -> int:
        return len({name for spec in arch.weight_map(cfg) for name in spec.hf_names})

    def read(self, arch, cfg, abstract, dtype, shardings=None, progress=None):
        return weights.load_params(self.tensors, arch.weight_map(cfg), abstract, dtype, shardings, progress)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer (transformers', for its tokenizer and chat template only), or None
    when it ships none. `path` is a folder or a .gguf file."""
    path = Path(path)
    if path.is_file():  # GGUF: built from the file's metadata
        return gguf.load_tokenizer(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer  # a heavy import, paid only where a tokenizer is loaded

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # the tokenizers library reports a bad file as a bare Exception
        raise CheckpointError(f"the tokenizer in {path} could not be loaded ({type(err).__name__}: {str(err)[:200]}): "
                              "fix or re-download its tokenizer files") from None
