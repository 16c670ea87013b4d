"""Bailing-Hybrid (BailingHybridForCausalLM: inclusionAI's Ling 3 hybrids; transformers' modeling_bailing_hybrid.py):
Kimi-Linear's decoder (models/kimi_linear.py) with rotary positions and two changes of its mixers.

- layer types "linear_attention" (read as "kimi_delta_attention": Kimi Delta Attention whose forget and output gates
  are full-rank projections, f_proj and g_proj, A_log one per head, and whose decay is bounded where kda_safe_gate:
  kda_lower_bound * sigmoid(exp(A_log) (f_proj(x) + dt_bias)); ModelConfig.kda_full_rank, kda_lower_bound) and
  "full_attention", by default the last layer of every layer_group_size; the KDA heads num_attention_heads of
  head_dim (linear_num_heads, linear_head_dim, linear_conv_kernel_dim where the file gives them);
- full layers: DeepSeek-V3's latent attention with interleaved rope (rope_theta 6e6 by default) and an output gate
  per head, sigmoid(g_proj(x)) (the shared output gate, attn_gate_per_head);
- MLP: dense on mlp_layer_types' "dense" layers (else the first first_k_dense_replace, 2), DeepSeek-V3's routed
  experts elsewhere, under the config class's attribute_map spellings (num_experts, num_shared_experts, ...);
- checkpoints as the Hub's (and transformers' save) spell them: model.word_embeddings, layers.i.attention.* with
  attention.dense its output projection, the KDA conv as q_conv1d / k_conv1d / v_conv1d, the score bias
  mlp.gate.expert_bias, one tensor per expert; the multi-token-prediction layers after num_hidden_layers unread.
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import renamed
from jaxllm.models.deepseek import EXPERTS, latent_attention, latent_head_dim, routed_experts, sigmoid_router
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.kimi_linear import KDA_NAMES, TYPES, attribute_names
from jaxllm.models.mla import LatentCausalLM, mla_weight_map
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.qwen3_next import linear_specs
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec

# BailingHybridConfig's attribute_map: the key config.json holds (which wins), its alias and default -> DeepSeek's name
_ALIASES = {"num_experts": ("num_local_experts", 512, "n_routed_experts"),
            "num_experts_per_token": ("num_experts_per_tok", 8, "num_experts_per_tok"),
            "num_shared_experts": ("n_shared_experts", 1, "n_shared_experts"), "num_expert_group": ("n_group", 8, "n_group"),
            "moe_renormalize": ("norm_topk_prob", True, "norm_topk_prob"),
            "model_max_length": ("max_position_embeddings", 262144, "max_position_embeddings")}
# the checkpoints' names of what the shared modules call otherwise
_NAMES = {"self_attn": "attention", "o_proj": "dense", "embed_tokens": "word_embeddings",
          "e_score_correction_bias": "expert_bias"}


def bailing_names(raw: dict) -> dict:
    """config.json under DeepSeek's names (`kimi_linear.attribute_names`); the KDA heads' size, count and conv as
    BailingHybridConfig sets them (head_dim, num_attention_heads, short_conv_kernel_size unless the file gives its own);
    head_dim the latent attention's width."""
    raw = attribute_names(raw, _ALIASES)
    raw.setdefault("linear_head_dim", raw["head_dim"])
    raw.setdefault("linear_num_heads", raw["num_attention_heads"])
    raw.setdefault("linear_conv_kernel_dim", raw["short_conv_kernel_size"])
    return latent_head_dim(raw)


def _layer_types(raw: dict) -> tuple[str, ...]:
    n, group = raw["num_hidden_layers"], raw["layer_group_size"]
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % group == 0 else "linear_attention" for i in range(n)]
    if len(types) != n:
        raise ConfigError(f"config.json layer_types gives {len(types)} types for {n} layers (transformers fails on it): give "
                          "one per layer")
    return tuple("kimi_delta_attention" if t == "linear_attention" else t
                 for t in known_layer_types(types, TYPES, "Bailing-Hybrid", "transformers builds no layer for it"))


