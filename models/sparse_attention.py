"""DeepSeek Sparse Attention (DSA: DeepSeek-V3.2; GLM-5): latent attention (models/mla.py) that reads, for each
query, only the `index_topk` earlier keys a lightning indexer scores best.

The indexer (transformers' DeepseekV32Indexer) has projections of its own: index_n_heads query heads of
index_head_dim from the queries' latent (wq_b of q_a_layernorm(q_a_proj(x))), one key of index_head_dim per
token (wk, then a LayerNorm with bias, eps 1e-6); the first qk_rope_head_dim values of each are rotated by the
layer's rope (in halves for V3.2, in interleaved pairs for GLM-5: IndexerConfig.interleaved). A query's score
of a key is sum over heads h of w_h * relu(q_h . k / sqrt(index_head_dim)), its head weights w =
weights_proj(x) / sqrt(index_n_heads) (a float32 projection, as transformers keeps it), all in float32. Keys
the query may not see (later ones, padding) score -inf; the top index_topk of the rest are kept (all of them
where fewer exist, and every key where index_topk covers them: dense attention then), and attention masks the
others (`AttnSpec.keep`: the KV backends AND it into their causal mask).

The indexer's keys are cached per token beside the keys and values: a pool of one key head
[pages, page_size, 1, index_head_dim] under the same page table (ModelConfig.index_shape; the layer's cache is the
pair (LayerCache, indexer pages): mixers.layer_parts), so prefill chunks, prefix-cache hits, preemption and decode
score exactly the keys one full forward scores. The KV backends give the indexer its keys (`index_keys`) and the
mask of the key columns they read (`key_mask`): the call's own under Uncached, each row's first num_keys gathered
positions under PagedCache. The selected keys are then attended by the masked XLA form (PagedCache.attend);
docs/architecture.md says what a kernel would need.

Kolibri 1.1's indexed attention (`IndexedAttention`, IndexerConfig.by_attention) is a variant without weights or pages of
its own: the layer's cached keys (key head 0; another layer's where it shares them, ModelConfig.kv_source) scored by its
first `heads` query heads, both NVFP4-rounded, sum over heads of relu(q . k) / sqrt(head_dim) / heads. A query that sees
more than `pool` keys first narrows them to a candidate pool (the blocks of pool_block keys, counted from its first
visible key, whose rounded mean key scores best; an incomplete last block scores 0), which the layers after it that do
not choose one (`shared`) reuse (the layer's carried value, `carries`); a query that sees more than topk + sinks +
locals keys keeps its first sink_tokens and last local_tokens keys and the topk best of the pool's others (ties to the
earlier key), every key otherwise. It attends NVFP4-rounded keys and values (`AttnSpec.kv_round`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.attention import UNCACHED, Attention, Uncached
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, dense
from jaxllm.models.kv_quant import ROUNDINGS
from jaxllm.models.layers import Dense, LayerNorm
from jaxllm.models.mla import LatentAttention
from jaxllm.models.rope import Rotary, apply_rotary
from jaxllm.models.weights import WeightSpec


def top_k_keys(scores, mask, k: int):
    """bool [B, T, S]: for each query the `k` keys of the highest `scores` [B, T, S] among those `mask` lets it see
    (all of them where fewer are visible)."""
    scores = jnp.where(mask, scores, -jnp.inf)
    _, idx = jax.lax.top_k(scores, k)
    b, t = idx.shape[:2]
    keep = jnp.zeros(scores.shape, bool).at[jnp.arange(b)[:, None, None], jnp.arange(t)[None, :, None], idx].set(True)
    return keep & mask


def top_k_mask(scores, k: int):
    """bool [..., S]: the `k` highest finite `scores` of each row, ties to the lowest indices (transformers' top_k_mask,
    the radix selection of Kolibri 1.1's kernels)."""
    k = min(k, scores.shape[-1])
    kth = jax.lax.top_k(scores, k)[0][..., -1:]
    above = scores > kth
    tied = (scores == kth) & (kth > -jnp.inf)
    return above | (tied & (jnp.cumsum(tied, axis=-1) <= k - jnp.sum(above, axis=-1, keepdims=True)))


def attention_index(ix, q, keys, visible, pool=None):
    """Kolibri 1.1's selection (IndexerConfig.by_attention; the module docstring): q [B, T, H, D] the layer's queries,
    keys [B, S, D] its key head 0 over the KV backend's columns, `visible` [B, T, S] what each query may see; `pool`
    [B, T, S] the candidates a layer before chose (None: this layer chooses them). Returns (the keys each query attends,
    the pool), bool [B, T, S] each. Every query of a row counts its blocks from the row's first key any query sees
    (transformers groups queries by their own first key: the same one in causal attention over left-padded rows)."""
    rnd = ROUNDINGS[ix.rounding] if ix.rounding else (lambda x: x)
    queries = rnd(q[:, :, : ix.heads]).astype(jnp.float32)
    weight = ix.head_dim**-0.5 / ix.heads

    def score(against):  # [B, N, D] -> [B, T, N], the heads summed in transformers' order
        total = 0.0
        for h in range(ix.heads):
            total = total + jax.nn.relu(jnp.einsum("btd,bnd->btn", queries[:, :, h], against))
        return total * weight

    b, s = keys.shape[:2]
    col = jnp.arange(s)
    first = jnp.argmax(visible, axis=-1)  # [B, T]
    lengths = (s - jnp.argmax(visible[..., ::-1], axis=-1) - first) * jnp.any(visible, axis=-1)
    rel = col - first[..., None]  # [B, T, S], each key's place after the query's first
    if pool is None:
        pool = visible
        if ix.pool:
            c = ix.pool_block
            seen = jnp.any(visible, axis=1)  # [B, S]: keys no query sees (padding) count as zeros in their block's mean
            start = jnp.argmax(seen, axis=-1)[:, None]
            n = s // c + 1
            idx = start + jnp.arange(n * c)
            inside = (idx < s) & jnp.take_along_axis(seen, jnp.minimum(idx, s - 1), axis=1)
            doc = jnp.take_along_axis(keys, jnp.minimum(idx, s - 1)[..., None], axis=1).astype(jnp.float32)
            doc = jnp.where(inside[..., None], doc, 0.0)
            means = rnd(doc.reshape(b, n, c, -1).sum(axis=2) / c)
            blocks = jnp.arange(n)
            full = lengths[..., None] // c
            scores = jnp.where(blocks < full, score(means), 0.0)  # the incomplete block scores 0, later ones not at all
            scores = jnp.where(blocks >= (lengths[..., None] + c - 1) // c, -jnp.inf, scores)
            chosen = top_k_mask(scores, ix.pool // c)  # [B, T, n]
            block_of = jnp.clip((col - start) // c, 0, n - 1)  # [B, S]
            picked = jnp.take_along_axis(chosen, jnp.broadcast_to(block_of[:, None, :], visible.shape), axis=2)
            pool = jnp.where(lengths[..., None] > ix.pool, picked & (col >= start)[:, None, :] & visible, visible)
    scores = score(rnd(keys).astype(jnp.float32))
    sinks = (rel >= 0) & (rel < ix.sink_tokens)
    local = (rel >= lengths[..., None] - ix.local_tokens) & (rel < lengths[..., None])
    candidates = pool & ~sinks & (rel < lengths[..., None] - ix.local_tokens)
    chosen = top_k_mask(jnp.where(candidates, scores, -jnp.inf), ix.topk)
    budget = ix.topk + ix.local_tokens + ix.sink_tokens
    keep = jnp.where(lengths[..., None] > budget, (chosen | sinks | local) & visible, visible)
    return keep, pool


class IndexedAttention(Attention):
    """The shared attention whose sparse layers (IndexerConfig.by_attention: Kolibri 1.1) attend the keys
    `attention_index` selects from their own queries and cached keys, rounded as the indexer says; called with the
    candidate pool of the layers before (None: none yet), it returns (output, cache, the pool it used). Its other layers
    are the shared `Attention`, the pool handed through."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        ix = cfg.indexer
        self.index = ix if ix is not None and ix.sparse(layer) else None
        self.chooses_pool = self.index is not None and ix.source(layer) == layer
        if self.index is not None:
            self.spec = self.spec._replace(kv_round=ix.rounding)

    def __call__(self, x, positions, rot: Rotary | None, cache, kv=UNCACHED, pool=None):
        if self.index is None:
            return *super().__call__(x, positions, rot, cache, kv), pool
        q, k, v = self.project(x, positions, rot)
        pages = cache if self.reads_shared_kv else kv.write(cache, k, v, positions)
        keep, pool = attention_index(self.index, q, kv.keys(pages, q.dtype)[:, :, 0], kv.key_mask(positions, None),
                                     None if self.chooses_pool else pool)
        out = kv.read(q, pages, positions, self.call_spec()._replace(keep=keep), k, v)
        return self.output(out, x), None if self.reads_shared_kv else pages, pool

    def select(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED, keys=None):
        """The candidate pool this layer chooses for the queries of a full sequence x (the layer's attention input;
        `keys`: those of the layer whose keys it reads, where it reads another's)."""
        q, k, _ = self.project(x, positions, rot)
        return attention_index(self.index, q, (k if keys is None else keys)[:, :, 0], kv.mask(positions, None))[1]

    def weights(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED, keys=None, selected=None):
        """`Attention.weights` over the keys the layer selects (from `selected`, the pool of the layer before that chose
        it, where this layer chooses none)."""
        if self.index is None:
            return super().weights(x, positions, rot, kv, keys)
        q, k, _ = self.project(x, positions, rot)
        k = k if keys is None else keys
        keep, _ = attention_index(self.index, q, k[:, :, 0], kv.mask(positions, None), None if self.chooses_pool else selected)
        return self.weights_of(q, k, positions, kv, self.call_spec()._replace(keep=keep))


class Indexer(nnx.Module):
    """The lightning indexer of one layer, under transformers' names (self_attn.indexer.wq_b, ...)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        ix, e = cfg.indexer, cfg.hidden_size
        self.heads, self.head_dim, self.topk, self.interleaved, self.rope_last = ix.heads, ix.head_dim, ix.topk, ix.interleaved, ix.rope_last
        self.wq_b = Dense((cfg.mla.q_lora_rank,), (ix.heads, ix.head_dim), ("latent", "index_heads", "head_dim"), bias=False,
                          dtype=dtype, rngs=rngs)
        self.wk = Dense((e,), (ix.head_dim,), ("embed", "head_dim"), bias=False, dtype=dtype, rngs=rngs)
        self.k_norm = LayerNorm(ix.head_dim, ix.norm_eps, dtype=dtype, rngs=rngs, axes=("head_dim",))
        # float32 whatever the model's dtype (transformers' _keep_in_fp32_modules), never quantized
        self.weights_proj = Dense((e,), (ix.heads,), ("embed", "index_heads"), bias=False, dtype=jnp.float32, rngs=rngs,
                                  quantizable=False)

    def __call__(self, x, q_latent, positions, rot: Rotary | None, pages, kv):
        """The keys each query of x [B, T, E] attends (bool [B, T, S] over `kv.key_mask`'s columns; None: every key it
        may see, where index_topk covers them all) and the layer's new indexer cache (`kv.index_keys`)."""
        q = self.wq_b(q_latent)  # [B, T, heads, Di]
        k = self.k_norm(self.wk(x))[:, :, None, :]  # [B, T, 1, Di]
        if rot is not None:
            q, k = self.rotate(q, rot), self.rotate(k, rot)
        keys, pages = kv.index_keys(pages, k, positions)
        if self.topk >= keys.shape[1]:
            return None, pages
        dots = jnp.einsum("bthd,bsd->bths", q.astype(jnp.float32), keys[:, :, 0].astype(jnp.float32))
        weights = self.weights_proj(x.astype(jnp.float32)) * self.heads**-0.5
        scores = jnp.einsum("bth,bths->bts", weights, jax.nn.relu(dots * self.head_dim**-0.5))
        return top_k_keys(scores, kv.key_mask(positions, None), self.topk), pages


    def rotate(self, x, rot: Rotary):
        """x [B, T, N, index_head_dim] with its first rotary values rotated, or its last ones where `rope_last` (HY V4)."""
        if not self.rope_last:
            return apply_rotary(x, rot, self.interleaved)
        r = rot.cos.shape[-1]
        return jnp.concatenate([x[..., :-r], apply_rotary(x[..., -r:], rot, self.interleaved)], axis=-1)


class SparseLatentAttention(LatentAttention):
    """Latent attention over the keys its indexer selects; its cache the pair (LayerCache, indexer pages). A shared
    layer (GLM-5's IndexerConfig.shared) runs no indexer: it attends the keys the last layer before it that does
    selected, its cache its LayerCache alone."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.indexer = None if cfg.index_shape(layer) is None else Indexer(cfg, layer, dtype=dtype, rngs=rngs)

    def __call__(self, x, positions, rot: Rotary | None, cache, kv=UNCACHED, selected=None):
        """`Attention`'s call with the selection of the layer before (`selected`: what a shared layer attends); returns
        (output, cache, the selection it attended)."""
        pages, index = (cache, None) if cache is None or self.indexer is None else cache
        latent, q, gate = self.query_parts(x)
        q, k, v = self.project_latent(x, latent, rot, q)
        keep, index = (selected, None) if self.indexer is None else self.indexer(x, latent, positions, rot, index, kv)
        out, pages = kv(q, k, v, pages, positions, self.call_spec()._replace(keep=keep))
        out = out[..., : self.v_dim]
        if gate is not None:  # A.X-K2: the output times the sigmoid of its gate, in float32
            out = (out * jax.nn.sigmoid(gate.astype(jnp.float32))).astype(out.dtype)
        return self.o_proj(out), pages if self.indexer is None else (pages, index), keep

    def query_parts(self, x):
        """(the queries' latent, which the indexer reads; the queries, or None: q_b_proj's of the latent; an output gate
        per head and value, or None: none) of x. A.X-K2's attention takes its queries and gate from a projection of
        its own."""
        return self.q_latent(x), None, None

    def select(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED):
        """The keys each query of a full sequence x (the layer's attention input) attends, by this layer's indexer."""
        return self.indexer(x, self.q_latent(x), positions, rot, None, kv)[0]

    def weights(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED, keys=None, selected=None):
        """`Attention.weights` over the keys the layer's indexer selects (a shared layer: `selected`, its source's)."""
        latent, q, _ = self.query_parts(x)
        q, k, _ = self.project_latent(x, latent, rot, q)
        keep = selected if self.indexer is None else self.select(x, positions, rot, kv)
        return self.weights_of(q, k, positions, kv, self.call_spec()._replace(keep=keep))


class SparseLatentDecoderLayer(DecoderLayer):
    """DeepSeek's sequential layer, its attention sparse: it hands its selection on to the next layer (`carries`)."""

    attn_cls = SparseLatentAttention
    carries = True

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, selected=None):
        attn, cache, selected = self.self_attn(self.input_layernorm(x), positions, rot, cache, kv, selected)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache, selected


class SparseLatentCausalLM(CausalLM):
    """The shared decoder with sparse latent attention in every layer."""

    layer_cls = SparseLatentDecoderLayer


def sparse_weight_map(base):
    """`base`'s weight map (latent attention's, with experts) and each layer's indexer."""
    def weight_map(cfg: ModelConfig) -> list[WeightSpec]:
        specs = base(cfg)
        for i in range(cfg.num_layers):
            if cfg.index_shape(i) is None:
                continue
            hf, ours = f"model.layers.{i}.self_attn.indexer.", ("model", "layers", i, "self_attn", "indexer")
            for name in ("wq_b", "wk", "weights_proj"):
                specs += dense(f"{hf}{name}", ours + (name,), bias=False)
            specs += [WeightSpec(f"{hf}k_norm.{p}", ours + ("k_norm", p)) for p in ("weight", "bias")]
        return specs
    return weight_map


