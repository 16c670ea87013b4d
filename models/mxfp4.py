"""gpt-oss's MXFP4 checkpoints read as float tensors: the `*_blocks` / `*_scales` pairs of its experts
dequantized as the loader reads them (bit for bit as transformers' own function), through a tensor
source the checkpoint reader wraps (jaxllm/checkpoint.py, where config.json says quant_method mxfp4)."""

from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import numpy as np

from jaxllm.errors import CheckpointError
from jaxllm.models.transforms import read_rows
from jaxllm.models.weights import WeightSpec, dtype_of

# MXFP4 (the OCP microscaling format gpt-oss's checkpoints store their experts in): 32 values
# share a power-of-two scale, an e8m0 byte (2 ** (byte - 127)); each value is a 4-bit float e2m1,
# two to a byte, the low nibble first. The 16 e2m1 values by code:
FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def mxfp4_dequantize(blocks: np.ndarray, scales: np.ndarray, dtype) -> np.ndarray:
    """blocks [X, out, G, 16] uint8 and scales [X, out, G] uint8 (gpt-oss's `*_blocks`,
    `*_scales`) -> the weights [X, G * 32, out] ([X, in, out], as the float checkpoint stores
    them) in `dtype`: each value times its scale in float32 (exact: a power of two times an e2m1
    value, as transformers' ldexp), then rounded once to `dtype`. One expert at a time, its
    bytes transposed first (out last), so that the expanded values are written in place."""
    x, rows, groups, nbytes = blocks.shape
    out = np.empty((x, groups, nbytes, 2, rows), dtype)  # [X, in, out], in = (group, byte, nibble)
    for i in range(x):
        b = np.ascontiguousarray(np.asarray(blocks[i], np.uint8).transpose(1, 2, 0))  # [G, 16, out]
        shift = np.asarray(scales[i], np.int32).T - 127
        scale = np.ldexp(np.float32(1.0), shift).astype(np.float32)[:, None, :]  # 2 ** 128: inf, as transformers' pow
        with np.errstate(over="ignore", invalid="ignore"):
            out[i, :, :, 0] = FP4_E2M1[b & 0x0F] * scale
            out[i, :, :, 1] = FP4_E2M1[b >> 4] * scale
    return out.reshape(x, groups * nbytes * 2, rows)


class Mxfp4Tensor:
    """A float tensor [X, in, out] that the checkpoint stores as MXFP4 `blocks` and `scales`,
    dequantized (to bfloat16, which holds every such value exactly) as its rows are read.
    `columns(offset, step)`: the same tensor's every step-th out column from offset, for which
    only those columns' blocks are dequantized (`Strided` takes gate and up so)."""

    dtype = np.dtype(jnp.bfloat16)

    def __init__(self, blocks, scales, cols: tuple[int, int] = (0, 1)):
        self.blocks, self.scales, self.cols = blocks, scales, cols
        x, rows, groups, nbytes = blocks.shape
        self.shape = (x, groups * nbytes * 2, len(range(cols[0], rows, cols[1])))

    def columns(self, offset: int, step: int) -> "Mxfp4Tensor":
        return Mxfp4Tensor(self.blocks, self.scales, (self.cols[0] + offset * self.cols[1], self.cols[1] * step))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        pick = slice(self.cols[0], None, self.cols[1])
        return mxfp4_dequantize(read_rows(self.blocks, start, stop)[:, pick], read_rows(self.scales, start, stop)[:, pick], self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype)


class Mxfp4Names:
    """A tensor source whose MXFP4 pairs `NAME_blocks`, `NAME_scales` read as the float tensor
    NAME (`Mxfp4Tensor`), for each NAME the weight map reads that the source lacks (gpt-oss's
    experts.gate_up_proj and experts.down_proj); its other tensors as they are."""

    def __init__(self, source, names: list[str]):
        self.source, self.packed = source, {}
        for name in names:
            blocks, scales = (source.shape(name + s) for s in ("_blocks", "_scales"))
            if len(blocks) != 4 or tuple(blocks[:3]) != tuple(scales):
                raise CheckpointError(f"MXFP4 tensors {name}_blocks {list(blocks)} and {name}_scales {list(scales)} do not "
                                      "pair up (blocks [experts, out, groups, 16], scales [experts, out, groups]): "
                                      "download the checkpoint again")
            for suffix in ("_blocks", "_scales"):
                wrong = dtype_of(source, name + suffix)
                if wrong is not None and np.dtype(wrong) != np.uint8:
                    raise CheckpointError(f"MXFP4 tensor {name}{suffix} holds {np.dtype(wrong).name}, not uint8: "
                                          "download the checkpoint again")
            self.packed[name] = (name + "_blocks", name + "_scales")
        taken = {n for pair in self.packed.values() for n in pair}
        self._names = [n for n in source.names() if n not in taken] + list(self.packed)

    def names(self):
        return self._names

    def get(self, name):
        if name in self.packed:
            return Mxfp4Tensor(*(self.source.get(n) for n in self.packed[name]))
        return self.source.get(name)

    def shape(self, name):
        if name in self.packed:
            x, rows, groups, nbytes = self.source.shape(self.packed[name][0])
            return (x, groups * nbytes * 2, rows)
        return self.source.shape(name)

    def dtype(self, name):
        return Mxfp4Tensor.dtype if name in self.packed else dtype_of(self.source, name)


def mxfp4_names(source, specs: Iterable[WeightSpec]):
    """`source`, each tensor the weight map reads that it holds as an MXFP4 pair (NAME_blocks,
    NAME_scales) read as that float tensor, dequantized (a checkpoint whose config.json says
    quant_method mxfp4: gpt-oss's experts, as transformers dequantizes them without its kernels)."""
    names = set(source.names())
    packed = [n for s in specs for n in s.hf_names
              if n not in names and n + "_blocks" in names and n + "_scales" in names]
    return Mxfp4Names(source, packed) if packed else source
