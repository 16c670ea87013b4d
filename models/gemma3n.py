"""Gemma 3n's text model (Gemma3nForCausalLM, and the language model of Gemma3nForConditionalGeneration).

Gemma 4's attention and per-layer embeddings (transformers' modeling_gemma3n.py came first): q/k RMSNorm per head,
values RMS-normed without a scale, attention scale 1.0, norms scaling by w in float32; the last num_kv_shared_layers
layers attending over the keys and values of the last earlier layer of their type (ModelConfig.kv_source, no pages
of their own in the engine); per-layer embeddings gated into each layer's output. Its own:
- AltUp: the layers pass on altup_num_inputs copies ("streams") of the hidden state, [streams, B, T, E]. The
  embeddings' copies are projections of them scaled to their RMS (streams_in); each layer predicts every stream
  from all of them (coefficients routed by the active stream), computes on the active one, and corrects every
  stream by the difference (routed coefficients again); the per-layer input goes into the other streams; at the
  end the streams are projected back, scaled alike and averaged (streams_out);
- LAuReL: a low-rank residual of the normed input (rank laurel_rank) beside the attention, their sum times 1/sqrt 2;
- intermediate_size per layer (a list) and a gaussian top-k on the first layers' MLP gate
  (activation_sparsity_pattern: layers.GatedMLP's `sparsity`);
- per-layer embeddings of the first vocab_size_per_layer_input tokens alone (others read row 0).
"""

import math

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, Architecture, Wrapper
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, norm_kwargs
from jaxllm.models.experts import make_mlp
from jaxllm.models.gemma import SANDWICH_NOT_NULL, TINY, alternating, gemma3_rope, sandwich_defaults, sandwich_weight_map
from jaxllm.models.gemma4 import Gemma4TextModel, kv_shared, per_layer_input_specs, shared_kv_tensors
from jaxllm.models.layers import Dense, RMSNorm, activation, param
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


def gemma3n_names(raw: dict) -> dict:
    """Gemma3nTextConfig's reading before the common one: intermediate_size as one width per layer (a list, kept
    as intermediate_sizes; the widest as intermediate_size), the rope per layer type as Gemma 3's."""
    widths = raw.get("intermediate_size")
    if isinstance(widths, list):
        layers = raw.get("num_hidden_layers")
        if layers is not None and len(widths) != layers:
            raise ConfigError(f"config.json intermediate_size gives {len(widths)} widths for {layers} layers: give one per "
                              "layer, or one number for all")
        raw = dict(raw, intermediate_size=max(widths), intermediate_sizes=widths)
    return gemma3_rope(raw)


def _sparsity(raw: dict, layers: int) -> tuple[float, ...]:
    """activation_sparsity_pattern, or Gemma3nTextConfig's default: 0.95 on the first 10 layers of a model deeper than 10."""
    given = raw.get("activation_sparsity_pattern")
    if given is None:
        return (0.95,) * 10 + (0.0,) * (layers - 10) if layers > 10 else (0.0,) * layers
    if len(given) != layers:
        raise ConfigError(f"config.json activation_sparsity_pattern gives {len(given)} values for {layers} layers "
                          "(transformers needs one per layer): give one per layer")
    return tuple(float(s) for s in given)


def gemma3n_defaults(raw: dict) -> dict:
    layers, streams, active = raw["num_hidden_layers"], raw["altup_num_inputs"], raw["altup_active_idx"]
    types = known_layer_types(alternating(raw, 5), ("full_attention", "sliding_attention"), "Gemma 3n",
                              "transformers' Gemma 3n builds masks for these alone")
    if active >= streams:
        raise ConfigError(f"config.json altup_active_idx={active} names no stream of the altup_num_inputs={streams}: "
                          f"set it below {streams}")
    return dict(
        sandwich_defaults(raw),
        norm_offset=0.0, norm_upcast_scale=True,  # Gemma3nRMSNorm: x * w in float32, then the cast
        layer_types=types, qk_norm="per_head", v_norm=True, attn_scale=1.0, attn_softcap=None,
        final_softcap=raw["final_logit_softcapping"],
        rope=parse_rope(raw), local_rope=parse_rope(raw, "sliding_attention"),  # raw as gemma3_rope rewrote it
        kv_shared_layers=kv_shared(raw, types),
        per_layer_input_size=raw["hidden_size_per_layer_input"], per_layer_vocab_size=raw["vocab_size_per_layer_input"],
        intermediate_sizes=tuple(raw.get("intermediate_sizes") or ()), activation_sparsity=_sparsity(raw, layers),
        altup_streams=streams, altup_active=active, altup_correct_scale=bool(raw["altup_correct_scale"]),
        laurel_rank=raw["laurel_rank"],
    )


