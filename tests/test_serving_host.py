"""The host side of the paged-KV serving core (jaxllm.serving): pages, prefix cache, scheduling.

No model and no JAX: a fake runner writes token ids into pages instead of K/V, so a wrong prefix
hit or a write into a shared page shows up as a content mismatch.
"""

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxllm.errors import GenerationError
from jaxllm.serving import block_manager as bm_module
from jaxllm.serving.block_manager import BlockManager
from jaxllm.serving.scheduler import PrefillChunk, Scheduler
from jaxllm.serving.sequence import Sequence, Status


def seq(seq_id, prompt, max_new=100):
    return Sequence(seq_id, list(prompt), SimpleNamespace(max_new_tokens=max_new))


def computed(bm, s):
    """The runner computed every token of s (as a finished prefill would)."""
    s.num_cached = s.num_tokens
    bm.register_full_pages(s)


def admitted(bm, s):
    bm.allocate(s)
    return s


def test_allocate_and_free_count_references():
    bm = BlockManager(num_pages=8, page_size=4)
    a = admitted(bm, seq(0, range(10)))
    assert a.pages == [0, 1, 2] and a.num_cached == 0 and bm.num_free == 5
    assert bm.refs[:4] == [1, 1, 1, 0]
    bm.free(a)
    assert a.pages == [] and bm.refs == [0] * 8 and bm.num_free == 8 and bm.num_evictable == 0


def test_prefix_hits_for_longer_and_shorter_prompts():
    bm = BlockManager(8, 4)
    a = admitted(bm, seq(0, range(9)))
    computed(bm, a)  # pages 0 and 1 are full: registered; page 2 holds one token
    longer = admitted(bm, seq(1, list(range(8)) + [50, 51, 52, 53]))
    assert longer.pages[:2] == a.pages[:2] and longer.num_cached == 8 and longer.num_to_compute == 4
    shorter = admitted(bm, seq(2, range(5)))  # a prefix of a: its last token (position 4) is in page 1
    assert shorter.pages[0] == a.pages[0] and shorter.pages[1] not in a.pages and shorter.num_cached == 4
    assert bm.refs[a.pages[0]] == 3 and bm.refs[a.pages[1]] == 2 and bm.refs[a.pages[2]] == 1
    assert bm.stats.hit_tokens == 12 and bm.stats.lookups == 3


def test_identical_prompts_and_the_last_token_rule():
    bm = BlockManager(8, 4)
    a = admitted(bm, seq(0, range(12)))
    computed(bm, a)  # all three pages full and registered
    b = admitted(bm, seq(1, range(12)))
    # Fully cached, yet the page of the last token is fresh: 4 tokens are computed, none shared is written.
    assert b.pages[:2] == a.pages[:2] and b.pages[2] not in a.pages and b.num_cached == 8
    computed(bm, b)  # b's page 2 has the same key as a's: it stays unregistered
    own = b.pages[2]
    bm.free(b)
    assert bm.refs[own] == 0 and own in bm._free and bm.num_evictable == 0 and bm.num_free == 5
    bm.free(a)
    assert bm.num_evictable == 3 and bm.num_free == 8


def test_partial_page_is_never_a_hit():
    bm = BlockManager(8, 4)
    a = admitted(bm, seq(0, range(6)))
    computed(bm, a)  # page 1 holds 2 tokens: not registered
    assert len(a.chain) == 1
    b = admitted(bm, seq(1, list(range(6)) + [7, 8, 9]))
    assert b.pages[0] == a.pages[0] and b.pages[1] != a.pages[1] and b.num_cached == 4


