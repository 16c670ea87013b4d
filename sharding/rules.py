"""Logical axis names -> mesh axes: the one table that decides sharding.

Model code names its parameter axes ("embed", "q_heads", ...); this table says which mesh axis
splits each. Changing strategy means changing the table, not the models. Names are per direction
where the two directions may want different splits: the embedding table's rows ("vocab_in", read
by a lookup) and the output head's ("vocab_out", a matmul).

A dimension that a mesh axis does not divide is an error, except kv heads: models often have
fewer kv heads than the tensor-parallel degree, and then the kv projections and the KV cache are
replicated over tp (every device keeps all kv heads; each query head still finds its kv head).
Linear-attention heads and quantization scale groups do the same (REPLICATE_IF_UNEVEN).
Two dimensions of one array mapped to the same mesh axis is an error too (a table that would
silently replicate one of them).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.errors import ConfigError

RULES: dict[str, str | None] = {
    "batch": "dp",  # rows of a batch: the engine's decode slots and prefill rows
    "kv_pages": "dp",  # the KV page pool's pages: each dp group owns a contiguous range
    # Replicated: a lookup reads one row per token, so a split table saves memory only. On GPUs,
    # XLA turns a batch-1 lookup into a dynamic slice before partitioning, and a slice of a split
    # table is an all-gather of the whole table on every decode step (Llama-3-8B at tp=2: 1.05 GB
    # a step, 1.9 ms; issue 15). A tied head reads this table whole on each device.
    "vocab_in": None,
    "vocab_out": "tp",
    "embed": "fsdp",
    # the token embedding's own width where it differs from the layers' (OPT's word_embed_proj_dim): its
    # projections in and out are small, whole on each device
    "word_embed": None,
    "q_heads": "tp",
    "kv_heads": "tp",
    "head_dim": None,
    # DeepSeek's latent attention: the low-rank q and kv latents every head reads (models/mla.py), whole on each device
    "latent": None,
    # DeepSeek Sparse Attention's indexer heads (models/sparse_attention.py): a small projection, whole on each device
    "index_heads": None,
    # Doge's dynamic-mask bias per kv head (models/doge.py: dt_proj's outputs, A), each from every head's values: whole on each device
    "mask_heads": None,
    "mlp": "tp",
    # Gated DeltaNet (models/linear_attention.py), split by head as attention is: its value heads (z,
    # b, a, the decay, out_proj's inputs, the delta rule's state), its key heads (the conv's weight),
    # and the conv's channels (in_proj_qkv's outputs, the conv state: per key head its q, k and its
    # value heads' v, so a tp that divides the key heads splits them at heads; one that does not,
    # where they fall, still correct: the layer's heads are then whole on each device)
    "linear_k_heads": "tp",
    "linear_v_heads": "tp",
    "linear_channels": "tp",
    # The short conv's (LFM2) and Mamba2's channels, heads and states: whole on each device
    "recurrent": None,
    "norm": None,
    "streams": None,  # hyper-connections' streams (HY V4)
    "cache_seq": None,
    # Expert stacks [X, ...] and their quantization scales: each ep group of devices holds (and
    # runs, models/experts.py MoE) X / ep experts. The router's scores over the experts are not
    # split: every device routes every token.
    "expert": "ep",
    "router": None,
    # The scales of quantized kernels (models/quant.py), one per group of input values: split like
    # the inputs they scale, replicated when the mesh axis does not divide the number of groups.
    "embed_groups": "fsdp",
    "q_heads_groups": "tp",
    "mlp_groups": "tp",
    "latent_groups": None,
    "linear_v_heads_groups": "tp",
    "recurrent_groups": None,
}
# Logical axes that fall back to replication when their mesh axis does not divide them.
REPLICATE_IF_UNEVEN = {"kv_heads", "embed_groups", "q_heads_groups", "mlp_groups", "linear_v_heads_groups",
                       # fewer linear-attention heads than tp (as kv heads): that layer whole on each device
                       "linear_k_heads", "linear_v_heads", "linear_channels",
                       "vocab_out"}  # an untied head over a vocabulary tp does not divide (131 tokens): whole on each device


def spec_for(axes: tuple, shape: tuple, mesh: Mesh, what: str = "") -> PartitionSpec:
    """The PartitionSpec of an array whose dims carry logical `axes`, under RULES on `mesh`."""
    what = what or "an array"
    named = [(name, RULES[name]) for name in axes if name in RULES and RULES[name] is not None]
    taken = {}
    for name, mesh_axis in named:
        if mesh_axis in taken:
            raise ConfigError(f"{what}: its dimensions '{taken[mesh_axis]}' and '{name}' both map to mesh axis "
                              f"'{mesh_axis}' in jaxllm.sharding.RULES: map one of them elsewhere")
        taken[mesh_axis] = name
    out = []
    for name, size in zip(axes, shape):
        if name is None:  # a dimension no rule splits
            out.append(None)
            continue
        if name not in RULES:
            raise ConfigError(f"{what}: logical axis '{name}' has no entry in jaxllm.sharding.RULES: add one")
        mesh_axis = RULES[name]
        n = mesh.shape.get(mesh_axis, 1) if mesh_axis is not None else 1  # a hand-built Mesh may lack ep
        if n == 1:
            out.append(None)
            continue
        if size % n:
            if name in REPLICATE_IF_UNEVEN:
                out.append(None)
                continue
            article = "an" if mesh_axis[0] in "aefhilmnorsx" else "a"  # letters read by name: "an ep", "a tp"
            total = mesh.devices.size  # sizes that divide the dimension but not the device count are no fix
            fits = ", ".join(f"{mesh_axis}={d}" for d in range(1, total + 1) if total % d == 0 and size % d == 0)
            raise ConfigError(
                f"{what}: its '{name}' dimension ({size}) is not divisible by {mesh_axis}={n}: "
                f"choose {article} {mesh_axis} size that divides {size} and the {total} devices ({fits})"
                + (", or mesh 'auto'" if mesh_axis == "tp" else "")
            )
        out.append(mesh_axis)
    return PartitionSpec(*out)


def param_shardings(abstract_state, mesh: Mesh) -> dict[tuple, NamedSharding]:
    """{parameter path: NamedSharding} from the logical `axes` metadata every parameter carries."""
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        axes = getattr(var, "axes", None)
        if axes is None:
            raise AssertionError(f"parameter {path} has no logical axes")  # a model-file bug
        shape = var.get_value().shape
        out[tuple(path)] = NamedSharding(mesh, spec_for(tuple(axes), shape, mesh, "/".join(map(str, path))))
    return out


def pool_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """A KV page pool [pages, page_size, K, D]: pages split over dp (each dp group's contiguous
    range: the engine sizes the pool in dp equal parts), kv heads split as the kv projections are."""
    axes = ("kv_pages", "cache_seq", "kv_heads", "head_dim")
    pages = mesh.shape[RULES["kv_pages"]] if RULES["kv_pages"] else 1
    return NamedSharding(mesh, spec_for(axes, (pages, 1, num_kv_heads, 1), mesh, "the KV page pool"))


def dp_rows(mesh: Mesh) -> NamedSharding:
    """Arrays whose leading dimension is rows of a batch (the engine's slots, a call's rows, in dp
    equal blocks): split over dp, the rest replicated."""
    return NamedSharding(mesh, spec_for(("batch",), (mesh.shape[RULES["batch"]] if RULES["batch"] else 1,), mesh, "batch rows"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(x, mesh: Mesh | None):
    """A host array as a global array copied to every device of the mesh (works across processes:
    each process supplies its own devices' copies)."""
    x = np.asarray(x)
    if mesh is None:
        return jax.numpy.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])
