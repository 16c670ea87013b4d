"""MiniMax's lightning attention (transformers' MiniMaxLightningAttention, MiniMax-Text-01): linear
attention with a fixed exponential decay per head, a recurrent mixer (models/recurrent.py) whose state
per sequence is a [head dim, head dim] matrix per head (no conv: a zero-size conv part):

    S_t = exp(-slope) S_{t-1} + k_t^T v_t,    o_t = q_t S_t,

q, k, v = act(qkv_proj(x)) per head; the heads' outputs RMS-normed together (epsilon 1e-6), times
sigmoid(output_gate(x)), through out_proj. Head h's slope is base^(h + 1) with base 2^(-8 / heads),
scaled down with depth by 1 - layer / (layers - 1 + 1e-5) + 1e-5 (MiniMaxLightningAttention.get_slope_rate).

Without a cache (a whole sequence) the recurrence runs in transformers' block form (recurrent.chunked_recurrence);
with one token by token (recurrent.gated_recurrence: a lax.scan, on one GPU the Pallas kernel), so a
sequence reaches the same state however its prompt was split into calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, RMSNorm, activation
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, chunked_recurrence, gated_recurrence

NORM_EPS = 1e-6  # its norm's (MiniMaxRMSNorm's default: the config's rms_norm_eps is not passed)
# the state's logical axes: rows as the engine's slots, split by head over tp as the projections are
STATE_AXES = RecurrentState(("batch", None, None), ("batch", "q_heads", None, None))


def slopes(heads: int, layer: int, layers: int) -> np.ndarray:
    """Each head's decay rate in `layer` of `layers` (float32, as transformers' slope_rate buffer)."""
    base = 1 / (2 ** (8 / heads))
    rate = np.float32(base) ** np.arange(1, heads + 1, dtype=np.float32)
    return (rate * np.float32(1 - layer / (layers - 1 + 1e-5) + 1e-5)).astype(np.float32)


class LightningAttention(RecurrentMixer):
    """qkv_proj (per head its q, k, v), output_gate, norm (over every head's output) and out_proj, as
    transformers names them under the layer's self_attn."""

    attr = "self_attn"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        return StateShape((0, 0), (cfg.num_heads, cfg.head_dim, cfg.head_dim), STATE_AXES)

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.state_dims = self.state_shape(cfg, layer)
        self.act = activation(cfg.hidden_act)
        self.slope = tuple(float(s) for s in slopes(h, layer, cfg.num_layers))  # static: fixed by the layer
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.qkv_proj = Dense((e,), (h, 3, d), ("embed", "q_heads", "norm", "head_dim"), **dense)
        self.output_gate = Dense((e,), (h, d), ("embed", "q_heads", "head_dim"), **dense)
        self.norm = RMSNorm((h, d), NORM_EPS, dtype=dtype, rngs=rngs, axes=("q_heads", "head_dim"))
        self.out_proj = Dense((h, d), (e,), ("q_heads", "head_dim", "embed"), **dense)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        qkv = jnp.where(valid[..., None, None, None], self.act(self.qkv_proj(x)), 0).astype(x.dtype)  # padding: none
        q, k, v = (qkv[..., i, :] for i in range(3))
        # each token decays the state by its head's slope; a padding token leaves it as it was
        g = jnp.where(valid[..., None], -jnp.asarray(self.slope, jnp.float32), 0.0)
        if cache is None:  # a whole sequence: the block form, as transformers' prefill
            out, ssm = chunked_recurrence(q, k, v, g, start.ssm)
        else:
            out, ssm = gated_recurrence(q, k, v, g, valid[..., None].astype(jnp.float32) * jnp.ones_like(g), start.ssm)
        out = self.norm(out.astype(x.dtype)) * jax.nn.sigmoid(self.output_gate(x))
        out = self.out_proj(out)
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(start.conv, ssm), valid)
