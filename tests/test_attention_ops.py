"""models/attention_ops.py and models/paged_decode.py on the CPU: blocked (online-softmax)
attention, page gathers, paged decode and the non-cuDNN prefill paths against the materialised masked reference (the same
mask and softmax as models/layers.py's attention_mask / attention_probs / attend). The cuDNN
paths need an NVIDIA GPU (benchmarks/attention_probe.py checks them there); the Pallas GPU
kernels run here in interpret mode."""
import functools
import zlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxllm.models import attention, kv_quant, paged_decode, paged_kernel
from jaxllm.models import attention_ops as ao
from jaxllm.models.config import Alibi, Chunked


def _masked_reference(q, k, v, q_pos, kv_len, scale, window=None, softcap=None, sinks=None, alibi=None):
    """layers.attention_mask & key < kv_len, then layers.attention_probs / attend, in numpy
    float64 (independent of the module under test). `sinks` [H]: one more score column per head
    (transformers' gpt-oss eager attention), its softmax weight dropped. `alibi` (config.Alibi):
    slope * (key - query position) on each head's scores, or Falcon-RW's bfloat16 products of
    slope and key position times its scale (transformers' build_alibi_tensor)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    qp = np.asarray(q_pos)[:, :, None]
    kp = np.arange(s)[None, None, :]
    mask = (kp <= qp) & (kp < np.asarray(kv_len)[:, None, None])
    if isinstance(window, Chunked):  # the query's own chunk
        mask &= kp // window.size == qp // window.size
    elif window is not None:
        mask &= kp > qp - window
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = np.einsum("btkgd,bskd->bkgts", qg, k) * scale
    if softcap is not None:
        scores = np.tanh(scores / softcap) * softcap
    if alibi is not None:
        slopes = np.asarray(alibi.slopes, np.float64).reshape(1, kv, h // kv, 1, 1)
        if alibi.bf16:
            slopes = slopes.astype(ml_dtypes.bfloat16).astype(np.float64)
            scores = scores + (slopes * kp[:, None, None]).astype(ml_dtypes.bfloat16).astype(np.float64) * alibi.scale
        else:
            scores = scores + slopes * alibi.scale * (kp - qp)[:, None, None]
    scores = np.where(mask[:, None, None], scores, np.finfo(np.float32).min)
    if sinks is not None:
        sink = np.broadcast_to(np.asarray(sinks, np.float64).reshape(1, kv, h // kv, 1, 1), scores.shape[:-1] + (1,))
        scores = np.concatenate([scores, sink], axis=-1)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    if sinks is not None:
        probs = probs[..., :-1]
    return np.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def _qkv(seed, b, t, s, h, kv, d, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, s, kv, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, s, kv, d)), dtype)
    return q, k, v


CASES = [  # name, start per row, chunk T, S, window, softcap, block, q_block, groups
    ("causal_from_0", [0, 0], 12, 12, None, None, 4, None, 1),
    ("offset_chunk", [9, 9], 5, 16, None, None, 4, None, 2),
    ("ragged_rows", [0, 7], 6, 16, None, None, 8, None, 2),
    ("sliding_window", [3, 10], 6, 16, 4, None, 4, None, 1),
    ("chunked", [3, 10], 6, 16, Chunked(4), None, 4, None, 2),
    ("softcap", [2, 5], 6, 12, None, 5.0, 4, None, 2),
    ("block_not_dividing_S", [4, 1], 7, 13, None, None, 5, None, 2),
    ("query_blocks", [0, 3], 9, 13, 5, 7.0, 3, 4, 2),
    ("block_bigger_than_S", [1, 2], 4, 7, None, None, 512, None, 1),
]


@pytest.mark.parametrize("name,start,t,s,window,softcap,block,q_block,groups", CASES, ids=[c[0] for c in CASES])
def test_blocked_matches_masked_reference(name, start, t, s, window, softcap, block, q_block, groups):
    kv, d = 2, 8
    h = kv * groups
    q, k, v = _qkv(zlib.crc32(name.encode()) % 1000, 2, t, s, h, kv, d)
    start = np.asarray(start)
    q_pos = start[:, None] + np.arange(t)[None, :]
    kv_len = start + t - np.array([0, 1])  # ragged: row 1 is one key short of its chunk
    out = ao.blocked_attention(q, k, v, jnp.asarray(q_pos), jnp.asarray(kv_len), scale=0.35, window=window,
                               softcap=softcap, block=block, q_block=q_block)
    ref = _masked_reference(q, k, v, q_pos, kv_len, 0.35, window, softcap)
    assert out.shape == q.shape and out.dtype == q.dtype
    # row 1's last query lies past its kv_len but still sees its earlier keys: compare all
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
    # and the module's own materialised reference agrees
    ref2 = ao.reference_attention(q, k, v, jnp.asarray(q_pos), jnp.asarray(kv_len), scale=0.35, window=window,
                                  softcap=softcap)
    np.testing.assert_allclose(np.asarray(ref2), ref, atol=2e-6, rtol=1e-5)


def test_blocked_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(1, 2, 4, 8, 4, 2, 8)
    q_pos = jnp.asarray([[0, 1, 2, 3], [-1, -1, 5, 6]])
    kv_len = jnp.asarray([0, 8])  # row 0 sees nothing; row 1's first two queries see nothing
    out = np.asarray(ao.blocked_attention(q, k, v, q_pos, kv_len, scale=0.3, block=3))
    assert np.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :2] == 0).all()
    ref = _masked_reference(q, k, v, np.asarray(q_pos), np.asarray(kv_len), 0.3)
    np.testing.assert_allclose(out[1, 2:], ref[1, 2:], atol=2e-6, rtol=1e-5)


def test_blocked_bf16_close_to_reference():
    q, k, v = _qkv(2, 1, 16, 16, 4, 2, 16, jnp.bfloat16)
    pos = jnp.arange(16)[None]
    out = ao.blocked_attention(q, k, v, pos, None, scale=0.25, block=4)
    assert out.dtype == jnp.bfloat16
    ref = _masked_reference(q, k, v, np.asarray(pos), np.array([16]), 0.25)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)


def _pool(seed, n, ps, kv, d):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((n, ps, kv, d)), jnp.float32),
            jnp.asarray(rng.standard_normal((n, ps, kv, d)), jnp.float32))


def test_gather_pages_matches_manual_gather():
    kp, _ = _pool(3, 11, 4, 2, 8)
    table = np.array([[3, 0, 7], [10, 2, 5]])
    out = np.asarray(ao.gather_pages(kp, jnp.asarray(table, jnp.int32)))
    kp = np.asarray(kp)
    manual = np.stack([np.concatenate([kp[p] for p in row], axis=0) for row in table])
    np.testing.assert_array_equal(out, manual)
    part = np.asarray(ao.gather_pages(kp, jnp.asarray(table, jnp.int32), num_keys=6))
    np.testing.assert_array_equal(part, manual[:, :6])


@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 4.0), (Chunked(6), None)])
def test_paged_decode_xla_matches_reference(window, softcap):
    b, h, kv, d, ps, p = 3, 4, 2, 8, 4, 5
    kp, vp = _pool(4, 17, ps, kv, d)
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.permutation(17)[: b * p].reshape(b, p), jnp.int32)
    lengths = jnp.asarray([1, 9, 20], jnp.int32)
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    out = paged_decode.paged_decode_attention(q, kp, vp, table, lengths, scale=0.3, impl="xla", window=window, softcap=softcap)
    keys, values = ao.gather_pages(kp, table), ao.gather_pages(vp, table)
    ref = _masked_reference(q, keys, values, np.asarray(lengths)[:, None] - 1, np.asarray(lengths), 0.3, window,
                            softcap)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
    # on the CPU the default picks the XLA path, and num_keys bounds the keys read
    out2 = paged_decode.paged_decode_attention(q, kp, vp, table, lengths, scale=0.3, window=window, softcap=softcap,
                                     num_keys=20)
    np.testing.assert_allclose(np.asarray(out2), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("window,softcap", [(None, None), (6, None), (None, 4.0)])
def test_cascade_decode_matches_reference(window, softcap):
    """Rows whose tables begin with the same pages: shared keys read once, each row's own after
    them, merged by log-sum-exps; a row that does not share (offset 0), one that reads a single
    key (inactive) and one whose shared keys are all it has before its own position, against the
    masked reference over each row's whole table."""
    b, h, kv, d, ps = 5, 4, 2, 8, 4
    kp, vp = _pool(8, 31, ps, kv, d)
    rng = np.random.default_rng(9)
    ids = rng.permutation(31)
    shared = ids[:3]  # three pages (12 keys) that rows 0, 1, 2 and 4 begin with
    own = ids[3:].reshape(-1, 1)
    table = np.stack([np.concatenate([shared, own[i * 3 : i * 3 + 3, 0]]) for i in range(b)])
    table[3] = ids[15:21]  # row 3 shares nothing
    offsets = np.array([12, 12, 12, 0, 12], np.int32)
    lengths = np.array([19, 24, 13, 10, 1], np.int32)
    offsets[4] = 0  # a row reading one key (inactive): the engine gives it offset 0
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    shared_table = jnp.asarray(np.concatenate([shared, [30]]), jnp.int32)  # padded past the shared pages
    out = paged_decode.cascade_decode_attention(q, kp, vp, jnp.asarray(table, jnp.int32), jnp.asarray(lengths),
                                                shared_table, jnp.asarray(offsets), scale=0.3, shared_keys=16,
                                                suffix_keys=16, window=window, softcap=softcap)
    tab = jnp.asarray(table, jnp.int32)
    keys, values = ao.gather_pages(kp, tab), ao.gather_pages(vp, tab)
    ref = _masked_reference(q, keys, values, lengths[:, None] - 1, lengths, 0.3, window, softcap)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


