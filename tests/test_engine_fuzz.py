"""Randomized workloads through the paged engine. Two kinds:

- host only: the engine's calls recorded instead of run (no compile), many examples: every call
  a workload makes has a shape that Engine.precompile compiled for it;
- the tiny Llama through one engine shape (compiled once): random prompt lengths around the page
  size and the prefill budget up to max_len, shared prefixes, identical prompts, pools small
  enough to preempt, requests added between steps and aborted anywhere, seeded sampling, EOS
  stops. Every request's tokens and float32 log-probabilities must be those of its prompt served
  alone, the page pool's bookkeeping must hold after every step, nothing may stay allocated at the
  end, and nothing compiles after the first examples.
"""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import jaxllm
from jaxllm.engine import Engine, Request
from jaxllm.serving.sequence import Status

HOST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Recorder:
    """Stands in for the runner's jitted steps: records each prefill call's (rows, length, keys,
    sampling), the shape of its program, and finishes every row at its first token; `compile`
    records what precompile asked for."""

    def __init__(self, runner):
        self.calls, self.compiled = set(), set()
        self.runner = runner
        runner._prefill = self.prefill
        runner.compile = self.compile

    def prefill(self, rows, length):
        def call(keys, sampling, top, prompt, params, state, slots, *rest):
            self.calls.add((rows, length, keys, sampling, top, prompt))
            m = len(slots)
            best = (np.ones((m, top), np.int32), np.zeros((m, top), np.float32))  # the most likely tokens, when asked
            scored = (np.zeros((m, length), np.float32), (np.ones((m, length, top), np.int32), np.zeros((m, length, top), np.float32)),
                      np.ones((m, length), np.int32))  # the prompt's log-probabilities, top tokens and ranks
            extra = (best, scored) if top or prompt else None
            return state, np.ones(m, np.int32), np.zeros(m, np.float32), np.ones(m, bool), extra

        return call

    def compile(self, state, prefill_shapes, decode_keys, sampling=False, speculative=(0, []), top=0, prompt=False):
        self.compiled |= {(n, c, s, sampling, top, prompt) for n, c, s in prefill_shapes}


class Tiny:
    """The tiny Llama, shown in one word in hypothesis' reports."""

    def __init__(self, model):
        self.model = model

    def __repr__(self):
        return "tiny Llama"


@pytest.fixture(scope="module")
def tiny(llama):
    """The tiny Llama, ending at a token it often generates (94) besides its own EOS id (2)."""
    tiny = Tiny(dataclasses.replace(llama, generation_config=dict(llama.generation_config, eos_token_id=[2, 94]), engines={}))
    # Compiled steps belong to the model's graph, which the session's other tiny-Llama tests share
    # (in this worker, before this file): the calls they compiled are not this file's.
    tiny.before = Engine(tiny.model, **SHAPE).runner.compiled_calls()
    return tiny


@HOST
@given(budget=st.sampled_from([16, 48, 64, 256, 512]), batch=st.integers(1, 24),
       lengths=st.lists(st.integers(1, 120), min_size=1, max_size=24), sampled=st.lists(st.booleans(), min_size=24, max_size=24))
