"""Doge (SmallDoge/Doge-*): Llama's layer with per-head q/k RMSNorm, each residual times a learned weight per channel
before the branch is added (`input_residual`, `post_attention_residual`), and dynamic mask attention: each key's
score gets a bias exp(A * softplus(dt_proj(values))) per kv head, computed from that token's values. The bias rides
in the keys: one more key dim holding it against a query dim of 1 / scale (every score scale * q.k + bias), the
cached heads padded to KV_EXTRA more dims (`kv_extra_dims`), so every attention path and the engine's cache serve
it as any model's.

Left out, refused in one line: the cross-domain MoE (`is_moe`: its router mixes the logits of different tokens,
so its full forward is not causal and no cache reproduces it) and the top-k key selection past `keep_window_size`
keys (below max_position_embeddings)."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention, padded
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, dense
from jaxllm.models.layers import Dense, param
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec

KV_EXTRA = 8  # the bias's key dim, padded to a multiple of 8 for the attention kernels


class DynamicMaskAttention(Attention):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        k, d = cfg.num_kv_heads, cfg.head_dim
        self.A = param((k,), ("mask_heads",), dtype)
        self.dt_proj = Dense((k, d), (k,), ("kv_heads", "head_dim", "mask_heads"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.width = cfg.kv_shape(layer)[1]

    def project(self, x, positions, rot):
        """Attention's queries, keys and values, the keys with their bias after the head's dims, the queries with
        1 / scale there, all zero-padded to the cached width."""
        q, k, v = super().project(x, positions, rot)
        bias = jnp.exp(self.A[...] * jax.nn.softplus(self.dt_proj(v)))  # [B, T, K]: transformers' dt_states, per key
        q = jnp.concatenate([q, jnp.full(q.shape[:-1] + (1,), 1 / self.spec.scale, q.dtype)], axis=-1)
        k = jnp.concatenate([k, bias[..., None].astype(k.dtype)], axis=-1)
        return padded(q, self.width), padded(k, self.width), padded(v, self.width)


class DogeDecoderLayer(DecoderLayer):
    attn_cls = DynamicMaskAttention

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.input_residual = param((cfg.hidden_size,), ("norm",), dtype)
        self.post_attention_residual = param((cfg.hidden_size,), ("norm",), dtype)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.self_attn(self.input_layernorm(x), positions, rot, cache, kv)
        x = self.input_residual[...] * x + attn
        return self.post_attention_residual[...] * x + self.mlp(self.post_attention_layernorm(x)), cache


class DogeForCausalLM(CausalLM):
    layer_cls = DogeDecoderLayer


def doge_defaults(raw: dict) -> dict:
    if raw["is_moe"]:
        raise ConfigError("config.json is_moe is true: Doge's cross-domain MoE routes each token by router logits mixed with "
                          "other tokens' (transformers' own note: not causal in a full forward), which no cache reproduces; "
                          "jaxllm runs the dense Doge models (is_moe false)")
    keep, positions = raw["keep_window_size"], raw["max_position_embeddings"]
    if isinstance(positions, int) and keep < positions:
        raise ConfigError(f"config.json keep_window_size={keep} is below max_position_embeddings={positions}: Doge's dynamic mask "
                          f"then keeps only the {keep} keys of largest bias per query, which jaxllm does not compute; to serve "
                          f"{keep} positions, set max_position_embeddings to {keep}")
    bias = bool(raw.get("attention_bias"))
    return dict(qk_norm="per_head", qkv_bias=bias, o_bias=bias, kv_extra_dims=KV_EXTRA)


def doge_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = decoder_weight_map(cfg)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs.append(WeightSpec(hf + "self_attn.A", ours + ("self_attn", "A")))
        specs += dense(hf + "self_attn.dt_proj", ours + ("self_attn", "dt_proj"), Linear(2), cfg.qkv_bias)
        specs += [WeightSpec(hf + name, ours + (name,)) for name in ("input_residual", "post_attention_residual")]
    return specs


ARCHITECTURES = (Architecture(
    name="DogeForCausalLM", module=DogeForCausalLM, weight_map=doge_weight_map, hf_model_type="doge", config_defaults=doge_defaults,
    ignored_keys=("layer_types", "use_sliding_window"),  # its window (sliding_window) is every layer's
    not_null=RMS_NOT_NULL + ("head_dim", "attention_bias", "mlp_bias", "keep_window_size", "is_moe", "num_experts", "num_experts_per_tok",
                             "norm_topk_prob"),
    # DogeConfig's field defaults (its num_key_value_heads: num_attention_heads, as the generic reading)
    hf_defaults=dict(rms_norm_eps=1e-6, max_position_embeddings=2048, keep_window_size=2048, is_moe=False),
    # GQA, q/k/v/o and MLP biases, a window (8) on every layer
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, keep_window_size=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                     attention_bias=True, mlp_bias=True, sliding_window=8, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
