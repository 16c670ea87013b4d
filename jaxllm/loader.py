"""`jaxllm.load`: a checkpoint (local folder, hub id, or .gguf file) into a LoadedModel.

The path: resolve the files -> read config.json -> registry entry -> ModelConfig -> abstract
module (shapes only, no memory) -> check every tensor against the weight map -> stream tensors
into place, one at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import checkpoint, converted, registry, weights
from jaxllm.config import ModelConfig
from jaxllm.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype '{dtype}' is not supported; use one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}' is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class LoadedModel:
    """A loaded checkpoint: pure data (config, graph definition, parameter pytree) plus helpers.

    `params` is an nnx.State pytree; `nnx.merge(graphdef, params)` gives the module back, and
    `module` does it for you.
    """

    config: ModelConfig
    graphdef: Any
    params: Any
    tokenizer: Any = None
    generation_config: dict = field(default_factory=dict)
    path: Path | None = None
    mesh: Any = None

    @property
    def module(self):
        return nnx.merge(self.graphdef, self.params)

    def logits(self, token_ids) -> jax.Array:
        """Full-sequence scoring without a cache: int [batch, seq] -> float32 [batch, seq, vocab]."""
        return self._run("logits", token_ids)

    def token_logprobs(self, token_ids) -> jax.Array:
        """log p(token t | tokens before t) for t >= 1: float32 [batch, seq - 1]."""
        return self._run("token_logprobs", token_ids)

    def hidden_states(self, token_ids) -> tuple[jax.Array, ...]:
        """num_layers + 1 arrays [batch, seq, hidden]: each layer's input, then the final normed
        output (transformers' `output_hidden_states`)."""
        return self._run("hidden_states", token_ids)

    def attention_weights(self, token_ids, layer: int) -> jax.Array:
        """Attention weights of one layer, float32 [batch, heads, seq, seq] (query rows, key columns)."""
        if not isinstance(layer, int) or not -self.config.num_layers <= layer < self.config.num_layers:
            raise ConfigError(f"layer {layer!r} does not exist: this model has layers 0..{self.config.num_layers - 1}")
        return self._run("attention_weights", token_ids, layer % self.config.num_layers)

    def _run(self, name: str, token_ids, *static):
        from jaxllm import research

        tokens = jnp.asarray(token_ids, jnp.int32)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ConfigError(f"token_ids must be [batch, seq] with seq >= 1, got shape {tuple(tokens.shape)}")
        bad = (tokens < 0) | (tokens >= self.config.vocab_size)
        if bool(bad.any()):
            raise ConfigError(f"token_ids must lie in [0, {self.config.vocab_size}): the vocabulary of this model")
        if self.mesh is not None:
            from jaxllm.sharding import put_replicated

            tokens = put_replicated(np.asarray(tokens), self.mesh)
        return research.jitted(name, self.mesh)(self.graphdef, self.params, tokens, *static)


def abstract_model(cfg: ModelConfig, arch: registry.Architecture, dtype):
    """(graphdef, abstract state): the module's structure with shapes, without allocating weights."""
    model = nnx.eval_shape(lambda: arch.module(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(model)


@dataclass
class Checkpoint:
    """A checkpoint opened but not read: its files, config and architecture; tensors on demand.

    `source` holds Hugging Face tensors (safetensors or GGUF, by HF name), or is None for a
    folder written by `python -m jaxllm.convert` (`converted`), whose parameters orbax restores."""

    path: Path
    raw: dict
    arch: registry.Architecture
    config: ModelConfig
    generation_config: dict
    source: Any  # tensors: names(), shape(name), get(name) -> lazy tensor; None when converted
    saved_dtype: str | None = None  # the dtype a converted checkpoint was saved in

    @property
    def converted(self) -> bool:
        return self.source is None

    @property
    def ignore(self) -> tuple[str, ...]:
        return self.arch.ignore + ((r"^lm_head\.weight$",) if self.config.tie_word_embeddings else ())

    def problems(self, abstract) -> list[str]:
        """Every missing, unexpected and mis-shaped tensor against the model, one line each."""
        if self.converted:
            return converted.problems(self.path, abstract)
        return weights.problems(self.source, self.arch.weight_map(self.config), abstract, self.ignore)

    def check(self, abstract) -> None:
        """Raise one CheckpointError listing every problem."""
        n = len(jax.tree.leaves(abstract)) if self.converted else len(self.arch.weight_map(self.config))
        weights.raise_problems(self.problems(abstract), n)

    def read_params(self, abstract, dtype, *, shardings=None, place=None, progress=None):
        """The parameter state, each tensor placed by `place` (or restored onto `shardings`)."""
        if self.converted:
            return converted.restore(self.path, abstract, dtype, shardings, place, progress)
        if place is None and shardings is not None:
            from jaxllm import sharding

            place = sharding.placer_from(shardings)
        return weights.load_params(self.source, self.arch.weight_map(self.config), abstract, dtype, place=place,
                                   progress=progress)


def open_checkpoint(path_or_id) -> Checkpoint:
    """Resolve a folder, hub id or .gguf file and read its config; no tensor is read."""
    path = checkpoint.resolve(path_or_id)
    saved_dtype = None
    if path.is_file() and path.suffix == ".gguf":
        from jaxllm import gguf

        source, raw, generation_config = gguf.open_checkpoint(path)
    elif path.is_dir():
        if converted.is_converted(path):
            saved_dtype = converted.read_marker(path).get("dtype")
        raw = checkpoint.read_config(path)
        generation_config = checkpoint.read_generation_config(path)
        source = None  # opened once the config is known good
    else:
        raise ConfigError(f"'{path}' is neither a checkpoint folder nor a .gguf file")
    arch = registry.architecture_of(raw)
    cfg = arch.config(raw)
    if source is None and saved_dtype is None:
        source = checkpoint.SafetensorsCheckpoint(path)
    return Checkpoint(path, raw, arch, cfg, generation_config, source, saved_dtype)


def load(
    path_or_id: str | os.PathLike,
    dtype=None,
    *,
    mesh=None,
    place: Callable | None = None,
    progress: Callable[[str], None] | None = None,
    tokenizer: bool = True,
) -> LoadedModel:
    """Load a Hugging Face checkpoint (folder or hub id), a GGUF file, or a folder written by
    `python -m jaxllm.convert`.

    dtype: "float32", "bfloat16" or "float16"; parameters are cast on the host while loading.
    Default: the dtype a converted checkpoint was saved in, else float32.
    mesh: a jax Mesh or a spec string ("tp=4", "dp=2,tp=4", "auto"): parameters are placed
    straight onto their shards by the rules in jaxllm.sharding, and logits and generation run
    sharded. place: a custom `(path, host_array, abstract_leaf) -> jax.Array` instead.
    """
    ckpt = open_checkpoint(path_or_id)
    dtype = resolve_dtype(dtype or ckpt.saved_dtype or "float32")
    graphdef, abstract = abstract_model(ckpt.config, ckpt.arch, dtype)
    ckpt.check(abstract)
    shardings = None
    if mesh is not None:
        from jaxllm import sharding

        mesh = sharding.make_mesh(mesh)
        shardings = None if place else sharding.param_shardings(abstract, mesh)
    params = ckpt.read_params(abstract, dtype, shardings=shardings, place=place, progress=progress)
    tok = None
    if tokenizer:
        from jaxllm.tokenizer import load_tokenizer

        tok = load_tokenizer(ckpt.path)
    return LoadedModel(ckpt.config, graphdef, params, tok, ckpt.generation_config, ckpt.path, mesh)
