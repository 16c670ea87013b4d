"""From Hugging Face tensors to our parameter tree: the name map a model declares, the few
transforms it may ask for, the check of a checkpoint against the map, and the streaming fill.

A model file says *what* goes where (a list of WeightSpec); this file does the I/O once for all.
Target shapes come from the model's abstract parameters, so a transform only needs to know how the
HF layout relates to ours: nn.Linear stores [out, in] and our Dense kernels [out..., in...] (the
same memory order, so a reshape), Conv1D and MoE experts need a transpose.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.errors import CheckpointError

_BLOCK_BYTES = 32 << 20  # Linear transposes in row blocks of about this size


def _rows(x, start, stop) -> np.ndarray:
    """Rows of a LazyTensor (read from disk) or of an in-memory array."""
    return x.read(start, stop) if hasattr(x, "read") else np.asarray(x[start:stop])


def _by_row_blocks(x, hf_shape: tuple[int, int], dtype, transpose: bool) -> np.ndarray:
    """A 2-D HF tensor (or its transpose) as one fresh array in `dtype`, read in row blocks of about
    _BLOCK_BYTES: the host holds the output plus one block, never the source in full besides it."""
    rows, cols = hf_shape
    out = np.empty((cols, rows) if transpose else (rows, cols), dtype)
    step = max(1, _BLOCK_BYTES // max(1, cols * np.dtype(dtype).itemsize))
    for start in range(0, rows, step):
        block = _rows(x, start, start + step)
        if transpose:
            out[:, start : start + step] = block.T
        else:
            out[start : start + step] = block
    return out


@dataclass(frozen=True)
class Copy:
    """Same layout; only the number of dims may differ: `flatten` reads a [H*D] bias into [H, D]."""

    flatten: bool = False

    def hf_shape(self, shape):
        return (math.prod(shape),) if self.flatten else tuple(shape)

    def __call__(self, x, shape, dtype) -> np.ndarray:
        return np.asarray(x).reshape(shape).astype(dtype, copy=False)

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


class _RowRange:
    """Rows [offset, offset + n) of a tensor, read lazily like the tensor itself."""

    def __init__(self, x, offset: int, n: int):
        self.x, self.offset, self.n = x, offset, n

    def read(self, start, stop):
        return _rows(self.x, self.offset + start, self.offset + min(stop, self.n))

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
class WeightSpec:
    hf_name: str | tuple[str, ...]  # e.g. "model.layers.3.self_attn.q_proj.weight"; a tuple for Stack
    path: tuple  # e.g. ("model", "layers", 3, "self_attn", "q_proj", "kernel")
    transform: Callable = Copy()

    @property
    def hf_names(self) -> tuple[str, ...]:
        return self.hf_name if isinstance(self.hf_name, tuple) else (self.hf_name,)

    def read(self, source):
        """What the transform takes: one (lazy) tensor, or a list of them."""
        if isinstance(self.hf_name, tuple):
            return [source.get(n) for n in self.hf_name]
        return source.get(self.hf_name)


def flat_params(state) -> dict[tuple, jax.Array | jax.ShapeDtypeStruct]:
    """{parameter path: leaf} of a parameter state, abstract or filled."""
    return {tuple(path): leaf for path, leaf in _flat_items(state)}


def _flat_items(state):
    pure = nnx.to_pure_dict(state)
    out = []

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, prefix + (key,))
        else:
            out.append((prefix, node))

    walk(pure, ())
    return out


def raise_problems(found: list[str], n_tensors: int) -> None:
    """Raise one CheckpointError listing every problem `problems` found (none: return)."""
    if found:
        shown = "; ".join(found[:12]) + (f"; and {len(found) - 12} more" if len(found) > 12 else "")
        raise CheckpointError(
            f"checkpoint does not match the {n_tensors}-tensor model layout ({len(found)} problems): {shown}"
        )


def problems(source, specs: Iterable[WeightSpec], abstract_state, ignore: Iterable[str] = ()) -> list[str]:
    """Every missing, unexpected and mis-shaped tensor of `source` against the weight map, one line each."""
    params = flat_params(abstract_state)
    specs = list(specs)
    found = []
    mapped = {s.path for s in specs}
    unmapped = sorted(set(params) - mapped)
    if unmapped:  # a model-file bug, not a checkpoint problem
        raise AssertionError(f"weight map leaves parameters unfilled: {unmapped[:5]}")
    names = set(source.names())
    expected = {n for s in specs for n in s.hf_names}
    reported = set()
    for s in specs:
        want = s.transform.hf_shape(params[s.path].shape)
        for name in s.hf_names:
            if name in reported:  # a fused tensor feeds several parameters; report it once
                continue
            reported.add(name)
            if name not in names:
                found.append(f"missing {name} (expected shape {list(want)})")
                continue
            got = tuple(source.shape(name))
            if got != want:
                found.append(f"{name} has shape {list(got)}, expected {list(want)}")
    patterns = [re.compile(p) for p in ignore]
    extra = sorted(n for n in names - expected if not any(p.match(n) for p in patterns))
    return found + [f"unexpected {n}" for n in extra]


def place(host: np.ndarray, sharding=None) -> jax.Array:
    """A host array on devices: the default device, or straight onto the shards of `sharding`
    (each process builds only its own devices' slices, so this works across hosts)."""
    if sharding is None:
        return jax.device_put(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_params(source, specs: Iterable[WeightSpec], abstract_state, dtype, shardings: dict | None = None, progress=None):
    """Fill the abstract state, one HF tensor at a time: read, transform, cast, place (onto
    shardings[path] when given). Host memory stays near one tensor at a time: each numpy array is
    dropped once placed."""
    params = flat_params(abstract_state)
    filled = {}
    for spec in specs:
        leaf = params[spec.path]
        host = spec.transform(spec.read(source), leaf.shape, jnp.dtype(dtype))
        filled[spec.path] = place(host, (shardings or {}).get(spec.path))
        del host
        if progress is not None:
            progress(spec.hf_names[-1])
    return unflatten_into(abstract_state, filled)


def export_tensors(specs: Iterable[WeightSpec], params: dict[tuple, np.ndarray | jax.Array]):
    """The inverse of load_params: yield (HF name, HF-layout numpy array) for every tensor of the
    weight map, built from our parameters {path: array} by each transform's `export`. A fused HF
    tensor (several specs writing parts of it) is yielded once, after its last part is written."""
    specs = list(specs)
    last_use = {}
    for i, spec in enumerate(specs):
        for name in spec.hf_names:
            last_use[name] = i
    pending: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        value = np.asarray(params[spec.path])
        hf_shape = spec.transform.hf_shape(value.shape)
        outs = [pending.setdefault(name, np.empty(hf_shape, value.dtype)) for name in spec.hf_names]
        spec.transform.export(value, outs if isinstance(spec.hf_name, tuple) else outs[0])
        del value
        for name in spec.hf_names:
            if last_use[name] == i:
                yield name, pending.pop(name)


def hf_layout(specs: Iterable[WeightSpec], shapes: dict[tuple, tuple]) -> dict[str, tuple]:
    """{HF name: HF shape} of every tensor the weight map reads, from our parameter shapes."""
    return {name: tuple(spec.transform.hf_shape(shapes[spec.path])) for spec in specs for name in spec.hf_names}


def unflatten_into(abstract_state, flat: dict[tuple, object]):
    """A copy of the state tree with each leaf at a path of `flat` replaced by flat[path]."""
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    state = jax.tree.map(lambda x: x, abstract_state)  # a copy we may fill in place
    nnx.replace_by_pure_dict(state, nested)
    return state
