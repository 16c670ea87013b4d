"""Building blocks shared by every architecture family: dense layers with logical axes, norms,
embeddings, activations, gated and plain MLPs. Routed experts (and the choice of a layer's
feed-forward block) are in experts.py, rotary positions in rope.py, attention and its KV backends in
attention.py.

Shapes: B batch, T tokens, E embed, H query heads, K kv heads, D head_dim, F mlp hidden, V vocab,
X experts.

Every parameter is an `nnx.Param` carrying `axes`, a tuple of logical axis names (one per dim);
`jaxllm.sharding` maps those names to mesh axes. Model code never builds or inspects a mesh (the
one experts run over is handed to them by the loader: experts.split_experts).

Build time is linear in the layers and mostly flax's per-attribute bookkeeping, so the modules
here are plain graph nodes (`pytree=False`, used only through nnx.split / nnx.merge): that skips
flax's pytree checks on every attribute, about half of what a layer costs to build.
"""

from __future__ import annotations

import functools
import math
import statistics

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models import quant
from jaxllm.models.config import ModelConfig


def param(shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    """A parameter with its logical axis names, declared by shape and dtype only: modules are built
    abstractly (loader.abstract_model) and filled from a checkpoint or random_model. No placeholder
    values are traced: drawing them from `rngs` made every draw scan the whole trace so far (flax
    asks a tracer for its sharding), so build time grew with the square of the layers (400: 225 s)."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(jax.ShapeDtypeStruct(tuple(shape), dtype), axes=axes)


def quantized(value: nnx.Param, n_in: int, scheme, where: str) -> tuple:
    """(integers, scale, offset or None): the parameters that replace a float one [out..., in...]
    (its last `n_in` dims the inputs) under `scheme`: the same shape and axes, the scale and offset
    [out..., G] in the float's dtype unless the scheme names one, their group dim on its own axis."""
    shape, axes, dtype = value.get_value().shape, value.axes, value.get_value().dtype
    n_out = len(shape) - n_in
    groups = scheme.groups(math.prod(shape[n_out:]), where)
    scale_shape, scale_axes = shape[:n_out] + (groups,), axes[:n_out] + (quant.group_axis(axes, n_out, groups),)
    offset = param(scale_shape, scale_axes, scheme.offset_dtype or dtype) if scheme.offset else None
    return param(shape, axes, scheme.kernel_dtype), param(scale_shape, scale_axes, scheme.scale_dtype or dtype), offset


class Dense(nnx.Module, pytree=False):
    """y = x . kernel (+ bias), contracting x's last `len(in_shape)` dims.

    `axes` names the dims in (in, out) order; the kernel is stored out_shape + in_shape, e.g.
    q_proj [H, D, E] ("q_heads", "head_dim", "embed"), o_proj [E, H, D]: HF's [out, in] order.
    Decode multiplies one row by each kernel, and XLA's GPU kernel for that product reduces over
    the minor dim several times faster than over the major one (H100: a 1024 x 3072 product 8.6
    vs 13.0 us, 3072 x 1024 6.8 vs 48.5 us; benchmarks/matvec_probe.py, docs/benchmarks.md).

    Quantized (`quantize`, called by quant.apply when the model is built with a quantize setting):
    the kernel holds integers of the same shape and axes, `scale` (and `offset`) [out..., G] one
    value per group of input values; `__call__` takes quant.product's form for its rows (decode on
    a GPU: no float kernel built), else dequantizes (convert, scale, reshape) right before the
    same product. `quantizable` False keeps a layer float (MoE routers); `table` marks the output
    head, quantized only when the load asks for quantized tables (quant.apply).
    """

    def __init__(self, in_shape, out_shape, axes, *, bias: bool, dtype, rngs: nnx.Rngs, quantizable: bool = True,
                 table: bool = False):
        self.n_in = len(in_shape)
        self.quantizable, self.table = quantizable, table
        axes = tuple(axes[self.n_in :]) + tuple(axes[: self.n_in])
        self.kernel = param(tuple(out_shape) + tuple(in_shape), axes, dtype)
        self.bias = param(tuple(out_shape), axes[: len(out_shape)], dtype) if bias else None
        self.scale = self.offset = None

    def quantize(self, path: tuple, scheme_for) -> None:
        """Declare the kernel quantized by scheme_for(path of the kernel) (None: stay float)."""
        scheme = scheme_for(path + ("kernel",))
        if scheme is None:
            return
        self.kernel, self.scale, self.offset = quantized(self.kernel, self.n_in, scheme, ".".join(map(str, path)))

    def weight(self, dtype):
        """The kernel as floats of `dtype` (dequantized when quantized)."""
        kernel = self.kernel[...]
        if self.scale is None:
            return kernel
        return quant.dequantize(kernel, self.scale[...], None if self.offset is None else self.offset[...], dtype)

    def __call__(self, x):
        if self.scale is not None:
            y = quant.product(x, self.kernel[...], self.scale[...], None if self.offset is None else self.offset[...], self.n_in)
            if y is not None:
                return y if self.bias is None else y + self.bias[...]
        kernel = self.weight(x.dtype)
        n_out = kernel.ndim - self.n_in
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(n_out, kernel.ndim)))
        y = jnp.tensordot(x, kernel, axes=contract)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class Adapted(nnx.Module, pytree=False):
    """base(x) + up(down(x)): a projection `base` (a Dense several modules share: Zamba2's shared block, invoked by
    several layers) plus one invocation's low-rank adapter of `rank`, its axes the projection's with the rank between
    ("latent", whole on each device); kept float. `down`: another Adapted's, where one down projection feeds several
    (Zamba2's gate/up adapter, one fused tensor in transformers)."""

    def __init__(self, base: Dense, rank: int, *, dtype, rngs: nnx.Rngs, down: Dense | None = None):
        shape, axes, n_in = base.kernel.get_value().shape, base.kernel.axes, base.n_in
        small = dict(bias=False, dtype=dtype, rngs=rngs, quantizable=False)
        self.base = base
        self.down = down or Dense(shape[-n_in:], (rank,), axes[-n_in:] + ("latent",), **small)
        self.up = Dense((rank,), shape[:-n_in], ("latent",) + axes[:-n_in], **small)

    def __call__(self, x):
        return self.base(x) + self.up(self.down(x))


