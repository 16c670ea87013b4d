"""Gemma 4's text model (Gemma4ForCausalLM, and the language model of Gemma4ForConditionalGeneration), and
Gemma 4 Unified's (Gemma4UnifiedForCausalLM, gemma4_unified_text: Gemma 4's layers without per-layer embeddings
or experts, whatever the keys say, as Gemma4UnifiedTextModel builds none; its window 1,024 by default).

Gemma 3's sandwich-normed layer with (transformers' modeling_gemma4.py):
- RMSNorm scaling by w, not (1 + w), in float32 before the cast (Gemma4RMSNorm); q/k RMSNorm per
  head, and the values RMS-normed without a scale (v_norm); attention scale 1.0, no soft-capping;
- full-attention layers with heads of their own size and kv heads (per_layer_config, or
  global_head_dim / num_global_key_value_heads as the Hub's files spell it), and their own rope,
  by default proportional (models/rope.py);
- attention_k_eq_v: full layers' values are their keys' projection (no v_proj);
- num_kv_shared_layers: the last layers project no keys or values and attend over those of the
  last earlier layer of their type (ModelConfig.kv_source; their MLP twice as wide where
  use_double_wide_mlp). In the engine such a layer keeps no pages: it reads its source layer's
  pool (docs/architecture.md);
- per-layer embeddings (PLE): a token table of num_layers x hidden_size_per_layer_input, plus a
  projection of the embeddings, normed, feed each layer a vector it gates into its output;
- enable_moe_block: routed experts beside the dense MLP, routed by the layer's input, their sum
  normed; every layer's output times a learned layer_scalar.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, Architecture, Wrapper
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.config_fields import LAYER_TYPES
from jaxllm.models.decoder import CausalLM, DecoderModel, norm_kwargs
from jaxllm.models.experts import MoE
from jaxllm.models.gemma import SANDWICH_NOT_NULL, TINY, sandwich_defaults, sandwich_weight_map
from jaxllm.models.layers import Dense, Embed, GatedMLP, RMSNorm, activation, param
from jaxllm.models.moe import fused_expert_specs
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec

LAYER_CONFIG_KEYS = ("head_dim", "num_key_value_heads")  # what per_layer_config may change, as Gemma 4 uses it
_DEFAULT_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                 "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}}


def gemma4_layer_types(raw: dict) -> tuple[str, ...]:
    """Gemma4TextConfig's layer types: the file's, else every 6th layer full; the last layer full whatever they say."""
    types = list(raw.get("layer_types") or ("sliding_attention" if (i + 1) % 6 else "full_attention"
                                            for i in range(raw["num_hidden_layers"])))
    for kind in types:
        if kind not in LAYER_TYPES:
            raise ConfigError(f"config.json layer type '{kind}' is not supported; use full_attention or sliding_attention")
    return tuple(types[:-1] + ["full_attention"])


def _layer_overrides(raw: dict, types) -> dict[int, dict]:
    """per_layer_config as Gemma4TextConfig builds it: the file's (null: none), else global_head_dim
    (512) and, with attention_k_eq_v, num_global_key_value_heads on every full layer."""
    if "per_layer_config" in raw:
        given = raw["per_layer_config"] or {}
    else:
        if raw.get("global_head_dim", 512) is None:
            raise ConfigError("config.json 'global_head_dim' is null, which Gemma 4's full-attention layers cannot be "
                              "built with: give their head size, or leave the key out for 512")
        layer = {"head_dim": raw.get("global_head_dim", 512)}
        if raw.get("attention_k_eq_v") and raw.get("num_global_key_value_heads") is not None:
            layer["num_key_value_heads"] = raw["num_global_key_value_heads"]
        given = {str(i): layer for i, t in enumerate(types) if t == "full_attention"}
    out = {}
    for key, layer in given.items():
        index = int(key) if isinstance(key, str) and key.strip().isdigit() else -1
        if not 0 <= index < len(types) or not isinstance(layer, dict):
            raise ConfigError(f"config.json per_layer_config entry {key!r} must be a layer index below {len(types)} "
                              "holding an object: correct per_layer_config")
        for name, value in layer.items():
            if name not in LAYER_CONFIG_KEYS:
                raise ConfigError(f"config.json per_layer_config layer {index} sets '{name}': jaxllm's Gemma 4 reads only "
                                  f"{' and '.join(LAYER_CONFIG_KEYS)} there")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.json per_layer_config layer {index} '{name}' must be a positive integer, got "
                                  f"{value!r}: correct it")
        out[index] = layer
    return out


def _type_shapes(raw: dict, types) -> dict[str, tuple[int, int]]:
    """(head_dim, kv heads) of each layer type, one per type as transformers' rotary embedding needs."""
    overrides = _layer_overrides(raw, types)
    shapes = {}
    for i, kind in enumerate(types):
        layer = overrides.get(i, {})
        shape = (layer.get("head_dim", raw["head_dim"]), layer.get("num_key_value_heads", raw["num_key_value_heads"]))
        if shapes.setdefault(kind, shape) != shape:
            raise ConfigError(f"config.json per_layer_config gives the {kind} layers different head sizes or kv heads "
                              "(transformers' Gemma 4 needs one per layer type): make them equal")
        if raw["num_attention_heads"] % shape[1]:
            raise ConfigError(f"config.json num_attention_heads={raw['num_attention_heads']} is not divisible by the {kind} "
                              f"layers' {shape[1]} kv heads: grouped-query attention needs a whole number per kv head")
    return shapes


