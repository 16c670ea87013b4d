"""Gemma 1, 2 and 3: the shared decoder with GeGLU (tanh GELU), embeddings scaled by sqrt(hidden),
and RMSNorm scaling by (1 + w) in float32.

Gemma 2 adds a norm after attention and around the MLP ("sandwich" norms), alternating sliding and
global layers, an attention scale of query_pre_attn_scalar ** -0.5 and tanh soft-capping of the
attention scores and the final logits. Gemma 3 keeps the layer, drops the soft-capping for q/k
RMSNorm, and gives its sliding layers a rope base of their own.
"""

from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, NOT_NULL, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, norm_kwargs
from jaxllm.models.layers import RMSNorm
from jaxllm.models.weights import WeightSpec


def gemma_defaults(raw: dict) -> dict:
    if raw.get("use_bidirectional_attention"):  # transformers' is_causal=False: every token sees the later ones too
        raise ConfigError("config.json use_bidirectional_attention=true (an encoder's attention, every token seeing the "
                          "tokens after it) is not supported: jaxllm runs causal language models; remove it or set it "
                          "to false only if the model was trained with causal attention")
    act = raw.get("hidden_act") or "gelu_pytorch_tanh"  # GemmaConfig reads no hidden_activation (Gemma 2/3's key)
    return dict(
        embed_scale=float(raw["hidden_size"]) ** 0.5,
        norm_offset=1.0,
        mlp_bias=False,  # attention_bias is read; the MLP has none whatever the config says
        # transformers maps the legacy "gelu" of Gemma 1's releases to the tanh approximation.
        hidden_act="gelu_pytorch_tanh" if act == "gelu" else act,
    )


def sandwich_defaults(raw: dict) -> dict:
    """Gemma 2 and 3: what Gemma 1 shares with them, but the activation as the config names it
    (transformers maps "gelu" to the tanh form for Gemma 1 only)."""
    return dict(gemma_defaults(raw), hidden_act=raw.get("hidden_activation") or "gelu_pytorch_tanh")


