"""Building blocks shared by every architecture family: dense layers with logical axes, norms,
rotary embeddings of every scaling kind, grouped-query attention over a static KV cache, gated MLP.

Shapes: B batch, T query tokens, S key positions (cache length), E embed, H query heads,
K kv heads, G = H // K query heads per kv head, D head_dim, F mlp hidden, V vocab.

Every parameter is an `nnx.Param` carrying `axes`, a tuple of logical axis names (one per dim);
`jaxllm.sharding` maps those names to mesh axes. Model code never mentions a mesh.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.config import ModelConfig, RopeConfig


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
        self.embedding = param(rngs, (vocab, dim), ("vocab", "embed"), dtype)

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
    from jaxllm.errors import ConfigError

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


# ----------------------------------------------------------------------------------------------
# Rotary embeddings


def rope_inv_freq(rope: RopeConfig, rotary_dim: int, max_positions: int, seq_len=None):
    """Inverse frequencies [rotary_dim // 2] and the attention scaling, as transformers computes them.

    `seq_len` matters only for "dynamic" (NTK) scaling, whose base grows with the longest position
    seen; it may be a traced value, so that branch is written in jnp.
    """
    exponents = np.arange(0, rotary_dim, 2, dtype=np.int64).astype(np.float32) / rotary_dim
    base = rope.theta
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
    raise ValueError(rope.type)


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
    if rope.type in ("dynamic", "longrope"):
        seq_len = jnp.max(positions, axis=-1, keepdims=True) + 1 if lengths is None else jnp.reshape(lengths, (-1, 1))
    inv, scale = rope_inv_freq(rope, cfg.rotary_dim, cfg.max_position_embeddings, seq_len)
    inv = jnp.asarray(inv, jnp.float32)
    if inv.ndim == 1:
        inv = inv[None, None, :]
    else:  # length-dependent: [B, 1, dim/2]
        inv = inv.reshape(-1, 1, inv.shape[-1])
    freqs = positions[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return Rotary((jnp.cos(emb) * scale).astype(dtype), (jnp.sin(emb) * scale).astype(dtype))


def apply_rotary(x, rot: Rotary):
    """x: [B, T, N, D]; rotates the first rotary_dim dims in transformers' rotate-half layout."""
    r = rot.cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    cos, sin = rot.cos[:, :, None, :], rot.sin[:, :, None, :]
    half = r // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = x_rot * cos + rotated * sin
    return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out


# ----------------------------------------------------------------------------------------------
# Attention over a static KV cache


class LayerCache(NamedTuple):
    """One layer's keys and values: [B, S, K, D] each."""

    k: jax.Array
    v: jax.Array


def write_cache(cache: LayerCache, k, v, positions) -> LayerCache:
    """Write k, v [B, T, K, D] into the cache rows at positions [B, T] (one scatter, in place when
    the cache is donated)."""
    rows = jnp.arange(k.shape[0])[:, None]
    return LayerCache(cache.k.at[rows, positions].set(k.astype(cache.k.dtype)),
                      cache.v.at[rows, positions].set(v.astype(cache.v.dtype)))


def attention_mask(q_pos, k_pos, window: int | None):
    """[B, T, S] True where query at q_pos [B, T] may see key at k_pos [B, S]: causal, and within the
    sliding window when one is set (kv > q - window, as transformers)."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    mask = k <= q
    if window is not None:
        mask &= k > q - window
    return mask


def attention_probs(q, k, mask, scale: float, softcap: float | None = None):
    """Softmax weights of grouped-query attention, float32. q [B, T, H, D]; k [B, S, K, D];
    mask [B, T, S] -> [B, K, H // K, T, S] (query head h is kv group h // (H // K), member h % (H // K))."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def attend(q, k, v, mask, scale: float, softcap: float | None = None):
    """Grouped-query attention. q [B, T, H, D]; k, v [B, S, K, D]; mask [B, T, S] -> [B, T, H, D]."""
    if q.shape[:2] == (1, 1):
        return _attend_one(q, k, v, mask, scale, softcap)
    probs = attention_probs(q, k, mask, scale, softcap).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(q.shape)


def _attend_one(q, k, v, mask, scale: float, softcap: float | None):
    """One query of one row (batch-1 decode) as multiply-and-sum, which XLA fuses into reduction
    kernels over the cache instead of small batched matmuls; scores and sums in float32. A/B on an
    H100, Qwen3-0.6B shape: batch 1 +3-5% (614-621 -> 637-648 tokens/s); at batch 64 the same
    form was 12% slower than the matmuls, hence batch 1 only (docs/benchmarks.md)."""
    b, _, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, 1, kv, h // kv, d).astype(jnp.float32)
    scores = jnp.sum(q * k[:, :, :, None, :].astype(jnp.float32), axis=-1) * scale  # [B, S, K, G]
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, 0, :, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=1).astype(v.dtype).astype(jnp.float32)
    out = jnp.sum(probs[..., None] * v[:, :, :, None, :].astype(jnp.float32), axis=1)  # [B, K, G, D]
    return out.astype(v.dtype).reshape(b, 1, h, d)


def decode_attention(q, k, v, lengths, scale: float, implementation: str | None = None):
    """One query per row over a cache whose first lengths[b] keys are valid (decode: position + 1).
    q [B, 1, H, D]; k, v [B, S, K, D] -> [B, 1, H, D]. `jax.nn.dot_product_attention`, which on
    GPUs runs as one cuDNN kernel per layer ("cudnn"): on an H100 that read the batch-64 cache in
    ~0.6x the time of our score/softmax/sum kernels and took Qwen3-0.6B's batch-64 decode from
    11,300-11,500 to 15,100-15,200 tokens/s (docs/benchmarks.md)."""
    return jax.nn.dot_product_attention(q, k, v, scale=scale, key_value_seq_lengths=lengths,
                                        implementation=implementation)


def fused_decode_attention(q, window, softcap) -> bool:
    """Whether a decode step may use the cuDNN kernel: on an NVIDIA GPU, in 16-bit floats, a head
    size cuDNN takes, and no sliding window or soft-capping (which that call does not express)."""
    return (_on_cuda() and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128
            and q.shape[-1] % 8 == 0 and window is None and softcap is None)


def _on_cuda() -> bool:
    if jax.default_backend() != "gpu":
        return False
    version = getattr(getattr(jax.devices()[0], "client", None), "platform_version", "")
    return "rocm" not in str(version).lower()  # ROCm GPUs also report "gpu" but have no cuDNN


class Attention(nnx.Module):
    """Multi-head attention with grouped kv heads, rotary positions, optional q/k RMSNorm and bias.

    Called with `cache=None` it attends over its own keys (scoring a full sequence, or a prefill
    whose keys are then inserted into a cache); with a LayerCache it first writes its keys at
    `positions` and then attends over the whole cache (on GPUs a decode step does that in one
    cuDNN kernel, `decode_attention`).
    """

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.window = cfg.layer_window(layer)
        self.scale = cfg.attn_scale or d**-0.5
        self.softcap = cfg.attn_softcap
        self.q_proj = Dense((e,), (h, d), ("embed", "q_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense((e,), (k, d), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Dense((e,), (k, d), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Dense((h, d), (e,), ("q_heads", "head_dim", "embed"), bias=cfg.o_bias, dtype=dtype, rngs=rngs)
        if cfg.qk_norm:  # per head (Qwen3), or over the whole projection (OLMo 2)
            norm = dict(dtype=dtype, rngs=rngs, offset=cfg.norm_offset, upcast_scale=cfg.norm_upcast_scale)
            whole = cfg.qk_norm == "projection"
            self.q_norm = RMSNorm((h, d) if whole else d, cfg.rms_norm_eps,
                                  axes=("q_heads", "head_dim") if whole else ("head_dim",), **norm)
            self.k_norm = RMSNorm((k, d) if whole else d, cfg.rms_norm_eps,
                                  axes=("kv_heads", "head_dim") if whole else ("head_dim",), **norm)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, positions, rot: Rotary | None, cache: LayerCache | None, kv_len: int | None = None):
        """`kv_len` (static) bounds the cache positions attention reads: the engine passes a bucket
        above the longest filled position, so decode reads the filled part, not the whole cache.
        `rot` None: no rotary positions (models with learned position embeddings)."""
        q, k, v = self.project(x, rot)
        if cache is None:
            new = LayerCache(k, v)
            k_pos = positions
            keys, values = k, v
        else:
            new = write_cache(cache, k, v, positions)
            s = new.k.shape[1] if kv_len is None else min(kv_len, new.k.shape[1])
            keys, values = new.k[:, :s], new.v[:, :s]
            k_pos = jnp.broadcast_to(jnp.arange(s), (x.shape[0], s))
        keys, values = keys.astype(q.dtype), values.astype(q.dtype)
        if cache is not None and x.shape[1] == 1 and fused_decode_attention(q, self.window, self.softcap):
            out = decode_attention(q, keys, values, positions[:, 0] + 1, self.scale, "cudnn")
        else:
            out = attend(q, keys, values, attention_mask(positions, k_pos, self.window), self.scale, self.softcap)
        return self.o_proj(out), new

    def project(self, x, rot: Rotary | None):
        """Queries, keys and values of x [B, T, E]: projected, q/k-normed and rotated."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rot is not None:
            q, k = apply_rotary(q, rot), apply_rotary(k, rot)
        return q, k, v

    def weights(self, x, positions, rot: Rotary | None):
        """The attention weights of a full sequence x [B, T, E] (no cache): float32 [B, H, T, T]."""
        q, k, _ = self.project(x, rot)
        probs = attention_probs(q, k.astype(q.dtype), attention_mask(positions, positions, self.window), self.scale, self.softcap)
        b, kv, g, t, s = probs.shape
        return probs.reshape(b, kv * g, t, s)
