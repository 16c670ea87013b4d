"""jaxllm's own checkpoint format, written by `python -m jaxllm.convert`: Flax parameters saved with
orbax, beside the Hugging Face config and tokenizer files, so `jaxllm.load` restores it (straight
onto the shards of a mesh) without converting again.

    DST/
      config.json, generation_config.json, tokenizer files   as in the HF checkpoint
      params/      orbax (StandardCheckpointer): {"model.layers.0.self_attn.q_proj.kernel": array, ...}
      jaxllm.json  format, dtype, architecture, source, and every parameter's shape; written last

Parameters are saved as a flat dict keyed by their dotted path, which any orbax version reads back
without knowing our module tree.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from jaxllm.checkpoint import read_config, read_generation_config, read_json
from jaxllm.errors import CheckpointError
from jaxllm.models.weights import flat_params, unflatten_into

MARKER = "jaxllm.json"
FORMAT = "jaxllm-orbax"
VERSION = 2  # 2: Dense kernels stored [out..., in...] (version 1 stored [in..., out...])
PARAMS = "params"


def is_converted(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).exists()


def key(path: tuple) -> str:
    return ".".join(map(str, path))


def _checkpointer():
    """Orbax's PyTree checkpointer, uncompressed: zstd saves ~20% of disk on bf16 weights but
    decoding it made restores ~1.6x slower (benchmarks/convert_timing.py, docs/benchmarks.md)."""
    import orbax.checkpoint as ocp

    try:
        handler = ocp.PyTreeCheckpointHandler(use_compression=False)
    except TypeError:  # an orbax without the switch: compressed, still readable
        handler = ocp.PyTreeCheckpointHandler()
    return ocp.Checkpointer(handler)


def save(folder: Path, params, meta: dict) -> None:
    """Write the parameters (orbax) and then the marker into `folder`, which must be new."""
    import orbax.checkpoint as ocp

    flat = {key(p): v for p, v in flat_params(params).items()}
    _checkpointer().save((folder / PARAMS).absolute(), args=ocp.args.PyTreeSave(flat))
    manifest = {k: {"shape": list(v.shape), "dtype": np.dtype(v.dtype).name} for k, v in flat.items()}
    marker = dict(format=FORMAT, version=VERSION, **meta, params=manifest)
    (folder / MARKER).write_text(json.dumps(marker, indent=1))


def read_marker(folder: Path) -> dict:
    marker = read_json(folder / MARKER, MARKER)
    if marker.get("format") != FORMAT or not isinstance(marker.get("params"), dict):
        raise CheckpointError(f"{folder / MARKER} is not a jaxllm checkpoint marker: re-run python -m jaxllm.convert")
    if marker.get("version", 0) != VERSION:
        newer = marker.get("version", 0) > VERSION
        raise CheckpointError(f"{folder} was written by {'a newer' if newer else 'an older'} jaxllm (format "
                              f"{marker.get('version')}, this one reads {VERSION}): "
                              + ("upgrade jaxllm" if newer else "convert the original checkpoint again"))
    if not (folder / PARAMS).is_dir():
        raise CheckpointError(f"{folder} has no {PARAMS}/ folder: the conversion is incomplete; convert again")
    return marker


def problems(folder: Path, abstract) -> list[str]:
    """Every missing, unexpected and mis-shaped parameter of the saved tree against the model."""
    saved = read_marker(folder)["params"]
    want = {key(p): tuple(v.shape) for p, v in flat_params(abstract).items()}
    found = [f"missing {k} (expected shape {list(s)})" for k, s in want.items() if k not in saved]
    found += [f"{k} has shape {saved[k]['shape']}, expected {list(s)}"
              for k, s in want.items() if k in saved and tuple(saved[k]["shape"]) != s]
    return found + [f"unexpected {k}" for k in saved if k not in want]


def restore(folder: Path, abstract, dtype, shardings: dict | None = None, progress=None):
    """The parameter state of `abstract`, read from `folder` in `dtype` (cast on read when the saved
    dtype differs). `shardings` {path: Sharding}: each device reads only its own shards."""
    flat = flat_params(abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {key(p): jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=(shardings or {}).get(p, device))
              for p, leaf in flat.items()}
    import orbax.checkpoint as ocp

    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    try:
        restored = _checkpointer().restore((folder / PARAMS).absolute(), args=args)
    except (OSError, ValueError, KeyError) as err:  # how orbax and tensorstore report a damaged or partial folder
        raise CheckpointError(f"could not read the parameters in {folder / PARAMS} ({type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}); convert again") from None
    out = {}
    for p, leaf in flat.items():
        value = restored.pop(key(p))
        out[p] = value
        if progress is not None:
            progress(key(p))
    return unflatten_into(abstract, out)


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
