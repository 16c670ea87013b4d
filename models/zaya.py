"""Zaya (ZayaForCausalLM, Zyphra's ZAYA1; transformers' modeling_zaya.py): the shared pre-norm decoder with
- attention whose queries, keys and values come out of the CCA projection (models/cca.py: convolutions over the tokens
  before each, so every attention layer keeps a state beside its keys: `attn_state` "cca"), then L2-normed to
  sqrt(head_dim) (queries and keys; the keys times a learned temperature per kv head), partial rotary positions by
  layer type ("hybrid": full, "hybrid_sliding": the window; rope_parameters per type, `local_rope`), o_proj;
- residual scaling: each branch's output and the residual, each plus a bias and times a scale per channel, summed
  (ZayaResidualScaling), the residual stream in float32 from the embeddings (plus a bias, times a scale) on;
- an MoE block of top-1 routed experts (transformers 5's fused gate_up_proj / down_proj) whose router is an MLP: down to
  router_hidden_size (plus, after layer 0, the layer before's router state times a scale: its value carried from layer
  to layer, `carries`), RMSNorm, two GELU layers, logits over the experts and one more, a skip expert (no output);
  chosen by softmax probabilities plus balancing biases (a checkpoint buffer), weighed by the probability alone;
- an output head with a bias where lm_head_bias.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.cca import CcaProjection
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM, DecoderLayer, DecoderModel, decoder_weight_map, dense
from jaxllm.models.experts import MoE
from jaxllm.models.layers import Dense, RMSNorm, activation, param
from jaxllm.models.mimo_v2_flash import layer_type_ropes
from jaxllm.models.moe import fused_expert_specs
from jaxllm.models.rope import apply_rotary
from jaxllm.models.transforms import Copy
from jaxllm.models.weights import WeightSpec

TYPES = {"hybrid": "full_attention", "hybrid_sliding": "sliding_attention"}  # theirs -> ours


class ZayaAttention(Attention):
    """The shared attention with its q, k and v out of the CCA projection (`qkv_proj`) and Zaya's q/k norm
    (`qk_norm.temp`); its cache the pair (pages, the projection's RecurrentState)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.q_proj = self.k_proj = self.v_proj = None
        self.qkv_proj = CcaProjection(cfg, layer, dtype=dtype, rngs=rngs)
        self.qk_norm = nnx.Dict(temp=param((cfg.layer_kv_heads(layer),), ("kv_heads",), dtype))

    def projected(self, x, positions, rot, state, kv):
        """(q, k, v, the projection's new state) of x at positions, from `state` (None: uncached)."""
        q, k, v, state = self.qkv_proj(x, positions, state, kv)

        def l2(y):  # y / max(|y|, eps) * sqrt(D) (ZayaQKNorm)
            norm = jnp.linalg.norm(y.astype(jnp.float32), axis=-1, keepdims=True).astype(y.dtype)
            return y * (self.head_dim**0.5 / jnp.maximum(norm, jnp.finfo(y.dtype).eps))

        q, k = l2(q), l2(k) * self.qk_norm["temp"][...][:, None]
        if rot is not None:
            q, k = apply_rotary(q, rot, self.rope_interleaved), apply_rotary(k, rot, self.rope_interleaved)
        return q, k, v, state

    def project(self, x, positions, rot):
        return self.projected(x, positions, rot, None, UNCACHED)[:3]

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        pages, state = (None, None) if cache is None else cache
        q, k, v, state = self.projected(x, positions, rot, None if cache is None else state, kv)
        out, pages = kv(q, k, v, pages, positions, self.call_spec())
        return self.output(out, x), None if cache is None else (pages, state)


class ResidualScale(nnx.Module):
    """(h + hidden_states_bias) * hidden_states_scale + (residual + residual_bias) * residual_scale, the residual's
    part and the sum in float32 (ZayaResidualScaling)."""

    def __init__(self, e: int, dtype):
        for name in ("hidden_states_scale", "hidden_states_bias", "residual_scale", "residual_bias"):
            setattr(self, name, param((e,), ("norm",), dtype))

    def __call__(self, h, residual):
        f32 = jnp.float32
        out = ((h + self.hidden_states_bias[...]) * self.hidden_states_scale[...]).astype(f32)
        return out + (residual.astype(f32) + self.residual_bias[...].astype(f32)) * self.residual_scale[...].astype(f32)


class RouterMlp(nnx.Module):
    """out_proj(gelu(fc2(gelu(fc1(norm(r)))))): logits over the experts and the skip expert (ZayaRouterMLP)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        r, made = cfg.router_hidden_size, dict(dtype=dtype, rngs=rngs, quantizable=False)
        self.norm = RMSNorm(r, cfg.norm_eps, dtype=dtype, rngs=rngs)
        self.fc1 = Dense((r,), (r,), ("latent", "router"), bias=True, **made)
        self.fc2 = Dense((r,), (r,), ("latent", "router"), bias=True, **made)
        self.out_proj = Dense((r,), (cfg.num_experts + 1,), ("latent", "router"), bias=False, **made)

    def __call__(self, r):
        gelu = activation("gelu")  # nn.GELU(): the exact form
        return self.out_proj(gelu(self.fc2(gelu(self.fc1(self.norm(r))))))


class ZayaRouter(nnx.Module):
    """down_proj(x) (plus the carried state times router_states_scale after layer 0): the state handed to the next
    layer, and through router_mlp each token's top-k of the experts and the skip expert (chosen by softmax probabilities
    plus balancing_biases, weighed by the probabilities)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        r = cfg.router_hidden_size
        self.down_proj = Dense((cfg.hidden_size,), (r,), ("embed", "latent"), bias=True, dtype=dtype, rngs=rngs, quantizable=False)
        self.router_states_scale = param((r,), ("latent",), dtype) if layer else None
        self.router_mlp = RouterMlp(cfg, dtype=dtype, rngs=rngs)
        self.balancing_biases = param((cfg.num_experts + 1,), ("router",), jnp.float32)
        self.k = cfg.experts_per_token

    def __call__(self, x, carry):
        r = self.down_proj(x)
        if self.router_states_scale is not None and carry is not None:
            r = r + carry * self.router_states_scale[...]
        probs = jax.nn.softmax(self.router_mlp(r).astype(jnp.float32), axis=-1).astype(x.dtype)
        _, experts = jax.lax.top_k(probs.astype(jnp.float32) + self.balancing_biases[...], self.k)
        return jnp.take_along_axis(probs, experts, axis=-1).astype(jnp.float32), experts, r


