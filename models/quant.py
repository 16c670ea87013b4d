"""Weight quantization: what a quantized parameter looks like and how a float tensor becomes one.

A quantized kernel keeps its float kernel's shape and logical axes, in a signed integer dtype (int8
or int4; XLA packs int4 two to a byte), beside a `scale` (and for asymmetric schemes an `offset`)
per group of `g` consecutive input values:

    Dense kernel [out..., in...]       scale, offset [out..., G]     G = prod(in) / g
    MoE experts  [X, in, out]          {name}_scale, {name}_offset [X, G, out]
    token embedding [vocab, embed]     embedding_scale, embedding_offset [vocab, G]  (groups along embed)

    w = q * scale (+ offset), per group; one scale per output channel is G = 1.

The scale's output dims carry the kernel's logical axes and its group dim "<first input axis>_groups"
(None when G = 1), so a mesh splits the scales with the channels they scale. Layers dequantize in their `__call__`
(`dequantize`: convert, multiply, reshape back) and then run their usual product, except where
`product` has a faster form for the rows at hand (GPUs: decode's few rows).

The loader's seam (weights.load_params): for each parameter path it asks `float_target` what float
array the weight map's transform should build, then `pieces` what to place: the array itself for a
float parameter; for a quantized kernel its integer values and its scales (sibling leaves),
quantized here on the host in numpy, one tensor at a time. Everything `pieces` needs is in the
abstract parameters (dtypes and the scale's shape), so a checkpoint source needs no quantization
knowledge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models import quant_kernels

MODES = ("int8", "int4")  # what `quantize=` takes, besides "gguf" (a GGUF file's own blocks; jaxllm.loader)
DEFAULT_GROUP = 32  # int4 input values per scale: measured on SmolLM2-135M (docs/benchmarks.md, Quantization)
INT8_GROUP = 128  # int8 input values per scale: likewise (one per output channel costs more, see `scheme`)
TABLES = "int8"  # the token embedding and output head under quantize_embeddings, whatever the other kernels take
_CHUNK = 1 << 22  # values quantized per numpy step: temporaries stay small beside the tensor


@dataclass(frozen=True)
class Scheme:
    """How one kernel is stored. `group`: input values per scale (None: all of them, per output
    channel); `strict` False: when `group` does not divide a layer's input size, that layer uses the
    largest divisor below it (the default group size), else it is an error. `offset`: asymmetric,
    w = q * scale + offset with q over the whole signed range. `scale_dtype`, `offset_dtype`: None
    for the model's dtype; GGUF blocks keep their file's float16 scales (bit-exact)."""

    bits: int
    group: int | None = None
    offset: bool = False
    strict: bool = True
    scale_dtype: str | None = None
    offset_dtype: str | None = None

    @property
    def kernel_dtype(self):
        return jnp.int8 if self.bits == 8 else jnp.int4

    def groups(self, fan_in: int, where: str) -> int:
        """G, the number of scales per output channel of a kernel with `fan_in` inputs."""
        if self.group is None:
            return 1
        g = self.group
        if fan_in % g:
            if self.strict:
                some = [d for d in _divisors(fan_in) if 8 <= d <= 512] or _divisors(fan_in)
                raise ConfigError(f"group_size {g} does not divide the {fan_in} inputs of {where}: "
                                  f"choose one that does ({', '.join(map(str, some[:8]))})")
            g = max(d for d in _divisors(fan_in) if d <= g)
        return fan_in // g


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def scheme(quantize: str | None, group_size: int | None = None) -> Scheme | None:
    """The Scheme of `quantize=`, or None for float weights, in groups of `group_size` input values
    (int8 default INT8_GROUP, int4 DEFAULT_GROUP; a default group size a layer's input size does not
    divide becomes that layer's largest divisor below it). int8 is symmetric (a scale per group),
    int4 asymmetric (min/max: a scale and an offset per group, values over the whole signed range).
    Measured on SmolLM2-135M (docs/benchmarks.md): int8 per output channel costs +1.2% perplexity
    symmetric; symmetric in groups of 128 costs none (0.992x one context, 1.003x in windows) and
    decodes faster than asymmetric (no offset term: Llama-3-8B shape on an H200 1.34x bf16 against
    1.22x). Symmetric int4 in groups of 32 costs +41%, asymmetric none on that model."""
    check(quantize, group_size)
    if quantize is None:
        return None
    if quantize == "int8":
        return Scheme(8, group_size or INT8_GROUP, offset=False, strict=group_size is not None)
    return Scheme(4, group_size or DEFAULT_GROUP, offset=True, strict=group_size is not None)


def check(quantize, group_size, allowed=MODES) -> None:
    """One-line errors for bad `quantize=` / `group_size=` values."""
    if quantize is not None and quantize not in allowed:
        names = [f"'{m}'" for m in allowed]
        raise ConfigError(f"quantize must be {', '.join(names[:-1])} or {names[-1]}, got {quantize!r}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ConfigError(f"group_size must be a positive whole number of input values per scale, got {group_size!r}")
        if quantize is None:
            raise ConfigError("group_size goes with quantize='int4' or 'int8': pass quantize too")
        if quantize not in MODES:  # "gguf": the file's own blocks, 32 values per scale
            raise ConfigError(f"group_size goes with quantize='int4' or 'int8'; quantize={quantize!r} keeps the file's "
                              "own groups of 32: drop group_size")


def check_tables(quantize_embeddings, quantize="") -> None:
    """One-line errors for a bad `quantize_embeddings=`; with `quantize` (the load's mode, once
    known: a converted folder has its own), also for one without quantized weights."""
    if not isinstance(quantize_embeddings, (bool, np.bool_)):
        raise ConfigError(f"quantize_embeddings must be True or False, got {quantize_embeddings!r}"[:200])
    if quantize_embeddings and quantize is None:
        raise ConfigError("quantize_embeddings goes with quantize='int8', 'int4' or 'gguf': pass quantize too")


# -- module side ------------------------------------------------------------------------------

def scale_names(name: str) -> tuple[str, str]:
    """(scale, offset) leaf names beside the quantized parameter `name`."""
    return ("scale", "offset") if name == "kernel" else (f"{name}_scale", f"{name}_offset")


def is_quantized(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.integer)


def dequantize(kernel, scale, offset, dtype, in_axis: int | None = None):
    """The float kernel of `kernel` (integers) and its `scale` (and `offset`), in `dtype`.
    `in_axis` None: a Dense kernel [out..., in...] with scale [out..., G]; else the one input axis
    of an expert kernel [X, in, out] with scale [X, G, out]. Arithmetic is in the wider of `dtype`
    and the scale's dtype, so a GGUF block's float16 scale times its integer is exact in float32."""
    ct = jnp.promote_types(dtype, scale.dtype)
    if in_axis is None:
        lead = scale.shape[:-1]
        shape = lead + (scale.shape[-1], -1)
        expand = (Ellipsis, None)
    else:
        shape = kernel.shape[:in_axis] + (scale.shape[in_axis], -1) + kernel.shape[in_axis + 1 :]
        expand = (slice(None),) * (in_axis + 1) + (None,)
    w = kernel.reshape(shape).astype(ct) * scale[expand].astype(ct)
    if offset is not None:
        w = w + offset[expand].astype(ct)
    return w.reshape(kernel.shape).astype(dtype)


# Which form a product with a quantized kernel takes on a GPU (H200, Llama-3-8B shapes, int8,
# benchmarks/quant_matvec_probe.py; docs/benchmarks.md "Quantization"): at most FEW_ROWS rows
# (batch-1 decode) grouped_product (in the Llama-3-8B decode step, gate and up together 39 us where
# bf16 takes 59; dequantize-then-dot 108 us for one of them, benchmarks/profile_decode.py); up to
# quant_kernels.MAX_ROWS rows on one device a Pallas kernel (quant_kernels.matmul: 64 rows of gate/up
# 42.8 us against 111); otherwise, on a mesh (a Pallas call is not partitioned) and on other backends, dequantize
# then the float product, which XLA fuses on TPUs and amortizes over a prefill's rows.
FEW_ROWS = 1


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def _one_device() -> bool:
    return jax.device_count() == 1


def product(x, kernel, scale, offset, n_in: int):
    """x [..., in...] . dequantize(kernel [out..., in...]) by the fastest form for its rows, or
    None where dequantize-then-product is (the caller's own product)."""
    if not _on_gpu():
        return None
    n_out = kernel.ndim - n_in
    rows = math.prod(x.shape[: x.ndim - n_in])
    if rows <= FEW_ROWS:
        return grouped_product(x, kernel, scale, offset, n_in)
    if not _one_device():
        return None
    n, k = math.prod(kernel.shape[:n_out]), math.prod(kernel.shape[n_out:])
    y = quant_kernels.matmul(x.reshape(rows, k), kernel.reshape(n, k), scale.reshape(n, -1),
                             None if offset is None else offset.reshape(n, -1))
    return None if y is None else y.reshape(x.shape[: x.ndim - n_in] + kernel.shape[:n_out])


def grouped_product(x, kernel, scale, offset, n_in: int):
    """x [..., in...] . dequantize(kernel [out..., in...]) without building the float kernel, for
    few rows (decode; dequantizing first writes and reads the whole float kernel every step:
    Llama-3-8B int8 batch-1 decode on an H200 0.37x bf16). Two forms, by the kernel's shape:

    - at least as many outputs as inputs (q/k/v, o, gate/up): one multiply-reduce over all inputs
      of the integers times their group's scale times x, which XLA fuses into one kernel, and
      sibling products of one input (gate and up; k and v) into one kernel together;
    - more inputs than outputs (down): each group's integers contracted with x's matching inputs,
      then the [rows, out, G] partial sums scaled and summed (the fused form's long rows ran at
      1.95 TB/s on an H200 where this one ran at 3.0).

    Offsets add the groups' input sums times the offsets. Sums in float32, the result in x's dtype
    (docs/benchmarks.md, session 12: the H200 profile of each form; session 30: the kernel read as 32-bit words won
    in isolation for int4 gate/up, not in the model)."""
    n_out = kernel.ndim - n_in
    out_shape, groups = kernel.shape[:n_out], scale.shape[-1]
    n, k = math.prod(out_shape), math.prod(kernel.shape[n_out:])
    lead = x.shape[: x.ndim - n_in]
    xs = x.reshape((-1, groups, k // groups))  # [R, G, g]
    q = kernel.reshape((n, groups, -1))  # [O, G, g]
    s = scale.reshape((n, groups)).astype(jnp.float32)
    xf = xs.astype(jnp.float32)
    off = None if offset is None else jnp.sum(xf, axis=-1)[:, None, :] * offset.reshape((n, groups)).astype(jnp.float32)
    if n >= k:
        y = jnp.sum(xf[:, None] * (q.astype(jnp.float32) * s[:, :, None])[None], axis=(2, 3))
        y = y if off is None else y + jnp.sum(off, axis=-1)
    else:
        terms = jnp.einsum("rGk,oGk->roG", xs, q.astype(x.dtype), preferred_element_type=jnp.float32) * s
        y = jnp.sum(terms if off is None else terms + off, axis=-1)  # one reduction over the groups
    return y.astype(x.dtype).reshape(lead + out_shape)


def group_axis(axes: tuple, first_in: int, groups: int):
    """The logical axis of a scale's group dim: the kernel's first input axis + "_groups" (the
    sharding rules split it like that axis where the mesh divides the groups), None when G = 1."""
    return f"{axes[first_in]}_groups" if groups > 1 else None


def apply(module, scheme_for, tables=None) -> None:
    """Turn the quantizable layers of a freshly built (abstract) `module` into quantized ones:
    `scheme_for(path)` gives the Scheme of the parameter at `path` (a Dense kernel's path ends in
    "kernel", an expert stack's in its name, the token embedding's in "embedding"), or None to keep
    it float. The tables (layers marked `table`: the token embedding and the output head) take
    `tables(path)` instead, and stay float when `tables` is None."""
    layers = [(tuple(path), node) for path, node in nnx.iter_graph(module)
              if getattr(node, "quantizable", False) and hasattr(node, "quantize")]
    for path, node in layers:  # after the walk: quantizing replaces the layer's parameters
        which = tables if getattr(node, "table", False) else scheme_for
        if which is not None:
            node.quantize(path, which)


def float_state(state):
    """`state` without the scales and offsets of its quantized kernels: the leaves a checkpoint's
    weight map fills (the kernels themselves keep their shapes)."""
    flat = list(nnx.to_flat_state(state))
    extra = scale_paths(tuple(p) for p, v in flat if is_quantized(v.get_value().dtype))
    return nnx.from_flat_state([(p, v) for p, v in flat if tuple(p) not in extra])


def scale_paths(quantized) -> set[tuple]:
    """The paths of the scales and offsets beside the quantized parameters at the paths `quantized`."""
    return {p[:-1] + (n,) for p in quantized for n in scale_names(p[-1])}


def bits(dtype) -> int:
    return ml_dtypes.iinfo(np.dtype(dtype)).bits


# -- host side: the loader's seam -------------------------------------------------------------

def float_target(path: tuple, params: dict, dtype) -> jax.ShapeDtypeStruct:
    """The float array the transform builds for the parameter at `path` of `params` {path: leaf}:
    float32 for a kernel that is quantized next (quantized from full precision) and for a parameter
    the module declares float32 whatever the model's dtype (DeepSeek's routers: `cfg.router_float32`),
    else `dtype`."""
    leaf = params[path]
    return jax.ShapeDtypeStruct(leaf.shape, jnp.float32 if is_quantized(leaf.dtype) or leaf.dtype == jnp.float32 else dtype)


def pieces(path: tuple, host: np.ndarray, params: dict) -> dict[tuple, np.ndarray]:
    """{path: host array} to place for the parameter at `path`, from its float value `host`: the
    array itself, or for a quantized kernel its integers, scales (and offsets) under their paths."""
    leaf = params[path]
    if not is_quantized(leaf.dtype):
        return {path: host}
    scale_path, offset_path = (path[:-1] + (n,) for n in scale_names(path[-1]))
    scale = params[scale_path]
    q, s, o = quantize_array(host, leaf.dtype, scale.shape, scale.dtype, None if path[-1] == "kernel" else 1,
                             offset_path in params, params[offset_path].dtype if offset_path in params else None)
    out = {path: q, scale_path: s}
    if o is not None:
        out[offset_path] = o
    return out


def _grouped_shape(shape: tuple, scale_shape: tuple, in_axis: int | None) -> tuple[int, int, int, int]:
    """(A, G, g, B): the kernel viewed as [A, G, g, B], its scale as [A, G, B]."""
    if in_axis is None:
        a, groups = math.prod(scale_shape[:-1]), scale_shape[-1]
        return a, groups, math.prod(shape) // a // groups, 1
    a, groups, b = math.prod(shape[:in_axis]), scale_shape[in_axis], math.prod(shape[in_axis + 1 :])
    return a, groups, shape[in_axis] // groups, b


def quantize_array(w: np.ndarray, kernel_dtype, scale_shape: tuple, scale_dtype, in_axis: int | None = None,
                   offset: bool = False, offset_dtype=None):
    """(integers of `w`'s shape in `kernel_dtype`, scales of `scale_shape`, offsets or None), on the
    host, in row chunks. Symmetric: scale = max|w| / qmax per group (127 for int8, 7 for int4),
    q = round(w / scale). Asymmetric (`offset`, unsigned): scale = (max - min) / (2^bits - 1),
    offset = min, q = round((w - min) / scale). Scales are rounded to `scale_dtype` first, and q
    computed against the rounded value, so |w - dequantized| <= scale / 2 per group.
    Asymmetric values are stored signed too (tensorstore, hence orbax, has no uint4): q runs over
    [-2^(bits-1), 2^(bits-1)) and the offset is min + 2^(bits-1) * scale."""
    kernel_dtype, scale_dtype = np.dtype(kernel_dtype), np.dtype(scale_dtype)
    half = 2 ** (bits(kernel_dtype) - 1)
    a, groups, g, b = _grouped_shape(w.shape, scale_shape, in_axis)
    view = w.reshape(a, groups, g, b)
    q = np.empty((a, groups, g, b), kernel_dtype)
    s = np.empty((a, groups, b), scale_dtype)
    offset_dtype = np.dtype(offset_dtype or scale_dtype)
    o = np.empty((a, groups, b), offset_dtype) if offset else None
    step = max(1, _CHUNK // max(1, groups * g * b))
    for start in range(0, a, step):
        rows = slice(start, start + step)
        x = view[rows].astype(np.float32)
        if offset:
            lo, hi = x.min(axis=2), x.max(axis=2)
            sc = ((hi - lo) / (2 * half - 1)).astype(scale_dtype)
            sf = sc.astype(np.float32)
            off = (lo + half * sf).astype(offset_dtype)
            o[rows] = off
            vals = np.rint((x - off.astype(np.float32)[:, :, None]) / np.where(sf == 0, 1, sf)[:, :, None])
            q[rows] = np.clip(vals, -half, half - 1).astype(kernel_dtype)
        else:
            sc = (np.abs(x).max(axis=2) / (half - 1)).astype(scale_dtype)
            sf = sc.astype(np.float32)
            vals = np.rint(x / np.where(sf == 0, 1, sf)[:, :, None])
            q[rows] = np.clip(vals, -half, half - 1).astype(kernel_dtype)
        s[rows] = sc
    return q.reshape(w.shape), s.reshape(scale_shape), None if o is None else o.reshape(scale_shape)


def dequantize_array(q: np.ndarray, scale: np.ndarray, offset=None, in_axis: int | None = None) -> np.ndarray:
    """float32 values of a quantized kernel on the host (tests, export): the inverse of quantize_array."""
    a, groups, g, b = _grouped_shape(q.shape, scale.shape, in_axis)
    w = q.reshape(a, groups, g, b).astype(np.float32) * scale.reshape(a, groups, 1, b).astype(np.float32)
    if offset is not None:
        w = w + offset.reshape(a, groups, 1, b).astype(np.float32)
    return w.reshape(q.shape)


class Dequantized(Mapping):
    """A read-only view {path: array} of flat parameters in which every quantized kernel reads
    as its float values in `dtype` (dequantize_array on the host, one tensor per access) and its
    scales and offsets are gone, and a float parameter of another dtype (a float32 router in a
    bfloat16 model: `float_target`) reads in `dtype`: what a float checkpoint of the same model
    holds (convert --to-hf)."""

    def __init__(self, flat: dict, dtype):
        self._flat, self._dtype = flat, np.dtype(dtype)
        self._extra = scale_paths(p for p, v in flat.items() if is_quantized(v.dtype))

    def __getitem__(self, path):
        if path in self._extra:
            raise KeyError(path)
        value = self._flat[path]
        if not is_quantized(value.dtype):
            return value if value.dtype == self._dtype else value.astype(self._dtype)
        scale, offset = (self._flat.get(path[:-1] + (n,)) for n in scale_names(path[-1]))
        w = dequantize_array(np.asarray(value), np.asarray(scale), None if offset is None else np.asarray(offset),
                             None if path[-1] == "kernel" else 1)
        return w.astype(self._dtype)

    def __iter__(self):
        return (p for p in self._flat if p not in self._extra)

    def __len__(self):
        return len(self._flat) - len(self._extra)


def bytes_of(leaf) -> float:
    """Bytes an array of this shape and dtype takes packed (int4: half a byte per value)."""
    dtype = np.dtype(leaf.dtype)
    return math.prod(leaf.shape) * (bits(dtype) if is_quantized(dtype) else dtype.itemsize * 8) / 8
