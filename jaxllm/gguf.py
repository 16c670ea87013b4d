"""GGUF files (llama.cpp): metadata into a config.json-shaped dict, tensors into HF names and layout.

The result is a tensor source like a safetensors checkpoint, so the usual weight map, checks and
streaming fill apply unchanged. Quantized tensors are dequantized to float32 one tensor at a time:
F16, BF16 and the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) by numpy over all blocks
at once, anything else the `gguf` package can dequantize (Q4_K, Q6_K, ...) by that package.
The header is parsed here too (milliseconds; the package's reader takes seconds over a
vocabulary's strings), once per file. The families (what each general.architecture means: tensor
names, values llama.cpp changed, metadata keys) are in jaxllm/gguf_families.py, tensor bytes are
decoded in jaxllm/gguf_blocks.py and the tokenizer is built and cached on disk in
jaxllm/gguf_tokenizer.py. A split model (llama.cpp's gguf-split: model-00001-of-00003.gguf ...) is
read from its first part as one model, its other parts found beside it (`read_parts`).

Quantized loads (`jaxllm.load(..., quantize=...)`) take Q8_0, Q4_0 and Q4_1 kernels without a
float detour (`GGUFCheckpoint.blocks`): int8 / int4 values in groups of 32 with the file's float16
scales (Q4_1's minimum folded into a float32 offset), so the model computes with exactly the
file's values (d * q, or d * q + m, in float32).
"""

from __future__ import annotations

import functools
import mmap
import os
import re
import struct
from pathlib import Path

import numpy as np

from jaxllm.errors import CheckpointError
from jaxllm.gguf_blocks import NATIVE, TYPES, blocks, check_readable, dequantize, tensor_bytes
from jaxllm.gguf_families import (
    ARCHITECTURES,
    Family,
    check_per_layer,
    check_required,
    decimal,
    family_of,
    hf_name,
    part_of,
    positive,
    whole,
)
from jaxllm.models import quant, registry

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9  # GGUF metadata value types
_MAX_DIMS, _MAX_NESTING = 4, 8  # a tensor's dimensions (GGML_MAX_DIMS); arrays within arrays