class RMSNorm(nnx.Module, pytree=False):
    """x / rms(x) * w over the last dims (`shape`), in float32. Llama casts back before the scale;
    `upcast_scale` applies the scale in float32, then casts (OLMo 2), and `offset` scales by
    (offset + w) that way (Gemma's 1 + w), each as transformers does. `scale` False: no weight, x / rms(x)
    cast back (Gemma 4's v_norm and router norm). `bias`: a bias added after the scale, in x's dtype (xLSTM's use_bias).
    `unit`: x / sqrt(sum(x^2) + eps), onto the unit sphere rather than to an RMS of 1 (nGPT's norms: Dory)."""

    def __init__(self, shape, eps: float, *, dtype, rngs: nnx.Rngs, axes=("norm",), offset: float = 0.0,
                 upcast_scale: bool = False, weight: bool = True, bias: bool = False, unit: bool = False):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps, self.offset, self.upcast, self.reduce = eps, offset, upcast_scale or bool(offset), jnp.sum if unit else jnp.mean
        self.dims = tuple(range(-len(shape), 0))
        self.weight = param(shape, tuple(axes), dtype) if weight else None  # None: no scale (Llama 4's L2 norm, Gemma 4's v_norm)
        self.bias = param(shape, tuple(axes), dtype) if bias else None

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(self.reduce(x * x, axis=self.dims, keepdims=True) + self.eps)
        if self.weight is None:
            return x.astype(dtype)
        if self.upcast:
            return (x * (self.offset + self.weight[...].astype(jnp.float32))).astype(dtype)
        x = self.weight[...] * x.astype(dtype)
        return x if self.bias is None else x + self.bias[...]


class LayerNorm(nnx.Module, pytree=False):
    """(x - mean) / std * w + b over the last dim, in float32, cast back at the end. `axes`: the
    logical axes of w and b (("head_dim",) for a norm of each attention head, Phi's q/k norms);
    `shape` may be several dims (Cohere's q/k norms: a weight per head [heads, head_dim]), still
    normalizing over the last; `bias` False: no b (Cohere); `weight` False: no w either (OLMo's
    non-parametric norms); `offset` scales by (offset + w) (Nemotron's layernorm1p: 1 + w)."""

    def __init__(self, shape, eps: float, *, dtype, rngs: nnx.Rngs, axes=("norm",), bias: bool = True, weight: bool = True,
                 offset: float = 0.0):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps, self.offset = eps, offset
        self.weight = param(shape, tuple(axes), dtype) if weight else None
        self.bias = param(shape, tuple(axes), dtype) if bias else None

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            x = x * (self.offset + self.weight[...].astype(jnp.float32))
        return (x if self.bias is None else x + self.bias[...].astype(jnp.float32)).astype(dtype)


