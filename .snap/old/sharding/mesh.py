"""Device meshes from a spec string: "tp=4", "dp=2,tp=4", "fsdp=8", "auto".

Every mesh has the same three axes, in this order, size 1 when the spec leaves one out:
  dp    data parallel: the batch (and the KV cache's batch rows)
  fsdp  parameters' embed dimension split across devices (gathered per layer by XLA)
  tp    tensor parallel: attention heads, MLP hidden, vocabulary
so the rules table can name any axis whatever the spec. "auto" puts every device on tp, the best
layout for decode. The devices are `jax.devices()`: under jax.distributed that is every process's
devices, so one spec describes the whole (multi-host) mesh.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import Mesh

from jaxllm.errors import ConfigError

AXES = ("dp", "fsdp", "tp")
_ITEM = re.compile(r"^\s*([a-z]+)\s*=\s*(\d+)\s*$")


def parse_spec(spec: str, n_devices: int) -> dict[str, int]:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"mesh spec {spec!r} is empty: use e.g. 'tp=4', 'dp=2,tp=4' or 'auto'")
    if spec.strip() == "auto":
        return {"dp": 1, "fsdp": 1, "tp": n_devices}
    sizes = {a: 1 for a in AXES}
    seen = set()
    for item in spec.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(f"mesh spec item {item.strip()!r} is malformed: write axis=size, e.g. 'dp=2,tp=4'")
        axis, size = m.group(1), int(m.group(2))
        if axis not in AXES:
            raise ConfigError(f"mesh axis '{axis}' is unknown: use {', '.join(AXES)}")
        if axis in seen:
            raise ConfigError(f"mesh axis '{axis}' appears twice in {spec!r}")
        if size < 1:
            raise ConfigError(f"mesh axis '{axis}' has size {size}: sizes are whole numbers >= 1")
        seen.add(axis)
        sizes[axis] = size
    total = math.prod(sizes.values())
    if total != n_devices:
        raise ConfigError(
            f"mesh {spec!r} needs {total} devices but {n_devices} are available: make the sizes multiply to {n_devices}"
        )
    return sizes


def make_mesh(spec="auto", devices=None) -> Mesh:
    """A Mesh over `devices` (default: all of jax.devices()), or `spec` itself if it is a Mesh."""
    if isinstance(spec, Mesh):
        missing = [a for a in AXES if a not in spec.axis_names]
        if missing:
            raise ConfigError(f"mesh lacks axes {missing}: build it with jaxllm.sharding.make_mesh or name axes {AXES}")
        return spec
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_spec(spec, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in AXES])
    return Mesh(grid, AXES)


def describe(mesh: Mesh) -> str:
    return ",".join(f"{a}={mesh.shape[a]}" for a in AXES if mesh.shape[a] > 1) or "single device"
