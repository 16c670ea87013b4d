"""Device meshes from a spec string: "tp=4", "dp=2,tp=4", "fsdp=8", "ep=2,tp=4", "auto".

Every mesh has the same four axes, size 1 when the spec leaves one out:
  dp    data parallel: the batch (and the KV cache's batch rows)
  fsdp  parameters' embed dimension split across devices (gathered per layer by XLA)
  tp    tensor parallel: attention heads, MLP hidden, vocabulary
  ep    expert parallel: a mixture of experts' expert stacks (each device holds and runs its
        experts; models without experts are replicated over it)
so the rules table can name any axis whatever the spec (a Mesh built by hand gets the ones it
leaves out, of size 1). Devices are laid out dp, fsdp, ep, tp (tp innermost: neighbouring devices). "auto" puts
every device on tp, the best layout for decode; for a model (jaxllm.load), the most devices on tp
that its heads and MLP divide, the rest on dp (fitting_mesh: SmolLM2's 9 heads on 8 devices: dp=8). The devices are `jax.devices()`: under
jax.distributed that is every process's devices, so one spec describes the whole (multi-host) mesh.
"""

from __future__ import annotations

import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from jaxllm.errors import ConfigError

AXES = ("dp", "fsdp", "tp", "ep")
_LAYOUT = ("dp", "fsdp", "ep", "tp")  # the device grid's order: tp innermost
_ITEM = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(-?\d+)\s*$")


def parse_spec(spec: str, n_devices: int) -> dict[str, int]:
    """{axis: size} of a spec string, or a one-line ConfigError naming the bad part and the fix."""
    example = "e.g. 'tp=4', 'dp=2,tp=4' or 'auto'"
    if not isinstance(spec, str):
        raise ConfigError(f"mesh must be a spec string ({example}) or a jax Mesh, got {type(spec).__name__}")
    if not spec.strip():
        raise ConfigError(f"mesh spec is empty: use {example}")
    if spec.strip().lower() == "auto":
        return {"dp": 1, "fsdp": 1, "tp": n_devices, "ep": 1}
    sizes = {a: 1 for a in AXES}
    seen = set()
    for item in spec.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(f"mesh spec item {item.strip()!r} of {spec!r} is malformed: write axis=size with axes "
                              f"{', '.join(AXES)} and whole-number sizes, {example}")
        axis, size = m.group(1).lower(), m.group(2)
        if axis not in AXES:
            raise ConfigError(f"mesh axis {m.group(1)!r} in {spec!r} is unknown: use {', '.join(AXES)}")
        if axis in seen:
            raise ConfigError(f"mesh axis '{axis}' appears twice in {spec!r}: give each axis once, e.g. 'dp=2,tp=4'")
        if not size.isdigit() or int(size) < 1:
            raise ConfigError(f"mesh axis '{axis}' has size {size} in {spec!r}: sizes are whole numbers >= 1")
        seen.add(axis)
        sizes[axis] = int(size)
    total = math.prod(sizes.values())
    if total != n_devices:
        # the split kept with dp over the rest: not where the spec names dp ('dp=1' was shown as 'dp=8,dp=1', refused)
        fill = f"dp={n_devices // total}," if n_devices % total == 0 and "dp" not in seen else ""
        keep = f", or keep this split with '{fill}{spec.strip()}'" if fill else ""
        raise ConfigError(f"mesh {spec!r} needs {total} device{'s' if total != 1 else ''} but {n_devices} are available: make the sizes multiply "
                          f"to {n_devices}, e.g. 'tp={n_devices}' (or 'auto'){keep}; or show fewer devices "
                          "(CUDA_VISIBLE_DEVICES)")
    return sizes


def is_auto(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower() == "auto"


def fitting_mesh(fits, devices=None) -> Mesh:
    """"auto" for a model: dp x tp over `devices` (default: all) with the largest tp that
    `fits(mesh)` accepts (it raises ConfigError where tp does not divide the model's heads, MLP...)."""
    devices = _devices(devices)
    n = len(devices)
    for tp in [d for d in range(n, 0, -1) if n % d == 0]:
        mesh = make_mesh(f"dp={n // tp},tp={tp}", devices)
        try:
            fits(mesh)
        except ConfigError:
            if tp == 1:
                raise
            continue
        return mesh
    raise AssertionError("unreachable: tp=1 always returns or raises")


def _devices(devices):
    # By process, then id: a tp group no larger than one host's devices stays on that host (its fast
    # links), and the hosts spread over the outer axes.
    if devices is None:
        return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        raise ConfigError(f"mesh devices must be a list of jax devices (e.g. jax.devices()[:4]), got {type(devices).__name__}")
    devices = list(np.asarray(devices, dtype=object).ravel())
    _check_devices(devices)
    return devices


def _check_devices(devices) -> None:
    """A ConfigError unless `devices` are jax devices, at least one, each once (a Mesh of a device
    twice fails deep inside placement: 'the input arrays must be from distinct devices')."""
    if not devices:
        raise ConfigError("mesh devices are none: give at least one device, e.g. jax.devices()")
    odd = next((d for d in devices if not isinstance(d, jax.Device)), None)
    if odd is not None:
        raise ConfigError(f"mesh devices must be jax devices (from jax.devices()), got {type(odd).__name__}")
    seen = set()
    for d in devices:
        if d in seen:
            raise ConfigError(f"mesh devices repeat {d}: give each device once")
        seen.add(d)


def make_mesh(spec="auto", devices=None) -> Mesh:
    """A Mesh over `devices` (default: all of jax.devices()), or `spec` itself if it is a Mesh (with
    the axes it leaves out, of size 1, and Auto axis types: _own_mesh)."""
    if isinstance(spec, Mesh):
        return _own_mesh(spec)
    devices = _devices(devices)
    sizes = parse_spec(spec, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in _LAYOUT])
    return Mesh(grid, _LAYOUT)


def _own_mesh(mesh: Mesh) -> Mesh:
    """A hand-built Mesh as the models take it: the axes of AXES it leaves out added with size 1
    (jax.make_mesh((2, 4), ("dp", "tp")) is dp=2,tp=4), and Auto axis types. An axis of another
    name is refused where it has more than one device: nothing would be split over it, so its
    devices would silently hold and compute copies (a "model" axis meant as tp)."""
    foreign = [f"'{a}' (size {n})" for a, n in mesh.shape.items() if a not in AXES and n > 1]
    if foreign:
        axes, are = ("axes", "are none") if len(foreign) > 1 else ("axis", "is not one")
        raise ConfigError(f"mesh {axes} {', '.join(foreign)} {are} of {', '.join(AXES)}, so nothing would be split over "
                          "them: name the mesh's axes dp (batch), fsdp, tp (heads, MLP) or ep (experts), or build it with "
                          "jaxllm.sharding.make_mesh('dp=2,tp=4')")
    _check_devices(list(mesh.devices.ravel()))
    missing = tuple(a for a in AXES if a not in mesh.axis_names)
    if not missing and all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    # jax.make_mesh's default (Explicit) types every array's sharding, and the models' reshapes and
    # contractions then stop with a ShardingTypeError: the same devices and names, Auto.
    names = tuple(mesh.axis_names) + missing
    return Mesh(mesh.devices.reshape(mesh.devices.shape + (1,) * len(missing)), names, axis_types=(AxisType.Auto,) * len(names))


def describe(mesh: Mesh) -> str:
    return ",".join(f"{a}={mesh.shape.get(a, 1)}" for a in AXES if mesh.shape.get(a, 1) > 1) or "single device"
