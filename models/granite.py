"""IBM Granite (3.x dense): the shared decoder with four scalings, each as transformers' Granite
code applies it: embeddings times embedding_multiplier, each residual branch times
residual_multiplier before its add, attention scores times attention_multiplier (in place of
head_dim ** -0.5) and the logits divided by logits_scaling. All four default to 1.0, the attention
scale included. The multiplications are by Python floats in transformers, so they run in float32
(at least) and round once to the weights' dtype, as here."""

import jax.numpy as jnp
from flax import nnx

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, norm_kwargs
from jaxllm.models.layers import RMSNorm

MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")


def _scaled(branch, scale: float, dtype):
    """A residual branch times `scale` in float32, rounded once to the stream's dtype."""
    return branch if scale == 1.0 else (branch.astype(jnp.float32) * scale).astype(dtype)


class GraniteDecoderLayer(DecoderLayer):
    """x + r * attn(input_norm(x)), then x + r * mlp(post_attention_norm(x)); with cfg.branch_norms each branch
    RMS-normed before its scale (HyperCLOVAX's post_norm1 and post_norm2)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.residual_scale = cfg.residual_scale
        norm = norm_kwargs(cfg, dtype, rngs)
        self.post_norm1, self.post_norm2 = (RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm) if cfg.branch_norms else None
                                            for _ in range(2))

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.mix(self.input_layernorm(x), positions, rot, cache, kv)
        x = x + _scaled(_normed(self.post_norm1, attn), self.residual_scale, x.dtype)
        x = x + _scaled(_normed(self.post_norm2, self.mlp(self.post_attention_layernorm(x))), self.residual_scale, x.dtype)
        return x, cache


def _normed(norm, x):
    return x if norm is None else norm(x)


class GraniteForCausalLM(CausalLM):
    layer_cls = GraniteDecoderLayer  # the logits divided by logits_divisor: the shared CausalLM.logits


def granite_defaults(raw: dict) -> dict:
    return dict(
        embed_scale=float(raw.get("embedding_multiplier", 1.0)), embed_scale_exact=True,  # unrounded (Gemma's sqrt(hidden) is rounded)
        residual_scale=float(raw.get("residual_multiplier", 1.0)),
        attn_scale=float(raw.get("attention_multiplier", 1.0)),
        logits_divisor=float(raw.get("logits_scaling", 1.0)),
    )


ARCHITECTURES = (Architecture(
    name="GraniteForCausalLM", module=GraniteForCausalLM, weight_map=decoder_weight_map, hf_model_type="granite",
    ignored_keys=NO_WINDOW, config_defaults=granite_defaults,
    # GraniteConfig has no head_dim: a null one reaches its attention as None
    not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias", "head_dim") + MULTIPLIERS,
    # Hub-like: tied (granite-3.x-2b), GQA; multipliers unlike 1 and unlike 1 / sqrt(head_dim)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=True, attention_bias=True, embedding_multiplier=3.0, residual_multiplier=0.6,
                     attention_multiplier=0.1, logits_scaling=4.0, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
