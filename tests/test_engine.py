"""The paged serving engine against each prompt run alone: chunked prefill, prefix-cache hits
(a prompt that is a prefix of another, identical prompts), preemption and cancellation must not
change any token or log-probability, for every registered architecture."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import jaxllm
from jaxllm.engine import Engine, Request
from jaxllm.models import registry

GREEDY = jaxllm.SamplingParams(max_new_tokens=12, ignore_eos=True, logprobs=True)
LOGP_TOL = 1e-4  # |ours - transformers'| of a log-probability (float32 ours, float64 log-softmax of transformers' logits)


def _workload(seed=0):
    """Prompts whose prefill spans several chunks of 16 tokens, share pages of 4 tokens, repeat."""
    rng = np.random.default_rng(seed)
    long = rng.integers(0, 128, 41).tolist()
    other = rng.integers(0, 128, 23).tolist()
    return [long, long[:20], other, other, rng.integers(0, 128, 7).tolist(), long[:9] + other[:30]]


def _alone(model, prompts, params, prefill_tokens, **sizes):
    """Each prompt by itself in an engine of the same chunk budget: one sequence at a time, no
    prefix cache, nothing preempted. `sizes` (batch_size, num_pages, chunk) may repeat the engine
    under test's, so the programs it compiled serve this run too: the prompts still run one at a
    time, each in a pool it has to itself."""
    sizes = {"batch_size": 1, **sizes}
    engine = Engine(model, max_len=128, page_size=4, prefill_tokens=prefill_tokens, prefix_caching=False, **sizes)
    return [model.generate(p, params, engine=engine) for p in prompts]


def _assert_transformers_agrees(ref, prompt, out):
    """`out` against transformers' forward over the prompt and `out`'s tokens (teacher-forced, no cache): each token
    is transformers' most likely one (a near-tie, within LOGP_TOL, may go either way) and its log-probability is
    transformers', which checks decoding through the paged cache against the reference at every generated position.
    (Top log-probabilities against transformers, 5% more compile time per architecture here: test_generation.)"""
    chosen = reference.assert_greedy(reference.continuation_logprobs(ref, prompt, out.token_ids), out.token_ids, LOGP_TOL)
    print(f"log-probabilities vs transformers': max abs diff {np.abs(np.asarray(out.logprobs) - chosen).max():.2e}")
    np.testing.assert_allclose(out.logprobs, chosen, rtol=0, atol=LOGP_TOL)


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-5)


@pytest.mark.parametrize("arch", registry.names())
def test_mixed_workload_equals_each_prompt_alone(arch, tmp_path):
    """Three sequences at a time over 22 pages of 4 tokens (20 beside recurrent layers): the six prompts need more, so the
    newest is preempted and recomputed; prompts are prefilled in chunks of at most 16 tokens; the
    repeated prefixes hit the cache. Every prompt's greedy tokens and their log-probabilities are those of
    transformers' forward over them (the reference for decoding through the paged cache, every architecture)."""
    ref = reference.build(arch, tmp_path, seed=2)
    model = jaxllm.load(tmp_path)
    # In this order every decode call that shares cached pages also runs a row that shares none: one cascade program
    # (keys (128, 128, others=True)) beside the plain one, not two (0.5-1 s of compile less per architecture)
    prompts = [_workload()[i] for i in (5, 2, 3, 1, 0, 4)]
    # Without a prefix cache (recurrent layers) a prompt is admitted only with pages for all of it, and 22 pages
    # never run out: 20 do
    pages = 20 if model.config.recurrent else 22
    engine = Engine(model, batch_size=3, max_len=128, num_pages=pages, page_size=4, prefill_tokens=16, chunk=4, cascade=True)
    together = model.generate(prompts, GREEDY, engine=engine)
    alone = _alone(model, prompts, GREEDY, 16, batch_size=3, num_pages=pages, chunk=4)
    _assert_same(together, alone)
    for prompt, out in zip(prompts, together):
        _assert_transformers_agrees(ref, prompt, out)
    stats = engine.scheduler.stats
    assert stats.preempted > 0, "the workload should run out of pages"
    length_dependent = model.config.rope.length_dependent  # keys depend on the length (not HunYuan's fixed NTK alpha)
    assert stats.chunked > 0 or length_dependent, "a prompt longer than the budget is prefilled in chunks"
    # no prefix cache where keys depend on the length, nor beside recurrent layers (Qwen3-Next): their state is in no page
    assert engine.blocks.prefix_caching != (length_dependent or model.config.recurrent)
    if engine.blocks.prefix_caching:
        assert engine.blocks.stats.hit_tokens >= 20 + 20, "the repeated prompts hit the prefix cache"
        assert stats.cascaded > 0, "rows sharing cached pages decode them as one shared part (cascade attention)"


