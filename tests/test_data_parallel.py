"""Data parallelism in the paged engine (mesh dp > 1, on simulated CPU devices: conftest): one
engine runs every dp shard's sequences, each shard on its own range of the page pool and of the
decode slots, and gives the tokens and log-probabilities of one device."""

import dataclasses
import re

import jax
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P
from test_serving_host import FakeRunner, check_invariants, decode_step, seq

import jaxllm
from jaxllm import sharding
from jaxllm.engine import Engine, Request
from jaxllm.errors import GenerationError
from jaxllm.serving.block_manager import BlockManager
from jaxllm.serving.scheduler import Scheduler
from jaxllm.serving.sequence import Status

GREEDY = jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)
# spec: devices it takes. dp=2,tp=4: shards whose decode loops would end at different steps meet
# tp's collectives a different number of times unless the loop runs while any shard is busy.
MESHES = {"dp=2": 2, "dp=2,tp=2": 4, "dp=4": 4, "dp=2,tp=4": 8}
# Small enough that the workload runs out of pages (per shard: 16 pages of 4 tokens, the least
# an engine of max_len 64 gives a shard) and is prefilled in chunks of 16 tokens.
ENGINE = dict(batch_size=4, max_len=64, num_pages=32, page_size=4, prefill_tokens=16, chunk=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-dp")
    reference.build("LlamaForCausalLM", path, seed=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=64)
    return path


def _workload(seed=0):
    """Prompts of different lengths, several chunks long, sharing prefixes, repeated."""
    rng = np.random.default_rng(seed)
    long = rng.integers(0, 128, 41).tolist()
    other = rng.integers(0, 128, 23).tolist()
    return [long, long[:20], other, other, rng.integers(0, 128, 7).tolist(), long[:9] + other[:30],
            long[:33] + [1, 2], other[:13]]


@pytest.fixture(scope="module")
def single(folder):
    """The workload on one device."""
    model = jaxllm.load(folder)
    return model.generate(_workload(), GREEDY, engine=Engine(model, **ENGINE))


def _load(folder, spec):
    mesh = sharding.make_mesh(spec, devices=jax.devices()[: MESHES[spec]])
    return jaxllm.load(folder, mesh=mesh)


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-5)