def gemma4_rope(raw: dict, types, shapes, default=_DEFAULT_ROPE, family: str = "Gemma 4") -> dict:
    """The rope of each layer type, as Gemma 4's rotary embedding reads rope_parameters (`default`
    where null; LFM3's the same way): the entry of each type its layers use (`types`: attention layers'),
    with rope_type and rope_theta; the default type ignores partial_rotary_factor there, proportional
    keeps it; each turns its type's heads (shapes[type][0] wide)."""
    given = default if raw.get("rope_parameters") is None else raw["rope_parameters"]  # {}: no entry (transformers fails)
    out = {}
    for kind in set(types):
        entry = given.get(kind)
        if not isinstance(entry, dict) or entry.get("rope_theta") is None or entry.get("rope_type") is None:
            raise ConfigError(f"config.json rope_parameters has no {kind} entry with rope_type and rope_theta, which {family} "
                              f"reads for its {kind} layers: give one per layer type")
        if entry["rope_type"] == "default":
            entry = dict(entry, partial_rotary_factor=1.0)
        rope = parse_rope({"rope_parameters": {"full_attention": entry}, "max_position_embeddings": raw.get("max_position_embeddings")})
        out[kind] = dataclasses.replace(rope, head_dim=shapes[kind][0])
    return out


def kv_shared(raw: dict, types) -> int:
    """num_kv_shared_layers, refused where transformers cannot build it: every layer shared (no
    layer computes keys), or a shared layer whose type no earlier layer has."""
    shared, layers = raw["num_kv_shared_layers"], len(types)
    if shared >= layers:
        raise ConfigError(f"config.json num_kv_shared_layers={shared} leaves none of the {layers} layers computing keys and "
                          "values for the others to share: set it below num_hidden_layers")
    if shared and set(types[: layers - shared]) != set(types):
        raise ConfigError(f"config.json num_kv_shared_layers={shared} shares keys and values of a layer type no earlier layer "
                          "computes (transformers refuses it): lower it, or change layer_types")
    return shared


def _experts(raw: dict) -> dict:
    if not raw.get("enable_moe_block"):
        return {}
    for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
        if not raw.get(key):
            raise ConfigError(f"config.json enable_moe_block is true but '{key}' is {raw.get(key)!r}: Gemma 4's experts need "
                              "it (a positive integer)")
    return dict(num_experts=raw["num_experts"], experts_per_token=raw["top_k_experts"],
                moe_intermediate_size=raw["moe_intermediate_size"], norm_topk_prob=True, router="softmax_topk")


def gemma4_defaults(raw: dict) -> dict:
    bidirectional = raw.get("use_bidirectional_attention")
    if bidirectional not in (None, False, "vision"):  # "vision": image tokens see each other; text stays causal
        raise ConfigError(f"config.json use_bidirectional_attention={bidirectional!r} (every token seeing the tokens after "
                          "it) is not supported: jaxllm runs causal text generation; use null or \"vision\"")
    if "rope_scaling" in raw:  # transformers' config takes it for a flat rope_parameters, which Gemma 4 cannot run
        raise ConfigError("config.json has rope_scaling, which transformers' Gemma 4 takes for its rope_parameters and then "
                          "fails to read per layer type: remove it (give rope_parameters per layer type)")
    raw = {k: v for k, v in raw.items() if k != "use_bidirectional_attention"}
    types = gemma4_layer_types(raw)
    shapes = _type_shapes(raw, types)
    rope = gemma4_rope(raw, types, shapes)
    local = shapes.get("sliding_attention", shapes["full_attention"])
    full = shapes["full_attention"]
    return dict(
        sandwich_defaults(raw),
        norm_offset=0.0, norm_upcast_scale=True,  # Gemma4RMSNorm: x * w in float32, then the cast
        layer_types=types, qk_norm="per_head", v_norm=True, attn_scale=1.0, attn_softcap=None,
        final_softcap=raw.get("final_logit_softcapping"),
        head_dim=local[0], num_kv_heads=local[1],
        global_head_dim=full[0] if full[0] != local[0] else None, global_kv_heads=full[1] if full[1] != local[1] else None,
        rope=rope["full_attention"], local_rope=rope.get("sliding_attention"),
        attn_k_eq_v=bool(raw["attention_k_eq_v"]), kv_shared_layers=kv_shared(raw, types),
        double_wide_mlp=bool(raw["use_double_wide_mlp"]),
        per_layer_input_size=raw["hidden_size_per_layer_input"], per_layer_vocab_size=raw["vocab_size_per_layer_input"],
        **_experts(raw),
    )


