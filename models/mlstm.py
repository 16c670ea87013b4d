"""xLSTM's mLSTM layer (transformers' xLSTMLayer and its native kernels: NX-AI/xLSTM-7b), a recurrent mixer
(models/recurrent.py): per head a matrix memory C [qk dim, v dim], a normalizer n [qk dim] and a stabilizer m, with
exponential input gates and sigmoid forget gates, i and f soft-capped at gate_softcap (cap tanh(x / cap)):

    m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
    C_t = exp(logsigmoid(f_t) + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) k_t (x) v_t     (n_t likewise, with 1 for v_t)
    h_t = (q_t C_t) / (max(|q_t . n_t|, exp(-m_t)) + eps),    q scaled by qk dim^-1/2,

the zero state the start (m_0 = 0, as transformers'). C and n are the shared gated linear recurrence
(recurrent.gated_recurrence, g = logsigmoid(f) + m_{t-1} - m_t, beta = exp(i - m_t): both <= 1, stable) once the
stabilizers are known. Without a cache (a whole sequence) the stabilizers come from an associative scan and the
recurrence from its block form (recurrent.chunked_recurrence, transformers' chunkwise prefill: the same values, the
same stabilizers up to rounding); with one, token by token, as transformers' step kernel (any prefill chunking reaches
the same state). Each head's h is LayerNormed (multihead_norm), times sigmoid(ogate_preact(x)), through out_proj.

The state per sequence: C, n and m in one float32 [heads, qk dim, v dim + 2] (n the column v dim, m the last column),
split by head over tp as the projections are; no conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, LayerNorm
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, chunked_recurrence, gated_recurrence

STATE_AXES = RecurrentState(("batch", None, None), ("batch", "q_heads", None, None))
NO_INPUT = -1e30  # an invalid token's input gate: it adds nothing and leaves the stabilizer as it was


def softcap(x, cap):
    return x if cap is None else cap * jnp.tanh(x / cap)


def stabilizers(flog, i, m0, sequential: bool):
    """m_t = max(flog_t + m_{t-1}, i_t): flog, i [B, T, H] float32, m0 [B, H] -> m [B, T, H]. `sequential`: token by
    token (transformers' step); else an associative scan of the pairs (a, b), one after another (a1 + a2, max(b1 + a2,
    b2)), m_t = max(a_t + m0, b_t)."""
    if sequential:
        def step(m, xs):
            m = jnp.maximum(xs[0] + m, xs[1])
            return m, m

        _, m = jax.lax.scan(step, m0, (jnp.moveaxis(flog, 1, 0), jnp.moveaxis(i, 1, 0)))
        return jnp.moveaxis(m, 0, 1)
    a, b = jax.lax.associative_scan(lambda x, y: (x[0] + y[0], jnp.maximum(x[1] + y[0], y[1])), (flog, i), axis=1)
    return jnp.maximum(a + m0[:, None], b)


class MLstm(RecurrentMixer):
    """transformers' xLSTMLayer under its names: q, k, v, ogate_preact (biases where use_bias), igate_preact,
    fgate_preact (biases always), multihead_norm (a LayerNorm per head, its weight and bias flat over the heads), out_proj;
    the fused weight_mode's qkv_opreact and ifgate_preact are read into these (xlstm.py)."""

    attr = "mlstm_layer"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        return StateShape((0, 0), (cfg.num_heads, cfg.head_dim, cfg.v_head_dim + 2), STATE_AXES)

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, dk, dv = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.v_head_dim
        self.state_dims = self.state_shape(cfg, layer)
        self.cap, self.eps = cfg.gate_softcap, cfg.mlstm_eps
        dense = dict(bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.q, self.k = (Dense((e,), (h, dk), ("embed", "q_heads", "head_dim"), **dense) for _ in range(2))
        self.v, self.ogate_preact = (Dense((e,), (h, dv), ("embed", "q_heads", "head_dim"), **dense) for _ in range(2))
        self.igate_preact, self.fgate_preact = (Dense((e,), (h,), ("embed", "q_heads"), bias=True, dtype=dtype, rngs=rngs)
                                                for _ in range(2))
        self.multihead_norm = LayerNorm((h, dv), cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("q_heads", "head_dim"),
                                        bias=cfg.mlp_bias)
        self.out_proj = Dense((h, dv), (e,), ("q_heads", "head_dim", "embed"), **dense)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.astype(jnp.float32) * q.shape[-1] ** -0.5
        k, v = k.astype(jnp.float32), v.astype(jnp.float32)
        i, f = (softcap(gate(x).astype(jnp.float32), self.cap) for gate in (self.igate_preact, self.fgate_preact))
        flog = jnp.where(valid[..., None], jax.nn.log_sigmoid(f), 0.0)
        i = jnp.where(valid[..., None], i, NO_INPUT)
        dv = v.shape[-1]
        c0, n0, m0 = start.ssm[..., :dv], start.ssm[..., dv:dv + 1], start.ssm[..., 0, dv + 1]
        m = stabilizers(flog, i, m0, sequential=cache is not None)
        g = flog + jnp.concatenate([m0[:, None], m[:, :-1]], axis=1) - m
        beta = jnp.exp(i - m)
        ones = jnp.ones(v.shape[:-1] + (1,), jnp.float32)
        if cache is None:  # a whole sequence: the block form (the values and the normalizer's ones side by side)
            out, cn = chunked_recurrence(q, k * beta[..., None], jnp.concatenate([v, ones], -1), g, start.ssm[..., :dv + 1])
            num, den, c, n = out[..., :dv], out[..., dv:], cn[..., :dv], cn[..., dv:]
        else:  # token by token; the values apart from the normalizer, whose heads may fit the GPU kernel
            num, c = gated_recurrence(q, k, v, g, beta, c0)
            den, n = gated_recurrence(q, k, ones, g, beta, n0)
        h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m)[..., None]) + self.eps)
        out = jax.nn.sigmoid(self.ogate_preact(x)) * self.multihead_norm(h.astype(x.dtype))
        out = self.out_proj(out)
        if cache is None:
            return out, None
        ssm = jnp.concatenate([c, n, jnp.broadcast_to(m[:, -1, :, None, None], n.shape)], axis=-1)
        return out, self.state_out(cache, rows, held, RecurrentState(start.conv, ssm), valid)
