"""DiffLlama (differential attention, arXiv 2410.05258): Llama's layer whose attention subtracts two
softmax maps' outputs, as transformers' DiffLlamaAttention computes them. Its queries and keys are
Llama's; the values split by kv head into two halves, each tiled back to every kv head (v1, v2); one
map's outputs over v1 and v2 sit side by side per query head [o1 | o2] (2 x head_dim); the first half
of the query heads minus lambda times the second half, lambda = exp(lambda_q1 . lambda_k1) -
exp(lambda_q2 . lambda_k2) + lambda_init (0.8 - 0.6 exp(-0.3 layer)), RMS-normed over those 2 x head_dim
values without a weight, times (1 - lambda_init), into o_proj.

One attention call gives both halves: the values handed to the KV backend are [v1 | v2] per kv head,
2 x head_dim wide, the queries and keys zero-padded to that width (every score unchanged), so the
engine's cache and every attention path serve them as any model's (`ModelConfig.differential_attention`
doubles the cached width)."""

import math

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention, padded
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map
from jaxllm.models.layers import RMSNorm, param
from jaxllm.models.weights import WeightSpec

LAMBDAS = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")


class DifferentialAttention(Attention):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        d = cfg.head_dim
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer)
        for name in LAMBDAS:
            setattr(self, name, param((d,), ("head_dim",), dtype))
        self.groupnorm = RMSNorm(2 * d, cfg.norm_eps, dtype=dtype, rngs=rngs, weight=False)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        q, k, v = self.project(x, positions, rot)
        b, t, h, d = q.shape
        half = v.shape[2] // 2
        values = jnp.concatenate([jnp.tile(v[:, :, :half], (1, 1, 2, 1)), jnp.tile(v[:, :, half:], (1, 1, 2, 1))], axis=-1)
        out, new = kv(padded(q, 2 * d), padded(k, 2 * d), values, cache, positions, self.call_spec())

        def lam(a, c):
            return jnp.exp(jnp.sum(a[...].astype(jnp.float32) * c[...].astype(jnp.float32), axis=-1)).astype(q.dtype)

        weight = lam(self.lambda_q1, self.lambda_k1) - lam(self.lambda_q2, self.lambda_k2) + self.lambda_init
        out = out[:, :, : h // 2] - weight * out[:, :, h // 2 :]  # [B, T, H / 2, 2D]
        out = (1 - self.lambda_init) * self.groupnorm(out)
        return self.o_proj(out.reshape(b, t, h, d)), new


class DiffLlamaDecoderLayer(DecoderLayer):
    attn_cls = DifferentialAttention


class DiffLlamaForCausalLM(CausalLM):
    layer_cls = DiffLlamaDecoderLayer


def diffllama_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = decoder_weight_map(cfg)
    for i in range(cfg.num_layers):
        specs += [WeightSpec(f"model.layers.{i}.self_attn.{name}", ("model", "layers", i, "self_attn", name)) for name in LAMBDAS]
    return specs


def diffllama_defaults(raw: dict) -> dict:
    kv_heads = raw.get("num_key_value_heads") or raw["num_attention_heads"]
    if kv_heads % 2:
        raise ConfigError(f"config.json num_key_value_heads={kv_heads} is odd: DiffLlama's differential attention splits the "
                          "values into two halves of the kv heads (transformers refuses it); give an even number")
    if raw.get("attention_dropout"):
        raise ConfigError(f"config.json attention_dropout={raw['attention_dropout']}: transformers' DiffLlama refuses any "
                          "dropout in its differential attention; set it to 0")
    return dict(mlp_bias=False, differential_attention=True)


ARCHITECTURES = (Architecture(
    name="DiffLlamaForCausalLM", module=DiffLlamaForCausalLM, weight_map=diffllama_weight_map, hf_model_type="diffllama",
    ignored_keys=NO_WINDOW, config_defaults=diffllama_defaults, not_null=RMS_NOT_NULL + ("attention_bias",),
    # DiffLlamaConfig's (kajuma/DiffLlama-0.3B-handcut's)
    hf_defaults=dict(rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
    # GQA with two kv heads (the fewest it runs), q/k/v/o biases (the switch)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     attention_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
