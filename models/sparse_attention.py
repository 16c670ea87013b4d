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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.attention import UNCACHED, Uncached
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, dense
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


