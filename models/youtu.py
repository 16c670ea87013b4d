"""Tencent Youtu-LLM (YoutuForCausalLM): Llama's decoder with DeepSeek-V3's latent attention in every
layer (models/mla.py: low-rank queries, keys and values decompressed from a shared latent, rotary on
interleaved pairs where rope_interleave says, by default) and a dense gated MLP without biases in
every layer; tied embeddings by default. YoutuConfig drops DeepSeek-V3's expert keys (its code reads
none of them)."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.deepseek import _TINY, latent_attention, rope_head_dim
from jaxllm.models.mla import LatentCausalLM, mla_weight_map

EXPERT_KEYS = ("n_shared_experts", "n_routed_experts", "num_local_experts", "routed_scaling_factor", "n_group", "topk_group",
               "num_experts_per_tok", "first_k_dense_replace", "norm_topk_prob", "moe_intermediate_size", "topk_method")


def youtu_defaults(raw: dict) -> dict:
    return dict(latent_attention(raw), mlp_bias=False, rope_interleaved=bool(raw.get("rope_interleave")))


ARCHITECTURES = (Architecture(
    name="YoutuForCausalLM", module=LatentCausalLM, weight_map=mla_weight_map, hf_model_type="youtu",
    config_defaults=youtu_defaults, common_names=rope_head_dim,
    ignored_keys=NO_WINDOW + ("mlp_bias",) + EXPERT_KEYS,
    # YoutuConfig's field defaults (Youtu-LLM-2B's shapes)
    hf_defaults=dict(vocab_size=128256, hidden_size=2048, intermediate_size=6144, num_hidden_layers=32, num_attention_heads=16,
                     num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                     qk_nope_head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-6, bos_token_id=128000,
                     eos_token_id=128001, tie_word_embeddings=True, rope_interleave=True, attention_bias=False),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                             "v_head_dim", "head_dim"),
    # low-rank queries; value heads narrower than key heads; interleaved rope; q_a/kv_a/o biases; tied
    tiny_config=dict({k: v for k, v in _TINY.items() if k not in EXPERT_KEYS}, q_lora_rank=24, rope_interleave=True,
                     attention_bias=True, tie_word_embeddings=True),
),)