def test_cancelled_request_frees_its_pages_and_leaves_the_others(llama):
    prompts = _workload(1)
    engine = Engine(llama, batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)
    seqs = [engine.add(Request(p, GREEDY.resolved(), i)) for i, p in enumerate(prompts)]
    got = {i: [] for i in range(len(prompts))}
    lps = {i: [] for i in range(len(prompts))}
    while engine.has_work():
        for ev in engine.step():
            got[ev.index] += ev.tokens
            lps[ev.index] += ev.logprobs
        if len(got[2]) >= 3 and seqs[2] in engine.index_of:
            engine.abort(seqs[2])  # mid-stream, between two steps
    assert 3 <= len(got[2]) < 12
    assert engine.blocks.num_free == engine.blocks.num_pages  # every page is back
    alone = _alone(llama, prompts, GREEDY, 32)
    for i in (0, 1, 3, 4, 5):
        assert got[i] == alone[i].token_ids
        np.testing.assert_allclose(lps[i], alone[i].logprobs, atol=1e-5)


def test_events_come_in_order_and_the_last_names_its_finish_reason(llama):
    """Requests added while others run, one cancelled: each request's events arrive in order, the
    last (and only it) is finished and says why: "stop" at an EOS id, "length" at max_new_tokens;
    the cancelled one gets none, and every page goes back."""
    prompts = _workload(6)[:4]
    free = llama.generate(prompts[0], GREEDY)
    eos = free.token_ids[3]  # an EOS id that the first request meets at its 4th token (or sooner)
    model = jaxllm.LoadedModel(llama.config.replace(eos_token_ids=(eos,)), llama.graphdef, llama.params)
    engine = Engine(model, batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)
    stops, lengths = GREEDY.resolved(), dataclasses.replace(GREEDY, max_new_tokens=6).resolved()
    seqs = [engine.add(Request(prompts[0], dataclasses.replace(stops, ignore_eos=False), 0))]
    events = {i: [] for i in range(4)}
    steps = 0
    while engine.has_work():
        for ev in engine.step():
            events[ev.index].append(ev)
        steps += 1
        if steps == 1:
            seqs += [engine.add(Request(p, lengths, i)) for i, p in enumerate(prompts[1:], 1)]
        if steps == 2:
            engine.abort(seqs[3])
    for i, reason in ((0, "stop"), (1, "length"), (2, "length")):
        *before, last = events[i]
        assert not any(ev.finished or ev.finish_reason for ev in before)
        assert last.finished and last.finish_reason == reason
    assert [t for ev in events[0] for t in ev.tokens] == free.token_ids[: free.token_ids.index(eos) + 1]
    assert [len([t for ev in events[i] for t in ev.tokens]) for i in (1, 2)] == [6, 6]
    assert not any(ev.finished for ev in events[3])
    assert engine.blocks.num_free == engine.blocks.num_pages


def _serve_to_the_end(model, engine, prompts, got):
    """Step `engine` until it is done, adding each event's tokens to `got`: each prompt's tokens are those it gets
    alone, and every page is back."""
    while engine.has_work():
        for ev in engine.step():
            got[ev.index] += ev.tokens
    assert got == {i: c.token_ids for i, c in enumerate(_alone(model, prompts, GREEDY, 32))}
    assert engine.blocks.num_free == engine.blocks.num_pages


