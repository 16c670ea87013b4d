"""The 8-bit KV cache (kv_dtype "int8": int8 values with a scale per token and kv head; "fp8": a
float8 e4m3 cast): the quantization error is bounded, attention reads a page exactly as its
dequantized values, the model's scores stay close to a float cache's, the same memory holds
about twice the pages, prefix caching and preemption change nothing (nor with int8 or int4
weights), and the real model's perplexity stays within 1% of the float model's."""

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm import generation, loader, research
from jaxllm.engine import Engine
from jaxllm.errors import GenerationError
from jaxllm.models import attention_ops as ao
from jaxllm.models import kv_quant, paged_decode, paged_kernel, registry
from jaxllm.models.attention import AttnSpec, LayerCache, PagedCache, kv_cache_bytes
from jaxllm.serving import memory as pool_memory

GREEDY = jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)
TEXT = Path(__file__).parent / "data" / "public_domain.txt"


def test_a_bad_kv_dtype_is_one_line(llama):
    want = "kv_dtype must be one of None, 'int8', 'fp8', 'float8_e4m3fn', 'bfloat16', 'float16', 'float32', got 'int3'"
    with pytest.raises(GenerationError) as err:
        Engine(llama, kv_dtype="int3")
    assert str(err.value) == want
    bad = copy.copy(llama)
    bad.kv_dtype, bad.engines = "int3", {}  # what the model says, when the engine is not told
    with pytest.raises(GenerationError) as err:
        bad.generate([1, 2, 3], GREEDY)
    assert str(err.value) == want
    with pytest.raises(GenerationError, match="got 3$"):
        Engine(llama, kv_dtype=3)


