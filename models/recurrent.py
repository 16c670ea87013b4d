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

from jaxllm.models import delta_rule_gpu


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
    return (out if act is None else act(out)).astype(x.dtype), last_inputs(full, valid, taps)


def last_inputs(full, valid, taps: int):
    """The `taps` inputs before each row's next token: full [B, taps + T, C] (the state, then the call's inputs), valid
    [B, T] a prefix of each row; a row without a valid token keeps its state."""
    lengths = jnp.sum(valid, axis=1)
    return jax.vmap(lambda row, n: jax.lax.dynamic_slice_in_dim(row, n, taps, axis=0))(full, lengths)


def token_shift(x, prev, valid):
    """RWKV's token shift: x [B, T, C] after `prev` [B, C], the input before it -> (each token's previous input
    [B, T, C], the state after the call: each row's last valid input [B, C])."""
    full = jnp.concatenate([prev[:, None].astype(x.dtype), x], axis=1)
    return full[:, :-1], last_inputs(full, valid, 1)[:, 0]


def gated_recurrence(q, k, v, g, beta, state):
    """The gated linear recurrence token by token, per row and head: S <- S * exp(g_t) + k_t (x) (beta_t v_t),
    o_t = q_t . S after the update; q, k [B, T, H, Dk], v [B, T, H, Dv], g, beta [B, T, H], state [B, H, Dk,
    Dv] float32 -> (o [B, T, H, Dv] float32, the state after the T tokens). A token with g = beta = 0 leaves
    the state as it was. Mamba2's selective state space (C, B, x as q, k, v, dt * A and dt as g and beta, its
    state transposed) and MiniMax's lightning attention (g its head's -slope, beta 1); one GPU kernel where
    it fits (delta_rule_gpu.recurrence without the delta rule's subtraction), else a lax.scan."""
    if delta_rule_gpu.fits(k.shape[-1], v.shape[-1], v.shape[1]):
        return delta_rule_gpu.recurrence(q, k, v, g, beta, state, subtract=False)
    q, k, v, g, beta = (jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v, g, beta))  # [T, B, ...]

    def step(s, xs):
        q, k, v, g, beta = xs
        s = s * jnp.exp(g)[..., None, None] + k[..., :, None] * (beta[..., None] * v)[..., None, :]
        return s, jnp.einsum("bhkv,bhk->bhv", s, q)

    state, out = jax.lax.scan(step, state.astype(jnp.float32), (q, k, v, g, beta))
    return jnp.moveaxis(out, 0, 1), state


def chunked_recurrence(q, k, v, g, state, chunk: int = 64):
    """gated_recurrence's results (beta 1) for a whole sequence in chunks of `chunk` tokens, as linear
    attention's block form (transformers' MiniMax lightning attention): within a chunk the decayed
    products q_i k_j (j <= i) times v, across chunks the state; memory grows with T times `chunk`."""
    b, t, h, dk = k.shape
    q, k, v, g = (jnp.swapaxes(x.astype(jnp.float32), 1, 2) for x in (q, k, v, g))  # [B, H, T, ...]
    c = min(chunk, t)
    pad = -t % c
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
        g = jnp.pad(g, ((0, 0), (0, 0), (0, pad)))
    n = (t + pad) // c
    q, k, v, g = (x.reshape(b, h, n, c, *x.shape[3:]) for x in (q, k, v, g))
    decay = jnp.cumsum(g, axis=-1)  # [B, H, N, C]: each token's decay since the chunk's start
    lower = jnp.tril(jnp.ones((c, c), bool))
    intra = (q @ jnp.swapaxes(k, -1, -2)) * jnp.exp(jnp.where(lower, decay[..., :, None] - decay[..., None, :], -jnp.inf))
    q = q * jnp.exp(decay)[..., None]
    k = k * jnp.exp(decay[..., -1:] - decay)[..., None]
    total = jnp.exp(decay[..., -1])[..., None, None]

    def step(s, xs):
        q, k, v, intra, total = xs
        return s * total + jnp.swapaxes(k, -1, -2) @ v, q @ s + intra @ v

    along = (q, k, v, intra, total)
    state, out = jax.lax.scan(step, state.astype(jnp.float32), tuple(jnp.moveaxis(x, 2, 0) for x in along))
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, n * c, -1)[:, :, :t]
    return jnp.swapaxes(out, 1, 2), state


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
