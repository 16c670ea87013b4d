"""The Mamba (v1) mixer (transformers' MambaMixer, FalconMambaMixer, JambaMambaMixer), a recurrent mixer
(models/recurrent.py): in_proj gives x and the gate z over mamba_inner channels; the causal depthwise conv
(linear_conv_kernel taps, its bias where conv_bias, then hidden_act) runs over x; x_proj gives per token a
low-rank time step (mamba_dt_rank), B and C (mamba_state each), shared by every channel; dt_proj lifts the time
step to one per channel. The selective state space keeps per channel a [state] float32 vector,

    s <- s * exp(dt * A) + dt * x B,    y = s . C + D * x,    dt = softplus(dt_proj(t) + bias), A = -exp(A_log),

A [channels, state] (Mamba2's is one number per head); y times silu(z) goes through out_proj. FalconMamba RMS-normalises
the time step, B and C before use (weightless, mixer_rms_eps), Jamba with weights (dt_layernorm, b_layernorm,
c_layernorm: mamba_bcdt_norm). Its state is the conv's last inputs and those vectors. Zamba's mixer (`MultiHeadMamba`,
layer type "mamba1_heads") is mamba_heads such mixers side by side, each its own x_proj and dt_proj, so B and C per head.

The recurrence runs token by token (a lax.scan), with a cache and without: a sequence reaches the same state however
its prompt was split into chunks, as transformers' decode step computes it (its prefill's sequential loop is the same
arithmetic). A token marked invalid (padding, a finished row) gets a time step of 0 and a zero input, so it leaves
the state as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, RMSNorm, activation, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, causal_conv
from jaxllm.models.transforms import Copy, Linear
from jaxllm.models.weights import WeightSpec


def channel_scan(x, dt, a, b, c, state):
    """Mamba's recurrence token by token: x, dt [B, T, I] (dt after softplus), a [I, N] (negative), b, c [B, T, H, N]
    (each of H heads' over its I / H channels; H = 1: every channel's), state [B, I, N] float32 -> (y [B, T, I] float32
    without the D term, the state after the T tokens)."""
    (bsz, t, i), h = x.shape, b.shape[2]
    heads = lambda v: v.reshape(v.shape[:-1] + (h, i // h))  # noqa: E731 - [..., I] -> [..., H, I / H]
    x, dt = (jnp.moveaxis(heads(v.astype(jnp.float32)), 1, 0) for v in (x, dt))  # [T, B, H, P]
    b, c = (jnp.moveaxis(v.astype(jnp.float32), 1, 0) for v in (b, c))  # [T, B, H, N]
    a = a.reshape(h, i // h, -1)

    def step(s, xs):
        x, dt, b, c = xs
        s = s * jnp.exp(dt[..., None] * a) + (dt * x)[..., None] * b[:, :, None, :]
        return s, jnp.einsum("bhpn,bhn->bhp", s, c)

    state, y = jax.lax.scan(step, state.astype(jnp.float32).reshape(bsz, h, i // h, -1), (x, dt, b, c))
    return jnp.moveaxis(y, 0, 1).reshape(bsz, t, i), state.reshape(bsz, i, -1)


class Mamba(RecurrentMixer):
    """A Mamba layer in transformers' naming: in_proj, conv1d (HF's [I, 1, K]; its bias where conv_bias), x_proj,
    dt_proj (with its bias), A_log [I, N], D, out_proj (in_proj's and out_proj's biases where mamba_proj_bias), and
    Jamba's dt_layernorm, b_layernorm, c_layernorm weights."""

    attr = "mamba"
    interleaved = False  # in_proj's x and z rows interleaved (x_c row 2c, z_c row 2c + 1: Zamba's), not x | z

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        """The conv's last inputs over the inner channels, and a [state] vector per channel."""
        return StateShape((cfg.linear_conv_kernel - 1, cfg.mamba_inner), (cfg.mamba_inner, cfg.mamba_state))

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, i, n, r = cfg.hidden_size, cfg.mamba_inner, cfg.mamba_state, cfg.mamba_dt_rank
        self.inner, self.n, self.rank = i, n, r
        self.state_dims = self.state_shape(cfg, layer)
        self.act = activation(cfg.mamba_act or cfg.hidden_act)  # the conv's activation (Zamba's hidden_mamba_act)
        dense = dict(bias=cfg.mamba_proj_bias, dtype=dtype, rngs=rngs)
        split = ((i, 2), ("embed", "recurrent", "norm")) if self.interleaved else ((2, i), ("embed", "norm", "recurrent"))
        self.in_proj = Dense((e,), *split, **dense)
        conv = dict(weight=param((i, 1, cfg.linear_conv_kernel), ("recurrent", "norm", "norm"), dtype))
        if cfg.conv_bias:
            conv["bias"] = param((i,), ("recurrent",), dtype)
        self.conv1d = nnx.Dict(conv)
        self.projections(cfg, dtype=dtype, rngs=rngs)
        self.out_proj = Dense((i,), (e,), ("recurrent", "embed"), **dense)
        self.norms = cfg.mamba_bcdt_norm
        if self.norms != "none":  # RMS norms of the time step, B and C (FalconMamba's weightless, Jamba's weighted)
            norm = dict(dtype=dtype, rngs=rngs, weight=self.norms == "weighted")
            self.dt_layernorm, self.b_layernorm, self.c_layernorm = (
                RMSNorm(size, cfg.mamba_norm_eps, **norm) for size in (r, n, n))

    def projections(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs) -> None:
        """x_proj, dt_proj (with its bias), A_log [I, N] and D [I], over every channel at once."""
        i, n, r = self.inner, self.n, self.rank
        self.x_proj = Dense((i,), (r + 2 * n,), ("recurrent", "norm"), bias=False, dtype=dtype, rngs=rngs)
        self.dt_proj = Dense((r,), (i,), ("norm", "recurrent"), bias=True, dtype=dtype, rngs=rngs)
        self.A_log = param((i, n), ("recurrent", "norm"), dtype)
        self.D = param((i,), ("recurrent",), dtype)

    def ssm_inputs(self, xs):
        """Of the conv's output xs [B, T, I]: the time steps before their bias [B, T, I], that bias [I], and B and C
        [B, T, H, N] (one head here: every channel's)."""
        params = self.x_proj(xs)
        step, bm, cm = params[..., : self.rank], params[..., self.rank : self.rank + self.n], params[..., self.rank + self.n :]
        if self.norms != "none":
            step, bm, cm = self.dt_layernorm(step), self.b_layernorm(bm), self.c_layernorm(cm)
        dt = jnp.einsum("...r,ir->...i", step, self.dt_proj.weight(step.dtype))  # its bias added in float32 below
        return dt, self.dt_proj.bias[...], bm[..., None, :], cm[..., None, :]

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        proj = self.in_proj(x)
        xs, z = (proj[..., 0], proj[..., 1]) if self.interleaved else (proj[..., 0, :], proj[..., 1, :])
        bias = self.conv1d["bias"][...] if "bias" in self.conv1d else None
        # the conv's input at padding is zero, as in the row alone (transformers zeroes the layer's input only, which
        # leaves in_proj's biases there); its output there too (apply_mask_to_padding_states after the conv)
        xs = jnp.where(valid[..., None], xs, 0).astype(x.dtype)
        xs, conv = causal_conv(xs, start.conv, self.conv1d["weight"][:, 0], valid, bias, self.act)
        xs = jnp.where(valid[..., None], xs, 0).astype(x.dtype)
        dt, dt_bias, bm, cm = self.ssm_inputs(xs)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + dt_bias.reshape(self.inner).astype(jnp.float32))
        dt = jnp.where(valid[..., None], dt, 0.0)
        a = -jnp.exp(self.A_log[...].astype(jnp.float32)).reshape(self.inner, self.n)
        y, ssm = channel_scan(xs, dt, a, bm, cm, start.ssm)
        y = (y + self.D[...].astype(jnp.float32).reshape(self.inner) * xs.astype(jnp.float32)) * jax.nn.silu(z.astype(jnp.float32))
        out = self.out_proj(y.astype(x.dtype))
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(conv, ssm), valid)


