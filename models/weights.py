"""From Hugging Face tensors to our parameter tree: the name map a model declares (WeightSpec,
each naming a transform of models/transforms.py), the check of a checkpoint against the map, and
the streaming fill.

A model file says *what* goes where (a list of WeightSpec); this file does the I/O once for all.
Target shapes come from the model's abstract parameters, so a transform only needs to know how the
HF layout relates to ours (models/transforms.py).
"""

from __future__ import annotations

import collections
import functools
import math
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.errors import CheckpointError
from jaxllm.models import quant
from jaxllm.models.transforms import BLOCK_BYTES, Copy, read_rows, read_whole

LOAD_THREADS = min(4, os.cpu_count() or 1)  # threads reading, transforming, casting and placing tensors at once
MIN_BUFFER_BYTES = 64 << 20  # host bytes read ahead: the largest tensor's, at least this


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


class Renamed:
    """A tensor source read under other names: `renamed` {name read: the source's name}; the
    source's other names as they are."""

    def __init__(self, source, renamed: dict[str, str]):
        self.source, self.renamed = source, renamed
        taken = set(renamed.values())
        self._names = [n for n in source.names() if n not in taken] + list(renamed)

    def names(self):
        return self._names

    def shape(self, name):
        return self.source.shape(self.renamed.get(name, name))

    def dtype(self, name):
        return dtype_of(self.source, self.renamed.get(name, name))

    def get(self, name):
        return self.source.get(self.renamed.get(name, name))


def saved_as(names: dict[str, str]):
    """A family's `tensors` (Architecture.tensors) for checkpoints that name modules as transformers' classes do
    (`{ours: saved}`: `.{ours}.` in a name) where the weight map reads the names transformers saves them under
    (`.{saved}.`, its conversion mapping reversed on save): each such tensor is read under the saved name, unless
    the file holds that name as well."""

    def tensors(source):
        present = set(source.names())
        theirs = {n.replace(f".{ours}.", f".{saved}."): n for n in present for ours, saved in names.items() if f".{ours}." in n}
        theirs = {saved: n for saved, n in theirs.items() if saved not in present}
        return Renamed(source, theirs) if theirs else source

    return tensors


class ZeroScoreBiases(Renamed):
    """A tensor source whose routers lacking a score bias read one of zeros: each `P.gate.weight` [X, E] without
    `P.gate.e_score_correction_bias` gains it, float32 [X] (A.X-K1's checkpoints route without one, and
    transformers leaves its buffer at zeros)."""

    def __init__(self, source):
        super().__init__(source, {})
        present = set(source.names())
        self.zeros = {n.removesuffix("weight") + "e_score_correction_bias": source.shape(n)[0] for n in present
                      if n.endswith(".gate.weight")}
        self.zeros = {n: x for n, x in self.zeros.items() if n not in present}
        self._names = self._names + list(self.zeros)

    def shape(self, name):
        return (self.zeros[name],) if name in self.zeros else super().shape(name)

    def dtype(self, name):
        return np.dtype(np.float32) if name in self.zeros else super().dtype(name)

    def get(self, name):
        return np.zeros(self.zeros[name], np.float32) if name in self.zeros else super().get(name)


class _ExpertWeight:
    """Expert j's nn.Linear weight [out, in] within a fused experts tensor `fused` [X, out', in] (rows
    [lo, hi) of its slice), or, `transposed`, [X, in, out'] (the columns, transposed); read lazily, one
    expert's slice at a time."""

    def __init__(self, fused, j: int, lo: int, hi: int, transposed: bool):
        self.fused, self.j, self.lo, self.hi, self.transposed = fused, j, lo, hi, transposed
        self.dtype = fused.dtype
        self.shape = (hi - lo, fused.shape[1] if transposed else fused.shape[2])

    def read(self, start=0, stop=None):
        whole = np.asarray(read_rows(self.fused, self.j, self.j + 1)[0])
        part = whole[:, self.lo : self.hi].T if self.transposed else whole[self.lo : self.hi]
        return part[start : self.shape[0] if stop is None else stop]

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype)


