"""Hyper-connections (HY V4's independent form of DeepSeek-V4's): the residual stream is cfg.hc_streams copies of the
hidden state, [B, T, streams, E] between layers. Before each block (attention, MLP) a `HyperConnection` mixes the
streams into the block's input, sum_s pre_s x_s, and after it the block's output y joins each stream, x_s + post_s y;
pre and post are sigmoid gates of the streams themselves (one linear map of the flattened streams, divided by their
RMS), post times hc_magnitude, each plus hc_eps. A `HyperHead` collapses the streams the same way before the final
norm. All of it in float32, as transformers computes it whatever the model's dtype (its parameters float32 too)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import DecoderModel
from jaxllm.models.layers import param
from jaxllm.models.sparse_attention import SparseLatentDecoderLayer


def _gates(streams, fn, eps: float):
    """The logits fn . flat / rms(flat) of streams [B, T, S, E] flattened to [B, T, S x E], in float32."""
    flat = streams.reshape(streams.shape[:2] + (-1,)).astype(jnp.float32)
    return (flat @ fn[...].T) * jax.lax.rsqrt(jnp.mean(flat * flat, axis=-1, keepdims=True) + eps)


def _mixed(pre, streams):
    """sum_s pre_s x_s of streams [B, T, S, E] by pre [B, T, S] float32, cast back to the streams' dtype."""
    return jnp.sum(pre[..., None] * streams.astype(jnp.float32), axis=2).astype(streams.dtype)


class HyperConnection(nnx.Module, pytree=False):
    """One block's gates under transformers' names (attn_hc / ffn_hc: fn [2S, S x E], base [2S], scale [2])."""

    def __init__(self, cfg: ModelConfig):
        s = cfg.hc_streams
        self.fn = param((2 * s, s * cfg.hidden_size), ("streams", "norm"), jnp.float32)
        self.base = param((2 * s,), ("streams",), jnp.float32)
        self.scale = param((2,), ("norm",), jnp.float32)
        self.eps, self.hc_eps, self.magnitude, self.streams = cfg.norm_eps, cfg.hc_eps, cfg.hc_magnitude, s

    def __call__(self, x):
        """streams x [B, T, S, E] -> (post [B, T, S] float32, the block's input [B, T, E])."""
        mixes, base, scale = _gates(x, self.fn, self.eps), self.base[...], self.scale[...]
        s = self.streams
        pre = jax.nn.sigmoid(mixes[..., :s] * scale[0] + base[:s]) + self.hc_eps
        post = self.magnitude * jax.nn.sigmoid(mixes[..., s:] * scale[1] + base[s:]) + self.hc_eps
        return post, _mixed(pre, x)

    @staticmethod
    def inject(post, y, x):
        """x_s + post_s y: the block's output y [B, T, E] into each stream of x [B, T, S, E], in float32."""
        return (post[..., None] * y.astype(jnp.float32)[:, :, None] + x.astype(jnp.float32)).astype(x.dtype)


class HyperHead(nnx.Module, pytree=False):
    """The streams' final collapse under transformers' names (model.hc_head: hc_fn [S, S x E], hc_base [S], hc_scale [1])."""

    def __init__(self, cfg: ModelConfig):
        s = cfg.hc_streams
        self.hc_fn = param((s, s * cfg.hidden_size), ("streams", "norm"), jnp.float32)
        self.hc_base = param((s,), ("streams",), jnp.float32)
        self.hc_scale = param((1,), ("norm",), jnp.float32)
        self.eps, self.hc_eps = cfg.norm_eps, cfg.hc_eps

    def __call__(self, x):
        pre = jax.nn.sigmoid(_gates(x, self.hc_fn, self.eps) * self.hc_scale[...] + self.hc_base[...]) + self.hc_eps
        return _mixed(pre, x)


class HyperModel(DecoderModel):
    """The shared decoder over hc_streams copies of the embeddings, collapsed by `hc_head` before the final norm."""

    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        self.hc_head = HyperHead(cfg)

    def streams_in(self, x):
        return jnp.broadcast_to(x[:, :, None], x.shape[:2] + (self.cfg.hc_streams,) + x.shape[2:])

    def streams_out(self, x):
        return self.hc_head(x)


class HyperSparseLayer(SparseLatentDecoderLayer):
    """DeepSeek Sparse Attention's layer between hyper-connections: each block reads its HyperConnection's mix of the
    streams (then its norm) and its output joins every stream."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.attn_hc, self.ffn_hc = HyperConnection(cfg), HyperConnection(cfg)

    def attention_input(self, x):
        return self.input_layernorm(self.attn_hc(x)[1])

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, selected=None):
        post, h = self.attn_hc(x)
        attn, cache, selected = self.self_attn(self.input_layernorm(h), positions, rot, cache, kv, selected)
        x = HyperConnection.inject(post, attn, x)
        post, h = self.ffn_hc(x)
        return HyperConnection.inject(post, self.mlp(self.post_attention_layernorm(h)), x), cache, selected