def test_lru_eviction_order_and_evicted_keys_stop_hitting():
    bm = BlockManager(3, 2)
    for i, first in enumerate((1, 2)):
        s = admitted(bm, seq(i, [first, first, 0]))
        computed(bm, s)
        bm.free(s)
    assert list(bm._evictable) == [0, 2]  # A's page 0, then B's page 2
    touch = admitted(bm, seq(2, [1, 1, 7]))  # a hit on A's page makes it the most recent
    assert touch.pages[0] == 0 and touch.num_cached == 2
    bm.free(touch)
    assert list(bm._evictable) == [2, 0]
    c = admitted(bm, seq(3, [3, 3, 0]))  # one truly free page, then evicts the least recent: B's
    assert c.pages == [1, 2] and list(bm._evictable) == [0]
    bm.free(c)
    b_again = admitted(bm, seq(4, [2, 2, 0]))
    assert b_again.num_cached == 0  # B's key is gone
    bm.free(b_again)
    assert admitted(bm, seq(5, [1, 1, 0])).num_cached == 2  # A's still hits


@pytest.mark.parametrize("key", [lambda prev, t: 0, lambda prev, t: 0 if prev is None else hash((prev, t))])
def test_hash_collisions_never_give_a_false_hit(monkeypatch, key):
    monkeypatch.setattr(bm_module, "page_key", key)
    bm = BlockManager(16, 2)
    for i, prompt in enumerate(([1, 1, 7, 7, 9], [3, 3, 2, 2, 9])):  # every first page has one key
        computed(bm, admitted(bm, seq(i, prompt)))
    c = admitted(bm, seq(2, [1, 1, 2, 2, 9]))
    # Only A's first page is truly c's prefix. B's page [2, 2] follows [3, 3], not [1, 1]; it was
    # never registered, as B's first page collided with A's.
    assert c.num_cached == 2 and bm.refs[c.pages[1]] == 1


def test_a_prefix_outlives_its_extensions_in_the_lru():
    bm = BlockManager(4, 2)
    a = admitted(bm, seq(0, [1, 2, 3, 4, 5]))
    computed(bm, a)
    bm.free(a)  # the deeper page first: evicting page 0 first would orphan page 1
    assert list(bm._evictable) == [1, 0] and list(bm._free) == [3, 2]


def test_a_page_chained_through_a_duplicate_is_not_a_hit_after_a_collision(monkeypatch):
    # Every first page has key 0. S's first page duplicates A's (Q), so S's second page P is
    # registered after Q. Q is evicted and B's different first page takes key 0: P does not
    # follow B's page, so C = B's page + P's tokens must not hit P.
    monkeypatch.setattr(bm_module, "page_key", lambda prev, t: 0 if prev is None else hash((prev, t)))
    bm = BlockManager(5, 2)
    a, s = admitted(bm, seq(0, [1, 1, 9])), admitted(bm, seq(1, [1, 1, 2, 2, 9]))
    computed(bm, a), computed(bm, s)
    q, p = a.pages[0], s.pages[1]
    assert bm._table[0] == q and bm._meta[s.pages[0]] is None and bm._meta[p] is not None
    bm.free(a), bm.free(s)
    b = admitted(bm, seq(2, [3, 3, 5, 5, 6, 6, 9]))  # three free pages, then evicts Q
    assert q in b.pages and bm._meta[p] is not None
    computed(bm, b)
    r = b.pages[0]
    bm.free(b)
    c = admitted(bm, seq(3, [3, 3, 2, 2, 9]))
    assert c.pages[0] == r and c.num_cached == 2 and p not in c.pages[:2]

def test_prefix_caching_off():
    bm = BlockManager(4, 2, prefix_caching=False)
    a = admitted(bm, seq(0, [1, 2, 3, 4, 5]))
    computed(bm, a)
    bm.free(a)
    assert bm.num_evictable == 0 and bm.num_free == 4
    assert admitted(bm, seq(1, [1, 2, 3, 4, 5])).num_cached == 0


def test_reset_prefix_cache_frees_cached_pages():
    bm = BlockManager(4, 2)
    a = admitted(bm, seq(0, [1, 2, 3]))
    computed(bm, a)
    bm.free(a)
    assert bm.num_evictable == 1
    bm.reset_prefix_cache()
    assert bm.num_evictable == 0 and bm.num_free == 4
    assert admitted(bm, seq(1, [1, 2, 3])).num_cached == 0


