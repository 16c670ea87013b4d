"""ModelConfig: the one description of a model's shape, parsed from a Hugging Face config.json.

Accepts both transformers v4 spellings (`rope_theta`, `rope_scaling`) and v5 (`rope_parameters`).
Architecture-specific flags (q/k/v bias, q/k norm, ...) are filled in by the registry entry's
`config_defaults`, so this file knows no architecture by name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jaxllm.errors import ConfigError

QK_NORMS = ("none", "per_head", "projection")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")

# Keys each rope type needs beyond rope_theta, as transformers validates them.
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
}


@dataclass(frozen=True)
class RopeConfig:
    type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: int | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # yarn
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    # longrope (Phi-3): per-frequency factors below / beyond original_max_position_embeddings
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float = 1e-6  # epsilon of every norm: rms_norm_eps, or layer_norm_eps (GPT-NeoX, GPT-2)
    rope: RopeConfig = field(default_factory=RopeConfig)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    # Attention variants, set per architecture by the registry's config_defaults.
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # "per_head": RMSNorm of each head (Qwen3); "projection": over all heads (OLMo 2)
    # Gemma-style variants: embeddings times embed_scale; RMSNorm scales by (norm_offset + w), in float32.
    embed_scale: float = 1.0
    norm_offset: float = 0.0
    norm_upcast_scale: bool = False  # RMSNorm applies its weight in float32 before the cast (OLMo 2)
    parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x) (GPT-NeoX)
    position_embedding: str = "rope"  # or "learned": a table of absolute positions (GPT-2)
    # Gemma 2/3: attention scale (None: head_dim ** -0.5), tanh soft-capping of scores and logits,
    # and a rope of their own for the sliding-window layers (None: the same rope everywhere).
    attn_scale: float | None = None
    attn_scale_by_layer: bool = False  # the scale divided by (layer index + 1) (GPT-2's scale_attn_by_inverse_layer_idx)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_rope: RopeConfig | None = None
    # Mixture of experts (Mixtral, Qwen3-MoE): 0 experts means a dense MLP everywhere.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1
    dense_layers: tuple[int, ...] = ()  # layers that keep a dense MLP in an MoE model
    sliding_window: int | None = None
    # One entry per layer: "full_attention" or "sliding_attention".
    layer_types: tuple[str, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope.partial_rotary_factor)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of one layer, or None for full attention."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def layer_rope(self, layer: int) -> RopeConfig:
        if self.local_rope is not None and self.layer_window(layer) is not None:
            return self.local_rope
        return self.rope

    def layer_is_moe(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    def kv_cache_bytes(self, tokens: int, dtype) -> int:
        """Bytes of the keys and values of `tokens` cached positions, every layer, in `dtype`."""
        return 2 * self.num_layers * tokens * self.num_kv_heads * self.head_dim * np.dtype(dtype).itemsize

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _require(raw: dict, key: str, where: str = "config.json") -> Any:
    if raw.get(key) is None:
        raise ConfigError(f"{where} has no '{key}': add it (it is required for this architecture)")
    return raw[key]


def _positive_int(raw: dict, key: str) -> int:
    value = _require(raw, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"config.json '{key}' must be a positive integer, got {value!r}")
    return value


def token_ids(value) -> tuple[int, ...]:
    """An id field of config.json or generation_config.json (null, one id or a list) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def parse_rope(raw: dict, layer_type: str = "full_attention") -> RopeConfig:
    """Rope settings from either spelling: v5 `rope_parameters`, or v4 `rope_theta` + `rope_scaling`.
    In the per-layer-type form ({"full_attention": {...}, "sliding_attention": {...}}) it reads
    the entry of `layer_type`."""
    params = dict(raw.get("rope_parameters") or {})
    if not params:
        params = dict(raw.get("rope_scaling") or {})
        if "rope_theta" in raw:
            params.setdefault("rope_theta", raw["rope_theta"])
    if isinstance(params.get("full_attention"), dict):
        params = dict(params.get(layer_type) or params["full_attention"])
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    rope_type = "longrope" if rope_type == "su" else rope_type  # the first Phi-3 releases say "su"
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"config.json rope type '{rope_type}' is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    for key in _ROPE_REQUIRED[rope_type]:
        if key == "original_max_position_embeddings":
            # transformers falls back to the top-level field, then to max_position_embeddings.
            params.setdefault(key, raw.get(key) or raw.get("max_position_embeddings"))
        if params.get(key) is None:
            raise ConfigError(f"config.json rope type '{rope_type}' needs '{key}' in its rope parameters: add it")
    if "original_max_position_embeddings" in raw and rope_type in ("llama3", "yarn", "longrope"):
        params["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
    if rope_type == "longrope" and params.get("factor") is None:
        params["factor"] = raw.get("max_position_embeddings", 2048) / params["original_max_position_embeddings"]
    factor = float(params.get("factor") or 1.0)
    if factor <= 0 or not math.isfinite(factor):
        raise ConfigError(f"config.json rope 'factor' must be a positive number, got {params.get('factor')!r}")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
    return RopeConfig(
        type=rope_type,
        theta=float(params.get("rope_theta", 10000.0)),
        factor=factor,
        partial_rotary_factor=float(partial if partial is not None else 1.0),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        attention_factor=params.get("attention_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
        short_factor=_factors(params, "short_factor"),
        long_factor=_factors(params, "long_factor"),
    )


def _factors(params: dict, key: str) -> tuple[float, ...] | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
        raise ConfigError(f"config.json rope '{key}' must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def from_hf(raw: dict, architecture: str, defaults: dict | None = None) -> ModelConfig:
    """Build and validate a ModelConfig from a config.json dict.

    `defaults` are architecture flags from the registry (e.g. {"qkv_bias": True}); they win over
    the generic reading of config.json, since they encode what the HF modeling code hard-wires.
    """
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    hidden = _positive_int(raw, "hidden_size")
    heads = _positive_int(raw, "num_attention_heads")
    kv_heads = raw.get("num_key_value_heads") or heads
    if not isinstance(kv_heads, int) or kv_heads <= 0:
        raise ConfigError(f"config.json 'num_key_value_heads' must be a positive integer, got {kv_heads!r}")
    if heads % kv_heads:
        raise ConfigError(
            f"config.json num_attention_heads={heads} is not divisible by num_key_value_heads={kv_heads}: "
            "grouped-query attention needs a whole number of query heads per kv head"
        )
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ConfigError(
                f"config.json hidden_size={hidden} is not divisible by num_attention_heads={heads}: "
                "set 'head_dim' explicitly"
            )
        head_dim = hidden // heads
    layers = _positive_int(raw, "num_hidden_layers")
    sliding = raw.get("sliding_window")
    if raw.get("use_sliding_window") is False:
        sliding = None
    layer_types = tuple(raw.get("layer_types") or ())
    if layer_types and len(layer_types) != layers:
        raise ConfigError(
            f"config.json has {len(layer_types)} layer_types for {layers} layers: give one per layer"
        )
    if not layer_types:
        layer_types = ("sliding_attention" if sliding else "full_attention",) * layers
    eos = token_ids(raw.get("eos_token_id"))
    values = dict(
        architecture=architecture,
        vocab_size=_positive_int(raw, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_positive_int(raw, "intermediate_size"),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
        norm_eps=float(raw.get("rms_norm_eps", raw.get("layer_norm_eps", 1e-6))),
        rope=parse_rope(raw),
        hidden_act=raw.get("hidden_act", "silu"),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bool(raw.get("attention_bias", False)),
        o_bias=bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        sliding_window=sliding,
        layer_types=layer_types,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos,
        pad_token_id=raw.get("pad_token_id"),
    )
    values.update(defaults or {})
    return _validated(ModelConfig(**values))


def _validated(cfg: ModelConfig) -> ModelConfig:
    """`cfg`, or a ConfigError naming the first field that contradicts another."""
    if cfg.qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm {cfg.qk_norm!r} is not one of {QK_NORMS}")  # a model file's bug, not the user's
    for t in cfg.layer_types:
        if t not in ("full_attention", "sliding_attention"):
            raise ConfigError(f"config.json layer type '{t}' is not supported; use full_attention or sliding_attention")
    if "sliding_attention" in cfg.layer_types and not cfg.sliding_window:
        raise ConfigError("config.json asks for sliding_attention layers but sets no 'sliding_window': add it")
    if cfg.rotary_dim % 2:
        raise ConfigError(f"rotary dimension {cfg.rotary_dim} (head_dim x partial_rotary_factor) must be even")
    for rope in (cfg.rope, cfg.local_rope):
        for key in ("short_factor", "long_factor"):
            factors = getattr(rope, key, None)
            if factors is not None and len(factors) != cfg.rotary_dim // 2:
                raise ConfigError(
                    f"config.json rope '{key}' has {len(factors)} entries; rotary dimension {cfg.rotary_dim} needs "
                    f"{cfg.rotary_dim // 2}"
                )
    if cfg.num_experts and not 0 < cfg.experts_per_token <= cfg.num_experts:
        raise ConfigError(
            f"config.json num_experts_per_tok={cfg.experts_per_token} must lie in [1, {cfg.num_experts}] (the number of experts)"
        )
    return cfg
