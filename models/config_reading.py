"""from_hf: the fields of a Hugging Face config.json that every family shares (sizes, heads, rope, windows, token
ids) read into a ModelConfig, the registry entry's config_defaults laid over them, then checked (config_checks)."""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_checks import validated
from jaxllm.models.config_fields import check_config, require_fields, token_ids
from jaxllm.models.config_options import max_positions, parse_rope


def from_hf(raw: dict, architecture: str, defaults: dict | None = None, family_defaults: tuple[str, ...] = ()) -> ModelConfig:
    """Build and validate a ModelConfig from a config.json dict.

    `defaults` are architecture flags from the registry (e.g. {"qkv_bias": True}); they win over
    the generic reading of config.json, since they encode what the HF modeling code hard-wires.
    `family_defaults`: keys of `raw` the file leaves out, filled from the family's transformers
    defaults (errors about them say so, rather than name a value the file does not hold).
    """
    check_config(raw)
    vocab, hidden, intermediate, layers, heads = require_fields(raw)
    kv_heads = raw.get("num_key_value_heads") or heads
    if heads % kv_heads:
        if "num_key_value_heads" in family_defaults:
            raise ConfigError(
                f"config.json num_attention_heads={heads} is not divisible by num_key_value_heads={kv_heads}, the "
                f"{architecture} default transformers takes where config.json leaves it out: set num_key_value_heads "
                "in config.json (a divisor of num_attention_heads)"
            )
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
    sliding = raw.get("sliding_window")
    if raw.get("use_sliding_window") is False:
        sliding = None
    layer_types = tuple(raw.get("layer_types") or ())
    if layer_types and len(layer_types) != layers:
        raise ConfigError(
            f"config.json has {len(layer_types)} layer_types for {layers} layers: give one per layer"
        )
    if "sliding_attention" in layer_types and sliding is None and raw.get("sliding_window"):
        raise ConfigError(f"config.json asks for sliding_attention layers but use_sliding_window=false turns its sliding_window "
                          f"({raw['sliding_window']}) off: set use_sliding_window to true, or make those layers full_attention")
    if not layer_types:
        layer_types = ("sliding_attention" if sliding is not None else "full_attention",) * layers
    eos = token_ids(raw.get("eos_token_id"))
    values = dict(
        architecture=architecture,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        max_position_embeddings=max_positions(raw),
        norm_eps=float(next((raw[k] for k in ("rms_norm_eps", "layer_norm_eps") if raw.get(k) is not None), 1e-6)),
        rope=parse_rope(raw),
        hidden_act="silu" if raw.get("hidden_act") is None else raw["hidden_act"],  # "" too is looked up (and refused)
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
    return validated(ModelConfig(**values))