def test_can_allocate_counts_hits_on_evictable_pages():
    bm = BlockManager(3, 2)
    a = admitted(bm, seq(0, [1, 2, 3, 4, 5]))
    computed(bm, a)
    bm.free(a)  # pages 0 and 1 evictable, page 2 free
    # 3 pages: 2 hits (taken out of the LRU) + 1 fresh; 4 pages would need 2 fresh of the 1 left.
    assert bm.can_allocate(seq(1, [1, 2, 3, 4, 5, 6]))
    assert not bm.can_allocate(seq(2, [1, 2, 3, 4, 5, 6, 7]))
    b = admitted(bm, seq(3, [1, 2, 3, 4, 5]))
    # n decode steps write positions 4 .. 4 + n - 1 (the last token sampled is not written)
    assert (bm.pages_needed(b, 2), bm.pages_needed(b, 3)) == (0, 1)


def test_chunked_prefill_respects_the_budget_and_continues_partial_sequences_first():
    sched = Scheduler(BlockManager(32, 4), max_seqs=4, prefill_budget=8, lookahead=1)
    a, b = seq(0, range(20)), seq(1, range(100, 105))
    sched.add(a), sched.add(b)
    steps = []
    while chunks := sched.schedule_prefill():
        steps.append([(c.seq.seq_id, c.start, c.length) for c in chunks])
        for c in chunks:
            sched.computed(c, token=0 if c.last else None)
    assert steps == [[(0, 0, 8)], [(0, 8, 8)], [(0, 16, 4), (1, 0, 4)], [(1, 4, 1)]]
    assert a.output == [0] and b.output == [0] and sched.schedule_decode() == [a, b]


def test_max_seqs_is_respected():
    sched = Scheduler(BlockManager(32, 4), max_seqs=2, prefill_budget=100, lookahead=1)
    seqs = [seq(i, [i] * 3) for i in range(3)]
    for s in seqs:
        sched.add(s)
    assert [c.seq for c in sched.schedule_prefill()] == seqs[:2] and list(sched.waiting) == [seqs[2]]
    sched.finish(seqs[0])
    assert seqs[0].status is Status.FINISHED and seqs[0].pages == []
    assert [c.seq for c in sched.schedule_prefill()] == [seqs[1], seqs[2]]  # seqs[1] was never computed


def test_preemption_picks_the_newest_and_requeues_it_first_with_its_output():
    bm = BlockManager(6, 2)
    sched = Scheduler(bm, max_seqs=2, prefill_budget=100, lookahead=2)
    a, b, c = seq(0, [1, 2, 3]), seq(1, [4, 5, 6]), seq(2, [7, 8, 9])
    for s in (a, b, c):
        sched.add(s)
    for chunk, token in zip(sched.schedule_prefill(), (10, 11)):
        sched.computed(chunk, token)
    assert sched.schedule_decode() == [a, b] and bm.num_free == 0  # 3 pages each
    sched.decoded(a, [12, 13]), sched.decoded(b, [14, 15])
    b_pages = list(b.pages)
    assert sched.schedule_decode() == [a]  # a needs a 4th page: b (newer) is preempted
    assert list(sched.waiting) == [b, c] and b.status is Status.WAITING
    assert b.output == [11, 14, 15] and b.pages == [] and b.num_cached == 0
    assert a.pages[3] == b_pages[2]  # b's unregistered last page was free; its full pages stay cached
    sched.finish(a)
    chunks = sched.schedule_prefill()
    # b recomputes from prompt + output: its two computed full pages hit, positions 4 and 5 remain.
    assert [(ch.seq, ch.start, ch.length) for ch in chunks] == [(b, 4, 2), (c, 0, 3)]
    assert b.pages[:2] == b_pages[:2]


def test_a_lone_sequence_gets_what_is_left_then_a_one_line_error():
    sched = Scheduler(BlockManager(3, 2), max_seqs=4, prefill_budget=100, lookahead=4)
    a = seq(0, [1, 2, 3, 4])
    sched.add(a)
    sched.computed(sched.schedule_prefill()[0], token=5)
    assert sched.schedule_decode() == [a] and len(a.pages) == 3  # covers 2 more writes, not 4
    sched.decoded(a, [6, 7])  # writes positions 4 and 5: the pages' end
    with pytest.raises(GenerationError) as err:
        sched.schedule_decode()
    assert "\n" not in str(err.value) and "3 pages of 2 tokens" in str(err.value)


