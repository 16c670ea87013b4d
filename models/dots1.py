"""dots.llm1 (Dots1ForCausalLM): Qwen3's attention (per-head q/k RMSNorm) with q/k/v and o biases
as attention_bias says, a sliding window on the layers from max_window_layers on (where
sliding_window is set; or as layer_types says), and DeepSeek-V3's experts: dense first layers,
routed experts beside shared ones, the sigmoid router with its score bias and groups
(models/deepseek.py)."""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS, expert_names, routed_experts, sigmoid_router
from jaxllm.models.moe import moe_weight_map


def dots1_defaults(raw: dict) -> dict:
    bias, n, window = bool(raw["attention_bias"]), raw["num_hidden_layers"], raw.get("sliding_window")
    types = tuple(raw.get("layer_types") or ("sliding_attention" if window is not None and i >= raw["max_window_layers"]
                                             else "full_attention" for i in range(n)))
    return dict(routed_experts(raw), **sigmoid_router(raw), qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm="per_head",
                layer_types=types)


ARCHITECTURES = (Architecture(
    name="Dots1ForCausalLM", module=CausalLM, hf_model_type="dots1", config_defaults=dots1_defaults,
    weight_map=moe_weight_map("mlp", EXPERTS, shared="shared_experts"), common_names=expert_names("num_local_experts", None),
    ignored_keys=NO_WINDOW_SWITCH + ("mlp_bias",),
    # Dots1Config's field defaults (its n_routed_experts, n_shared_experts and num_experts_per_tok: none)
    hf_defaults=dict(num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, attention_bias=False,
                     moe_intermediate_size=1408, routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=0,
                     norm_topk_prob=False, sliding_window=4096, max_window_layers=62),
    not_null=RMS_NOT_NULL + ("head_dim", "attention_bias", "moe_intermediate_size", "n_shared_experts", "n_routed_experts",
                             "num_experts_per_tok", "routed_scaling_factor", "n_group", "topk_group", "first_k_dense_replace"),
    # a dense layer, then 8 experts in 4 groups (top 2 from the best 2) beside two shared ones, scaled, not
    # renormalised; the window (8) on the last layer; GQA; q/k/v/o biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True, n_routed_experts=8, n_shared_experts=2,
                     num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.0,
                     norm_topk_prob=False, sliding_window=8, max_window_layers=2, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
