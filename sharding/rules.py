"""Logical axis names -> mesh axes: the one table that decides sharding.

Model code names its parameter axes ("embed", "q_heads", ...); this table says which mesh axis
splits each. Changing strategy means changing the table, not the models.

A dimension that a mesh axis does not divide is an error, except kv heads: models often have
fewer kv heads than the tensor-parallel degree, and then the kv projections and the KV cache are
replicated over tp (every device keeps all kv heads; each query head still finds its kv head).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from flax import nnx

from jaxllm.errors import ConfigError

RULES: dict[str, str | None] = {
    "batch": "dp",
    "vocab": "tp",
    "embed": "fsdp",
    "q_heads": "tp",
    "kv_heads": "tp",
    "head_dim": None,
    "mlp": "tp",
    "norm": None,
    "cache_seq": None,
    "expert": None,  # expert parallelism comes with the MoE models
}
# Logical axes that fall back to replication when their mesh axis does not divide them.
REPLICATE_IF_UNEVEN = {"kv_heads"}


def spec_for(axes: tuple, shape: tuple, mesh: Mesh, rules: dict | None = None, what: str = "") -> PartitionSpec:
    rules = RULES if rules is None else rules
    out, used = [], set()
    for name, size in zip(axes, shape):
        mesh_axis = rules.get(name)
        if mesh_axis is None or mesh.shape[mesh_axis] == 1 or mesh_axis in used:
            out.append(None)
            continue
        n = mesh.shape[mesh_axis]
        if size % n:
            if name in REPLICATE_IF_UNEVEN:
                out.append(None)
                continue
            raise ConfigError(
                f"{what or 'a parameter'}: its '{name}' dimension ({size}) is not divisible by {mesh_axis}={n}: "
                f"choose a {mesh_axis} size that divides {size}"
            )
        out.append(mesh_axis)
        used.add(mesh_axis)
    return PartitionSpec(*out)


def param_axes(abstract_state) -> dict[tuple, tuple]:
    """{parameter path: logical axes} from the `axes` metadata the models attach."""
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        axes = getattr(var, "axes", None)
        if axes is None:
            raise AssertionError(f"parameter {path} has no logical axes")
        out[tuple(path)] = tuple(axes)
    return out


def param_shardings(abstract_state, mesh: Mesh, rules: dict | None = None) -> dict[tuple, NamedSharding]:
    shapes = {tuple(p): v.get_value().shape for p, v in nnx.to_flat_state(abstract_state)}
    return {
        path: NamedSharding(mesh, spec_for(axes, shapes[path], mesh, rules, "/".join(map(str, path))))
        for path, axes in param_axes(abstract_state).items()
    }


def placer(abstract_state, mesh: Mesh, rules: dict | None = None):
    """A `place(path, host_array, leaf)` for jaxllm.weights.load_params: each process builds only the
    shards its own devices hold, straight from the host copy of the tensor."""
    return placer_from(param_shardings(abstract_state, mesh, rules))


def placer_from(shardings: dict) -> callable:
    """A `place(path, host_array, leaf)` that puts each parameter onto shardings[path]."""

    def place(path, host, leaf):
        sharding = shardings[tuple(path)]
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return place


def cache_sharding(mesh: Mesh, num_kv_heads: int, batch: int | None, rules: dict | None = None) -> NamedSharding:
    """KV cache [B, S, K, D]: batch over dp (batch=None: not split, as for one prefilled prompt),
    kv heads split as the kv projections are."""
    axes = ("batch" if batch else None, "cache_seq", "kv_heads", "head_dim")
    return NamedSharding(mesh, spec_for(axes, (batch or 1, 1, num_kv_heads, 1), mesh, rules, "the KV cache batch"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(x, mesh: Mesh | None):
    """A host array as a global array copied to every device of the mesh (works across processes:
    each process supplies its own devices' copies)."""
    import numpy as np

    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])
