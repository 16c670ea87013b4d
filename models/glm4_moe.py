"""GLM-4.5 / GLM-4.6 (Glm4MoeForCausalLM): the shared decoder (Llama's layer) with q/k/v biases
(attention_bias) and none on o_proj, optional per-head q/k RMSNorm (use_qk_norm), rotary on the
first half of each head (partial_rotary_factor 0.5 unless the config says otherwise, halves not
pairs), and DeepSeek-V3's experts: dense first layers, routed experts beside shared ones, the
sigmoid router with its score bias and groups (models/deepseek.py). Its checkpoints keep the
multi-token-prediction layer (46 or 92) that transformers does not read; neither do we."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, fused_weight_map, renamed
from jaxllm.models.deepseek import EXPERTS, expert_names, routed_experts, sigmoid_router
from jaxllm.models.glm import GLM4V
from jaxllm.models.llama import mrope_as_rope
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.weights import WeightSpec, split_experts


def glm4_moe_defaults(raw: dict) -> dict:
    return dict(routed_experts(raw), **sigmoid_router(raw), qkv_bias=bool(raw["attention_bias"]), o_bias=False, mlp_bias=False,
                qk_norm="per_head" if raw["use_qk_norm"] else "none")


# GLM-4.5V (zai-org/GLM-4.5V, Glm4vMoeForConditionalGeneration): GLM-4.5's layers without q/k norms whatever use_qk_norm
# says, under M-RoPE (mrope_as_rope over the rotated part of head_dim); Glm4vMoeConfig ties the head where its top level's
# or its text config's tie_word_embeddings says so; Glm4vMoeTextConfig's defaults (half of each head rotated)
GLM4V_MOE = Wrapper(name="Glm4vMoeForConditionalGeneration", model_type="glm4v_moe", text_model_type="glm4_moe", other_modules=("visual",),
                    top_level_or=("tie_word_embeddings",), text_overrides=dict(use_qk_norm=False),
                    text_defaults={"glm4_moe": dict(vocab_size=151424, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46,
                                                    num_attention_heads=96, max_position_embeddings=65536, attention_bias=True,
                                                    partial_rotary_factor=0.5)},
                    edit=lambda text: mrope_as_rope(text, partial=True, own_head_dim=True))

# GLM-4.6V (Glm46VForConditionalGeneration): its text_config is GLM-4.1V's (glm4v_text, where it gives none) or GLM-4.5V's
# (glm4v_moe_text), read as theirs, its experts fused as transformers 5 saves them (split_experts); Glm46VConfig ties the
# head by its top-level tie_word_embeddings alone, false by default
GLM46V = Wrapper(name="Glm46VForConditionalGeneration", model_type="glm46v", text_model_type="glm4v_text", fixed_text_type=False,
                 other_modules=("visual",), top_level=dict(tie_word_embeddings=False), tensors=split_experts,
                 text_readings={"glm4v_text": GLM4V, "glm4v_moe_text": GLM4V_MOE})


def param2_names(raw: dict) -> dict:
    """Param2MoeConfig's attribute_map spellings (the original bharatgenai configs': num_experts, num_shared_experts,
    use_qkv_bias) as GLM-4.5's keys; a key given in both spellings keeps GLM-4.5's."""
    out = dict(raw)
    for theirs, ours in (("num_experts", "n_routed_experts"), ("num_shared_experts", "n_shared_experts"),
                         ("use_qkv_bias", "attention_bias")):
        if theirs in out:
            value = out.pop(theirs)
            if value is None and theirs == "use_qkv_bias":  # transformers builds no q/k/v biases (None is false)
                value = False
            if value is None:  # Param2MoeConfig sets `ours` to it, which its typing then refuses
                raise ConfigError(f"config.json {theirs} is null, and Param2MoeConfig reads it as {ours}, which cannot be "
                                  f"null: give {theirs} a value or remove it")
            out.setdefault(ours, value)
    return expert_names("num_local_experts", 64)(out)


_WEIGHTS = moe_weight_map("mlp", EXPERTS, shared="shared_experts")

# Param2-MoE's checkpoints keep SarvamMoE's names (transformers' conversion mapping renames them on load, back on save)
PARAM2_NAMES = {"embed_tokens": "word_embeddings", "self_attn": "attention", "o_proj": "dense", "q_norm": "query_layernorm",
                "k_norm": "key_layernorm", "gate.e_score_correction_bias": "gate.expert_bias"}


def param2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """GLM-4.5's weight map under Param2's names, q / k / v (weights and biases) rows of one query_key_value tensor."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    fused = {f"self_attn.{name}": ("self_attn.query_key_value", at, q + 2 * kv)
             for name, at in (("q_proj", 0), ("k_proj", q), ("v_proj", q + kv))}
    return renamed(fused_weight_map(cfg, fused, base=_WEIGHTS), PARAM2_NAMES)


