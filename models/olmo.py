"""OLMo (the first: OLMo-1B/7B-hf): Llama's layer with LayerNorms that have neither weight nor bias
(epsilon 1e-5, in float32), an MLP without biases, q/k/v/o biases as attention_bias says, cos/sin in
float32 with q/k rotated in float32 (rope_float32, as OLMo 2), and q, k, v clamped to
[-clip_qkv, clip_qkv] where clip_qkv is set (the shared attention's option, OLMoE's too)."""

import functools

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import decoder_weight_map, normed_causal_lm
from jaxllm.models.layers import LayerNorm
from jaxllm.models.weights import WeightSpec

OlmoForCausalLM = normed_causal_lm(functools.partial(LayerNorm, weight=False, bias=False), "OlmoForCausalLM")


def olmo_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """transformers' Llama naming, less the norms (they hold no tensor)."""
    return [s for s in decoder_weight_map(cfg) if s.path[-2] not in ("input_layernorm", "post_attention_layernorm", "norm")]


def clip_qkv(raw: dict) -> float | None:
    """config.json's clip_qkv (OLMo's, OLMoE's), None where null or left out."""
    return None if raw.get("clip_qkv") is None else float(raw["clip_qkv"])


def olmo_defaults(raw: dict) -> dict:
    return dict(norm_eps=1e-5, mlp_bias=False, rope_float32=True, clip_qkv=clip_qkv(raw))


ARCHITECTURES = (Architecture(
    name="OlmoForCausalLM", module=OlmoForCausalLM, weight_map=olmo_weight_map, hf_model_type="olmo",
    # its norms' epsilon is fixed (1e-5)
    ignored_keys=NO_WINDOW + ("rms_norm_eps",), config_defaults=olmo_defaults,
    not_null=NOT_NULL + ("hidden_act", "rope_theta", "attention_bias", "head_dim"),
    hf_defaults=dict(max_position_embeddings=2048, pad_token_id=1, eos_token_id=50279),
    # a clamp that bites (the seeded weights' q/k/v reach past it), q/k/v/o biases, GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, clip_qkv=1.0, attention_bias=True,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
