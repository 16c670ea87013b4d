"""Gated DeltaNet linear attention (Qwen3-Next, Qwen3.5: transformers' Qwen3NextGatedDeltaNet), its
variant Kimi Delta Attention (Kimi-Linear: the decay per key channel, `KimiDeltaAttention`) and the
recurrent state they keep per sequence.

A linear-attention layer is a recurrent mixer (models/recurrent.py): it caches no keys, each
sequence carries a `RecurrentState`, the last `kernel - 1` inputs of its causal depthwise conv and a
[value heads, key dim, value dim] matrix that the delta rule updates token by token.

A whole sequence without a cache (full forward, research functions) runs the delta rule in
transformers' chunked form (torch_chunk_gated_delta_rule): chunks of `CHUNK` tokens, a triangular
solve within each and a scan over them, so memory grows with the tokens times CHUNK, never their
square. With a cache (the engine's prefill chunks and decode) it runs token by token
(`recurrent_delta_rule`: a lax.scan, on one GPU a Pallas kernel, models/delta_rule_gpu.py): the state a sequence reaches is then the same arithmetic
however its prompt was split into chunks and whatever shared its calls, as the engine's results
must be; a long prompt's prefill is sequential in its tokens on those layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models import delta_rule_gpu
from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, RMSNorm, activation, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, causal_conv

CHUNK = 64  # tokens per chunk of the delta rule (transformers' chunk_size)


# A layer's state arrays' logical axes (jaxllm.sharding.RULES): rows as the engine's slots, the conv's channels
# and the value heads split over tp as the layer's projections are (whole key heads where tp divides them)
STATE_AXES = RecurrentState(("batch", None, "linear_channels"), ("batch", "linear_v_heads", None, None))


def l2norm(x, eps: float = 1e-6):
    """x / sqrt(sum x^2 + eps) over the last dim (transformers' l2norm, FLA's)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def gated_delta_rule(q, k, v, g, beta, state, chunk: int = CHUNK):
    """The gated delta rule over T tokens in chunks (torch_chunk_gated_delta_rule with its q/k L2
    norm): q, k [B, T, H, Dk], v [B, T, H, Dv], g (log decay, <= 0) [B, T, H], or [B, T, H, Dk] for a
    decay per key channel (Kimi Delta Attention: chunk_kimi_delta_attention), beta [B, T, H], state [B, H,
    Dk, Dv] float32 -> (output [B, T, H, Dv] float32, the state after the T tokens). A token with
    beta 0 and g 0 changes nothing (padding)."""
    b, t, h, dk = k.shape
    q, k, v, g, beta = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v, g, beta))  # [B, H, T, ...]
    q, k = l2norm(q) * dk**-0.5, l2norm(k)
    c = min(chunk, t)
    pad = -t % c
    if pad:
        q, k, v, g, beta = (jnp.pad(x, ((0, 0), (0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 3)) for x in (q, k, v, g, beta))
    n = (t + pad) // c

    def chunks(x):
        return x.reshape(b, h, n, c, *x.shape[3:])

    raw = tuple(map(chunks, (q, k, v, g, beta)))
    # a decay per channel makes each chunk's pairwise decays [C, C, Dk]: made chunk by chunk in the scan, so memory
    # stays one chunk's; a scalar decay's [C, C] are made for every chunk at once
    per_channel = g.ndim == 4
    along = raw if per_channel else _chunk_terms(*raw)

    def step(s, xs):
        values, k_decayed, q, intra, k, total = _chunk_terms(*xs) if per_channel else xs
        fresh = values - k_decayed @ s
        out = q @ s + intra @ fresh
        return s * total + jnp.swapaxes(k, -1, -2) @ fresh, out

    state, out = jax.lax.scan(step, state.astype(jnp.float32), tuple(jnp.moveaxis(x, 2, 0) for x in along))
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, n * c, -1)[:, :, :t]
    return jnp.swapaxes(out, 1, 2), state


