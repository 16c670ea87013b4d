"""The hybrid linear-attention models (Qwen3.5, Qwen3-Next: gated DeltaNet layers with a recurrent
state per sequence) with the features every model has: tensor parallelism splitting the linear
layers and their state by head, data parallelism with state rows per dp shard, 8-bit KV caches,
quantized weights on a mesh, the engine's precompile, each against the same model on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from jax.sharding import PartitionSpec as P

import jaxllm
from jaxllm import research, sharding
from jaxllm.engine import Engine, Request
from jaxllm.serving.runner import recurrent_rows

GREEDY = jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 12))
# Small enough that the dp workload runs out of pages (14 of 4 tokens per shard, the least that holds a max_len
# sequence: without a prefix cache a prompt is admitted only with pages for all of it) and prefills in chunks of 16
ENGINE = dict(batch_size=4, max_len=56, num_pages=28, page_size=4, prefill_tokens=16, chunk=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for arch in ("Qwen3_5ForCausalLM", "Qwen3NextForCausalLM"):
        out[arch] = tmp_path_factory.mktemp(arch)
        reference.build(arch, out[arch], seed=3)
    return out


@pytest.fixture(scope="module")
def single(folders):
    return jaxllm.load(folders["Qwen3_5ForCausalLM"], tokenizer=False)


def _workload():
    """Prompts several chunks long, sharing prefixes, repeated; GREEDY's answers to them run out of pages."""
    rng = np.random.default_rng(1)
    long, other = rng.integers(0, 128, 41).tolist(), rng.integers(0, 128, 23).tolist()
    return [long, long[:20], other, other, rng.integers(0, 128, 7).tolist(), long[:9] + other[:30]]


@pytest.fixture(scope="module")
def precompiled(single):
    """The workload on one device, in an engine that precompiled it: (answers, the steps compiled by the
    precompile, those compiled by the end of the run)."""
    engine = Engine(single, **ENGINE)
    reqs = [Request(p, GREEDY.resolved(), i) for i, p in enumerate(_workload())]
    engine.precompile(reqs)
    compiled = (engine.counters.prefill, engine.counters.decode)
    got = {i: [] for i in range(len(reqs))}
    for ev in engine.run(reqs):
        got[ev.index].append(ev)
    answers = [([t for ev in got[i] for t in ev.tokens], [lp for ev in got[i] for lp in ev.logprobs]) for i in range(len(reqs))]
    return answers, compiled, (engine.counters.prefill, engine.counters.decode), engine.scheduler.stats.preempted


def _mesh(spec: str):
    size = int(np.prod([int(item.split("=")[1]) for item in spec.split(",")]))
    return sharding.make_mesh(spec, devices=jax.devices()[:size])


def _linear(model, layer=0):
    return model.params["model"]["layers"][layer]["linear_attn"]


def _states(engine):
    return [c for c in engine.state.cache if hasattr(c, "ssm")]


# Qwen3.5's projections apart, Qwen3-Next's fused per key head (in_proj_qkvz); both with 2 key heads and 4
# value heads: tp=2 splits each layer by key head, tp=4 (more devices than key heads) by value head only
@pytest.mark.parametrize("arch, spec", [("Qwen3_5ForCausalLM", "tp=2"), ("Qwen3NextForCausalLM", "tp=4")])
def test_tensor_parallel_splits_the_linear_layers_by_head(folders, arch, spec):
    want = np.asarray(jaxllm.load(folders[arch], tokenizer=False).logits(TOKENS))
    model = jaxllm.load(folders[arch], mesh=_mesh(spec), tokenizer=False)
    la, by_key_head = _linear(model), spec == "tp=2"
    # Dense kernels are [out..., in...]: value heads of z, b, a, the decay and out_proj's inputs over tp; the
    # conv's channels (grouped by key head) too, and its weight per key head where tp divides the key heads
    assert la["in_proj_z"]["kernel"].sharding.spec == P("tp", None, None)
    assert la["in_proj_b"]["kernel"].sharding.spec == la["in_proj_a"]["kernel"].sharding.spec == P("tp", None)
    assert la["A_log"].sharding.spec == la["dt_bias"].sharding.spec == P("tp")
    assert la["out_proj"]["kernel"].sharding.spec == P(None, "tp", None)
    assert la["in_proj_qkv"]["kernel"].sharding.spec == P("tp", None)
    assert la["conv1d"]["weight"].sharding.spec == P("tp" if by_key_head else None, None, None, None)
    err = reference.max_rel_diff(model.logits(TOKENS), want)
    print(f"{arch} {spec}: sharded vs single-device logits max rel diff {err:.1e}")
    assert err <= 1e-5


