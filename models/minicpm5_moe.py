"""MiniCPM5-MoE (MiniCPM5MoeForCausalLM, openbmb's MiniCPM5 MoE models; transformers 5.25): GLM-4.5's decoder
(models/glm4_moe.py: DeepSeek-V3's experts beside a shared one, the sigmoid router with its score bias and groups) with:

- attention: Llama's (rope over the whole head, no q/k norms, biases on q/k/v and o_proj where attention_bias), its
  output times sigmoid(gate) per head and value before o_proj, query and gate from one projection whose rows hold each
  head's query then its gate (transformers' q_gate_proj, saved as q_proj: Qwen3-Next's layout, read apart by
  qwen3_next.hybrid_weight_map);
- routing: the scores in float32, the chosen weights renormalised by their sum plus 1e-20, then routed_scaling_factor;
- dense and sparse layers by mlp_layer_types (first_k_dense_replace, 1 by default, where it gives none);
- num_key_value_heads null: num_attention_heads, as MiniCPM5MoeConfig reads it."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS, expert_names
from jaxllm.models.glm4_moe import glm4_moe_defaults
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.qwen3_next import hybrid_weight_map


def minicpm5_names(raw: dict) -> dict:
    """n_routed_experts under num_local_experts (160 by default); a null num_key_value_heads num_attention_heads."""
    if "num_key_value_heads" in raw and raw["num_key_value_heads"] is None:
        raw = dict(raw, num_key_value_heads=raw.get("num_attention_heads"))
    return expert_names("num_local_experts", 160)(raw)


def minicpm5_defaults(raw: dict) -> dict:
    first = raw["first_k_dense_replace"]  # read only where mlp_layer_types is left out, as MiniCPM5MoeConfig reads it
    if first is None and raw.get("mlp_layer_types") is None:
        raise ConfigError("config.json first_k_dense_replace is null and mlp_layer_types is left out (transformers fails "
                          "comparing a layer's index with null): give either")
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, first or 0)) if t == "dense")
    return dict(glm4_moe_defaults(dict(raw, use_qk_norm=False, first_k_dense_replace=0)), o_bias=bool(raw["attention_bias"]),
                dense_layers=dense, attn_output_gate=True, router_norm_eps=1e-20)


ARCHITECTURES = (Architecture(
    name="MiniCPM5MoeForCausalLM", module=CausalLM, hf_model_type="minicpm5_moe", config_defaults=minicpm5_defaults,
    weight_map=hybrid_weight_map("", base=moe_weight_map("mlp", EXPERTS, shared="shared_experts")),
    common_names=minicpm5_names,
    ignored_keys=NO_WINDOW + ("mlp_bias", "use_qk_norm", "partial_rotary_factor", "num_nextn_predict_layers"),
    ignore=(r".*rotary_emb\.inv_freq$",),
    # MiniCPM5MoeConfig's field defaults (n_routed_experts' in expert_names)
    hf_defaults=dict(vocab_size=130560, hidden_size=2048, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=32,
                     num_key_value_heads=2, head_dim=128, max_position_embeddings=524288, rms_norm_eps=1e-6,
                     rope_theta=5000000.0, tie_word_embeddings=False, attention_bias=False, moe_intermediate_size=512,
                     num_experts_per_tok=16, n_shared_experts=1, routed_scaling_factor=3.66, n_group=1, topk_group=1,
                     first_k_dense_replace=1, norm_topk_prob=True),
    not_null=RMS_NOT_NULL + ("attention_bias", "moe_intermediate_size", "num_experts_per_tok",
                             "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "n_group", "topk_group",
                             "norm_topk_prob"),
    # a dense layer, then 8 experts in 2 groups (top 2 from the best group) beside a shared one, renormalised and
    # scaled; GQA; q/k/v biases (the gate's too); the gated output
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
                     rope_theta=10000.0, tie_word_embeddings=False, attention_bias=True, n_routed_experts=8,
                     n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
                     mlp_layer_types=["dense", "sparse", "sparse"], routed_scaling_factor=1.5, norm_topk_prob=True,
                     bos_token_id=0, eos_token_id=2, pad_token_id=1),
),)