def alternating(raw: dict, every) -> tuple[str, ...]:
    """transformers' default layer pattern: every `every`-th layer global, the others sliding
    (layer_types where config.json gives them; a pattern other than a positive integer, which
    transformers cannot apply, refused)."""
    if raw.get("layer_types"):
        return tuple(raw["layer_types"])
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"config.json sliding_window_pattern {every!r} cannot set the layers' attention (transformers "
                          "needs a positive integer n: every n-th layer full): give that, or the layer_types")
    return tuple("full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(raw["num_hidden_layers"]))


def gemma2_defaults(raw: dict) -> dict:
    return dict(
        sandwich_defaults(raw),
        layer_types=alternating(raw, 2),
        attn_scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5,
        attn_softcap=raw.get("attn_logit_softcapping", 50.0),
        final_softcap=raw.get("final_logit_softcapping", 30.0),
    )


def gemma3_rope(raw: dict) -> dict:
    """config.json with rope_parameters per layer type as Gemma3TextConfig builds them: the file's
    entries (a flat rope_parameters gives none: transformers ignores it), a v4 rope_scaling merged
    into full_attention's, and an entry without rope_theta taking rope_theta (1,000,000) for the
    global layers, rope_local_base_freq (10,000) for the sliding ones."""
    given = raw.get("rope_parameters") or {}
    full = dict(given.get("full_attention") or {"rope_type": "default"}, **(raw.get("rope_scaling") or {}))
    full.setdefault("rope_theta", raw.get("rope_theta") or 1_000_000.0)
    sliding = dict(given.get("sliding_attention") or {"rope_type": "default"})
    sliding.setdefault("rope_theta", raw.get("rope_local_base_freq") or 10000.0)
    return dict(raw, rope_parameters={"full_attention": full, "sliding_attention": sliding}, rope_scaling=None)


def gemma3_defaults(raw: dict) -> dict:
    rope, local = parse_rope(raw), parse_rope(raw, "sliding_attention")  # raw as gemma3_rope rewrote it
    return dict(
        sandwich_defaults(raw),
        layer_types=alternating(raw, raw.get("sliding_window_pattern", 6)),  # not _sliding_window_pattern: transformers overwrites it
        qk_norm="per_head",
        attn_scale=float(raw.get("query_pre_attn_scalar", 256)) ** -0.5,
        attn_softcap=None,  # transformers' Gemma 3 reads attn_logit_softcapping but never applies it
        final_softcap=raw.get("final_logit_softcapping"),
        rope=rope,
        local_rope=local,
    )


class SandwichLayer(DecoderLayer):
    """x + post_attn(mix(input(x))), then x + post_ff(mlp(pre_ff(x))): the shared layer's norms and token mixing
    (attention, or a recurrent layer's mixer: LFM3), its post_attention_layernorm on the mixer's output. A subclass
    that `carries` hands its attention the value of the layer before and returns the one the attention hands on
    (Kolibri 1.1's candidate pool: models/sparse_attention.py IndexedAttention)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        norm = norm_kwargs(cfg, dtype, rngs)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, *carried):
        h = self.input_layernorm(x)
        attn, cache, *passed = self.self_attn(h, positions, rot, cache, kv, *carried) if carried else self.mix(h, positions, rot, cache, kv)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), cache, *passed


class Gemma2ForCausalLM(CausalLM):
    layer_cls = SandwichLayer


def sandwich_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = decoder_weight_map(cfg)
    for i in range(cfg.num_layers):
        for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            specs.append(WeightSpec(f"model.layers.{i}.{name}.weight", ("model", "layers", i, name, "weight")))
    return specs


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-6,
             tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1,
             pad_token_id=0)

# Gemma 2/3 read hidden_activation, not hidden_act; Gemma 3 its rope from per-layer-type entries
SANDWICH_NOT_NULL = NOT_NULL + ("rms_norm_eps", "hidden_activation", "num_key_value_heads", "head_dim", "attention_bias")

# google/gemma-3-4b-it, -12b-it, -27b-it (and -pt): the text model of the multimodal checkpoints.
# Gemma3Config ties the wrapper's own lm_head by its top-level tie_word_embeddings (true by default),
# and Gemma3ForConditionalGeneration's forward never applies final_logit_softcapping.
GEMMA3_MULTIMODAL = Wrapper(name="Gemma3ForConditionalGeneration", model_type="gemma3", text_model_type="gemma3_text",
                            top_level=dict(tie_word_embeddings=True), text_overrides=dict(final_logit_softcapping=None))

ARCHITECTURES = (Architecture(
    name="GemmaForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="gemma", ignored_keys=NO_WINDOW,
    # Gemma configs' head_dim, whatever hidden / heads
    hf_defaults=dict(tie_word_embeddings=True, head_dim=256, num_key_value_heads=16, max_position_embeddings=8192),
    config_defaults=gemma_defaults, not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias"),
    tiny_config=dict(TINY, rope_theta=10000.0, hidden_act="gelu_pytorch_tanh"),
), Architecture(
    name="Gemma2ForCausalLM", module=Gemma2ForCausalLM, weight_map=sandwich_weight_map, hf_model_type="gemma2", ignored_keys=NO_WINDOW_SWITCH,
    hf_defaults=dict(tie_word_embeddings=True, sliding_window=4096, head_dim=256, num_key_value_heads=4, max_position_embeddings=8192),
    config_defaults=gemma2_defaults, not_null=SANDWICH_NOT_NULL + ("rope_theta",),
    # Window 8 < the test sequences; a scalar unlike head_dim; soft caps low enough to bite.
    tiny_config=dict(TINY, rope_theta=10000.0, sliding_window=8, query_pre_attn_scalar=24,
                     attn_logit_softcapping=3.0, final_logit_softcapping=5.0),
), Architecture(
    name="Gemma3ForCausalLM", module=Gemma2ForCausalLM, weight_map=sandwich_weight_map, hf_model_type="gemma3_text", ignored_keys=NO_WINDOW_SWITCH,
    # Gemma3TextConfig's defaults: a multimodal checkpoint's text_config, saved as its difference from them, leaves out most keys
    hf_defaults=dict(tie_word_embeddings=True, sliding_window=4096, head_dim=256, num_key_value_heads=4, max_position_embeddings=131072,
                     vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                     bos_token_id=2, eos_token_id=1, pad_token_id=0),
    config_defaults=gemma3_defaults, common_names=gemma3_rope, not_null=SANDWICH_NOT_NULL,  # before any reading: a flat rope_parameters is never checked
    wrappers=(GEMMA3_MULTIMODAL,),
    tiny_config=dict(TINY, sliding_window=8, query_pre_attn_scalar=24,
                     layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                     rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
))