def test_int8_error_is_within_half_a_step_of_each_token_and_head():
    """scale = max|x| / 127 per vector of D (a token's kv head) and |x - q * scale| <= scale / 2,
    with the scale kept in float32 or bfloat16 (the values are quantized with the rounded scale,
    so its rounding costs nothing beyond the bound); an all-zero head stays zero."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 64)).astype(np.float32) * rng.uniform(0.01, 30, (3, 5, 4, 1)).astype(np.float32)
    x[0, 0, 0] = 0
    x[1, 2, 3, 7] = 300.0  # an outlier sets its head's step
    for scale_dtype, rtol in ((jnp.float32, 1e-6), (jnp.bfloat16, 2**-8)):
        q, s = kv_quant.quantize_kv(jnp.asarray(x), jnp.int8, scale_dtype)
        assert (q.dtype, s.dtype, s.shape) == (jnp.int8, scale_dtype, x.shape[:-1])
        step = np.asarray(s, np.float32)
        np.testing.assert_allclose(step, np.abs(x).max(-1) / 127, rtol=rtol)
        back = np.asarray(kv_quant.dequantize_kv(q, s, jnp.float32))
        assert (np.abs(back - x) <= step[..., None] / 2 * (1 + 1e-5)).all()
        assert (back[0, 0, 0] == 0).all() and np.abs(np.asarray(q)).max() == 127
    # int8 keys and values are stored rotated (outlier channels spread over the head), queries
    # turned alike and outputs turned back: an orthogonal map, its own inverse, of any head size
    for d in (64, 96, 128, 80):
        a = rng.standard_normal((5, d)).astype(np.float32)
        h = kv_quant._rotation(d)  # the map's matrix: orthogonal and symmetric; rotate is the product with it
        np.testing.assert_allclose(h @ h, np.eye(d), atol=1e-6)
        np.testing.assert_allclose(np.asarray(kv_quant.rotate(jnp.asarray(a))), a @ h, atol=1e-5)
        np.testing.assert_allclose(np.asarray(kv_quant.rotate(kv_quant.rotate(jnp.asarray(a)))), a, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(kv_quant.rotate(jnp.asarray(a))), axis=-1),
                                   np.linalg.norm(a, axis=-1), rtol=1e-5)
    # float8 e4m3: 3 mantissa bits (relative error <= 2**-4 in its normal range), clipped to +-448
    y = jnp.asarray([1000.0, -1000.0, 3.3, -0.07, 0.5, 0.0])
    f, none = kv_quant.quantize_kv(y, jnp.float8_e4m3fn)
    back = np.asarray(f, np.float32)
    assert none is None and f.dtype == jnp.float8_e4m3fn
    np.testing.assert_array_equal(back[:2], [448, -448])
    np.testing.assert_allclose(back[2:], np.asarray(y)[2:], rtol=2**-4)


def test_attention_reads_8_bit_pages_as_their_dequantized_values():
    """Decode over int8 / fp8 pools equals decode over the float pools they dequantize to (the
    scales folded into the products change only rounding), whatever kernel is asked for; a
    prefill chunk writes quantized keys with their scales and attends as over their float values."""
    rng = np.random.default_rng(1)
    n, ps, kv, d, h = 9, 4, 2, 16, 4
    k, v = (rng.standard_normal((n, ps, kv, d)).astype(np.float32) * 3 for _ in range(2))
    table = jnp.asarray([[3, 0, 7, 8], [5, 1, 2, 6]], jnp.int32)
    lengths = jnp.asarray([5, 13], jnp.int32)
    q = jnp.asarray(rng.standard_normal((2, 1, h, d)), jnp.float32)
    (kq, ks), (vq, vs) = kv_quant.quantize_kv(jnp.asarray(k), jnp.int8, jnp.float32), kv_quant.quantize_kv(jnp.asarray(v), jnp.int8, jnp.float32)
    kd, vd = kv_quant.dequantize_kv(kq, ks, jnp.float32), kv_quant.dequantize_kv(vq, vs, jnp.float32)
    decode = jax.jit(paged_decode.paged_decode_attention, static_argnames=("scale", "impl", "window", "softcap"))
    opts = dict(scale=0.25, window=3, softcap=5.0)  # the scales apply before the soft cap
    got = decode(q, kq, vq, table, lengths, impl="cudnn_paged", k_scales=ks, v_scales=vs, **opts)
    np.testing.assert_allclose(got, decode(q, kd, vd, table, lengths, impl="xla", **opts), atol=1e-5)
    kf, vf = jnp.asarray(k).astype(jnp.float8_e4m3fn), jnp.asarray(v).astype(jnp.float8_e4m3fn)
    got = decode(q, kf, vf, table, lengths, scale=0.25, impl="cudnn_paged")
    want = decode(q, kf.astype(jnp.float32), vf.astype(jnp.float32), table, lengths, scale=0.25, impl="xla")
    np.testing.assert_allclose(got, want, atol=1e-5)

    # A prefill chunk of 6 tokens at positions 3..8 (row 0) and 0..5 (row 1, 4 of them real).
    t = 6
    cache = LayerCache(jnp.zeros((n, ps, kv, d), jnp.int8), jnp.zeros((n, ps, kv, d), jnp.int8),
                       jnp.zeros((n, ps, kv), jnp.float32), jnp.zeros((n, ps, kv), jnp.float32))
    cache = cache._replace(k=kq, v=vq, k_scale=ks, v_scale=vs)  # row 0's first 3 positions come from here
    positions = jnp.asarray([[3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5]], jnp.int32)
    valid = jnp.asarray([[True] * 6, [True] * 4 + [False] * 2])
    qc = jnp.asarray(rng.standard_normal((2, t, h, d)), jnp.float32)
    kc, vc = (jnp.asarray(rng.standard_normal((2, t, kv, d)), jnp.float32) for _ in range(2))
    paged = PagedCache(table, valid, 16)
    out, new = jax.jit(lambda *a: paged(*a, AttnSpec(0.25)))(qc, kc, vc, cache, positions)
    wq, wscale = kv_quant.quantize_kv(kv_quant.rotate(kc), jnp.int8, jnp.float32)  # int8 keys are stored rotated
    np.testing.assert_array_equal(new.k[7, 0], wq[0, 5])  # row 0's position 8: its third page (7), offset 0
    np.testing.assert_array_equal(new.k_scale[7, 0], wscale[0, 5])
    want = jax.jit(lambda new: kv_quant.rotate(ao.reference_attention(  # values too: the output turns back
        kv_quant.rotate(qc), paged.gather(new.k, new.k_scale, jnp.float32), paged.gather(new.v, new.v_scale, jnp.float32),
        positions, positions[:, 0] + valid.sum(1), scale=0.25)))(new)
    np.testing.assert_allclose(out[0], want[0], atol=1e-5)
    np.testing.assert_allclose(out[1, :4], want[1, :4], atol=1e-5)


def test_gpu_decode_of_an_int8_cache_turns_q_and_output_in_the_kernel(monkeypatch):
    """The GPU backend (impl "cudnn") decodes an int8 cache by our Pallas kernel (interpret mode here), which turns the
    queries and its output by kv_quant.rotate itself (no product of the layer's own): the same output as the XLA form,
    which turns them by products around it, to one bfloat16 rounding; and the kernel is what ran. Calls of more rows
    than paged_kernel.TURN_INSIDE_ROWS turn them by products around the kernel (large batches: measured faster)."""
    calls = []
    kernel = paged_kernel.pool_decode
    monkeypatch.setattr(paged_kernel, "pool_decode",
                        lambda *a, **kw: calls.append(kw["rotated"]) or kernel(*a, **{**kw, "interpret": True}))
    rng = np.random.default_rng(3)
    n, ps, kv, d, h, t = 9, 4, 2, 16, 4, 7
    k, v = (kv_quant.quantize_kv(kv_quant.rotate(jnp.asarray(rng.standard_normal((n, ps, kv, d)), jnp.float32)),
                                 jnp.int8, jnp.float32) for _ in range(2))
    cache = LayerCache(k[0], v[0], k[1], v[1])
    table = jnp.asarray([[3, 0, 7, 8], [5, 1, 2, 6]], jnp.int32)
    q, kn, vn = (jnp.asarray(rng.standard_normal((2, 1, heads, d)), jnp.bfloat16) for heads in (h, kv, kv))
    positions = jnp.asarray([[t], [12]], jnp.int32)
    def decode(impl):
        return np.asarray(PagedCache(table, jnp.ones((2, 1), bool), 16, impl)(q, kn, vn, cache, positions, AttnSpec(0.25))[0],
                          np.float32)

    outs = {impl: decode(impl) for impl in ("cudnn", "xla")}
    assert calls == [True]
    np.testing.assert_allclose(outs["cudnn"], outs["xla"], atol=1e-2)  # |out| up to ~1.6: one bfloat16 step, 2**-7
    assert np.abs(outs["xla"]).max() > 0.3
    # a call of more (row, kv head) pairs than TURN_INSIDE_ROWS: the kernel reads turned queries, products turn them
    monkeypatch.setattr(paged_kernel, "TURN_INSIDE_ROWS", 2)
    np.testing.assert_allclose(decode("cudnn"), outs["xla"], atol=1e-2)
    assert calls == [True, False]


def test_a_long_chunk_written_to_an_int8_pool_keeps_half_a_step():
    """A 256-token chunk written by PagedCache.write (jitted, as the engine runs it): every stored value is within half
    a step (its stored scale / 2) of the rotated key. On CPUs XLA's YNNPACK fusion dropped the scale's cast pair to
    bfloat16 and back, so the values were divided by the unrounded scale: 5% of them a step off (up to 0.75 steps)."""
    rng = np.random.default_rng(0)
    n, ps, kv, d, t = 40, 16, 8, 128, 256
    cache = LayerCache(jnp.zeros((n, ps, kv, d), jnp.int8), jnp.zeros((n, ps, kv, d), jnp.int8),
                       jnp.zeros((n, ps, kv), jnp.bfloat16), jnp.zeros((n, ps, kv), jnp.bfloat16))
    table = jnp.arange(n, dtype=jnp.int32)[None, : t // ps]
    k, v = (jnp.asarray(rng.standard_normal((1, t, kv, d)) * 3, jnp.bfloat16) for _ in range(2))
    positions = jnp.arange(t, dtype=jnp.int32)[None]
    new = jax.jit(PagedCache(table, jnp.ones((1, t), bool), t).write)(cache, k, v, positions)
    for x, pool, scales in ((k, new.k, new.k_scale), (v, new.v, new.v_scale)):
        want = np.asarray(kv_quant.rotate(x[0], jnp.float32))
        s = np.asarray(scales[: t // ps], np.float32).reshape(t, kv, 1)
        steps = np.abs(np.asarray(pool[: t // ps], np.float32).reshape(t, kv, d) - want / s)
        assert steps.max() <= 0.5 + 1e-4, steps.max()


def test_scores_with_an_8_bit_cache_stay_close_to_the_float_model(llama):
    """Teacher-forced log-probabilities through the cache (chunks of 16, so most keys are read
    back from the pool) against the float model's (no cache). int8 keeps each element within
    max|x| / 254 of its vector, bfloat16 within |x| * 2**-9: for vectors whose max is 2-3x their
    RMS, int8's RMS error is ~3-4x a bfloat16 cache's, so a bfloat16 cache is the yardstick: int8
    within 6x of its error (3.2x measured), fp8 (2**-4 relative) within 32x (16x measured). The
    model's greedy choice after each prefix agrees on >= 95% of positions with int8 (98%
    measured; this random model's top two are often close)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, llama.config.vocab_size, 120).tolist()
    logits = np.asarray(research.jitted("logits")(llama.graphdef, llama.params, jnp.asarray([tokens]))[0, :-1])
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), np.asarray(tokens[1:])[:, None], -1)[:, 0]
    scores = {kv: Engine(llama, batch_size=1, max_len=128, page_size=4, prefill_tokens=64, kv_dtype=kv).score(tokens, chunk=16)
              for kv in ("int8", "fp8", "bfloat16", None)}
    # the model's own dtype in the cache (None): the forward's numbers (Engine.score is the prompt-scoring prefill)
    np.testing.assert_allclose(scores[None].logprobs, want, atol=1e-5)
    np.testing.assert_array_equal(scores.pop(None).greedy, logits.argmax(-1))  # the likeliest after each prefix
    rms = {kv: float(np.sqrt(np.mean((s.logprobs - want) ** 2))) for kv, s in scores.items()}
    assert 0 < rms["bfloat16"] < 0.01 and rms["int8"] <= 6 * rms["bfloat16"] and rms["fp8"] <= 32 * rms["bfloat16"], rms
    assert np.mean(scores["int8"].greedy == logits.argmax(-1)) >= 0.95


