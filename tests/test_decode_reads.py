"""What a step reads grows with what its rows can attend, not with the engine's max_len, its table width or its pool:
the widths of the gathers read off the jaxpr (as tests/test_attention_ops.py's windowed decode test), the outputs
against the masked references."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_attention_ops import _gathered_keys  # gathers' widths [B, pages, ...] read off the jaxpr

from jaxllm.models import attention_ops as ao
from jaxllm.models import paged_decode
from jaxllm.models.config import Chunked


@pytest.mark.parametrize("num_pages,whole", [(1024, True), (40, False)])
def test_cudnn_engine_buckets_decode_keys_when_the_pool_is_narrower_than_the_table(num_pages, whole):
    """cuDNN's paged call takes the whole table only from a pool of at least the table's width in pages; from a smaller
    one paged_decode falls back to gathering every row's `num_keys` keys, so a runner handing it the whole table (an
    explicit num_pages below max_len's pages: 40 pages of 16 against 4,096 positions) read 4,096 keys per row each step
    for rows of 100 positions: it buckets them to the reach instead."""
    from jaxllm.random_model import random_model
    from jaxllm.serving.runner import Runner

    model = random_model("tiny")
    runner = Runner(model, num_pages=num_pages, page_size=16, max_seqs=4, max_len=4096, chunk=4, attention="cudnn",
                    eos_width=2)
    assert runner.decode_keys(100) == (4096 if whole else 256)


def _pool(seed, n, ps, kv, d, dtype):
    """A random page pool k, v [n, ps, kv, d] and their scales (None but int8), and the keys and values it holds in float32."""
    from jaxllm.models import kv_quant

    rng = np.random.default_rng(seed)
    kp, vp = (jnp.asarray(rng.standard_normal((n, ps, kv, d)), jnp.float32) for _ in "kv")
    if dtype != "int8":
        return kp, vp, None, None
    (kp, ks), (vp, vs) = kv_quant.quantize_kv(kp, jnp.int8, jnp.float32), kv_quant.quantize_kv(vp, jnp.int8, jnp.float32)
    return kp, vp, ks, vs


def _full(pool, scales, table):
    """Each row's whole table of keys (or values) [B, P * ps, K, D] in float32."""
    from jaxllm.models import kv_quant

    keys = ao.gather_pages(pool, table)
    return keys if scales is None else kv_quant.dequantize_kv(keys, ao.gather_pages(scales, table), jnp.float32)


@pytest.mark.parametrize("window", [6, Chunked(8)])
@pytest.mark.parametrize("pool_dtype", ["float32", "int8"])
def test_windowed_prefill_and_verify_read_only_their_windows(window, pool_dtype):
    """A windowed layer's prefill chunk (and a speculative verify step, the same path: T queries per row) gathers the
    pages its queries' windows touch, ceil((span + T - 1) / ps) + 1, not every key before them (num_keys: the whole
    prompt's bucket, each chunk of a long prompt read all of it); the same output as the materialised reference
    over the whole table, rows at starts 0, 22 and 41 with 8, 5 and 3 real queries of a chunk of 8."""
    from jaxllm.models.attention import AttnSpec, LayerCache, PagedCache

    b, h, kv, d, ps, p, t = 3, 4, 2, 8, 4, 16, 8
    kp, vp, ks, vs = _pool(41, 60, ps, kv, d, pool_dtype)
    rng = np.random.default_rng(42)
    table = jnp.asarray(rng.permutation(60)[: b * p].reshape(b, p), jnp.int32)
    start, real = jnp.asarray([0, 22, 41], jnp.int32), jnp.asarray([8, 5, 3], jnp.int32)
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    valid = jnp.arange(t)[None, :] < real[:, None]
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    ref = ao.reference_attention(q, _full(kp, ks, table), _full(vp, vs, table), positions, start + real, scale=0.3,
                                 window=window)

    def prefill(q, kp, vp, ks, vs, table):
        cache = PagedCache(table, valid, p * ps, "xla")
        return cache.attend(q, None, None, LayerCache(kp, vp, ks, vs), positions, AttnSpec(0.3, window))

    out = prefill(q, kp, vp, ks, vs, table)
    keep = np.asarray(valid)  # padding queries' outputs are garbage
    np.testing.assert_allclose(np.asarray(out)[keep], np.asarray(ref)[keep], atol=1e-5, rtol=1e-5)
    span = window.size if isinstance(window, Chunked) else window
    read = _gathered_keys(prefill, q, kp, vp, ks, vs, table)
    assert read and max(read) == -(-(span + t - 1) // ps) + 1 < p, read  # pages


@pytest.mark.parametrize("window", [6, Chunked(8)])
def test_windowed_cascade_decode_reads_only_the_window(window):
    """A windowed layer's cascade decode (rows sharing a prompt's pages) reads the pages its rows' windows touch of
    their own keys and of the shared ones, ceil(span / ps) + 1 each, not all the shared keys and every row's own
    (the shared prefix's and the longest suffix's buckets, whatever the window): the same output as the materialised
    reference over each row's whole table; three rows share 6 pages, a fourth reads its own table."""
    b, h, kv, d, ps, p = 4, 4, 2, 8, 4, 16
    kp, vp, _, _ = _pool(51, 80, ps, kv, d, "float32")
    rng = np.random.default_rng(52)
    ids = rng.permutation(80)
    shared = ids[:6]
    own = ids[6 : 6 + b * p].reshape(b, p)
    table = np.concatenate([np.broadcast_to(shared, (b, 6)), own[:, : p - 6]], axis=1)
    table[3] = own[3]
    table = jnp.asarray(table, jnp.int32)
    lengths, offsets = jnp.asarray([30, 41, 52, 20], jnp.int32), jnp.asarray([24, 24, 24, 0], jnp.int32)
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    ref = ao.reference_attention(q, _full(kp, None, table), _full(vp, None, table), lengths[:, None] - 1, lengths,
                                 scale=0.3, window=window)

    def cascade(q, kp, vp, table, lengths):
        return paged_decode.cascade_decode_attention(q, kp, vp, table, lengths, jnp.asarray(shared, jnp.int32), offsets,
                                                     scale=0.3, shared_keys=24, suffix_keys=32, window=window)

    np.testing.assert_allclose(np.asarray(cascade(q, kp, vp, table, lengths)), np.asarray(ref), atol=1e-5, rtol=1e-5)
    span = window.size if isinstance(window, Chunked) else window
    read = _gathered_keys(cascade, q, kp, vp, table, lengths)
    assert read and max(read) == -(-span // ps) + 1, read