class Gemma4Experts(MoE, pytree=False):
    """Routed experts whose router RMS-normalizes its input (no weight), scales it by a learned
    vector times hidden ** -0.5, then softmax, top k, renormalised, each weight times its expert's
    learned scale (Gemma4TextRouter)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        e = cfg.hidden_size
        self.router_norm = RMSNorm(e, cfg.norm_eps, dtype=dtype, rngs=rngs, weight=False)
        self.router_scale = param((e,), ("norm",), dtype)
        self.per_expert_scale = param((cfg.num_experts,), ("router",), dtype)
        self.root_size = e**-0.5

    def route(self, x):
        weights, experts = super().route(self.router_norm(x) * self.router_scale[...] * self.root_size)
        return weights * jnp.take(self.per_expert_scale[...], experts).astype(jnp.float32), experts


class Gemma4Layer(nnx.Module):
    """Gemma 3's sandwich-normed layer; the experts' normed output added to the MLP's (normed) where
    the model has experts; then the per-layer input gated in; the whole output times layer_scalar."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs)
        e, eps, p = cfg.hidden_size, cfg.norm_eps, cfg.per_layer_input_size
        self.input_layernorm = RMSNorm(e, eps, **norm)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(e, eps, **norm)
        self.pre_feedforward_layernorm = RMSNorm(e, eps, **norm)
        wide = cfg.double_wide_mlp and cfg.kv_shape(layer) is None
        self.mlp = GatedMLP(cfg.replace(intermediate_size=2 * cfg.intermediate_size) if wide else cfg, dtype=dtype, rngs=rngs)
        self.post_feedforward_layernorm = RMSNorm(e, eps, **norm)
        self.experts = Gemma4Experts(cfg, dtype=dtype, rngs=rngs) if cfg.num_experts else None
        routed = self.experts is not None
        self.post_feedforward_layernorm_1 = RMSNorm(e, eps, **norm) if routed else None
        self.pre_feedforward_layernorm_2 = RMSNorm(e, eps, **norm) if routed else None
        self.post_feedforward_layernorm_2 = RMSNorm(e, eps, **norm) if routed else None
        self.act = activation(cfg.hidden_act)
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.per_layer_input_gate = Dense((e,), (p,), ("embed", "mlp"), **dense) if p else None
        self.per_layer_projection = Dense((p,), (e,), ("mlp", "embed"), **dense) if p else None
        self.post_per_layer_input_norm = RMSNorm(e, eps, **norm) if p else None
        self.layer_scalar = param((1,), ("norm",), dtype)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, per_layer=None):
        attn, cache = self.self_attn(self.input_layernorm(x), positions, rot, cache, kv)
        x = x + self.post_attention_layernorm(attn)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        if self.experts is not None:
            routed = self.experts(self.pre_feedforward_layernorm_2(x), route_from=x)
            h = self.post_feedforward_layernorm_1(h) + self.post_feedforward_layernorm_2(routed)
        x = x + self.post_feedforward_layernorm(h)
        if self.per_layer_input_gate is not None:
            gated = self.act(self.per_layer_input_gate(x)) * per_layer
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(gated))
        return x * self.layer_scalar[...], cache