def test_data_parallel_engine_keeps_state_rows_per_shard(folders, precompiled):
    """dp=2,tp=2: each dp shard's sequences keep their recurrent state in that shard's rows (a row per slot
    and a scratch row each), split over tp by head as their layer; a workload that runs out of pages
    preempts and recomputes sequences there, with the tokens and log-probabilities of one device."""
    want, *_ = precompiled
    model = jaxllm.load(folders["Qwen3_5ForCausalLM"], mesh=_mesh("dp=2,tp=2"), tokenizer=False)
    engine = Engine(model, **ENGINE)
    got = model.generate(_workload(), GREEDY, engine=engine)
    for g, (tokens, logprobs) in zip(got, want):
        assert g.token_ids == tokens
        np.testing.assert_allclose(g.logprobs, logprobs, atol=1e-5)
    assert engine.scheduler.stats.preempted > 0, "the workload should run out of pages"
    for conv, ssm in _states(engine):
        assert conv.shape[0] == ssm.shape[0] == recurrent_rows(4, 2) == 6  # per shard: 2 slots and a scratch row
        assert conv.sharding.spec == P("dp", None, "tp") and ssm.sharding.spec == P("dp", "tp", None, None)


def test_precompile_leaves_nothing_to_compile_with_recurrent_state(precompiled):
    """engine.precompile compiles the steps a workload of a recurrent model meets (each prompt's chunks
    carry its state row, preempted ones recomputed): the run traces nothing new (its answers: the test above)."""
    _, compiled, after, preempted = precompiled
    assert compiled[0] >= 1 and compiled[1] >= 1
    assert after == compiled and preempted > 0


def test_8_bit_kv_caches_beside_recurrent_states(single):
    """int8 and fp8 pools hold the full-attention layers' keys and values; the linear layers' states stay
    in their float dtypes. Teacher-forced scores through the cache (chunks of 8, so later chunks read keys
    and states the earlier ones left) stay near the float model's, as tests/test_kv_quant.py bounds them
    for Llama: int8 within 6x a bfloat16 cache's error, fp8 within 32x."""
    tokens = np.random.default_rng(2).integers(0, 128, 60).tolist()
    logits = np.asarray(research.jitted("logits")(single.graphdef, single.params, jnp.asarray([tokens]))[0, :-1])
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), np.asarray(tokens[1:])[:, None], -1)[:, 0]
    rms = {}
    for kv in ("int8", "fp8", "bfloat16"):
        engine = Engine(single, batch_size=1, max_len=64, page_size=4, kv_dtype=kv)
        rms[kv] = float(np.sqrt(np.mean((engine.score(tokens, chunk=8).logprobs - want) ** 2)))
        pools = [c for c in engine.state.cache if c is not None and not hasattr(c, "ssm")]
        assert pools and all(c.k.dtype == jnp.dtype({"fp8": "float8_e4m3fn"}.get(kv, kv)) for c in pools)
        assert all(c.conv.dtype == jnp.float32 and c.ssm.dtype == jnp.float32 for c in _states(engine))
    print(f"teacher-forced log-prob RMS error by kv_dtype: {rms}")
    assert 0 < rms["bfloat16"] < 0.01 and rms["int8"] <= 6 * rms["bfloat16"] and rms["fp8"] <= 32 * rms["bfloat16"], rms


def test_sharded_quantized_linear_layers_equal_unsharded(folders):
    """int4 kernels of the linear layers on tp=2: their scales split with the heads they scale (out_proj's
    groups over its value-head inputs), the same integers and logits as on one device."""
    folder = folders["Qwen3_5ForCausalLM"]
    single = jaxllm.load(folder, quantize="int4", tokenizer=False)
    model = jaxllm.load(folder, quantize="int4", mesh=_mesh("tp=2"), tokenizer=False)
    out_proj = _linear(model)["out_proj"]
    assert out_proj["kernel"].dtype == jnp.int4 and _linear(model)["in_proj_qkv"]["kernel"].dtype == jnp.int4
    assert out_proj["scale"].sharding.spec == P(None, "tp")  # [hidden, groups]: 48 inputs in 2 groups of 24
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(model.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert reference.max_rel_diff(model.logits(TOKENS), single.logits(TOKENS)) <= 1e-5


@pytest.mark.parametrize("arch", ["Lfm2ForCausalLM", "GraniteMoeHybridForCausalLM", "RecurrentGemmaForCausalLM"])
def test_short_conv_and_mamba2_layers_run_whole_on_each_device(tmp_path, arch):
    """LFM2's short conv, Mamba2 and the RG-LRU keep their layers whole on each device (sharding.RULES' "recurrent"),
    int8 too (their quantized output projection's scales included): logits on dp=2,tp=2 equal one device's."""
    reference.build(arch, tmp_path, seed=3)
    single = jaxllm.load(tmp_path, quantize="int8", tokenizer=False)
    model = jaxllm.load(tmp_path, quantize="int8", mesh=_mesh("dp=2,tp=2"), tokenizer=False)
    layer = next(x for x in model.params["model"]["layers"].values() if {"conv", "mamba", "temporal_block"} & set(x))
    mixer = layer.get("conv") or layer.get("mamba") or layer["temporal_block"]
    out = mixer.get("out_proj") or mixer["linear_out"]
    assert out["kernel"].dtype == jnp.int8 and out["scale"].sharding.spec == P(None, None)
    assert reference.max_rel_diff(model.logits(TOKENS), single.logits(TOKENS)) <= 1e-5
