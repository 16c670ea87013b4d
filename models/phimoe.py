"""PhiMoE (Phi-3.5-MoE): Mixtral's decoder with LayerNorms (weight and bias; rms_norm_eps their
epsilon), optional q/k/v/o biases and output head bias (lm_head_bias), and PhiMoE's router:
sparsemixer in inference, two experts whatever num_experts_per_tok says (models/experts.py).

Its rope, as transformers' PhimoeRotaryEmbedding computes it: LongRoPE with the short factors at
every length (the rope function is called without the sequence length, so the long factors are
never taken), the cos/sin tables times short_mscale, or long_mscale past
original_max_position_embeddings; unequal mscales are refused (Phi-3.5-MoE's are equal)."""

import dataclasses

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import LayerNormDecoderLayer, with_norm_biases
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.phi import PhiForCausalLM
from jaxllm.models.weights import WeightSpec


class PhimoeForCausalLM(PhiForCausalLM):
    """Phi's final LayerNorm; its output head biased where lm_head_bias says (`cfg.head_bias`)."""

    layer_cls = LayerNormDecoderLayer


def phimoe_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return with_norm_biases(moe_weight_map("block_sparse_moe", {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"})(cfg))


def phimoe_defaults(raw: dict) -> dict:
    rope = parse_rope(raw)
    if rope.type == "longrope":
        params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        short, long = params.get("short_mscale"), params.get("long_mscale")
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in (short, long)) or short != long:
            raise ConfigError(f"config.json rope short_mscale {short!r} and long_mscale {long!r}: PhimoeForCausalLM needs "
                              "both, and jaxllm reads them equal (as Phi-3.5-MoE's): correct them")
        rope = dataclasses.replace(rope, long_factor=rope.short_factor, attention_factor=float(short))
    elif rope.type != "default":
        raise ConfigError(f"config.json rope type '{rope.type}' for PhimoeForCausalLM is not supported (its tables are "
                          "scaled by short_mscale / long_mscale): jaxllm reads default and longrope")
    if raw["num_local_experts"] < 2:
        raise ConfigError(f"config.json num_local_experts={raw['num_local_experts']}: PhiMoE's router picks two experts: "
                          "give it at least 2")
    return dict(rope=rope, mlp_bias=False, num_experts=raw["num_local_experts"], experts_per_token=2, norm_topk_prob=False,
                router="sparsemixer", router_jitter=float(raw["router_jitter_noise"]), head_bias=bool(raw["lm_head_bias"]))


ARCHITECTURES = (Architecture(
    name="PhimoeForCausalLM", module=PhimoeForCausalLM, weight_map=phimoe_weight_map, hf_model_type="phimoe",
    config_defaults=phimoe_defaults, ignored_keys=("layer_types",) + NO_WINDOW_SWITCH,  # its window is every layer's
    # PhimoeConfig's field defaults (Phi-3.5-MoE's shapes and router)
    hf_defaults=dict(rope_theta=1_000_000.0, rms_norm_eps=1e-5, num_key_value_heads=8, max_position_embeddings=131072,
                     num_local_experts=16, router_jitter_noise=0.01, lm_head_bias=False),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "router_jitter_noise", "lm_head_bias"),
    # 6 experts (two picked, num_experts_per_tok unread); GQA; a window; q/k/v/o and head biases (Phi-3.5-MoE's);
    # a wide jitter so that the second pick's softmax often keeps several logits
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, num_local_experts=6, num_experts_per_tok=2, router_jitter_noise=0.3,
                     sliding_window=8, attention_bias=True, lm_head_bias=True, bos_token_id=1, eos_token_id=2),
),)