def test_an_interrupted_step_leaves_the_engine_usable(llama, monkeypatch):
    """Ctrl-C while a decode call computes: the device state it was given is gone. The engine
    makes a new one and recomputes the running sequences, which end with the tokens they would
    have had; before, every later step failed on a deleted buffer."""
    prompts = _workload(1)[:2]
    engine = Engine(llama, batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)
    for i, p in enumerate(prompts):
        engine.add(Request(p, GREEDY.resolved(), i))
    got = {0: [], 1: []}
    while not all(got.values()):  # both decoding: the next step is a decode call only
        for ev in engine.step():
            got[ev.index] += ev.tokens
    real = engine.runner.decode

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the state is donated, the call's results are lost
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.runner, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.step()
    monkeypatch.undo()
    _serve_to_the_end(llama, engine, prompts, got)


@pytest.mark.parametrize("where", ["runner.decode", "scheduler.schedule_decode"])
@pytest.mark.parametrize("donated", [True, False])
def test_an_interrupted_step_keeps_the_first_tokens_its_prefill_made(llama, monkeypatch, where, donated):
    """Ctrl-C in the decode half of a step whose prefill gave new requests their first tokens (in the device's call,
    after it took the state, or before the call): those tokens are the sequences' own already, and the step's
    events carrying them come first from the next step. They were lost: each request went on without its first token."""
    prompts = _workload(1)[:3]
    engine = Engine(llama, batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)
    for i, p in enumerate(prompts):
        engine.add(Request(p, GREEDY.resolved(), i))
    owner, name = where.split(".")
    obj = getattr(engine, owner)
    real = getattr(obj, name)

    def interrupted(*args, **kwargs):  # at the first decode (the step whose prefill ended the 20-token prompt)
        if not any(not s.prefilling for s in engine.scheduler.running):
            return real(*args, **kwargs)
        if donated:
            real(*args, **kwargs)  # the state is donated (or the pages appended), the call's results are lost
        raise KeyboardInterrupt

    monkeypatch.setattr(obj, name, interrupted)
    got = {i: [] for i in range(len(prompts))}
    with pytest.raises(KeyboardInterrupt):
        while True:
            for ev in engine.step():
                got[ev.index] += ev.tokens
    assert not any(got.values())
    monkeypatch.undo()
    _serve_to_the_end(llama, engine, prompts, got)


def test_prefix_cache_survives_between_calls_and_compiles_are_few(llama):
    """A second call with the same prompts hits the pages the first left cached (its prompts all
    but their last page) and computes the same tokens; a third call of the same shapes compiles
    nothing new."""
    prompts = _workload(2)
    engine = Engine(llama, batch_size=4, max_len=128, num_pages=256, page_size=4, prefill_tokens=64, chunk=8)
    first = llama.generate(prompts, GREEDY, engine=engine)
    hits = engine.blocks.stats.hit_tokens
    again = llama.generate(prompts, GREEDY, engine=engine)
    _assert_same(again, first)
    assert engine.blocks.stats.hit_tokens - hits >= sum(len(p) - 4 for p in prompts)
    compiled = (engine.counters.prefill, engine.counters.decode)
    _assert_same(llama.generate(prompts, GREEDY, engine=engine), first)
    assert (engine.counters.prefill, engine.counters.decode) == compiled
    assert compiled[1] <= 2 and compiled[0] <= 8


def test_precompile_leaves_nothing_to_compile_and_changes_no_token(llama):
    """engine.precompile(requests) compiles every step shape serving them can meet, with top log-probabilities and a
    prompt scored among them: the run that follows traces nothing new and gives the tokens of an engine that compiled
    as it went."""
    prompts = _workload(3)
    top = dataclasses.replace(GREEDY, top_logprobs=3)
    params = [GREEDY] * (len(prompts) - 2) + [top, dataclasses.replace(top, prompt_logprobs=True)]
    reqs = [Request(p, q.resolved(), i) for i, (p, q) in enumerate(zip(prompts, params))]
    # Shapes no other test meets (compiled steps are shared by every engine of the model).
    kw = dict(batch_size=3, max_len=120, num_pages=64, page_size=4, prefill_tokens=48, chunk=3)
    engine = Engine(llama, **kw)
    engine.precompile(reqs)
    compiled = (engine.counters.prefill, engine.counters.decode)
    assert compiled[0] >= 1 and compiled[1] >= 1
    def tokens(engine):
        got = {i: [] for i in range(len(prompts))}
        for ev in engine.run(reqs):
            got[ev.index] += ev.tokens
        return got
    got = tokens(engine)
    assert (engine.counters.prefill, engine.counters.decode) == compiled
    assert got == tokens(Engine(llama, **kw))