_NOT_NULL = RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "moe_intermediate_size", "num_experts_per_tok",
                            "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "n_group", "topk_group",
                            "first_k_dense_replace", "norm_topk_prob", "use_qk_norm")

ARCHITECTURES = (Architecture(
    name="Glm4MoeForCausalLM", module=CausalLM, hf_model_type="glm4_moe", config_defaults=glm4_moe_defaults,
    weight_map=_WEIGHTS, common_names=expert_names("num_local_experts", 128),
    ignored_keys=NO_WINDOW + ("mlp_bias",), partial_rotary=True, wrappers=(GLM4V_MOE, GLM46V),
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.(46|92)\."),
    # Glm4MoeConfig's field defaults (n_routed_experts' in expert_names)
    hf_defaults=dict(num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5, attention_bias=False,
                     partial_rotary_factor=0.5, moe_intermediate_size=1408, num_experts_per_tok=8, n_shared_experts=1,
                     routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=1, norm_topk_prob=True,
                     use_qk_norm=False),
    not_null=_NOT_NULL,
    # a dense layer, then 8 experts in 2 groups (top 2 from the best group) beside a shared one, weights
    # renormalised and scaled; GQA; q/k/v biases and q/k norms; a quarter of each head rotated
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.25,
                     max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                     attention_bias=True, use_qk_norm=True, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                     n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.5, norm_topk_prob=True,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
), Architecture(
    # Param2-MoE (bharatgenai/Param2-17B-A2.4B, transformers 5.25): GLM-4.5's model under a config class of its own
    # (model_type param2moe): its defaults (q/k norms, rope over the whole head, theta 5e5, a tied head), its config
    # spellings and its checkpoints' names (SarvamMoE's: fused query_key_value, dense, word_embeddings, expert_bias)
    name="Param2MoeForCausalLM", module=CausalLM, hf_model_type="param2moe", config_defaults=glm4_moe_defaults,
    weight_map=param2_weight_map, common_names=param2_names, ignored_keys=NO_WINDOW + ("mlp_bias", "num_mtp_layers", "num_nextn_predict_layers"),
    partial_rotary=True, ignore=(r".*rotary_emb\.inv_freq$",),
    hf_defaults=dict(vocab_size=128000, hidden_size=2048, intermediate_size=9216, num_hidden_layers=21, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=500000.0,
                     tie_word_embeddings=True, attention_bias=False, partial_rotary_factor=1.0, moe_intermediate_size=2048,
                     num_experts_per_tok=6, n_shared_experts=2, routed_scaling_factor=2.5, n_group=1, topk_group=1,
                     first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True),
    not_null=_NOT_NULL,
    # a dense layer, then 8 experts in 2 groups beside 2 shared ones; q/k norms; the whole head rotated; tied; the
    # original configs' spellings of the experts' counts and the q/k/v bias
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
                     rope_theta=10000.0, tie_word_embeddings=True, use_qkv_bias=True, use_qk_norm=True, num_experts=8,
                     num_shared_experts=2, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                     routed_scaling_factor=1.5, norm_topk_prob=True, bos_token_id=1, eos_token_id=3, pad_token_id=0),
),)
