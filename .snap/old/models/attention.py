"""Attention: the module every architecture uses, and the KV backends that keep its keys and values.

`Attention` projects q, k, v (q/k-normed and rotated where the model says) and hands them to a KV
backend, which stores them and attends. The caller picks the backend; nothing here probes the
platform:
  Uncached()             keys are the sequence's own: scoring a full sequence, a prefill whose keys
                         the engine then places, the research functions
  SlotCache(kv_len, impl) a contiguous cache [B, S, K, D] per layer; `impl` "cudnn" runs a decode
                         step as one cuDNN kernel (jaxllm.runtime decides)
  PagedCache(...)        one pool of fixed-size pages per layer and a page table per row (the
                         engine's cache): memory-linear prefill chunks, paged decode

Shapes: B batch, T query tokens, S key positions, H query heads, K kv heads, G = H // K, D head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models import attention_ops
from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import Dense, RMSNorm
from jaxllm.models.rope import Rotary, apply_rotary


class LayerCache(NamedTuple):
    """One layer's keys and values: [B, S, K, D] each."""

    k: jax.Array
    v: jax.Array


class AttnSpec(NamedTuple):
    """What one layer's attention computes beyond softmax(q k^T) v: the score scale, a sliding
    window (None: full causal) and tanh soft-capping of the scores (None: off)."""

    scale: float
    window: int | None = None
    softcap: float | None = None


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
    mask [B, T, S] -> [B, K, G, T, S] (query head h is kv group h // G, member h % G)."""
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


def cudnn_decode_fits(q, spec: AttnSpec) -> bool:
    """Whether the cuDNN decode kernel computes this layer's attention: 16-bit floats, a head size
    cuDNN takes, and no sliding window or soft-capping (which that call does not express)."""
    d = q.shape[-1]
    return (q.dtype in (jnp.bfloat16, jnp.float16) and d <= 128 and d % 8 == 0
            and spec.window is None and spec.softcap is None)


# ----------------------------------------------------------------------------------------------
# KV backends: (q, k, v, layer cache, positions, spec) -> (attention output, the layer's new cache)


@dataclass(frozen=True)
class Uncached:
    """Attend over the call's own keys (positions say where each is); the keys and values come back
    as the layer's cache, for a caller that places them."""

    def __call__(self, q, k, v, cache, positions, spec: AttnSpec):
        out = attend(q, k, v, attention_mask(positions, positions, spec.window), spec.scale, spec.softcap)
        return out, LayerCache(k, v)


@dataclass(frozen=True)
class SlotCache:
    """A contiguous cache [B, S, K, D] per layer: keys are written at `positions`, then attention
    reads cache positions < kv_len (static; None: all), so decode reads the filled part only.
    impl "cudnn": a one-query step whose layer fits runs as one cuDNN kernel (`decode_attention`)."""

    kv_len: int | None = None
    impl: str = "xla"

    def __call__(self, q, k, v, cache: LayerCache, positions, spec: AttnSpec):
        new = write_cache(cache, k, v, positions)
        s = new.k.shape[1] if self.kv_len is None else min(self.kv_len, new.k.shape[1])
        keys, values = new.k[:, :s].astype(q.dtype), new.v[:, :s].astype(q.dtype)
        if self.impl == "cudnn" and q.shape[1] == 1 and cudnn_decode_fits(q, spec):
            return decode_attention(q, keys, values, positions[:, 0] + 1, spec.scale, "cudnn"), new
        k_pos = jnp.broadcast_to(jnp.arange(s), (q.shape[0], s))
        return attend(q, keys, values, attention_mask(positions, k_pos, spec.window), spec.scale, spec.softcap), new


@dataclass(frozen=True)
class PagedCache:
    """A pool of pages per layer, k and v [N + 1, ps, K, D]; the last page takes the writes of
    padding tokens and inactive rows, so they never touch a page a sequence owns. Row b's key at
    position s lives at page_table[b, s // ps], offset s % ps. Built inside a jitted step:
    page_table [B, P] int32, valid [B, T] bool (which of the call's tokens are real).

    One query per row (decode): attention over the row's first position + 1 keys straight from the
    pages (`paged_decode_attention`: cuDNN's paged kernel with impl "cudnn", else gather + mask).
    Several (a prefill chunk at positions start..start+T-1): the row's keys gathered up to
    `num_keys` (static), then `flash_prefill`: cuDNN flash attention in two parts (prefix, chunk)
    with impl "cudnn", else an online-softmax blocked form; memory linear in the keys either way."""

    page_table: jax.Array
    valid: jax.Array
    num_keys: int
    impl: str = "xla"

    def __call__(self, q, k, v, cache: LayerCache, positions, spec: AttnSpec):
        new = self.write(cache, k, v, positions)
        fast = self.impl == "cudnn" and cudnn_decode_fits(q, spec)
        if q.shape[1] == 1:
            out = attention_ops.paged_decode_attention(
                q, new.k, new.v, self.page_table, positions[:, 0] + 1, scale=spec.scale, window=spec.window,
                softcap=spec.softcap, impl="cudnn_paged" if fast else "xla", num_keys=self.num_keys)
            return out, new
        keys = attention_ops.gather_pages(new.k, self.page_table, self.num_keys).astype(q.dtype)
        values = attention_ops.gather_pages(new.v, self.page_table, self.num_keys).astype(q.dtype)
        start = positions[:, 0]
        kv_len = start + jnp.sum(self.valid, axis=1)
        out = attention_ops.flash_prefill(q, keys, values, start, kv_len, scale=spec.scale, window=spec.window,
                                          softcap=spec.softcap, impl="cudnn" if fast else "blocked",
                                          k_new=k.astype(q.dtype), v_new=v.astype(q.dtype))
        return out, new

    def write(self, cache: LayerCache, k, v, positions) -> LayerCache:
        """k, v [B, T, K, D] into their pages: one scatter per pool, in place when donated."""
        n, ps = cache.k.shape[:2]
        page = jnp.take_along_axis(self.page_table, positions // ps, axis=1, mode="clip")
        page = jnp.where(self.valid, page, n - 1)
        index = (page * ps + positions % ps).reshape(-1)

        def put(pool, x):
            flat = pool.reshape((n * ps,) + pool.shape[2:])
            return flat.at[index].set(x.reshape((-1,) + x.shape[2:]).astype(pool.dtype)).reshape(pool.shape)

        return LayerCache(put(cache.k, k), put(cache.v, v))


UNCACHED = Uncached()


class Attention(nnx.Module):
    """Multi-head attention with grouped kv heads, rotary positions, optional q/k RMSNorm and bias;
    the keys and values go through the KV backend the caller passes."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        scale = (cfg.attn_scale or d**-0.5) / (layer + 1 if cfg.attn_scale_by_layer else 1)
        self.spec = AttnSpec(scale, cfg.layer_window(layer), cfg.attn_softcap)
        self.q_proj = Dense((e,), (h, d), ("embed", "q_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense((e,), (k, d), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Dense((e,), (k, d), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Dense((h, d), (e,), ("q_heads", "head_dim", "embed"), bias=cfg.o_bias, dtype=dtype, rngs=rngs)
        if cfg.qk_norm == "none":
            self.q_norm = self.k_norm = None
        else:  # per head (Qwen3), or over the whole projection (OLMo 2)
            norm = dict(dtype=dtype, rngs=rngs, offset=cfg.norm_offset, upcast_scale=cfg.norm_upcast_scale)
            whole = cfg.qk_norm == "projection"
            self.q_norm = RMSNorm((h, d) if whole else d, cfg.norm_eps,
                                  axes=("q_heads", "head_dim") if whole else ("head_dim",), **norm)
            self.k_norm = RMSNorm((k, d) if whole else d, cfg.norm_eps,
                                  axes=("kv_heads", "head_dim") if whole else ("head_dim",), **norm)

    def __call__(self, x, positions, rot: Rotary | None, cache: LayerCache | None, kv=UNCACHED):
        """x [B, T, E] at positions [B, T] -> (output [B, T, E], this layer's cache from `kv`).
        `rot` None: no rotary positions (models with learned position embeddings)."""
        q, k, v = self.project(x, rot)
        out, new = kv(q, k, v, cache, positions, self.spec)
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
        mask = attention_mask(positions, positions, self.spec.window)
        probs = attention_probs(q, k.astype(q.dtype), mask, self.spec.scale, self.spec.softcap)
        b, kv, g, t, s = probs.shape
        return probs.reshape(b, kv * g, t, s)