class Embed(nnx.Module, pytree=False):
    """A lookup table [vocab, dim]; the token embedding's is also the tied output head (`attend`).
    Rows are multiplied by `scale`: Gemma's sqrt(hidden) rounded to the weights' dtype first (a
    tensor of that dtype in transformers); `exact_scale` multiplies by the scale itself in float32,
    then casts (Granite's embedding_multiplier, a Python float in transformers).
    `quantizable` (the token embedding, not learned positions) and `table`: quant.apply quantizes
    it only when the load asks for quantized tables (quantize_embeddings), in groups along dim:
    a lookup dequantizes just the rows it takes, `attend` is a quantized product."""

    def __init__(self, vocab: int, dim: int, *, dtype, rngs: nnx.Rngs, scale: float = 1.0, exact_scale: bool = False,
                 quantizable: bool = False):
        self.scale, self.exact = scale, exact_scale
        self.dtype, self.quantizable, self.table = dtype, quantizable, True
        self.embedding = param((vocab, dim), ("vocab_in", "embed"), dtype)
        self.embedding_scale = self.embedding_offset = None

    def quantize(self, path: tuple, scheme_for) -> None:
        """Declare the table quantized by scheme_for(its path) (None: stay float)."""
        scheme = scheme_for(path + ("embedding",))
        if scheme is None:
            return
        where = ".".join(map(str, path + ("embedding",)))
        self.embedding, self.embedding_scale, self.embedding_offset = quantized(self.embedding, 1, scheme, where)

    def _parts(self):
        scale, offset = self.embedding_scale, self.embedding_offset
        return self.embedding[...], None if scale is None else scale[...], None if offset is None else offset[...]

    def __call__(self, tokens):
        table, scale, offset = self._parts()
        x = jnp.take(table, tokens, axis=0, mode="clip")  # ids are checked before; padding may run past
        if scale is not None:  # only the rows taken are dequantized
            take = functools.partial(jnp.take, indices=tokens, axis=0, mode="clip")
            x = quant.dequantize(x, take(scale), None if offset is None else take(offset), self.dtype)
        if self.scale == 1.0:
            return x
        if self.exact:
            return (x.astype(jnp.float32) * self.scale).astype(x.dtype)
        return x * jnp.asarray(self.scale, x.dtype)

    def attend(self, x):
        """Tied output head: logits = x . embedding^T."""
        table, scale, offset = self._parts()
        if scale is not None:
            y = quant.product(x, table, scale, offset, 1)
            if y is not None:
                return y
            table = quant.dequantize(table, scale, offset, x.dtype)
        return jnp.einsum("bte,ve->btv", x, table)


class SinusoidalPositions(nnx.Module, pytree=False):
    """Fixed position embeddings, no parameters (XGLM's, fairseq's): row p is sin(p f) | cos(p f) over
    the dim // 2 frequencies f_i = exp(-i log(10000) / (dim // 2 - 1)), a zero column after them where
    dim is odd, and the row `padding_idx` all zeros; computed in float32 for the rows asked for (any
    position: transformers grows its table as a sequence needs), cast to `dtype`. `vaswani`: the original
    Transformer's frequencies instead (CTRL's positional_encoding): column i's rate 1 / 10000^(2 (i // 2) / dim),
    the even columns' sines, then the odd columns' cosines."""

    def __init__(self, dim: int, padding_idx: int | None, dtype, vaswani: bool = False):
        self.dim, self.padding_idx, self.dtype, self.vaswani = dim, padding_idx, dtype, vaswani

    def __call__(self, rows):
        if self.vaswani:
            steps = (2 * (jnp.arange(self.dim) // 2)).astype(jnp.float32) / self.dim
            angles = rows.astype(jnp.float32)[..., None] * (1.0 / jnp.power(jnp.float32(10000.0), steps))
            return jnp.concatenate([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1).astype(self.dtype)
        half = self.dim // 2
        freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - 1)))
        angles = rows.astype(jnp.float32)[..., None] * freqs
        out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)] + [jnp.zeros_like(angles[..., :1])] * (self.dim % 2), axis=-1)
        if self.padding_idx is not None:
            out = jnp.where((rows == self.padding_idx)[..., None], 0.0, out)
        return out.astype(self.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),  # squared ReLU (Arcee, Nemotron)
}


def rounded_to(x, dtype):
    """x (float32) rounded to `dtype`'s precision (a float type: bfloat16, float16, float32) and kept in float32, as a
    cast to `dtype` and back rounds it: transformers' intermediate roundings in a lower precision. By
    lax.reduce_precision, not the cast pair: XLA on GPUs drops such a pair (its excess precision)."""
    info = jnp.finfo(dtype)
    if info.bits >= 32:
        return x
    y = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    if info.nexp >= 8:  # bfloat16: float32's exponent range, no subnormal of its own
        return y
    # reduce_precision flushes the narrower type's subnormals (float16's below 2**-14); a cast rounds them to steps of
    # its smallest subnormal (a power of two: exact in float32)
    step = float(info.smallest_subnormal)
    return jnp.where(jnp.abs(x) < float(info.smallest_normal), jnp.round(x / step) * step, y)


