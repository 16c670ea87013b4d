"""GGUF tensor bytes as numbers: the float32 values of a tensor of any GGML type jaxllm reads
(F32, F16, BF16 and the 32-value block types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 by numpy over all blocks
at once; anything else the `gguf` package can dequantize, such as the K-quants, by that package),
and the integer values and float16 scales of the Q8_0 / Q4_0 / Q4_1 blocks that quantized loads
take without a float detour (`blocks`, `NATIVE`). jaxllm/gguf.py reads the file and names the
tensors; this file only decodes their bytes."""

from __future__ import annotations

import functools
import math

import ml_dtypes
import numpy as np

from jaxllm.errors import CheckpointError
from jaxllm.models import quant

# GGML type id -> (name, values per block, bytes per block) of the types dequantized here; the
# 32-value block types as numpy record layouts: d * q (+ m), q = 4 bits (+ a fifth from qh) or int8,
# less 8 or 16 for the symmetric _0 types. Other types (the K-quants, ...) go through the gguf package.
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
          6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34)}
_BLOCKS = {
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", 16)]),
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)]),
    "Q5_0": np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q5_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "<u4"), ("qs", "u1", 16)]),
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", 32)]),
}
_OFFSET = {"Q4_0": 8, "Q5_0": 16}
_BITS = np.arange(32, dtype=np.uint32)
_CHUNK = 1 << 14  # blocks per step: the temporaries stay in cache


def _gguf_quants():
    try:
        from gguf import constants, quants
    except ImportError:
        raise CheckpointError("this GGUF file's quantization needs the gguf package: pip install 'jaxllm[gguf]'") from None
    return constants, quants


def tensor_bytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of a GGML type (rows are whole blocks)."""
    if type_id in TYPES:
        _, block, size = TYPES[type_id]
    else:
        constants, _ = _gguf_quants()
        try:
            block, size = constants.GGML_QUANT_SIZES[constants.GGMLQuantizationType(type_id)]
        except ValueError:
            raise CheckpointError(f"unknown GGML tensor type {type_id}: a newer gguf package may read it") from None
    if shape and shape[-1] % block:
        raise CheckpointError(f"a tensor of shape {list(shape)} cannot hold rows of {block}-value blocks (GGML type {type_id})")
    return math.prod(shape) // block * size


@functools.cache
def check_readable(type_id: int) -> None:
    """A CheckpointError for a GGML type that dequantize cannot read (gguf.quants has no
    dequantization for some: F64, the integer types, Q8_1, Q8_K), before any tensor is read."""
    if type_id in TYPES:
        return
    constants, quants = _gguf_quants()
    qtype = constants.GGMLQuantizationType(type_id)
    _, size = constants.GGML_QUANT_SIZES[qtype]
    try:
        quants.dequantize(np.zeros(size, np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError, KeyError):
        raise CheckpointError(f"its GGML type {qtype.name} is not one jaxllm reads: re-quantize the file to F16, Q8_0 or "
                              "a K-quant (e.g. Q4_K_M)") from None


def dequantize(raw: np.ndarray, type_id: int) -> np.ndarray:
    """The float32 values (1-D) of a tensor's bytes (uint8, 1-D) of a GGML type: F32, F16, BF16
    and the 32-value block types here, vectorised over all blocks; any other type through
    `gguf.quants.dequantize`. Bit-exact with gguf's (tests/test_startup.py)."""
    kind = TYPES.get(type_id, ("",))[0]
    if kind == "F32":
        return raw.view("<f4").astype(np.float32)
    if kind == "F16":
        return raw.view("<f2").astype(np.float32)
    if kind == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if kind not in _BLOCKS:
        constants, quants = _gguf_quants()
        return quants.dequantize(raw, constants.GGMLQuantizationType(type_id)).reshape(-1)
    blocks = raw.view(_BLOCKS[kind])
    out = np.empty((len(blocks), 32), np.float32)
    for start in range(0, len(blocks), _CHUNK):
        _dequantize_blocks(blocks[start : start + _CHUNK], kind, out[start : start + _CHUNK])
    return out.reshape(-1)


def _dequantize_blocks(blocks: np.ndarray, kind: str, out: np.ndarray) -> None:
    qs = blocks["qs"]
    if kind == "Q8_0":
        out[...] = qs
    else:
        out[:, :16], out[:, 16:] = qs & 0x0F, qs >> 4
    if "qh" in blocks.dtype.names:  # bit j of qh is bit 4 of value j
        out += ((blocks["qh"][:, None] >> _BITS) & 1) << 4
    if kind in _OFFSET:
        out -= _OFFSET[kind]
    out *= blocks["d"].astype(np.float32)[:, None]
    if "m" in blocks.dtype.names:
        out += blocks["m"].astype(np.float32)[:, None]


# GGML types taken as they are by quantized loads: int8 / int4 (uint4 + offset) groups of 32.
# Q4_1's d * q + m is stored as d * (q - 8) + (m + 8 d): int4 values, the offset in float32, where
# m + 8 d is exact, so the float32 result is the file's, rounded once.
NATIVE = {"Q8_0": quant.Scheme(8, 32, scale_dtype="float16"), "Q4_0": quant.Scheme(4, 32, scale_dtype="float16"),
          "Q4_1": quant.Scheme(4, 32, offset=True, scale_dtype="float16", offset_dtype="float32")}


def blocks(raw: np.ndarray, type_id: int, shape: tuple[int, ...]):
    """(values, scales, offsets or None) of a Q8_0 / Q4_0 / Q4_1 tensor of `shape` [rows, cols]:
    values [rows, cols] int8 (Q8_0) or int4 (Q4_0 and Q4_1, less 8), float16 scales [rows, cols / 32]
    and for Q4_1 float32 offsets m + 8 d; q * d (+ offset) in float32 gives the file's values."""
    kind = TYPES[type_id][0]
    b = raw.view(_BLOCKS[kind])
    rows, groups = math.prod(shape[:-1]), shape[-1] // 32
    scale = b["d"].reshape(rows, groups).astype(np.float16)
    offset = None
    if kind == "Q4_1":
        offset = b["m"].reshape(rows, groups).astype(np.float32) + 8 * scale.astype(np.float32)
    if kind == "Q8_0":
        return b["qs"].reshape(rows, shape[-1]), scale, offset
    qs = b["qs"]
    q = np.empty((len(b), 32), np.int8)
    q[:, :16], q[:, 16:] = qs & 0x0F, qs >> 4
    return (q - 8).astype(ml_dtypes.int4).reshape(rows, shape[-1]), scale, offset
