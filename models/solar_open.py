"""Upstage Solar Open (SolarOpenForCausalLM): Llama's attention (q/k/v biases as attention_bias says,
none on o_proj, no q/k norms, the whole head rotated) with GLM-4-MoE's experts in every layer
(models/glm4_moe.py: DeepSeek-V3's routed experts beside shared ones, the sigmoid router with its
score bias and groups, routed_scaling_factor). SolarOpenConfig drops GLM-4-MoE's
intermediate_size, first_k_dense_replace and use_qk_norm: keys its code never reads."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS, expert_names, routed_experts, sigmoid_router
from jaxllm.models.moe import moe_weight_map


def solar_open_names(raw: dict) -> dict:
    """n_routed_experts under num_local_experts too (128 by default); the dense width, which no layer
    has, read as the experts' (the generic reading needs one)."""
    return dict(expert_names("num_local_experts", 128)(raw), intermediate_size=raw["moe_intermediate_size"])


def solar_open_defaults(raw: dict) -> dict:
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    partial = rope.get("partial_rotary_factor") or raw.get("partial_rotary_factor") or 1.0
    if partial != 1:
        raise ConfigError(f"config.json partial_rotary_factor {partial:g} asks to rotate part of each head, which "
                          "transformers' SolarOpenForCausalLM cannot apply (its attention rotates whole heads: a shape "
                          "error): set it to 1 or remove it")
    return dict(routed_experts(dict(raw, first_k_dense_replace=0)), **sigmoid_router(raw), qkv_bias=bool(raw["attention_bias"]),
                o_bias=False, mlp_bias=False)


ARCHITECTURES = (Architecture(
    name="SolarOpenForCausalLM", module=CausalLM, hf_model_type="solar_open", config_defaults=solar_open_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS, shared="shared_experts"), common_names=solar_open_names, partial_rotary=True,
    ignored_keys=NO_WINDOW + ("mlp_bias", "intermediate_size", "first_k_dense_replace", "use_qk_norm"),
    # SolarOpenConfig's field defaults (Solar-Open-100B's shapes, GLM-4-MoE's elsewhere; its rope base default_theta)
    hf_defaults=dict(vocab_size=196608, hidden_size=4096, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8,
                     head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1_000_000.0, attention_bias=False,
                     moe_intermediate_size=1280, num_experts_per_tok=8, n_shared_experts=1, routed_scaling_factor=1.0,
                     n_group=1, topk_group=1, norm_topk_prob=True),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "moe_intermediate_size", "num_experts_per_tok",
                             "n_shared_experts", "n_routed_experts", "num_local_experts", "routed_scaling_factor", "n_group",
                             "topk_group", "norm_topk_prob"),
    # routed experts in every layer: 8 in 2 groups (top 2 from the best group) beside a shared one, scaled, renormalised;
    # GQA; q/k/v biases
    tiny_config=dict(vocab_size=128, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=False, attention_bias=True, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                     n_group=2, topk_group=1, routed_scaling_factor=1.5, norm_topk_prob=True, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