def test_free_rows_fill_before_long_decode_calls(llama):
    """While a waiting request could start, a decode call runs only a few steps, so the batch
    fills within a few steps instead of one prefill budget per long decode call."""
    engine = Engine(llama, batch_size=8, max_len=128, num_pages=256, page_size=4, prefill_tokens=32, chunk=16)
    params = jaxllm.SamplingParams(max_new_tokens=40, ignore_eos=True).resolved()
    rng = np.random.default_rng(4)
    for i in range(8):  # 16 tokens each: two prompts per 32-token prefill budget
        engine.add(Request(rng.integers(0, 128, 16).tolist(), params, i))
    for _ in range(3):  # each step admits two, then decodes admit_steps tokens for those running
        engine.step()
    assert len(engine.slot_of) == 6
    assert max(len(s.output) for s in engine.slot_of) <= 1 + 3 * engine.admit_steps
    engine.step()
    assert len(engine.slot_of) == 8 and not engine.scheduler.waiting


def test_engines_of_one_model_share_their_compiled_steps(llama):
    """A new engine of the same shape (a new jaxllm.generate call's, here) compiles nothing: the
    jitted steps belong to the model's structure, not to an engine."""
    prompts = _workload(5)[:3]
    llama.engines.clear()
    first = llama.generate(prompts, GREEDY)
    (engine,) = llama.engines.values()
    compiled = (engine.counters.prefill, engine.counters.decode)
    llama.engines.clear()
    again = llama.generate(prompts, GREEDY)
    assert next(iter(llama.engines.values())) is not engine
    _assert_same(again, first)
    assert (engine.counters.prefill, engine.counters.decode) == compiled


def test_non_finite_logits_end_a_request_with_an_error(llama, caplog):
    """NaN logits end the request with finish_reason "error" and a warning, instead of emitting
    garbage tokens: at prefill (every weight NaN) and mid-decode (only tokens outside the prompt
    embed to NaN, so the first sampled token poisons the next step)."""
    prompt = [1, 2, 3, 4]

    def poison(path, x):
        if "embed_tokens" not in jax.tree_util.keystr(path):
            return x
        keep = np.zeros(x.shape[0], bool)
        keep[prompt] = True
        return jnp.where(keep[:, None], x, jnp.nan)

    mid = dataclasses.replace(llama, params=jax.tree_util.tree_map_with_path(poison, llama.params), engines={})
    with caplog.at_level("WARNING", logger="jaxllm"):
        out = mid.generate(prompt, GREEDY)
    assert out.finish_reason == "error" and 1 <= len(out.token_ids) < GREEDY.max_new_tokens
    assert out.error.startswith(f"the model's logits are NaN/inf at token {len(out.token_ids) + 1} of request 0: ")
    assert out.error in caplog.text and "\n" not in out.error and "jaxllm.inspect --scan" in out.error
    at_prefill = dataclasses.replace(llama, params=jax.tree.map(lambda x: x * jnp.nan, llama.params), engines={})
    out = at_prefill.generate(prompt, GREEDY)
    assert out.finish_reason == "error" and out.token_ids == [] and "NaN/inf at token 1 of request 0" in out.error


