"""Cohere (Command-R, Command-R+) and Cohere 2 (Command-R7B, Command-A): attention and a gated MLP
in parallel off one LayerNorm without bias (x + attn(ln x) + mlp(ln x)), rotary positions on
interleaved pairs (rope_interleaved), q/k rotated in float32 by tables rounded to the model's dtype
(rope_float32_rotation), the logits times logit_scale, a final LayerNorm without bias.

Cohere: an optional LayerNorm (no bias) of each query and key head, with a weight per head
(use_qk_norm: Command-R+). Cohere 2: no q/k norms; sliding-window layers (three of every four
by default) and full-attention layers, which take no rotary positions at all (nope_layers).
Cohere Compass (CohereCompassForCausalLM, cohere_compass_text: the North models' text decoder): Cohere 2's layer
with Qwen3's rotation (halves, in the model's dtype) and a rope per layer type (rope_parameters[type]; null: none),
every layer full unless layer_types says otherwise, head_dim hidden / heads unless the file gives it, the logits times logit_scale
where given. Its M-RoPE is plain rope for text alone (the three position rows are equal)."""

import functools

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, OWN_HEAD, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map
from jaxllm.models.gemma4 import gemma4_rope
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.layers import LayerNorm
from jaxllm.models.moe import moe_weight_map
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


def compass_defaults(raw: dict) -> dict:
    """CohereCompassTextConfig's reading: layer_types (every layer full where left out) and each type's rope from
    rope_parameters, which must hold an entry per type (transformers' rotary embedding fails without one), null for a
    type whose layers take no rotary positions; a rope turning part of each head is refused (Qwen3's rotation of whole
    heads fails on it); logit_scale null: 1."""
    if "rope_scaling" in raw:  # transformers takes it, null included, for the rope_parameters it then reads per layer type
        raise ConfigError("config.json has rope_scaling, which transformers' Cohere Compass takes for its rope_parameters (and "
                          "fails on unless it holds an entry per layer type): remove it, giving rope_parameters per layer type")
    n = raw["num_hidden_layers"]
    types = tuple(raw.get("layer_types") or ["full_attention"] * n)
    if len(types) != n:
        raise ConfigError(f"config.json layer_types gives {len(types)} types for {n} layers (transformers fails on it): give one "
                          "per layer")
    given = raw.get("rope_parameters") or {}
    missing = sorted(t for t in set(types) if t not in given)
    if missing:
        raise ConfigError(f"config.json rope_parameters has no {missing[0]} entry, which Cohere Compass reads for its {missing[0]} "
                          "layers (transformers fails without it): give one per layer type, null for no rotary positions")
    roped = [t for t in set(types) if given[t] is not None]
    for kind in roped:
        if given[kind].get("rope_type") != "default" and given[kind].get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"config.json rope_parameters.{kind}.partial_rotary_factor turns part of each head, which Cohere "
                              "Compass cannot run (it rotates whole heads): remove it")
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]  # its __post_init__'s, which the file's replaces
    rope = gemma4_rope(raw, roped, {t: (head_dim,) for t in roped}, family="Cohere Compass")
    main = rope.get("full_attention") or next(iter(rope.values()), None)
    return dict(_flags(dict(raw, logit_scale=raw.get("logit_scale") or 1.0)), rope_interleaved=False, rope_float32_rotation=False,
                layer_types=types, nope_layers=tuple(i for i, t in enumerate(types) if t not in rope),
                head_dim=head_dim,
                **({"rope": main, "local_rope": rope.get("sliding_attention")} if main else {}))


def cohere2_moe_module(cfg: ModelConfig, **kwargs) -> CausalLM:
    """Cohere2-MoE's model: the parallel layer with RMSNorms where config.json gives rms_norm_eps, else Cohere's
    LayerNorms without bias (final norm alike)."""
    return (CausalLM if cfg.rms_norms else CohereForCausalLM)(cfg, **kwargs)