@example(budget=256, batch=16, lengths=[20] + [10] * 9, sampled=[False] * 24)  # a 4 x 64 call, then 6 chunks: 16 x 16
def test_precompile_compiles_every_prefill_call_a_workload_makes(tiny, budget, batch, lengths, sampled):
    """Prompts of any lengths, greedy and sampled mixed, every third asking for top log-probabilities and every fifth
    for its prompt's: each prefill call (its rows, length, keys, sampling, top width and prompt scoring) is one
    precompile compiled. It missed the greedy programs of a mix (a greedy prompt's call compiled at serve time), calls
    of more rows at a shorter length than the longest chunk's (ten short prompts behind one longer, budget 256: a
    16 x 16 call), and every call returning log-probabilities besides the sampled token."""
    engine = Engine(tiny.model, batch_size=batch, max_len=128, num_pages=batch * 32, page_size=4, prefill_tokens=budget, chunk=4)
    recorder = Recorder(engine.runner)
    engine.state = ()  # no device state: nothing runs
    rng = np.random.default_rng(len(lengths))
    reqs = [Request(rng.integers(0, 128, n).tolist(), jaxllm.SamplingParams(
        max_new_tokens=1, ignore_eos=True, temperature=1.0 if s else 0.0, seed=i, top_logprobs=2 * (i % 3 == 1),
        prompt_logprobs=i % 5 == 4).resolved(), i)
        for i, (n, s) in enumerate(zip(lengths, sampled))]
    engine.precompile(reqs)
    for _ in engine.run(reqs):
        pass
    assert recorder.calls <= recorder.compiled, sorted(recorder.calls - recorder.compiled)


# -- the tiny Llama, every example through one engine shape ----------------------------------------

# 7 pages of 4 tokens: a 23-token request needs 6, so two long ones preempt each other; a prefill
# budget of 16 tokens chunks the longer prompts. Every engine here (and each request's engine
# alone) has these shapes, so the examples share their compiled programs.
SHAPE = dict(batch_size=3, max_len=24, page_size=4, num_pages=7, prefill_tokens=16, chunk=4)
MODEL = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def served_alone(tiny, prompt, params):
    """A request's (tokens, logprobs, finish_reason) served by itself: no companion, no prefix cache,
    nothing preempted (memoized per model)."""
    key = (tuple(prompt), params)
    cache = tiny.__dict__.setdefault("alone", {})
    if key not in cache:
        engine = Engine(tiny.model, **dict(SHAPE, prefix_caching=False))
        tokens, logprobs, reason = [], [], None
        for ev in engine.run([Request(list(prompt), params)]):
            tokens, logprobs, reason = tokens + ev.tokens, logprobs + ev.logprobs, ev.finish_reason
        cache[key] = tokens, logprobs, reason
    return cache[key]


def check_pool(engine):
    """The page pool's bookkeeping against the sequences the engine holds."""
    bm, sched, ps = engine.blocks, engine.scheduler, engine.blocks.page_size
    holders = {}
    for s in sched.running:
        assert s.status is Status.RUNNING and len(set(s.pages)) == len(s.pages) and s.num_cached <= len(s.pages) * ps
        for i, page in enumerate(s.pages):
            holders.setdefault(page, []).append((s, i))
    assert all(s.status is Status.WAITING and not s.pages for s in sched.waiting)
    assert bm.refs == [len(holders.get(p, ())) for p in range(bm.num_pages)]  # a reference per holder
    free, cached = set(bm._free), set(bm._evictable)
    assert len(free) == len(bm._free) and not free & cached and not (free | cached) & set(holders)
    assert len(free) + len(cached) + len(holders) == bm.num_pages
    for page, held in holders.items():  # shared: the same prefix, computed, registered, written by none
        if len(held) > 1:
            (i,) = {i for _, i in held}
            assert bm._meta[page] is not None and len({tuple(s.tokens[i * ps : (i + 1) * ps]) for s, _ in held}) == 1
            assert all((i + 1) * ps <= min(s.num_cached, s.num_tokens - 1) for s, _ in held)
    slots = list(engine.slot_of.values())
    assert len(set(slots)) == len(slots) and all(s.status is Status.RUNNING for s in engine.slot_of)
    assert set(engine.index_of) == set(sched.running) | set(sched.waiting)


