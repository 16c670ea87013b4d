"""Griffin's recurrent block (transformers' RecurrentGemmaRecurrentBlock with its RecurrentGemmaRglru), a recurrent
mixer (models/recurrent.py): linear_y gives the gate branch, act(linear_y(x)) (hidden_activation); linear_x the
recurrent branch, through a causal depthwise conv (conv1d_width taps, its bias, no activation) and the RG-LRU, a
real-gated linear recurrence per channel of lru_width,

    h <- a * h + sqrt(1 - a^2) * (i * x),    log a = -8 * r * softplus(recurrent_param),

its input gate i and recurrence gate r sigmoids of block-diagonal projections of x (num_attention_heads blocks,
input_gate_weight / recurrent_gate_weight [blocks, in, out] with their biases); at position 0 the recurrence resets (a
0, the input not normalised, as transformers' `reset`). linear_out projects the product of the two branches back.

Its state is the conv's last inputs and h (float32). The recurrence runs token by token (models/recurrent.py's
gated_recurrence with one-dimensional heads, one per channel: the gate log a, the input as values), as transformers'
sequential scan does, with a cache and without; a token marked invalid (padding, a finished row) gets a = 1 and a zero
input, so it leaves the state as it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, activation, param
from jaxllm.models.recurrent import RecurrentMixer, RecurrentState, StateShape, causal_conv, gated_recurrence
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


def diagonal_recurrence(x, log_a, state):
    """h_t = exp(log_a_t) h_{t-1} + x_t per channel, token by token: x, log_a [B, T, C], state [B, C] float32 ->
    (h [B, T, C] float32, the state after the T tokens): the shared gated recurrence, each channel a head of one key and
    one value."""
    ones = jnp.ones(x.shape + (1,), jnp.float32)
    out, state = gated_recurrence(ones, ones, x[..., None], log_a, jnp.ones(x.shape, jnp.float32), state[..., None, None])
    return out[..., 0], state[..., 0, 0]


class RgLru(RecurrentMixer):
    """Griffin's recurrent block in transformers' naming: linear_y, linear_x, conv_1d (HF's nn.Conv1d weight [C, 1, K]
    and bias), rg_lru (recurrent_param [C], input_gate_weight / recurrent_gate_weight [blocks, C / blocks, C / blocks],
    input_gate_bias / recurrent_gate_bias [blocks, C / blocks]), linear_out; every projection with its bias."""

    attr = "temporal_block"

    @classmethod
    def state_shape(cls, cfg: ModelConfig, layer: int) -> StateShape:
        """The conv's last inputs and h, over the lru_width channels."""
        return StateShape((cfg.linear_conv_kernel - 1, cfg.lru_width), (cfg.lru_width,))

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, c, k, blocks = cfg.hidden_size, cfg.lru_width, cfg.linear_conv_kernel, cfg.num_heads
        self.state_dims, self.blocks, self.act = self.state_shape(cfg, layer), blocks, activation(cfg.hidden_act)
        dense = dict(bias=True, dtype=dtype, rngs=rngs)
        self.linear_y = Dense((e,), (c,), ("embed", "recurrent"), **dense)
        self.linear_x = Dense((e,), (c,), ("embed", "recurrent"), **dense)
        self.linear_out = Dense((c,), (e,), ("recurrent", "embed"), **dense)
        self.conv_1d = nnx.Dict(weight=param((c, 1, k), ("recurrent", "norm", "norm"), dtype), bias=param((c,), ("recurrent",), dtype))
        w, b = (blocks, c // blocks, c // blocks), (blocks, c // blocks)
        self.rg_lru = nnx.Dict(recurrent_param=param((c,), ("recurrent",), dtype),
                               input_gate_weight=param(w, ("recurrent", "norm", "norm"), dtype),
                               input_gate_bias=param(b, ("recurrent", "norm"), dtype),
                               recurrent_gate_weight=param(w, ("recurrent", "norm", "norm"), dtype),
                               recurrent_gate_bias=param(b, ("recurrent", "norm"), dtype))

    def gate(self, x, name: str):
        """sigmoid of x [B, T, C] through the block-diagonal projection `name` (x's blocks times their [in, out] matrices,
        plus the bias), in x's dtype as transformers' baddbmm."""
        blocked = x.reshape(*x.shape[:-1], self.blocks, -1)
        w, bias = self.rg_lru[f"{name}_gate_weight"][...], self.rg_lru[f"{name}_gate_bias"][...]
        return jax.nn.sigmoid(jnp.einsum("bthi,hio->btho", blocked, w.astype(x.dtype)) + bias.astype(x.dtype)).reshape(x.shape)

    def lru(self, x, positions, valid, state):
        """The RG-LRU of x [B, T, C] from `state` [B, C] -> (its output in x's dtype, the state after the T tokens)."""
        log_a = -8.0 * self.gate(x, "recurrent") * jax.nn.softplus(self.rg_lru["recurrent_param"][...].astype(x.dtype))
        log_a = log_a.astype(jnp.float32)
        reset = ((positions == 0) & valid)[..., None]
        multiplier = jnp.where(reset, 1.0, jnp.sqrt(1 - jnp.exp(2 * log_a)))  # the normalisation, not at a reset
        inputs = jnp.where(valid[..., None], x * self.gate(x, "input") * multiplier.astype(x.dtype), 0)
        # a reset forgets the state (a = 0); an invalid token keeps it (a = 1, its input zero)
        log_a = jnp.where(reset, -jnp.inf, jnp.where(valid[..., None], log_a, 0.0))
        h, state = diagonal_recurrence(inputs.astype(jnp.float32), log_a, state)
        return h.astype(x.dtype), state

    def __call__(self, x, positions, cache: RecurrentState | None, kv):
        x, valid, rows, held, start = self.state_in(x, positions, cache, kv)
        y = self.act(self.linear_y(x))
        # the conv's input at padding is zero, as in the row alone (linear_x's bias would be there otherwise)
        branch = jnp.where(valid[..., None], self.linear_x(x), 0).astype(x.dtype)
        branch, conv = causal_conv(branch, start.conv, self.conv_1d["weight"][:, 0], valid, self.conv_1d["bias"][...], act=None)
        h, ssm = self.lru(branch, positions, valid, start.ssm)
        out = self.linear_out(h * y)
        return out, None if cache is None else self.state_out(cache, rows, held, RecurrentState(conv, ssm), valid)


def rg_lru_specs(cfg: ModelConfig, module: str = "model.layers.{i}.temporal_block") -> list[WeightSpec]:
    """Each RG-LRU layer's tensors, at `module` as transformers names them."""
    specs = []
    for i in (i for i in range(cfg.num_layers) if cfg.layer_state_kind(i) == "rg_lru"):
        hf, ours = module.format(i=i) + ".", ("model", "layers", i, RgLru.attr)
        for name in ("linear_y", "linear_x", "linear_out"):
            specs += [WeightSpec(f"{hf}{name}.weight", ours + (name, "kernel"), Linear()), WeightSpec(f"{hf}{name}.bias", ours + (name, "bias"))]
        specs += [WeightSpec(hf + "conv_1d." + p, ours + ("conv_1d", p)) for p in ("weight", "bias")]
        specs += [WeightSpec(f"{hf}rg_lru.{p}", ours + ("rg_lru", p)) for p in ("recurrent_param", "input_gate_weight",
                                                                               "input_gate_bias", "recurrent_gate_weight",
                                                                               "recurrent_gate_bias")]
    return specs