class Gemma4TextModel(DecoderModel):
    """The decoder with per-layer embeddings: a token table [per-layer vocab, layers x P] scaled by
    sqrt(P), and the embeddings projected to layers x P, times hidden ** -0.5 and RMS-normed per
    layer; their sum times 2 ** -0.5 is layer i's per-layer input (get_per_layer_inputs,
    project_per_layer_inputs)."""

    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        n, p = cfg.num_layers * cfg.per_layer_input_size, cfg.per_layer_input_size
        self.embed_tokens_per_layer = Embed(cfg.per_layer_vocab_size, n, dtype=dtype, rngs=rngs, scale=p**0.5,
                                            quantizable=True) if p else None
        self.per_layer_model_projection = Dense((cfg.hidden_size,), (n,), ("embed", "mlp"), bias=False, dtype=dtype,
                                                rngs=rngs) if p else None
        self.per_layer_projection_norm = RMSNorm(p, cfg.norm_eps, **norm_kwargs(cfg, dtype, rngs)) if p else None

    def layer_inputs(self, tokens, x):
        if self.embed_tokens_per_layer is None:
            return None
        shape = tokens.shape + (self.cfg.num_layers, self.cfg.per_layer_input_size)
        own = self.embed_tokens_per_layer(tokens).reshape(shape)
        projected = (self.per_layer_model_projection(x) * self.cfg.hidden_size**-0.5).reshape(shape)
        return (self.per_layer_projection_norm(projected) + own) * 2**-0.5


class Gemma4ForCausalLM(CausalLM):
    layer_cls = Gemma4Layer
    model_cls = Gemma4TextModel


def per_layer_input_specs(cfg: ModelConfig) -> list[WeightSpec]:
    """The per-layer embeddings' tensors (Gemma 4, Gemma 3n): the table, the projection and its norm, and each
    layer's gate, projection and norm; none where per_layer_input_size is 0."""
    if not cfg.per_layer_input_size:
        return []
    specs = [WeightSpec("model.embed_tokens_per_layer.weight", ("model", "embed_tokens_per_layer", "embedding")),
             WeightSpec("model.per_layer_model_projection.weight", ("model", "per_layer_model_projection", "kernel"), Linear()),
             WeightSpec("model.per_layer_projection_norm.weight", ("model", "per_layer_projection_norm", "weight"))]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{name}.weight", ours + (name, "kernel"), Linear())
                  for name in ("per_layer_input_gate", "per_layer_projection")]
        specs.append(WeightSpec(hf + "post_per_layer_input_norm.weight", ours + ("post_per_layer_input_norm", "weight")))
    return specs


def gemma4_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = sandwich_weight_map(cfg) + per_layer_input_specs(cfg)  # k/v projections only where a layer has them
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs.append(WeightSpec(hf + "layer_scalar", ours + ("layer_scalar",)))
        if cfg.num_experts:
            experts = ours + ("experts",)
            specs += [WeightSpec(f"{hf}{name}.weight", ours + (name, "weight"))
                      for name in ("post_feedforward_layernorm_1", "pre_feedforward_layernorm_2", "post_feedforward_layernorm_2")]
            specs += [WeightSpec(hf + "router.proj.weight", experts + ("gate", "kernel"), Linear()),
                      WeightSpec(hf + "router.scale", experts + ("router_scale",)),
                      WeightSpec(hf + "router.per_expert_scale", experts + ("per_expert_scale",))]
            specs += fused_expert_specs(hf + "experts.gate_up_proj", hf + "experts.down_proj", experts, cfg.moe_intermediate_size)
    return specs


def shared_kv_tensors(cfg: ModelConfig) -> tuple[str, ...]:
    """Regexes of the k/v projections and norms of the layers that read another's keys and values:
    transformers ignores them (_keys_to_ignore_on_load_unexpected), which checkpoints may keep."""
    shared = "|".join(str(i) for i in range(cfg.num_layers) if cfg.kv_shape(i) is None)
    return (rf"^(?:.*\.)?layers\.(?:{shared})\.self_attn\.(?:k_proj|v_proj|k_norm|v_norm)\.",) if shared else ()


# google/gemma-4-*: Gemma4Config ties the wrapper's lm_head by its top-level tie_word_embeddings (true
# by default); Gemma4ForConditionalGeneration applies final_logit_softcapping as the text model does.
GEMMA4_MULTIMODAL = Wrapper(name="Gemma4ForConditionalGeneration", model_type="gemma4", text_model_type="gemma4_text",
                            other_modules=("vision_tower", "audio_tower", "embed_vision", "embed_audio"),
                            top_level=dict(tie_word_embeddings=True))

# Gemma4TextConfig's field defaults: a multimodal checkpoint's text_config may leave any of them out
_HF_DEFAULTS = dict(vocab_size=262_144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=256, max_position_embeddings=131_072, rms_norm_eps=1e-6,
                    tie_word_embeddings=True, sliding_window=512, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                    hidden_activation="gelu_pytorch_tanh", attention_bias=False, vocab_size_per_layer_input=262_144,
                    hidden_size_per_layer_input=256, attention_k_eq_v=False, num_kv_shared_layers=0, enable_moe_block=False,
                    use_double_wide_mlp=False)