def requests(draw):
    """2 to 5 requests: lengths 1, a page, a page +- 1, beyond the budget, up to max_len - 1; a
    prefix of an earlier prompt (ending mid-page or on a page boundary) or the same prompt; as many
    new tokens as fit, 1, or a few; greedy or seeded sampling; EOS stops or not. The token ids come
    from a drawn seed (hypothesis' own draws shrink to zeros: every prompt alike)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16), "tokens"))
    base, prompts, out = rng.integers(0, 128, 23).tolist(), [], []
    for _ in range(draw(st.integers(2, 5), "requests")):
        kind = draw(st.sampled_from(["prefix", "same", "length"] if prompts else ["prefix", "length"]))
        if kind == "same":
            prompt = draw(st.sampled_from(prompts))
        else:
            n = draw(st.sampled_from([1, 3, 4, 5, 8, 12, 17, 20, 23]))
            prompt = base[:n] if kind == "prefix" else rng.integers(0, 128, n).tolist()
        prompts.append(prompt)
        room = SHAPE["max_len"] - len(prompt)
        new = draw(st.sampled_from(sorted({room, 1, min(room, 3)}, reverse=True)))
        sampled = draw(st.booleans())
        params = jaxllm.SamplingParams(max_new_tokens=new, ignore_eos=draw(st.booleans()), logprobs=True,
                                       temperature=0.9 if sampled else 0.0, top_k=5 if sampled else None,
                                       seed=int(rng.integers(2**32)) if sampled else None).resolved()
        when = draw(st.sampled_from([0, 2, 4]))  # the step it arrives before
        abort = draw(st.sampled_from([None] * 6 + ["before", "prefilling", "decoding", "finished", 0, 2]))
        out.append((prompt, params, when, abort))
    return out


@MODEL
@given(st.data())
def test_random_workloads_equal_each_request_alone(tiny, data):
    reqs = requests(data.draw)
    engine = Engine(tiny.model, **dict(SHAPE, prefix_caching=data.draw(st.sampled_from([True, True, False]), "prefix_caching"),
                                       cascade=data.draw(st.sampled_from([None, True, False]), "cascade")))
    got = {i: ([], [], None) for i in range(len(reqs))}
    seqs, done, aborted, step = {}, set(), set(), 0
    while engine.has_work() or step <= max(when for _, _, when, _ in reqs):
        for i, (prompt, params, when, abort) in enumerate(reqs):
            if when == step:
                seqs[i] = engine.add(Request(prompt, params, i))
            s = seqs.get(i)
            if s is None or i in aborted:
                continue
            if (abort == "before" and when == step or abort == "prefilling" and s.status is Status.RUNNING and s.prefilling
                    and s.num_cached or abort == "decoding" and got[i][0] or abort == "finished" and i in done
                    or isinstance(abort, int) and step == when + abort):
                engine.abort(s)  # a finished one is left alone
                aborted.add(i)
        check_pool(engine)
        for ev in engine.step():
            assert ev.index not in done, "an event after the last"
            tokens, logprobs, _ = got[ev.index]
            got[ev.index] = tokens + ev.tokens, logprobs + ev.logprobs, ev.finish_reason
            if ev.finished:
                done.add(ev.index)
        check_pool(engine)
        step += 1
        assert step < 200, "the engine stopped making progress"
    bm = engine.blocks
    assert bm.num_free == bm.num_pages and not any(bm.refs) and not engine.slot_of and not engine.index_of
    for i, (prompt, params, _, abort) in enumerate(reqs):
        tokens, logprobs, reason = got[i]
        want = served_alone(tiny, prompt, params)
        if i in aborted and i not in done:  # what it got before it was aborted
            want = want[0][: len(tokens)], want[1][: len(tokens)], None
        assert tokens == want[0] and reason == want[2], (i, tokens, reason, want)
        np.testing.assert_allclose(logprobs, want[1], atol=1e-5)
    stats = engine.scheduler.stats  # what the examples met: pytest --hypothesis-show-statistics
    for what, met in (("preempted", stats.preempted), ("chunked", stats.chunked), ("cascaded", stats.cascaded),
                      ("prefix hits", bm.stats.hit_tokens), ("aborted", aborted - done),
                      ("stopped at EOS", any(r == "stop" for _, _, r in got.values()))):
        if met:
            event(what)
    again = engine.add(Request(reqs[0][0], reqs[0][1], 0))  # the indices are free again, the pool whole
    while engine.has_work():
        engine.step()
    assert again.status is Status.FINISHED and engine.blocks.num_free == engine.blocks.num_pages
    # Every prefill call took a shape of the menu: one row of 16 positions reading the 24 keys.
    made = engine.runner.compiled_calls()
    assert {(rows, length, keys) for rows, length, keys, _ in made - tiny.before} <= {(1, 16, 24)}
    assert (1, 16, 24) in {(rows, length, keys) for rows, length, keys, _ in made}


def _sampled(seed, **fields):
    return jaxllm.SamplingParams(**{**dict(max_new_tokens=5, ignore_eos=True, logprobs=True, temperature=0.9, top_k=5,
                                           seed=seed), **fields}).resolved()


def _workload(name):
    """Workloads of a demanding user that the random ones above do not draw: (prompt, params) pairs."""
    rng = np.random.default_rng(len(name))
    prompt, greedy = rng.integers(0, 128, 13).tolist(), dataclasses.replace(_sampled(0), temperature=0.0, top_k=0, seed=None)
    if name == "one prompt, every kind of sampling":  # identical prompts (prefix hits) in calls of every sampling kind
        return [(prompt, greedy), (prompt, _sampled(4)), (prompt, _sampled(4, top_k=0, top_p=0.8)), (prompt, _sampled(5, min_p=0.2)),
                (prompt, _sampled(5, presence_penalty=2.0, frequency_penalty=0.5)), (prompt, _sampled(4, logit_bias={3: -100.0})),
                (prompt, dataclasses.replace(greedy, top_logprobs=3)), (prompt, _sampled(6, top_k=1)),
                (prompt, dataclasses.replace(greedy, prompt_logprobs=True))]
    if name == "penalties and min_tokens under preemption":
        return [(prompt + [1, 2, 3, 4], _sampled(1, presence_penalty=1.5, frequency_penalty=0.7)),
                (prompt + [9, 8], _sampled(2, logit_bias={5: 3.0}, max_new_tokens=6)),
                (rng.integers(0, 128, 17).tolist(), _sampled(3, repetition_penalty=1.3, max_new_tokens=7)),
                (prompt[:5], dataclasses.replace(greedy, ignore_eos=False, min_tokens=4, stop_token_ids=tuple(range(5, 40))))]
    if name == "stop ids with logprobs":  # ids that end a request at its first token, later, or only after min_tokens
        ids = tuple(int(t) for t in rng.permutation(128)[:30])
        return [(prompt, dataclasses.replace(greedy, ignore_eos=False, stop_token_ids=ids[:10], top_logprobs=2)),
                (prompt, dataclasses.replace(greedy, ignore_eos=False, stop_token_ids=ids, min_tokens=3)),
                (prompt[:4], _sampled(7, ignore_eos=False, stop_token_ids=ids, max_new_tokens=8)),
                (prompt[:7], dataclasses.replace(greedy, ignore_eos=False, stop_token_ids=ids[10:], max_new_tokens=10))]
    if name == "prompts of max_len - 1 and max_len":  # one new token fills the sequence; a full one is only scored
        n = SHAPE["max_len"]
        return [(rng.integers(0, 128, n - 1).tolist(), dataclasses.replace(greedy, max_new_tokens=1)),
                (rng.integers(0, 128, n - 1).tolist(), _sampled(8, max_new_tokens=1)),
                (rng.integers(0, 128, n - 2).tolist(), dataclasses.replace(greedy, max_new_tokens=2, top_logprobs=1)),
                (rng.integers(0, 128, n).tolist(), dataclasses.replace(greedy, max_new_tokens=0, prompt_logprobs=True))]
    assert name == "many tiny requests"
    return [(rng.integers(0, 128, int(rng.integers(1, 4))).tolist(),
             dataclasses.replace(_sampled(i) if i % 2 else greedy, max_new_tokens=1 + i % 3)) for i in range(40)]


@pytest.mark.parametrize("name", ["one prompt, every kind of sampling", "penalties and min_tokens under preemption",
                                  "stop ids with logprobs", "prompts of max_len - 1 and max_len", "many tiny requests"])
def test_demanding_workloads_equal_each_request_alone(tiny, name):
    """Each request's tokens, log-probabilities, top log-probabilities, finish reason and prompt log-probabilities are
    those it gets served alone, whatever else its calls hold (seeded sampling included)."""
    reqs = _workload(name)
    engine = Engine(tiny.model, **SHAPE)
    got = {i: [] for i in range(len(reqs))}
    for ev in engine.run([Request(p, q, i) for i, (p, q) in enumerate(reqs)]):
        got[ev.index].append(ev)
        check_pool(engine)
    for i, (prompt, params) in enumerate(reqs):
        alone = list(Engine(tiny.model, **dict(SHAPE, prefix_caching=False)).run([Request(prompt, params)]))
        assert [t for ev in got[i] for t in ev.tokens] == [t for ev in alone for t in ev.tokens], i
        tops = [[pair for ev in events for step in ev.top_logprobs for pair in step] for events in (got[i], alone)]
        assert [t for t, _ in tops[0]] == [t for t, _ in tops[1]], i
        np.testing.assert_allclose([lp for _, lp in tops[0]], [lp for _, lp in tops[1]], atol=1e-5)
        np.testing.assert_allclose([x for ev in got[i] for x in ev.logprobs], [x for ev in alone for x in ev.logprobs], atol=1e-5)
        assert got[i][-1].finish_reason == alone[-1].finish_reason, i
        first, want = got[i][0].prompt_logprobs, alone[0].prompt_logprobs
        assert (first is None) == (want is None) and (first is None or np.allclose(first[1:], want[1:], atol=1e-5))
    assert engine.blocks.num_free == engine.blocks.num_pages
    assert engine.scheduler.stats.preempted or "preemption" not in name
    assert engine.blocks.stats.hit_tokens or "one prompt" not in name


def test_speculative_decoding_keeps_drafts_and_gives_the_tokens_decoding_gives(tiny):
    """Prompt lookup (speculative_tokens=3) on the tiny Llama with its attention outputs scaled down, nearly a bigram
    model: a prompt that is its own greedy output followed by that output's first tokens again continues mostly as it
    did before, so most drafts looked up in it are kept, and some rejected. Greedy and seeded sampled requests get
    the tokens and log-probabilities (and top_logprobs) they get alone without speculation, in a pool that preempts."""
    damped = jax.tree_util.tree_map_with_path(lambda path, x: x * 0.01 if "o_proj" in jax.tree_util.keystr(path) else x,
                                              tiny.model.params)
    model = dataclasses.replace(tiny.model, params=damped, engines={})
    greedy = jaxllm.SamplingParams(max_new_tokens=10, ignore_eos=True, logprobs=True).resolved()
    chain = model.generate([5, 6, 7], greedy, engine=Engine(model, **SHAPE)).token_ids  # its own greedy output
    sampled = dataclasses.replace(greedy, temperature=0.9, top_k=5, seed=3, repetition_penalty=1.2)
    reqs = [(chain + chain[:2], dataclasses.replace(greedy, max_new_tokens=12)),  # drafts kept
            ([9, 40, 11, 3, 60, 9, 40], greedy), ([17, 30, 17], sampled), ([5, 6, 7, 8, 5, 6, 7], sampled)]
    engine = Engine(model, **dict(SHAPE, speculative_tokens=3))
    requests = [Request(prompt, params, i) for i, (prompt, params) in enumerate(reqs)]
    engine.precompile(requests)  # the speculative decode programs too: serving compiles none
    compiled = engine.counters.verify
    got = {i: ([], []) for i in range(len(reqs))}
    for ev in engine.run(requests):
        got[ev.index] = got[ev.index][0] + ev.tokens, got[ev.index][1] + ev.logprobs
        check_pool(engine)
    for i, (prompt, params) in enumerate(reqs):
        tokens, logprobs, _ = served_alone(Tiny(model), prompt, params)
        assert got[i][0] == tokens, (i, got[i][0], tokens)
        np.testing.assert_allclose(got[i][1], logprobs, atol=1e-5)
    stats = engine.scheduler.stats
    assert stats.preempted and 3 <= stats.accepted < stats.drafted, stats
    assert engine.counters.verify == compiled > 0
    # top_logprobs: the copying request's most likely tokens at each step, with and without speculation
    top = Request(reqs[0][0], dataclasses.replace(reqs[0][1], top_logprobs=2))
    plain, spec = ([pair for ev in Engine(model, **dict(SHAPE, speculative_tokens=k)).run([top]) for step in ev.top_logprobs
                    for pair in step] for k in (0, 3))
    assert [t for t, _ in spec] == [t for t, _ in plain] and len(plain) == 2 * 12
    np.testing.assert_allclose([lp for _, lp in spec], [lp for _, lp in plain], atol=1e-5)
    assert engine.blocks.num_free == engine.blocks.num_pages


def test_decode_programs_update_the_page_pool_in_place(tiny):
    """The decode and speculative decode programs copy no page-pool buffer: a lax.cond choosing a verify or a decode
    step made XLA copy the whole pool three times a step (30% of Llama-3-8B's batch-64 step on an H200, and with
    the default pool, most of the device's memory read and written each step)."""
    runner = Engine(tiny.model, **dict(SHAPE, speculative_tokens=3)).runner
    state, b = runner.new_state(), runner.max_seqs
    idle = runner._decode_inputs(runner.table([[]] * b), np.zeros(b, np.int32), np.ones(b, bool), 1)
    keys = runner.kv_bucket(SHAPE["max_len"])
    programs = {"decode": runner._decode.lower(runner.decode_keys(keys), 0, None, 0, tiny.model.params, state, *idle,
                                               *runner._cascade_inputs()),
                "speculate": runner._speculate.lower(runner.decode_keys(keys), keys, 0, 0, 3, tiny.model.params, state, *idle,
                                                     *runner._speculate_inputs([[]] * b, np.zeros(b, np.int32), keys))}
    pool = "[" + ",".join(map(str, state.cache[0].k.shape)) + "]"
    for name, lowered in programs.items():
        copies = [line for line in lowered.compile().as_text().splitlines() if pool in line and " copy(" in line]
        assert not copies, (name, copies[:2])


def test_prompt_lookup_drafts_what_followed_the_longest_latest_match():
    """vLLM's ngram proposer: the last 4 tokens down to 2 looked up before the end, the longest match first, its
    latest occurrence; the draft may run into the suffix itself, and then repeats with the period it shows, up to k."""
    from jaxllm.serving.ngram import propose

    assert propose([7, 1, 2, 3, 5, 9, 2, 3, 8, 1, 2, 3], 2) == [5, 9]  # (1, 2, 3) beats the later (2, 3)
    assert propose([1, 2, 3, 4, 2, 3, 9, 2, 3], 5) == [9, 2, 3, 9, 2]  # the latest (2, 3), repeating with its period 3
    assert propose([5, 5, 5, 5], 3) == [5, 5, 5]
    assert propose([1, 2, 3, 4, 2], 3) == propose([4, 2], 3) == propose([1, 2, 1, 2], 0) == []  # one token matches: no draft


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=4, max_size=4), st.integers(1, 5))
def test_prompt_lookup_on_the_device_drafts_what_the_host_does(rows, k):
    """ngram.propose_rows, the lookup the decode loop runs on the device for every row at once, drafts what `propose`
    drafts for each row (k tokens, or none), its rows padded to one width with tokens past their sizes."""
    from jaxllm.serving.ngram import propose, propose_rows

    padded = np.array([row + [9] * (12 - len(row)) for row in rows])  # what lies past a row's size is not its own
    drafts, lengths = map(np.asarray, propose_rows(padded, np.array([len(row) for row in rows]), k))
    assert [drafts[i, : lengths[i]].tolist() for i in range(len(rows))] == [propose(row, k) for row in rows]