def test_misuse_of_the_public_api_is_refused_or_harmless(llama):
    from jaxllm.errors import GenerationError, InputError

    sizes = dict(batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)  # the test above's
    a, b = Engine(llama, **sizes), Engine(llama, **sizes)
    prompt = _workload(1)[0]
    mine, theirs = a.add(Request(prompt, GREEDY.resolved())), b.add(Request(prompt, GREEDY.resolved()))
    assert mine.seq_id == theirs.seq_id  # ids count per engine
    tokens = [t for ev in a.step() for t in ev.tokens]
    a.abort(theirs)  # another engine's sequence: left alone, and so is a's own of the same id
    with pytest.raises(GenerationError, match="takes the Sequence"):
        a.abort(0)
    with pytest.raises(GenerationError, match="holds requests added with Engine.add"):
        llama.generate([prompt], GREEDY, engine=a)  # its events would mix with the added request's
    while a.has_work():
        tokens += [t for ev in a.step() for t in ev.tokens]
    assert tokens == _alone(llama, [prompt], GREEDY, 32)[0].token_ids
    c = Engine(llama, **sizes)  # a prompt held in a JAX array (unhashable ids broke the prefix cache)
    c.add(Request(jnp.asarray(prompt), GREEDY.resolved()))
    assert [t for _ in iter(c.has_work, False) for ev in c.step() for t in ev.tokens] == tokens
    b.abort(theirs)
    assert b.blocks.num_free == b.blocks.num_pages and not b.has_work()
    for engine, what in ((Engine(jaxllm.load(llama.path, tokenizer=False), **sizes), "another model"), ("a", "str")):
        with pytest.raises(GenerationError, match=what):
            llama.generate([prompt], GREEDY, engine=engine)
    with pytest.raises(GenerationError, match="attention='bogus' is invalid"):
        Engine(llama, attention="bogus", **sizes)
    assert Engine(llama, **dict(sizes, max_len=10**12)).max_len == llama.config.context_length  # capped, not a 10**12-wide table
    with pytest.raises(InputError, match="prompt holds no token ids"):
        a.precompile([Request([], GREEDY.resolved())])
    # A budget or chunk beyond what the engine can hold is capped, not allocated (10**9 ran out of memory).
    huge = Engine(llama, **dict(sizes, max_len=4, prefill_tokens=10**9, chunk=10**9))
    assert (huge.budget, huge.chunk) == (4 * 4, 4)
    short = dataclasses.replace(GREEDY, max_new_tokens=2)
    assert llama.generate([5, 6], short, engine=huge).token_ids == llama.generate([5, 6], short, engine=a).token_ids


@pytest.mark.parametrize("max_len, page_size", [(4, 5), (64, 10**6), (None, 10**6), (10**12, 10**9)])
def test_a_page_larger_than_max_len_is_capped_at_max_len(llama, max_len, page_size):
    """A page holds at most max_len positions (after max_len's own cap at the model's): a larger page's rest is never
    written, only allocated (page_size=10**6 made a 64-token engine's pool 10**6 positions a page, and cuDNN's decode
    read width x page_size keys). Its pool is that of page_size=max_len, and it serves as such an engine does."""
    sizes = dict(batch_size=2, num_pages=4, prefill_tokens=32, chunk=4)
    engine = Engine(llama, max_len=max_len, page_size=page_size, **sizes)
    cap = min(max_len or llama.config.context_length, llama.config.context_length)
    assert engine.max_len == engine.blocks.page_size == engine.runner.page_size == cap and engine.width == 1
    pool = jax.tree.leaves(jax.eval_shape(engine.runner.new_state))  # its shapes, nothing allocated
    exact = jax.tree.leaves(jax.eval_shape(Engine(llama, max_len=cap, page_size=cap, **sizes).runner.new_state))
    assert sum(x.size for x in pool) == sum(x.size for x in exact)
    if cap == 4:
        short = dataclasses.replace(GREEDY, max_new_tokens=2)
        assert llama.generate([5, 6], short, engine=engine).token_ids == _alone(llama, [[5, 6]], short, 32)[0].token_ids


def test_a_request_that_fills_the_pool_exactly_runs(llama):
    """The last new token is sampled, never written: a request needs pages for its prompt and all
    but one new token. A 32-token prompt with one new token in a pool of 32 positions, and 28 + 5,
    run as they do alone; they were refused as needing a 9th page (and a decode reserved a page
    one token early, preempting sooner than it had to)."""
    prompt = np.random.default_rng(7).integers(0, 128, 32).tolist()
    engine = Engine(llama, batch_size=1, max_len=128, num_pages=8, page_size=4, prefill_tokens=32, chunk=4, prefix_caching=False)
    for n, new in ((32, 1), (28, 5)):
        params = dataclasses.replace(GREEDY, max_new_tokens=new)
        _assert_same([llama.generate(prompt[:n], params, engine=engine)], _alone(llama, [prompt[:n]], params, 32))
    with pytest.raises(jaxllm.GenerationError, match="needs 9 KV pages but the pool has 8"):
        engine.add(Request(prompt[:29], dataclasses.replace(GREEDY, max_new_tokens=5).resolved()))


