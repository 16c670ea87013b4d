"""`jaxllm.load`, what it returns (LoadedModel), and the one path every entry point takes before it
reads a weight:

    prepare(path or hub id)  resolve the files and read config.json (jaxllm.checkpoint)
      -> plan(raw config)    architecture (jaxllm.models.registry) -> ModelConfig -> abstract module
                             (shapes only, no memory) -> shardings on the mesh (jaxllm.sharding)
    Plan.check()             every missing, unexpected or mis-shaped tensor, in one error
    Plan.read()              the parameters, streamed one tensor at a time onto their shards

`load`, `python -m jaxllm.convert` and `python -m jaxllm.inspect` start from a checkpoint
(`prepare`); random-weight models (jaxllm.random_model) from a config dict (`plan`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm import checkpoint, converted, generation, gguf, research, sharding
from jaxllm.errors import CheckpointError, ConfigError, InputError, check_token_ids
from jaxllm.models import registry, weights
from jaxllm.models.architecture import Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.sampling import SamplingParams

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype) -> Any:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(f"dtype '{name}' is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class LoadedModel:
    """A loaded checkpoint. `params` is an nnx.State pytree; `nnx.merge(graphdef, params)` gives
    the module back, and `module` does it for you."""

    config: ModelConfig
    graphdef: Any
    params: Any
    tokenizer: Any = None
    generation_config: dict = field(default_factory=dict)
    path: Path | None = None
    mesh: Any = None
    engines: dict = field(default_factory=dict, repr=False)  # generation's engines, reused by shape

    @property
    def module(self):
        return nnx.merge(self.graphdef, self.params)

    def generate(self, prompts: str | Sequence, params: SamplingParams | None = None, *, chat: bool | None = None,
                 system: str | None = None, engine=None, on_text: Callable[[int, str], None] | None = None,
                 on_token: Callable[[int, list[int]], None] | None = None):
        """Generate for one prompt (returns a Completion) or a list of prompts (a list of them).

        A prompt is a string (the chat template applied when the tokenizer has one, unless
        chat=False) or a list of token ids. Unset SamplingParams fields come from the checkpoint's
        generation_config.json. Pass an `engine` (jaxllm.Engine) to choose its size; without one
        an engine fitted to the request is made. `on_text(index, text)` receives text as it
        becomes final, `on_token(index, ids)` token ids as they arrive."""
        return generation.generate(self, prompts, params, chat=chat, system=system, engine=engine,
                                   on_text=on_text, on_token=on_token)

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
        n = self.config.num_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise InputError(f"layer {layer!r} does not exist: this model has layers 0..{n - 1}")
        return self._run("attention_weights", token_ids, layer % n)

    def _run(self, name: str, token_ids, *static):
        tokens = check_token_ids(token_ids, self.config.vocab_size)
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise InputError(f"token_ids must be [batch, seq] with seq >= 1, got shape {tuple(tokens.shape)}")
        return research.jitted(name, self.mesh)(self.graphdef, self.params, sharding.put_replicated(tokens, self.mesh), *static)


def abstract_model(cfg: ModelConfig, arch: Architecture, dtype):
    """(graphdef, abstract state): the module's structure with shapes, without allocating weights."""
    model = nnx.eval_shape(lambda: arch.module(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def memory(cfg: ModelConfig, abstract, batch: int, length: int, kv_dtype) -> dict[str, int]:
    """Bytes of the parameters (from the abstract module) and of a KV cache holding `batch`
    sequences of `length` tokens."""
    params = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    return {"params_bytes": int(params), "kv_cache_bytes": cfg.kv_cache_bytes(batch * length, kv_dtype)}


def estimate_memory(cfg: ModelConfig, batch: int, length: int, dtype="bfloat16") -> dict[str, int]:
    """`memory` of a config in `dtype`, before anything is allocated."""
    dtype = resolve_dtype(dtype)
    _, abstract = abstract_model(cfg, registry.get(cfg.architecture), dtype)
    return memory(cfg, abstract, batch, length, dtype)


@dataclass
class Plan:
    """A model described down to its parameters' shapes and shards, no weight read yet."""

    arch: Architecture
    config: ModelConfig
    dtype: Any
    graphdef: Any
    abstract: Any
    mesh: Any = None
    shardings: dict | None = None  # {parameter path: NamedSharding} on the mesh
    source: Any = None  # checkpoint.HFCheckpoint or converted.ConvertedCheckpoint; None for a config alone

    def problems(self) -> list[str]:
        return self.source.problems(self.arch, self.config, self.abstract)

    def check(self) -> None:
        """Raise one CheckpointError listing every problem of the checkpoint against the model."""
        weights.raise_problems(self.problems(), self.source.size(self.arch, self.config, self.abstract))

    def read(self, progress: Callable[[str], None] | None = None):
        """The parameter state, each tensor placed onto its shards."""
        return self.source.read(self.arch, self.config, self.abstract, self.dtype, self.shardings, progress)

    def memory(self, batch: int, length: int) -> dict[str, int]:
        return memory(self.config, self.abstract, batch, length, self.dtype)


def plan(raw: dict, dtype=None, mesh=None, source=None) -> Plan:
    """The Plan of a config.json dict: architecture, ModelConfig, abstract module, shardings."""
    arch = registry.architecture_of(raw)
    cfg = arch.config(raw)
    dtype = resolve_dtype(dtype or "float32")
    graphdef, abstract = abstract_model(cfg, arch, dtype)
    shardings = None
    if mesh is not None:
        mesh = sharding.make_mesh(mesh)
        shardings = sharding.param_shardings(abstract, mesh)
    return Plan(arch, cfg, dtype, graphdef, abstract, mesh, shardings, source)


def open_checkpoint(path_or_id):
    """Resolve a folder, hub id or .gguf file and read its config; no tensor is read."""
    path = checkpoint.resolve(path_or_id)
    if path.is_file() and path.suffix == ".gguf":
        tensors, raw = gguf.open_checkpoint(path)
        return checkpoint.HFCheckpoint(path, raw, {}, tensors)
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is neither a checkpoint folder nor a .gguf file: pass one of those or a hub id")
    if converted.is_converted(path):
        return converted.ConvertedCheckpoint(path)
    return checkpoint.HFCheckpoint(path, checkpoint.read_config(path), checkpoint.read_generation_config(path))


def prepare(path_or_id, dtype=None, mesh=None) -> Plan:
    """The Plan of a checkpoint (folder, hub id, .gguf file or converted folder); `dtype` None:
    the checkpoint's own default (a converted folder's saved dtype, else float32)."""
    source = open_checkpoint(path_or_id)
    return plan(source.raw, dtype or source.load_dtype, mesh, source)


def load(
    path_or_id: str | os.PathLike,
    dtype=None,
    *,
    mesh=None,
    progress: Callable[[str], None] | None = None,
    tokenizer: bool = True,
) -> LoadedModel:
    """Load a Hugging Face checkpoint (folder or hub id), a GGUF file, or a folder written by
    `python -m jaxllm.convert`.

    dtype: "float32", "bfloat16" or "float16"; parameters are cast on the host while loading.
    Default: the dtype a converted checkpoint was saved in, else float32.
    mesh: a jax Mesh or a spec string ("tp=4", "dp=2,tp=4", "auto"): parameters are placed
    straight onto their shards by the rules in jaxllm.sharding, and logits and generation run
    sharded. progress(name) is called after each tensor.
    """
    p = prepare(path_or_id, dtype, mesh)
    p.check()
    params = p.read(progress)
    tok = checkpoint.load_tokenizer(p.source.path) if tokenizer else None
    return LoadedModel(p.config, p.graphdef, params, tok, p.source.generation_config, p.source.path, p.mesh)