def test_speculative_decoding_is_refused_where_a_draft_cannot_be_rolled_back():
    """A model with recurrent layers cannot take back the state a rejected draft left: refused in one line, at once."""
    from types import SimpleNamespace

    from jaxllm.models import registry

    arch = registry.get("MambaForCausalLM")
    model = SimpleNamespace(config=arch.config(dict(arch.tiny_config)), graphdef=None, params=None, generation_config={})
    with pytest.raises(jaxllm.GenerationError, match="recurrent layers .* use speculative_tokens=0$"):
        Engine(model, speculative_tokens=4)


BAD_ENGINES = [dict(batch_size=0), dict(batch_size=-1), dict(batch_size=2.0), dict(batch_size=True), dict(max_len=1),
               dict(page_size=0), dict(page_size="4"), dict(num_pages=0), dict(num_pages=1), dict(num_pages=10**12),
               dict(prefill_tokens=0), dict(chunk=-3), dict(memory_fraction=float("nan")), dict(kv_dtype="int4"),
               dict(cascade="yes"), dict(attention=5), dict(prefix_caching="no"), dict(prefix_caching=None),
               dict(speculative_tokens=-1), dict(speculative_tokens="4")]


@pytest.mark.parametrize("bad", BAD_ENGINES, ids=lambda bad: "-".join(f"{k}={v!r}" for k, v in bad.items()))
def test_bad_engine_sizes_are_refused_in_one_line(tiny, bad):
    """Zero, negative, fractional, huge or mistyped settings: one line naming the setting, before
    anything is allocated. prefix_caching='no' was taken as true (a string), None as false."""
    with pytest.raises(jaxllm.GenerationError) as err:
        Engine(tiny.model, **dict(SHAPE, **bad))
    message = str(err.value)
    named = "KV pages" if bad == dict(num_pages=1) else next(iter(bad))  # fewer pages than rows: says both
    assert "\n" not in message and named in message, message


