"""MiniCPM3 (MiniCPM3ForCausalLM): Granite's decoder (models/granite.py: embeddings times a scale, each
residual branch times a scale before its add, the logits divided by a factor) with DeepSeek-V2's latent
attention in every layer (models/mla.py) rotated on halves (Llama's rotary, not DeepSeek's interleaved
pairs), a dense gated MLP. Its scales are MiniCPM's: the embeddings times scale_emb (rounded to the
weights' dtype, as Gemma 3's scaled embedding), the branches times scale_depth / sqrt(layers), the
hidden states divided by hidden_size / dim_model_base before the head (the logits so divided)."""

import math

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config_fields import COUNT, POSITIVE, check_fields
from jaxllm.models.deepseek import _TINY, latent_attention, rope_head_dim
from jaxllm.models.granite import GraniteDecoderLayer, GraniteForCausalLM
from jaxllm.models.mla import LatentAttention, mla_weight_map

SCALES = {"scale_emb": POSITIVE, "scale_depth": POSITIVE, "dim_model_base": COUNT}


class MiniCPM3DecoderLayer(GraniteDecoderLayer):
    attn_cls = LatentAttention


class MiniCPM3ForCausalLM(GraniteForCausalLM):
    layer_cls = MiniCPM3DecoderLayer


def minicpm3_names(raw: dict) -> dict:
    """MiniCPM3Config's __post_init__: v_head_dim hidden / heads where null or left out; head_dim qk_rope_head_dim."""
    check_fields(raw, SCALES, "config.json")
    if "logits_scaling" in raw:  # a property of MiniCPM3Config (hidden_size / dim_model_base) that a file cannot set
        raise ConfigError("config.json sets logits_scaling, which MiniCPM3Config derives from dim_model_base (transformers "
                          "refuses the key): remove it and give dim_model_base")
    if raw.get("v_head_dim") is None:
        raw = dict(raw, v_head_dim=raw["hidden_size"] // raw["num_attention_heads"])
    return rope_head_dim(raw)


def minicpm3_defaults(raw: dict) -> dict:
    layers, hidden = raw["num_hidden_layers"], raw["hidden_size"]
    depth = raw.get("scale_depth") or math.sqrt(layers)  # null: sqrt(layers), a residual scale of 1
    return dict(latent_attention(raw), rope_interleaved=False, embed_scale=float(raw["scale_emb"]),
                residual_scale=float(depth) / math.sqrt(layers), logits_divisor=hidden / (raw.get("dim_model_base") or hidden))


ARCHITECTURES = (Architecture(
    name="MiniCPM3ForCausalLM", module=MiniCPM3ForCausalLM, weight_map=mla_weight_map, hf_model_type="minicpm3",
    config_defaults=minicpm3_defaults, common_names=minicpm3_names, ignored_keys=NO_WINDOW,
    # MiniCPM3Config's field defaults (MiniCPM3-4B's shapes and scales; LlamaConfig's elsewhere)
    hf_defaults=dict(vocab_size=73448, hidden_size=2560, intermediate_size=6400, num_hidden_layers=62, num_attention_heads=40,
                     num_key_value_heads=40, max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=True,
                     kv_lora_rank=256, q_lora_rank=768, qk_nope_head_dim=64, qk_rope_head_dim=32, scale_emb=12,
                     scale_depth=1.4, dim_model_base=256, bos_token_id=1, eos_token_id=2, attention_bias=False),
    not_null=RMS_NOT_NULL + ("attention_bias", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                             "scale_emb", "mlp_bias"),
    # low-rank queries; value heads narrower than key heads; embeddings x 12, branches x 1.4 / sqrt(3), logits / 4;
    # q_a/kv_a/o biases and MLP biases; untied (MiniCPM3-4B)
    tiny_config=dict({k: v for k, v in _TINY.items() if k not in ("first_k_dense_replace", "num_experts_per_tok")},
                     q_lora_rank=24, scale_emb=12, scale_depth=1.4, dim_model_base=16, attention_bias=True, mlp_bias=True),
),)