def split_experts(source):
    """`source`, each pair of fused expert tensors `P.gate_up_proj` [X, 2F, E] (every expert's gate rows, then
    its up rows) and `P.down_proj` [X, E, F] read as the per-expert nn.Linear weights `P.{j}.gate_proj.weight`,
    `P.{j}.up_proj.weight`, `P.{j}.down_proj.weight` (Qwen3-VL-MoE's experts, as transformers 5 saves them), or
    the same transposed, [X, E, 2F] and [X, F, E] (as Qwen's released checkpoints hold them; told apart by how
    the pair's shapes fit, as transformers' loading does by its parameters' shapes); its other tensors as they are."""
    names = source.names()
    split = {}
    for fused in (n for n in names if n.endswith(".gate_up_proj")):
        prefix = fused[: -len("gate_up_proj")]
        if prefix + "down_proj" not in names:
            continue
        (x, a, b), (_, c, d) = source.shape(fused), source.shape(prefix + "down_proj")
        if (a, b) == (2 * d, c):
            transposed, width, embed = False, d, c
        elif (a, b) == (d, 2 * c):
            transposed, width, embed = True, c, d
        else:
            raise CheckpointError(f"fused experts {fused} {[x, a, b]} and {prefix}down_proj {[x, c, d]} do not pair up "
                                  "([experts, 2 x width, hidden] and [experts, hidden, width], or both transposed): "
                                  "download the checkpoint again")
        for j in range(x):
            split[f"{prefix}{j}.gate_proj.weight"] = (fused, j, 0, width, transposed)
            split[f"{prefix}{j}.up_proj.weight"] = (fused, j, width, 2 * width, transposed)
            split[f"{prefix}{j}.down_proj.weight"] = (prefix + "down_proj", j, 0, embed, transposed)
    return _SplitExperts(source, split) if split else source


class _SplitExperts:
    """A tensor source with the per-expert weights `split` names ({name: (fused name, expert, lo, hi,
    transposed)}) in place of their fused tensors (split_experts)."""

    def __init__(self, source, split: dict):
        self.source, self.split = source, split
        taken = {part[0] for part in split.values()}
        self._names = [n for n in source.names() if n not in taken] + list(split)

    def names(self):
        return self._names

    def get(self, name):
        if name in self.split:
            fused, *where = self.split[name]
            return _ExpertWeight(self.source.get(fused), *where)
        return self.source.get(name)

    def shape(self, name):
        if name in self.split:
            fused, _, lo, hi, transposed = self.split[name]
            shape = self.source.shape(fused)
            return (hi - lo, shape[1] if transposed else shape[2])
        return self.source.shape(name)

    def dtype(self, name):
        return dtype_of(self.source, self.split[name][0] if name in self.split else name)


def prefix_renamed(source, theirs: str, ours: str):
    """`source`, each tensor it names `theirs`... read as `ours`... (Nemotron-H's and Mamba2's Hub checkpoints name the
    base model backbone., transformers' classes model.: its conversion_mapping's WeightRenaming)."""
    renamed = {ours + n[len(theirs):]: n for n in source.names() if n.startswith(theirs)}
    return Renamed(source, renamed) if renamed else source


def base_model_names(source, specs: Iterable[WeightSpec], prefix: str):
    """`source`, each tensor the weight map reads as `prefix.NAME` that it holds as NAME alone read
    under the prefixed name: a checkpoint saved from the base model (GPT2Model, LlamaModel) names
    its tensors without transformers' base_model_prefix, which transformers adds per tensor when it
    loads one into the model with a head (openai-community/gpt2 holds h.0.attn.c_attn.weight)."""
    start = prefix + "."
    names = set(source.names())
    renamed = {n: n[len(start):] for s in specs for n in s.hf_names
               if n.startswith(start) and n not in names and n[len(start):] in names}
    return Renamed(source, renamed) if renamed else source


def wrapped_names(source, specs: Iterable[WeightSpec], module: str, prefix: str, head: str = "lm_head.weight"):
    """`source`, each tensor the weight map reads as NAME that it holds as a multimodal wrapper
    holds its text model's, read under NAME: `module.NAME` (the text model with its head as the
    wrapper's attribute `module`, as transformers 4.x saves it: language_model.model.layers.0...,
    language_model.lm_head.weight), or for NAME = `prefix.REST` (the base model's tensors, `prefix`
    the family's base_model_prefix) `module.model.REST` (what 5.x writes, whatever the family's
    prefix: language_model.model.h.0... for GPT-2's transformer.h.0...) or `model.module.REST` (5.x's
    classes: model.language_model.layers.0...); the family's head `head` (GPT-NeoX's embed_out.weight)
    as the wrapper's own, `module.lm_head.weight` or lm_head.weight."""
    names = set(source.names())
    renamed = {}
    for n in (n for s in specs for n in s.hf_names if n not in names):
        stored = [f"{module}.{n}"]
        if n.startswith(prefix + "."):
            rest = n[len(prefix) + 1:]
            stored += [f"{module}.model.{rest}", f"model.{module}.{rest}"]
        elif n == head:
            stored += [f"{module}.lm_head.weight", "lm_head.weight"]
        found = next((m for m in stored if m in names), None)
        if found is not None:
            renamed[n] = found
    return Renamed(source, renamed) if renamed else source