TWO = jaxllm.SamplingParams(max_new_tokens=2).resolved()
BAD_REQUESTS = [([], TWO, "holds no token ids"), ([128], TWO, "vocabulary"), ([-1], TWO, "vocabulary"),
                ("hello", TWO, "got text"), ([[1, 2]], TWO, "shape"), ([1.5], TWO, "whole-number"), ([True], TWO, "bool"),
                ([2**70], TWO, "vocabulary"), ([1] * 24, TWO, "max_len"), ([1] * 23, TWO, "max_new_tokens to at most 1"),
                ([1], jaxllm.SamplingParams(max_new_tokens=2), "resolved"), ([1], None, "resolved"),
                ([1], dataclasses.replace(TWO, temperature=-1.0), "temperature=-1.0 is invalid"),
                ([1], dataclasses.replace(TWO, stop_token_ids=(128,)), "stop_token_ids=[128] is invalid"),
                ([1], dataclasses.replace(TWO, logit_bias=((500, 1.0),)), "logit_bias={500: 1.0} is invalid")]


def test_bad_requests_are_refused_in_one_line(tiny):
    """Empty prompts, ids outside the vocabulary, text, nesting, floats, prompts beyond max_len,
    unresolved or invalid params: each refused in one line, and nothing is queued."""
    engine = Engine(tiny.model, **SHAPE)
    for prompt, p, what in BAD_REQUESTS:
        with pytest.raises(jaxllm.JaxllmError) as err:
            engine.add(Request(prompt, p))
        assert "\n" not in str(err.value) and what in str(err.value), (prompt, str(err.value))
    assert not engine.has_work() and not engine.index_of