class ZayaMoE(MoE, pytree=False):
    """The shared experts (their dispatch, quantization and expert parallelism) under Zaya's router; an assignment to
    the skip expert (index num_experts) adds nothing. Called as (x, carried router state) -> (output, its state)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.gate = ZayaRouter(cfg, layer, dtype=dtype, rngs=rngs)

    def __call__(self, x, carry=None):
        weights, experts, carry = self.gate(x, carry)
        shape, n = x.shape, x.shape[-1]
        skip = experts >= self.num_experts
        weights, experts = (jnp.where(skip, 0, a).reshape(-1, self.k) for a in (weights, experts))
        xs = x.reshape(-1, n)
        out = (self._experts(xs, weights, experts, self._stacks(), None) if self.expert_mesh is None
               else self._split_experts(xs, weights, experts, self._stacks()))
        return out.astype(x.dtype).reshape(shape), carry


class ZayaDecoderLayer(DecoderLayer):
    """norm, attention, residual scaling, norm, the MoE block, residual scaling; the residual in float32, each norm's
    input cast to the model's dtype; the router state carried from layer to layer."""

    attn_cls = ZayaAttention
    carries = True

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.mlp = ZayaMoE(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_residual_scale = ResidualScale(cfg.hidden_size, dtype)
        self.post_mlp_residual_scale = ResidualScale(cfg.hidden_size, dtype)
        self.dtype = dtype

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, carry=None):
        attn, cache = self.mix(self.input_layernorm(x.astype(self.dtype)), positions, rot, cache, kv)
        x = self.post_attention_residual_scale(attn, x)
        out, carry = self.mlp(self.post_attention_layernorm(x.astype(self.dtype)), carry)
        return self.post_mlp_residual_scale(out, x), cache, carry

    def attention_input(self, x, *extra):
        return self.input_layernorm(x.astype(self.dtype))


