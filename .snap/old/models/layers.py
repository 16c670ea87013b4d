"""Building blocks shared by every architecture family: dense layers with logical axes, norms,
embeddings, activations, gated and plain MLPs, routed experts. Rotary positions are in rope.py,
attention and its KV backends in attention.py.

Shapes: B batch, T tokens, E embed, H query heads, K kv heads, D head_dim, F mlp hidden, V vocab,
X experts.

Every parameter is an `nnx.Param` carrying `axes`, a tuple of logical axis names (one per dim);
`jaxllm.sharding` maps those names to mesh axes. Model code never mentions a mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.config import ModelConfig


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, init: str = "normal") -> nnx.Param:
    """A parameter with its logical axis names. Real values come from a checkpoint; init is a placeholder."""
    assert len(shape) == len(axes), (shape, axes)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


class Dense(nnx.Module):
    """y = x . kernel (+ bias), contracting x's last `len(in_shape)` dims.

    `axes` names the dims in (in, out) order; the kernel is stored out_shape + in_shape, e.g.
    q_proj [H, D, E] ("q_heads", "head_dim", "embed"), o_proj [E, H, D]: HF's [out, in] order.
    Decode multiplies one row by each kernel, and XLA's GPU kernel for that product reduces over
    the minor dim several times faster than over the major one (H100: a 1024 x 3072 product 8.6
    vs 13.0 us, 3072 x 1024 6.8 vs 48.5 us; benchmarks/matvec_probe.py, docs/benchmarks.md).
    """

    def __init__(self, in_shape, out_shape, axes, *, bias: bool, dtype, rngs: nnx.Rngs):
        self.n_in = len(in_shape)
        axes = tuple(axes[self.n_in :]) + tuple(axes[: self.n_in])
        self.kernel = param(rngs, tuple(out_shape) + tuple(in_shape), axes, dtype)
        self.bias = param(rngs, tuple(out_shape), axes[: len(out_shape)], dtype, "zeros") if bias else None

    def __call__(self, x):
        kernel = self.kernel[...]
        n_out = kernel.ndim - self.n_in
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(n_out, kernel.ndim)))
        y = jnp.tensordot(x, kernel, axes=contract)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) * w over the last dims (`shape`), in float32. Llama casts back before the scale;
    `upcast_scale` applies the scale in float32, then casts (OLMo 2), and `offset` scales by
    (offset + w) that way (Gemma's 1 + w), each as transformers does."""

    def __init__(self, shape, eps: float, *, dtype, rngs: nnx.Rngs, axes=("norm",), offset: float = 0.0,
                 upcast_scale: bool = False):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps, self.offset, self.upcast = eps, offset, upcast_scale or bool(offset)
        self.dims = tuple(range(-len(shape), 0))
        self.weight = param(rngs, shape, tuple(axes), dtype, "zeros" if offset else "ones")

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=self.dims, keepdims=True) + self.eps)
        if self.upcast:
            return (x * (self.offset + self.weight[...].astype(jnp.float32))).astype(dtype)
        return self.weight[...] * x.astype(dtype)


class LayerNorm(nnx.Module):
    """(x - mean) / std * w + b over the last dim, in float32, cast back at the end."""

    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = param(rngs, (dim,), ("norm",), dtype, "ones")
        self.bias = param(rngs, (dim,), ("norm",), dtype, "zeros")

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (x * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


class Embed(nnx.Module):
    def __init__(self, vocab: int, dim: int, *, dtype, rngs: nnx.Rngs, scale: float = 1.0):
        self.scale = scale  # Gemma multiplies by sqrt(hidden), rounded to the weights' dtype
        self.embedding = param(rngs, (vocab, dim), ("vocab_in", "embed"), dtype)

    def __call__(self, tokens):
        x = jnp.take(self.embedding[...], tokens, axis=0, mode="clip")  # ids are checked before; padding may run past
        return x * jnp.asarray(self.scale, x.dtype) if self.scale != 1.0 else x

    def attend(self, x):
        """Tied output head: logits = x . embedding^T."""
        return jnp.einsum("bte,ve->btv", x, self.embedding[...])


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"config.json hidden_act '{name}' is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nnx.Module):
    """down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.act = activation(cfg.hidden_act)
        self.gate_proj = Dense((e,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.up_proj = Dense((e,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((f,), (e,), ("mlp", "embed"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MoE(nnx.Module):
    """Mixture of experts: a router picks `experts_per_token` of `num_experts` gated MLPs per token.

    Dispatch: the (token, expert) assignments are sorted by expert and each expert multiplies only
    its own group (`jax.lax.ragged_dot`), so the work is tokens x k expert MLPs, not tokens x all.
    Expert kernels carry the logical "expert" axis: [X, E, F] gate/up, [X, F, E] down.
    """

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, f, x = cfg.hidden_size, cfg.moe_intermediate_size or cfg.intermediate_size, cfg.num_experts
        self.k, self.num_experts, self.norm_topk = cfg.experts_per_token, x, cfg.norm_topk_prob
        self.act = activation(cfg.hidden_act)
        self.gate = Dense((e,), (x,), ("embed", "expert"), bias=False, dtype=dtype, rngs=rngs)  # the router
        self.gate_proj = param(rngs, (x, e, f), ("expert", "embed", "mlp"), dtype)
        self.up_proj = param(rngs, (x, e, f), ("expert", "embed", "mlp"), dtype)
        self.down_proj = param(rngs, (x, f, e), ("expert", "mlp", "embed"), dtype)

    def route(self, x):
        """x [N, E] -> (weights [N, k] float32, expert ids [N, k]): softmax in float32, top k,
        renormalised when norm_topk_prob, as transformers routes."""
        probs = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)
        weights, experts = jax.lax.top_k(probs, self.k)
        if self.norm_topk:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return weights, experts

    def __call__(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = self.route(x)
        flat = experts.reshape(-1)  # [N * k] assignments, token-major
        order = jnp.argsort(flat, stable=True)
        token = order // self.k  # the token of each assignment, in expert order
        groups = jnp.bincount(flat, length=self.num_experts).astype(jnp.int32)
        xs = jnp.take(x, token, axis=0)  # [N * k, E]
        h = self.act(jax.lax.ragged_dot(xs, self.gate_proj[...], groups)) * jax.lax.ragged_dot(xs, self.up_proj[...], groups)
        y = jax.lax.ragged_dot(h, self.down_proj[...], groups)  # [N * k, E]
        y = y.astype(jnp.float32) * jnp.take(weights.reshape(-1), order)[:, None]
        out = jnp.zeros(x.shape, jnp.float32).at[token].add(y)
        return out.astype(x.dtype).reshape(shape)


def make_mlp(cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
    """The feed-forward block of one decoder layer: routed experts, or a dense gated MLP."""
    if cfg.layer_is_moe(layer):
        return MoE(cfg, dtype=dtype, rngs=rngs)
    return GatedMLP(cfg, dtype=dtype, rngs=rngs)


class MLP(nnx.Module):
    """Ungated: down(act(up(x))), with biases (GPT-NeoX, GPT-2)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.act = activation(cfg.hidden_act)
        self.up_proj = Dense((e,), (f,), ("embed", "mlp"), bias=True, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((f,), (e,), ("mlp", "embed"), bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.down_proj(self.act(self.up_proj(x)))
