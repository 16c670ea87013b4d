"""How a Hugging Face tensor becomes one of our parameters: the transforms a weight map (a list of
models/weights.py WeightSpec) names. Each knows how the HF layout relates to ours: nn.Linear stores
[out, in] and our Dense kernels [out..., in...] (the same memory order, so a reshape), Conv1D and MoE
experts need a transpose, fused tensors feed several parameters through a part of them. Three
methods each: `hf_shape(our_shape)`, `__call__(hf_tensor, our_shape, dtype)` (HF into ours) and
`export(our_value, out)`, its inverse, writing into the HF-shaped array `out`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

BLOCK_BYTES = 32 << 20  # casts and transposes go in row blocks of about this size


def read_rows(x, start, stop) -> np.ndarray:
    """Rows of a LazyTensor (read from disk) or of an in-memory array."""
    return x.read(start, stop) if hasattr(x, "read") else np.asarray(x[start:stop])


def read_whole(x) -> np.ndarray:
    return x.read() if hasattr(x, "read") else np.asarray(x)


def _convert(x, hf_shape: tuple, dtype, transpose: bool = False) -> np.ndarray:
    """An HF tensor (2-D when transposed) in `dtype`. Same dtype, not transposed: the tensor itself
    (from a file, a read-only view of its memory map: no copy). Otherwise one fresh array, read in
    row blocks of about BLOCK_BYTES: the host holds the output plus one block, never the source in
    full besides it."""
    dtype = np.dtype(dtype)
    if not transpose and np.dtype(x.dtype) == dtype:
        return read_whole(x).reshape(hf_shape)
    if not hf_shape:
        return np.asarray(read_whole(x), dtype).reshape(())
    rows = hf_shape[0]
    out = np.empty(hf_shape[::-1] if transpose else hf_shape, dtype)
    row_bytes = max(np.dtype(x.dtype).itemsize, dtype.itemsize) * math.prod(hf_shape[1:])
    step = max(1, BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, rows, step):
        block = read_rows(x, start, start + step)
        if transpose:
            out[:, start : start + step] = block.T
        else:
            out[start : start + step] = block
    return out


def _by_row_blocks(x, hf_shape: tuple[int, int], dtype, transpose: bool) -> np.ndarray:
    """A 2-D HF tensor (or its transpose) in `dtype` (see _convert)."""
    return _convert(x, hf_shape, dtype, transpose)


@dataclass(frozen=True)
class Copy:
    """Same layout; only the number of dims may differ: `flatten` reads a [H*D] bias into [H, D],
    `lead` dims of size 1 before ours are dropped (ERNIE's [1, X] e_score_correction_bias into [X])."""

    flatten: bool = False
    lead: int = 0

    def hf_shape(self, shape):
        return (1,) * self.lead + ((math.prod(shape),) if self.flatten else tuple(shape))

    def __call__(self, x, shape, dtype) -> np.ndarray:
        return _convert(x, tuple(x.shape), dtype).reshape(shape)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        out[...] = value.reshape(out.shape)


@dataclass(frozen=True)
class Linear:
    """nn.Linear weight [out, in] into a Dense kernel [out..., in...] whose last `n_in` dims are its
    inputs: the same memory order as HF's, so only a reshape (see Dense for why that layout)."""

    n_in: int = 1

    def hf_shape(self, shape):
        return (math.prod(shape[: -self.n_in]), math.prod(shape[-self.n_in :]))

    def __call__(self, x, shape, dtype) -> np.ndarray:
        return _by_row_blocks(x, self.hf_shape(shape), dtype, transpose=False).reshape(shape)

    export = Copy.export


@dataclass(frozen=True)
class Transpose:
    """A 2-D HF tensor whose two dims are ours split after `lead` dims, swapped: nn.Linear
    [out, in] into an [in..., out...] kernel (MoE experts, lead = number of input dims), or
    Conv1D [in, out] into a Dense kernel [out..., in...] (GPT-2, lead = number of output dims)."""

    lead: int = 1

    def hf_shape(self, shape):
        return (math.prod(shape[self.lead :]), math.prod(shape[: self.lead]))

    def __call__(self, x, shape, dtype) -> np.ndarray:
        return _by_row_blocks(x, self.hf_shape(shape), dtype, transpose=True).reshape(shape)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        out[...] = value.reshape(out.shape[::-1]).T


@dataclass(frozen=True)
class Scaled:
    """`inner`'s tensor times `factor`, a power of two (exact in every float dtype): RWKV's output weights divided by
    2^(layer // rescale_every) for inference, as transformers divides them in place on its first eval forward;
    export divides back."""

    inner: object
    factor: float

    def hf_shape(self, shape):
        return self.inner.hf_shape(shape)

    def __call__(self, x, shape, dtype) -> np.ndarray:
        out = self.inner(x, shape, dtype)
        return out if self.factor == 1 else (np.asarray(out, np.float32) * np.float32(self.factor)).astype(out.dtype)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        self.inner.export(value if self.factor == 1 else (np.asarray(value, np.float32) / np.float32(self.factor)).astype(value.dtype), out)


class _RowRange:
    """Rows [offset, offset + n) of a tensor, read lazily like the tensor itself."""

    def __init__(self, x, offset: int, n: int):
        self.x, self.offset, self.n = x, offset, n
        self.dtype, self.shape = x.dtype, (n,) + tuple(x.shape[1:])

    def read(self, start=0, stop=None):
        stop = self.n if stop is None else min(stop, self.n)
        return read_rows(self.x, self.offset + start, self.offset + stop)

    def __array__(self, dtype=None, copy=None):
        out = self.read(0, self.n)
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class Part:
    """A slice [offset, offset + size) along `axis` of a fused HF tensor (`total` long on that axis),
    then `inner`: Phi-3's qkv_proj and gate_up_proj (rows), GPT-2's c_attn (columns)."""

    offset: int
    total: int
    inner: Callable = Copy()
    axis: int = 0

    def hf_shape(self, shape):
        part = list(self.inner.hf_shape(shape))
        part[self.axis] = self.total
        return tuple(part)

    def __call__(self, x, shape, dtype) -> np.ndarray:
        size = self.inner.hf_shape(shape)[self.axis]
        if self.axis == 0:
            return self.inner(_RowRange(x, self.offset, size), shape, dtype)
        return self.inner(np.asarray(x)[:, self.offset : self.offset + size], shape, dtype)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        index = [slice(None)] * out.ndim
        index[self.axis] = slice(self.offset, self.offset + self.inner.hf_shape(value.shape)[self.axis])
        self.inner.export(value, out[tuple(index)])  # a view: the part is written in place


@dataclass(frozen=True)
class Stack:
    """Several HF tensors (one per expert) stacked on a new leading axis, each through `inner`."""

    inner: Callable = Copy()

    def hf_shape(self, shape):
        return self.inner.hf_shape(shape[1:])

    def __call__(self, xs, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        for i, x in enumerate(xs):
            out[i] = self.inner(x, shape[1:], dtype)
        return out

    def export(self, value: np.ndarray, outs: list) -> None:
        for i, out in enumerate(outs):
            self.inner.export(value[i], out)


@dataclass(frozen=True)
class Stacked:
    """One HF tensor holding every expert's on its leading axis ([X, ...]: GraniteMoE's fused
    input_linear [X, 2F, E]), each expert's slice through `inner` (read one expert at a time).
    `flat`: the experts' tensors one after another along the first axis instead ([X * F, E]: DBRX's
    w1, v1, w2)."""

    inner: Callable = Copy()
    flat: bool = False

    def hf_shape(self, shape):
        one = tuple(self.inner.hf_shape(shape[1:]))
        return (shape[0] * one[0],) + one[1:] if self.flat else (shape[0],) + one

    def _expert(self, x, i: int, shape):
        """Expert i's part of `x` (an array or a lazy tensor)."""
        if not self.flat:
            return x[i]
        n = self.inner.hf_shape(shape[1:])[0]
        return x[i * n : (i + 1) * n]

    def __call__(self, x, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        n = self.inner.hf_shape(shape[1:])[0] if self.flat else 1
        for i in range(shape[0]):
            rows = read_rows(x, i * n, (i + 1) * n)
            out[i] = self.inner(rows if self.flat else rows[0], shape[1:], dtype)
        return out

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        for i in range(value.shape[0]):
            self.inner.export(value[i], self._expert(out, i, value.shape))  # a view of the stacked tensor


@dataclass(frozen=True)
class Strided:
    """Every `step`-th entry of the HF tensor's last axis from `offset`: one of several parameters
    interleaved column by column in a fused tensor (gpt-oss's experts.gate_up_proj [X, E, 2F]: gate
    in the even columns, up in the odd), read by blocks of its leading dim."""

    offset: int
    step: int

    def hf_shape(self, shape):
        return tuple(shape[:-1]) + (shape[-1] * self.step,)

    def __call__(self, x, shape, dtype) -> np.ndarray:
        if hasattr(x, "columns"):  # a tensor that reads only those columns (MXFP4: dequantizes only those)
            return Copy()(x.columns(self.offset, self.step), shape, dtype)
        out = np.empty(shape, dtype)
        row_bytes = max(np.dtype(x.dtype).itemsize, np.dtype(dtype).itemsize) * math.prod(self.hf_shape(shape)[1:])
        step = max(1, BLOCK_BYTES // max(1, row_bytes))
        for start in range(0, shape[0], step):
            out[start : start + step] = read_rows(x, start, start + step)[..., self.offset :: self.step]
        return out

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        out[..., self.offset :: self.step] = value


@dataclass(frozen=True)
class Regrouped:
    """Rows of a fused HF tensor of `blocks` equal blocks, each the pieces of `sizes` rows one after
    the other: ours is the pieces `take` of every block, piece by piece (piece i of block 0, of
    block 1, ..., then the next piece), through `inner` (Qwen3-Next's q_proj: per head the query,
    then its gate; in_proj_qkvz: per key head q, k, v, z; in_proj_ba: per key head b, a)."""

    blocks: int
    sizes: tuple[int, ...]
    take: tuple[int, ...]
    inner: Callable = Linear()

    def hf_shape(self, shape):
        rows, *rest = self.inner.hf_shape(shape)
        return (self.blocks * sum(self.sizes), *rest)

    def _pieces(self, x):
        """Views of x [blocks * sum(sizes), ...] as each taken piece [blocks, size, ...]."""
        x = x.reshape(self.blocks, sum(self.sizes), *x.shape[1:])
        starts = np.cumsum((0,) + tuple(self.sizes))
        return [x[:, starts[i] : starts[i] + self.sizes[i]] for i in self.take]

    def __call__(self, x, shape, dtype) -> np.ndarray:
        pieces = self._pieces(np.asarray(read_whole(x)))
        return self.inner(np.concatenate([p.reshape(-1, *p.shape[2:]) for p in pieces]), shape, dtype)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        ours = np.empty(self.inner.hf_shape(value.shape), out.dtype)
        self.inner.export(value, ours)
        start = 0
        for view in self._pieces(out):  # views of `out`
            n = view.shape[0] * view.shape[1]
            view[...] = ours[start : start + n].reshape(view.shape)
            start += n


@dataclass(frozen=True)
class ByHead:
    """Rows of an HF tensor made of pieces of `sizes` rows per head, for `heads` heads, regrouped head
    by head: ours holds each head's rows of the `take` pieces in turn, then the next head's, so a split
    of our rows over devices gives each its heads' rows of every piece (gated DeltaNet's q | k | v
    channels, models/linear_attention.py); ours has the rows on its first dim, or on its first two
    (`lead` 2: [heads, rows of a head, ...]). The HF rows come head by head (`interleaved`: each head's
    pieces together, Qwen3-Next's in_proj_qkvz) or piece by piece (each piece's heads together:
    Qwen3.5's in_proj_qkv, and both models' conv1d). The dims after the rows are the same in both."""

    heads: int
    sizes: tuple[int, ...]
    take: tuple[int, ...]
    interleaved: bool = False
    lead: int = 1

    def hf_shape(self, shape):
        return (self.heads * sum(self.sizes), *shape[self.lead :])

    def _pieces(self, x):
        """Views of the HF-shaped x as each taken piece [heads, size, ...]."""
        starts = np.cumsum((0,) + tuple(self.sizes))
        if self.interleaved:
            x = x.reshape(self.heads, sum(self.sizes), *x.shape[1:])
            return [x[:, starts[i] : starts[i + 1]] for i in self.take]
        return [x[self.heads * starts[i] : self.heads * starts[i + 1]].reshape(self.heads, self.sizes[i], *x.shape[1:])
                for i in self.take]

    def __call__(self, x, shape, dtype) -> np.ndarray:
        return np.concatenate(self._pieces(np.asarray(read_whole(x))), axis=1).astype(dtype, copy=False).reshape(shape)

    def export(self, value: np.ndarray, out: np.ndarray) -> None:
        value, start = value.reshape(self.heads, -1, *out.shape[1:]), 0
        for view in self._pieces(out):  # views of `out`
            view[...] = value[:, start : start + view.shape[1]]
            start += view.shape[1]


@dataclass(frozen=True)
class Concatenated:
    """Several HF tensors (a tuple hf_name) joined along their first dim, then `inner`: transformers'
    Concatenate(dim=0) on load (OLMo Hybrid's q_conv1d, k_conv1d, v_conv1d into its conv1d). Read
    whatever rows each holds (the sum must be the whole's); written as transformers saves them,
    torch.chunk's parts of ceil(rows / parts) rows (`hf_shapes`)."""

    parts: int
    inner: Callable = Copy()

    def hf_shape(self, shape):
        """The joined tensor's shape."""
        return self.inner.hf_shape(shape)

    def hf_shapes(self, shape) -> list[tuple]:
        """Each tensor's shape as written."""
        rows, *rest = self.hf_shape(shape)
        size = -(-rows // self.parts)
        return [(min(size, rows - i * size), *rest) for i in range(self.parts)]

    def __call__(self, xs, shape, dtype) -> np.ndarray:
        return self.inner(np.concatenate([np.asarray(read_whole(x)) for x in xs]), shape, dtype)

    def export(self, value: np.ndarray, outs: list) -> None:
        whole = np.empty(self.hf_shape(value.shape), outs[0].dtype)
        self.inner.export(value, whole)
        for out, part in zip(outs, np.split(whole, np.cumsum([o.shape[0] for o in outs])[:-1])):
            out[...] = part


@dataclass(frozen=True)
class FusedQKV:
    """One of q, k, v (`part` 0, 1, 2) out of one fused [K * (G + 2) * head_dim, ...] tensor: for each
    of the K kv heads, its G = `group` query heads, then its key, then its value. G = 1 is GPT-NeoX's
    (and Falcon's, GPTBigCode's without multi-query) per-head [heads, 3, head_dim]; K = 1 the
    multi-query q | k | v rows (Falcon-7B, StarCoder); else Falcon's new decoder's grouped layout."""

    part: int
    group: int = 1

    def _grouped(self, shape) -> tuple:
        """Our q ([H, D, ...]) or k / v ([K, D, ...]) shape as the fused tensor's [K, G + 2, D, ...]."""
        kv = shape[0] // self.group if self.part == 0 else shape[0]
        return (kv, self.group + 2) + tuple(shape[1:])

    def _index(self):
        return slice(0, self.group) if self.part == 0 else self.group + self.part - 1

    def hf_shape(self, shape):
        kv, per, d, *rest = self._grouped(shape)
        return (kv * per * d, *rest)

    def __call__(self, x, shape, dtype):
        return np.asarray(x).reshape(self._grouped(shape))[:, self._index()].reshape(shape).astype(dtype)

    def export(self, value, out):
        view = out.reshape(self._grouped(value.shape))[:, self._index()]  # a view of `out`
        view[...] = value.reshape(view.shape)


@dataclass(frozen=True)
class Blocks:
    """Piece `part` of each of `blocks` equal blocks of rows, each block `parts` equal pieces, then `inner`
    (2-D reads, Linear()): one of several parameters fused block by block (CodeGen's qkv_proj, [4 blocks
    of q | v | k] for its mp_num = 4), ours the blocks' pieces in order."""

    part: int
    parts: int
    blocks: int
    inner: Callable = Linear()

    def _pieces(self, shape):
        rows, *rest = self.inner.hf_shape(shape)
        return (self.blocks, self.parts, rows // self.blocks, *rest)

    def hf_shape(self, shape):
        rows, *rest = self.inner.hf_shape(shape)
        return (rows * self.parts, *rest)

    def __call__(self, x, shape, dtype):
        piece = np.asarray(x).reshape(self._pieces(shape))[:, self.part]
        return self.inner(piece.reshape(self.inner.hf_shape(shape)), shape, dtype)

    def export(self, value, out):
        self.inner.export(value, out.reshape(self._pieces(value.shape))[:, self.part])  # a view of `out`
