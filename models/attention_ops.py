"""Memory-linear attention kernels for a paged KV cache (pure functions, no Flax modules): prefill.

Layout conventions (as models/layers.py): B rows, T queries, H query heads, K kv heads,
G = H // K (query head h reads kv head h // G), D head size, S keys; per layer one page pool
`k_pages, v_pages: [N, ps, K, D]` and per row a page table `[P]` int32 of page ids, so a row's
key s lives at `pages[page_table[s // ps], s % ps]`.

- `gather_pages`: the contiguous [B, S, K, D] view of each row's keys (one gather).
- `blocked_attention`: causal / sliding-window / soft-capped / ALiBi-biased grouped-query attention with an
  online softmax over key blocks (flash-attention style): peak memory O(B*H*Tq*block) instead
  of the O(B*H*T*S) float32 scores that `attention_probs` materialises. Any backend.
- `flash_prefill`: a prefill chunk (queries at positions start..start+T-1 over keys 0..) on
  cuDNN when the mask can be expressed there exactly, else `blocked_attention`.

One query per row over the pages (decode): models/paged_decode.py; the 8-bit cache's values:
models/kv_quant.py.

Everything here runs on jax 0.10 and 0.11. The cuDNN and Pallas paths only run on NVIDIA GPUs
(Pallas GPU kernels also in interpret mode on CPU, which the tests use).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxllm.models.config import Alibi, Chunked
from jaxllm.models.layers import rounded_to

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------
# Pages


def gather_pages(pages, page_table, num_keys: int | None = None):
    """The contiguous keys (or values) of each row: pages [N, ps, ...] (K, D for keys; K for an
    int8 cache's scales), page_table [B, P] int -> [B, P * ps, ...], or the first `num_keys`
    (static) positions. Table entries past a row's length may hold any id: out-of-range ids are
    clipped to a valid page (their keys must be masked by the caller's lengths anyway)."""
    n, ps = pages.shape[:2]
    rest = pages.shape[2:]
    b, p = page_table.shape
    if num_keys is not None:
        need = -(-num_keys // ps)
        if need > p:
            raise ValueError(f"num_keys={num_keys} needs {need} pages, the table has {p}")
        page_table = page_table[:, :need]
        p = need
    out = jnp.take(pages, page_table.astype(jnp.int32), axis=0, mode="clip")  # [B, P, ps, ...]
    out = out.reshape((b, p * ps) + rest)
    if num_keys is not None and num_keys != p * ps:
        out = out[:, :num_keys]
    return out


# ----------------------------------------------------------------------------------------------
# Blocked (online-softmax) attention: the portable path


def blocked_attention(q, k, v, q_pos, kv_len=None, *, scale: float, window: int | None = None,
                      softcap: float | None = None, block: int = 512, q_block: int | None = None, sinks=None,
                      alibi: Alibi | None = None, key_start=None):
    """Grouped-query attention with an online softmax over key blocks.

    q [B, T, H, D]; k, v [B, S, K, D] (key s sits at position key_start + s; key_start [B], None:
    0); q_pos [B, T] int positions of the queries; kv_len [B] one past the last valid key's position
    per row (None: all S). Query t of row b sees key s iff
    s <= q_pos[b, t], s < kv_len[b] and, with a window, s > q_pos[b, t] - window. Scores are
    scale * q.k in float32, soft-capped as softcap * tanh(s / softcap) when set. Returns
    [B, T, H, D] in q.dtype; equal to the masked reference (layers.attention_probs / attend) up
    to float rounding. A query that sees no key gets zeros (the reference would average all
    values), never NaN. `sinks` [H] (None: none): a learned logit per query head that joins
    every softmax's denominator and takes no value (gpt-oss's attention sinks); the online
    softmax starts from it (running max = the sink, denominator 1) instead of from nothing.
    `alibi` (None: none): ALiBi's bias (`alibi_bias`) added to the scores, after any soft-capping.

    Memory: the scores of one (query block, key block) pair, B*H*Tq*block float32, where Tq is
    `q_block` (None: all T queries at once). The key loop runs only over blocks that some query
    of the (query) block can see, from the window's first block to min(kv_len, q_pos + 1), so a
    causal prefill split into query blocks does about half the work of the full square, and
    blocks past max(kv_len) cost nothing. `block` need not divide S: the last block is
    shifted left to end at S and its overlap masked, so nothing is padded or copied.
    """
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    if h % kv:
        raise ValueError(f"{h} query heads do not group over {kv} kv heads")
    q_pos = jnp.asarray(q_pos, jnp.int32)
    key_start = jnp.zeros((b,), jnp.int32) if key_start is None else jnp.asarray(key_start, jnp.int32)
    kv_len = key_start + s if kv_len is None else jnp.minimum(jnp.asarray(kv_len, jnp.int32), key_start + s)
    block = max(1, min(block, s))
    core = functools.partial(_blocked_core, scale=scale, window=window, softcap=softcap, block=block, sinks=sinks,
                             alibi=alibi, key_start=key_start)

    if q_block is None or q_block >= t:
        return core(q, k, v, q_pos, kv_len)

    nq = -(-t // q_block)
    pad = nq * q_block - t
    if pad:  # padded queries sit at position -1: they see nothing and are dropped below
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
        q_pos = jnp.pad(q_pos, ((0, 0), (0, pad)), constant_values=-1)
    qs = q.reshape(b, nq, q_block, h, d).swapaxes(0, 1)
    ps = q_pos.reshape(b, nq, q_block).swapaxes(0, 1)
    out = lax.map(lambda qp: core(qp[0], k, v, qp[1], kv_len), (qs, ps))
    out = out.swapaxes(0, 1).reshape(b, nq * q_block, h, d)
    return out[:, :t]


def sink_logits(sinks, kv: int, shape: tuple):
    """Sinks [H] as float32 [..., K, G, ...] logits broadcast to `shape`, whose dims after the
    leading batch are (K, G, ...)."""
    s = jnp.asarray(sinks, jnp.float32).reshape((1, kv, -1) + (1,) * (len(shape) - 3))
    return jnp.broadcast_to(s, shape)


def alibi_bias(alibi: Alibi, q_pos, k_pos):
    """ALiBi's score bias, float32 [B, H, T, S], of queries at q_pos [B, T] over keys at k_pos
    [B or 1, S] (config.Alibi): slopes[h] * (key - query position), or Falcon-RW's bfloat16-rounded
    slopes[h] * key position times its scale (`Alibi.bf16`; softmax drops the per-query constant,
    so both are transformers' biases). Every attention path adds this to its scaled scores."""
    slopes = jnp.asarray(alibi.slopes, jnp.float32)[None, :, None, None]
    k_pos = jnp.asarray(k_pos, jnp.int32)[:, None, None, :]
    q_pos = jnp.asarray(q_pos, jnp.int32)[:, None, :, None]
    if alibi.bf16:  # transformers: slopes.bfloat16() * positions, a bfloat16 product; then / sqrt(head_dim)
        # rounded by reduce_precision (layers.rounded_to), not a cast there and back: XLA on GPUs drops such a pair of
        # casts (excess precision allowed), and the product kept its float32 bits there (test_attention_ops on an H200)
        bias = rounded_to(rounded_to(slopes, jnp.bfloat16) * k_pos.astype(jnp.float32), jnp.bfloat16) * alibi.scale
        return jnp.broadcast_to(bias, (max(bias.shape[0], q_pos.shape[0]),) + bias.shape[1:2] + q_pos.shape[2:3] + bias.shape[3:])
    return (k_pos - q_pos).astype(jnp.float32) * (slopes * alibi.scale)


def grouped(bias, kv: int):
    """A per-query-head [B, H, ...] array as [B, K, G, ...] (query head h is kv group h // G)."""
    return bias.reshape((bias.shape[0], kv, -1) + bias.shape[2:])


def first_visible(q_pos, window):
    """The first key position a query at q_pos sees under `window` (not None): a sliding window's
    q_pos - window + 1, or under chunked attention (Chunked: Llama 4) the start of its chunk."""
    if isinstance(window, Chunked):
        return q_pos - q_pos % window.size
    return q_pos - window + 1


def _blocked_core(q, k, v, q_pos, kv_len, *, scale, window, softcap, block, sinks, alibi, key_start):
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    nblk = -(-s // block)
    qg = q.reshape(b, t, kv, g, d)

    # Which key blocks (of the columns, key_start the position of each row's first) can any query here see: [lo, hi).
    seen = q_pos >= 0
    last = jnp.minimum(q_pos + 1, kv_len[:, None]) - key_start[:, None]  # one past the last visible column
    hi_key = jnp.max(jnp.where(seen, last, 0))
    hi = jnp.minimum((hi_key + block - 1) // block, nblk)
    if window is None:
        lo = jnp.int32(0)
    else:
        first = jnp.maximum(first_visible(q_pos, window) - key_start[:, None], 0)
        lo_key = jnp.min(jnp.where(seen & (last > first), first, s))
        lo = jnp.minimum(lo_key // block, hi)

    acc = jnp.zeros((b, kv, g, t, d), jnp.float32)
    if sinks is None:
        m = jnp.full((b, kv, g, t), NEG_INF, jnp.float32)
        denom = jnp.zeros((b, kv, g, t), jnp.float32)
    else:  # the sink is the first "key": its logit the running max, exp(0) = 1 the denominator, no value
        m = sink_logits(sinks, kv, (b, kv, g, t))
        denom = jnp.ones((b, kv, g, t), jnp.float32)

    def body(i, carry):
        acc, m, denom = carry
        nominal = i * block
        start = jnp.minimum(nominal, s - block)  # the last block is shifted left to end at S
        kb = lax.dynamic_slice_in_dim(k, start, block, axis=1)
        vb = lax.dynamic_slice_in_dim(v, start, block, axis=1)
        k_idx = start + jnp.arange(block, dtype=jnp.int32)
        k_pos = (key_start[:, None] + k_idx[None, :])[:, None, :]  # [B, 1, block]
        mask = (k_pos <= q_pos[:, :, None]) & (k_pos < kv_len[:, None, None])
        mask &= k_idx[None, None, :] >= nominal  # the overlap of a shifted block was done already
        if window is not None:
            mask &= k_pos >= first_visible(q_pos[:, :, None], window)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, kb, preferred_element_type=jnp.float32)
        scores = scores.astype(jnp.float32) * scale
        if softcap is not None:
            scores = jnp.tanh(scores / softcap) * softcap
        if alibi is not None:
            scores = scores + grouped(alibi_bias(alibi, q_pos, k_pos[:, 0]), kv)
        scores = jnp.where(mask[:, None, None, :, :], scores, NEG_INF)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        m_safe = jnp.where(m_new == NEG_INF, 0.0, m_new)  # nothing seen yet: keep exp() finite
        p = jnp.exp(scores - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        denom = denom * corr + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgts,bskd->bkgtd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
        acc = acc * corr[..., None] + pv.astype(jnp.float32)
        return acc, m_new, denom

    acc, m, denom = lax.fori_loop(lo, hi, body, (acc, m, denom))
    out = acc / jnp.where(denom > 0, denom, 1.0)[..., None]
    return jnp.einsum("bkgtd->btkgd", out).reshape(b, t, h, d).astype(q.dtype)


def reference_attention(q, k, v, q_pos, kv_len=None, *, scale: float, window=None, softcap=None, sinks=None, alibi=None):
    """The materialised masked reference (O(T*S) float32 scores), same mask (sinks, ALiBi) as
    `blocked_attention`; for tests and comparisons only."""
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    kv_len = jnp.full((b,), s, jnp.int32) if kv_len is None else jnp.asarray(kv_len, jnp.int32)
    k_pos = jnp.arange(s, dtype=jnp.int32)
    qp = jnp.asarray(q_pos, jnp.int32)[:, :, None]
    mask = (k_pos[None, None, :] <= qp) & (k_pos[None, None, :] < kv_len[:, None, None])
    if window is not None:
        mask &= k_pos[None, None, :] >= first_visible(qp, window)
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    if alibi is not None:
        scores = scores + grouped(alibi_bias(alibi, qp[:, :, 0], k_pos[None]), kv)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = softmax_with_sinks(scores, sinks).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


def softmax_with_sinks(scores, sinks=None):
    """Softmax over the last axis of float32 scores [B, K, G, ...]; with `sinks` [H] (H = K * G),
    each head's sink logit joins the denominator as one more column, dropped from the result
    (its weight goes to no value), as transformers' gpt-oss eager attention."""
    if sinks is None:
        return jax.nn.softmax(scores, axis=-1)
    sink = sink_logits(sinks, scores.shape[1], scores.shape[:-1] + (1,))
    return jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)[..., :-1]


# ----------------------------------------------------------------------------------------------
# cuDNN through jax's private wrapper


def cudnn_private():
    """jax's own cuDNN wrapper (private, present in jax 0.10 and 0.11): it returns the softmax
    log-sum-exp in float32, which the public jax.nn.dot_product_attention casts to the output
    dtype (bf16 is too coarse to merge two partial softmaxes)."""
    from jax._src.cudnn import fused_attention_stablehlo as fa
    return fa


# ----------------------------------------------------------------------------------------------
# Prefill


def flash_prefill(q, k, v, start=0, kv_len=None, *, scale: float, window: int | None = None,
                  softcap: float | None = None, impl: str = "blocked", k_new=None, v_new=None,
                  block: int = 1024, q_block: int | None = 2048, sinks=None, alibi: Alibi | None = None,
                  key_start=None):
    """Attention of a prefill chunk. q [B, T, H, D]: row b's queries sit at positions
    start[b] .. start[b] + T - 1; k, v [B, S, K, D]: the row's keys at positions 0 .. S - 1,
    the chunk's own keys included (written at start .. start + T - 1, so S >= start + T);
    kv_len [B]: valid keys per row (default start + T; a shorter ragged chunk passes
    start + its length, and its padding queries' outputs are garbage). `start` is a Python int
    (static) or an int array [B]. Causal (key pos <= query pos), optional sliding window
    (key pos > query pos - window), soft-capping, attention sinks (`sinks` [H], see
    `blocked_attention`) and ALiBi (`alibi`: `alibi_bias` on the scores). -> [B, T, H, D] in q.dtype.
    `key_start` [B] (None: 0): the keys are a row's positions key_start .. key_start + S - 1 instead (a windowed
    layer's pages, paged_decode.window_table); "blocked" only, every impl then runs it.

    impl:
    - "blocked": `blocked_attention` (any backend, every option), `block` / `q_block` its tiles.
    - "cudnn": cuDNN flash attention through XLA. jax 0.10/0.11 only give cuDNN a causal mask
      aligned top-left (query i sees keys <= i), its sequence lengths pad at the end, and its
      window is counted from the top-left diagonal; none offsets the diagonal. So:
        * start == 0 (static) and T == S: one call, is_causal=True (plus
          local_window_size=(window - 1, 0) for a window). Keys past kv_len are only visible to
          padding queries, so no padding mask is needed.
        * otherwise (a chunk at start > 0, dynamic start): two calls merged exactly by their
          float32 log-sum-exps: the chunk's queries over the prefix keys 0 .. start - 1 (no
          causal mask, key_value_seq_lengths=start: every prefix key is visible), and over the
          chunk's own keys (k_new, v_new [B, T, K, D]; sliced from k, v at start when not
          given) with is_causal=True, where top-left alignment is exact. No window here (the
          prefix part has no way to drop keys from the left): a window falls back to blocked.
      No soft-capping on cuDNN (falls back to blocked). 16-bit floats only, D % 8 == 0, D <= 128.
    - "cudnn_mask": one cuDNN call with the mask passed as a dense [B, 1, T, S] boolean (cuDNN
      reads it as an additive bf16 bias: O(T*S) memory, 2 bytes an entry; a comparison point).
    - "pallas_triton" / "pallas_mgpu": jax.experimental.pallas.ops.gpu.attention.mha (Triton) /
      attention_mgpu.attention (Hopper Mosaic GPU). Both have only a top-left causal mask and no
      lengths (mha's segment_ids are shared by queries and keys, so they need T == S), so they
      serve start == 0, T == S only, no window / softcap; mha needs K == H (kv heads are
      repeated), attention_mgpu needs D % 64 == 0 and T, S multiples of its tiles and takes no
      scale (q is pre-scaled in its dtype, a small rounding). Else: blocked.
    The caller chooses (jaxllm.runtime decides the platform's kernels; nothing here probes it).
    Sinks: "blocked" and "xla" only; every other impl falls back to blocked (no cuDNN or Pallas
    call here takes a sink). ALiBi: cuDNN takes it as an additive bias in q's dtype, "cudnn_mask"
    [B, H, T, S] beside its mask, "cudnn" only in its one-call square form, [1, H, T, S] (the row
    offsets of a chunk would make the prefix part's bias per row; chunks fall back to blocked, as
    Pallas does). The bias is relative (key - query position): near the diagonal, where the
    softmax weight is, it keeps bfloat16's precision (transformers' BLOOM rounds absolute ones).

    Checked on an H100 (jax 0.11.2, cuDNN 9.19, 2026-11-28): cuDNN's is_causal with T < S is
    top-left aligned (max diff 0.001 against top-left, 3.6 against the offset mask), and
    adding query/key_value_seq_lengths (PADDING_CAUSAL) does not move the diagonal either
    (3.57); the split path matched blocked to 0.0078 (bf16 rounding: blocked bf16 vs float32
    is 0.0077), a row at start 0 included, no NaN. Times, one layer, B=1, Qwen3-0.6B shape
    (H=16, K=8, D=128, bf16): T=32768 at start 0: cudnn 6.9 ms (641 TFLOP/s causal),
    pallas_triton 12.3 ms, blocked 87 ms (q_block=2048, block=1024; 159 ms untiled queries,
    block 512), pallas_mgpu failed in jax 0.11.2 on bf16 ("src had type bfloat16 and dst had
    type float16"). T=2048 chunk at start 30720: cudnn split 1.18 ms, cudnn_mask 1.84 ms, the
    materialised XLA reference 7.7 ms (4 GiB of scores), blocked 10.6 ms (block=1024).
    """
    b, t, h, d = q.shape
    s = k.shape[1]
    static_zero = isinstance(start, int) and start == 0
    start_arr = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,))
    if kv_len is None:
        kv_len = start_arr + t
    kv_len = jnp.asarray(kv_len, jnp.int32)
    q_pos = start_arr[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]

    def blocked():
        return blocked_attention(q, k, v, q_pos, kv_len, scale=scale, window=window, softcap=softcap,
                                 block=block, q_block=q_block, sinks=sinks, alibi=alibi, key_start=key_start)

    square = static_zero and t == s
    k_pos = jnp.arange(s, dtype=jnp.int32)
    if impl == "blocked" or key_start is not None or (
            sinks is not None and impl in ("cudnn", "cudnn_mask", "pallas_triton", "pallas_mgpu")):
        return blocked()
    if impl == "xla":
        return reference_attention(q, k, v, q_pos, kv_len, scale=scale, window=window, softcap=softcap, sinks=sinks,
                                   alibi=alibi)
    if impl == "cudnn_mask":
        if softcap is not None:
            return blocked()
        mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < kv_len[:, None, None])
        if window is not None:
            mask &= k_pos[None, None, :] >= first_visible(q_pos[:, :, None], window)
        bias = None if alibi is None else alibi_bias(alibi, q_pos, k_pos[None]).astype(q.dtype)
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None], scale=scale, implementation="cudnn")
    if impl in ("pallas_triton", "pallas_mgpu"):
        if not square or window is not None or softcap is not None or alibi is not None:
            return blocked()
        return _pallas_prefill(q, k, v, scale, impl)
    if impl != "cudnn":
        raise ValueError(f"unknown impl {impl!r}")
    if softcap is not None:
        return blocked()
    if isinstance(window, Chunked):  # cuDNN's windows slide
        return blocked()
    if square:
        lw = None if window is None else (window - 1, 0)
        bias = None if alibi is None else alibi_bias(alibi, k_pos[None], k_pos[None]).astype(q.dtype)  # one for every row
        return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale, is_causal=True, local_window_size=lw,
                                            implementation="cudnn")
    if window is not None or alibi is not None:
        return blocked()
    return _cudnn_chunk(q, k, v, start_arr, scale, k_new, v_new)