def test_the_same_memory_holds_about_twice_the_pages(llama, monkeypatch):
    """The engine sizes its pool by bytes (values and scales): int8 pages of this float32 model
    take (16 + 4) / (16 * 4) of the float ones, so 3.2x fit; a bfloat16 model of SmolLM2's head
    size (64) fits (128) / (64 + 2) = 1.94x. generate's memory check counts the same bytes."""

    class Device:
        def memory_stats(self):
            return {"bytes_limit": 3 << 30, "bytes_in_use": 0}

    monkeypatch.setattr(pool_memory.jax, "local_devices", lambda: [Device()])
    pages = {kv: Engine(llama, batch_size=2, max_len=128, prefill_tokens=64, kv_dtype=kv).blocks.num_pages
             for kv in (None, "int8")}
    assert pages["int8"] / pages[None] == pytest.approx(64 / 20, rel=1e-3)
    cfg = llama.config.replace(head_dim=64)
    assert kv_cache_bytes(cfg, 1, jnp.bfloat16) / kv_cache_bytes(cfg, 1, jnp.bfloat16, "int8") == pytest.approx(128 / 66)
    monkeypatch.undo()

    # 8 prompts of up to 256 positions: a pool of 136 pages of 16 positions, 1.6 MiB in float32, 510 KiB in int8
    model = copy.copy(llama)
    model.engines = {}
    room = 8 * (256 + 16) * kv_cache_bytes(llama.config, 1, jnp.float32, "int8") + 8 * llama.config.vocab_size * pool_memory.SAMPLING_ROW_BYTES
    monkeypatch.setattr(generation, "available_memory", lambda: (room, "the host"))
    monkeypatch.setattr(pool_memory, "available_memory", lambda: (room, "the host"))
    prompts = [[1, 2, 3]] * 8
    with pytest.raises(GenerationError, match="needs a KV cache"):
        generation.engine_for(model, prompts, GREEDY.resolved())
    model.kv_dtype = "int8"
    engine = generation.engine_for(model, prompts, GREEDY.resolved())
    assert engine.kv_dtype == "int8" and engine.runner.kv_dtype == ("int8", "float32")
    assert generation.engine_for(model, prompts, GREEDY.resolved()) is engine