class Header:
    """A GGUF file's metadata ({key: value}) and tensor table, parsed straight from its bytes (the
    gguf package's reader takes seconds over a vocabulary's strings; this takes milliseconds).
    Every length and count is checked against the bytes left before anything is read or copied,
    so a damaged header costs no more memory than the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                self._buf, self._pos = buf, 0
                self._parse()
                del self._buf
        except (OSError, ValueError) as err:  # ValueError: also bad UTF-8 and an empty file
            raise CheckpointError(f"{path} is not a readable GGUF file ({type(err).__name__}: {str(err)[:150]}): "
                                  "download it again, or check the path") from None

    def _parse(self) -> None:
        magic, version = self._take("<4sI")
        if magic != b"GGUF" or version not in (2, 3):
            raise CheckpointError(f"{self.path}: {_unreadable_format(magic, version)}")
        n_tensors, n_fields = self._take("<QQ")
        # the least a tensor's entry (name length, dims count, type, offset) and a metadata entry (key length, type) take
        if n_tensors * 24 + n_fields * 12 > self._left():
            raise ValueError(f"the header counts {n_tensors} tensors and {n_fields} metadata entries, more than the "
                             f"file's {len(self._buf)} bytes can hold (truncated download?)")
        self.fields = {}
        for _ in range(n_fields):
            key = self._string()
            if key in self.fields:  # which value is meant is unknown (llama.cpp refuses the file too)
                raise ValueError(f"metadata key {key[:100]!r} appears twice")
            self.fields[key] = self._value(self._take("<I")[0], key[:100])
        self.tensors = []  # (name, dims innermost first, GGML type id, offset from the data start)
        names = set()
        for _ in range(n_tensors):
            name = self._string()
            if name in names:  # which tensor is the model's is unknown (gguf's reader and llama.cpp refuse the file too)
                raise ValueError(f"tensor {name[:100]!r} appears twice")
            names.add(name)
            (n_dims,) = self._take("<I")
            if n_dims > _MAX_DIMS:  # llama.cpp refuses these too (GGML_MAX_DIMS)
                raise ValueError(f"tensor {name[:100]!r} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}")
            dims = self._take(f"<{n_dims}Q")
            self.tensors.append((name, dims, *self._take("<IQ")))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment {align!r} is not a power of two")
        for name, _, _, offset in self.tensors:  # llama.cpp refuses these too: the table is damaged
            if offset % align:
                raise ValueError(f"tensor {name[:100]!r} starts at data offset {offset}, not a multiple of the file's "
                                 f"alignment ({align})")
        self.data_start = self._pos + (-self._pos % align)

    def _left(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if size > self._left():
            raise ValueError(f"the file ends at byte {len(self._buf)}, inside its header (truncated download?)")
        out = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return out

    def _bytes(self, n: int) -> bytes:
        if n > self._left():  # before slicing: a slice would copy the rest of the file first
            raise ValueError(f"a string of {n} bytes at byte {self._pos}, beyond the end of the file (byte {len(self._buf)})"
                             if n > len(self._buf) else
                             f"the file ends at byte {len(self._buf)}, inside its header (truncated download?)")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _string(self) -> str:
        return self._bytes(self._take("<Q")[0]).decode("utf-8")

    def _value(self, kind: int, key: str, depth: int = 0):
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            if kind not in _SCALARS:
                raise ValueError(f"metadata {key!r} has value type {kind}, which GGUF does not define")
            return self._take(_SCALARS[kind])[0]
        if depth == _MAX_NESTING:  # llama.cpp reads no arrays of arrays at all
            raise ValueError(f"metadata {key!r} nests arrays more than {_MAX_NESTING} deep")
        item, n = self._take("<IQ")
        least = struct.calcsize(_SCALARS[item]) if item in _SCALARS else {_STRING: 8, _ARRAY: 12}.get(item)
        if least is None:
            raise ValueError(f"metadata {key!r} has value type {item}, which GGUF does not define")
        if n * least > self._left():
            raise ValueError(f"metadata {key!r} is an array of {n} values, more than the {self._left()} bytes after it hold")
        if item in _SCALARS:  # numbers in one go
            dtype = np.dtype(_SCALARS[item])
            return np.frombuffer(self._bytes(n * dtype.itemsize), dtype).tolist()
        if item == _STRING:
            return self._strings(n)
        return [self._value(item, key, depth + 1) for _ in range(n)]

    def _strings(self, n: int) -> list[str]:
        """n strings in one tight loop (a vocabulary's tokens and merges: 100,000 of them)."""
        buf, pos, size, out = self._buf, self._pos, len(self._buf), []
        length = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise ValueError(f"the file ends at byte {size}, inside its header (truncated download?)")
            k = length(buf, pos)[0]
            pos += 8
            if pos + k > size:
                self._pos = pos
                return [self._bytes(k)]  # raises, naming the length
            out.append(buf[pos : pos + k].decode("utf-8"))
            pos += k
        self._pos = pos
        return out


# llama.cpp's formats before GGUF (magic as the file's first 4 bytes): its convert_llama_ggml_to_gguf.py converts them
_LEGACY = {b"lmgg": "GGML", b"fmgg": "GGMF", b"tjgg": "GGJT"}


def _unreadable_format(magic: bytes, version: int) -> str:
    """Why a file of this magic and version is not a GGUF file jaxllm reads (v2 / v3, little-endian), and the fix."""
    if magic in _LEGACY:
        return (f"a {_LEGACY[magic]} file (llama.cpp's format before GGUF), not GGUF: convert it with llama.cpp's "
                "convert_llama_ggml_to_gguf.py, or download a .gguf of the model")
    if magic != b"GGUF":
        return f"not a GGUF file (it starts with {magic!r}, not b'GGUF'): download it again, or check the path"
    if version in (2 << 24, 3 << 24):  # v2 / v3 written big-endian (for s390x): every number's bytes reversed
        return ("a big-endian GGUF file (written for s390x), which jaxllm does not read: convert it with the gguf "
                "package's gguf-convert-endian FILE little, or download the little-endian file")
    if version == 1:
        return ("GGUF version 1 (llama.cpp before August 2023), which jaxllm does not read: convert the model again with a "
                "current llama.cpp's convert_hf_to_gguf.py")
    return f"GGUF version {version}, which jaxllm does not read (it reads versions 2 and 3): check for a newer jaxllm"


@functools.lru_cache(maxsize=1)
def _header(path: Path, size: int, mtime_ns: int) -> Header:
    return Header(path)


def read_header(path: Path) -> Header:
    """The file's Header, parsed once while the file is unchanged (the model and its tokenizer share it)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from None
    return _header(Path(path).resolve(), st.st_size, st.st_mtime_ns)


_SPLIT_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)  # llama.cpp's split parts: model-00001-of-00003.gguf


def read_parts(path: Path) -> list[Header]:
    """The Headers of the model a .gguf file holds: its own, and where it is the first part of a
    split model (llama.cpp's gguf-split: split.count parts named like model-00001-of-00003.gguf,
    the metadata in the first, each part's tensors after its own header) each other part's, found
    beside it by llama.cpp's naming; a CheckpointError naming a part that is missing, of another
    model, or a file that is not the first part."""
    first = read_header(path)
    count, number = first.fields.get("split.count", 1), first.fields.get("split.no", 0)
    if not positive(count) or not whole(number) or number >= count:
        raise CheckpointError(f"{path}: GGUF split.no {str(number)[:30]} / split.count {str(count)[:30]} are not a part's number "
                              "and its model's part count: the file is damaged; download it again")
    if count == 1:
        return [first]
    m = _SPLIT_NAME.match(first.path.name)
    stem = m[1] if m else None
    if number:
        first_name = f"{stem}-00001-of-{count:05d}.gguf" if stem else "the part whose split.no is 0"
        raise CheckpointError(f"{path} is part {number + 1} of {count} of a split GGUF model: pass its first part, {first_name}")
    if not m or int(m[2]) != 1 or int(m[3]) != count:
        raise CheckpointError(f"{path} is the first of {count} parts of a split GGUF model, but its name is not llama.cpp's "
                              f"NAME-00001-of-{count:05d}.gguf, by which its other parts are found: rename the parts back")
    names = [first.path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(2, count + 1)]
    missing = [p.name for p in names if not p.is_file()]
    if missing:
        raise CheckpointError(f"{path} is the first of {count} parts of a split GGUF model, and {', '.join(missing[:3])}"
                              f"{', ...' if len(missing) > 3 else ''} {'is' if len(missing) == 1 else 'are'} missing beside it: "
                              "download every part into the same folder")
    parts = [first, *(Header(p) for p in names)]
    for i, part in enumerate(parts[1:], 1):
        if (part.fields.get("split.no"), part.fields.get("split.count")) != (i, count):
            raise CheckpointError(f"{part.path} is not part {i + 1} of {count} of {path.name}'s model (its split.no "
                                  f"{str(part.fields.get('split.no'))[:30]}, split.count {str(part.fields.get('split.count'))[:30]}): "
                                  "download the parts of one model again")
    total, stated = sum(len(part.tensors) for part in parts), first.fields.get("split.tensors.count", None)
    if stated is not None and stated != total:
        raise CheckpointError(f"{path}: the {count} parts of this split GGUF model hold {total} tensors, not the "
                              f"{str(stated)[:30]} its split.tensors.count says: a part is of another model or damaged; "
                              "download the parts again")
    return parts


def config_from_metadata(header: Header, parts: list[Header] | None = None) -> dict:
    """The config.json-shaped dict of a file's metadata (and its tensors': a split model's `parts`)."""
    fields = header.fields
    all_tensors = [t for part in parts or [header] for t in part.tensors]
    arch, prefix = family_of(fields)
    family = ARCHITECTURES[arch]

    def get(key, default=None):
        return fields.get(f"{prefix}.{key}", default)

    def layer_wise(key, default=None):
        """A key llama.cpp may write one a layer (head counts, MLP width): one value where every layer's is the same."""
        value = get(key, default)
        return value[0] if isinstance(value, list) and value and all(v == value[0] for v in value) else value

    heads = layer_wise("attention.head_count")
    tensor_names = {t[0] for t in all_tensors}
    embedding = next((dims for name, dims, _, _ in all_tensors if name == "token_embd.weight"), None)
    tokens = fields.get("tokenizer.ggml.tokens", [])
    if not isinstance(tokens, list):
        raise CheckpointError(f"GGUF tokenizer.ggml.tokens is {type(tokens).__name__}, not a list of tokens: the file is "
                              "damaged; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    vocab = (get("vocab_size") or len(tokens)
             or (int(embedding[1]) if embedding is not None and len(embedding) == 2 else None))  # its rows (dims innermost first)
    raw = {
        "architectures": [family.hf],
        "model_type": registry.get(family.hf).hf_model_type,  # config.json written back needs it
        "vocab_size": vocab,
        "hidden_size": get("embedding_length"),
        "intermediate_size": layer_wise("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": layer_wise("attention.head_count_kv", heads),
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": decimal(get("attention.layer_norm_rms_epsilon", 1e-6)),  # float32 in the file: its shortest
        "rope_theta": decimal(get("rope.freq_base", 10000.0)),  # decimal (1e-05, not 9.999999747378752e-06)
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
        "attention_bias": "blk.0.attn_output.bias" in tensor_names,
        "sliding_window": None,  # llama.cpp attends over the whole context: no family default window (Mistral's 4,096)
    }
    key_length = get("attention.key_length")
    if key_length:
        raw["head_dim"] = key_length
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        raw["rope_scaling"] = {"rope_type": scaling, "factor": decimal(get("rope.scaling.factor", 1.0))}
        if get("rope.scaling.original_context_length"):
            raw["rope_scaling"]["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    check_required(get, prefix)
    family.config(get, raw)
    check_per_layer(raw, prefix)
    family.tensors(tensor_names, raw)
    return raw



def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, pair, half) -> (head, half, pair)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _per_head(w: np.ndarray, heads: int) -> np.ndarray:
    """Fused q | k | v rows (or a bias) as HF keeps them per head: rows (3, head, dim) -> (head, 3, dim)."""
    return w.reshape(3, heads, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


class GGUFCheckpoint:
    """Tensors of a GGUF file under their HF names, in HF layout, dequantized on demand."""

    def __init__(self, header: Header, raw: dict, family: Family = Family(""), parts: list[Header] | None = None):
        """`parts`: a split model's Headers (read_parts), the first `header`; else `header` alone."""
        self.tensors = {}  # HF name -> (shape in the file's order, GGML type id, raw bytes)
        self.shifted, self.transposed = {}, set()  # HF names whose values llama.cpp changed: {name: shift}, [out, in]
        self.values = {}  # HF names whose values llama.cpp changed otherwise: {name: HF's values of the file's}
        self.reordered = {}  # HF names whose rows or columns llama.cpp reordered: {name: (axis, HF's order)}
        self.per_head = set()  # HF names of fused q | k | v rows (and biases) HF keeps per head
        for part in parts or [header]:
            self._add_part(part, raw, family)
        self.heads = {"q_proj": raw["num_attention_heads"], "k_proj": raw["num_key_value_heads"]} if family.permuted else {}
        self.qkv_heads = raw["num_attention_heads"] if family.per_head_qkv else None

    def _add_part(self, header: Header, raw: dict, family: Family) -> None:
        """The tensors of one file (a split model's part) under their HF names."""
        with open(header.path, "rb") as f:
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        spans, earlier = [], set(self.tensors)  # (start, end, GGUF name) of each tensor's bytes; earlier parts' tensors
        for name, dims, type_id, offset in header.tensors:
            start = header.data_start + offset
            shape = tuple(int(d) for d in reversed(dims))  # GGUF lists dims innermost first
            layer, part, kind = part_of(name)
            if kind == "weight" and 0 < len(shape) < family.squeezed.get(part, 0):
                shape = (*shape[:-1], 1, shape[-1])  # HF's [1, in] or [channels, 1, taps]: the same bytes
            try:
                nbytes = tensor_bytes(type_id, shape)
                check_readable(type_id)
            except CheckpointError as err:
                raise CheckpointError(f"{header.path}: tensor {name}: {err}") from None
            if start + nbytes > len(data):
                raise CheckpointError(f"{header.path} ends before tensor {name} (truncated download?): re-download it")
            spans.append((offset, offset + nbytes, name))
            hf = hf_name(name, family) or name
            if family.mtp and layer is not None and layer >= raw["num_hidden_layers"]:
                hf = f"mtp.{name}"  # the multi-token-prediction block, which the architecture drops (as transformers does)
            if "{}" in hf and (len(shape) != 3 or not shape[0]):
                raise CheckpointError(f"{header.path}: tensor {name} has shape {list(shape)}: an expert stack is [experts, rows, "
                                      "columns] of at least one expert; the file is damaged: re-convert it with llama.cpp's "
                                      "convert_hf_to_gguf.py")
            if hf.format(0) in earlier:  # twice within a file Header refuses; across a split model's parts, here
                raise CheckpointError(f"{header.path}: tensor {name} is in an earlier part of this split GGUF model too: "
                                      "a part is of another model; download the parts again")
            self.tensors.update(_split_experts(hf, shape, type_id, data[start : start + nbytes]))
            if family.norm_shift and name.endswith("norm.weight") and part not in family.unshifted:  # every norm, as transformers does
                self.shifted[hf] = family.norm_shift
            if kind == "weight" and part in family.transposed:
                self.transposed.add(hf)
            if part in family.per_head_qkv:
                self.per_head.add(hf)
            if part in family.values:
                self.values[hf] = family.values[part]
            order = family.reordered[part](raw) if part in family.reordered else None  # None: shapes the config's checks refuse
            if order is not None:
                self.reordered[hf] = order
        _check_disjoint(spans, header.path)

    def names(self):
        return self.tensors.keys()

    def shape(self, name):
        shape = self.tensors[name][0]
        return shape[::-1] if name in self.transposed else shape

    def get(self, name) -> np.ndarray:
        """The tensor in HF layout and values, float32: rows unpermuted, a norm's shift taken off (in
        float32, as transformers does), a family's other changed values undone (Mamba's A), a Conv1D
        weight transposed back."""
        shape, type_id, raw = self.tensors[name]
        data = self._unpermuted(name, dequantize(raw, type_id).reshape(shape))
        if name in self.shifted:
            data = data - np.float32(self.shifted[name])
        if name in self.values:
            data = self.values[name](data).astype(np.float32)
        return np.ascontiguousarray(data.T) if name in self.transposed else data

    def _unpermuted(self, name: str, data: np.ndarray) -> np.ndarray:
        if name in self.reordered:
            axis, order = self.reordered[name]
            return np.take(data, order, axis=axis)
        if name in self.per_head:
            return _per_head(data, self.qkv_heads)
        proj = name.split(".")[-2] if name.endswith(".weight") or name.endswith(".bias") else ""
        return _unpermute(data, self.heads[proj]) if proj in self.heads else data

    def type_name(self, name) -> str:
        type_id = self.tensors[name][1]
        return TYPES[type_id][0] if type_id in TYPES else str(type_id)

    def block_scheme(self, name) -> quant.Scheme | None:
        """The quant.Scheme a 2-D tensor's blocks load as natively, or None (absent, other type,
        values llama.cpp changed beyond a row order). The blocks run along the stored rows, [out,
        in] (for a `transposed` tensor the reverse of HF's layout)."""
        if name not in self.tensors or len(self.tensors[name][0]) != 2 or name in self.shifted or name in self.values:
            return None
        if self.reordered.get(name, (0,))[0] != 0:  # columns reordered: across the blocks
            return None
        return NATIVE.get(self.type_name(name))

    def blocks(self, name):
        """(values, scales, offsets or None) of a Q8_0 / Q4_0 / Q4_1 tensor as stored, [out, in]
        (`blocks`), rows unpermuted as `get` does."""
        shape, type_id, raw = self.tensors[name]
        return tuple(None if a is None else self._unpermuted(name, a) for a in blocks(raw, type_id, shape))


def _check_disjoint(spans: list[tuple[int, int, str]], path: Path) -> None:
    """A CheckpointError where two tensors' bytes overlap (one tensor's values read as another's:
    a damaged tensor table; llama.cpp refuses such files too)."""
    spans = sorted(s for s in spans if s[1] > s[0])  # a tensor of no values takes no bytes
    for (start, end, name), (next_start, next_end, next_name) in zip(spans, spans[1:]):
        if next_start < end:
            raise CheckpointError(f"{path}: tensors {name} and {next_name} share bytes (data offsets {start}-{end} and "
                                  f"{next_start}-{next_end}): the file is damaged; download it again or re-convert it")


def _split_experts(name: str, shape: tuple, type_id: int, raw: np.ndarray) -> dict:
    """{HF name: (shape, type, bytes)} of a tensor: an expert stack ("{}" in its name) as HF's
    one tensor per expert (each a run of the stack's bytes), anything else as it is."""
    if "{}" not in name:
        return {name: (shape, type_id, raw)}
    n = len(raw) // shape[0]
    return {name.format(j): (shape[1:], type_id, raw[j * n : (j + 1) * n]) for j in range(shape[0])}


def open_checkpoint(path: Path):
    """(tensors under HF names, config.json-shaped dict) of a .gguf file."""
    parts = read_parts(path)
    header = parts[0]
    raw = config_from_metadata(header, parts)
    tensors = GGUFCheckpoint(header, raw, ARCHITECTURES[family_of(header.fields)[0]], parts)
    if "rope_freqs.weight" in tensors.tensors:
        _rope_freqs(tensors, raw, header.path)
    if {"rope_factors_long.weight", "rope_factors_short.weight"} & tensors.tensors.keys():
        _longrope(tensors, raw, header)
    return tensors, raw


def _rope_freqs(tensors: GGUFCheckpoint, raw: dict, path: Path) -> None:
    """llama.cpp stores Llama 3.1's rope scaling (and any fixed per-frequency scaling) as a tensor,
    rope_freqs.weight [head_dim / 2], by which it divides each rotary frequency; no metadata key
    says so. That is LongRoPE with equal short and long factors and no attention scaling, which
    is how it is read here (transformers' GGUF loader drops the tensor and the scaling with it)."""
    values = _factors(tensors, "rope_freqs.weight", raw, path)
    raw["rope_scaling"] = {"rope_type": "longrope", "short_factor": values, "long_factor": values, "factor": 1.0,
                           "attention_factor": 1.0, "original_max_position_embeddings": raw["max_position_embeddings"]}


def _longrope(tensors: GGUFCheckpoint, raw: dict, header: Header) -> None:
    """Phi-3's LongRoPE (the 128k Phi-3s, Phi-3.5, Phi-4-mini): llama.cpp keeps its factors as tensors,
    rope_factors_long / _short.weight, and the original context and attention factor as metadata:
    config.json's longrope again (transformers' GGUF loader drops them all for plain rope, so its
    logits differ at every position). Long or short factors go by the sequence's length, as in
    transformers (llama.cpp picks them once, by its context size)."""
    prefix = header.fields["general.architecture"]
    long, short = (_factors(tensors, f"rope_factors_{kind}.weight", raw, header.path) for kind in ("long", "short"))
    original = header.fields.get(f"{prefix}.rope.scaling.original_context_length")
    if not original:
        raise CheckpointError(f"GGUF metadata lacks {prefix}.rope.scaling.original_context_length (the file has rope "
                              "factors): the file is incomplete; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    raw["rope_scaling"] = {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                           "original_max_position_embeddings": original}
    raw["original_max_position_embeddings"] = original  # where Phi3Config reads it (a config.json written back)
    attention = header.fields.get(f"{prefix}.rope.scaling.attn_factor")
    if attention is not None:  # else transformers' own, from the two contexts (the converter's formula too)
        raw["rope_scaling"]["attention_factor"] = decimal(attention)


def _factors(tensors: GGUFCheckpoint, name: str, raw: dict, path: Path) -> list[float]:
    """The values of a rope factor tensor, taken out of the tensors (no parameter takes it)."""
    if name not in tensors.tensors:
        raise CheckpointError(f"{path} lacks {name} (it has the other rope factors): the file is incomplete; "
                              "re-convert it with llama.cpp's convert_hf_to_gguf.py")
    shape, type_id, data = tensors.tensors.pop(name)
    factors = dequantize(data, type_id)
    if raw.get("rope_scaling") or len(shape) != 1 or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise CheckpointError(f"{path}: {name} {list(shape)} comes with rope scaling metadata or holds "
                              "non-positive factors: the file is damaged or written by an unknown converter")
    return [float(f) for f in factors]