def unified_defaults(raw: dict) -> dict:
    """Gemma 4's reading without per-layer embeddings or experts (Gemma4UnifiedTextModel builds neither)."""
    return gemma4_defaults(dict(raw, **_NO_PLE_OR_EXPERTS))


_NO_PLE_OR_EXPERTS = dict(hidden_size_per_layer_input=0, vocab_size_per_layer_input=0, enable_moe_block=False)
# keys of Gemma 4's that Gemma4UnifiedTextConfig has no field for and its model never reads
_UNIFIED_UNREAD = ("hidden_size_per_layer_input", "vocab_size_per_layer_input", "enable_moe_block", "num_experts",
                   "top_k_experts", "moe_intermediate_size")
_GEMMA4_IGNORED = NO_WINDOW_SWITCH + ("rope_theta", "rope_local_base_freq", "sliding_window_pattern", "query_pre_attn_scalar",
                                      "attn_logit_softcapping", "hidden_act", "num_experts_per_tok")
_GEMMA4_NOT_NULL = SANDWICH_NOT_NULL + ("sliding_window", "attention_k_eq_v", "num_kv_shared_layers", "use_double_wide_mlp")
# Gemma4ForConditionalGeneration's encoder-free sibling: patches and audio frames embedded straight into the text model
GEMMA4_UNIFIED_MULTIMODAL = Wrapper(name="Gemma4UnifiedForConditionalGeneration", model_type="gemma4_unified",
                                    text_model_type="gemma4_unified_text", other_modules=("embed_vision", "embed_audio"),
                                    top_level=dict(tie_word_embeddings=True))

def _tiny_layers(types, partial: float) -> dict:
    """Gemma 4's tiny layers: sliding ones of 16-wide heads (2 kv heads), full ones of 32 (1 kv head, values = keys,
    proportional rope turning `partial` of each head); the last two layers share the kv of earlier ones (MLP twice as
    wide); a soft cap on the logits."""
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": partial, "rope_theta": 100000.0}}
    return dict(TINY, num_hidden_layers=len(types), head_dim=16, global_head_dim=32, num_global_key_value_heads=1, sliding_window=8,
                layer_types=list(types), rope_parameters=rope, attention_k_eq_v=True, num_kv_shared_layers=2,
                use_double_wide_mlp=True, final_logit_softcapping=5.0)


ARCHITECTURES = (Architecture(
    name="Gemma4ForCausalLM", module=Gemma4ForCausalLM, weight_map=gemma4_weight_map, hf_model_type="gemma4_text",
    # keys Gemma 4's code never reads (its rope from rope_parameters alone, its pattern a constant 6, scale 1.0)
    ignored_keys=_GEMMA4_IGNORED, ignore_for=shared_kv_tensors,
    hf_defaults=_HF_DEFAULTS, config_defaults=gemma4_defaults, wrappers=(GEMMA4_MULTIMODAL,),
    not_null=_GEMMA4_NOT_NULL + ("vocab_size_per_layer_input", "hidden_size_per_layer_input", "enable_moe_block"),
    # Sliding layers of 16-wide heads (2 kv heads), full ones of 32 (1 kv head, values = keys, proportional
    # rope); the last two layers share the kv of layers 1 and 2 (MLP twice as wide); per-layer embeddings;
    # 4 experts (top 2) beside each MLP; a soft cap on the logits.
    tiny_config=dict(_tiny_layers(("sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"),
                                  0.25), hidden_size_per_layer_input=8, vocab_size_per_layer_input=128, enable_moe_block=True,
                     num_experts=4, top_k_experts=2, moe_intermediate_size=32),
), Architecture(
    name="Gemma4UnifiedForCausalLM", module=Gemma4ForCausalLM, weight_map=gemma4_weight_map, hf_model_type="gemma4_unified_text",
    ignored_keys=_GEMMA4_IGNORED + _UNIFIED_UNREAD, ignore_for=shared_kv_tensors, config_defaults=unified_defaults,
    # Gemma4UnifiedTextConfig's field defaults where they differ from Gemma4TextConfig's
    hf_defaults=dict({k: v for k, v in _HF_DEFAULTS.items() if k not in _UNIFIED_UNREAD}, sliding_window=1024,
                     max_position_embeddings=262_144),
    wrappers=(GEMMA4_UNIFIED_MULTIMODAL,), not_null=_GEMMA4_NOT_NULL,
    # Gemma 4's tiny layers (two head sizes, values as keys on the full layers, the last two sharing kv, double-wide MLPs)
    tiny_config=_tiny_layers(("sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"), 0.5),
),)
