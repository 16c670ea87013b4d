"""RWKV-4's token mixers (transformers' RwkvSelfAttention, RwkvFeedForward), recurrent mixers (models/recurrent.py).

Each mixes its input with the token before it (the token shift: x * mix + previous * (1 - mix), one mix per channel
and projection). The time mix ("rwkv" layers) projects the mixes to a key k, a value v and a receptance r over
rwkv_attention_size channels and runs the WKV recurrence per channel in float32, transformers' numerically stable
form (rwkv_linear_attention_cpu): its state is a numerator a, a denominator b and the exponent p they are scaled by,

    q = max(p, u + k)                  wkv = (e^(p - q) a + e^(u + k - q) v) / (e^(p - q) b + e^(u + k - q))
    q' = max(p + w, k)                 a, b, p <- e^(p + w - q') a + e^(k - q') v, e^(p + w - q') b + e^(k - q'), q'

with w = -exp(time_decay), u = time_first; out = output(sigmoid(r) * wkv). A fresh state is a = b = 0, p = -1e38 (so
the first token's wkv is its v): the engine's zero state is read as that, b being 0 only before a sequence's first
token (b >= 1 after it). The channel mix is value(relu(key(.))^2) * sigmoid(receptance(.)) of its own mixes.

A layer's state: the two token shifts' last inputs (the time mix's, the channel mix's: `conv` [2, hidden], the model's
dtype, as transformers keeps them) and a, b, p ([3, rwkv_attention_size] float32). The recurrence runs token by
token, with a cache and without, so any prefill chunking reaches the same state; an invalid token (padding, a
finished row) leaves it as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, activation, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, token_shift

FRESH = -1e38  # the exponent of a state before any token (rwkv_linear_attention_cpu's)


def wkv_scan(w, u, k, v, state, valid):
    """The WKV recurrence token by token: w, u [A] float32, k, v [B, T, A], state [B, 3, A] float32 (a, b, p; b = 0:
    fresh), valid [B, T] -> (wkv [B, T, A] float32, the state after the T tokens)."""
    state = state.astype(jnp.float32)
    state = state.at[:, 2].set(jnp.where(state[:, 1] == 0, FRESH, state[:, 2]))
    k, v = (jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (k, v))  # [T, B, A]

    def step(s, xs):
        k, v, ok = xs
        a, b, p = s[:, 0], s[:, 1], s[:, 2]
        q = jnp.maximum(p, k + u)
        e1, e2 = jnp.exp(p - q), jnp.exp(k + u - q)
        out = (e1 * a + e2 * v) / (e1 * b + e2)
        q = jnp.maximum(p + w, k)
        e1, e2 = jnp.exp(p + w - q), jnp.exp(k - q)
        new = jnp.stack([e1 * a + e2 * v, e1 * b + e2, q], axis=1)
        return jnp.where(ok[:, None, None], new, s), out

    state, out = jax.lax.scan(step, state, (k, v, jnp.moveaxis(valid, 1, 0)))
    return jnp.moveaxis(out, 0, 1), state


class TokenShift(RecurrentMixer):
    """What both RWKV mixers share: the layer's state shape, `part` the row of `conv` holding this mixer's last input,
    and their mixes of each token with the one before it."""

    attr = "attention"
    part = 0

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        return StateShape((2, cfg.hidden_size), (3, cfg.rwkv_attention_size))

    def mixes(self, x, positions, cache, kv, names):
        """(the state_in tuple, {name: x * time_mix_name + previous * (1 - time_mix_name)}, this mixer's new last input)."""
        x, valid, rows, held, start = inputs = self.state_in(x, positions, cache, kv)
        shifted, last = token_shift(x, start.conv[:, self.part], valid)
        return inputs, {n: x * self.time_mix[n][...] + shifted * (1 - self.time_mix[n][...]) for n in names}, last

    def shift_params(self, names, e: int, dtype):
        self.time_mix = nnx.Dict({n: param((e,), ("norm",), dtype) for n in names})

    def state_with(self, cache, inputs, last, ssm=None):
        """`cache` with this mixer's new last input (and the WKV state `ssm`) written for the call's rows."""
        _, valid, rows, held, start = inputs
        ssm = held.ssm if ssm is None else ssm
        return self.state_out(cache, rows, held, RecurrentState(held.conv.at[:, self.part].set(last), ssm), valid)


class RwkvTimeMix(TokenShift):
    """transformers' RwkvSelfAttention: time_decay, time_first (float32, its _keep_in_fp32_modules), time_mix_key /
    value / receptance ([hidden]; HF's [1, 1, hidden]), key, value, receptance, output (no biases)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, a = cfg.hidden_size, cfg.rwkv_attention_size
        self.state_dims = self.state_shape(cfg, layer)
        self.time_decay, self.time_first = (param((a,), ("recurrent",), jnp.float32) for _ in range(2))
        self.shift_params(("key", "value", "receptance"), e, dtype)
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.key, self.value, self.receptance = (Dense((e,), (a,), ("embed", "recurrent"), **dense) for _ in range(3))
        self.output = Dense((a,), (e,), ("recurrent", "embed"), **dense)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        inputs, mixed, last = self.mixes(x, positions, cache, kv, ("key", "value", "receptance"))
        k, v = self.key(mixed["key"]), self.value(mixed["value"])
        r = jax.nn.sigmoid(self.receptance(mixed["receptance"]))
        w = -jnp.exp(self.time_decay[...].astype(jnp.float32))
        wkv, ssm = wkv_scan(w, self.time_first[...].astype(jnp.float32), k, v, inputs[4].ssm, inputs[1])
        out = self.output(r * wkv.astype(x.dtype))
        return out, None if cache is None else self.state_with(cache, inputs, last, ssm)


class RwkvChannelMix(TokenShift):
    """transformers' RwkvFeedForward: time_mix_key / receptance, key (hidden -> intermediate_size), value, receptance;
    it keeps its last input in the layer's state beside the time mix's."""

    attr = "feed_forward"
    part = 1

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.state_dims = self.state_shape(cfg, layer)
        self.act = activation(cfg.hidden_act)  # relu2: rwkv.py's
        self.shift_params(("key", "receptance"), e, dtype)
        dense = dict(bias=False, dtype=dtype, rngs=rngs)
        self.key = Dense((e,), (f,), ("embed", "mlp"), **dense)
        self.value = Dense((f,), (e,), ("mlp", "embed"), **dense)
        self.receptance = Dense((e,), (e,), ("embed", "norm"), **dense)

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        inputs, mixed, last = self.mixes(x, positions, cache, kv, ("key", "receptance"))
        out = jax.nn.sigmoid(self.receptance(mixed["receptance"])) * self.value(self.act(self.key(mixed["key"])))
        return out, None if cache is None else self.state_with(cache, inputs, last)