class MultiHeadMamba(Mamba):
    """Zamba's mixer (transformers' ZambaMambaMixer): mamba_heads independent Mamba mixers over I / H channels each, in
    one in_proj (its x and z rows interleaved), conv and out_proj; each head's own x_proj and dt_proj (x_proj_weight
    [H, R + 2N, P], dt_proj_weight [H, P, R], dt_proj_bias [H, P]; A_log [H, P, N], D [H, P]), so B and C per head."""

    interleaved = True

    def projections(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs) -> None:
        h, n, r = cfg.mamba_heads, self.n, self.rank
        p, axes = self.inner // h, ("recurrent", "norm", "norm")
        self.heads = h
        self.x_proj_weight = param((h, r + 2 * n, p), axes, dtype)
        self.dt_proj_weight = param((h, p, r), axes, dtype)
        self.dt_proj_bias = param((h, p), axes[:2], dtype)
        self.A_log = param((h, p, n), axes, dtype)
        self.D = param((h, p), axes[:2], dtype)

    def ssm_inputs(self, xs):
        heads = xs.reshape(xs.shape[:-1] + (self.heads, -1))  # [B, T, H, P]
        params = jnp.einsum("bthp,hkp->bthk", heads, self.x_proj_weight[...])
        step, bm, cm = params[..., : self.rank], params[..., self.rank : self.rank + self.n], params[..., self.rank + self.n :]
        dt = jnp.einsum("bthr,hpr->bthp", step, self.dt_proj_weight[...])
        return dt.reshape(xs.shape), self.dt_proj_bias[...], bm, cm