@pytest.mark.parametrize("spec", list(MESHES))
def test_data_parallel_engine_equals_one_device(folder, single, spec):
    model = _load(folder, spec)
    dp = model.mesh.shape["dp"]
    engine = Engine(model, **ENGINE)
    assert engine.blocks.shards == dp and engine.blocks.shard_pages == 16
    got = model.generate(_workload(), GREEDY, engine=engine)
    _assert_same(got, single)
    stats = engine.scheduler.stats
    assert stats.chunked > 0, "prompts longer than the budget are prefilled in chunks"
    if dp == 2:  # (dp=4: one row per shard, so a repeated prompt often starts on another shard)
        assert engine.blocks.stats.hit_tokens > 0, "repeated prefixes hit the cache within a shard"
        assert stats.preempted > 0, "the workload should run out of pages"
    assert engine.blocks.num_free == engine.blocks.num_pages  # every page is back
    # The pool and the slots are split over dp: each device holds its shard's pages and rows.
    k = engine.state.cache[0].k
    kv_split = "tp" if model.mesh.shape["tp"] == 2 else None  # 2 kv heads: split by tp=2, replicated over tp=4
    assert k.sharding.spec == P("dp", None, kv_split, None)
    assert k.addressable_shards[0].data.shape[0] == k.shape[0] // dp
    assert engine.state.tokens.sharding.spec == P("dp")
    assert engine.state.tokens.addressable_shards[0].data.shape == (ENGINE["batch_size"] // dp,)
    # The same run again compiles nothing new: as many programs as on one device.
    compiled = (engine.counters.prefill, engine.counters.decode)
    _assert_same(model.generate(_workload(), GREEDY, engine=engine), single)
    assert (engine.counters.prefill, engine.counters.decode) == compiled


def test_sequences_balance_over_shards_and_stay_on_their_pages(folder):
    model = _load(folder, "dp=2")
    engine = Engine(model, batch_size=4, max_len=64, num_pages=64, page_size=4, prefill_tokens=64, chunk=4)
    params = GREEDY.resolved()
    seqs = [engine.add(Request(p, params, i)) for i, p in enumerate(_workload(1)[:4])]
    engine.step()
    assert sorted(s.shard for s in seqs) == [0, 0, 1, 1]  # admitted together, two per shard
    while not all(s in engine.slot_of for s in seqs):  # prompts are prefilled 16 tokens at a time
        engine.step()
    n = engine.blocks.shard_pages
    b = engine.batch_size // 2
    for s in seqs:
        assert all(s.shard * n <= p < (s.shard + 1) * n for p in s.pages)
        assert s.shard * b <= engine.slot_of[s] < (s.shard + 1) * b
    score = engine.score(_workload(1)[0])  # scoring takes one shard's pages too, beside the running rows
    assert np.isfinite(score.logprobs).all()
    while engine.has_work():
        engine.step()
    alone = Engine(jaxllm.load(folder), batch_size=1, max_len=64, page_size=4, prefill_tokens=64)
    np.testing.assert_allclose(score.logprobs, alone.score(_workload(1)[0]).logprobs, atol=1e-5)


def _served(engine, prompts):
    """Each prompt's (tokens, logprobs, finish_reason), and its (shard, pages it held at its end), served together by `engine`."""
    seqs, held = [engine.add(Request(p, GREEDY.resolved(), i)) for i, p in enumerate(prompts)], {}
    free = engine.blocks.free
    engine.blocks.free = lambda seq, spoiled=False: held.setdefault(seq.seq_id, (seq.shard, set(seq.pages))) and free(seq, spoiled)
    got = [([], [], None) for _ in seqs]
    while engine.has_work():
        for ev in engine.step():
            tokens, logprobs, _ = got[ev.index]
            got[ev.index] = tokens + ev.tokens, logprobs + ev.logprobs, ev.finish_reason
    del engine.blocks.free
    return got, [held[s.seq_id] for s in seqs]


@pytest.mark.parametrize("spec", ["dp=2", "dp=2,tp=2"])
def test_pages_of_a_non_finite_request_on_the_second_shard_are_zeroed(folder, spec):
    """A request whose prompt holds a token with a NaN embedding, on shard 1 beside a healthy one on shard 0, ends
    with finish_reason "error", and the pool holds no NaN after it: Runner.scrub zeroed its pages at their rows of
    shard 1's range of the pool (a page id past shard 0's pages is not that row of the whole pool). A later request
    given those pages (shard 1's free pages, the spoiled ones last) gets what it gets alone, and so does the healthy one."""
    model = _load(folder, spec)
    rng = np.random.default_rng(5)
    nan = 127  # no prompt below holds it, and no healthy request generates it (checked)
    healthy, long = rng.integers(0, 100, 10).tolist(), rng.integers(0, 100, 52).tolist()
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[nan, 0].set(np.nan) if "embed_tokens" in jax.tree_util.keystr(path) else x, model.params)
    model = dataclasses.replace(model, params=params, engines={})
    engine, spoiled = Engine(model, **ENGINE), set()
    scrub = engine.runner.scrub
    engine.runner.scrub = lambda state, pages: spoiled.update(pages) or scrub(state, pages)
    got, ((shard, _), _) = _served(engine, [healthy, [nan] + rng.integers(0, 100, 15).tolist()])
    assert got[1] == ([], [], "error") and shard == 0 and spoiled == set(range(16, 20))  # shard 1's first 4 pages
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(engine.state.cache))
    later, (_, (later_shard, pages)) = _served(engine, [healthy, long])  # `long` takes all of shard 1's pages
    assert later_shard == 1 and spoiled <= pages
    alone = Engine(model, **ENGINE)
    for prompt, out in [(healthy, got[0]), (healthy, later[0]), (long, later[1])]:
        want = model.generate(prompt, GREEDY, engine=alone)
        assert out[0] == want.token_ids and nan not in want.token_ids and out[2] == "length"
        np.testing.assert_allclose(out[1], want.logprobs, atol=1e-5)
    assert engine.blocks.num_free == engine.blocks.num_pages


