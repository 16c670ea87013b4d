"""GLM-4.7-Flash (Glm4MoeLiteForCausalLM): DeepSeek-V3's decoder as it is (models/deepseek.py: latent
attention in every layer, interleaved rotary by default, routed experts beside shared ones under the
sigmoid router with its score bias and groups, routed_scaling_factor). What differs is how its
config reads: which layers are dense is `mlp_layer_types` ("dense" / "sparse"; the first layer
dense where it is left out), not first_k_dense_replace, which transformers never reads; head_dim
names qk_rope_head_dim (Glm4MoeLiteConfig's attribute_map). Its checkpoints keep the
multi-token-prediction layer 47, which transformers does not read; neither do we."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config_fields import Field, check_fields
from jaxllm.models.deepseek import _TINY, deepseek_v3_defaults, mla_names, weight_map
from jaxllm.models.mla import LatentCausalLM

MLP_TYPES = ("dense", "sparse")


def mlp_layer_types(raw: dict, dense: int) -> list[str]:
    """mlp_layer_types as GLM-4.7-Flash's and K-EXAONE's config classes read it: the file's, else the first
    `dense` layers dense and the rest sparse."""
    n, types = raw["num_hidden_layers"], check_fields(raw, {"mlp_layer_types": Field(str, many="list")}, "config.json").get("mlp_layer_types")
    if types is None:
        return ["dense"] * min(dense, n) + ["sparse"] * max(n - dense, 0)
    if len(types) != n or any(t not in MLP_TYPES for t in types):
        raise ConfigError(f"config.json mlp_layer_types {types!r:.80} must give one of {', '.join(MLP_TYPES)} for each of the "
                          f"{n} layers: correct it")
    return list(types)


def lite_names(raw: dict) -> dict:
    """config.json as Glm4MoeLiteConfig reads it: head_dim (where given) sets qk_rope_head_dim; then
    DeepSeek's reading (`mla_names`: n_routed_experts under num_local_experts, 64 by default)."""
    if raw.get("head_dim") is not None:
        raw = dict(raw, qk_rope_head_dim=raw["head_dim"])
    return mla_names("num_local_experts", 64)(raw)


def glm4_moe_lite_defaults(raw: dict) -> dict:
    types = mlp_layer_types(raw, 1)
    first = raw.get("first_k_dense_replace")
    if raw.get("mlp_layer_types") is None and first is not None and min(first, len(types)) != 1:
        raise ConfigError(f"config.json first_k_dense_replace={first} without mlp_layer_types: transformers reads "
                          "mlp_layer_types alone (the first layer dense where left out), not the checkpoint's "
                          f"{first} dense layers: give mlp_layer_types for the checkpoint's layers")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    partial = rope.get("partial_rotary_factor") or raw.get("partial_rotary_factor") or 1.0
    if partial != 1:
        raise ConfigError(f"config.json partial_rotary_factor {partial:g} rotates part of the qk_rope_head_dim values, which "
                          "transformers' latent attention cannot apply (a shape error): set it to 1 or remove it")
    dense = tuple(i for i, t in enumerate(types) if t == "dense")
    return dict(deepseek_v3_defaults(dict(raw, first_k_dense_replace=0)), dense_layers=dense)


ARCHITECTURES = (Architecture(
    name="Glm4MoeLiteForCausalLM", module=LatentCausalLM, weight_map=weight_map, hf_model_type="glm4_moe_lite",
    config_defaults=glm4_moe_lite_defaults, common_names=lite_names, partial_rotary=True,
    ignored_keys=NO_WINDOW + ("mlp_bias", "topk_method"),
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.47\."),
    # Glm4MoeLiteConfig's field defaults (GLM-4.7-Flash's shapes; n_routed_experts' in mla_names)
    hf_defaults=dict(vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536,
                     num_hidden_layers=47, num_attention_heads=20, num_key_value_heads=20, n_shared_experts=1,
                     routed_scaling_factor=1.8, kv_lora_rank=512, q_lora_rank=768, qk_rope_head_dim=64, v_head_dim=256,
                     qk_nope_head_dim=192, n_group=1, topk_group=1, num_experts_per_tok=4, norm_topk_prob=True,
                     max_position_embeddings=202752, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, rope_interleave=True,
                     attention_bias=False),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                             "head_dim",
                             "n_routed_experts", "num_local_experts", "n_shared_experts", "routed_scaling_factor",
                             "moe_intermediate_size", "n_group", "topk_group", "num_experts_per_tok", "rope_interleave",
                             "norm_topk_prob"),
    # layers 0 and 2 dense, layer 1 routed: 8 experts in 4 groups (top 2 from the best 2) beside a shared one,
    # scaled, renormalised; low-rank queries; value heads narrower than key heads; interleaved rope
    tiny_config=dict({k: v for k, v in _TINY.items() if k != "first_k_dense_replace"}, q_lora_rank=24, n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2,
                     routed_scaling_factor=1.8, norm_topk_prob=True, rope_interleave=True, attention_bias=False,
                     mlp_layer_types=["dense", "sparse", "dense"]),
),)
