"""LFM2's gated short convolution (transformers' Lfm2ShortConv), a recurrent mixer (models/recurrent.py):
in_proj gives B | C | x over the hidden channels, the causal depthwise conv (conv_L_cache taps, no
activation) runs over B * x, its output times C goes through out_proj. Its state is the conv's last
inputs alone (no ssm part: a zero-size array); the conv is the same arithmetic however the tokens are
split into calls, so it needs no token-by-token form under a cache."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, causal_conv


class ShortConv(RecurrentMixer):
    """in_proj [3E, E], conv (HF's nn.Conv1d weight [E, 1, K], its bias where conv_bias), out_proj; the
    projections' biases where conv_bias, as transformers gives them."""

    attr = "conv"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        return StateShape((cfg.linear_conv_kernel - 1, cfg.hidden_size), (0,))

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, k = cfg.hidden_size, cfg.linear_conv_kernel
        self.state_dims = self.state_shape(cfg, layer)
        dense = dict(bias=cfg.conv_bias, dtype=dtype, rngs=rngs)
        self.in_proj = Dense((e,), (3, e), ("embed", "norm", "recurrent"), **dense)
        conv = dict(weight=param((e, 1, k), ("recurrent", "norm", "norm"), dtype))
        if cfg.conv_bias:
            conv["bias"] = param((e,), ("recurrent",), dtype)
        self.conv = nnx.Dict(conv)
        self.out_proj = Dense((e,), (e,), ("recurrent", "embed"), **dense)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        gate_in, gate_out, h = (self.in_proj(x)[..., i, :] for i in range(3))
        # the conv's input at padding is zero, as in the row alone (transformers zeroes only x, which
        # leaves in_proj's biases there)
        h = jnp.where(valid[..., None], gate_in * h, 0).astype(x.dtype)
        bias = self.conv["bias"][...] if "bias" in self.conv else None
        h, conv = causal_conv(h, start.conv, self.conv["weight"][:, 0], valid, bias, act=None)
        out = self.out_proj(gate_out * h)
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(conv, start.ssm), valid)
