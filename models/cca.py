"""Zaya's CCA projection (Compressed Convolutional Attention; transformers' ZayaCCAProjection): an attention layer's
queries, keys and values, which depend on the tokens before each, so the layer keeps a state per sequence beside its
keys and values (ModelConfig.attn_state "cca": the layer's cache the pair (pages, RecurrentState)).

- q_proj and k_proj's outputs, side by side (query heads, then kv heads: C = (H + K) x D channels), go through a
  causal depthwise conv of cca_time0 taps (with bias), then a causal conv of cca_time1 taps that mixes the D channels
  of each head (groups H + K; with bias); queries and keys are those plus residuals of the projections themselves: per
  query head (q + its kv head's k) / 2, per kv head the mean of that over its group's query heads;
- the values: v_proj_current's of each token, then v_proj_delayed's of the token before it (of a zero input, its
  bias, before the first), concatenated and viewed as the K value heads.

The state is the conv's last (cca_time0 - 1) + (cca_time1 - 1) inputs (`conv`) and the last token's delayed value
(`ssm`, float32); a fresh sequence starts from zero inputs, as transformers pads them, and the delayed projection of a
zero input. Run token by token or a whole sequence at once, it is the same arithmetic.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, param, rounded_to
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, last_inputs, token_shift


class CcaProjection(RecurrentMixer):
    """q, k, v of x [B, T, E] and the layer's new state: called by the attention (models/zaya.py) with its share of
    the layer's cache, (x, positions, state or None, kv) -> (q [B, T, H, D], k [B, T, K, D], v [B, T, K, D], state)."""

    attr = "qkv_proj"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        h, k, d = cfg.layer_heads(layer), cfg.layer_kv_heads(layer), cfg.layer_head_dim(layer)
        return StateShape((sum(cfg.cca_kernels) - 2, (h + k) * d), (k * d // 2,))

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.layer_heads(layer), cfg.layer_kv_heads(layer), cfg.layer_head_dim(layer)
        self.heads, self.kv_heads, self.head_dim = h, k, d
        self.state_dims = self.state_shape(cfg, layer)
        dense = dict(bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.q_proj = Dense((e,), (h, d), ("embed", "q_heads", "head_dim"), **dense)
        self.k_proj = Dense((e,), (k, d), ("embed", "kv_heads", "head_dim"), **dense)
        self.v_proj_current = Dense((e,), (k * d // 2,), ("embed", "latent"), **dense)
        self.v_proj_delayed = Dense((e,), (k * d // 2,), ("embed", "latent"), **dense)
        c, (k0, k1) = (h + k) * d, cfg.cca_kernels
        # HF's Conv1d weights: [C, 1, k0] per channel, [C, D, k1] per head (each output channel over its head's D inputs)
        self.conv_qk_depthwise = nnx.Dict(weight=param((c, 1, k0), ("norm",) * 3, dtype), bias=param((c,), ("norm",), dtype))
        self.conv_qk_grouped = nnx.Dict(weight=param((c, d, k1), ("norm",) * 3, dtype), bias=param((c,), ("norm",), dtype))

    def convolved(self, full):
        """The two convolutions over full [B, taps + T, C] (the state's inputs, then the call's), float32 [B, T, H + K, D]."""
        b, n, c = full.shape
        w0, w1 = (self.conv_qk_depthwise["weight"][...].astype(jnp.float32), self.conv_qk_grouped["weight"][...].astype(jnp.float32))
        k0, k1, d = w0.shape[-1], w1.shape[-1], self.head_dim
        x = full.astype(jnp.float32)
        m = n - k0 + 1  # the depthwise conv's outputs: the call's T and the k1 - 1 before them
        mid = sum(x[:, j : j + m] * w0[:, 0, j] for j in range(k0)) + self.conv_qk_depthwise["bias"][...].astype(jnp.float32)
        mid = rounded_to(mid, full.dtype).reshape(b, m, c // d, d)  # transformers' first conv's output dtype
        w1 = w1.reshape(c // d, d, d, k1)  # [groups, out, in, taps]
        t = m - k1 + 1
        out = sum(jnp.einsum("btgi,goi->btgo", mid[:, j : j + t], w1[..., j]) for j in range(k1))
        return out + self.conv_qk_grouped["bias"][...].astype(jnp.float32).reshape(c // d, d)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        b, t, _ = x.shape
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        q, k = self.q_proj(x), self.k_proj(x)
        group = self.heads // self.kv_heads
        q_res = (q + jnp.repeat(k, group, axis=2)) * 0.5
        k_res = q_res.reshape(b, t, self.kv_heads, group, self.head_dim).mean(axis=3)
        qk = jnp.concatenate([q.reshape(b, t, -1), k.reshape(b, t, -1)], axis=-1)
        full = jnp.concatenate([start.conv.astype(qk.dtype), qk], axis=1)
        mixed = self.convolved(full).astype(x.dtype)
        q, k = mixed[:, :, : self.heads] + q_res, mixed[:, :, self.heads :] + k_res
        # the delayed values: each token's of the token before it; a fresh sequence's first of a zero input (the bias)
        delayed = self.v_proj_delayed(x)
        first = jnp.zeros(delayed.shape[-1:], x.dtype) if self.v_proj_delayed.bias is None else self.v_proj_delayed.bias[...]
        fresh = jnp.ones((b,), bool) if cache is None else positions[:, 0] == 0
        prev = jnp.where(fresh[:, None], first.astype(x.dtype), start.ssm.astype(x.dtype))
        before, last = token_shift(delayed, prev, valid)
        v = jnp.concatenate([self.v_proj_current(x), before], axis=-1).reshape(b, t, self.kv_heads, self.head_dim)
        if cache is None:
            return q, k, v, None
        new = RecurrentState(last_inputs(full, valid, self.state_dims.conv[0]), last.astype(jnp.float32))
        return q, k, v, self.state_out(cache, rows, held, new, valid)