def test_shards_keep_their_own_pages_prefix_cache_and_preemption():
    """The host side alone: 2 shards of 6 pages of 2 tokens, 2 rows each."""
    bm = BlockManager(12, 2, shards=2)
    sched = Scheduler(bm, max_seqs=4, prefill_budget=100, lookahead=1)
    a, b, c = seq(0, [1, 2, 3, 4, 5]), seq(1, [1, 2, 3, 4, 5]), seq(2, [1, 2, 3, 4, 5, 6, 7])
    for s in (a, b):
        sched.add(s)
    sched.schedule_prefill()
    assert (a.shard, b.shard) == (0, 1) and a.pages == [0, 1, 2] and b.pages == [6, 7, 8]  # balanced
    for s in (a, b):
        s.num_cached = s.num_tokens
        bm.register_full_pages(s)
    sched.add(c)  # its prefix is cached on both shards: hits either way, on the emptier (tie: lower) shard
    (chunk,) = sched.schedule_prefill()
    assert c.shard == 0 and c.pages[:2] == [0, 1] and chunk.start == 4
    sched.finish(b)
    d = seq(3, [1, 2, 3, 4, 9])
    sched.add(d)
    sched.schedule_prefill()
    assert d.shard == 1 and d.pages[:2] == [6, 7]  # the emptier shard, and its own cached prefix
    # Shard 0 runs out of pages: its newest sequence (c) is preempted, not d on the other shard.
    a.output += [0, 0, 0, 0]  # a has grown: shard 0's 6 pages cannot cover a and c any more
    for s in (a, c, d):
        s.output.append(0)
        s.num_cached = s.num_tokens - 1  # decoding
    batch = sched.schedule_decode()
    assert sched.stats.preempted == 1 and c.status is Status.WAITING and d in batch and a in batch
    assert all(bm.shard_of(p) == 0 for p in a.pages) and all(bm.shard_of(p) == 1 for p in d.pages)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_operations_on_shards_keep_the_invariants(data):
    """Random adds, steps, finishes and aborts on a sharded pool: the serving host's invariants,
    and every sequence on pages and rows of its own shard."""
    draw = data.draw
    shards, ps = draw(st.integers(2, 3), "shards"), draw(st.integers(1, 3), "page_size")
    bm = BlockManager(shards * draw(st.integers(3, 8), "pages per shard"), ps, prefix_caching=draw(st.booleans()), shards=shards)
    sched = Scheduler(bm, shards * draw(st.integers(1, 2)), draw(st.integers(1, 8)), draw(st.integers(1, 3)))
    runner, prompts, next_id = FakeRunner(bm), [[0, 1, 0, 1, 1, 0, 0, 1]], 0
    for op in draw(st.lists(st.sampled_from(["add"] * 3 + ["step"] * 5 + ["finish", "abort"]), min_size=20, max_size=60)):
        if op == "add":
            base = draw(st.sampled_from(prompts))[: draw(st.integers(0, 16))]
            prompt = base + draw(st.lists(st.integers(0, 1), min_size=0 if base else 1, max_size=6))
            try:
                sched.add(seq(next_id, prompt, max_new=draw(st.integers(1, 8))))
                prompts.append(prompt)
            except GenerationError:
                assert bm.pages_for(len(prompt)) > bm.shard_pages
            next_id += 1
        elif op == "step":
            if not _prefill_step(draw, sched, runner):
                decode_step(draw, sched, runner)
        elif sched.running:
            s = draw(st.sampled_from(sched.running))
            sched.finish(s) if op == "finish" else sched.abort(s)
        check_invariants(sched, runner)
        assert all(sched.running_in(shard) <= sched.shard_seqs for shard in range(shards))
        assert all(bm.shard_of(p) == s.shard for s in sched.running for p in s.pages)


