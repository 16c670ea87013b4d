"""The Mamba2 mixer (transformers' BambaMixer, GraniteMoeHybridMambaLayer), a recurrent mixer
(models/recurrent.py): in_proj gives the gate z, the conv's x | B | C channels and a time step per
head; the causal depthwise conv (mamba_d_conv taps, its bias, then hidden_act: silu) runs over x | B | C; the selective
state space then keeps per head a [head dim, state] float32 matrix,

    s <- s * exp(dt * A) + dt * x B^T,    y = s C + D * x,    dt = softplus(dt + dt_bias), A = -exp(A_log),

B and C shared by the heads of each of mamba_n_groups groups; y times silu(z) is RMS-normed per group
(BambaRMSNormGated) and projected back by out_proj. Its state is the conv's last inputs and those matrices.

The recurrence runs token by token (a lax.scan; on one GPU one Pallas kernel, models/delta_rule_gpu.py)
with a cache and without: a sequence reaches the same
state however its prompt was split into chunks (the engine's results must not depend on what else it
runs). transformers' prefill computes the same sums in chunks (mamba2_chunk_scan); its decode step,
token by token, is this form. A token marked invalid (padding, a finished row) gets a time step of 0
and a zero input, so it leaves the state as it was.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, activation, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, causal_conv, gated_recurrence
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


def selective_scan(x, dt, a, b, c, d, state):
    """Mamba2's recurrence token by token: x [B, T, H, P], dt [B, T, H] (after softplus), a [H] (negative),
    b, c [B, T, H, N] (each head's group's), d [H], state [B, H, P, N] float32 -> (y [B, T, H, P] float32,
    the state after the T tokens)."""
    # the shared gated recurrence over the state transposed, [N, P] per head: C as queries, B as keys, x as values
    y, state = gated_recurrence(c, b, x, dt * a, dt, jnp.swapaxes(state, -1, -2))
    return y + d[:, None] * x.astype(jnp.float32), jnp.swapaxes(state, -1, -2)


class Mamba2(RecurrentMixer):
    """A Mamba2 layer in transformers' naming: in_proj, conv1d (HF's [C, 1, K]; its bias where
    conv_bias), dt_bias, A_log, D, norm (the gated RMSNorm per group) and out_proj (in_proj's and
    out_proj's biases where mamba_proj_bias)."""

    attr = "mamba"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        """The conv's last inputs over x | B | C, and a [head dim, state] matrix per head."""
        inner = cfg.mamba_heads * cfg.mamba_head_dim
        return StateShape((cfg.linear_conv_kernel - 1, inner + 2 * cfg.mamba_groups * cfg.mamba_state),
                          (cfg.mamba_heads, cfg.mamba_head_dim, cfg.mamba_state))

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, p = cfg.hidden_size, cfg.mamba_heads, cfg.mamba_head_dim
        self.heads, self.head_dim, self.groups, self.n = h, p, cfg.mamba_groups, cfg.mamba_state
        self.state_dims = self.state_shape(cfg, layer)
        self.inner, channels = h * p, self.state_dims.conv[1]
        # the conv's activation: the model's hidden_act, or the mixer's own (Nemotron-H's mamba_hidden_act)
        self.eps = cfg.norm_eps if cfg.mamba_gate_eps is None else cfg.mamba_gate_eps
        self.act, self.dt_min = activation(cfg.mamba_act or cfg.hidden_act), cfg.mamba_dt_min
        dense = dict(bias=cfg.mamba_proj_bias, dtype=dtype, rngs=rngs)
        self.in_proj = Dense((e,), (self.inner + channels + h,), ("embed", "recurrent"), **dense)
        # Falcon-H1's muP: the input times in_scale, in_proj's z | x | B | C | dt parts each times its own scale
        self.in_scale, self.proj_scales = cfg.mamba_in_scale, cfg.mamba_proj_scales
        conv = dict(weight=param((channels, 1, cfg.linear_conv_kernel), ("recurrent", "norm", "norm"), dtype))
        if cfg.conv_bias:
            conv["bias"] = param((channels,), ("recurrent",), dtype)
        self.conv1d = nnx.Dict(conv)
        self.dt_bias = param((h,), ("recurrent",), dtype)
        self.A_log = param((h,), ("recurrent",), dtype)
        self.D = param((h,), ("recurrent",), dtype)
        self.norm_kind = cfg.mamba_norm
        self.norm = None if cfg.mamba_norm == "none" else nnx.Dict(weight=param((self.inner,), ("recurrent",), dtype))
        out_bias = cfg.mamba_proj_bias if cfg.mamba_out_bias is None else cfg.mamba_out_bias
        self.out_proj = Dense((self.inner,), (e,), ("recurrent", "embed"), **dict(dense, bias=out_bias))

    def gated_norm(self, y, z, dtype):
        """BambaRMSNormGated: y times silu(z) in float32, RMS-normed over each group's channels, cast, times the weight;
        norm_kind "norm_first" (FalconH1RMSNormGated's norm_before_gate): normed, times the weight in float32, times
        silu(z), cast; "none" (Falcon-H1 without mamba_rms_norm): y times silu(z), cast."""
        gate = jax.nn.silu(z.astype(jnp.float32))
        if self.norm_kind == "none":
            return (y * gate).astype(dtype)
        y = y * gate if self.norm_kind == "gate_first" else y
        grouped = y.reshape(*y.shape[:-1], self.groups, -1)
        grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped * grouped, axis=-1, keepdims=True) + self.eps)
        if self.norm_kind == "gate_first":
            return self.norm["weight"][...] * grouped.reshape(y.shape).astype(dtype)
        return (self.norm["weight"][...].astype(jnp.float32) * grouped.reshape(y.shape) * gate).astype(dtype)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        b, t, _ = x.shape
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        proj = self.in_proj(x if self.in_scale == 1 else x * self.in_scale)
        if self.proj_scales is not None:
            widths = (self.inner, self.inner, self.groups * self.n, self.groups * self.n, self.heads)
            proj = proj * jnp.concatenate([jnp.full((w,), s, proj.dtype) for s, w in zip(self.proj_scales, widths)])
        z, xbc, dt = proj[..., : self.inner], proj[..., self.inner : -self.heads], proj[..., -self.heads :]
        bias = self.conv1d["bias"][...] if "bias" in self.conv1d else None
        # the conv's input at padding is zero, as in the row alone (transformers zeroes x alone, which leaves in_proj's
        # biases there); its output there too (apply_mask_to_padding_states after the conv)
        xbc = jnp.where(valid[..., None], xbc, 0).astype(x.dtype)
        xbc, conv = causal_conv(xbc, start.conv, self.conv1d["weight"][:, 0], valid, bias, self.act)
        xbc = jnp.where(valid[..., None], xbc, 0).astype(x.dtype)
        gn = self.groups * self.n
        xs = xbc[..., : self.inner].reshape(b, t, self.heads, self.head_dim)
        bm, cm = (xbc[..., self.inner + i * gn : self.inner + (i + 1) * gn].reshape(b, t, self.groups, self.n)
                  for i in range(2))
        bm, cm = (jnp.repeat(m, self.heads // self.groups, axis=2) for m in (bm, cm))  # each head its group's
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        dt = jnp.maximum(dt, self.dt_min) if self.dt_min else dt
        dt = jnp.where(valid[..., None], dt, 0.0)
        a = -jnp.exp(self.A_log[...].astype(jnp.float32))
        y, ssm = selective_scan(xs, dt, a, bm, cm, self.D[...].astype(jnp.float32), start.ssm)
        out = self.out_proj(self.gated_norm(y.reshape(b, t, self.inner), z, x.dtype))
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(conv, ssm), valid)


def _number(value):
    """A number of config.json, or transformers 5's spelling of a float JSON cannot hold ({"__float__": "Infinity"})."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        try:
            return float(value["__float__"])
        except (TypeError, ValueError):
            return value
    return value


def check_time_step_limit(raw: dict) -> None:
    """A ConfigError for config.json's time_step_limit other than (0, inf) (left out: that), which is not implemented:
    transformers clamps its prefill's time steps by it, not its decode steps' (two answers for one model); null, which
    every Mamba2 family of transformers indexes (a TypeError) or its config class refuses."""
    limit = raw.get("time_step_limit")
    if limit is None and "time_step_limit" in raw:
        raise ConfigError("config.json time_step_limit is null, which transformers cannot run (it reads the limit's two "
                          "bounds): remove it, or set it to [0.0, Infinity]")
    if limit is not None and (not isinstance(limit, list) or [_number(v) for v in limit] != [0, math.inf]):
        raise ConfigError(f"config.json time_step_limit={limit} is not implemented (transformers clamps its prefill's time "
                          "steps by it, not its decode steps'): remove it, or set it to [0.0, Infinity]")


def mamba_fields(raw: dict) -> dict:
    """The Mamba2 layers' ModelConfig fields from config.json's mamba_* keys (Bamba's, Granite 4.0-H's), refused where
    their config classes refuse them: mamba_d_head "auto" is mamba_expand * hidden_size / mamba_n_heads; a
    time_step_limit other than (0, inf) is not implemented (transformers clamps its prefill's time steps by it, not
    its decode steps': two answers for one model)."""
    heads = raw["mamba_n_heads"]
    # Falcon-H1's mamba_d_ssm: the mixer's width where given, else mamba_expand x hidden_size
    inner, width = raw.get("mamba_d_ssm"), "mamba_d_ssm"
    if inner is None:
        inner, width = raw["mamba_expand"] * raw["hidden_size"], "mamba_expand x hidden_size" + (" (mamba_d_ssm null)" if
                                                                                                 "mamba_d_ssm" in raw else "")
    head = inner // heads if raw["mamba_d_head"] == "auto" else raw["mamba_d_head"]
    if isinstance(head, str) or inner % heads or head * heads != inner:
        raise ConfigError(f"config.json mamba_d_head={raw['mamba_d_head']!r} x mamba_n_heads={heads} is not {width} = {inner} "
                          f"(transformers refuses it): set mamba_d_head to {inner // heads or 1} or \"auto\"")
    check_time_step_limit(raw)
    return dict(mamba_heads=heads, mamba_head_dim=head, mamba_state=raw["mamba_d_state"], mamba_groups=raw["mamba_n_groups"],
                linear_conv_kernel=raw["mamba_d_conv"], conv_bias=bool(raw["mamba_conv_bias"]),
                mamba_proj_bias=bool(raw["mamba_proj_bias"]))


def mamba_specs(cfg: ModelConfig, module: str = "model.layers.{i}.mamba", attr: str = "mamba", layers=None) -> list[WeightSpec]:
    """Each Mamba2 layer's tensors (of `layers` alone, where given), at `module` as transformers names them (Nemotron-H's
    backbone.layers.{i}.mixer), into the layer's `attr` (the shared layer's mamba, MambaBlock's mixer)."""
    specs = []
    for i in (i for i in range(cfg.num_layers) if cfg.layer_state_kind(i) == "mamba" and (layers is None or i in layers)):
        hf, ours = module.format(i=i) + ".", ("model", "layers", i, attr)
        out_bias = cfg.mamba_proj_bias if cfg.mamba_out_bias is None else cfg.mamba_out_bias
        for proj, bias in (("in_proj", cfg.mamba_proj_bias), ("out_proj", out_bias)):
            specs.append(WeightSpec(f"{hf}{proj}.weight", ours + (proj, "kernel"), Linear()))
            specs += [WeightSpec(f"{hf}{proj}.bias", ours + (proj, "bias"))] if bias else []
        specs += [WeightSpec(hf + "conv1d." + p, ours + ("conv1d", p)) for p in ("weight", "bias")[: 1 + cfg.conv_bias]]
        specs += [WeightSpec(hf + name, ours + (name,)) for name in ("dt_bias", "A_log", "D")]
        specs += [WeightSpec(hf + "norm.weight", ours + ("norm", "weight"))] if cfg.mamba_norm != "none" else []
    return specs