def _cacheless(arch: str) -> bool:
    cfg = loader.plan(dict(registry.get(arch).tiny_config, architectures=[arch])).config
    return all(cfg.kv_shape(i) is None for i in range(cfg.num_layers))


CACHELESS = [arch for arch in registry.names() if _cacheless(arch)]  # recurrent layers only: Mamba, RWKV, ...


@pytest.mark.parametrize("arch", CACHELESS)
@pytest.mark.parametrize("kv_dtype", ["int8", "fp8", "bfloat16"])
def test_a_kv_dtype_for_a_model_without_a_kv_cache_is_refused(arch, kv_dtype):
    """kv_dtype on a model whose layers cache no keys or values changed nothing, without a word: refused by the
    Engine, whether given to it or kept by the model (jaxllm.load's kv_dtype), before anything is allocated."""
    p = loader.plan(dict(registry.get(arch).tiny_config, architectures=[arch]))
    model = loader.LoadedModel(p.config, p.graphdef, p.abstract)
    want = f"kv_dtype={kv_dtype!r} sets the KV cache's dtype, and {arch} caches no keys or values (it has no attention layers): drop kv_dtype"
    with pytest.raises(GenerationError) as err:
        Engine(model, kv_dtype=kv_dtype)
    assert str(err.value) == want
    model.kv_dtype = kv_dtype
    with pytest.raises(GenerationError, match="caches no keys or values"):
        Engine(model)