def _prefill_step(draw, sched, runner) -> bool:
    try:
        chunks = sched.schedule_prefill()
    except GenerationError:  # a preempted sequence grown past a whole shard: dropped
        return True
    for c in chunks:
        runner.write(c.seq, c.start, c.start + c.length, c.seq.tokens)
        sched.computed(c, draw(st.integers(0, 1)) if c.last else None)
        if c.last and len(c.seq.output) >= c.seq.max_new_tokens:
            sched.finish(c.seq)
    for shard in range(sched.shards):  # the token budget is per shard
        assert sum(c.length for c in chunks if c.seq.shard == shard) <= sched.prefill_budget
    return bool(chunks)


def _collectives(hlo: str) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(line, result shapes) of each collective of a compiled program's HLO text."""
    out = []
    for line in hlo.splitlines():
        m = re.search(r"= (.+?) (all-gather|all-to-all|collective-permute|all-reduce)(-start)?\(", line)
        if m:
            shapes = [tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\[([\d,]*)\]", m.group(1))]
            out.append((line.strip(), shapes))
    return out


@pytest.mark.parametrize("spec", ["dp=2", "dp=2,tp=2"])
def test_decode_step_moves_no_pages_across_devices(folder, spec):
    """The compiled decode step of a dp mesh has no collective over the pool: dp alone, none but
    the gather of the few small outputs the host reads (each shard's loop runs on its own rows'
    state: no "any shard busy" sum); with tp, also the tensor-parallel reductions of activations,
    none of them pool-sized or shaped like gathered pages."""
    model = _load(folder, spec)
    ps, dp, tp = 4, model.mesh.shape["dp"], model.mesh.shape["tp"]
    engine = Engine(model, batch_size=4, max_len=64, num_pages=256, page_size=ps, prefill_tokens=16, chunk=4)
    runner, state = engine.runner, engine.runner.new_state()
    b = engine.batch_size
    spec_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    args = runner._decode_inputs(runner.table([[]] * b), np.zeros(b, np.int32), np.ones(b, bool), 1)
    hlo = runner._decode.lower(runner.decode_keys(64), False, None, 0, model.params, spec_state, *args,
                               *runner._cascade_inputs()).compile().as_text()
    # and with a shared prefix read once per shard (cascade attention), some rows reading their own tables
    cascade = runner._cascade_inputs(np.zeros((dp, 4), np.int32), np.full(b, ps, np.int32))
    hlo += runner._decode.lower(runner.decode_keys(64), False, (4 * ps, 16, True), 0, model.params, spec_state,
                                *args, *cascade).compile().as_text()
    pool = state.cache[0].k  # [pages, ps, K, D]
    local_pool = pool.size // dp // tp
    found = _collectives(hlo)
    for line, shapes in found:
        assert "all-to-all" not in line and "collective-permute" not in line, line
        for shape in shapes:
            assert int(np.prod(shape)) < local_pool // 16, line
            assert not any(shape[i : i + 3] in ((ps, k, pool.shape[3]) for k in (pool.shape[2], pool.shape[2] // tp))
                           for i in range(len(shape))), line  # no gathered pages
    if tp == 1:  # nothing is summed over dp: the shards' loops run apart
        assert not any("all-reduce" in line for line, shapes in found), found
    assert len(found) < 128  # two programs


def test_data_parallel_speculative_decoding_equals_one_device(folder, single):
    """Speculative decoding (drafts looked up and verified on the device, in each dp shard's own decode loop) on a
    mesh split over dp and tp gives the tokens and log-probabilities of one device without it."""
    model = _load(folder, "dp=2,tp=2")
    engine = Engine(model, **ENGINE, speculative_tokens=3)
    _assert_same(model.generate(_workload(), GREEDY, engine=engine), single)
    stats = engine.scheduler.stats
    assert stats.verified > 0 and stats.drafted > 0, stats
    assert engine.blocks.num_free == engine.blocks.num_pages