def every_nth_full(count: int, every, key: str) -> list[str]:
    """`count` layer types, every `every`-th full and the others sliding (Cohere2-MoE's patterns), or a ConfigError."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"config.json {key} {every!r} cannot set the layers' attention (transformers needs a positive "
                          "integer n: every n-th layer full): give that, or the layer_types")
    return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(count)]


def cohere2_moe_defaults(raw: dict) -> dict:
    """Cohere2MoeConfig's reading: the first `first_k_dense_replace` layers dense (mlp_layer_types where given), their
    windows every prefix_dense_sliding_window_pattern-th layer full, the others' every sliding_window_pattern-th;
    rotary positions on the sliding layers, and on dense ones where that prefix pattern is 1 (force_rope); routed
    experts `intermediate_size` wide, the top k logits softmaxed or their sigmoids (renormalised where
    norm_topk_prob: expert_selection_fn), shared experts num_shared_experts x as wide, summed or averaged with them."""
    n, first = raw["num_hidden_layers"], raw.get("first_k_dense_replace") or 0
    prefix = raw.get("prefix_dense_sliding_window_pattern", 1)
    types = raw.get("layer_types") or (every_nth_full(min(first, n), prefix, "prefix_dense_sliding_window_pattern")
                                       + every_nth_full(n - min(first, n), raw.get("sliding_window_pattern", 4), "sliding_window_pattern"))
    mlp = mlp_layer_types(raw, first)
    dense = tuple(i for i, t in enumerate(mlp) if t == "dense")
    nope = tuple(i for i, t in enumerate(types) if t == "full_attention" and not (i in dense and prefix == 1))
    select, combine, shared = raw.get("expert_selection_fn", "softmax"), raw.get("shared_expert_combination_strategy", "average"), \
        raw.get("num_shared_experts") or 0
    if select not in ("softmax", "sigmoid"):
        raise ConfigError(f"config.json expert_selection_fn {select!r:.40} is not one transformers' Cohere2-MoE runs: use "
                          "softmax or sigmoid")
    if shared and combine not in ("sum", "average"):
        raise ConfigError(f"config.json shared_expert_combination_strategy {combine!r:.40} is not one transformers' Cohere2-MoE "
                          "runs: use sum or average")
    experts = raw.get("num_experts", 8)
    if experts == 0 and len(dense) < n:
        raise ConfigError("config.json num_experts is 0 but mlp_layer_types has sparse layers (transformers fails routing "
                          "them): give the experts, or make every layer dense")
    width = raw["intermediate_size"]
    return dict(_flags(raw), layer_types=tuple(types), nope_layers=nope, rms_norms=raw.get("rms_norm_eps") is not None,
                intermediate_size=raw.get("prefix_dense_intermediate_size") or width, moe_intermediate_size=width,
                num_experts=experts, experts_per_token=raw.get("num_experts_per_tok", 2), dense_layers=dense,
                router="topk_softmax" if select == "softmax" else "topk_sigmoid", norm_topk_prob=raw.get("norm_topk_prob", True),
                shared_expert_intermediate_size=width * shared, shared_expert_gated=False, shared_expert_average=combine == "average")


_NOT_NULL = NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "attention_bias", "head_dim", "logit_scale")
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, layer_norm_eps=1e-5, logit_scale=0.25,
             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Aya Vision (CohereLabs/aya-vision-*) and Command A Vision (Cohere2VisionForConditionalGeneration): the text_config by
# its model_type's class (cohere2 where it gives none: Cohere2Config's shapes where it leaves them out), the wrapper's own
# lm_head (OWN_HEAD: no logit_scale; Aya Vision's multiplies by the text config's logit_scale since transformers 5.25),
# tied by the top-level tie_word_embeddings alone, true where left out
_VISION = dict(text_model_type="cohere2", fixed_text_type=False, top_level=dict(tie_word_embeddings=True), text_overrides=OWN_HEAD,
               text_defaults={"cohere2": dict(vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
                                              num_attention_heads=64, bos_token_id=5, eos_token_id=255001, pad_token_id=0)})
# North's vision checkpoints (CohereCompassForConditionalGeneration: Qwen3-VL's layout), whose head applies the text
# config's logit_scale as the text model's does; tied by the top-level tie_word_embeddings alone (false where left out)
COHERE_COMPASS_VISION = Wrapper(name="CohereCompassForConditionalGeneration", model_type="cohere_compass",
                                text_model_type="cohere_compass_text", other_modules=("visual",),
                                top_level=dict(tie_word_embeddings=False))
AYA_VISION = Wrapper(name="AyaVisionForConditionalGeneration", model_type="aya_vision",
                     **dict(_VISION, text_overrides={k: v for k, v in OWN_HEAD.items() if k != "logit_scale"}))
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
), Architecture(
    name="Cohere2MoeForCausalLM", module=cohere2_moe_module, hf_model_type="cohere2_moe", ignored_keys=NO_WINDOW_SWITCH,
    weight_map=moe_weight_map("mlp", {name: name for name in ("gate_proj", "up_proj", "down_proj")}, base=cohere_weight_map,
                              shared="shared_experts"),
    norm_eps_key=("rms_norm_eps", "layer_norm_eps"), config_defaults=cohere2_moe_defaults,
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "rope_theta", "attention_bias", "head_dim", "logit_scale", "num_experts",
                         "num_experts_per_tok", "norm_topk_prob", "num_shared_experts", "prefix_dense_sliding_window_pattern",
                         "sliding_window_pattern", "expert_selection_fn", "shared_expert_combination_strategy", "rope_parameters"),
    # Cohere2MoeConfig's
    hf_defaults=dict(layer_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192, sliding_window=4096, head_dim=128,
                     rope_theta=10000.0, bos_token_id=5, eos_token_id=255001, pad_token_id=0),
    # a dense first layer (full, rotated: force_rope), routed layers sliding (rotated) and full (not), a shared expert averaged
    # with the routed ones, LayerNorms; SPELLINGS: RMSNorms, the sigmoid router, the summed shared expert, the default patterns
    tiny_config=dict(_TINY, head_dim=16, intermediate_size=32, prefix_dense_intermediate_size=96, rope_theta=10000.0, sliding_window=8,
                     tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                     layer_types=["full_attention", "sliding_attention", "full_attention"], mlp_layer_types=["dense", "sparse", "sparse"]),
), Architecture(
    name="CohereCompassForCausalLM", module=CohereForCausalLM, weight_map=cohere_weight_map, hf_model_type="cohere_compass_text",
    # rope only from rope_parameters (rope_theta never read)
    ignored_keys=NO_WINDOW_SWITCH + ("rope_theta", "sliding_window_pattern"),
    norm_eps_key="layer_norm_eps", not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "attention_bias", "head_dim"),
    # CohereCompassTextConfig's
    hf_defaults=dict(vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40, num_attention_heads=64,
                     layer_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192, sliding_window=4096,
                     bos_token_id=5, eos_token_id=255001, pad_token_id=0),
    config_defaults=compass_defaults, wrappers=(COHERE_COMPASS_VISION,),
    # sliding layers with a rope of their own and full ones without (null), a window shorter than the test sequences,
    # untied, biases, a logit scale
    tiny_config=dict(_TINY, sliding_window=8, tie_word_embeddings=False, attention_bias=True,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                     rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}, "full_attention": None}),
))