def test_an_index_a_held_request_has_is_refused(llama):
    """Events name their request by `index` alone: a second request under the index of one the
    engine still holds (Request's default 0, twice) would make the two streams indistinguishable.
    It is refused in one line, before anything is queued (in run, before any request of the list);
    once the first is finished or aborted, its index is free again."""
    sizes = dict(batch_size=4, max_len=128, num_pages=64, page_size=4, prefill_tokens=32, chunk=4)
    engine, params = Engine(llama, **sizes), dataclasses.replace(GREEDY, max_new_tokens=2).resolved()
    prompt = _workload(1)[0]
    first = engine.add(Request(prompt, params))
    with pytest.raises(jaxllm.GenerationError, match="index 0 is already used by a request this engine holds"):
        engine.add(Request(prompt, params))
    assert len(engine.index_of) == 1 and len(engine.scheduler.waiting) == 1
    engine.abort(first)
    with pytest.raises(jaxllm.GenerationError, match="index 3 is already used"):
        list(engine.run([Request(prompt, params, 3), Request(prompt, params, 3)]))
    assert not engine.has_work()
    with pytest.raises(jaxllm.GenerationError, match="index must be hashable"):
        engine.add(Request(prompt, params, [0]))
    engine.add(Request(prompt, params))  # free again after the abort, and after the request finishes
    while engine.has_work():
        engine.step()
    engine.add(Request(prompt, params))
    assert len(engine.index_of) == 1
    engine.abort(next(iter(engine.index_of)))
    run = engine.run([Request(prompt, params)])
    next(run)  # a run left half iterated holds its requests: the error says so, and close() gives them back
    with pytest.raises(jaxllm.GenerationError, match="or by a run\\(\\) not iterated to its end"):
        llama.generate(prompt, params, engine=engine)
    run.close()
    assert not engine.has_work() and not engine.index_of


def test_pool_leaves_room_for_recurrent_states(tmp_path, monkeypatch):
    """A model with linear-attention layers keeps a state per sequence beside the pages: sizing the
    pool from the device's memory takes it out first, so a larger batch gets fewer pages by its states
    (and by its rows' sampling state over the vocabulary)."""
    from jaxllm.models.attention import kv_cache_bytes
    from jaxllm.models.mixers import state_bytes
    from jaxllm.serving import memory

    reference.build("Qwen3NextForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)

    class Device:
        def memory_stats(self):
            return {"bytes_limit": 2 << 30, "bytes_in_use": 0}

    monkeypatch.setattr(memory.jax, "local_devices", lambda: [Device()])
    sizes = dict(page_size=16, fraction=0.9, num_pages=None, max_len=128, budget=64, dp=1)
    few, many = (memory.pool_size(model, None, batch_size=b, **sizes) for b in (2, 202))
    states, page = 200 * state_bytes(model.config, model.dtype), kv_cache_bytes(model.config, 16, model.dtype)
    states += 200 * model.config.vocab_size * memory.SAMPLING_ROW_BYTES
    assert states > page  # the tiny model's states are worth pages
    assert few - many - 200 == pytest.approx(states / page, abs=1)


def test_pool_of_a_model_without_attention_holds_only_its_states(monkeypatch):
    """Mamba caches no keys (pages of 0 bytes): its pool is a full batch of full-length sequences, whatever the memory,
    and a batch whose recurrent states the device cannot hold is refused in one line."""
    from types import SimpleNamespace

    from jaxllm.errors import GenerationError
    from jaxllm.models.mixers import state_bytes
    from jaxllm.serving import memory

    arch = registry.get("MambaForCausalLM")
    model = SimpleNamespace(config=arch.config(dict(arch.tiny_config)), dtype=np.float32, mesh=None)
    one = state_bytes(model.config, np.float32)

    class Device:
        device_kind, id = "GPU", 0

        def memory_stats(self):
            return {"bytes_limit": 100 * one, "bytes_in_use": 0}

    monkeypatch.setattr(jax, "local_devices", lambda: [Device()])
    sizes = dict(page_size=16, fraction=0.9, num_pages=None, max_len=128, budget=64, dp=1)
    assert memory.pool_size(model, None, batch_size=4, **sizes) == 4 * 128 // 16
    with pytest.raises(GenerationError, match="recurrent states need .* lower batch_size$"):
        memory.pool_size(model, None, batch_size=200, **sizes)