def _chunk_terms(q, k, v, g, beta):
    """What the chunked delta rule's scan takes of chunks of C tokens (q, k [..., C, Dk], v [..., C, Dv], beta
    [..., C], g [..., C] or per key channel [..., C, Dk]): the within-chunk solve's values and decayed keys,
    the queries decayed from the chunk's start, the decayed q . k within it, the keys decayed to its end, and
    the state's decay over the chunk ([..., 1, 1], or [..., Dk, 1] per channel)."""
    c = k.shape[-2]
    lower = jnp.tril(jnp.ones((c, c), bool))
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    if g.ndim == k.ndim:  # per key channel: the pairwise decays [C, C, Dk] inside the products
        decay = jnp.cumsum(g, axis=-2)  # [..., C, Dk]
        pairwise = jnp.exp(jnp.where(lower[:, :, None], decay[..., :, None, :] - decay[..., None, :, :], -jnp.inf))
        system = jnp.einsum("...ik,...jk,...ijk->...ij", k_beta, k, pairwise)
        intra = jnp.einsum("...ik,...jk,...ijk->...ij", q, k, pairwise)
        since, last = jnp.exp(decay), decay[..., -1:, :]
        to_end, total = jnp.exp(last - decay), jnp.swapaxes(jnp.exp(last), -1, -2)
    else:
        decay = jnp.cumsum(g, axis=-1)  # [..., C]
        pairwise = jnp.exp(jnp.where(lower, decay[..., :, None] - decay[..., None, :], -jnp.inf))
        system = (k_beta @ jnp.swapaxes(k, -1, -2)) * pairwise  # its strict lower part, unit diagonal
        intra = (q @ jnp.swapaxes(k, -1, -2)) * pairwise
        since, to_end = jnp.exp(decay)[..., None], jnp.exp(decay[..., -1:] - decay)[..., None]
        total = jnp.exp(decay[..., -1])[..., None, None]
    solve = jax.scipy.linalg.solve_triangular
    values = solve(system, v_beta, lower=True, unit_diagonal=True)
    k_decayed = solve(system, k_beta * since, lower=True, unit_diagonal=True)
    return values, k_decayed, q * since, intra, k * to_end, total


def recurrent_delta_rule(q, k, v, g, beta, state):
    """The gated delta rule token by token (torch_recurrent_gated_delta_rule with its q/k L2 norm):
    same arguments and results as gated_delta_rule (recurrent_kimi_delta_attention where g is per
    key channel). Each token's update is the same arithmetic however
    the tokens are split into calls, so a sequence prefilled in any chunks, then decoded, gets the
    same state (the engine's results do not depend on what else it runs); memory is the state's."""
    dk = k.shape[-1]
    if delta_rule_gpu.fits(dk, v.shape[-1], v.shape[1]):  # one kernel for all T tokens (a decay per head or per channel)
        q, k = (l2norm(x.astype(jnp.float32)) for x in (q, k))
        return delta_rule_gpu.delta_rule(q * dk**-0.5, k, v, g, beta, state)
    q, k, v, g, beta = (jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, g, beta))  # [T, B, H, ...]
    q, k = l2norm(q) * dk**-0.5, l2norm(k)

    def step(s, xs):
        q, k, v, g, beta = xs
        s = s * (jnp.exp(g)[..., None] if g.ndim == k.ndim else jnp.exp(g)[..., None, None])  # per channel, or head
        delta = (v - jnp.einsum("bhkv,bhk->bhv", s, k)) * beta[..., None]
        s = s + k[..., :, None] * delta[..., None, :]
        return s, jnp.einsum("bhkv,bhk->bhv", s, q)

    state, out = jax.lax.scan(step, state.astype(jnp.float32), (q, k, v, g, beta))
    return jnp.moveaxis(out, 0, 1), state


class GatedRMSNorm(RMSNorm):
    """The shared RMSNorm of each value head (its weight applied after the cast back, as Llama's),
    then times silu(gate) in float32 (Qwen3NextRMSNormGated); with `upcast_scale` all in float32, cast
    once at the end, and `act` the gate's (KimiLinearRMSNormGated: sigmoid)."""

    def __init__(self, *args, act=jax.nn.silu, **kwargs):
        super().__init__(*args, **kwargs)
        self.act = act

    def __call__(self, x, gate):
        normed = super().__call__(x.astype(jnp.float32) if self.upcast else x)
        return (normed * self.act(gate.astype(jnp.float32))).astype(x.dtype)