class AltUp(nnx.Module, pytree=False):
    """Gemma3nTextAltUp: predict every stream as itself plus a routed mix of all of them, correct every stream by
    the active one's innovation (layer output minus its prediction) times routed coefficients plus 1; the
    router: tanh(modality_router(norm(x) / hidden)) of the active stream."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        a, e = cfg.altup_streams, cfg.hidden_size
        small = dict(bias=False, dtype=dtype, rngs=rngs, quantizable=False)
        self.correct_output_scale = param((e,), ("norm",), dtype)
        self.correction_coefs = Dense((a,), (a,), ("router", "router"), **small)
        self.prediction_coefs = Dense((a,), (a * a,), ("router", "router"), **small)
        self.modality_router = Dense((e,), (a,), ("embed", "router"), **small)
        self.router_norm = RMSNorm(e, cfg.norm_eps, **norm_kwargs(cfg, dtype, rngs))
        self.streams, self.active, self.router_scale = a, cfg.altup_active, e**-1.0

    def modalities(self, x):
        routed = self.modality_router(self.router_norm(x) * self.router_scale)
        return jnp.tanh(routed.astype(jnp.float32)).astype(x.dtype)

    def predict(self, x):
        """x [streams, B, T, E] -> the predictions, same shape."""
        m = self.modalities(x[self.active])
        coefs = self.prediction_coefs(m).reshape(m.shape[:-1] + (self.streams, self.streams))  # [B, T, to, from]
        return jnp.einsum("btpq,qbte->pbte", coefs, x) + x

    def correct(self, predictions, activated):
        coefs = self.correction_coefs(self.modalities(activated)) + 1.0  # [B, T, streams]
        innovation = activated - predictions[self.active]
        return innovation[None] * jnp.moveaxis(coefs, -1, 0)[..., None] + predictions

    def scale_output(self, x):
        scale = self.correct_output_scale[...]
        return (x.astype(scale.dtype) * scale).astype(x.dtype)


class Laurel(nnx.Module, pytree=False):
    """Gemma3nTextLaurelBlock: x + norm(right(left(x))), left and right of rank laurel_rank."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, r = cfg.hidden_size, cfg.laurel_rank
        self.linear_left = Dense((e,), (r,), ("embed", "latent"), bias=False, dtype=dtype, rngs=rngs)
        self.linear_right = Dense((r,), (e,), ("latent", "embed"), bias=False, dtype=dtype, rngs=rngs)
        self.post_laurel_norm = RMSNorm(e, cfg.norm_eps, **norm_kwargs(cfg, dtype, rngs))

    def __call__(self, x):
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class Gemma3nLayer(nnx.Module):
    """Gemma3nTextDecoderLayer over the streams [streams, B, T, E]: the sandwich-normed attention and MLP on the
    active stream's prediction, LAuReL beside the attention, AltUp's correction of every stream, then the per-layer
    input gated from the (scaled) active stream into the others (streams 1..: transformers' corrected[1:])."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs)
        e, eps, p = cfg.hidden_size, cfg.norm_eps, cfg.per_layer_input_size
        self.altup = AltUp(cfg, dtype=dtype, rngs=rngs)
        self.laurel = Laurel(cfg, dtype=dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(e, eps, **norm)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(e, eps, **norm)
        self.pre_feedforward_layernorm = RMSNorm(e, eps, **norm)
        self.mlp = make_mlp(cfg, layer, dtype=dtype, rngs=rngs)  # this layer's width and gate sparsity
        self.post_feedforward_layernorm = RMSNorm(e, eps, **norm)
        self.act = activation(cfg.hidden_act)
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.per_layer_input_gate = Dense((e,), (p,), ("embed", "mlp"), **dense) if p else None
        self.per_layer_projection = Dense((p,), (e,), ("mlp", "embed"), **dense) if p else None
        self.post_per_layer_input_norm = RMSNorm(e, eps, **norm) if p else None
        self.active, self.correct_scale = cfg.altup_active, cfg.altup_correct_scale

    def attention_input(self, x, per_layer=None):
        """The attention's input of the layer's input x (research.attention_weights): the normed active prediction."""
        return self.input_layernorm(self.altup.predict(x)[self.active])

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, per_layer=None):
        predictions = self.altup.predict(x)
        active = predictions[self.active]
        normed = self.input_layernorm(active)
        attn, cache = self.self_attn(normed, positions, rot, cache, kv)
        h = (active + self.post_attention_layernorm(attn) + self.laurel(normed)) / math.sqrt(2)
        h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        corrected = self.altup.correct(predictions, h)
        if self.per_layer_input_gate is None:  # a width of 0: transformers adds the norm of zeros
            return corrected, cache
        first = corrected[self.active]
        first = self.altup.scale_output(first) if self.correct_scale else first
        gated = self.act(self.per_layer_input_gate(first)) * per_layer
        return corrected.at[1:].add(self.post_per_layer_input_norm(self.per_layer_projection(gated))), cache


def _rms(x):
    return jnp.mean(x * x, axis=-1, keepdims=True) ** 0.5


def _rescaled(x, target):
    """x scaled to the RMS `target` (its own RMS floored at sqrt(1e-5), as transformers clamps the mean square)."""
    return x * target / jnp.sqrt(jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True), 1e-5))


class Gemma3nTextModel(Gemma4TextModel):
    """Gemma 4's decoder with per-layer embeddings, over AltUp's streams (streams_in, streams_out); transformers
    records the last layer's streams as its last hidden state (trace_streams)."""

    trace_streams = True

    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        e = cfg.hidden_size
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.altup_projections = nnx.List([Dense((e,), (e,), ("word_embed", "embed"), **dense)
                                           for _ in range(1, cfg.altup_streams)])
        self.altup_unembed_projections = nnx.List([Dense((e,), (e,), ("embed", "word_embed"), **dense)
                                                   for _ in range(1, cfg.altup_streams)])

    def layer_inputs(self, tokens, x):
        return super().layer_inputs(jnp.where(tokens < self.cfg.per_layer_vocab_size, tokens, 0), x)

    def streams_in(self, x):
        target = _rms(x)
        return jnp.stack([x] + [_rescaled(p(x), target) for p in self.altup_projections])

    def streams_out(self, x):
        target = _rms(x[0])
        return jnp.mean(jnp.stack([x[0]] + [_rescaled(p(s), target) for p, s in zip(self.altup_unembed_projections, x[1:])]), 0)