class ZayaModel(DecoderModel):
    """The embeddings plus input_hidden_states_bias, times input_hidden_states_scale, in float32; the residual stream
    cast back to the model's dtype before the final norm."""

    def __init__(self, cfg: ModelConfig, layer_cls=ZayaDecoderLayer, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        self.input_hidden_states_scale = param((cfg.hidden_size,), ("norm",), dtype)
        self.input_hidden_states_bias = param((cfg.hidden_size,), ("norm",), dtype)
        self.dtype = dtype

    def embed(self, tokens, positions):
        x = super().embed(tokens, positions)
        return ((x + self.input_hidden_states_bias[...]) * self.input_hidden_states_scale[...]).astype(jnp.float32)

    def streams_out(self, x):
        return x.astype(self.dtype)


class ZayaForCausalLM(CausalLM):
    layer_cls = ZayaDecoderLayer
    model_cls = ZayaModel


ZAYA_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.5},
             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}}


def zaya_names(raw: dict) -> dict:
    """ZayaConfig's layer types (every one "hybrid" where left out) and its rope per layer type under our names
    (full_attention, sliding_attention; a stray top-level rope_type dropped, as its config class drops it); the
    experts' width for the intermediate_size it lacks."""
    types = raw.get("layer_types") or ["hybrid"] * (raw.get("num_hidden_layers") or 0)
    types = known_layer_types(types, tuple(TYPES), "Zaya", "transformers has no attention mask for it")
    out = dict(raw, layer_types=[TYPES[t] for t in types], intermediate_size=raw["moe_intermediate_size"])
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict):
        out["rope_parameters"] = {TYPES.get(k, k): v for k, v in rope.items() if k != "rope_type"}
    return out


def zaya_defaults(raw: dict) -> dict:
    if raw["num_experts_per_tok"] != 1:
        raise ConfigError(f"config.json num_experts_per_tok={raw['num_experts_per_tok']}, but Zaya routes each token to one "
                          "expert (ZayaConfig refuses others): set it to 1")
    kv = (raw.get("num_key_value_heads") or raw["num_attention_heads"]) * raw["head_dim"]
    if kv % 2:
        raise ConfigError(f"config.json num_key_value_heads x head_dim = {kv} is odd, but Zaya's values are half current, half "
                          "delayed projections (transformers fails to view them as heads): give an even product")
    if not raw["num_experts"]:
        raise ConfigError("config.json num_experts is 0, but every Zaya layer routes its tokens to experts: give the "
                          "checkpoint's number of experts")
    return dict(layer_type_ropes(raw, raw["layer_types"], 1.0, ZAYA_ROPE), qk_norm="none", mlp_bias=False, attn_state="cca",
                cca_kernels=(raw["cca_time0"], raw["cca_time1"]), router_hidden_size=raw["router_hidden_size"],
                num_experts=raw["num_experts"], experts_per_token=1, moe_intermediate_size=raw["moe_intermediate_size"],
                head_bias=bool(raw["lm_head_bias"]))


