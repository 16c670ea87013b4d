"""How a load's weights are quantized, and the read of a GGUF file's blocks as they are (the
loader's seam; jaxllm.loader runs the load path around it):

    quantization(...)    the scheme of each kernel (quant.Scheme, or None: float) and of the token
                         embedding and output head, from the mode asked for (`quantize`, `group_size`,
                         `quantize_embeddings`) and the checkpoint: a GGUF file's Q8_0 / Q4_0 / Q4_1
                         blocks of the width the mode asks for are taken as they are (BlockSource);
                         a converted folder loads the schemes its marker saved
    read_gguf_blocks(p)  Plan.read when kernels come as the file's blocks: their integers and
                         float16 scales (and offsets) placed as stored, the rest streamed as usual
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import converted, gguf
from jaxllm.errors import ConfigError
from jaxllm.models import quant, transforms, weights

TABLE_PATHS = converted.TABLES  # what quantize_embeddings quantizes (the head when untied)
_NOT_GGUF = ("quantize='gguf' keeps a GGUF file's own quantized blocks; this checkpoint is not a GGUF file: "
             "use quantize='int8' or 'int4'")


def uniform(scheme):
    return None if scheme is None else (lambda path: scheme)


def table_schemes(quantize, quantize_embeddings):
    """The scheme_for of the token embedding and output head: quant.TABLES (int8 in groups, whatever
    width the other kernels take) when `quantize_embeddings`, else None (float)."""
    quant.check_tables(quantize_embeddings, quantize)
    return uniform(quant.scheme(quant.TABLES)) if quantize_embeddings else None


def quantization(arch, cfg, source, quantize, group_size, quantize_embeddings=False):
    """(scheme_for, the tables' scheme_for, {kernel path: BlockSource taken natively}, the
    mode) of a load."""
    if isinstance(source, converted.ConvertedCheckpoint):
        return _saved_quantization(source, quantize, group_size, quantize_embeddings)
    tables = table_schemes(quantize, quantize_embeddings)
    tensors = getattr(source, "tensors", None) if getattr(source, "path", None) and source.path.is_file() else None
    if not isinstance(tensors, gguf.GGUFCheckpoint):
        if quantize == "gguf":
            raise ConfigError(_NOT_GGUF)
        return uniform(quant.scheme(quantize, group_size)), tables, {}, quantize
    if quantize is None:
        return None, None, {}, None
    own = None if quantize == "gguf" else quant.scheme(quantize, group_size)
    table = None if tables is None else tables(weights.EMBEDDING)  # quant.TABLES' Scheme, whatever width `own` has
    native, schemes = {}, {}
    for spec in arch.weight_map(cfg):
        is_table = spec.path in TABLE_PATHS
        width = table if is_table else own  # the blocks of this width load as they are (any under "gguf")
        source = None if is_table and table is None else _block_source(spec, tensors)  # float tables: no blocks
        if source is None:
            continue
        blocks = {tensors.block_scheme(name) for name in source.names}
        block = blocks.pop() if len(blocks) == 1 else None  # an expert stack's tensors all of one type
        # the width asked for, in the file's groups unless group_size asked for others (then quantized from the values)
        if block is not None and (quantize == "gguf" or block.bits == width.bits and (not width.strict or width.group == block.group)):
            native[spec.path], schemes[spec.path] = source, block
    tables_for = None if tables is None else (lambda path: schemes.get(path) or tables(path))
    return (lambda path: schemes.get(path, own)), tables_for, native, quantize


class BlockSource(NamedTuple):
    """Where a kernel's integers come from in a GGUF file, as stored ([out, in] rows, the groups
    along in): the tensors (one, or an expert stack's), a Part's rows of a fused one, and whether
    the kernel keeps them transposed ([in, out]: MoE experts)."""

    names: tuple
    part: transforms.Part | None = None
    transpose: bool = False


def _block_source(spec, tensors) -> BlockSource | None:
    """The BlockSource of a kernel whose layout the file's blocks fill as they are: nn.Linear
    weights (whole, or a fused one's rows: Phi-3's qkv_proj, gate_up_proj), Conv1D weights the
    file stores [out, in] (GPT-2, whole or c_attn's columns), expert stacks, token embeddings
    ([vocab, hidden], quantized under quantize_embeddings); else None."""
    t, names = spec.transform, spec.hf_names
    stored_reversed = all(name in tensors.transposed for name in names)  # the file holds HF's [in, out] as [out, in]
    if isinstance(t, transforms.Stack) and t.inner == transforms.Transpose(1) and not stored_reversed:
        return BlockSource(names, transpose=True)
    if len(names) != 1:
        return None
    if t == transforms.Copy() and not stored_reversed:  # a table [vocab, hidden] as stored: its groups run along hidden
        return BlockSource(names)
    part = t if isinstance(t, transforms.Part) else None
    inner = part.inner if part else t
    rows = (isinstance(inner, transforms.Linear) and not stored_reversed and (part is None or part.axis == 0)) or (
        isinstance(inner, transforms.Transpose) and stored_reversed and (part is None or part.axis == 1))
    return BlockSource(names, part) if rows else None


def _saved_quantization(source, quantize, group_size=None, quantize_embeddings=False):
    """A converted folder's quantization (scheme_for, tables' scheme_for, {}, mode), from the dtypes
    and shapes its marker lists; a float folder quantized as `quantize` and `quantize_embeddings`
    ask (converted.restore quantizes each kernel as it reads it)."""
    marker = converted.read_marker(source.path)
    saved, schemes, group_of = marker["params"], {}, {}
    for name, info in saved.items():
        if not quant.is_quantized(jnp.dtype(info["dtype"])):
            continue
        fan_in, groups, offset = converted.quantized_layout(name, saved)  # read_marker checked it
        leaf = name.rsplit(".", 1)[-1]
        scale_name, offset_name = (name[: -len(leaf)] + n for n in quant.scale_names(leaf))
        group_of[name] = fan_in // groups
        schemes[name] = quant.Scheme(quant.bits(info["dtype"]), None if groups == 1 else fan_in // groups, offset=offset,
                                     scale_dtype=saved[scale_name]["dtype"],
                                     offset_dtype=saved[offset_name]["dtype"] if offset else None)
    mode = marker.get("quantize")
    if schemes and mode is None:
        widths = {s.bits for s in schemes.values()}
        mode = "int8" if widths == {8} else "int4" if widths == {4} else "gguf"
    if mode is None and quantize is not None:  # float weights, quantized as they are read
        if quantize == "gguf":
            raise ConfigError(_NOT_GGUF)
        return uniform(quant.scheme(quantize, group_size)), table_schemes(quantize, quantize_embeddings), {}, quantize
    if quantize is not None and quantize != mode:
        raise ConfigError(f"{source.path} holds {mode} weights: load it without quantize= (or with quantize='{mode}'), "
                          f"or quantize the original float checkpoint with {quantize}")
    tables = {converted.key(path) for path in TABLE_PATHS}  # int8 in groups of quant.TABLES' own, whatever group_size says
    groups = sorted({g for name, g in group_of.items() if name not in tables})
    if group_size is not None and groups != [group_size]:
        held = f"group_size={groups[0]}" if len(groups) == 1 else f"groups of {', '.join(map(str, groups))} inputs"
        raise ConfigError(f"{source.path} holds {mode} weights with {held}: load it without group_size"
                          + (f" (or with {held})" if len(groups) == 1 else "")
                          + f", or quantize the original float checkpoint with group_size={group_size}")
    saved_for = (lambda path: schemes.get(converted.key(path))) if schemes else None
    quant.check_tables(quantize_embeddings, mode)
    if quantize_embeddings and not any(converted.key(path) in schemes for path in TABLE_PATHS):
        raise ConfigError(f"{source.path} was converted with float embeddings and output head: load it without "
                          "quantize_embeddings, or convert the original checkpoint with it")
    return saved_for, saved_for, {}, mode


def read_gguf_blocks(p, progress):
    """Plan.read of the loader.Plan `p` for a GGUF file whose blocks are taken as they are: the float
    tensors (and kernels quantized by us) through the usual streaming fill, then each native kernel's
    integers, float16 scales (and offsets) straight from the file's blocks, one tensor at a time."""
    tensors = p.source.tensors
    specs = p.arch.weight_map(p.config)
    state = weights.load_params(tensors, [s for s in specs if s.path not in p.native], p.abstract, p.dtype,
                                p.shardings, progress)
    leaves = weights.flat_params(p.abstract)
    filled = {}
    for path, source in p.native.items():
        scale_path, offset_path = (path[:-1] + (n,) for n in quant.scale_names(path[-1]))
        q, scale, offset = _stored_blocks(tensors, source, leaves[path].shape)
        parts = {path: q.reshape(leaves[path].shape), scale_path: scale.reshape(leaves[scale_path].shape)}
        if offset is not None:
            parts[offset_path] = offset.reshape(leaves[offset_path].shape)
        for key, host in parts.items():
            filled[key] = jax.block_until_ready(weights.place(host, (p.shardings or {}).get(key)))
        nbytes = int(sum(quant.bytes_of(host) for host in parts.values()))
        del q, scale, offset, parts
        weights.report(progress, source.names[0], nbytes)  # a bar that counts bytes was told the float tensors' by load_params
    return weights.unflatten_into(state, filled)


def _stored_blocks(tensors, source: BlockSource, shape: tuple) -> tuple:
    """(values, scales, offsets or None) of a kernel of `shape` from the file's blocks: a Part's
    rows, or an expert stack's tensors each turned [in, out] and stacked."""
    if source.transpose:
        each = [tensors.blocks(name) for name in source.names]
        return tuple(None if each[0][i] is None else np.stack([np.ascontiguousarray(b[i].T) for b in each]) for i in range(3))
    blocks = tensors.blocks(source.names[0])
    if source.part is None:
        return blocks
    start = source.part.offset
    stop = start + source.part.inner.hf_shape(shape)[source.part.axis]
    return tuple(None if a is None else a[start:stop] for a in blocks)