KERNEL_CASES = {  # pool, window, softcap, sinks, rotated: each row's table 6 pages of 4 wide, read in blocks of 2 pages
    "float32": ("float32", None, None, False, False),
    "int8-window-softcap": ("int8", 6, 30.0, False, False),
    "float8-chunked-sinks": ("float8_e4m3fn", Chunked(8), None, True, False),
    "int8-rotated-window-sinks": ("int8", 6, None, True, True),  # an int8 cache's: q turned in, the output out
}


@pytest.mark.parametrize("prefetch,programs", [(0, 24), (1, 8), (2, 8)])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_pallas_pool_kernel_interpret(case, prefetch, programs, monkeypatch):
    """models/paged_kernel.py (our Pallas decode kernel, reading the pool as stored) in interpret mode against the
    masked reference over the dequantized keys: rows of 1 key to the whole table, under a window or chunks (the
    kernel reads window_table's pages), soft-capping and sinks; the table cut into splits whose later ones are empty
    for short rows; prefetch: blocks loaded ahead of the one computed, over one split of 3 blocks. "rotated": the pool
    holds kv_quant.rotate's turned keys and values, the kernel turns q and its output (the reference: by products)."""
    pool, window, softcap, with_sinks, rotated = KERNEL_CASES[case]
    # blocks of 2 pages; programs 24: 3 splits of a 6-page table (2 of a window's 3), 8: one split of 3 blocks
    monkeypatch.setattr(paged_kernel, "pool_decode", functools.partial(paged_kernel.pool_decode, pages=2,
                                                                       programs=programs, prefetch=prefetch))
    b, h, kv, d, ps, p = 4, 6, 2, 16, 4, 6
    kp, vp = _pool(6, 30, ps, kv, d)
    rng = np.random.default_rng(7)
    table = jnp.asarray(rng.permutation(30)[: b * p].reshape(b, p), jnp.int32)
    lengths = jnp.asarray([1, 9, 24, 17], jnp.int32)
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    sinks = jnp.asarray(rng.standard_normal(h), jnp.float32) if with_sinks else None
    ks = vs = None
    if pool != "float32":
        (kp, ks), (vp, vs) = (kv_quant.quantize_kv(x, jnp.dtype(pool), jnp.float32) for x in (kp, vp))
    keys, values = (kv_quant.dequantize_kv(ao.gather_pages(x, table), None if sc is None else ao.gather_pages(sc, table),
                                           jnp.float32) for x, sc in ((kp, ks), (vp, vs)))
    turn = kv_quant.rotate if rotated else (lambda x: x)
    ref = turn(jnp.asarray(_masked_reference(turn(q), keys, values, np.asarray(lengths)[:, None] - 1, np.asarray(lengths),
                                             0.3, window, softcap, sinks)))
    out = paged_decode.paged_decode_attention(q, kp, vp, table, lengths, scale=0.3, impl="pallas", window=window,
                                              softcap=softcap, k_scales=ks, v_scales=vs, sinks=sinks, interpret=True,
                                              rotated=rotated)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("start", [0, 6])