EMBEDDING = ("model", "embed_tokens", "embedding")  # every family's input embedding, as a parameter path


def tied_names(source, specs: Iterable[WeightSpec], head: str):
    """`source`, a tied model's token embedding read from its output head's tensor `head` where the
    checkpoint holds that name alone (saved by a tool that kept the head's name of the shared
    tensor): transformers ties the two whichever name the file keeps. An untied model (its weight
    map reads `head`) or a checkpoint with its embedding: `source` as it is."""
    specs = list(specs)
    embed = next((s.hf_name for s in specs if s.path == EMBEDDING), None)
    names = set(source.names())
    if embed is None or embed in names or head not in names or any(head in s.hf_names for s in specs):
        return source
    return Renamed(source, {embed: head})


def same_values(a, b) -> bool:
    """Whether two (lazy) tensors hold the same shape and values (compared as float32, by row
    blocks, stopping at the first block that differs)."""
    shape = tuple(a.shape)
    if shape != tuple(b.shape):
        return False
    if not shape:
        return bool(np.asarray(read_whole(a), np.float32) == np.asarray(read_whole(b), np.float32))
    step = max(1, BLOCK_BYTES // max(1, 4 * math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        if not np.array_equal(np.asarray(read_rows(a, start, start + step), np.float32),
                              np.asarray(read_rows(b, start, start + step), np.float32)):
            return False
    return True


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


def raise_problems(found: list[str], n_tensors: int, where: str = "the checkpoint", described_by: str = "config.json",
                   fix: str = "") -> None:
    """Raise one CheckpointError listing every problem `problems` found (none: return): what `where`
    holds against the `n_tensors`-tensor model `described_by` describes, then `fix`."""
    if found:
        shown = "; ".join(found[:12]) + (f"; and {len(found) - 12} more" if len(found) > 12 else "")
        count = f"{len(found)} problem{'s' if len(found) > 1 else ''}"
        raise CheckpointError(f"{where} does not match the {n_tensors}-tensor model its {described_by} describes ({count}): "
                              f"{shown}" + (f"; {fix}" if fix else ""))


def dtype_of(source, name):
    """The dtype tensor `name` of `source` holds, read from its header (a source without `dtype`,
    such as a GGUF file's, which dequantizes every tensor to float32: None)."""
    return source.dtype(name) if hasattr(source, "dtype") else None


FLOAT_ONLY = "values where a float weight belongs"  # in each not_float line


def not_float(name: str, dtype) -> str | None:
    """Why tensor `name` cannot fill a float weight (it holds integers or booleans), or None: every
    parameter is a float weight, and a cast would turn integers into garbage silently."""
    if dtype is None or jnp.issubdtype(dtype, jnp.floating):
        return None
    return (f"tensor {name} holds {np.dtype(dtype).name} {FLOAT_ONLY}: "
            "save it as float32, bfloat16 or float16")


def problems(source, specs: Iterable[WeightSpec], abstract_state, ignore: Iterable[str] = ()) -> list[str]:
    """Every missing, unexpected, mis-shaped and non-float tensor of `source` against the weight
    map, one line each (what load_params would refuse, from the headers alone)."""
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
        if hasattr(s.transform, "hf_shapes"):  # several tensors joined (transforms.Concatenated): their sum checked
            found += _joined_problems(s, want, source, names)
            reported.update(s.hf_names)
            continue
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
            wrong = not_float(name, dtype_of(source, name))
            if wrong:
                found.append(wrong)
    patterns = [re.compile(p) for p in ignore]
    extra = sorted(n for n in names - expected if not any(p.match(n) for p in patterns))
    return found + [f"unexpected {n}" for n in extra]


