"""Architectures by the `architectures` string of config.json.

A model file registers each class it serves with `register(Architecture(...))`; everything else
(loading, parity tests, `--list-models`) reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from jaxllm.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    name: str  # "LlamaForCausalLM", as in config.json's "architectures"
    module: type  # Flax NNX module class: module(cfg, dtype=..., rngs=...)
    # cfg -> [WeightSpec]: which HF tensor fills which parameter, and how (jaxllm.weights).
    weight_map: Callable
    hf_model_type: str  # transformers' model_type, for building the reference in tests
    # raw config.json dict -> ModelConfig fields the HF modeling code hard-wires for this family.
    config_defaults: Callable[[dict], dict] = lambda raw: {}
    capabilities: tuple[str, ...] = ("completion", "chat", "scoring")
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    # A tiny HF config (dict) for the parity tests; every registered architecture must have one.
    tiny_config: dict = field(default_factory=dict)
    # Regexes of HF tensor names that carry nothing we need (e.g. cached rotary buffers).
    ignore: tuple[str, ...] = (r".*rotary_emb\.inv_freq$",)
    # raw config.json -> the same with the common key names, for families with their own spelling
    # (GPT-2's n_embd, n_layer, ...).
    common_names: Callable[[dict], dict] = lambda raw: raw

    def config(self, raw: dict):
        """The ModelConfig of a config.json dict, validated."""
        from jaxllm.config import from_hf

        raw = self.common_names(dict(raw))
        return from_hf(raw, self.name, self.config_defaults(raw))


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name} registered twice")
    _REGISTRY[arch.name] = arch
    return arch


def _load_model_files() -> None:
    import jaxllm.models  # noqa: F401  (importing registers every model file)


def get(name: str) -> Architecture:
    _load_model_files()
    if name not in _REGISTRY:
        raise ConfigError(
            f"architecture '{name}' is not supported; supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def names() -> list[str]:
    _load_model_files()
    return sorted(_REGISTRY)


def architecture_of(raw: dict) -> Architecture:
    archs = raw.get("architectures") if isinstance(raw, dict) else None
    if not archs or not isinstance(archs, list):
        raise ConfigError(
            "config.json has no 'architectures' list: add e.g. \"architectures\": [\"LlamaForCausalLM\"]"
        )
    return get(archs[0])


def estimate_memory(cfg, batch: int, length: int, dtype="bfloat16") -> dict[str, int]:
    """Bytes of parameters and of a KV cache of `batch` x `length` positions, from the module's
    abstract shapes (nothing is allocated)."""
    import math

    import jax
    import jax.numpy as jnp

    from jaxllm.loader import abstract_model, resolve_dtype

    dtype = resolve_dtype(dtype)
    _, abstract = abstract_model(cfg, get(cfg.architecture), dtype)
    params = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    kv = 2 * cfg.num_layers * batch * length * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize
    return {"params_bytes": int(params), "kv_cache_bytes": int(kv)}
