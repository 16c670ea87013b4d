"""jaxllm's own checkpoint format, written by `python -m jaxllm.convert`: Flax parameters saved with
orbax, beside the Hugging Face config and tokenizer files, so `jaxllm.load` restores it (straight
onto the shards of a mesh) without converting again.

    DST/
      config.json, generation_config.json, tokenizer files   as in the HF checkpoint
      params/      orbax (StandardCheckpointer): {"model.layers.0.self_attn.q_proj.kernel": array, ...}
      jaxllm.json  format, dtype, architecture, source, and every parameter's shape; written last

Parameters are saved as a flat dict keyed by their dotted path, which any orbax version reads back
without knowing our module tree. The write is waited for to its end, and a refused one reported in
one line, by jaxllm/orbax_writing.py.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path

import jax
import numpy as np

from jaxllm.checkpoint import (
    FLOAT_DTYPES,
    MARKER,
    is_converted,  # noqa: F401  (read as converted.is_converted)
    read_config,
    read_generation_config,
    read_json,
)
from jaxllm.errors import CheckpointError
from jaxllm.models import quant, transforms, weights
from jaxllm.models.weights import flat_params, report, unflatten_into
from jaxllm.orbax_writing import ignore_closed_loops, write_error, write_to_the_end
from jaxllm.safetensors_io import LazyTensor

FORMAT = "jaxllm-orbax"
VERSION = 2  # 2: Dense kernels stored [out..., in...] (version 1 stored [in..., out...])
PARAMS = "params"


def key(path: tuple) -> str:
    return ".".join(map(str, path))


def _checkpointer(restore_bytes: int | None = None):
    """Orbax's PyTree checkpointer, uncompressed: zstd saves ~20% of disk on bf16 weights but
    decoding it made restores ~1.6x slower (benchmarks/convert_timing.py, docs/benchmarks.md).
    `restore_bytes`: at most about this many bytes read into host memory at once while restoring
    (orbax's own default is 96 GB: a whole model on the host before it reaches the devices)."""
    import orbax.checkpoint as ocp

    ignore_closed_loops()  # before any read or write: a failed one's leftovers can report at once
    options = dict(use_compression=False)
    if restore_bytes:
        options["restore_concurrent_gb"] = max(1, math.ceil(restore_bytes / 1e9))
    while True:
        try:
            return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(**options))
        except TypeError:  # an older orbax without one of the switches: compressed, or unbounded, still readable
            if not options:
                raise
            options.popitem()


def save(folder: Path, params, meta: dict, shown: Path | None = None) -> None:
    """Write the parameters (orbax) and then the marker into `folder`, which must be new. A write
    the disk refuses (full, read-only) raises a CheckpointError naming `shown` (default `folder`);
    on any exception, orbax's writer threads have all ended before it propagates, so the caller
    can remove `folder` for good."""
    import orbax.checkpoint as ocp

    flat = {key(p): v for p, v in flat_params(params).items()}
    write_to_the_end(lambda: _checkpointer().save((folder / PARAMS).absolute(), args=ocp.args.PyTreeSave(flat)),
                     shown or folder)
    manifest = {k: {"shape": list(v.shape), "dtype": np.dtype(v.dtype).name} for k, v in flat.items()}
    marker = dict(format=FORMAT, version=VERSION, **meta, params=manifest)
    try:
        (folder / MARKER).write_text(json.dumps(marker, indent=1))
    except OSError as err:
        raise (write_error(shown or folder, err) or err) from None


def arrays(folder: Path):
    """(name, numpy array) of every saved parameter, read one at a time (orbax partial restores),
    so a scan of a large checkpoint holds one tensor in memory."""
    import orbax.checkpoint as ocp

    checkpointer = _checkpointer()
    for name in read_marker(folder)["params"]:
        args = ocp.args.PyTreeRestore(item={name: 0}, restore_args={name: ocp.RestoreArgs(restore_type=np.ndarray)},
                                      partial_restore=True)
        try:
            restored = checkpointer.restore((folder / PARAMS).absolute(), args=args)
        except (OSError, ValueError, KeyError) as err:  # a damaged or partial folder
            raise _unreadable(folder, err) from None
        yield name, restored.pop(name)