class Gemma3nForCausalLM(CausalLM):
    layer_cls = Gemma3nLayer
    model_cls = Gemma3nTextModel


def gemma3n_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = sandwich_weight_map(cfg) + per_layer_input_specs(cfg)  # k/v projections only where a layer has them
    for kind in ("altup_projections", "altup_unembed_projections"):
        specs += [WeightSpec(f"model.{kind}.{i}.weight", ("model", kind, i, "kernel"), Linear())
                  for i in range(cfg.altup_streams - 1)]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{name}.weight", ours + tuple(name.split(".")) + ("kernel",), Linear())
                  for name in ("altup.correction_coefs", "altup.prediction_coefs", "altup.modality_router",
                               "laurel.linear_left", "laurel.linear_right")]
        specs += [WeightSpec(hf + "altup.correct_output_scale", ours + ("altup", "correct_output_scale")),
                  WeightSpec(hf + "altup.router_norm.weight", ours + ("altup", "router_norm", "weight")),
                  WeightSpec(hf + "laurel.post_laurel_norm.weight", ours + ("laurel", "post_laurel_norm", "weight"))]
    return specs


def ignored_tensors(cfg: ModelConfig) -> tuple[str, ...]:
    """The shared-kv layers' k/v tensors (as Gemma 4's), and with hidden_size_per_layer_input 0 the per-layer
    embeddings' tensors, which transformers' Gemma 3n builds empty (and a norm of their zeros): nothing to read."""
    empty = (r"^(?:.*\.)?(?:embed_tokens_per_layer|per_layer_model_projection|per_layer_projection_norm|per_layer_input_gate|"
             r"per_layer_projection|post_per_layer_input_norm)\.")
    return shared_kv_tensors(cfg) + (() if cfg.per_layer_input_size else (empty,))


