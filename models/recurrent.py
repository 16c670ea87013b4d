"""Recurrent mixers: layers that mix tokens through a state carried per sequence instead of cached
keys (Qwen3-Next's gated DeltaNet, LFM2's gated short conv), and what they share.

A recurrent mixer's state is a `RecurrentState` of two parts: `conv`, the last inputs of its causal
depthwise conv, and `ssm`, a float32 state of the kind's own shape (a zero-size array for a mixer
with none). Each kind declares its `StateShape` (`RecurrentMixer.state_shape`); the serving engine
keeps one state row per decode slot (plus a scratch row) for each such layer, beside the page pool
(jaxllm/serving/steps.py), sized by `shape_bytes`, without knowing the kind. A call's KV backend says
which rows its rows use (`PagedCache.state_rows`; None: row b is state row b, as in decode). A row
whose first position is 0 starts from a zero state (a new or recomputed sequence); tokens marked
invalid (padding, finished rows) leave the state as it was (`RecurrentMixer.state_in`, `state_out`).

With a cache a mixer must reach the same state whatever chunks a prompt was prefilled in (the
engine's results do not depend on what else it runs): it updates its state token by token there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class RecurrentState(NamedTuple):
    """One recurrent layer's state for S rows (sequences): `conv` [S, kernel - 1, channels] the
    conv's last inputs (the model's dtype), `ssm` [S, ...] float32, the kind's own state."""

    conv: jax.Array
    ssm: jax.Array


class StateShape(NamedTuple):
    """A recurrent layer's state per sequence: `conv` (taps kept, channels) and `ssm` (its float32
    state's dims; (0,): none); `axes` the logical axes of the engine's state arrays (a RecurrentState
    of axis names, rows first: jaxllm.sharding.RULES), None: rows over dp as the slots, the rest whole."""

    conv: tuple[int, int]
    ssm: tuple[int, ...]
    axes: tuple | None = None

    def logical_axes(self) -> tuple:
        return self.axes or RecurrentState(("batch", None, None), ("batch",) + (None,) * len(self.ssm))


def zero_state(shape: StateShape, rows: int, dtype) -> RecurrentState:
    """A zero state of `rows` rows for a layer of state shape `shape`, its conv inputs in `dtype`."""
    return RecurrentState(jnp.zeros((rows, *shape.conv), dtype), jnp.zeros((rows, *shape.ssm), jnp.float32))


def shape_bytes(shape: StateShape, dtype) -> int:
    """Bytes of one sequence's state of `shape` (conv inputs in `dtype`)."""
    return math.prod(shape.conv) * jnp.dtype(dtype).itemsize + math.prod(shape.ssm) * 4


def causal_conv(x, conv_state, weight, valid, bias=None, act=jax.nn.silu):
    """Depthwise causal conv of x [B, T, C] after the `conv_state` [B, kernel - 1, C] inputs before
    it, weight [C, kernel], `bias` [C] or None; `act` (None: none) of the sums, and the new state: the
    last kernel - 1 inputs up to each row's last valid token (valid [B, T], a prefix of each row)."""
    taps = weight.shape[1] - 1
    full = jnp.concatenate([conv_state.astype(x.dtype), x], axis=1)  # [B, taps + T, C]
    t = x.shape[1]
    w = weight.astype(jnp.float32)
    out = sum(full[:, j : j + t].astype(jnp.float32) * w[:, j] for j in range(taps + 1))
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    lengths = jnp.sum(valid, axis=1)
    new = jax.vmap(lambda row, n: jax.lax.dynamic_slice_in_dim(row, n, taps, axis=0))(full, lengths)
    return (out if act is None else act(out)).astype(x.dtype), new


class RecurrentMixer(nnx.Module):
    """A layer's token mixer that keeps a RecurrentState: called as the shared layer calls its
    attention, (x, positions, cache, kv) -> (output, the layer's new RecurrentState; None without a
    cache). A kind sets `attr`, the decoder layer's attribute holding it (transformers' name:
    Qwen3-Next's linear_attn, LFM2's conv), defines `state_shape` and keeps its own in `state_dims`."""

    attr: str = ""

    @classmethod
    def state_shape(cls, cfg, layer: int) -> StateShape:
        raise NotImplementedError

    def state_in(self, x, positions, cache: RecurrentState | None, kv):
        """What a call starts from: (x zeroed at invalid tokens, valid [B, T], the state rows, the rows'
        held state (None without a cache), the state each row starts from: zeros for a row without
        a cache or at position 0)."""
        b, t, _ = x.shape
        valid = getattr(kv, "valid", None)  # PagedCache's real tokens, or Uncached's keep (a padded batch's)
        valid = getattr(kv, "keep", None) if valid is None else valid
        valid = jnp.ones((b, t), bool) if valid is None else valid
        x = jnp.where(valid[..., None], x, 0).astype(x.dtype)  # padding feeds nothing (apply_mask_to_padding_states)
        zeros = zero_state(self.state_dims, b, x.dtype)
        if cache is None:
            return x, valid, None, None, zeros
        rows = getattr(kv, "state_rows", None)
        rows = jnp.arange(b) if rows is None else rows
        fresh = positions[:, 0] == 0  # a row at position 0 starts a sequence: from zeros, whatever its state row held
        held = RecurrentState(cache.conv[rows], cache.ssm[rows])
        start = RecurrentState(*(jnp.where(fresh.reshape((b,) + (1,) * (h.ndim - 1)), z, h.astype(z.dtype))
                                 for z, h in zip(zeros, held)))
        return x, valid, rows, held, start

    @staticmethod
    def state_out(cache: RecurrentState, rows, held: RecurrentState, new: RecurrentState, valid) -> RecurrentState:
        """`cache` with the rows' new state written; a row without a token this call (finished, paused,
        a slot whose sequence is still prefilling) keeps the state it held, whatever its position says."""
        keep = jnp.any(valid, axis=1)

        def put(whole, old, state):
            state = jnp.where(keep.reshape((-1,) + (1,) * (old.ndim - 1)), state.astype(whole.dtype), old)
            return whole.at[rows].set(state, mode="drop")

        return RecurrentState(*map(put, cache, held, new))
