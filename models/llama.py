"""The Llama family: Llama, Mistral (sliding window), Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm).
Other families whose decoder is this one with config flags (Gemma) register in their own files.

They share one module tree; what differs is config flags that the registry entries set.
Parameter names follow transformers' (model.layers.N.self_attn.q_proj, ...) so the weight map
reads one to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.registry import Architecture, register
from jaxllm.weights import Copy, Linear, WeightSpec
from jaxllm.models.layers import Attention, Embed, LayerCache, RMSNorm, make_mlp, rotary


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = make_mlp(cfg, layer, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, rot, cache, kv_len=None):
        attn, cache = self.self_attn(self.input_layernorm(x), positions, rot, cache, kv_len)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


def norm_kwargs(cfg: ModelConfig, dtype, rngs, norm_cls=None) -> dict:
    if norm_cls not in (None, RMSNorm):
        return dict(dtype=dtype, rngs=rngs)
    return dict(dtype=dtype, rngs=rngs, offset=cfg.norm_offset, upcast_scale=cfg.norm_upcast_scale)


class DecoderModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer_cls=DecoderLayer, *, dtype, rngs: nnx.Rngs, final_norm=None):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs, scale=cfg.embed_scale)
        learned = cfg.position_embedding == "learned"
        self.embed_positions = Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, rngs=rngs) if learned else None
        self.layers = nnx.List([layer_cls(cfg, i, dtype=dtype, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = (final_norm or RMSNorm)(cfg.hidden_size, cfg.rms_norm_eps, **norm_kwargs(cfg, dtype, rngs, final_norm))

    def __call__(self, tokens, positions, cache=None, kv_len=None, lengths=None, trace: list | None = None):
        """tokens, positions [B, T] -> hidden [B, T, E], and per-layer caches (updated, or the
        fresh keys/values when `cache` is None). `kv_len`: see Attention. `lengths` [B]: the real
        length of each row when positions run past it (padded prefill); see `rotary`. `trace`: a
        list that receives each layer's input and then the final (normed) output, as
        transformers' hidden_states."""
        x = self.embed_tokens(tokens)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions)
        rots = self.rotaries(positions, x.dtype, lengths)
        new_cache = []
        for i, layer in enumerate(self.layers):
            if trace is not None:
                trace.append(x)
            x, c = layer(x, positions, rots.get(self.cfg.layer_rope(i)), None if cache is None else cache[i], kv_len)
            new_cache.append(c)
        x = self.norm(x)
        if trace is not None:
            trace.append(x)
        return x, new_cache

    def rotaries(self, positions, dtype, lengths=None) -> dict:
        """One cos/sin table per distinct rope of the layers (Gemma 3's local and global differ);
        none for learned positions. Layer i uses rotaries[cfg.layer_rope(i)]."""
        if self.embed_positions is not None:
            return {}
        ropes = {self.cfg.layer_rope(i) for i in range(len(self.layers))}
        return {rope: rotary(self.cfg, positions, dtype, rope, lengths) for rope in ropes}


class CausalLM(nnx.Module):
    """The shared `ForCausalLM` shape: a decoder model and an output head (or tied embeddings).
    A family with its own decoder layer subclasses this and sets `layer_cls`."""

    layer_cls = DecoderLayer
    final_norm = None  # RMSNorm unless a family sets another norm class

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = DecoderModel(cfg, self.layer_cls, dtype=dtype, rngs=rngs, final_norm=self.final_norm)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nnx.Dict(
                kernel=nnx.Param(jnp.zeros((cfg.vocab_size, cfg.hidden_size), dtype), axes=("vocab", "embed"))
            )

    def hidden(self, tokens, positions, cache: list[LayerCache] | None = None, kv_len: int | None = None, lengths=None):
        return self.model(tokens, positions, cache, kv_len, lengths)

    def logits(self, hidden):
        """hidden [B, T, E] -> float32 logits [B, T, V] (tanh soft-capped where the model says so)."""
        if self.lm_head is None:
            out = self.model.embed_tokens.attend(hidden)
        else:
            out = jnp.einsum("bte,ve->btv", hidden, self.lm_head["kernel"][...])
        out = out.astype(jnp.float32)
        cap = self.cfg.final_softcap
        return out if cap is None else jnp.tanh(out / cap) * cap

    def __call__(self, tokens, positions=None, cache=None):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, cache = self.hidden(tokens, positions, cache)
        return self.logits(hidden), cache


def llama_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = [WeightSpec("model.embed_tokens.weight", ("model", "embed_tokens", "embedding"))]
    specs.append(WeightSpec("model.norm.weight", ("model", "norm", "weight")))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear()))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs += [
            WeightSpec(hf + "input_layernorm.weight", ours + ("input_layernorm", "weight")),
            WeightSpec(hf + "post_attention_layernorm.weight", ours + ("post_attention_layernorm", "weight")),
        ]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            attn = ours + ("self_attn", name)
            specs.append(WeightSpec(f"{hf}self_attn.{name}.weight", attn + ("kernel",), Linear(2 if name == "o_proj" else 1)))
            if cfg.o_bias if name == "o_proj" else cfg.qkv_bias:
                specs.append(WeightSpec(f"{hf}self_attn.{name}.bias", attn + ("bias",), Copy(flatten=name != "o_proj")))
        if cfg.qk_norm:
            for name in ("q_norm", "k_norm"):
                flat = Copy(flatten=cfg.qk_norm == "projection")
                specs.append(WeightSpec(f"{hf}self_attn.{name}.weight", ours + ("self_attn", name, "weight"), flat))
        for name in ("gate_proj", "up_proj", "down_proj"):
            mlp = ours + ("mlp", name)
            specs.append(WeightSpec(f"{hf}mlp.{name}.weight", mlp + ("kernel",), Linear()))
            if cfg.mlp_bias:
                specs.append(WeightSpec(f"{hf}mlp.{name}.bias", mlp + ("bias",)))
    return specs


def _qwen_layer_types(raw: dict) -> dict:
    """Qwen2/3 enable the window only with use_sliding_window, and only from max_window_layers on."""
    if raw.get("layer_types") or not raw.get("use_sliding_window"):
        return {}
    n = raw["num_hidden_layers"]
    start = raw.get("max_window_layers", n)
    return {"layer_types": tuple("sliding_attention" if i >= start else "full_attention" for i in range(n))}


_TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
)

LLAMA = register(Architecture(
    name="LlamaForCausalLM", module=CausalLM, weight_map=llama_weight_map, hf_model_type="llama",
    tiny_config=dict(_TINY, rope_theta=10000.0, attention_bias=False),
))
MISTRAL = register(Architecture(
    name="MistralForCausalLM", module=CausalLM, weight_map=llama_weight_map, hf_model_type="mistral",
    tiny_config=dict(_TINY, sliding_window=8, rope_theta=10000.0),
))
QWEN2 = register(Architecture(
    name="Qwen2ForCausalLM", module=CausalLM, weight_map=llama_weight_map, hf_model_type="qwen2",
    config_defaults=lambda raw: dict(qkv_bias=True, o_bias=False, **_qwen_layer_types(raw)),
    tiny_config=dict(_TINY, rope_theta=1000000.0, tie_word_embeddings=True),
))
QWEN3 = register(Architecture(
    name="Qwen3ForCausalLM", module=CausalLM, weight_map=llama_weight_map, hf_model_type="qwen3",
    config_defaults=lambda raw: dict(qk_norm=True, **_qwen_layer_types(raw)),
    tiny_config=dict(_TINY, head_dim=32, rope_theta=1000000.0),
))