class GatedDeltaNet(RecurrentMixer):
    """A linear-attention layer in Qwen3.5's naming: in_proj_qkv (the conv's channels: per key head
    its q, its k and its value heads' v),
    in_proj_z (the output gate), in_proj_b (beta), in_proj_a (the decay's input), conv1d, dt_bias,
    A_log, a gated norm per value head and out_proj. Called as the shared layer calls its attention:
    (x, positions, cache, kv) -> (output, the layer's new RecurrentState; None without a cache)."""

    attr = "linear_attn"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        """The conv's last inputs over its channels (grouped by key head), and a [key dim, value dim]
        matrix per value head; split over tp by head (STATE_AXES)."""
        k, v = cfg.linear_key_heads * cfg.linear_key_head_dim, cfg.linear_value_heads * cfg.linear_value_head_dim
        return StateShape((cfg.linear_conv_kernel - 1, 2 * k + v),
                          (cfg.linear_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim), STATE_AXES)

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, hk, hv = cfg.hidden_size, cfg.linear_key_heads, cfg.linear_value_heads
        dk, dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.heads, self.key_heads, self.dk, self.dv = hv, hk, dk, dv
        self.state_dims = self.state_shape(cfg, layer)
        self.channels = self.state_dims.conv[1]
        per_head = self.channels // hk  # a key head's channels: its q, its k, its value heads' v
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        # The conv's channels key head by key head (HF's q | k | v regrouped on load: transforms.ByHead), so
        # tensor parallelism splits the projections, the conv and the state by head (sharding.RULES); its
        # weight [key heads, channels of one, 1, K] (a folder converted before the regrouping: refused by its shape)
        self.apart = cfg.linear_qkv_apart
        if self.apart:  # OLMo Hybrid: q, k, v projected apart, joined per key head at the call
            self.q_proj = Dense((e,), (hk, dk), ("embed", "linear_k_heads", "head_dim"), **dense)
            self.k_proj = Dense((e,), (hk, dk), ("embed", "linear_k_heads", "head_dim"), **dense)
            self.v_proj = Dense((e,), (hv, dv), ("embed", "linear_v_heads", "head_dim"), **dense)
        else:
            self.in_proj_qkv = Dense((e,), (self.channels,), ("embed", "linear_channels"), **dense)
        self.beta_scale, self.conv_act = cfg.linear_beta_scale, activation(cfg.hidden_act)  # the conv's (transformers': hidden_act)
        self.in_proj_b = Dense((e,), (hv,), ("embed", "linear_v_heads"), quantizable=False, **dense)
        self.conv1d = nnx.Dict(weight=param((hk, per_head, 1, cfg.linear_conv_kernel),  # HF's [C, 1, K]
                                            ("linear_k_heads", "head_dim", "norm", "norm"), dtype))
        self.gates(cfg, dtype, dense)
        self.out_proj = Dense((hv, dv), (e,), ("linear_v_heads", "head_dim", "embed"), **dense)

    def gates(self, cfg: ModelConfig, dtype, dense: dict):
        """The output gate (in_proj_z), the decay's input (in_proj_a), dt_bias and A_log, one per value head, and the
        gated norm."""
        e, hv, dv = cfg.hidden_size, cfg.linear_value_heads, cfg.linear_value_head_dim
        self.in_proj_z = Dense((e,), (hv, dv), ("embed", "linear_v_heads", "head_dim"), **dense)
        self.in_proj_a = Dense((e,), (hv,), ("embed", "linear_v_heads"), quantizable=False, **dense)
        self.dt_bias = param((hv,), ("linear_v_heads",), dtype)
        self.A_log = param((hv,), ("linear_v_heads",), dtype)
        eps = cfg.norm_eps if cfg.linear_norm_eps is None else cfg.linear_norm_eps
        self.norm = GatedRMSNorm(dv, eps, dtype=dtype, rngs=dense["rngs"], upcast_scale=cfg.linear_norm_upcast)

    def decay(self, x):
        """Each token's log decay g <= 0 [B, T, value heads], float32: -exp(A_log) softplus(in_proj_a(x) + dt_bias)."""
        a = self.in_proj_a(x).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)
        return -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a)

    def gate(self, x):
        """The gated norm's gate [B, T, value heads, Dv]."""
        return self.in_proj_z(x)

    def qkv(self, x):
        """The conv's input channels [B, T, channels]: per key head its q, its k, its value heads' v."""
        if not self.apart:
            return self.in_proj_qkv(x)
        b, t, _ = x.shape
        v = self.v_proj(x).reshape(b, t, self.key_heads, -1)  # each key head's value heads, in order
        return jnp.concatenate([self.q_proj(x), self.k_proj(x), v], axis=-1).reshape(b, t, self.channels)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        b, t, _ = x.shape
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        weight = self.conv1d["weight"][..., 0, :].reshape(self.channels, -1)
        mixed, conv = causal_conv(self.qkv(x), start.conv, weight, valid, act=self.conv_act)
        mixed = mixed.reshape(b, t, self.key_heads, -1)  # per key head: q, k, then its value heads' v
        q, k = mixed[..., : self.dk], mixed[..., self.dk : 2 * self.dk]
        v = mixed[..., 2 * self.dk :].reshape(b, t, self.heads, self.dv)
        if self.heads != self.key_heads:  # each key head serves heads / key_heads value heads, in order
            q, k = (jnp.repeat(y, self.heads // self.key_heads, axis=2) for y in (q, k))
        beta = jax.nn.sigmoid(self.in_proj_b(x).astype(jnp.float32)) * self.beta_scale
        g = self.decay(x)
        beta = jnp.where(valid[..., None], beta, 0.0)
        g = jnp.where(valid.reshape(valid.shape + (1,) * (g.ndim - 2)), g, 0.0)
        # uncached (a whole sequence at once): the chunked form, as transformers' prefill; with a cache, token by token
        out, ssm = (gated_delta_rule if cache is None else recurrent_delta_rule)(q, k, v, g, beta, start.ssm)
        out = self.out_proj(self.norm(out.astype(x.dtype), self.gate(x)))
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(conv, ssm), valid)


class KimiDeltaAttention(GatedDeltaNet):
    """Kimi Delta Attention (Kimi-Linear's KimiLinearDeltaAttention, under the layer's self_attn): the gated
    DeltaNet with q, k and v projected apart (one head count, one head size), its decay per key channel (a
    low-rank forget gate: g = -exp(A_log) softplus(f_b_proj(f_a_proj(x)) + dt_bias), [B, T, H, Dk]) and its
    output gate low-rank too (g_b_proj(g_a_proj(x))) through a sigmoid in a float32 gated norm. Bailing-Hybrid's
    (cfg.kda_full_rank): both gates one full-rank projection (f_proj, g_proj), A_log one per head, the decay bounded
    where cfg.kda_lower_bound is set: lower * sigmoid(exp(A_log) (f_proj(x) + dt_bias))."""

    attr = "self_attn"

    def gates(self, cfg: ModelConfig, dtype, dense: dict):
        e, h, d = cfg.hidden_size, cfg.linear_value_heads, cfg.linear_key_head_dim
        rank = dict(dense, quantizable=False)
        self.full_rank, self.lower_bound = cfg.kda_full_rank, cfg.kda_lower_bound
        if self.full_rank:
            self.f_proj = Dense((e,), (h, d), ("embed", "linear_v_heads", "head_dim"), **dense)
            self.g_proj = Dense((e,), (h, d), ("embed", "linear_v_heads", "head_dim"), **dense)
        else:
            self.f_a_proj = Dense((e,), (d,), ("embed", "latent"), **rank)
            self.f_b_proj = Dense((d,), (h, d), ("latent", "linear_v_heads", "head_dim"), **rank)
            self.g_a_proj = Dense((e,), (d,), ("embed", "latent"), **rank)
            self.g_b_proj = Dense((d,), (h, d), ("latent", "linear_v_heads", "head_dim"), **rank)
        self.dt_bias = param((h, d), ("linear_v_heads", "head_dim"), jnp.float32)  # float32 as transformers keeps it
        self.A_log = param((h, 1), ("linear_v_heads", "norm"), dtype)  # HF's [1, 1, H, 1] (Bailing's [H])
        self.norm = GatedRMSNorm(d, cfg.norm_eps, dtype=dtype, rngs=dense["rngs"], upcast_scale=True, act=jax.nn.sigmoid)

    def decay(self, x):
        f = self.f_proj(x) if self.full_rank else self.f_b_proj(self.f_a_proj(x))
        a, rate = f.astype(jnp.float32) + self.dt_bias[...], jnp.exp(self.A_log[...].astype(jnp.float32))
        if self.lower_bound is not None:
            return (self.lower_bound * jax.nn.sigmoid(rate * a)).astype(x.dtype)  # cast as transformers' bounded gate
        return -rate * jax.nn.softplus(a)

    def gate(self, x):
        return self.g_proj(x) if self.full_rank else self.g_b_proj(self.g_a_proj(x))