def read_marker(folder: Path) -> dict:
    marker = read_json(folder / MARKER, MARKER)
    if marker.get("format") != FORMAT or not isinstance(marker.get("params"), dict):
        raise CheckpointError(f"{folder / MARKER} is not a jaxllm checkpoint marker: re-run python -m jaxllm.convert")
    version = marker.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{folder / MARKER} has version {version!r}, not a whole number (the file was edited?): "
                              "re-run python -m jaxllm.convert")
    if version != VERSION:
        newer = version > VERSION
        raise CheckpointError(f"{folder} was written by {'a newer' if newer else 'an older'} jaxllm (format "
                              f"{marker.get('version')}, this one reads {VERSION}): "
                              + ("upgrade jaxllm" if newer else "convert the original checkpoint again"))
    if not (folder / PARAMS).is_dir():
        raise CheckpointError(f"{folder} has no {PARAMS}/ folder: the conversion is incomplete; convert again")
    problem = _marker_problem(marker)
    if problem:
        raise CheckpointError(f"{folder / MARKER} {problem} (the file was edited?): re-run python -m jaxllm.convert")
    return marker


def _marker_problem(marker: dict) -> str | None:
    """What is wrong with a marker's dtype or parameter entries (each {shape, dtype}), or None:
    the loader reads them before any parameter, and would fail on them with a traceback."""
    dtype = marker.get("dtype")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        return f"has dtype {str(dtype)[:40]!r}, not one of {', '.join(FLOAT_DTYPES)}"
    for name, entry in marker["params"].items():
        if not isinstance(entry, dict) or not {"shape", "dtype"} <= entry.keys():
            return f"has parameter {name[:100]!r} without its 'shape' and 'dtype'"
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            return f"has parameter {name[:100]!r} with shape {str(shape)[:60]}, not a list of whole numbers"
        try:
            jax.numpy.dtype(entry["dtype"])
        except (TypeError, ValueError):
            return f"has parameter {name[:100]!r} with dtype {str(entry['dtype'])[:40]!r}, which is not a dtype"
    return _quantization_problem(marker)


MODES = quant.MODES + ("gguf",)  # a marker's "quantize": what the weights were quantized as (gguf: a file's own blocks)


def _quantization_problem(marker: dict) -> str | None:
    """What is wrong with a marker's quantized parameters, or None: its mode, and each integer parameter's dtype,
    scale (and offset) entries, as `quantized_layout` reads them and the mode makes them (the loader builds the
    model from these: a kernel without its scale loaded its integers as floats, a scale of no float dtype was cast)."""
    mode, saved = marker.get("quantize"), marker["params"]
    if mode is not None and mode not in MODES:
        return f"has quantize {str(mode)[:40]!r}, not one of {', '.join(MODES)}"
    tables = {key(path) for path in TABLES}
    for name, entry in saved.items():
        if not quant.is_quantized(jax.numpy.dtype(entry["dtype"])):
            continue
        layout = quantized_layout(name, saved)
        if isinstance(layout, str):
            return layout
        want = quant.scheme(quant.TABLES if name in tables else mode) if mode in quant.MODES else None
        if want is not None and (quant.bits(entry["dtype"]) != want.bits or layout[2] != want.offset):
            made = f"{'with' if want.offset else 'without'} offsets"
            return f"says quantize {mode!r} but holds {name[:100]!r} as {entry['dtype']} {'with' if layout[2] else 'without'} offsets " \
                   f"(quantize {mode!r} saves it as {jax.numpy.dtype(want.kernel_dtype).name} {made})"
    return None


TABLES = (weights.EMBEDDING, ("lm_head", "kernel"))  # what quantize_embeddings quantizes, int8 whatever the mode (quant.TABLES)


def quantized_layout(name: str, saved: dict) -> tuple[int, int, bool] | str:
    """(input values, groups, whether offsets are saved) of the integer parameter `name` of a marker's `saved`
    entries, read off its shape and its scale's, or what is wrong with them. A Dense kernel [out..., in...] has
    a scale [out..., G]; an expert stack [X, in, out] a {name}_scale [X, G, out]; a table [vocab, embed] an
    embedding_scale [vocab, G]; an offset has its scale's shape; both float, G dividing the input values."""
    entry, short = saved[name], name[:100]
    if entry["dtype"] not in ("int8", "int4"):
        return f"has parameter {short!r} in {str(entry['dtype'])[:20]}, not int8 or int4 (jaxllm's quantized kernels)"
    leaf = name.rsplit(".", 1)[-1]
    scale_name, offset_name = (name[: -len(leaf)] + n for n in quant.scale_names(leaf))
    if scale_name not in saved:
        return f"has the quantized {short!r} without its scales ({scale_name[:100]!r})"
    shape, scales = entry["shape"], saved[scale_name]["shape"]
    for other in (scale_name, offset_name):
        if other in saved and saved[other]["dtype"] not in FLOAT_DTYPES:
            return f"has {other[:100]!r} in {str(saved[other]['dtype'])[:20]}, not a float dtype"
    if offset_name in saved and saved[offset_name]["shape"] != scales:
        return f"has {offset_name[:100]!r} of shape {saved[offset_name]['shape']}, not its scale's {scales}"
    if leaf == "kernel":  # [out..., in...] and [out..., G]
        fits = 2 <= len(scales) <= len(shape) and scales[:-1] == shape[: len(scales) - 1]
        fan_in, groups = (math.prod(shape[len(scales) - 1 :]), scales[-1]) if fits else (0, 0)
    else:  # [X, in, out] and [X, G, out]; [vocab, embed] and [vocab, G]
        fits = len(scales) == len(shape) >= 2 and scales[0] == shape[0] and scales[2:] == shape[2:]
        fan_in, groups = (shape[1], scales[1]) if fits else (0, 0)
    if not fits or not 1 <= groups <= fan_in or fan_in % groups:
        return f"has {scale_name[:100]!r} of shape {scales}, which does not scale {short!r} of shape {shape} in whole groups"
    return fan_in, groups, offset_name in saved


