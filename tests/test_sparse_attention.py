"""DeepSeek Sparse Attention (models/sparse_attention.py) beyond the per-architecture parity and engine tests: the
top-k selection's edges, the indexer keys' share of the pool, and their pages on a mesh; Kolibri 1.1's weightless
indexer on padded rows."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from jaxllm import loader, sharding
from jaxllm.inspect import summary
from jaxllm.models import registry
from jaxllm.models.attention import index_cache_bytes, kv_cache_bytes
from jaxllm.models.mixers import index_shapes
from jaxllm.models.sparse_attention import top_k_keys
from jaxllm.serving import memory
from jaxllm.serving.steps import steps

ARCH = "DeepseekV32ForCausalLM"


def test_top_k_keeps_k_visible_keys_or_all_of_them():
    """Each query keeps its k best visible keys, never a hidden one (a later key, padding), and every visible key where
    fewer than k are (the first queries of a sequence), as transformers' top-k over -inf-masked scores leaves them."""
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 6)), jnp.float32)
    mask = jnp.tril(jnp.ones((6, 6), bool))[None] & (jnp.arange(6) != 2)  # causal, key 2 padding
    keep = np.asarray(top_k_keys(scores, mask, 3))
    assert not (keep & ~np.asarray(mask)).any()
    for t in range(6):
        visible = np.flatnonzero(np.asarray(mask)[0, t])
        best = visible[np.argsort(-np.asarray(scores)[0, t, visible])][:3]
        assert sorted(np.flatnonzero(keep[0, t])) == sorted(best)


def test_the_pool_counts_the_indexer_keys_whole_on_each_tp_device(monkeypatch):
    """A page holds each layer's indexer keys (one head of index_head_dim, the model's dtype) beside its keys and values;
    the pages split over tp by kv heads, the indexer keys stay whole on each device: the pool a device's memory holds
    shrinks by their bytes there, not by a tp-th of them."""
    arch = registry.get(ARCH)
    cfg = arch.config(dict(arch.tiny_config))
    assert "sparse attention: top 5 keys by an indexer of 8 heads x 16" in summary(cfg)  # what inspect says of it
    index = index_cache_bytes(cfg, 16, np.float32)
    assert index == 16 * 4 * 3 * 16  # 16 tokens x float32 x 3 layers x index_head_dim
    assert kv_cache_bytes(cfg, 16, np.float32) == kv_cache_bytes(cfg.replace(indexer=None), 16, np.float32) + index

    class Device:
        def memory_stats(self):
            return {"bytes_limit": 4 << 30, "bytes_in_use": 0}

    monkeypatch.setattr(memory.jax, "local_devices", lambda: [Device()])
    sizes = dict(page_size=16, fraction=0.9, num_pages=None, max_len=128, budget=64, dp=1, batch_size=2)
    mesh = SimpleNamespace(shape={"tp": 2})
    sparse, dense = (memory.pool_size(SimpleNamespace(config=c, dtype=np.float32, mesh=mesh), None, **sizes)
                     for c in (cfg, cfg.replace(indexer=None)))
    kv = kv_cache_bytes(cfg.replace(indexer=None), 16, np.float32)
    assert (sparse + 2) * (kv / 2 + index) == pytest.approx((dense + 2) * kv / 2, rel=1e-4)


def test_indexer_pages_split_over_dp_and_stay_whole_over_tp():
    """On dp=2,tp=2 (simulated devices) each layer's cache in the engine's state is its KV pages and its indexer key
    pages [pool, page_size, 1, index_head_dim]: pages over dp with the pool (each shard its own range), whole over tp
    (one key head). (Writing and reading them runs the KV pages' code: tests/test_data_parallel.py.)"""
    arch = registry.get(ARCH)
    cfg = arch.config(dict(arch.tiny_config))
    mesh = sharding.make_mesh("dp=2,tp=2", devices=jax.devices()[:4])
    graphdef, _ = loader.abstract_model(cfg, arch, np.float32, mesh=mesh)
    kv_shapes = tuple(map(cfg.kv_shape, range(cfg.num_layers)))
    made = steps(graphdef, 4, "xla", mesh, kv_shapes, indexed=index_shapes(cfg))
    state = made.zeros(2, 10, 4, kv_shapes, cfg.vocab_size, 1, ("float32", None), (), 0, "float32", index_shapes(cfg))
    for pages, index in state.cache:
        assert index.shape == (10, 4, 1, 16)
        assert tuple(index.sharding.spec) == ("dp", None, None, None) and pages.k.sharding.spec[:3] == ("dp", None, "tp")


def test_kolibri_selection_matches_transformers_on_padded_rows():
    """Kolibri 1.1's weightless indexer (models/sparse_attention.attention_index) against transformers' Kolibri1_1Indexer
    on left-padded rows (which the per-architecture tests do not run): the pool an index layer chooses, the keys a later
    layer selects from it, with ties (keys repeated) and the NVFP4 rounding (kv_quant.fake_nvfp4) of extreme values."""
    import torch
    from transformers.models.kolibri1_1.modeling_kolibri1_1 import Kolibri1_1Indexer, nvfp4_fake_quantize

    from jaxllm.models.kv_quant import fake_nvfp4
    from jaxllm.models.sparse_attention import attention_index

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64)).astype(np.float32) * np.array([1e-4, 1, 30, 1e3], np.float32)[:, None]
    np.testing.assert_array_equal(np.asarray(fake_nvfp4(jnp.asarray(x))), nvfp4_fake_quantize(torch.as_tensor(x)).numpy())
    arch = registry.get("Kolibri1_1ForCausalLM")
    cfg = arch.config(dict(arch.tiny_config))
    hf = reference.hf_config("Kolibri1_1ForCausalLM")
    b, t, h, d = 2, 30, cfg.num_heads, cfg.head_dim
    q = rng.standard_normal((b, t, h, d)).astype(np.float32)
    k = rng.standard_normal((b, t, 1, d)).astype(np.float32)
    k[:, 20:24] = k[:, 12:16]  # equal scores: ties go to the earlier key
    pad = np.arange(t)[None] >= np.array([[0], [5]])  # row 1 left-padded by 5
    visible = np.tril(np.ones((t, t), bool))[None] & pad[:, None, :] & pad[:, :, None]
    pool, keep = None, None
    for layer in (0, 3):  # an index layer, then a layer reselecting from its pool
        theirs_keep, theirs_pool = Kolibri1_1Indexer(hf, layer)(torch.as_tensor(q).transpose(1, 2), torch.as_tensor(k).transpose(1, 2),
                                                               torch.as_tensor(visible)[:, None], pool)
        keep, ours_pool = attention_index(cfg.indexer, jnp.asarray(q), jnp.asarray(k[:, :, 0]), jnp.asarray(visible),
                                          None if layer == 0 else jnp.asarray(pool.numpy()))
        np.testing.assert_array_equal(np.asarray(ours_pool), theirs_pool.numpy())
        np.testing.assert_array_equal(np.asarray(keep), theirs_keep[:, 0].numpy())
        pool = theirs_pool
        assert (np.asarray(ours_pool).sum(-1) < visible.sum(-1)).any()  # the pool narrows what some queries see
    assert (np.asarray(keep).sum(-1) < visible.sum(-1)).any()  # some queries attend fewer keys than they see