def place(host: np.ndarray, sharding=None) -> jax.Array:
    """A host array on devices: the default device, or straight onto the shards of `sharding`
    (each process builds only its own devices' slices, so this works across hosts; a slice of a
    file's memory map reads only its pages)."""
    if sharding is None:
        return jax.device_put(_owned(host, jax.local_devices()[0]))
    if not isinstance(host, np.ndarray):
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    indices = sharding.addressable_devices_indices_map(host.shape)
    devices = list(indices)
    shards = jax.device_put([_owned(host[indices[d]], d) for d in devices], devices)
    return jax.make_array_from_single_device_arrays(host.shape, sharding, shards)


def _owned(x, device):
    """`x` as device_put may take it for `device`. A CPU device aliases a read-only host array
    rather than copying it (whatever may_alias says): memory numpy did not allocate (a view of a
    file's memory map) is copied there into an aligned read-only array of our own, which the
    device then keeps (one copy, as on an accelerator; never a parameter over a file that may
    change)."""
    if device.platform != "cpu" or not isinstance(x, np.ndarray) or not _borrowed(x):
        return x
    buf = np.empty(x.nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64  # XLA's CPU buffers are 64-byte aligned: then it aliases instead of copying again
    out = buf[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    np.copyto(out, x)
    out.flags.writeable = False
    return out


def _borrowed(x) -> bool:
    """Whether `x` views memory numpy did not allocate (a memory map, a buffer)."""
    while isinstance(x, np.ndarray):
        if x.base is None:
            return False
        x = x.base
    return True


def _prefetch(x) -> None:
    """Ask the kernel to read ahead the file pages under `x` (a view of a memory map), so that
    the disk works while earlier tensors are placed; the pages are mapped only when touched."""
    mapped = x
    while isinstance(mapped, np.ndarray):
        mapped = mapped.base
    if not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_WILLNEED") or x.size == 0:
        return
    try:
        low, high = _byte_bounds(x)
        start = low - np.frombuffer(mapped, np.uint8).ctypes.data
        start -= start % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_WILLNEED, start, min(high - low + mmap.PAGESIZE, len(mapped) - start))
    except (OSError, ValueError):  # advice only
        pass


def _byte_bounds(x: np.ndarray) -> tuple[int, int]:
    try:
        from numpy.lib.array_utils import byte_bounds  # numpy 2
    except ImportError:
        byte_bounds = np.byte_bounds
    return byte_bounds(x)


def _load_one(spec: WeightSpec, target, source, params: dict, shardings: dict) -> dict:
    """One spec's parameters on their devices, on a loading thread: read, transform, cast, quant's
    pieces, placed; returns once the copies are complete, so its host buffers are gone with it."""
    host = spec.transform(_floats(spec, spec.read(source)), target.shape, target.dtype)
    pieces = quant.pieces(spec.path, host, params)
    del host
    return place_ready(pieces, shardings)


def place_ready(pieces: dict, shardings: dict) -> dict:
    """{key: host array} on their devices (shardings[key], or the default device), the file pages
    under them read ahead; returns once the copies are complete, so the host buffers can go
    (device_put is asynchronous). A sharding that spans processes: only this process's slices."""
    for k, piece in pieces.items():
        sharding = shardings.get(k)
        if sharding is None or sharding.is_fully_addressable:
            _prefetch(piece)
    return jax.block_until_ready({k: place(piece, shardings.get(k)) for k, piece in pieces.items()})


def load_params(source, specs: Iterable[WeightSpec], abstract_state, dtype, shardings: dict | None = None, progress=None,
                threads: int | None = None, buffer_bytes: int | None = None):
    """Fill the abstract state, HF tensor by HF tensor: read, transform, cast, place (onto
    shardings[path] when given), on `threads` loading threads, so that the disk, the host's
    copies and the transfers to the devices of several tensors overlap.

    Host memory stays near one tensor: a tensor is started only while the host bytes of the
    tensors started and not yet on their devices stay within `buffer_bytes` (default: the
    largest tensor's, at least MIN_BUFFER_BYTES; one tensor always goes), and a tensor counts
    until its copies to the devices are complete. `progress(name)` after each tensor, in order;
    a progress object with `expect_bytes(total)` gets that first, then `progress(name, nbytes)`."""
    params = flat_params(abstract_state)
    specs, shardings = list(specs), shardings or {}
    targets = [quant.float_target(spec.path, params, jnp.dtype(dtype)) for spec in specs]
    costs = [math.prod(t.shape) * np.dtype(t.dtype).itemsize for t in targets]
    if hasattr(progress, "expect_bytes"):
        progress.expect_bytes(sum(costs))
    jobs = [(spec.hf_names[-1], cost, functools.partial(_load_one, spec, target, source, params, shardings))
            for spec, target, cost in zip(specs, targets, costs)]
    filled = {}
    for placed in in_order(jobs, progress, threads, buffer_bytes):
        filled.update(placed)
    return unflatten_into(abstract_state, filled)


def in_order(jobs, progress=None, threads: int | None = None, budget: int | None = None) -> list:
    """[fn() for (name, host bytes, fn) in jobs], run on `threads` loading threads (default
    LOAD_THREADS) so that several overlap, started in order and only while the host bytes of the
    jobs started and not yet done stay within `budget` (default: the largest job's, at least
    MIN_BUFFER_BYTES; one job always goes). `report(progress, name, bytes)` after each, in order.
    A failure (or Ctrl-C) lets the jobs under way end, starts no more, and propagates."""
    jobs = list(jobs)
    budget = budget or max([MIN_BUFFER_BYTES, *(cost for _, cost, _ in jobs)])
    results, pending, in_flight, i = [], collections.deque(), 0, 0
    pool = ThreadPoolExecutor(max_workers=threads or LOAD_THREADS, thread_name_prefix="jaxllm-load")
    try:
        while i < len(jobs) or pending:
            while i < len(jobs) and (not pending or in_flight + jobs[i][1] <= budget):
                name, cost, fn = jobs[i]
                pending.append((name, cost, pool.submit(fn)))
                in_flight += cost
                i += 1
            name, cost, future = pending.popleft()
            results.append(future.result())
            in_flight -= cost
            report(progress, name, cost)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failure or Ctrl-C: the jobs under way end first
        pending.clear()
    return results


def report(progress, name: str, nbytes: int) -> None:
    """Tell `progress` that tensor `name` is on its devices: with its bytes when it counts bytes
    (it has `expect_bytes`, and was told the total), else by name; None: nothing."""
    if hasattr(progress, "expect_bytes"):
        progress(name, nbytes)
    elif progress is not None:
        progress(name)


def _floats(spec: WeightSpec, tensors):
    """`tensors` (what spec.read gave), or a CheckpointError naming the first that is not floating
    point (`not_float`; `problems` reports the same from the headers)."""
    for name, x in zip(spec.hf_names, tensors if isinstance(spec.hf_name, tuple) else [tensors]):
        wrong = not_float(name, x.dtype)
        if wrong:
            raise CheckpointError(wrong)
    return tensors


def _joined_problems(spec: WeightSpec, want: tuple, source, names) -> list[str]:
    """What is wrong with the tensors a Concatenated spec joins: one missing, or rows that do not add up to `want`."""
    missing = [f"missing {n} (part of {list(want)} joined)" for n in spec.hf_names if n not in names]
    if missing:
        return missing
    shapes = [tuple(source.shape(n)) for n in spec.hf_names]
    if any(s[1:] != tuple(want[1:]) for s in shapes) or sum(s[0] for s in shapes) != want[0]:
        return [f"{' + '.join(spec.hf_names)} have shapes {[list(s) for s in shapes]}, expected {list(want)} joined along "
                "the first dim"]
    return [w for w in (not_float(n, dtype_of(source, n)) for n in spec.hf_names) if w]


def _hf_shapes(spec: WeightSpec, shape) -> list[tuple]:
    """The HF shape of each of the spec's tensors, from our parameter's shape."""
    if hasattr(spec.transform, "hf_shapes"):
        return spec.transform.hf_shapes(shape)
    return [spec.transform.hf_shape(shape)] * len(spec.hf_names)


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
        outs = [pending.setdefault(name, np.empty(shape, value.dtype)) for name, shape in zip(spec.hf_names, _hf_shapes(spec, value.shape))]
        spec.transform.export(value, outs if isinstance(spec.hf_name, tuple) else outs[0])
        del value
        for name in spec.hf_names:
            if last_use[name] == i:
                yield name, pending.pop(name)


def hf_layout(specs: Iterable[WeightSpec], shapes: dict[tuple, tuple]) -> dict[str, tuple]:
    """{HF name: HF shape} of every tensor the weight map reads, from our parameter shapes."""
    return {name: tuple(shape) for spec in specs for name, shape in zip(spec.hf_names, _hf_shapes(spec, shapes[spec.path]))}


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