def problems(folder: Path, abstract) -> list[str]:
    """Every missing, unexpected and mis-shaped parameter of the saved tree against the model (a
    kernel the model quantizes and the folder holds as floats: the float kernel, not its scales)."""
    saved = read_marker(folder)["params"]
    flat = flat_params(abstract)
    want = {key(p): tuple(v.shape) for p, v in _read_leaves(flat, quantized_here(flat, saved)).items()}
    found = [f"missing {k} (expected shape {list(s)})" for k, s in want.items() if k not in saved]
    found += [f"{k} has shape {saved[k]['shape']}, expected {list(s)}"
              for k, s in want.items() if k in saved and tuple(saved[k]["shape"]) != s]
    return found + [f"unexpected {k}" for k in saved if k not in want]


def quantized_here(flat: dict, saved: dict) -> set[tuple]:
    """The paths of the kernels the model (its abstract leaves `flat`) quantizes that the folder
    (its marker's `saved` entries) holds as floats: restored as floats, then quantized on the host."""
    return {p for p, leaf in flat.items() if quant.is_quantized(leaf.dtype) and key(p) in saved
            and not quant.is_quantized(jax.numpy.dtype(saved[key(p)]["dtype"]))}


def _read_leaves(flat: dict, here: set[tuple]) -> dict:
    """{path: leaf} of what is read from the folder: `flat` without the scales and offsets of the
    kernels quantized here (`here`: quant.pieces makes them from the float kernel)."""
    made = quant.scale_paths(here)
    return {p: leaf for p, leaf in flat.items() if p not in made}


def _unreadable(folder: Path, err: BaseException) -> CheckpointError:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return CheckpointError(f"could not read the parameters in {folder / PARAMS} ({type(err).__name__}: {first}); convert again")


RESTORE_GROUP_BYTES = 512 << 20  # parameters per orbax call (the fallback), at least the largest one


def restore(folder: Path, abstract, dtype, shardings: dict | None = None, progress=None):
    """The parameter state of `abstract`, read from `folder` in its leaves' dtypes (`dtype`, which
    the abstract's float parameters have; cast on read when the saved dtype differs), straight onto
    the devices: `shardings` {path: Sharding}, each device reading only its own shards. A kernel the
    abstract quantizes that the folder holds as floats (quantize= on a float folder) is read in
    float32 on the host and quantized there (quant.pieces, as weights.load_params does), one at a time.

    Where orbax stored a parameter the plain way (one uncompressed C-order zarr chunk in its OCDBT
    data files: what `save` writes), its bytes are mapped from that file and placed like a
    safetensors tensor, through the same pipeline as weights.load_params (several loading threads,
    host memory within about the largest parameter, only the pages of this process's shards read).
    Anything else (another layout, an index tensorstore cannot list) goes through orbax in groups
    (`_restore_with_orbax`). `progress` as in weights.load_params."""
    flat = flat_params(abstract)
    saved = read_marker(folder)["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placing = _Placing(flat, quantized_here(flat, saved), {p: (shardings or {}).get(p, device) for p in flat})
    # Each leaf read in the dtype it is placed in: `dtype` for the float parameters (cast on read),
    # quantized integers and their scales in their own; a kernel quantized here in float32.
    target = {key(p): quant.float_target(p, flat, leaf.dtype) if p in placing.here else leaf
              for p, leaf in _read_leaves(flat, placing.here).items()}
    target = {k: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=placing.shardings[placing.paths[k]])
              for k, t in target.items()}
    sizes = {k: max(math.prod(t.shape) * np.dtype(t.dtype).itemsize, _saved_bytes(saved.get(k), t.shape))
             for k, t in target.items()}
    if hasattr(progress, "expect_bytes"):
        progress.expect_bytes(sum(sizes.values()))
    stored = _stored(folder, saved)
    mapped = [k for k in target if k in stored]
    out = _restore_mapped(stored, {k: target[k] for k in mapped}, sizes, progress, placing) if mapped else {}
    rest = [k for k in target if k not in out]
    if rest:
        out.update(_restore_with_orbax(folder, {k: target[k] for k in rest}, sizes, progress, placing))
    return unflatten_into(abstract, {p: out[key(p)] for p in flat})