@pytest.mark.parametrize("bad", range(len(BAD_REQUESTS)), ids=lambda i: BAD_REQUESTS[i][2])
def test_a_bad_request_among_good_ones(tiny, bad):
    """One bad request among good ones: a run (or precompile) of the list is refused before anything is queued, in one
    line naming the bad one by its index (the refusal did not say which of the list to fix); added one by one, only it
    is refused, and the others run as they do alone."""
    prompt, params, what = BAD_REQUESTS[bad]
    good = [([5, 6, 7], TWO), ([9] * 5, dataclasses.replace(TWO, temperature=0.8, seed=1))]
    reqs = [Request(good[0][0], good[0][1], "a"), Request(prompt, params, "b"), Request(good[1][0], good[1][1], "c")]
    engine = Engine(tiny.model, **SHAPE)
    for call in (lambda: list(engine.run(reqs)), lambda: engine.precompile(reqs)):
        with pytest.raises(jaxllm.JaxllmError) as err:
            call()
        assert str(err.value).startswith("request 'b': ") and what in str(err.value) and "\n" not in str(err.value)
        assert not engine.has_work() and not engine.index_of
    with pytest.raises(jaxllm.JaxllmError, match="^(?!request)"):  # one request: its refusal as it is
        list(engine.run(reqs[1:2]))
    got = {}
    for req in reqs:
        try:
            engine.add(req)
        except jaxllm.JaxllmError:
            assert req.index == "b"
    while engine.has_work():
        for ev in engine.step():
            got[ev.index] = got.get(ev.index, []) + ev.tokens
    assert got == {i: served_alone(tiny, p, q)[0] for i, (p, q) in zip("ac", good)}