def test_lookahead_stops_at_max_new_tokens():
    bm = BlockManager(32, 2)
    sched = Scheduler(bm, max_seqs=4, prefill_budget=100, lookahead=8)
    a = seq(0, [1, 2, 3], max_new=3)
    sched.add(a)
    sched.computed(sched.schedule_prefill()[0], token=4)
    sched.schedule_decode()
    assert len(a.pages) == 3  # writes at positions 3 and 4 (two more tokens at most), not 3 .. 10


def test_a_prompt_too_large_for_the_pool_is_a_one_line_error():
    sched = Scheduler(BlockManager(2, 4), max_seqs=4, prefill_budget=100, lookahead=1)
    with pytest.raises(GenerationError) as err:
        sched.add(seq(7, range(9)))
    msg = str(err.value)
    assert "\n" not in msg and "needs 3 pages" in msg and "has 2" in msg and "add KV pages" in msg
    assert not sched.has_work()


def test_abort_frees_pages_wherever_the_sequence_is():
    bm = BlockManager(8, 2)
    sched = Scheduler(bm, max_seqs=1, prefill_budget=100, lookahead=1)
    a, b = seq(0, [1, 2, 3]), seq(1, [1, 2, 3])
    sched.add(a), sched.add(b)
    sched.schedule_prefill()
    assert sched.abort(b) and b.status is Status.FINISHED and not sched.waiting
    assert not sched.abort(seq(0, [1, 2, 3]))  # an equal sequence that is not this one: left alone
    assert sched.abort(a) and a.pages == [] and bm.num_free == 8 and bm.refs == [0] * 8
    assert not sched.abort(a) and not sched.has_work()
    c = seq(2, [4])
    sched.add(c), sched.finish(c)
    assert c.status is Status.FINISHED and not sched.has_work()


def test_sequences_compare_by_identity():
    assert seq(0, [1]) != seq(0, [1]) and PrefillChunk(seq(0, [1, 2]), 0, 2).last