class _Placing:
    """How a parameter read from the folder goes onto its devices: as it is, or (a kernel in
    `here`, read as floats) quantized on the host into its integers and scales, each placed."""

    def __init__(self, flat: dict, here: set, shardings: dict):
        self.flat, self.here, self.shardings = flat, here, shardings
        self.paths = {key(p): p for p in flat}

    def host(self, k: str, host) -> dict:
        """{name: array on its devices} of parameter `k` from its host value (numpy, or a
        LazyTensor already in the target dtype); returns once the copies are complete."""
        path = self.paths[k]
        pieces = quant.pieces(path, np.asarray(host), self.flat) if path in self.here else {path: host}
        del host
        placed = weights.place_ready(pieces, {p: self.shardings[p] for p in pieces})
        return {key(p): v for p, v in placed.items()}


def _restore_mapped(stored: dict, target: dict, sizes: dict, progress, placing: _Placing) -> dict:
    """{name: array on its devices} of parameters whose bytes `stored` locates: weights.in_order's
    loading threads, host memory within about the largest parameter, as weights.load_params."""
    def one(k):  # in the target's dtype (cast in row blocks when the saved one differs), on its devices
        return placing.host(k, transforms.Copy()(stored[k], tuple(target[k].shape), target[k].dtype))

    jobs = [(k, sizes[k], functools.partial(one, k)) for k in target]
    out = {}
    for placed in weights.in_order(jobs, progress):
        out.update(placed)
    return out


_VALUE_REF = re.compile(r"value:([^:]*):(.*):(\d+):(\d+)$")


def _stored(folder: Path, saved: dict) -> dict:
    """{parameter name: its bytes} for each saved parameter stored the plain way: a LazyTensor
    over its span of an OCDBT data file, or an array of an inline value. Read from the OCDBT index
    (tensorstore's dump of the manifest and its B+tree nodes); a parameter stored otherwise
    (compressed, chunked, another dtype or shape than the marker's, its file missing or short) is
    left out, and so is everything when the index cannot be listed: orbax reads those."""
    try:
        import tensorstore as ts

        base = ts.KvStore.open({"driver": "file", "path": str((folder / PARAMS).absolute()) + os.sep}).result()
        manifest = ts.ocdbt.dump(base).result()
        versions = manifest.get("versions") or []
        root = max(versions, key=lambda v: v.get("generation_number", 0)).get("root", {}).get("location") if versions else None
        values = {}
        if root:
            _walk(ts, base, root, values, depth=0)
    except Exception:  # noqa: BLE001 - an old tensorstore, a damaged index: orbax reads it (and says what is wrong)
        return {}
    found = {}
    for name, entry in saved.items():
        try:
            found[name] = _located(folder, name, entry, values)
        except (KeyError, TypeError, ValueError, OSError):
            continue
    return {k: v for k, v in found.items() if v is not None}


def _walk(ts, base, location: str, values: dict, depth: int) -> None:
    """Every key's value (bytes inline, or its "value:..." reference) under a B+tree node."""
    if depth > 16:
        raise ValueError("B+tree too deep")
    node = ts.ocdbt.dump(base, location).result()
    for entry in node["entries"]:
        if "inline_value" in entry:
            values[bytes(entry["key"])] = bytes(entry["inline_value"])
        elif "indirect_value" in entry:
            values[bytes(entry["key"])] = entry["indirect_value"]
        else:  # an interior node's child
            child = [v for v in entry.values() if isinstance(v, str) and v.startswith("btreenode:")]
            if len(child) != 1:
                raise ValueError(f"unknown B+tree entry {sorted(entry)}")
            _walk(ts, base, child[0], values, depth + 1)


