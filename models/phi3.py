"""Phi-3: the shared decoder, with q/k/v fused in one `qkv_proj` and gate/up in one `gate_up_proj`
in the checkpoint (split while loading, so the module is the shared one), and LongRoPE scaling."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, fused_weight_map
from jaxllm.models.llama import NO_BIAS
from jaxllm.models.weights import WeightSpec


def phi3_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    q, kv, f = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    fused = {  # our tensor -> (HF fused tensor, rows it starts at, rows of the fused tensor)
        "self_attn.q_proj": ("self_attn.qkv_proj", 0, q + 2 * kv),
        "self_attn.k_proj": ("self_attn.qkv_proj", q, q + 2 * kv),
        "self_attn.v_proj": ("self_attn.qkv_proj", q + kv, q + 2 * kv),
        "mlp.gate_proj": ("mlp.gate_up_proj", 0, 2 * f),
        "mlp.up_proj": ("mlp.gate_up_proj", f, 2 * f),
    }
    return fused_weight_map(cfg, fused)


def phi3_rope_names(raw: dict) -> dict:
    """The rope type as Phi3Config reads it (from rope_scaling, else rope_parameters): "su" and
    "yarn" are the first releases' names of LongRoPE; any type but default and longrope it refuses."""
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    rope = raw.get(key)
    if not isinstance(rope, dict):
        return raw
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind in ("su", "yarn"):
        return dict(raw, **{key: dict({k: v for k, v in rope.items() if k != "type"}, rope_type="longrope")})
    if kind not in ("default", "longrope") and not isinstance(rope.get("full_attention"), dict):
        raise ConfigError(f"config.json rope type {str(kind)[:40]!r} is not one Phi3ForCausalLM takes: transformers' Phi3Config "
                          "allows default or longrope (su and yarn read as longrope): correct the rope type")
    return raw


ARCHITECTURES = (Architecture(
    name="Phi3ForCausalLM", module=CausalLM, weight_map=phi3_weight_map, hf_model_type="phi3",
    ignored_keys=("layer_types",) + NO_WINDOW_SWITCH,  # its window (sliding_window) is every layer's
    config_defaults=lambda raw: dict(NO_BIAS, longrope_recompute=True), common_names=phi3_rope_names,
    # (a null partial_rotary_factor: Phi3Config copies it into rope settings that give none, then multiplies by it)
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "head_dim", "original_max_position_embeddings", "rope_theta",
                         "partial_rotary_factor"),
    # Phi3Config's top-level original_max_position_embeddings (4,096 when left out) is the one
    # LongRoPE uses: transformers overwrites the rope parameters' own with it.
    hf_defaults=dict(rms_norm_eps=1e-5, original_max_position_embeddings=4096, max_position_embeddings=4096), partial_rotary=True,
    # LongRoPE's long factors from position 4 on, so every test sequence runs on them (the switch
    # from short to long mid-generation has its own test in test_generation.py).
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     original_max_position_embeddings=4, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                      "short_factor": [1.0 + 0.1 * i for i in range(8)],
                                      "long_factor": [1.0 + 0.5 * i for i in range(8)]}),
),)