def bailing_defaults(raw: dict) -> dict:
    heads, size = raw["linear_num_heads"], raw["linear_head_dim"]
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, raw["first_k_dense_replace"])) if t == "dense")
    return dict(routed_experts(dict(raw, first_k_dense_replace=0)), **latent_attention(raw), **sigmoid_router(raw),
                dense_layers=dense, mlp_bias=False, rope_interleaved=True, layer_types=_layer_types(raw),
                attn_output_gate=True, attn_gate_per_head=True, attn_gate_bias=False,
                recurrent_kinds=("kimi_delta_attention",), linear_conv_kernel=raw["linear_conv_kernel_dim"],
                linear_key_heads=heads, linear_value_heads=heads, linear_key_head_dim=size, linear_value_head_dim=size,
                linear_qkv_apart=True, kda_full_rank=True, kda_lower_bound=float(raw["kda_lower_bound"]) if raw["kda_safe_gate"] else None)


_experts = moe_weight_map("mlp", EXPERTS, base=mla_weight_map, shared="shared_experts")


def bailing_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """DeepSeek-V3's map with each full layer's output gate, Kimi Delta Attention's on the others, under the Hub's names."""
    specs = _experts(cfg)
    for i in range(cfg.num_layers):
        if cfg.layer_is_recurrent(i):
            specs += renamed(linear_specs(cfg, i), KDA_NAMES)
        else:
            specs.append(WeightSpec(f"model.layers.{i}.self_attn.g_proj.weight", ("model", "layers", i, "self_attn", "gate_proj",
                                                                                   "kernel"), Linear()))
    return renamed(specs, _NAMES)


def mtp_layers(cfg: ModelConfig) -> tuple[str, ...]:
    """The multi-token-prediction layers the checkpoints keep after the decoder's (transformers ignores them)."""
    return (rf"^model\.layers\.(?!(?:{'|'.join(map(str, range(cfg.num_layers)))})\.)\d+\.",)


# BailingHybridConfig's field defaults (Ling-3.0-Flash's shapes); its attribute_map keys': _ALIASES
_DEFAULTS = dict(vocab_size=157184, hidden_size=2560, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=42,
                 num_attention_heads=32, num_key_value_heads=32, topk_group=4, routed_scaling_factor=2.5, first_k_dense_replace=2,
                 hidden_act="silu", rms_norm_eps=1e-6, pad_token_id=156892, bos_token_id=None, eos_token_id=156895,
                 tie_word_embeddings=False, attention_bias=False, kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128,
                 qk_rope_head_dim=64, v_head_dim=128, rope_theta=6_000_000.0, head_dim=128, short_conv_kernel_size=4,
                 layer_group_size=6, kda_safe_gate=True, kda_lower_bound=-5.0)

ARCHITECTURES = (Architecture(
    name="BailingHybridForCausalLM", module=LatentCausalLM, weight_map=bailing_weight_map, hf_model_type="bailing_hybrid",
    config_defaults=bailing_defaults, common_names=bailing_names, hf_defaults=_DEFAULTS, ignore_for=mtp_layers,
    # no window, the MLPs without biases; DeepSeek's keys its config class removes (n_routed_experts, rope_interleave)
    ignored_keys=("sliding_window", "use_sliding_window", "partial_rotary_factor", "rope_interleave", "mlp_bias", "topk_method",
                  "n_routed_experts"),
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                         "v_head_dim", "routed_scaling_factor", "moe_intermediate_size", "topk_group", "head_dim", "rope_theta",
                         "num_experts", "num_experts_per_token", "num_shared_experts", "num_expert_group", "model_max_length",
                         "first_k_dense_replace", "norm_topk_prob", "n_group", "num_local_experts", "n_shared_experts",
                         "short_conv_kernel_size", "layer_group_size", "kda_safe_gate", "kda_lower_bound", "linear_head_dim",
                         "linear_num_heads", "linear_conv_kernel_dim"),
    # KDA (four heads of 16) with a dense MLP, then full latent attention (gated per head, interleaved rope) and KDA
    # with 8 experts in 4 groups (top 2 from the best 2) beside a shared one, under the Hub's attribute_map spellings
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, v_head_dim=16, head_dim=16, layer_group_size=2, model_max_length=256,
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, num_experts=8, num_experts_per_token=2,
                     num_shared_experts=1, num_expert_group=4, topk_group=2, moe_renormalize=True, routed_scaling_factor=2.5,
                     first_k_dense_replace=1, short_conv_kernel_size=4, num_nextn_predict_layers=0, kda_lower_bound=-4.0,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
