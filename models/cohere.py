"""Cohere (Command-R, Command-R+) and Cohere 2 (Command-R7B, Command-A): attention and a gated MLP
in parallel off one LayerNorm without bias (x + attn(ln x) + mlp(ln x)), rotary positions on
interleaved pairs (rope_interleaved), q/k rotated in float32 by tables rounded to the model's dtype
(rope_float32_rotation), the logits times logit_scale, a final LayerNorm without bias.

Cohere: an optional LayerNorm (no bias) of each query and key head, with a weight per head
(use_qk_norm: Command-R+). Cohere 2: no q/k norms; sliding-window layers (three of every four
by default) and full-attention layers, which take no rotary positions at all (nope_layers)."""

import functools

from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, OWN_HEAD, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map
from jaxllm.models.layers import LayerNorm
from jaxllm.models.weights import WeightSpec

NormNoBias = functools.partial(LayerNorm, bias=False)


class CohereDecoderLayer(DecoderLayer):
    """The shared layer, parallel (x + attn(ln x) + mlp(ln x)), with Cohere's norm. (transformers'
    Cohere adds x first, the shared layer last: the same sum up to rounding.)"""

    norm_cls = NormNoBias


class CohereForCausalLM(CausalLM):
    layer_cls = CohereDecoderLayer
    final_norm = NormNoBias  # the logits times logit_scale: the shared CausalLM.logits


def cohere_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """transformers' Llama naming without a post-attention norm (q/k norms [heads, head_dim] as they are)."""
    return [s for s in decoder_weight_map(cfg) if "post_attention_layernorm" not in s.hf_names[0]]


def _flags(raw: dict) -> dict:
    # the MLP has no bias whatever mlp_bias says; attention_bias is read (q/k/v and o)
    return dict(mlp_bias=False, parallel_residual=True, rope_interleaved=True, rope_float32_rotation=True, logit_scale=float(raw.get("logit_scale", 0.0625)))


def cohere2_defaults(raw: dict) -> dict:
    """layer_types, else Cohere2Config's pattern (every sliding_window_pattern-th layer full, 4 without
    it); the full layers rotate nothing."""
    every = raw.get("sliding_window_pattern", 4)
    types = raw.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention"
                                       for i in range(raw["num_hidden_layers"])]
    nope = tuple(i for i, t in enumerate(types) if t == "full_attention")
    return dict(_flags(raw), layer_types=tuple(types), nope_layers=nope)


_NOT_NULL = NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "attention_bias", "head_dim", "logit_scale")
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, layer_norm_eps=1e-5, logit_scale=0.25,
             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Aya Vision (CohereLabs/aya-vision-*) and Command A Vision (Cohere2VisionForConditionalGeneration): the text_config by
# its model_type's class (cohere2 where it gives none: Cohere2Config's shapes where it leaves them out), the wrapper's own
# lm_head (no logit_scale: OWN_HEAD), tied by the top-level tie_word_embeddings alone, true where left out
_VISION = dict(text_model_type="cohere2", fixed_text_type=False, top_level=dict(tie_word_embeddings=True), text_overrides=OWN_HEAD,
               text_defaults={"cohere2": dict(vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
                                              num_attention_heads=64, bos_token_id=5, eos_token_id=255001, pad_token_id=0)})
AYA_VISION = Wrapper(name="AyaVisionForConditionalGeneration", model_type="aya_vision", **_VISION)
COHERE2_VISION = Wrapper(name="Cohere2VisionForConditionalGeneration", model_type="cohere2_vision", **_VISION)

ARCHITECTURES = (Architecture(
    name="CohereForCausalLM", module=CohereForCausalLM, weight_map=cohere_weight_map, hf_model_type="cohere",
    ignored_keys=NO_WINDOW, norm_eps_key="layer_norm_eps", not_null=_NOT_NULL,
    hf_defaults=dict(layer_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=500000.0),
    config_defaults=lambda raw: dict(_flags(raw), qk_norm="layernorm_per_head" if raw.get("use_qk_norm") else "none"),
    # Command-R+'s q/k norms, biases, a logit scale unlike the default 0.0625
    tiny_config=dict(_TINY, rope_theta=10000.0, use_qk_norm=True, attention_bias=True),
), Architecture(
    name="Cohere2ForCausalLM", module=CohereForCausalLM, weight_map=cohere_weight_map, hf_model_type="cohere2",
    ignored_keys=NO_WINDOW_SWITCH, norm_eps_key="layer_norm_eps", not_null=_NOT_NULL,
    hf_defaults=dict(layer_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192, sliding_window=4096),
    config_defaults=cohere2_defaults, wrappers=(AYA_VISION, COHERE2_VISION),
    # sliding (rotary) and full (no rotary) layers, a window shorter than the test sequences, untied
    tiny_config=dict(_TINY, rope_theta=10000.0, sliding_window=8, tie_word_embeddings=False,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
))