# google/gemma-3n-E2B(-it), -E4B(-it): Gemma3nForConditionalGeneration ties its lm_head by the top-level
# tie_word_embeddings (true by default) and soft-caps the logits as the text model does. Token ids from the vision
# and audio vocabularies (from vision_config's vocab_offset, 262,144) it embeds by its embed_vision / embed_audio,
# not read here: jaxllm runs text tokens.
GEMMA3N_MULTIMODAL = Wrapper(name="Gemma3nForConditionalGeneration", model_type="gemma3n", text_model_type="gemma3n_text",
                             other_modules=("vision_tower", "audio_tower", "embed_vision", "embed_audio"),
                             top_level=dict(tie_word_embeddings=True))

# Gemma3nTextConfig's field defaults: a multimodal checkpoint's text_config may leave any of them out
_HF_DEFAULTS = dict(vocab_size=262_400, hidden_size=2048, intermediate_size=16_384, num_hidden_layers=35, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32_768,
                    rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                    attention_bias=False, sliding_window=512, final_logit_softcapping=30.0, vocab_size_per_layer_input=262_144,
                    hidden_size_per_layer_input=256, altup_active_idx=0, altup_correct_scale=True, altup_num_inputs=4,
                    num_kv_shared_layers=15, laurel_rank=64)

ARCHITECTURES = (Architecture(
    name="Gemma3nForCausalLM", module=Gemma3nForCausalLM, weight_map=gemma3n_weight_map, hf_model_type="gemma3n_text",
    # keys Gemma 3n's code never reads (its layer pattern a constant 5, attention scale 1.0; the coefficients' clip trains)
    ignored_keys=NO_WINDOW_SWITCH + ("sliding_window_pattern", "query_pre_attn_scalar", "attn_logit_softcapping", "hidden_act",
                                     "use_bidirectional_attention", "altup_coef_clip"),
    ignore_for=ignored_tensors, hf_defaults=_HF_DEFAULTS, common_names=gemma3n_names, config_defaults=gemma3n_defaults,
    wrappers=(GEMMA3N_MULTIMODAL,),
    not_null=SANDWICH_NOT_NULL + ("sliding_window", "final_logit_softcapping", "vocab_size_per_layer_input",
                                   "hidden_size_per_layer_input", "altup_active_idx", "altup_correct_scale", "altup_num_inputs",
                                   "num_kv_shared_layers", "laurel_rank"),
    # Sliding and full layers of 16-wide heads, the last sharing the kv of the first; an MLP width per layer, the first
    # two layers' gates sparse (0.5: a cutoff at the mean); 3 AltUp streams, LAuReL of rank 8; per-layer embeddings of
    # 96 of the 128 tokens (the tests' ids reach past them); a soft cap on the logits.
    tiny_config=dict(TINY, head_dim=16, intermediate_size=[96, 64, 80], sliding_window=8,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                     rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                     num_kv_shared_layers=1, activation_sparsity_pattern=[0.95, 0.5, 0.0], altup_num_inputs=3,
                     laurel_rank=8, hidden_size_per_layer_input=8, vocab_size_per_layer_input=96, final_logit_softcapping=5.0),
),)