def _located(folder: Path, name: str, entry: dict, values: dict):
    """The bytes of one parameter (see _stored), or None when they are not stored the plain way."""
    shape, dtype = tuple(entry["shape"]), jax.numpy.dtype(entry["dtype"])
    meta = json.loads(values[f"{name}/.zarray".encode()])
    zarr_dtype = meta.get("dtype")
    if (meta.get("zarr_format") != 2 or meta.get("compressor") is not None or meta.get("filters")
            or meta.get("order") != "C" or tuple(meta.get("shape", ())) != shape or tuple(meta.get("chunks", ())) != shape
            or not isinstance(zarr_dtype, str) or _zarr_dtype(zarr_dtype) != dtype):
        return None
    nbytes = math.prod(shape) * dtype.itemsize
    value = values.get((f"{name}/" + (".".join("0" * len(shape)) or "0")).encode())
    if isinstance(value, bytes):
        return np.frombuffer(value, dtype).reshape(shape) if len(value) == nbytes else None
    match = _VALUE_REF.match(value or "")
    if not match or int(match.group(4)) != nbytes:
        return None
    root = (folder / PARAMS).absolute()
    path = (root / match.group(1) / match.group(2)).resolve()
    if root.resolve() not in path.parents or path.stat().st_size < int(match.group(3)) + nbytes:
        return None
    return LazyTensor(path, int(match.group(3)), dtype, shape)


def _zarr_dtype(text: str):
    """A zarr v2 dtype string ("<f4", "bfloat16", "|i1") as a dtype; None for big-endian or unknown."""
    try:
        dtype = np.dtype(text)
    except TypeError:
        try:
            return jax.numpy.dtype(text)
        except TypeError:
            return None
    return dtype if dtype.byteorder in ("=", "<", "|") else None


def _restore_with_orbax(folder: Path, target: dict, sizes: dict, progress, placing: _Placing) -> dict:
    """{name: array on its devices} of `target`'s parameters, restored by orbax in groups of about
    RESTORE_GROUP_BYTES (at least the largest parameter): orbax reads at most about that much at
    once, and a group's copies to the devices overlap the next group's read (two groups in flight).
    A kernel quantized here is restored onto the host (numpy) and quantized there (`placing`)."""
    import orbax.checkpoint as ocp

    group_bytes = max([RESTORE_GROUP_BYTES, *(sizes[k] for k in target)])
    groups, size = [[]], 0
    for k in target:
        if groups[-1] and size + sizes[k] > group_bytes:
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += sizes[k]
    checkpointer = _checkpointer(group_bytes)  # orbax refuses a read larger than its limit
    out, pending = {}, []

    def settle(names, restored):  # a group counts once its copies to the devices are complete
        jax.block_until_ready(restored)
        for k in names:
            value = restored.pop(k)
            if placing.paths[k] in placing.here:
                out.update(placing.host(k, value))
            else:
                out[k] = value
            del value
            report(progress, k, sizes[k])

    for names in groups:
        item = {k: target[k] for k in names}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        for k in names:
            if placing.paths[k] in placing.here:  # onto the host, in float32, to be quantized there
                restore_args[k] = ocp.RestoreArgs(restore_type=np.ndarray, dtype=target[k].dtype)
        args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        try:
            restored = checkpointer.restore((folder / PARAMS).absolute(), args=args)
        except Exception as err:  # noqa: BLE001 - a damaged or partial folder: orbax raises ValueError, KeyError, or an
            cause = err.__cause__  # Exception("Encountered error while reading array index") over tensorstore's ValueError
            if isinstance(err, (OSError, ValueError, KeyError)):
                raise _unreadable(folder, err) from None
            if type(err) is Exception and isinstance(cause, (OSError, ValueError)):
                raise _unreadable(folder, cause) from None
            raise
        # Two groups in flight: this one's copies to the devices run while the next is read.
        if pending:
            settle(*pending.pop())
        pending.append((names, restored))
    for names, restored in pending:
        settle(names, restored)
    return out


def _saved_bytes(entry, shape) -> int:
    """Bytes of a saved parameter by its marker entry ({shape, dtype}), 0 when unknown."""
    try:
        return math.prod(shape) * jax.numpy.dtype(entry["dtype"]).itemsize
    except (TypeError, KeyError):
        return 0


class ConvertedCheckpoint:
    """A folder written by `python -m jaxllm.convert`: orbax parameters beside the HF side files."""

    def __init__(self, path: Path):
        self.path = path
        self.dtype = self.load_dtype = read_marker(path).get("dtype")
        self.raw = read_config(path)
        self.generation_config = read_generation_config(path)

    def problems(self, arch, cfg, abstract) -> list[str]:
        return problems(self.path, abstract)

    def size(self, arch, cfg, abstract) -> int:
        return len(jax.tree.leaves(abstract))

    def read(self, arch, cfg, abstract, dtype, shardings=None, progress=None):
        return restore(self.path, abstract, dtype, shardings, progress)
