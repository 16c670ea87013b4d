"""Attention: the module every architecture uses, and the KV backends that keep its keys and values.

`Attention` projects q, k, v (q/k-normed and rotated where the model says) and hands them to a KV
backend, which stores them and attends. The caller picks the backend; nothing here probes the
platform:
  Uncached()             keys are the call's own: scoring a full sequence, the research functions
  PagedCache(...)        one pool of fixed-size pages per layer and a page table per row (the
                         engine's cache): memory-linear prefill chunks, paged decode; `impl`
                         "cudnn" runs them as cuDNN kernels (jaxllm.runtime decides); the pool
                         may be 8-bit (kv_dtype "int8" or "fp8": `kv_format`)

Shapes: B batch, T query tokens, S key positions, H query heads, K kv heads, G = H // K, D head_dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import GenerationError
from jaxllm.models import attention_ops, kv_quant, paged_decode, paged_kernel
from jaxllm.models.config import Alibi, ModelConfig, QueryScale
from jaxllm.models.layers import Dense, LayerNorm, RMSNorm, param, rounded_to
from jaxllm.models.rope import Rotary, apply_rotary


class LayerCache(NamedTuple):
    """One layer's keys and values: [B, S, K, D] each (a page pool: [N, ps, K, D]). An int8 cache
    also holds a scale per token and kv head, k_scale and v_scale [B, S, K] (`kv_format`)."""

    k: jax.Array
    v: jax.Array
    k_scale: jax.Array | None = None
    v_scale: jax.Array | None = None


# What kv_dtype= may say: None keeps the model's dtype; "fp8" is float8_e4m3fn; a float dtype
# stores the cache in that dtype.
KV_DTYPES = {None: None, "int8": "int8", "fp8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn",
             "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def check_kv_dtype(kv_dtype, cfg=None) -> str | None:
    """The canonical name of a kv_dtype (a name of KV_DTYPES or a dtype: None, "int8",
    "float8_e4m3fn" or a float's name), or a one-line error; with `cfg`, also for one given to a model
    that caches no keys or values (recurrent layers only: Mamba, RWKV), where it changed nothing."""
    name = kv_dtype
    if kv_dtype is not None and not isinstance(kv_dtype, str):
        try:
            name = jnp.dtype(kv_dtype).name
        except TypeError:
            name = "?"
    if name not in KV_DTYPES:
        raise GenerationError(f"kv_dtype must be one of {', '.join(map(repr, KV_DTYPES))}, got {kv_dtype!r}")
    if cfg is not None and kv_dtype is not None and all(cfg.kv_shape(i) is None for i in range(cfg.num_layers)):
        raise GenerationError(f"kv_dtype={kv_dtype!r} sets the KV cache's dtype, and {cfg.architecture} caches no keys or "
                              "values (it has no attention layers): drop kv_dtype")
    return KV_DTYPES[name]


def kv_format(kv_dtype, dtype) -> tuple[jnp.dtype, jnp.dtype | None]:
    """(values dtype, scales dtype or None) of the KV cache of a `dtype` model. int8 keeps its
    scales in the model's dtype where that has float32's range (bfloat16, float32), else in
    float32 (a float16 scale of a small vector would be subnormal)."""
    kv_dtype, dtype = check_kv_dtype(kv_dtype), jnp.dtype(dtype)
    if kv_dtype is None:
        return dtype, None
    if kv_dtype == "int8":
        return jnp.dtype(jnp.int8), dtype if dtype in (jnp.bfloat16, jnp.float32) else jnp.dtype(jnp.float32)
    return jnp.dtype(kv_dtype), None


def kv_cache_bytes(cfg: ModelConfig, tokens: int, dtype, kv_dtype=None) -> int:
    """Bytes of the keys and values of `tokens` cached positions, every layer (scales included), and of the
    indexer keys cached beside them (`index_cache_bytes`)."""
    values, scales = kv_format(kv_dtype, dtype)
    shapes = [shape for shape in map(cfg.kv_shape, range(cfg.num_layers)) if shape is not None]
    kv = 2 * tokens * sum(k * (d * values.itemsize + (0 if scales is None else scales.itemsize)) for k, d in shapes)
    return kv + index_cache_bytes(cfg, tokens, dtype)


def index_cache_bytes(cfg: ModelConfig, tokens: int, dtype) -> int:
    """Bytes of the indexer keys of `tokens` cached positions, every layer (DeepSeek Sparse Attention: one key
    head per token in the model's dtype whatever kv_dtype says, models/sparse_attention.py); 0 for other models."""
    shapes = [shape for shape in map(cfg.index_shape, range(cfg.num_layers)) if shape is not None]
    return tokens * jnp.dtype(dtype).itemsize * sum(k * d for k, d in shapes)


class AttnSpec(NamedTuple):
    """What one layer's attention computes beyond softmax(q k^T) v: the score scale, a sliding
    window (None: full causal), tanh soft-capping of the scores (None: off) and attention sinks
    (None: none; else float [H], the layer's learned logit per query head that joins the
    softmax's denominator and takes no value: gpt-oss; `Attention` puts its parameter here
    for each call) and ALiBi's position biases (None: none; config.Alibi: BLOOM, MPT, Falcon-RW), and the keys
    a sparse attention layer selected (None: all; else bool [B, T, S] over the key columns the KV backend reads,
    `key_mask`'s: DeepSeek Sparse Attention's top-k, models/sparse_attention.py; the layer puts it here per call), and the
    rounding the keys and values are attended through (None: none; a name of kv_quant.ROUNDINGS: Kolibri 1.1's sparse
    layers attend NVFP4-rounded keys and values, cached as computed)."""

    scale: float
    window: int | None = None
    softcap: float | None = None
    sinks: jax.Array | None = None
    alibi: Alibi | None = None
    keep: jax.Array | None = None
    kv_round: str | None = None


def rounded(spec: AttnSpec, k, v):
    """Keys and values k, v (None: none) as a layer whose spec rounds them (`AttnSpec.kv_round`) attends them."""
    if spec.kv_round is None:
        return k, v
    fn = kv_quant.ROUNDINGS[spec.kv_round]
    return (None if k is None else fn(k)), (None if v is None else fn(v))


def attention_mask(q_pos, k_pos, window: int | None):
    """[B, T, S] True where query at q_pos [B, T] may see key at k_pos [B, S]: causal, and within the
    sliding window when one is set (kv > q - window, as transformers)."""
    q, k = q_pos[:, :, None], k_pos[:, None, :]
    mask = k <= q
    if window is not None:
        mask &= k >= attention_ops.first_visible(q, window)
    return mask


def attention_probs(q, k, mask, scale: float, softcap: float | None = None, sinks=None, bias=None):
    """Softmax weights of grouped-query attention, float32. q [B, T, H, D]; k [B, S, K, D];
    mask [B, T, S] -> [B, K, G, T, S] (query head h is kv group h // G, member h % G).
    `sinks` [H]: each head's sink logit joins the denominator (the weights then sum below 1).
    `bias` float32 [B, H, T, S] (None: none): added to the scores (ALiBi's: `score_bias`)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + attention_ops.grouped(bias, kv)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    return attention_ops.softmax_with_sinks(scores, sinks)


def score_bias(spec: AttnSpec, q_pos, k_pos):
    """The float32 bias [B, H, T, S] a layer adds to its scores for queries at q_pos [B, T] over keys
    at k_pos [B, S]: ALiBi's where the spec has it, else None."""
    return None if spec.alibi is None else attention_ops.alibi_bias(spec.alibi, q_pos, k_pos)


def attend(q, k, v, mask, scale: float, softcap: float | None = None, sinks=None, bias=None):
    """Grouped-query attention. q [B, T, H, D]; k, v [B, S, K, D]; mask [B, T, S] -> [B, T, H, D].
    `bias` [B, H, T, S]: as attention_probs."""
    if q.shape[:2] == (1, 1):
        return _attend_one(q, k, v, mask, scale, softcap, sinks, bias)
    probs = attention_probs(q, k, mask, scale, softcap, sinks, bias).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(q.shape)


def _attend_one(q, k, v, mask, scale: float, softcap: float | None, sinks=None, bias=None):
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
    if bias is not None:  # [B, H, 1, S] -> [B, S, K, G]
        scores = scores + jnp.moveaxis(attention_ops.grouped(bias[:, :, 0], kv), -1, 1)
    scores = jnp.where(mask[:, 0, :, None, None], scores, jnp.finfo(jnp.float32).min)
    if sinks is None:
        probs = jax.nn.softmax(scores, axis=1)
    else:  # the sink as one more key, its weight dropped
        sink = attention_ops.sink_logits(sinks, kv, (b, kv, h // kv))[:, None]
        probs = jax.nn.softmax(jnp.concatenate([scores, sink], axis=1), axis=1)[:, :-1]
    probs = rounded_to(probs, v.dtype)  # transformers' weights in the values' dtype
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
    cuDNN takes, and no sliding window, soft-capping, sinks or ALiBi (which that call does not
    express). The one place a layer's spec sends the paged cache's prefill and decode to the
    blocked and XLA forms, which take every option (the engine's runner sends whole models there:
    `cudnn_serves`)."""
    return _cudnn_takes(q.dtype, q.shape[-1]) and spec.window is None and spec.softcap is None and spec.sinks is None \
        and spec.alibi is None and spec.keep is None and spec.kv_round is None


def _cudnn_takes(dtype, head_dim: int) -> bool:
    return dtype in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0


def cudnn_decodes_whole(cfg: ModelConfig, dtype, kv_dtype: str | None) -> bool:
    """Whether a decode call may hand every layer the whole page table (cudnn_serves models): true when each
    attention layer without a window decodes by cuDNN's paged kernel (cudnn_decode_fits, a pool in the model's
    dtype), which reads only each row's own length, so one program serves every length. Else some layer reads
    by our Pallas kernel or the XLA gather form (an 8-bit pool, a head wider than 128, soft-capping, a float32
    model): the XLA form reads as many keys as it is handed (every position of the table, each step), the kernel
    cuts the table into splits by its width; the engine buckets the keys to the rows' reach instead
    (Runner.decode_keys). Windowed layers read only their window's pages either way
    (paged_decode.window_table)."""
    if kv_format(kv_dtype, dtype)[0] != jnp.dtype(dtype):
        return False
    full = [layer for layer in range(cfg.num_layers)
            if cfg.layer_has_mixer(layer) and not cfg.layer_is_recurrent(layer) and cfg.layer_window(layer) is None]
    return cfg.attn_softcap is None and all(
        _cudnn_takes(jnp.dtype(dtype), cfg.layer_cache_dim(layer)) for layer in full)


def decode_kernel(impl: str, q, pool, spec: AttnSpec) -> str:
    """The paged_decode_attention impl of one decode call: on GPUs (`impl` "cudnn", runtime.attention_impl) cuDNN's
    paged kernel where it fits (cudnn_decode_fits: a pool in q's dtype, no window or soft-capping), else our Pallas
    kernel where it takes the layer (models/paged_kernel.py: 8-bit pools read as stored, windows, soft-capping,
    heads up to 256, pools of fewer than 2**31 elements; no ALiBi), else the XLA gather form. `pool`: the layer's keys
    [N, ps, K, D] (an array or its ShapeDtypeStruct). On an H200 the kernel took Qwen3-0.6B's 64-request decode
    with an int8 pool from 4.2k to 10.9k tokens/s and a Mistral-shaped model's 1,024-key windows from 5.5k to 11.2k
    (docs/benchmarks.md, 2026-12-03)."""
    if impl != "cudnn":
        return "xla"
    if jnp.dtype(pool.dtype) == q.dtype and cudnn_decode_fits(q, spec):
        return "cudnn_paged"
    if spec.alibi is None and paged_kernel.kernel_takes(q.dtype, q.shape[-1], pool):
        return "pallas"
    return "xla"


def cudnn_serves(cfg: ModelConfig) -> bool:
    """Whether cuDNN's kernels can serve a model at all: not with attention sinks (gpt-oss), ALiBi
    (BLOOM, MPT, Falcon-RW) or sparse attention's selected keys (DeepSeek-V3.2), which no cuDNN decode call
    takes; the engine runs such a model by the XLA and blocked forms, whose reads are bucketed to the keys in use."""
    return not cfg.attn_sinks and cfg.alibi is None and cfg.indexer is None


# ----------------------------------------------------------------------------------------------
# KV backends: (q, k, v, layer cache, positions, spec) -> (attention output, the layer's new cache)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["keep"], meta_fields=[])
@dataclass(frozen=True)
class Uncached:
    """Attend over the call's own keys (positions say where each is); the keys and values come back
    as the layer's cache, for a caller that places them. `keep` [B, T] bool (None: every key)
    hides the keys where it is False from every query: a padded batch's padding."""

    keep: jax.Array | None = None

    def mask(self, positions, window):
        """[B, T, T] bool: which of the call's keys each query reads."""
        mask = attention_mask(positions, positions, window)
        return mask if self.keep is None else mask & self.keep[:, None, :]

    key_mask = mask  # the key columns `read` and `index_keys` give are the call's own

    def index_keys(self, pages, k, positions):
        """Sparse attention's indexer keys (models/sparse_attention.py) k [B, T, 1, Di]: those every query of the call
        may read ([B, T, 1, Di]: its own) and the layer's new indexer cache (the same, for a caller that places them)."""
        return k, k

    def write(self, cache, k, v, positions) -> LayerCache:
        """The layer's cache holding the call's keys and values k, v [B, T, K, D] (PagedCache.write's counterpart)."""
        return LayerCache(k, v)

    def keys(self, cache: LayerCache, dtype):
        """The keys of `cache` in `dtype` [B, S, K, D], one per `key_mask` column (an indexer scoring the layer's own
        keys: models/sparse_attention.py)."""
        return cache.k.astype(dtype)

    def __call__(self, q, k, v, cache, positions, spec: AttnSpec):
        return self.read(q, LayerCache(k, v), positions, spec), LayerCache(k, v)

    def read(self, q, cache: LayerCache, positions, spec: AttnSpec, k=None, v=None):
        """Attention of q over another layer's keys and values of this call (`cache`, as its call
        returned them): a layer that shares them (ModelConfig.kv_source)."""
        return attend(q, *rounded(spec, cache.k, cache.v), _selected(self.mask(positions, spec.window), spec), spec.scale,
                      spec.softcap, spec.sinks, score_bias(spec, positions, positions))


def _selected(mask, spec: AttnSpec):
    """`mask` [B, T, S] and the keys a sparse attention layer selected, where it selected some (`AttnSpec.keep`)."""
    return mask if spec.keep is None else mask & spec.keep


@functools.partial(jax.tree_util.register_dataclass, data_fields=["page_table", "valid", "shared", "offsets", "state_rows"],
                   meta_fields=["num_keys", "impl", "cascade"])
@dataclass(frozen=True)
class PagedCache:
    """A pool of pages per layer, k and v [N + 1, ps, K, D]; the last page is what unused page
    table entries point at (reads of it are masked). Row b's key at
    position s lives at page_table[b, s // ps], offset s % ps. Built inside a jitted step:
    page_table [B, P] int32, valid [B, T] bool (which of the call's tokens are real).

    One query per row (decode): attention over the row's first position + 1 keys straight from the
    pages (`paged_decode_attention`: cuDNN's paged kernel with impl "cudnn", else gather + mask).
    Several (a prefill chunk at positions start..start+T-1): the row's keys gathered up to
    `num_keys` (static; a windowed layer's: only the pages its queries' windows touch, window_table), then
    `flash_prefill`: cuDNN flash attention in two parts (prefix, chunk) with impl "cudnn", else an online-softmax
    blocked form; memory linear in the keys either way.

    The pool's dtype is the cache's format (`kv_format`): the model's dtype, or 8-bit (int8 with
    k_scale, v_scale [N + 1, ps, K], or float8), quantized as it is written and dequantized as it
    is read: a prefill chunk gathers its keys dequantized; on GPUs decode reads the 8-bit pages as
    stored by our Pallas kernel (`decode_kernel`, models/paged_kernel.py), elsewhere by the XLA
    form, the scales folded into the products either way (cuDNN's paged kernel takes only 16-bit pools).

    Cascade decode (`cascade` = (shared_keys, suffix_keys, others), static): rows whose tables
    begin with the pages `shared` [S / ps] (`offsets` [B]: how many of each row's first keys those
    are) read those keys once for all of them, then their own
    (`paged_decode.cascade_decode_attention`); rows with offset 0 read their tables as without
    it (`others`: whether there are any). Pools in the queries' dtype only; others ignore it.
    int8 keys and values are stored rotated by a fixed orthogonal matrix, the queries rotated to
    match and the output rotated back (`kv_quant.rotate`: scores and output unchanged,
    outlier channels spread before one scale per token and head is taken)."""

    page_table: jax.Array
    valid: jax.Array
    num_keys: int
    impl: str = "xla"
    shared: jax.Array | None = None
    offsets: jax.Array | None = None
    cascade: tuple[int, int, bool] | None = None
    # [B] the recurrent-state row of each row (linear-attention layers: models/linear_attention.py);
    # None: row b's is row b (decode, whose rows are the slots)
    state_rows: jax.Array | None = None

    def __call__(self, q, k, v, cache: LayerCache, positions, spec: AttnSpec):
        new = self.write(cache, k, v, positions)
        return self.read(q, new, positions, spec, k, v), new

    def read(self, q, cache: LayerCache, positions, spec: AttnSpec, k=None, v=None):
        """Attention of q over the pool `cache` as it stands (this call's keys already written;
        k, v: those keys as computed, or None: a layer reading another layer's pool, ModelConfig.kv_source)."""
        if cache.k_scale is None or spec.kv_round is not None:  # rounded keys and values: read back unrotated (attend)
            return self.attend(q, k, v, cache, positions, spec)
        # int8 keys and values are stored rotated: the queries turn alike, the output turns back (a decode call's
        # inside its kernel: paged_decode_attention's `rotated`)
        if q.shape[1] == 1 and spec.keep is None:
            return self.attend(q, k, v, cache, positions, spec, rotated=True)
        return kv_quant.rotate(self.attend(kv_quant.rotate(q), k, v, cache, positions, spec))

    def attend(self, q, k, v, new: LayerCache, positions, spec: AttnSpec, rotated: bool = False):
        """Attention of q over the cache `new` (k, v [B, T, K, D]: the call's own, as given). A sparse layer's selected
        keys (`AttnSpec.keep`) are attended by the masked XLA form over the row's first `num_keys` keys, in prefill and
        decode alike (no cascade: it reads every row's whole table; docs/architecture.md, what a kernel would need).
        `rotated` (decode only): the pool holds keys and values turned by kv_quant.rotate, q and the output do not."""
        if spec.keep is not None or spec.kv_round is not None:
            keys, values = self.gather(new.k, new.k_scale, q.dtype), self.gather(new.v, new.v_scale, q.dtype)
            if spec.kv_round is not None and new.k_scale is not None:  # int8: stored rotated, rounded as computed
                keys, values = kv_quant.rotate(keys), kv_quant.rotate(values)
            keys, values = rounded(spec, keys, values)
            key_pos = self.key_positions(positions)
            return attend(q, keys, values, _selected(self.key_mask(positions, spec.window), spec), spec.scale, spec.softcap,
                          spec.sinks, score_bias(spec, positions, key_pos))
        native = new.k.dtype == q.dtype  # else 8-bit (dequantized as it is read) or another float
        fast = self.impl == "cudnn" and cudnn_decode_fits(q, spec)
        if q.shape[1] == 1:
            # A row without a token this step (finished, paused, padding) reads one key, not its
            # whole history: in a batch where many rows are done that is most of the traffic.
            lengths = jnp.where(self.valid[:, 0], positions[:, 0] + 1, 1)
            cascade = self.cascade is not None and native
            if cascade:
                offsets = jnp.where(self.valid[:, 0], self.offsets, 0)
                shares = offsets > 0
                by_cudnn = fast and paged_decode.cudnn_paged_fits(new.k.shape[0], q.shape[0], self.page_table.shape[1])
                both = paged_decode.cascade_decode_attention(
                    q, new.k, new.v, self.page_table, lengths, self.shared, offsets, scale=spec.scale,
                    shared_keys=self.cascade[0], suffix_keys=self.cascade[1], window=spec.window, softcap=spec.softcap,
                    impl="cudnn" if by_cudnn else "xla", sinks=spec.sinks, alibi=spec.alibi)
                if by_cudnn or not self.cascade[2]:  # cuDNN's own part reads other rows whole; or every row shares
                    return both
                lengths = jnp.where(shares, 1, lengths)  # the sharing rows' plain reads: one key
            out = paged_decode.paged_decode_attention(
                q, new.k, new.v, self.page_table, lengths, scale=spec.scale, window=spec.window,
                softcap=spec.softcap, impl=decode_kernel(self.impl, q, new.k, spec), num_keys=self.num_keys,
                k_scales=new.k_scale, v_scales=new.v_scale, sinks=spec.sinks, alibi=spec.alibi, rotated=rotated)
            return jnp.where(shares[:, None, None, None], both, out) if cascade else out
        start = positions[:, 0]
        # a windowed layer's chunk reads the pages its queries' windows touch, not every key before it
        table, first = paged_decode.window_table(self.page_table, start + q.shape[1], spec.window, new.k.shape[1],
                                                 self.num_keys, q.shape[1])
        table = None if first is None else table
        keys, values = self.gather(new.k, new.k_scale, q.dtype, table), self.gather(new.v, new.v_scale, q.dtype, table)
        kv_len = start + jnp.sum(self.valid, axis=1)
        # The chunk's own keys as cached (in another dtype: sliced from the gathered ones), so every
        # query reads the keys that later queries will read.
        k_new, v_new = (k, v) if native and k is not None else (None, None)
        out = attention_ops.flash_prefill(q, keys, values, start, kv_len, scale=spec.scale, window=spec.window,
                                          softcap=spec.softcap, impl="cudnn" if fast else "blocked",
                                          k_new=k_new, v_new=v_new, sinks=spec.sinks, alibi=spec.alibi, key_start=first)
        return out

    def key_positions(self, positions):
        """[B, num_keys] the positions of the key columns `gather` gives: 0, 1, ... (page_table's order)."""
        return jnp.broadcast_to(jnp.arange(self.num_keys, dtype=positions.dtype), (positions.shape[0], self.num_keys))

    def key_mask(self, positions, window):
        """[B, T, num_keys] bool: which of the gathered key columns each query at `positions` [B, T] reads."""
        return attention_mask(positions, self.key_positions(positions), window)

    def keys(self, cache: LayerCache, dtype):
        """Each row's first `num_keys` keys of the pool `cache` in `dtype` [B, num_keys, K, D] (`key_mask`'s columns),
        unrotated where the pool is int8 (an indexer scoring the layer's own keys: models/sparse_attention.py)."""
        keys = self.gather(cache.k, cache.k_scale, dtype)
        return keys if cache.k_scale is None else kv_quant.rotate(keys)

    def index_keys(self, pages, k, positions):
        """Sparse attention's indexer keys (models/sparse_attention.py) k [B, T, 1, Di] written into the layer's indexer
        pages [N + 1, ps, 1, Di] (as `write` places keys); returns each row's first `num_keys` of them ([B, num_keys, 1,
        Di], `key_mask`'s columns) and the new pages."""
        new = self._put(pages.shape[:2], positions)(pages, k)
        return self.gather(new, None, k.dtype), new

    def gather(self, pool, scales, dtype, table=None):
        """Each row's first `num_keys` cached keys (or values) [B, num_keys, K, D] in `dtype`; with `table` [B, P'] the
        keys of those pages instead (paged_decode.window_table's)."""
        table, num_keys = (self.page_table, self.num_keys) if table is None else (table, None)
        if scales is None:
            return attention_ops.gather_pages(pool, table, num_keys).astype(dtype)
        return kv_quant.dequantize_kv(attention_ops.gather_pages(pool, table, num_keys),
                                      attention_ops.gather_pages(scales, table, num_keys), dtype)

    def write(self, cache: LayerCache, k, v, positions) -> LayerCache:
        """k, v [B, T, K, D] into their pages: one scatter per pool, in place when donated.
        Padding tokens and inactive rows are dropped (an out-of-range page). The rest never
        collide (a sequence writes only its own pages; a shared prefix page only gets its own
        values again), so the scatter declares its indices unique: XLA's GPU scatter otherwise
        uses atomics, and padding aimed at one trash page serialised on them (2.5 ms per layer
        of a prefill call, 40% of the offline bench on an H200, 2026-11-28). The pool's dtype
        says how values are stored (`kv_quant.quantize_kv`): an int8 pool stores keys
        and values rotated (`kv_quant.rotate`) and also scatters each token's scales."""
        put = self._put(cache.k.shape[:2], positions)
        if cache.k.dtype.itemsize > 1:  # the model's dtype (or another float)
            return LayerCache(put(cache.k, k), put(cache.v, v))
        if cache.k_scale is None:  # float8
            return LayerCache(*(put(pool, kv_quant.quantize_kv(x, pool.dtype)[0]) for pool, x in ((cache.k, k), (cache.v, v))))
        # keys and values rotated by one product, not two (each a kernel launch per layer and step), kept in float32
        (kq, vq), (ks, vs) = kv_quant.quantize_kv(kv_quant.rotate(jnp.stack([k, v]), jnp.float32), jnp.int8,
                                                  cache.k_scale.dtype)
        return LayerCache(put(cache.k, kq), put(cache.v, vq), put(cache.k_scale, ks), put(cache.v_scale, vs))

    def _put(self, pool_pages: tuple[int, int], positions):
        """put(pool, x): x [B, T, ...] at `positions` [B, T] into a pool of `pool_pages` (pages, page size) leading dims,
        as `write` places them."""
        n, ps = pool_pages
        page = jnp.take_along_axis(self.page_table, positions // ps, axis=1, mode="clip")
        page = jnp.where(self.valid, page, n).reshape(-1)
        offset = (positions % ps).reshape(-1)

        def put(pool, x):  # a scatter on the pool's own two leading dims: no reshape of the pool
            x = x.reshape((-1,) + x.shape[2:]).astype(pool.dtype)
            return jnp.asarray(pool).at[page, offset].set(x, mode="drop", unique_indices=True)

        return put


UNCACHED = Uncached()


class Attention(nnx.Module):
    """Multi-head attention with grouped kv heads, rotary positions, optional q/k norms and bias;
    the keys and values go through the KV backend the caller passes."""

    sinks_outside_weights = False  # the attention weights reported without the sinks (ModelConfig.sinks_outside_weights)

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        e, h, k, d = cfg.hidden_size, cfg.layer_heads(layer), cfg.layer_kv_heads(layer), cfg.layer_head_dim(layer)
        width = cfg.attn_input_size or e  # the input's width (Zamba2's shared block: hidden and embeddings side by side)
        scale = (cfg.attn_scale or d**-0.5) / (layer + 1 if cfg.attn_scale_by_layer else 1)
        self.spec = AttnSpec(scale, cfg.layer_window(layer), cfg.attn_softcap, alibi=cfg.alibi)
        self.rope_interleaved, self.clip = cfg.rope_interleaved, cfg.clip_qkv
        self.input_scale, self.key_scale = cfg.attn_input_scale, cfg.key_scale  # Falcon-H1's muP multipliers
        # A layer reading another layer's keys and values projects none (Gemma 4's shared kv layers);
        # one whose values are its keys' projection has no v_proj (attention_k_eq_v)
        own = cfg.kv_source(layer) == layer
        self.reads_shared_kv = not own
        kv = dict(bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        # values vd wide (cfg.v_head_dim), zero-padded to d for the KV backend, the output sliced back to vd
        self.head_dim, vd = d, cfg.v_head_dim or d
        self.v_dim, self.value_scale = vd, cfg.value_scale
        self.q_proj = Dense((width,), (h, d), ("embed", "q_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense((width,), (k, d), ("embed", "kv_heads", "head_dim"), **kv) if own else None
        self.v_proj = Dense((width,), (k, vd), ("embed", "kv_heads", "head_dim"), **kv) if own and not cfg.layer_values_are_keys(layer) else None
        self.v_norm = RMSNorm(d, cfg.norm_eps, dtype=dtype, rngs=rngs, weight=False) if cfg.v_norm and own else None
        self.o_proj = Dense((h, vd), (e,), ("q_heads", "head_dim", "embed"), bias=cfg.layer_o_bias(layer), dtype=dtype, rngs=rngs)
        # Qwen3-Next's gated attention: a gate per query head and dim (read out of its q_proj), the output times its sigmoid;
        # AFMoE's (a gate_proj of its own), Laguna's (softplus, one per head where attn_gate_per_head), LFM3's (one per
        # head, no bias)
        self.gate_proj, self.gate_act, self.gate_per_head = output_gate(cfg, h, d, width, dtype, rngs)
        # BitNet: an RMSNorm of the output over every head before o_proj
        self.attn_sub_norm = RMSNorm((h, vd), cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("q_heads", "head_dim")) if cfg.sub_norms else None
        if cfg.qk_norm == "none" or (cfg.qk_norm_layers is not None and layer not in cfg.qk_norm_layers):
            self.q_norm = self.k_norm = None
        elif cfg.qk_norm in ("l2", "unit"):  # a weightless RMSNorm of each head (Llama 4), or its unit-sphere form (Dory)
            unit = cfg.qk_norm == "unit"
            self.q_norm, self.k_norm = (RMSNorm(d, cfg.norm_eps, dtype=dtype, rngs=rngs, weight=False, unit=unit) for _ in "qk")
        elif cfg.qk_norm == "layernorm":  # LayerNorm of each head (Phi)
            self.q_norm = LayerNorm(d, cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("head_dim",))
            self.k_norm = LayerNorm(d, cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("head_dim",))
        elif cfg.qk_norm == "layernorm_per_head":  # LayerNorm of each head, no bias, a weight row per head (StableLM, Cohere)
            norm = dict(dtype=dtype, rngs=rngs, bias=False)
            self.q_norm = LayerNorm((h, d), cfg.norm_eps, axes=("q_heads", "head_dim"), **norm)
            self.k_norm = LayerNorm((k, d), cfg.norm_eps, axes=("kv_heads", "head_dim"), **norm)
        else:  # RMSNorm per head (Qwen3), or over the whole projection (OLMo 2)
            norm = dict(dtype=dtype, rngs=rngs, offset=cfg.norm_offset, upcast_scale=cfg.norm_upcast_scale)
            whole = cfg.qk_norm == "projection"
            self.q_norm = RMSNorm((h, d) if whole else d, cfg.norm_eps,
                                  axes=("q_heads", "head_dim") if whole else ("head_dim",), **norm)
            self.k_norm = RMSNorm((k, d) if whole else d, cfg.norm_eps,
                                  axes=("kv_heads", "head_dim") if whole else ("head_dim",), **norm) if own else None
        self.norm_after_rope = cfg.qk_norm_after_rope
        layers = cfg.query_scale_layers
        self.query_scale = cfg.query_scale if layers is None or layer in layers else None
        # gpt-oss: a learned logit per query head in every softmax's denominator (AttnSpec.sinks)
        sinks = cfg.attn_sinks and (cfg.attn_sink_layers is None or layer in cfg.attn_sink_layers)
        self.sinks = param((h,), ("q_heads",), dtype) if sinks else None
        self.sinks_outside_weights = cfg.sinks_outside_weights

    def __call__(self, x, positions, rot: Rotary | None, cache: LayerCache | None, kv=UNCACHED):
        """x [B, T, E] at positions [B, T] -> (output [B, T, E], this layer's cache from `kv`).
        `rot` None: no rotary positions (models with learned position embeddings). A layer that
        reads another's keys and values (`reads_shared_kv`) is given that layer's new cache as
        `cache`, attends over it and returns None: it keeps none."""
        q, k, v = self.project(x, positions, rot)
        if self.reads_shared_kv:
            return self.output(kv.read(q, cache, positions, self.call_spec()), x), None
        out, new = kv(q, k, v, cache, positions, self.call_spec())
        return self.output(out, x), new

    def output(self, out, x):
        """The attention output [B, T, H, D] through o_proj: sliced to the values' width (v_head_dim), times the
        output gate where the layer has one (a sigmoid, or a softplus in float32, then cast: Laguna; one per head and
        dim, or one per head: LFM3, Laguna), RMS-normed over every head where it has a sub-norm (BitNet)."""
        out = out[..., : self.v_dim]
        if self.gate_proj is not None:
            gate = self.gate_logits(x)
            gate = jax.nn.sigmoid(gate) if self.gate_act == "sigmoid" else jax.nn.softplus(gate.astype(jnp.float32)).astype(out.dtype)
            out = out * (gate[..., None] if self.gate_per_head else gate)
        return self.o_proj(out if self.attn_sub_norm is None else self.attn_sub_norm(out))

    def gate_logits(self, x):
        """The output gate's pre-activations of x [B, T, E] (Dory scales them by a learned factor per head and dim)."""
        return self.gate_proj(x)

    def call_spec(self) -> AttnSpec:
        """The layer's AttnSpec with its sinks' values (float32), where it has sinks."""
        return self.spec if self.sinks is None else self.spec._replace(sinks=self.sinks[...].astype(jnp.float32))

    def project(self, x, positions, rot: Rotary | None):
        """Queries, keys and values of x [B, T, E] at positions [B, T]: projected, q/k-normed (v-normed
        where the model says: Gemma 4), clamped to [-clip_qkv, clip_qkv] where the model says (OLMo,
        OLMoE) and rotated (q/k-normed after rotating where the model says), queries scaled by their
        position where the model says (`query_scale`); keys and values None in a layer that reads
        another's (Gemma 4's shared kv layers). Falcon-H1: x times `input_scale`, the keys times `key_scale`."""
        x = x if self.input_scale == 1 else x * self.input_scale
        q, k, v = self.q_proj(x), None, None
        if not self.reads_shared_kv:
            k = self.k_proj(x)
            v = k if self.v_proj is None else self.v_proj(x)
            k = k if self.key_scale == 1 else k * self.key_scale
        if not self.norm_after_rope:
            q, k = self._qk_norm(q, k)
        if self.v_norm is not None and v is not None:
            v = self.v_norm(v)
        if v is not None and self.v_proj is not None and (self.value_scale != 1 or self.v_dim != self.head_dim):
            v = padded(v * self.value_scale if self.value_scale != 1 else v, self.head_dim)
        if self.clip is not None:
            q, k, v = (t if t is None else jnp.clip(t, -self.clip, self.clip) for t in (q, k, v))
        if rot is not None:
            q = apply_rotary(q, rot, self.rope_interleaved)
            k = k if k is None else apply_rotary(k, rot, self.rope_interleaved)
        if self.norm_after_rope:
            q, k = self._qk_norm(q, k)
        if self.query_scale is not None:
            q = scale_queries(q, positions, self.query_scale)
        return q, k, v

    def _qk_norm(self, q, k):
        """q and k (None: none) through the layer's q/k norms, where it has them."""
        q = q if self.q_norm is None else self.q_norm(q)
        return q, (k if k is None or self.k_norm is None else self.k_norm(k))

    def weights(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED, keys=None):
        """The attention weights of a full sequence x [B, T, E] (no cache; `kv` may hide padding
        keys): float32 [B, H, T, T]. `keys`: the keys of the layer whose keys this one reads, where
        it reads another's (`reads_shared_kv`)."""
        q, k, _ = self.project(x, positions, rot)
        return self.weights_of(q, k if keys is None else keys, positions, kv, self.call_spec())

    def weights_of(self, q, k, positions, kv: Uncached, spec: AttnSpec):
        """`weights` of the queries q and keys k [B, T, ., D] of a full sequence under `spec` (a sparse layer's
        selected keys in it: models/sparse_attention.py)."""
        sinks = None if self.sinks_outside_weights else spec.sinks
        probs = attention_probs(q, rounded(spec, k.astype(q.dtype), None)[0], _selected(kv.mask(positions, spec.window), spec), spec.scale,
                                spec.softcap, sinks, score_bias(spec, positions, positions))
        b, groups, members, t, s = probs.shape
        return probs.reshape(b, groups * members, t, s)


def output_gate(cfg: ModelConfig, heads: int, head_dim: int, width: int, dtype, rngs: nnx.Rngs):
    """The attention output's gate (`Attention.output`): its projection from the layer's input `width` wide, one gate per
    head and dim or one per head (cfg.attn_gate_per_head), None where the model has none; its activation; per head."""
    shape = ((heads,), ("embed", "q_heads")) if cfg.attn_gate_per_head else ((heads, head_dim), ("embed", "q_heads", "head_dim"))
    proj = Dense((width,), *shape, bias=cfg.qkv_bias and cfg.attn_gate_bias, dtype=dtype, rngs=rngs) if cfg.attn_output_gate else None
    return proj, cfg.attn_gate_act, cfg.attn_gate_per_head


def padded(x, width: int):
    """x [..., n] with zeros after its n values up to `width` (values narrower than the keys: models/mla.py, v_head_dim)."""
    extra = width - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def scale_queries(q, positions, qs: QueryScale):
    """q [B, T, H, D] times 1 + beta * log(1 + floor((positions + offset) / floor)) per token
    (`QueryScale`: Ministral 3's and Llama 4's position-dependent query scaling)."""
    steps = jnp.floor((positions.astype(jnp.float32) + qs.offset) / qs.floor)
    scale = (1.0 + qs.beta * jnp.log1p(steps))[:, :, None, None]
    if qs.in_float32:
        return (q.astype(jnp.float32) * scale).astype(q.dtype)
    return q * scale.astype(q.dtype)