class FakeRunner:
    """Pages hold token ids instead of K/V. Writing a shared or registered page is a bug, and
    every cached position must hold its sequence's token (a false prefix hit would not)."""

    def __init__(self, bm):
        self.bm, self.kv = bm, [[None] * bm.page_size for _ in range(bm.num_pages)]

    def write(self, s, start, stop, tokens):
        ps = self.bm.page_size
        for pos in range(start, stop):
            page = s.pages[pos // ps]
            assert self.bm.refs[page] == 1 and self.bm._meta[page] is None, f"write into shared page {page}"
            self.kv[page][pos % ps] = tokens[pos]

    def check(self, s):
        ps = self.bm.page_size
        assert [self.kv[s.pages[p // ps]][p % ps] for p in range(s.num_cached)] == s.tokens[: s.num_cached]


def check_invariants(sched, runner):
    bm = sched.block_manager
    held = {}
    for s in sched.running:
        # A decoding sequence's newest token gets its page from schedule_decode; all others are covered.
        assert s.status is Status.RUNNING and s.num_cached <= s.num_tokens
        assert len(s.pages) >= bm.pages_for(s.num_tokens - (not s.prefilling))
        assert len(set(s.pages)) == len(s.pages)
        for page in s.pages:
            held[page] = held.get(page, 0) + 1
        runner.check(s)
    for s in sched.waiting:
        assert s.status is Status.WAITING and s.pages == [] and s.num_cached == 0
    assert len(sched.running) <= sched.max_seqs
    assert bm.refs == [held.get(p, 0) for p in range(bm.num_pages)]
    free, evictable = set(bm._free), set(bm._evictable)
    assert len(free) == len(bm._free) and not (free & evictable) and not (free | evictable) & set(held)
    assert len(free) + len(evictable) + len(held) == bm.num_pages == bm.num_free + len(held)
    assert all(bm._meta[p] is None for p in free) and all(bm._meta[p] is not None for p in evictable)
    assert all(bm._meta[p].key == key for key, p in bm._table.items())
    if not bm.prefix_caching:
        assert not bm._table


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_operations_keep_the_invariants(data):
    with pytest.MonkeyPatch.context() as mp:
        if data.draw(st.booleans(), "weak hash"):  # 4 keys in all: collisions everywhere
            mp.setattr(bm_module, "page_key", lambda prev, t: hash((prev, t)) % 4)
        run_random_operations(data.draw)


def run_random_operations(draw):
    ps = draw(st.integers(1, 3), "page_size")
    bm = BlockManager(draw(st.integers(3, 12), "num_pages"), ps, prefix_caching=draw(st.booleans(), "caching"))
    sched = Scheduler(bm, draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 3)))
    runner, prompts, next_id = FakeRunner(bm), [[0, 1, 0, 1, 1, 0, 0, 1]], 0
    token = st.integers(0, 1)  # a tiny vocabulary: many shared prefixes
    ops = ["add"] * 3 + ["step"] * 4 + ["prefill", "decode", "finish", "abort", "reset"]
    for op in draw(st.lists(st.sampled_from(ops), min_size=20, max_size=60), "ops"):
        if op == "add":
            base = draw(st.sampled_from(prompts))[: draw(st.integers(0, 16))]
            prompt = base + draw(st.lists(token, min_size=0 if base else 1, max_size=6))
            s = seq(next_id, prompt, max_new=draw(st.integers(1, 8)))
            next_id += 1
            try:
                sched.add(s)
                prompts.append(prompt)
            except GenerationError:
                assert bm.pages_for(len(prompt)) > bm.num_pages
        elif op in ("prefill", "step"):
            if not prefill_step(draw, sched, runner) and op == "step":
                decode_step(draw, sched, runner)
        elif op == "decode":
            decode_step(draw, sched, runner)
        elif op in ("finish", "abort") and sched.running:
            s = draw(st.sampled_from(sched.running))
            sched.finish(s) if op == "finish" else sched.abort(s)
        elif op == "reset":
            bm.reset_prefix_cache()
        check_invariants(sched, runner)


def prefill_step(draw, sched, runner):
    head = sched.waiting[0] if sched.waiting else None
    try:
        chunks = sched.schedule_prefill()
    except GenerationError:  # a preempted sequence that grew past the whole pool: dropped, not retried forever
        assert head.status is Status.FINISHED and head not in sched.waiting and not sched.running
        assert sched.block_manager.pages_for(head.num_tokens) > sched.block_manager.num_pages
        return True
    assert sum(c.length for c in chunks) <= sched.prefill_budget
    for c in chunks:
        assert c.start == c.seq.num_cached and c.length >= 1
        runner.write(c.seq, c.start, c.start + c.length, c.seq.tokens)
        sched.computed(c, draw(st.integers(0, 1)) if c.last else None)
        if c.last and len(c.seq.output) >= c.seq.max_new_tokens:
            sched.finish(c.seq)
    return bool(chunks)


def decode_step(draw, sched, runner):
    """One decode step of random new tokens; a sequence that runs out of pages must be alone in its
    (data-parallel) shard's pool, and is aborted."""
    try:
        batch = sched.schedule_decode()
    except GenerationError as e:
        (alone,) = [s for s in sched.running if f"sequence {s.seq_id} " in str(e)]
        assert sched.running_in(alone.shard) == 1
        sched.abort(alone)
        return
    for s in batch:
        room = len(s.pages) * sched.block_manager.page_size - (s.num_tokens - 1)
        k = draw(st.integers(1, max(1, min(room, s.max_new_tokens - len(s.output)))))
        new = draw(st.lists(st.integers(0, 1), min_size=k, max_size=k))
        runner.write(s, s.num_tokens - 1, s.num_tokens - 1 + k, s.tokens + new)
        sched.decoded(s, new)
        if len(s.output) >= s.max_new_tokens:
            sched.finish(s)