def clamped_swiglu(gate, up, alpha: float, limit: float, shift: float = 1.0):
    """gpt-oss's expert activation: gate clamped above at `limit`, up to [-limit, limit], then
    (up + shift) * gate * sigmoid(alpha * gate) (gpt-oss's shift 1; HY V4's 0 and alpha 1: silu(gate) * up)."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return (up + shift if shift else up) * (gate * jax.nn.sigmoid(gate * alpha))


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"config.json hidden_act '{name}' is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class GatedMLP(nnx.Module, pytree=False):
    """down(act(gate(x)) * up(x)); with cfg.mlp_scales (g, d) (Falcon-H1's mlp_multipliers) down(act(g gate(x)) * up(x)) d;
    down(norm(act(gate(x)) * up(x))) where cfg.sub_norms (BitNet's ffn_sub_norm). `sparsity` s > 0: the gate's values
    below mean + std x Phi^-1(s) over its width zeroed and the rest lowered by that cutoff before the activation
    (Gemma 3n's gaussian top-k, keeping about a fraction 1 - s)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, sparsity: float = 0.0):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.act, self.scales = activation(cfg.hidden_act), cfg.mlp_scales
        # the clamped SwiGLU in place of act(gate) * up where the model says (cfg.mlp_swiglu: MiniMax-M3's dense and shared MLPs)
        self.swiglu = (cfg.swiglu_alpha, cfg.swiglu_limit, cfg.swiglu_shift) if cfg.mlp_swiglu else None
        # the normal distribution's quantile at s, as transformers computes it in float32 (inf at s = 1: every gate
        # zeroed; 0 at s = 0.5, the cutoff the mean); None: no sparsity
        self.std_multiplier = None if not sparsity else math.inf if sparsity == 1 else statistics.NormalDist().inv_cdf(sparsity)
        self.gate_proj = Dense((e,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.up_proj = Dense((e,), (f,), ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((f,), (e,), ("mlp", "embed"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.ffn_sub_norm = RMSNorm(f, cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("mlp",)) if cfg.sub_norms else None

    def __call__(self, x):
        gate, down = self.scales
        g = self.gate_proj(x)
        if self.std_multiplier is not None:
            g = gaussian_topk(g, self.std_multiplier)
        g = g if gate == 1 else g * gate
        h = self.act(g) * self.up_proj(x) if self.swiglu is None else clamped_swiglu(g, self.up_proj(x), *self.swiglu)
        out = self.down_proj(h if self.ffn_sub_norm is None else self.ffn_sub_norm(h))
        return out if down == 1 else out * down


def gaussian_topk(x, std_multiplier: float):
    """relu(x - (mean + std x std_multiplier)) over x's last dim (population std), in x's dtype."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True))
    return jax.nn.relu(x - (mean + std * jnp.asarray(std_multiplier, x.dtype)))


class XIELU(nnx.Module, pytree=False):
    """xIELU, an activation with parameters of its own in each layer (Apertus): beta x, plus
    softplus(alpha_p) x^2 where x > 0, else (expm1(min(x, eps)) - x) (beta + softplus(alpha_n)).
    alpha_p, alpha_n [1] and the scalars beta, eps come from the checkpoint; computed in the
    dtype of x and the parameters (the model's), as transformers' Python form."""

    def __init__(self, *, dtype):
        self.alpha_p = param((1,), ("norm",), dtype)
        self.alpha_n = param((1,), ("norm",), dtype)
        self.beta = param((), (), dtype)
        self.eps = param((), (), dtype)

    def __call__(self, x):
        beta = self.beta[...]
        alpha_p, alpha_n = jax.nn.softplus(self.alpha_p[...]), beta + jax.nn.softplus(self.alpha_n[...])
        return jnp.where(x > 0, alpha_p * x * x + beta * x, (jnp.expm1(jnp.minimum(x, self.eps[...])) - x) * alpha_n + beta * x)


class MLP(nnx.Module, pytree=False):
    """Ungated: down(act(up(x))), with biases (GPT-NeoX, GPT-2) or as `bias` says (Arcee's mlp_bias).
    hidden_act "xielu": the activation is `act_fn`, an XIELU of the layer's own parameters."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs, bias: bool = True):
        e, f = cfg.hidden_size, cfg.intermediate_size
        self.act_fn = XIELU(dtype=dtype) if cfg.hidden_act == "xielu" else None
        self.act = activation(cfg.hidden_act) if self.act_fn is None else None
        self.up_proj = Dense((e,), (f,), ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
        self.down_proj = Dense((f,), (e,), ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.up_proj(x)
        return self.down_proj(self.act(h) if self.act_fn is None else self.act_fn(h))