def test_load_refuses_a_kv_dtype_for_a_model_without_a_kv_cache(tmp_path):
    import reference

    reference.build("MambaForCausalLM", tmp_path, seed=1)
    with pytest.raises(GenerationError, match="^kv_dtype='int8' sets the KV cache's dtype, and MambaForCausalLM caches no keys"):
        jaxllm.load(tmp_path, kv_dtype="int8", tokenizer=False)
    assert jaxllm.load(tmp_path, tokenizer=False).kv_dtype is None


@pytest.mark.parametrize("kv_dtype, quantize", [("int8", None), ("fp8", None), (None, "int8"), (None, "int4")],
                         ids=["kv-int8", "kv-fp8", "weights-int8", "weights-int4"])
def test_prefix_caching_and_preemption_with_8_bit_pages_or_quantized_weights_change_nothing(llama, kv_dtype, quantize):
    """test_engine's mixed workload with an 8-bit cache or quantized weights: three sequences at a time over 22 pages
    (preemption), repeated prefixes (their cached 8-bit pages and scales are reused), prompts in chunks of 16, against
    each prompt alone (no prefix cache) in an engine of the same shapes: the batch changes no token, and no
    log-probability beyond float32's rounding (an int8 page's scale is its own token's, whatever else the call holds)."""
    model = llama if quantize is None else loader.quantize_model(llama, quantize)
    rng = np.random.default_rng(0)
    long, other = rng.integers(0, 128, 41).tolist(), rng.integers(0, 128, 23).tolist()
    prompts = [long, long[:20], other, other, rng.integers(0, 128, 7).tolist(), long[:9] + other[:30]]
    shape = dict(batch_size=3, max_len=128, num_pages=22, page_size=4, prefill_tokens=16, chunk=4, kv_dtype=kv_dtype)
    engine = Engine(model, **shape)
    together = model.generate(prompts, GREEDY, engine=engine)
    assert engine.scheduler.stats.preempted > 0 and engine.blocks.stats.hit_tokens >= 40
    alone = Engine(model, prefix_caching=False, **shape)
    for prompt, got in zip(prompts, together):
        want = model.generate(prompt, GREEDY, engine=alone)
        assert got.token_ids == want.token_ids
        np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    assert alone.counters.prefill == alone.counters.decode == 0  # the same programs as the first engine's


def test_int8_kv_perplexity_of_the_real_model_within_1_percent(gguf_path):
    """SmolLM2-135M-Instruct (float32) on the first 256 tokens of tests/data/public_domain.txt:
    through an int8 cache in chunks of 64 (each chunk reads the earlier ones' int8 keys), the
    perplexity is <= 1.01x the float model's (no cache) and the greedy choice after each prefix
    agrees on >= 97% of positions. docs/benchmarks.md has the whole text's numbers."""
    model = jaxllm.load(gguf_path, dtype="float32")
    tokens = model.tokenizer.encode(TEXT.read_text())[:256]
    logits = np.asarray(research.jitted("logits")(model.graphdef, model.params, jnp.asarray([tokens]))[0, :-1])
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    float_ppl = float(np.exp(-np.mean(np.take_along_axis(logp, np.asarray(tokens[1:])[:, None], axis=-1))))
    int8 = Engine(model, batch_size=1, max_len=256, prefill_tokens=256, kv_dtype="int8").score(tokens, chunk=64)
    assert int8.perplexity <= 1.01 * float_ppl, (int8.perplexity, float_ppl)
    assert np.mean(int8.greedy == logits.argmax(-1)) >= 0.97


def test_nvfp4_scales_round_to_e4m3_without_a_cast_pair():
    """fake_nvfp4's block scales are rounded to float8 e4m3fn by arithmetic (3 mantissa bits, subnormal steps of 2**-9,
    ties to even), not by a cast to float8 and back, which XLA on GPUs drops (its excess precision: Kolibri 1.1's logits
    were 0.44 relative from transformers' on an H200 with the pair). Against ml_dtypes' e4m3fn (numpy, not XLA) over the
    whole clipped range, every midpoint between two e4m3fn values included; and no float8 type in the rounding's jaxpr."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    grid = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    grid = np.unique(grid[np.isfinite(grid) & (grid >= 2.0**-9) & (grid <= 448)])
    s = np.concatenate([np.exp(rng.uniform(np.log(2.0**-9), np.log(448), 20000)), grid, (grid[1:] + grid[:-1]) / 2])
    s = s.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(kv_quant._round_e4m3(jnp.asarray(s))),
                                  s.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    jaxpr = str(jax.make_jaxpr(kv_quant.fake_nvfp4)(jnp.zeros((2, 32), jnp.bfloat16)))
    assert "f8" not in jaxpr and "float8" not in jaxpr
