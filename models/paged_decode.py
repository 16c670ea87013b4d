"""Decode attention over a paged KV cache (pure functions): one query per row straight over the
page pool, by a masked XLA softmax, cuDNN (gathered or its own paged kernel) or Pallas's paged
attention; an 8-bit pool (models/kv_quant.py) read with its scales folded into the products.
Layouts as models/attention_ops.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxllm.models import kv_quant, paged_kernel
from jaxllm.models.attention_ops import NEG_INF, alibi_bias, cudnn_private, first_visible, gather_pages, grouped, sink_logits
from jaxllm.models.config import Chunked


def paged_decode_attention(q, k_pages, v_pages, page_table, lengths, *, scale: float,
                           impl: str = "xla", window: int | None = None,
                           softcap: float | None = None, num_keys: int | None = None,
                           interpret: bool = False, k_scales=None, v_scales=None, sinks=None, alibi=None,
                           rotated: bool = False):
    """One query per row over the page pool. q [B, 1, H, D]; k_pages, v_pages [N, ps, K, D];
    page_table [B, P] int32; lengths [B]: row b's query sits at position lengths[b] - 1 and
    sees keys 0 .. lengths[b] - 1 (within the window when set). num_keys (static) bounds the
    keys read (a bucket >= max(lengths); default P * ps). -> [B, 1, H, D] in q.dtype.

    An 8-bit pool (`quantize_kv`: int8 with k_scales, v_scales [N, ps, K], or float8) is read by
    the "xla" form whatever `impl` says, the dequantization folded into its products: scores
    (q . k_int8) * k_scale, and the softmax weights times v_scale before the sum over values.

    impl:
    - "xla": gather the row's pages (`gather_pages`), masked float32 softmax (any backend,
      window and softcap).
    - "cudnn": gather, then jax.nn.dot_product_attention(implementation="cudnn",
      key_value_seq_lengths=lengths): what layers.decode_attention does today.
    - "cudnn_paged": cuDNN's own paged attention (jax._src.cudnn...paged_attention, private in
      jax 0.10/0.11): reads pages through the table, no gather. jax requires the pool to hold
      exactly g * P' pages for a table [g, P'], so the rows go in blocks of g (cudnn_paged_rows:
      the most rows dividing B and N with N // g >= P; one block when N % B == 0 and N // B >= P),
      each block's table padded with page 0 (masked by lengths); a pool of fewer than P pages uses
      "cudnn".
    - "pallas": our Pallas (Triton) kernel over the pool as stored (models/paged_kernel.py): any
      pool dtype, an 8-bit one converted in the kernel; windows, soft-capping and sinks; 16-bit
      queries and a power-of-two head size on a GPU (`paged_kernel.kernel_takes`).
    The caller chooses (jaxllm.runtime decides the platform's kernels; nothing here probes it);
    cuDNN choices fall back to "xla" for a window or soft-capping, cuDNN's for attention sinks
    (`sinks` [H]: a logit per query head in the softmax's denominator, `with_sinks`), and every
    choice for ALiBi (`alibi`: attention_ops.alibi_bias on the scores; no kernel here takes a bias).
    `rotated`: the pool holds keys and values turned by kv_quant.rotate (an int8 cache's), q and the output do not:
    "pallas" turns them inside its kernel for calls of few rows (`paged_kernel.turns_inside`), the other forms and
    larger calls by a product on each side.

    Measured on an H100 (jax 0.11.2, cuDNN 9.19, 2026-11-28; one layer, Qwen3-0.6B shape H=16,
    K=8, D=128, bf16, us per call in a chain of 100): batch 64 x 1k context: cudnn_paged
    97-101 (any page size 16-128), jax's Pallas kernel (pool in its [K, N, ps, D]) 141-162, cudnn (gather)
    285, xla 340. Batch 1: 1k context pallas 14-16, xla 19, cudnn_paged 28-42, cudnn 30-33;
    8k context cudnn_paged 29-40, pallas 30 (ps 16/32), cudnn 54, xla 55-56. Batch 64 x 8k was
    not measured (out of device time). See benchmarks/attention_probe.py.
    """
    b, one, h, d = q.shape
    n, ps, kv, _ = k_pages.shape
    p = page_table.shape[1]
    lengths = jnp.asarray(lengths, jnp.int32)
    if rotated and not (impl == "pallas" and alibi is None and paged_kernel.turns_inside(b, kv)):
        return kv_quant.rotate(paged_decode_attention(
            kv_quant.rotate(q), k_pages, v_pages, page_table, lengths, scale=scale, impl=impl, window=window,
            softcap=softcap, num_keys=num_keys, interpret=interpret, k_scales=k_scales, v_scales=v_scales, sinks=sinks,
            alibi=alibi))
    if impl == "pallas" and alibi is None:
        table, first = window_table(page_table, lengths, window, ps, num_keys)
        lo = None if window is None else jnp.maximum(first_visible(lengths - 1, window), 0)
        out, lse = paged_kernel.pool_decode(q, k_pages, v_pages, table, lengths, lo, first, k_scales, v_scales,
                                            scale=scale, softcap=softcap, rotated=rotated, interpret=interpret)
        return with_sinks(out, lse, sinks).reshape(b, 1, h, d).astype(q.dtype)
    if k_pages.dtype.itemsize == 1:
        table, first = window_table(page_table, lengths, window, ps, num_keys)
        keys, values = gather_pages(k_pages, table), gather_pages(v_pages, table)
        if k_scales is not None:
            k_scales, v_scales = gather_pages(k_scales, table), gather_pages(v_scales, table)
        return _masked_decode(q, keys, values, lengths, scale, window, softcap, k_scales, v_scales, sinks, alibi, first)
    if impl in ("cudnn", "cudnn_paged", "pallas") and (window is not None or sinks is not None or alibi is not None):
        impl = "xla"
    if impl in ("cudnn", "cudnn_paged") and softcap is not None:
        impl = "xla"
    if impl == "cudnn_paged":
        need = p if num_keys is None else -(-num_keys // ps)
        if not cudnn_paged_fits(n, b, need):
            impl = "cudnn"
        else:
            return _cudnn_paged(q, k_pages, v_pages, page_table[:, :need], lengths, scale)
    if impl == "cudnn":
        keys, values = gather_pages(k_pages, page_table, num_keys), gather_pages(v_pages, page_table, num_keys)
        return jax.nn.dot_product_attention(q, keys, values, scale=scale, key_value_seq_lengths=lengths,
                                            implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"unknown impl {impl!r}")
    table, first = window_table(page_table, lengths, window, ps, num_keys)
    keys, values = gather_pages(k_pages, table), gather_pages(v_pages, table)
    return _masked_decode(q, keys, values, lengths, scale, window, softcap, sinks=sinks, alibi=alibi, first=first)


def window_table(page_table, lengths, window, ps: int, num_keys: int | None = None, queries: int = 1, offsets=None):
    """The columns of page_table [B, P] a row's `queries` (static) queries read, at positions lengths - queries ..
    lengths - 1 (decode: one, at lengths - 1): its first num_keys // ps (all without num_keys); under a sliding window
    or chunked attention only the pages that can hold their visible keys (ceil((span + queries - 1) / ps) + 1, span
    the window's or chunk's keys), starting at the page of the first query's first visible key, so a windowed layer
    reads O(window) keys however long the table (a 1,024-key window in a 131,072-position engine read every position
    each step; a prefill chunk or a verify step, every position before it). `offsets` [B] (None: 0): the position of
    column 0 of each row's table (a multiple of ps: a cascade's own pages after the shared ones). -> (table [B, P'],
    the position of each row's first column [B] int32; None: `offsets`, 0 without, for every row)."""
    cols = page_table.shape[1] if num_keys is None else -(-num_keys // ps)
    span = None if window is None else window.size if isinstance(window, Chunked) else window
    width = None if span is None else -(-(span + queries - 1) // ps) + 1
    if width is None or width >= cols:
        return page_table[:, :cols], None
    base = 0 if offsets is None else offsets
    start = jnp.maximum(first_visible(lengths - queries, window) - base, 0) // ps
    start = jnp.minimum(start, cols - width)  # the whole window within the columns the row may read
    at = start[:, None] + jnp.arange(width, dtype=jnp.int32)[None, :]
    return jnp.take_along_axis(page_table, at, axis=1), base + start * ps


def _masked_decode(q, k, v, lengths, scale, window, softcap, k_scales=None, v_scales=None, sinks=None, alibi=None,
                   first=None):
    """k, v [B, S, K, D] in q.dtype, or 8-bit (cast to q.dtype in the products: int8 values and
    e4m3 floats are exact in bfloat16) with int8 scales [B, S, K] applied to the scores and the
    weights; `first` [B]: the position of each row's first key (None: 0, window_table)."""
    b, _, h, d = q.shape
    k_pos = jnp.arange(k.shape[1], dtype=jnp.int32)[None, :]
    k_pos = k_pos if first is None else k_pos + first[:, None]
    out, lse = _decode_part(q, k, v, _visible(k_pos, lengths, window), scale, softcap, k_scales, v_scales,
                            _decode_bias(alibi, lengths, k_pos, h // k.shape[2]))
    return with_sinks(out, lse, sinks).reshape(b, 1, h, d).astype(q.dtype)


def with_sinks(out, lse, sinks):
    """An attention output float32 [B, K, G, D] normalized over its keys, whose scores' float32
    log-sum-exp is lse [B, K, G], with each query head's sink logit (sinks [H]; None: `out`)
    joining the softmax's denominator: out * exp(lse) / (exp(lse) + exp(sink)), sigmoid(lse - sink)."""
    if sinks is None:
        return out
    return out * jax.nn.sigmoid(lse - sink_logits(sinks, lse.shape[1], lse.shape))[..., None]


def _decode_bias(alibi, lengths, k_pos, groups: int):
    """ALiBi's bias [B, K, G, S] of each row's query (at position lengths - 1) over the keys at k_pos
    [B or 1, S]; None without ALiBi."""
    if alibi is None:
        return None
    bias = alibi_bias(alibi, lengths[:, None] - 1, k_pos)[:, :, 0]  # [B, H, S]
    return grouped(bias, bias.shape[1] // groups)


def _visible(k_pos, lengths, window):
    """[B, S] whether each row's query (at position lengths - 1) sees the key at k_pos [B or 1, S]."""
    mask = k_pos < lengths[:, None]
    if window is not None:
        mask &= k_pos >= first_visible(lengths[:, None] - 1, window)
    return mask


def _decode_part(q, k, v, mask, scale, softcap, k_scales=None, v_scales=None, bias=None):
    """Softmax attention of one query per row over the keys `mask` [B, S] lets it see: k, v
    [B, S, K, D] per row, or [S, K, D] one set every row reads (a shared prefix); `bias` float32
    [B, K, G, S] (None: none) added to the scores (ALiBi's, `_decode_bias`). -> (output
    float32 [B, K, G, D] normalized over these keys, their log-sum-exp float32 [B, K, G]; -inf
    and zeros for a row that sees none), so parts over disjoint keys merge exactly."""
    b, _, h, d = q.shape
    kv = k.shape[-2]
    shared = k.ndim == 3
    qg = q.reshape(b, kv, h // kv, d)
    narrow = k.dtype.itemsize == 1  # an 8-bit cache
    k, v_dtype = (k.astype(q.dtype), q.dtype) if narrow else (k, v.dtype)
    scores = jnp.einsum("bkgd,skd->bkgs" if shared else "bkgd,bskd->bkgs", qg, k,
                        preferred_element_type=jnp.float32) * scale
    if k_scales is not None:
        scores = scores * jnp.swapaxes(k_scales, 1, 2).astype(jnp.float32)[:, :, None, :]
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias
    scores = jnp.where(mask[:, None, None, :], scores, NEG_INF)
    m = jnp.max(scores, axis=-1, keepdims=True)
    m = jnp.where(m == NEG_INF, 0.0, m)
    p = jnp.exp(scores - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    if v_scales is not None:
        p = p * jnp.swapaxes(v_scales, 1, 2).astype(jnp.float32)[:, :, None, :]
    out = jnp.einsum("bkgs,skd->bkgd" if shared else "bkgs,bskd->bkgd", p.astype(v_dtype), v.astype(v_dtype),
                     preferred_element_type=jnp.float32)
    lse = jnp.where(denom[..., 0] > 0, m[..., 0] + jnp.log(jnp.maximum(denom[..., 0], 1e-30)), -jnp.inf)
    return out, lse


def cascade_decode_attention(q, k_pages, v_pages, page_table, lengths, shared_table, offsets, *, scale: float,
                             shared_keys: int, suffix_keys: int, window: int | None = None,
                             softcap: float | None = None, impl: str = "xla", sinks=None, alibi=None):
    """Decode attention for rows that begin with the same cached pages (a shared prompt prefix),
    in two parts merged by their log-sum-exps (cascade attention, as FlashInfer and vLLM call
    it): the shared keys are read once for all rows, then each row's own keys after them.

    q [B, 1, H, D]; pools [N, ps, K, D] in q.dtype; page_table [B, P] and lengths [B] as
    paged_decode_attention; shared_table [S / ps] the shared pages (ids past the shared ones
    may be anything: masked); offsets [B] how many of a row's first keys are the shared ones (a
    multiple of ps: page_table[b, :offsets[b] // ps] equals shared_table's first entries; 0: the
    row reads only its own table). shared_keys (static) >= max(offsets) and suffix_keys (static)
    >= max(lengths - offsets) bound the keys read. Same result as paged_decode_attention up to
    float rounding. -> [B, 1, H, D] in q.dtype.

    impl "xla": both parts gathered, masked float32 softmaxes (any backend, window, softcap); under a window
    only the pages the rows' windows touch of each part (window_table; sharing rows of one offset).
    "cudnn": each row's own keys by cuDNN's paged kernel (reading each row's own length; a row
    with offset 0 reads its whole table there), the shared keys by one cuDNN flash call whose
    queries are the B rows; both return float32 log-sum-exps. Every sharing row has the same
    offset (one group). No window, soft-capping, sinks or ALiBi, 16-bit pools of at least the table's
    width in pages (as "cudnn_paged"); else "xla". `sinks` [H]: as paged_decode_attention, joined after the merge;
    `alibi`: as paged_decode_attention, each part's bias at its keys' positions."""
    b, _, h, d = q.shape
    n, ps = k_pages.shape[:2]
    offsets = jnp.asarray(offsets, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    cols = jnp.arange(page_table.shape[1], dtype=jnp.int32)[None, :] + (offsets // ps)[:, None]
    own_table = jnp.take_along_axis(page_table, cols, axis=1, mode="clip")  # the row's pages after the shared
    plain = window is None and softcap is None and sinks is None and alibi is None
    if impl == "cudnn" and plain and cudnn_paged_fits(n, b, page_table.shape[1]):
        return _cudnn_cascade(q, k_pages, v_pages, own_table, lengths, shared_table, offsets, scale, shared_keys)
    groups = h // k_pages.shape[2]
    # under a window each part reads the pages the rows' windows touch (window_table): the own keys per row, the
    # shared ones from the window of the shortest sharing row on (every sharing row has the same offset: `plan`)
    own_table, own_first = window_table(own_table, lengths, window, ps, suffix_keys, offsets=offsets)
    fewest = jnp.min(jnp.where(offsets > 0, lengths, jnp.iinfo(jnp.int32).max // 2))[None]
    shared_table, first = window_table(shared_table[None], fewest, window, ps, shared_keys)
    k_own, v_own, own_pos = _read(k_pages, v_pages, own_table, suffix_keys, offsets, own_first)
    k_shared, v_shared, pos = _read(k_pages, v_pages, shared_table, shared_keys, jnp.zeros(1, jnp.int32), first)
    own = _decode_part(q, k_own, v_own, _visible(own_pos, lengths, window), scale, softcap,
                       bias=_decode_bias(alibi, lengths, own_pos, groups))
    common = _decode_part(q, k_shared[0], v_shared[0], _visible(pos, lengths, window) & (pos < offsets[:, None]), scale,
                          softcap, bias=_decode_bias(alibi, lengths, pos, groups))
    out = with_sinks(_merge(*own, *common), jnp.logaddexp(own[1], common[1]), sinks)
    return out.reshape(b, 1, h, d).astype(q.dtype)


def _read(k_pages, v_pages, table, num_keys: int, base, first):
    """The keys and values [B, S, K, D] a cascade part reads through `table` [B, P] (window_table's): its first num_keys
    from position `base` [B], or where `first` [B] (not None) says its columns start, all of them; and their positions [B, S]."""
    keys = num_keys if first is None else None
    k, v = gather_pages(k_pages, table, keys), gather_pages(v_pages, table, keys)
    return k, v, jnp.arange(k.shape[1], dtype=jnp.int32)[None, :] + (base if first is None else first)[:, None]


def _merge(o1, l1, o2, l2):
    """Two attention outputs over disjoint keys [..., D] (each normalized over its own keys) and
    their float32 log-sum-exps [...] (-inf: no key) -> the output over all the keys, float32."""
    lse = jnp.logaddexp(l1, l2)
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    return o1.astype(jnp.float32) * jnp.exp(l1 - safe)[..., None] + o2.astype(jnp.float32) * jnp.exp(l2 - safe)[..., None]


def cudnn_paged_rows(pool_pages: int, rows: int, columns: int) -> int:
    """Rows per call of jax's cuDNN paged attention over a pool of `pool_pages` pages for a
    [rows, columns] table, 0 where no call fits: jax wants exactly g * P' pages for a table
    [g, P'] (P' >= columns), so a pool smaller than rows * columns pages is read by several calls
    of g rows (the most that fit: g divides rows and the pool, pool_pages // g >= columns), each
    seeing the whole pool. One call gathering every row's table into cuDNN's flash kernel instead
    made Qwen3-0.6B's offline workload (256 rows of 2,048 positions, a pool of 29,426 pages under
    an H100's default memory limit) 4x slower (3,823 tokens/s; 15,627 with 37,766 pages)."""
    for g in range(min(rows, pool_pages // max(columns, 1)), 0, -1):
        if rows % g == 0 and pool_pages % g == 0:
            return g
    return 0


def cudnn_paged_fits(pool_pages: int, rows: int, columns: int) -> bool:
    """Whether jax's cuDNN paged call takes a pool of `pool_pages` pages for a [rows, columns] table
    (in calls of cudnn_paged_rows rows)."""
    return cudnn_paged_rows(pool_pages, rows, columns) > 0


def _cudnn_cascade(q, k_pages, v_pages, own_table, lengths, shared_table, offsets, scale, shared_keys):
    fa = cudnn_private()
    b, _, h, d = q.shape
    o1, l1 = _cudnn_paged(q, k_pages, v_pages, own_table, lengths - offsets, scale, residual=True)
    keys = gather_pages(k_pages, shared_table[None], shared_keys)  # [1, S, K, D]
    values = gather_pages(v_pages, shared_table[None], shared_keys)
    shared = jnp.maximum(jnp.max(offsets), 1)[None]  # a zero length is replaced, its part weighted 0 below
    o2, l2 = fa.dot_product_attention(q.reshape(1, b, h, d), keys, values, q_seqlen=jnp.full((1,), b, jnp.int32),
                                      kv_seqlen=shared, scale=scale, mask_type=fa.MaskType.PADDING,
                                      return_residual=True)
    # stats are [batch, H, T] (cuDNN's layout): [B, H, 1] for the rows' own keys, [1, H, B] shared
    l1 = l1.astype(jnp.float32)[:, :, 0]
    l2 = jnp.where((offsets > 0)[:, None], jnp.swapaxes(l2.astype(jnp.float32)[0], 0, 1), NEG_INF)
    out = _merge(o1.reshape(b, h, d), l1, o2.reshape(b, h, d), l2)
    return out.reshape(b, 1, h, d).astype(q.dtype)


def _cudnn_paged(q, k_pages, v_pages, page_table, lengths, scale, residual: bool = False):
    """cuDNN's paged kernel for each block of cudnn_paged_rows rows, each block's table padded (with
    page 0, masked by `lengths`) to its share of the pool; the outputs (and residuals) joined."""
    fa = cudnn_private()
    b, p = page_table.shape
    n = k_pages.shape[0]
    g = cudnn_paged_rows(n, b, p)
    per_row = n // g
    if per_row > p:
        page_table = jnp.pad(page_table, ((0, 0), (0, per_row - p)))
    table = page_table.astype(jnp.int32)[:, None, :, None]
    q_len = jnp.ones((g,), jnp.int32)
    parts = [fa.paged_attention(q[i:i + g], k_pages, v_pages, q_len, lengths[i:i + g], table[i:i + g], table[i:i + g],
                                scale=scale, mask_type=fa.MaskType.PADDING, return_residual=residual)
             for i in range(0, b, g)]
    if len(parts) == 1:
        return parts[0]
    if residual:
        return tuple(jnp.concatenate(xs, axis=0) for xs in zip(*parts))
    return jnp.concatenate(parts, axis=0)
