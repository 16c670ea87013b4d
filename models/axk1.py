"""A.X-K1 (AXK1ForCausalLM, SK Telecom): DeepSeek-V3 (models/deepseek.py: latent attention, always through q_lora_rank,
routed experts beside shared ones under the grouped sigmoid router) with an RMSNorm of each MoE block's output
(`moe_output_norm`), its checkpoints' post_mlp_layernorm of the MoE layers; the dense layers' copies, which
transformers ignores, are not read. Which layers are dense is mlp_layer_types, else from first_k_dense_replace and
moe_layer_freq (GLM-4.7-Flash's reading, `mlp_layer_types`). Its checkpoints route without a score bias: a missing
e_score_correction_bias reads as zeros (weights.ZeroScoreBiases), as transformers leaves it."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.deepseek import _TINY, deepseek_v3_defaults, mla_names, weight_map
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.mla import LatentCausalLM
from jaxllm.models.weights import WeightSpec, ZeroScoreBiases


def axk1_defaults(raw: dict) -> dict:
    """DeepSeek-V3's, the dense layers mlp_layer_types', else those below first_k_dense_replace (1) or off moe_layer_freq."""
    first, every = raw.get("first_k_dense_replace", 1), raw.get("moe_layer_freq", 1)
    types = mlp_layer_types(raw, 0) if raw.get("mlp_layer_types") is not None else [
        "sparse" if i >= first and i % every == 0 else "dense" for i in range(raw["num_hidden_layers"])]
    dense = tuple(i for i, t in enumerate(types) if t == "dense")
    return dict(deepseek_v3_defaults(dict(raw, first_k_dense_replace=0)), dense_layers=dense, moe_output_norm=True)


def axk1_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return weight_map(cfg) + [WeightSpec(f"model.layers.{i}.post_mlp_layernorm.weight",
                                         ("model", "layers", i, "mlp", "post_mlp_layernorm", "weight"))
                              for i in range(cfg.num_layers) if cfg.layer_is_moe(i)]


ARCHITECTURES = (Architecture(
    name="AXK1ForCausalLM", module=LatentCausalLM, weight_map=axk1_weight_map, hf_model_type="axk1",
    config_defaults=axk1_defaults, common_names=mla_names("num_local_experts", 192), tensors=ZeroScoreBiases,
    ignored_keys=NO_WINDOW + ("mlp_bias", "topk_method", "head_dim", "num_mtp_layers"),
    ignore_for=lambda cfg: tuple(rf"^model\.layers\.{i}\.post_mlp_layernorm\." for i in cfg.dense_layers),
    # AXK1Config's field defaults (A.X-K1's shapes; n_routed_experts' in mla_names)
    hf_defaults=dict(vocab_size=163840, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                     num_hidden_layers=61, num_attention_heads=64, num_key_value_heads=64, n_shared_experts=1,
                     routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
                     qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, norm_topk_prob=True,
                     max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=163691, eos_token_id=163691,
                     rope_interleave=True, attention_bias=False),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "attention_bias", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                             "v_head_dim", "n_routed_experts", "n_shared_experts", "routed_scaling_factor", "moe_intermediate_size",
                             "n_group", "topk_group", "num_experts_per_tok"),
    # layer 0 dense, 1 and 2 routed: 8 experts in 4 groups (top 2 from the best 2) beside a shared one, each block's
    # output normed; low-rank queries; value heads narrower than key heads; interleaved rope
    tiny_config=dict({k: v for k, v in _TINY.items() if k != "first_k_dense_replace"}, q_lora_rank=24, n_routed_experts=8,
                     n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
                     rope_interleave=True, attention_bias=False, mlp_layer_types=["dense", "sparse", "sparse"]),
),)