def test_flash_prefill_blocked_path(start):
    b, t, s, h, kv, d = 2, 5, 16, 4, 2, 8
    q, k, v = _qkv(8 + start, b, t, s, h, kv, d)
    st = jnp.asarray([start, start + 2], jnp.int32)
    out = ao.flash_prefill(q, k, v, st, scale=0.3, block=4)  # CPU: no cuDNN -> blocked
    q_pos = np.asarray(st)[:, None] + np.arange(t)
    ref = _masked_reference(q, k, v, q_pos, np.asarray(st) + t, 0.3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
    xla = ao.flash_prefill(q, k, v, st, scale=0.3, impl="xla")
    np.testing.assert_allclose(np.asarray(xla), ref, atol=2e-6, rtol=1e-5)


def test_flash_prefill_static_start_window_softcap():
    q, k, v = _qkv(9, 1, 12, 12, 4, 2, 8)
    out = ao.flash_prefill(q, k, v, 0, scale=0.3, window=4, softcap=6.0, block=5, q_block=4)
    ref = _masked_reference(q, k, v, np.arange(12)[None], np.array([12]), 0.3, 4, 6.0)
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


def test_pallas_triton_prefill_interpret():
    """jax.experimental.pallas.ops.gpu.attention.mha (top-left causal, start 0, T == S) in
    interpret mode; attention_mgpu (Mosaic GPU) has no interpret mode here: untested on CPU."""
    q, k, v = _qkv(10, 1, 16, 16, 4, 2, 16)
    out = ao._pallas_prefill(q, k, v, 0.3, "pallas_triton", interpret=True)
    ref = _masked_reference(q, k, v, np.arange(16)[None], np.array([16]), 0.3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Attention sinks (gpt-oss): a logit per query head in every softmax's denominator, on every path

SINKS = jnp.asarray([0.5, -1.0, 2.0, 0.0], jnp.float32)  # 4 query heads; large enough to matter


def test_sinks_blocked_reference_and_prefill_paths():
    """Blocked (key blocks, query blocks, a window; whole, without one), the materialised reference
    and flash_prefill (cuDNN, which takes no sink, falls back to the blocked path)."""
    q, k, v = _qkv(11, 2, 6, 13, 4, 2, 8)
    start = np.array([0, 7])
    q_pos, kv_len = start[:, None] + np.arange(6), start + 6
    for window in (None, 4):
        ref = _masked_reference(q, k, v, q_pos, kv_len, 0.3, window, None, SINKS)
        plain = _masked_reference(q, k, v, q_pos, kv_len, 0.3, window)
        assert np.abs(ref - plain).max() > 0.05  # the sinks change the output
        outs = [ao.reference_attention(q, k, v, jnp.asarray(q_pos), jnp.asarray(kv_len), scale=0.3, window=window, sinks=SINKS)]
        outs += [ao.flash_prefill(q, k, v, jnp.asarray(start, jnp.int32), scale=0.3, window=window, impl=impl, block=4,
                                  q_block=3 if window else None, sinks=SINKS) for impl in ("blocked", "cudnn")]
        for out in outs:
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


def test_sinks_masked_attention_of_the_module():
    """models/attention.py's own forms (attention_probs / attend, and the one-query form batch-1
    decode takes) with sinks: the weights sum below 1, the output is the reference's."""
    q, k, v = _qkv(12, 1, 5, 5, 4, 2, 8)
    pos = jnp.arange(5)[None]
    mask = attention.attention_mask(pos, pos, None)
    ref = _masked_reference(q, k, v, np.asarray(pos), np.array([5]), 0.3, sinks=SINKS)
    np.testing.assert_allclose(np.asarray(attention.attend(q, k, v, mask, 0.3, sinks=SINKS)), ref, atol=2e-6, rtol=1e-5)
    probs = np.asarray(attention.attention_probs(q, k, mask, 0.3, sinks=SINKS))
    assert (probs.sum(-1) < 1 - 1e-3).all()
    one = attention.attend(q[:, 4:], k, v, mask[:, 4:], 0.3, sinks=SINKS)  # _attend_one
    np.testing.assert_allclose(np.asarray(one), ref[:, 4:], atol=2e-6, rtol=1e-5)


def test_sinks_send_the_cudnn_backend_to_the_sink_paths(monkeypatch):
    """The engine's KV backend with impl "cudnn" (what NVIDIA GPUs run) on a 16-bit layer with
    sinks: cuDNN's kernels would fit the layer but take no sink, so prefill takes the blocked form
    and decode our Pallas kernel (which joins the sinks after its splits' merge; in interpret mode
    here), and both give the reference's output."""
    kernel = paged_kernel.pool_decode
    monkeypatch.setattr(paged_kernel, "pool_decode", lambda *a, **kw: kernel(*a, **{**kw, "interpret": True}))
    b, h, kv, d, ps, t = 2, 4, 2, 16, 4, 6
    spec = attention.AttnSpec(0.25, None, None, SINKS)
    q, k, v = _qkv(15, b, t + 1, t + 1, h, kv, d, jnp.bfloat16)
    assert attention.cudnn_decode_fits(q, spec._replace(sinks=None)) and not attention.cudnn_decode_fits(q, spec)
    table = jnp.asarray([[0, 1], [2, 3]], jnp.int32)
    outs = {}
    for impl in ("cudnn", "xla"):
        cache = attention.LayerCache(*(jnp.zeros((5, ps, kv, d), jnp.bfloat16) for _ in range(2)))
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        first, cache = attention.PagedCache(table, jnp.ones((b, t), bool), 8, impl)(q[:, :t], k[:, :t], v[:, :t], cache, pos, spec)
        step, _ = attention.PagedCache(table, jnp.ones((b, 1), bool), 8, impl)(q[:, t:], k[:, t:], v[:, t:], cache,
                                                                                jnp.full((b, 1), t), spec)
        outs[impl] = np.asarray(jnp.concatenate([first, step], axis=1), np.float32)
    np.testing.assert_array_equal(outs["cudnn"][:, :t], outs["xla"][:, :t])  # the same blocked prefill
    np.testing.assert_allclose(outs["cudnn"][:, t:], outs["xla"][:, t:], atol=1e-2)  # bf16 outputs: one rounding apart
    ref = _masked_reference(q, k, v, np.broadcast_to(np.arange(t + 1), (b, t + 1)), np.full(b, t + 1), 0.25, sinks=SINKS)
    np.testing.assert_allclose(outs["cudnn"], ref, atol=3e-2)


# ----------------------------------------------------------------------------------------------
# ALiBi (BLOOM, MPT, Falcon-RW): a per-head linear bias on the scores, on every path

ALIBIS = {"relative": Alibi((0.5, 0.3, 0.125, 0.07)),  # BLOOM's and MPT's: slope * (key - query)
          "falcon_bf16": Alibi((0.59, 0.35, 0.125, 0.07), bf16=True, scale=8 ** -0.5)}  # rounded products of key positions


@pytest.mark.parametrize("form", sorted(ALIBIS))
def test_alibi_blocked_reference_and_prefill_paths(form):
    """Blocked (key blocks, query blocks, a window), the materialised reference and flash_prefill
    (a chunk at an offset: cuDNN's split form and Pallas fall back to blocked)."""
    alibi = ALIBIS[form]
    q, k, v = _qkv(16, 2, 6, 30, 4, 2, 8)
    start = np.array([0, 23])
    q_pos, kv_len = start[:, None] + np.arange(6), start + 6
    for window in (None, 4):
        ref = _masked_reference(q, k, v, q_pos, kv_len, 0.3, window, alibi=alibi)
        assert np.abs(ref - _masked_reference(q, k, v, q_pos, kv_len, 0.3, window)).max() > 0.05  # the bias matters
        outs = [ao.reference_attention(q, k, v, jnp.asarray(q_pos), jnp.asarray(kv_len), scale=0.3, window=window, alibi=alibi)]
        outs += [ao.flash_prefill(q, k, v, jnp.asarray(start, jnp.int32), scale=0.3, window=window, impl=impl, block=4,
                                  q_block=3 if window else None, alibi=alibi) for impl in ("blocked", "xla", "cudnn", "pallas_triton")]
        for out in outs:
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


def test_alibi_cudnn_bias_forms(monkeypatch):
    """The bias flash_prefill hands cuDNN (the square one-call form, [1, H, T, S], with and without
    a window; "cudnn_mask"'s [B, H, T, S] beside its mask), through the same call with jax's XLA
    implementation (cuDNN itself needs an NVIDIA GPU)."""
    call = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, implementation=None, **kw: call(*a, implementation="xla", **kw))
    alibi = ALIBIS["relative"]
    q, k, v = _qkv(17, 2, 12, 12, 4, 2, 8)
    q_pos = np.broadcast_to(np.arange(12), (2, 12))
    for window in (None, 5):
        ref = _masked_reference(q, k, v, q_pos, np.full(2, 12), 0.3, window, alibi=alibi)
        for impl in ("cudnn", "cudnn_mask"):
            out = ao.flash_prefill(q, k, v, 0, scale=0.3, window=window, impl=impl, alibi=alibi)
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("form", sorted(ALIBIS))
def test_alibi_masked_attention_of_the_module(form):
    """models/attention.py's own forms (attention_probs / attend, and the one-query form batch-1
    decode takes) with the spec's ALiBi bias (score_bias)."""
    alibi = ALIBIS[form]
    q, k, v = _qkv(18, 1, 5, 5, 4, 2, 8)
    pos = jnp.arange(5)[None]
    mask, bias = attention.attention_mask(pos, pos, None), attention.score_bias(attention.AttnSpec(0.3, alibi=alibi), pos, pos)
    ref = _masked_reference(q, k, v, np.asarray(pos), np.array([5]), 0.3, alibi=alibi)
    np.testing.assert_allclose(np.asarray(attention.attend(q, k, v, mask, 0.3, bias=bias)), ref, atol=2e-6, rtol=1e-5)
    one = attention.attend(q[:, 4:], k, v, mask[:, 4:], 0.3, bias=bias[:, :, 4:])  # _attend_one
    np.testing.assert_allclose(np.asarray(one), ref[:, 4:], atol=2e-6, rtol=1e-5)


OPTIONS = {"sinks": dict(sinks=SINKS), **{f"alibi-{form}": dict(alibi=alibi) for form, alibi in ALIBIS.items()}}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_sinks_and_alibi_paged_and_cascade_decode(option):
    """Paged decode (XLA form; cuDNN choices fall back to it with sinks or ALiBi, Pallas's with ALiBi), an
    int8 pool, and cascade decode (shared pages read once, each part biased at its keys'
    positions, the sinks joined after the merge) against the masked reference over each row's
    whole table."""
    kw = OPTIONS[option]
    b, h, kv, d, ps = 4, 4, 2, 8, 4
    kp, vp = _pool(13, 25, ps, kv, d)
    rng = np.random.default_rng(14)
    ids = rng.permutation(25)
    shared = ids[:2]  # rows 0, 1, 3 begin with these two pages
    table = np.stack([np.concatenate([shared, ids[2 + 3 * i : 5 + 3 * i]]) for i in range(b)])
    table[2] = ids[14:19]  # row 2 shares nothing
    offsets = np.array([8, 8, 0, 8], np.int32)
    lengths = jnp.asarray([13, 20, 9, 8], jnp.int32)
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    tab = jnp.asarray(table, jnp.int32)
    keys, values = ao.gather_pages(kp, tab), ao.gather_pages(vp, tab)
    last = np.asarray(lengths)[:, None] - 1
    for window in (None, 6):
        ref = _masked_reference(q, keys, values, last, np.asarray(lengths), 0.3, window, **kw)
        for impl in ("xla", "cudnn_paged", "pallas"):
            out = paged_decode.paged_decode_attention(q, kp, vp, tab, lengths, scale=0.3, impl=impl, window=window,
                                                      interpret=True, **kw)
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
        for impl in ("xla", "cudnn"):
            out = paged_decode.cascade_decode_attention(q, kp, vp, tab, lengths, jnp.asarray(shared, jnp.int32),
                                                        jnp.asarray(offsets), scale=0.3, shared_keys=8, suffix_keys=12,
                                                        window=window, impl=impl, **kw)
            np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
    kq, ks = kv_quant.quantize_kv(kp, jnp.int8, jnp.float32)
    vq, vs = kv_quant.quantize_kv(vp, jnp.int8, jnp.float32)
    out = paged_decode.paged_decode_attention(q, kq, vq, tab, lengths, scale=0.3, window=6, k_scales=ks, v_scales=vs, **kw)
    deq = [kv_quant.dequantize_kv(ao.gather_pages(x, tab), ao.gather_pages(sc, tab), jnp.float32) for x, sc in ((kq, ks), (vq, vs))]
    ref8 = _masked_reference(q, *deq, last, np.asarray(lengths), 0.3, 6, **kw)
    np.testing.assert_allclose(np.asarray(out), ref8, atol=1e-5, rtol=1e-5)


def _fake_cudnn_attention(q, k, v, kv_len, scale):
    """One query per row [B, T, H, D] over keys [B, S, K, D] below kv_len [B] (float64): (out, lse [B, H, T])."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    k, v = (np.repeat(x, q.shape[2] // x.shape[2], axis=2) for x in (k, v))
    scores = np.einsum("bthd,bshd->bhts", q, k) * scale
    scores = np.where(np.arange(k.shape[1])[None, None, None, :] < np.asarray(kv_len)[:, None, None, None], scores, -np.inf)
    lse = np.logaddexp.reduce(scores, axis=-1)
    out = np.einsum("bhts,bshd->bthd", np.exp(scores - lse[..., None]), v)
    return jnp.asarray(out, jnp.float32), jnp.asarray(lse, jnp.float32)


class FakeCudnn:
    """jax's private cuDNN wrapper (models/attention_ops.cudnn_private) on a CPU: its paged call's
    rule (a table [g, 1, P', 1] needs a pool of exactly g * P' pages) and its results, by numpy."""
    MaskType = type("MaskType", (), {"PADDING": "padding"})

    def __init__(self):
        self.calls = []

    def paged_attention(self, q, k_pages, v_pages, q_len, kv_len, table_k, table_v, *, scale, mask_type, return_residual):
        g, _, cols, _ = table_k.shape
        if g * cols != k_pages.shape[0]:
            raise ValueError(f"Key and page_table_k must have same number of blocks, got {k_pages.shape[0]} vs {g * cols}")
        self.calls.append((g, cols))
        keys, values = ao.gather_pages(k_pages, table_k[:, 0, :, 0]), ao.gather_pages(v_pages, table_v[:, 0, :, 0])
        out, lse = _fake_cudnn_attention(q, keys, values, kv_len, scale)
        return (out, lse) if return_residual else out

    def dot_product_attention(self, q, k, v, *, q_seqlen, kv_seqlen, scale, mask_type, return_residual):
        return _fake_cudnn_attention(q, k, v, kv_seqlen, scale)


@pytest.mark.parametrize("pool,rows,blocks", [(24, 4, [4]), (12, 4, [4]), (10, 4, [2, 2]), (13, 4, [1] * 4)])
def test_cudnn_paged_decode_in_row_blocks(monkeypatch, pool, rows, blocks):
    """A pool too small for one cuDNN paged call over every row (jax wants rows x the table's width
    pages) is read in blocks of rows, each seeing the whole pool (one call gathering every row's keys
    instead was 4x slower on an H100); plain and cascade decode equal the masked reference. A table
    of 3 columns: 24 or 12 pages, one call of the 4 rows; 10, two of 2; 13, four of 1 (no larger
    block divides the pool)."""
    fake = FakeCudnn()
    monkeypatch.setattr(paged_decode, "cudnn_private", lambda: fake)
    h, kv, d, ps, width = 4, 2, 8, 4, 3
    kp, vp = _pool(21, pool, ps, kv, d)
    rng = np.random.default_rng(22)
    table = np.stack([np.concatenate([[0], rng.permutation(np.arange(1, pool))[:width - 1]]) for _ in range(rows)])
    lengths = jnp.asarray(rng.integers(ps + 1, width * ps + 1, rows), jnp.int32)
    q = jnp.asarray(rng.standard_normal((rows, 1, h, d)), jnp.float32)
    tab = jnp.asarray(table, jnp.int32)
    ref = _masked_reference(q, ao.gather_pages(kp, tab), ao.gather_pages(vp, tab), np.asarray(lengths)[:, None] - 1,
                            np.asarray(lengths), 0.3)
    out = paged_decode.paged_decode_attention(q, kp, vp, tab, lengths, scale=0.3, impl="cudnn_paged")
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-6, rtol=1e-5)
    assert [g for g, _ in fake.calls] == blocks and all(g * c == pool for g, c in fake.calls)
    both = paged_decode.cascade_decode_attention(q, kp, vp, tab, lengths, jnp.asarray([0], jnp.int32),
                                                 jnp.full((rows,), ps, jnp.int32), scale=0.3, shared_keys=ps,
                                                 suffix_keys=width * ps, impl="cudnn")
    np.testing.assert_allclose(np.asarray(both), ref, atol=2e-6, rtol=1e-5)
    assert len(fake.calls) == 2 * len(blocks)  # the cascade's own keys went through cuDNN's paged call


def _gathered_keys(fn, *args) -> list[int]:
    """The page counts (dimension 1) of every gather's output [B, pages, ps, ...] in fn's jaxpr: what a decode
    call reads per row."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "gather" and e.outvars[0].aval.ndim >= 3:
                yield e.outvars[0].aval.shape[1]
            for sub in e.params.values():
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("window", [5, 8, Chunked(6)])
@pytest.mark.parametrize("pool_dtype", ["float32", "int8"])
def test_windowed_paged_decode_reads_only_the_window(window, pool_dtype):
    """A sliding-window (or chunked) layer's decode gathers the pages its window can touch, not the row's
    whole table (a 1,024-key window in a 131,072-position engine read every position each step; an
    8-bit pool took the same path): the same output as the masked reference over the whole table,
    with a 12-page table of 4-key pages read 3 pages wide (a window of 5 to 8 keys), whatever num_keys."""
    b, h, kv, d, ps, p = 4, 4, 2, 8, 4, 12
    kp, vp = _pool(31, 60, ps, kv, d)
    rng = np.random.default_rng(32)
    table = jnp.asarray(rng.permutation(60)[: b * p].reshape(b, p), jnp.int32)
    lengths = jnp.asarray([1, 7, 30, 48], jnp.int32)
    q = jnp.asarray(rng.standard_normal((b, 1, h, d)), jnp.float32)
    scales = {}
    if pool_dtype == "int8":
        (kp, ks), (vp, vs) = kv_quant.quantize_kv(kp, jnp.int8, jnp.float32), kv_quant.quantize_kv(vp, jnp.int8, jnp.float32)
        scales = dict(k_scales=ks, v_scales=vs)
        keys, values = (kv_quant.dequantize_kv(ao.gather_pages(x, table), ao.gather_pages(s, table), jnp.float32)
                        for x, s in ((kp, ks), (vp, vs)))
    else:
        keys, values = ao.gather_pages(kp, table), ao.gather_pages(vp, table)
    ref = _masked_reference(q, keys, values, np.asarray(lengths)[:, None] - 1, np.asarray(lengths), 0.3, window)
    wide = -(-(window.size if isinstance(window, Chunked) else window) // ps) + 1  # pages
    for num_keys in (None, 48):
        def decode(q, kp, vp, table, lengths):
            return paged_decode.paged_decode_attention(q, kp, vp, table, lengths, scale=0.3, impl="xla", window=window,
                                                       num_keys=num_keys, **scales)
        np.testing.assert_allclose(np.asarray(decode(q, kp, vp, table, lengths)), ref, atol=1e-5, rtol=1e-5)
        read = _gathered_keys(decode, q, kp, vp, table, lengths)
        assert read and max(read) == wide, read


def _config(raw: dict):
    from jaxllm.models import registry

    return registry.architecture_of(raw).config(raw)


@pytest.mark.parametrize("name,extra,dtype,kv_dtype,whole", [
    ("llama", {}, "bfloat16", None, True),
    ("llama, int8 KV", {}, "bfloat16", "int8", False),
    ("llama, fp8 KV", {}, "bfloat16", "fp8", False),
    ("llama, float32", {}, "float32", None, False),
    ("head of 256", dict(head_dim=256), "bfloat16", None, False),
    ("mistral: every layer windowed", dict(architectures=["MistralForCausalLM"], sliding_window=8), "bfloat16", None, True),
    ("recurrentgemma: every attention layer windowed", "recurrentgemma-2b", "bfloat16", None, True),
    ("soft-capped", dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", head_dim=64, query_pre_attn_scalar=64,
                         attn_logit_softcapping=50.0, sliding_window=8), "bfloat16", None, False),
])
def test_decode_hands_cudnn_the_whole_table_only_where_it_decodes_every_full_layer(name, extra, dtype, kv_dtype, whole):
    """One decode program over the whole page table (cuDNN's paged kernel reads each row's own length) only
    where every layer without a window decodes by that kernel; where a full layer takes the XLA gather form
    (an 8-bit pool, a head wider than 128, soft-capping, float32) the keys are bucketed to the rows' reach, as
    that form reads every key it is handed (a --kv-dtype int8 engine of the model's 40,960 positions read all
    of them each step)."""
    from jaxllm.random_model import SHAPES

    raw = dict(SHAPES[extra]) if isinstance(extra, str) else {**SHAPES["tiny"], **extra}
    cfg = _config(raw)
    assert attention.cudnn_decodes_whole(cfg, jnp.dtype(dtype), kv_dtype) is whole


@pytest.mark.parametrize("impl,dtype,pool,head,spec,want", [
    ("cudnn", "bfloat16", "bfloat16", 128, {}, "cudnn_paged"),
    ("cudnn", "bfloat16", "int8", 128, {}, "pallas"),
    ("cudnn", "bfloat16", "float8_e4m3fn", 64, dict(window=8, softcap=30.0), "pallas"),
    ("cudnn", "bfloat16", "int8", 96, {}, "xla"),  # not a power of two: Triton's tiles
    ("cudnn", "float32", "int8", 128, {}, "xla"),  # the kernel's products are 16-bit
    ("cudnn", "bfloat16", "int8", 128, dict(alibi=ALIBIS["relative"]), "xla"),
    ("cudnn", "bfloat16", "bfloat16", 128, dict(window=8), "pallas"),  # windows: cuDNN's call takes none
    ("cudnn", "bfloat16", "bfloat16", 256, {}, "pallas"),  # a head wider than cuDNN's 128
    ("cudnn", "float16", "bfloat16", 128, {}, "xla"),  # a pool in another 16-bit dtype
    ("xla", "bfloat16", "int8", 128, {}, "xla"),  # not a GPU
    ("cudnn", "bfloat16", "int8", 128, dict(pages=2**17), "xla"),  # 2**31 elements: past the kernel's 32-bit offsets
    ("cudnn", "bfloat16", "int8", 128, dict(pages=2**17 - 1), "pallas"),
    ("cudnn", "bfloat16", "bfloat16", 128, dict(pages=2**17, window=8), "xla"),
])
def test_decode_kernel_choice(impl, dtype, pool, head, spec, want):
    """Which kernel one decode call takes on GPUs: cuDNN's paged kernel where it fits, our Pallas kernel for 8-bit pools,
    windows and wide heads (the XLA form gathered and widened the pages: 2-2.6x slower in the engine), else XLA."""
    q = jax.ShapeDtypeStruct((2, 1, 4, head), jnp.dtype(dtype))
    spec = dict(spec)
    pool = jax.ShapeDtypeStruct((spec.pop("pages", 64), 16, 8, head), jnp.dtype(pool))
    assert attention.decode_kernel(impl, q, pool, attention.AttnSpec(scale=0.1, **spec)) == want
    if pool.size >= 2**31:  # called directly, the kernel refuses such a pool in one line
        with pytest.raises(ValueError, match=r"^a pool of 131072 pages of 16 x 8 x 128 is 2,147,483,648 elements, more"):
            jax.eval_shape(functools.partial(paged_kernel.pool_decode, scale=0.1), jax.ShapeDtypeStruct((2, 1, 16, head), q.dtype),
                           pool, pool, jax.ShapeDtypeStruct((2, 4), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32))