def _cudnn_chunk(q, k, v, start, scale, k_new=None, v_new=None):
    """cuDNN prefill of a chunk at a dynamic offset: prefix (padding mask at `start`) and chunk
    (top-left causal) in two flash calls, merged by their float32 log-sum-exps."""
    fa = cudnn_private()
    b, t, h, d = q.shape
    if k_new is None or v_new is None:
        take = jax.vmap(lambda x, s0: lax.dynamic_slice_in_dim(x, s0, t, axis=0))
        k_new, v_new = take(k, start), take(v, start)
    o2, lse2 = fa.dot_product_attention(q, k_new, v_new, scale=scale, mask_type=fa.MaskType.CAUSAL,
                                        return_residual=True)
    q_len = jnp.full((b,), t, jnp.int32)
    prefix_len = jnp.maximum(start, 1)  # a zero length is replaced, and its part weighted 0 below
    o1, lse1 = fa.dot_product_attention(q, k, v, q_seqlen=q_len, kv_seqlen=prefix_len, scale=scale,
                                        mask_type=fa.MaskType.PADDING, return_residual=True)
    # stats are [B, H, T] (cuDNN's layout whatever the input layout): -> [B, T, H, 1]
    lse1 = jnp.swapaxes(lse1.astype(jnp.float32), 1, 2)[..., None]
    lse2 = jnp.swapaxes(lse2.astype(jnp.float32), 1, 2)[..., None]
    has_prefix = (start > 0)[:, None, None, None]
    lse1 = jnp.where(has_prefix, lse1, NEG_INF)
    mx = jnp.maximum(lse1, lse2)
    w1 = jnp.where(has_prefix, jnp.exp(lse1 - mx), 0.0)
    w2 = jnp.exp(lse2 - mx)
    o1 = jnp.where(has_prefix, o1.astype(jnp.float32), 0.0)
    out = (o1 * w1 + o2.astype(jnp.float32) * w2) / (w1 + w2)
    return out.astype(q.dtype)


def _pallas_prefill(q, k, v, scale, impl, interpret: bool = False):
    b, t, h, d = q.shape
    kv = k.shape[2]
    if impl == "pallas_triton":
        from jax.experimental.pallas.ops.gpu import attention as pa
        if kv != h:
            k, v = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
        sizes = pa.BlockSizes(block_q=min(128, t), block_k=min(64, t))
        return pa.mha(q, k, v, None, sm_scale=scale, causal=True, block_sizes=sizes, interpret=interpret)
    from jax.experimental.pallas.ops.gpu import attention_mgpu as am
    config = am.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2, causal=True)
    return am.attention((q * scale).astype(q.dtype), k, v, config)
