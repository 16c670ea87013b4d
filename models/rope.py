"""Rotary position embeddings of every scaling kind transformers knows: default, linear, dynamic
NTK, llama3, yarn and LongRoPE, computed as transformers computes them."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models.config import ModelConfig, RopeConfig


def rope_inv_freq(rope: RopeConfig, rotary_dim: int, max_positions: int, seq_len=None):
    """Inverse frequencies [rotary_dim // 2] and the attention scaling, as transformers computes them.

    `seq_len` matters only for "dynamic" (NTK) scaling, whose base grows with the longest position
    seen; it may be a traced value, so that branch is written in jnp.
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
    base = rope.theta
    if rope.type == "dynamic" and rope.alpha:  # HunYuan's fixed NTK alpha: a larger base, static
        base = rope.theta * rope.alpha ** (rotary_dim / (rotary_dim - 2))
        return (1.0 / (base ** exponents)).astype(np.float32), 1.0
    if rope.type == "dynamic":
        seq = jnp.maximum(jnp.asarray(seq_len if seq_len is not None else max_positions, jnp.float32), max_positions)
        dyn_base = base * ((rope.factor * seq / max_positions) - (rope.factor - 1)) ** (rotary_dim / (rotary_dim - 2))
        return 1.0 / (dyn_base ** jnp.asarray(exponents)), 1.0
    inv = (1.0 / (base ** exponents)).astype(np.float32)
    if rope.type == "default":
        return inv, 1.0
    if rope.type == "linear":
        return (inv / rope.factor).astype(np.float32), 1.0
    if rope.type == "llama3":
        return _llama3_inv_freq(inv, rope), 1.0
    if rope.type == "yarn":
        return _yarn_inv_freq(rope, rotary_dim)
    if rope.type == "longrope":
        return _longrope_inv_freq(rope, exponents, seq_len)
    if rope.type == "proportional":
        return _proportional_inv_freq(rope, rotary_dim), 1.0
    raise ValueError(rope.type)


def _proportional_inv_freq(rope: RopeConfig, dim: int) -> np.ndarray:
    """Gemma 4's proportional rope over a whole head of `dim`: the first int(partial * dim // 2)
    frequencies base ** (-2i / dim), the rest zero (those pairs stay as they are), all divided by
    the factor (transformers' _compute_proportional_rope_parameters)."""
    angles = int(rope.partial_rotary_factor * dim // 2)
    inv = 1.0 / (rope.theta ** (np.arange(0, 2 * angles, 2, dtype=np.int64).astype(np.float32) / dim))
    inv = np.concatenate([inv, np.zeros(dim // 2 - angles, np.float32)])
    return (inv / rope.factor).astype(np.float32)


def _longrope_inv_freq(rope: RopeConfig, exponents: np.ndarray, seq_len):
    """Phi-3's LongRoPE: the short factors while the sequence fits original_max_position_embeddings,
    the long ones beyond (transformers decides by the longest position of the call)."""
    original = rope.original_max_position_embeddings
    scale = rope.attention_factor
    if scale is None:
        scale = 1.0 if rope.factor <= 1 else math.sqrt(1 + math.log(rope.factor) / math.log(original))
    base = rope.theta ** exponents
    short = (1.0 / (np.asarray(rope.short_factor, np.float32) * base)).astype(np.float32)
    if seq_len is None:
        return short, float(scale)
    long = (1.0 / (np.asarray(rope.long_factor, np.float32) * base)).astype(np.float32)
    return jnp.where(jnp.asarray(seq_len)[..., None] > original, long, short), float(scale)


def _llama3_inv_freq(inv: np.ndarray, rope: RopeConfig) -> np.ndarray:
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn_inv_freq(rope: RopeConfig, dim: int):
    base, factor = rope.theta, rope.factor
    original = rope.original_max_position_embeddings

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (np.arange(0, dim, 2).astype(np.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp
    inv = interpolation * (1 - keep) + extrapolation * keep
    return inv.astype(np.float32), float(attention_factor)


class Rotary(NamedTuple):
    cos: jax.Array  # [B, T, rotary_dim]
    sin: jax.Array


def rotary(cfg: ModelConfig, positions, dtype, rope: RopeConfig | None = None, lengths=None) -> Rotary:
    """cos/sin for `positions` [B, T] under `rope` (default: the model's). Dynamic NTK and LongRoPE
    depend on the sequence length: each row's own (`lengths` [B] when the positions include
    padding, else its longest position + 1), so a row never depends on the other rows."""
    rope = rope or cfg.rope
    seq_len = None
    if rope.length_dependent:
        seq_len = jnp.max(positions, axis=-1, keepdims=True) + 1 if lengths is None else jnp.reshape(lengths, (-1, 1))
    inv, scale = rope_inv_freq(rope, cfg.rope_dim(rope), cfg.max_position_embeddings, seq_len)
    inv = jnp.asarray(inv, jnp.float32)
    if inv.ndim == 1:
        inv = inv[None, None, :]
    else:  # length-dependent: [B, 1, dim/2]
        inv = inv.reshape(-1, 1, inv.shape[-1])
    freqs = positions[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = (jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype)
    if cfg.rope_reversed:  # NanoChat: q cos - rotate_half(q) sin
        sin = -sin
    if cfg.rope_float32_rotation:  # rounded to the model's dtype, then float32: apply_rotary rotates in float32
        cos, sin = cos.astype(jnp.float32), sin.astype(jnp.float32)
    return Rotary(cos, sin)


def apply_rotary(x, rot: Rotary, interleaved: bool = False):
    """x: [B, T, N, D]; rotates the first rotary_dim dims in transformers' rotate-half layout (pairs
    (i, i + rotary_dim / 2)), or `interleaved`: pairs (2i, 2i + 1), each turned by frequency i, as
    Cohere, GLM and ERNIE 4.5 rotate ("rotate every two"; cfg.rope_interleaved). The tables are the
    same either way: their first half holds one angle per pair."""
    r = rot.cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    cos, sin = rot.cos[:, :, None, :], rot.sin[:, :, None, :]
    half = r // 2
    if interleaved:
        pairs = x_rot.reshape(x_rot.shape[:-1] + (half, 2))
        even, odd, c, s = pairs[..., 0], pairs[..., 1], cos[..., :half], sin[..., :half]
        out = jnp.stack([even * c - odd * s, odd * c + even * s], axis=-1).reshape(x_rot.shape).astype(x.dtype)
    else:
        rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
        out = (x_rot * cos + rotated * sin).astype(x.dtype)  # float32 tables (rope_float32): rotated in float32, cast back
    return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