def test_non_finite_logits_end_only_their_request_and_spoil_no_later_one(tiny, caplog):
    """One NaN weight (an embedding row's first value): a request whose prompt holds that token ends at its first
    token, and one that generates it at the next, with finish_reason "error" and a one-line message naming the
    problem and the fix; a healthy request in the same batch gets what it gets alone, and so does one served after
    them in the same pool: the pages they leave held NaN keys and values (0 x NaN is NaN at masked positions)."""
    greedy = jaxllm.SamplingParams(max_new_tokens=6, ignore_eos=True, logprobs=True).resolved()
    good, makes = [9, 40, 11, 3], [17, 30, 21]
    nan = served_alone(tiny, makes, greedy)[0][0]  # the first token `makes` generates: its embedding goes NaN
    assert nan not in good + makes + served_alone(tiny, good, greedy)[0]
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[nan, 0].set(np.nan) if "embed_tokens" in jax.tree_util.keystr(path) else x, tiny.model.params)
    spoiled = Tiny(dataclasses.replace(tiny.model, params=params, engines={}))
    engine = Engine(spoiled.model, **SHAPE)
    with caplog.at_level("WARNING", logger="jaxllm"):
        got = {}
        for ev in engine.run([Request(p, greedy, i) for i, p in enumerate([makes, good, [5, nan, 6]])]):
            tokens, _, errors = got.get(ev.index, ([], [], []))
            got[ev.index] = tokens + ev.tokens, ev.finish_reason, errors + [ev.error]
        after = [(ev.tokens, ev.finish_reason) for ev in engine.run([Request(good, greedy)])]
    fix = ("its weights hold NaN/inf (check with `python -m jaxllm.inspect --scan MODEL`) or float16 overflowed (load "
           "with dtype=bfloat16 or float32)")
    assert got[0] == ([nan], "error", [None, f"the model's logits are NaN/inf at token 2 of request 0: {fix}"])
    assert got[2] == ([], "error", [f"the model's logits are NaN/inf at token 1 of request 2: {fix}"])
    alone = served_alone(spoiled, good, greedy)
    assert got[1][:2] == (alone[0], "length") and alone[0] == served_alone(tiny, good, greedy)[0]
    assert [t for tokens, _ in after for t in tokens] == alone[0] and after[-1][1] == "length"
    assert caplog.text.count("NaN/inf at token") == 2 and engine.blocks.num_free == engine.blocks.num_pages