def zaya_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """decoder_weight_map without its q/k/v and MLP tensors, Zaya's added."""
    specs = [s for s in decoder_weight_map(cfg) if not any(f".{n}." in s.hf_name for n in ("q_proj", "k_proj", "v_proj", "mlp"))]
    specs += [WeightSpec(f"model.input_hidden_states_{p}", ("model", f"input_hidden_states_{p}")) for p in ("scale", "bias")]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        cca, theirs = ours + ("self_attn", "qkv_proj"), hf + "self_attn.qkv_proj."
        for name in ("q_proj", "k_proj", "v_proj_current", "v_proj_delayed"):
            specs += dense(theirs + name, cca + (name,), bias=cfg.qkv_bias)
        specs += [WeightSpec(f"{theirs}{conv}.{p}", cca + (conv, p)) for conv in ("conv_qk_depthwise", "conv_qk_grouped")
                  for p in ("weight", "bias")]
        specs.append(WeightSpec(hf + "self_attn.qk_norm.temp", ours + ("self_attn", "qk_norm", "temp")))
        specs += [WeightSpec(f"{hf}{block}.{p}{part}", ours + (block, p + part)) for block in
                  ("post_attention_residual_scale", "post_mlp_residual_scale") for p in ("hidden_states", "residual")
                  for part in ("_scale", "_bias")]
        gate, router = hf + "mlp.gate.", ours + ("mlp", "gate")
        specs += dense(gate + "down_proj", router + ("down_proj",))
        specs += [WeightSpec(gate + "router_states_scale", router + ("router_states_scale",))] if i else []
        specs.append(WeightSpec(gate + "balancing_biases", router + ("balancing_biases",), Copy()))
        specs.append(WeightSpec(gate + "router_mlp.norm.weight", router + ("router_mlp", "norm", "weight")))
        for name in ("fc1", "fc2", "out_proj"):
            specs += dense(f"{gate}router_mlp.{name}", router + ("router_mlp", name), bias=name != "out_proj")
        specs += fused_expert_specs(hf + "mlp.experts.gate_up_proj", hf + "mlp.experts.down_proj", ours + ("mlp",),
                                    cfg.moe_intermediate_size)
    return specs


ARCHITECTURES = (Architecture(
    name="ZayaForCausalLM", module=ZayaForCausalLM, hf_model_type="zaya", config_defaults=zaya_defaults,
    weight_map=zaya_weight_map, common_names=zaya_names, partial_rotary=True,
    ignore=(r".*rotary_emb\..*inv_freq$",),
    # keys of LagunaConfig that ZayaConfig drops, which its model never reads
    ignored_keys=("intermediate_size", "shared_expert_intermediate_size", "router_aux_loss_coef", "num_attention_heads_per_layer",
                  "gating", "mlp_layer_types", "moe_routed_scaling_factor", "moe_apply_router_weight_on_input",
                  "moe_router_logit_softcapping") + NO_WINDOW_SWITCH,
    # a top-level rope_theta is not read (the rope is per layer type): null too
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "num_key_value_heads", "head_dim", "attention_bias", "moe_intermediate_size", "num_experts_per_tok",
                             "num_experts", "lm_head_bias", "router_hidden_size", "cca_time0", "cca_time1"),
    # ZayaConfig's field defaults (ZAYA1-8B's shapes)
    hf_defaults=dict(vocab_size=262272, hidden_size=2048, num_hidden_layers=40, num_attention_heads=8, num_key_value_heads=2,
                     head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                     attention_bias=False, sliding_window=None, moe_intermediate_size=2048, num_experts_per_tok=1, num_experts=16,
                     lm_head_bias=False, router_hidden_size=256, cca_time0=2, cca_time1=2, pad_token_id=0, bos_token_id=2,
                     eos_token_id=106),
    # full, sliding (window 8), full; GQA; convolutions of 2 and 3 taps; biased projections (a fresh sequence's first delayed
    # value is v_proj_delayed's bias); 4 experts and the skip expert; a biased head
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                     head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=8,
                     layer_types=["hybrid", "hybrid_sliding", "hybrid"], moe_intermediate_size=32, num_experts=4,
                     num_experts_per_tok=1, router_hidden_size=24, cca_time0=2, cca_time1=3, lm_head_bias=True,
                     rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                                      "hybrid_sliding": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}},
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