def mamba1_fields(raw: dict, inner: int, *, state: str, conv: str, dt_rank: str, conv_bias: str, proj_bias: str) -> dict:
    """The Mamba layers' ModelConfig fields from config.json, its keys as the family spells them (Mamba's state_size,
    Jamba's mamba_d_state ...), `inner` channels wide; a time step rank "auto" is ceil(hidden_size / 16)."""
    rank = raw[dt_rank]  # a number or "auto" (config_fields), no other string
    if rank == "auto":
        rank = -(-raw["hidden_size"] // 16)
    return dict(mamba_inner=inner, mamba_state=raw[state], mamba_dt_rank=rank,
                linear_conv_kernel=raw[conv], conv_bias=bool(raw[conv_bias]), mamba_proj_bias=bool(raw[proj_bias]))


def mamba1_specs(cfg: ModelConfig, hf: str, ours: tuple) -> list[WeightSpec]:
    """One Mamba layer's tensors: checkpoint names under `hf` ("model.layers.0.mamba."), our parameters under `ours`."""
    specs = []
    for proj in ("in_proj", "out_proj"):
        specs.append(WeightSpec(f"{hf}{proj}.weight", ours + (proj, "kernel"), Linear()))
        specs += [WeightSpec(f"{hf}{proj}.bias", ours + (proj, "bias"), Copy(flatten=True))] if cfg.mamba_proj_bias else []
    if "mamba1_heads" in cfg.recurrent_kinds:  # Zamba's per-head projections, bare parameters as ours
        specs += [WeightSpec(hf + name, ours + (name,)) for name in ("x_proj_weight", "dt_proj_weight", "dt_proj_bias")]
    else:
        specs += [WeightSpec(hf + "x_proj.weight", ours + ("x_proj", "kernel"), Linear()),
                  WeightSpec(hf + "dt_proj.weight", ours + ("dt_proj", "kernel"), Linear()),
                  WeightSpec(hf + "dt_proj.bias", ours + ("dt_proj", "bias"))]
    specs += [WeightSpec(hf + "conv1d." + p, ours + ("conv1d", p)) for p in ("weight", "bias")[: 1 + cfg.conv_bias]]
    specs += [WeightSpec(hf + name, ours + (name,)) for name in ("A_log", "D")]
    if cfg.mamba_bcdt_norm == "weighted":
        specs += [WeightSpec(f"{hf}{n}_layernorm.weight", ours + (f"{n}_layernorm", "weight")) for n in ("dt", "b", "c")]
    return specs
