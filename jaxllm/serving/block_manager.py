"""The KV page pool: reference counts, and a prefix cache of full pages keyed by their content.

Pages 0..num_pages-1 each hold `page_size` positions of K/V. A full, computed page is registered
under a key chained from the previous page's key and its own token ids (`page_key`), so a new
sequence walks its pages from the start and reuses every hit. A freed page that is registered
stays in the table as evictable cache (LRU); fresh pages come from the truly free pages first,
then from the least recently used cached page, whose key is dropped.

Data parallelism (`shards` > 1): the pages split into that many equal, contiguous ranges, one
per shard of the device pool (shard i owns pages i * shard_pages ..). A sequence takes all its
pages from one shard (`Sequence.shard`, set when it is allocated), and each shard keeps its own
free list, LRU and prefix-cache table: a prefix cached on another shard is not a hit there, and
is computed again (the scheduler places a sequence before looking anything up).

Hits are exact, never trusted to the hash: each registered page keeps its token ids and the uid
of the page before it, and a hit must match both (a uid is never reused, so the whole prefix
matches by induction). A sequence whose page collides with a different page under the same key
stops registering there, so no page is ever registered under a prefix it was not computed with.
"""

from __future__ import annotations

from collections import ChainMap, OrderedDict, deque
from dataclasses import dataclass
from typing import NamedTuple

from jaxllm.errors import GenerationError
from jaxllm.serving.sequence import Sequence


def page_key(prev_key: int | None, tokens: tuple[int, ...]) -> int:
    """The prefix-cache key of a full page: chained from the previous page's key (None for the first)."""
    return hash((prev_key, tokens))


class _Entry(NamedTuple):
    key: int
    tokens: tuple[int, ...]
    parent: int | None  # uid of the page before this one when registered (None: first page)
    uid: int


@dataclass
class CacheStats:
    lookups: int = 0  # sequences allocated
    lookup_tokens: int = 0  # their tokens
    hit_tokens: int = 0  # of which found in the prefix cache


class BlockManager:
    """`num_pages` pages of `page_size` positions, shared by reference count, in `shards` equal
    ranges (see the module doc)."""

    def __init__(self, num_pages: int, page_size: int, prefix_caching: bool = True, shards: int = 1):
        if num_pages < 1 or page_size < 1 or shards < 1 or num_pages % shards:
            raise GenerationError(f"a page pool needs num_pages >= 1 and page_size >= 1, and num_pages a multiple of "
                                  f"its shards, got {num_pages}, {page_size}, {shards} shards")
        self.num_pages, self.page_size, self.prefix_caching = num_pages, page_size, prefix_caching
        self.shards, self.shard_pages = shards, num_pages // shards
        self.refs = [0] * num_pages
        self.stats = CacheStats()
        n = self.shard_pages
        self._frees = [deque(range(i * n, (i + 1) * n)) for i in range(shards)]  # refcount 0, unregistered
        # refcount 0, registered; LRU first
        self._evictables: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(shards)]
        self._tables: list[dict[int, int]] = [{} for _ in range(shards)]  # key -> page, per shard
        self._meta: list[_Entry | None] = [None] * num_pages  # a registered page's entry
        self._next_uid = self._first_uid = 0

    def reset_prefix_cache(self) -> None:
        """Forget every key: cached pages become free; running sequences stop registering pages."""
        for free, evictable, table in zip(self._frees, self._evictables, self._tables):
            free.extend(evictable)
            evictable.clear()
            table.clear()
        self._meta = [None] * self.num_pages
        self._first_uid = self._next_uid

    # Views over every shard, for inspection: the truly free pages (refcount 0, unregistered), the
    # evictable ones (refcount 0, registered; each shard's LRU first) and the prefix-cache table.
    @property
    def _free(self) -> list[int]:
        return [page for free in self._frees for page in free]

    @property
    def _evictable(self) -> list[int]:
        return [page for evictable in self._evictables for page in evictable]

    @property
    def _table(self) -> ChainMap:
        return ChainMap(*self._tables)

    @property
    def num_free(self) -> int:
        """Pages an allocation can take: truly free plus evictable cache (every shard)."""
        return sum(map(self.free_in, range(self.shards)))

    def free_in(self, shard: int) -> int:
        """Pages an allocation on `shard` can take."""
        return len(self._frees[shard]) + len(self._evictables[shard])

    def used_in(self, shard: int) -> int:
        """Pages of `shard` that running sequences hold."""
        return self.shard_pages - self.free_in(shard)

    def shard_of(self, page: int) -> int:
        return page // self.shard_pages

    @property
    def num_evictable(self) -> int:
        return sum(map(len, self._evictables))

    def pages_for(self, positions: int) -> int:
        """Pages covering positions [0, positions)."""
        return -(-positions // self.page_size)

    # -- admission -------------------------------------------------------------------------------

    def _match(self, seq: Sequence, shard: int) -> list[tuple[int, int, int]]:
        """(page, key, uid) of each page of seq's prefix cached on `shard`, up to the first miss.
        Only pages entirely before the last token count: that token is always computed (for its
        logits) and its page is written, so it must never be shared. None for a sequence that
        scores its prompt (every position computed: Sequence.scores_prompt)."""
        if not self.prefix_caching or seq.scores_prompt:
            return []
        tokens, ps, hits, table = seq.tokens, self.page_size, [], self._tables[shard]
        prev_key = prev_uid = None
        for i in range((seq.num_tokens - 1) // ps):
            t = tuple(tokens[i * ps : (i + 1) * ps])
            key = page_key(prev_key, t)
            page = table.get(key)
            entry = None if page is None else self._meta[page]
            if entry is None or entry.tokens != t or entry.parent != prev_uid:
                break
            hits.append((page, key, entry.uid))
            prev_key, prev_uid = key, entry.uid
        return hits

    def _fits(self, seq: Sequence, hits, shard: int) -> bool:
        fresh = self.pages_for(seq.num_tokens) - len(hits)
        reclaimed = sum(1 for page, _, _ in hits if self.refs[page] == 0)  # hits that leave the LRU
        return fresh <= self.free_in(shard) - reclaimed

    def can_allocate(self, seq: Sequence, shard: int = 0) -> bool:
        return self._fits(seq, self._match(seq, shard), shard)

    def hits(self, seq: Sequence, shard: int) -> int:
        """Pages of seq's prefix that are cached on `shard`."""
        return len(self._match(seq, shard))

    def allocate(self, seq: Sequence, share: bool = True, shard: int = 0) -> None:
        """Pages of `shard` for all of seq.tokens: cached prefix pages first (seq.num_cached counts
        them), fresh pages for the rest (all fresh with share=False: a sequence that computes every
        position, as scoring does)."""
        if seq.pages:
            raise RuntimeError(f"sequence {seq.seq_id} already holds pages")
        hits = self._match(seq, shard) if share else []
        if not self._fits(seq, hits, shard):
            raise RuntimeError(f"allocate({seq.seq_id}) without room: check can_allocate first")
        seq.shard = shard
        for page, _, _ in hits:
            if self.refs[page] == 0:
                del self._evictables[shard][page]
            self.refs[page] += 1
        seq.pages = [page for page, _, _ in hits]
        seq.chain = [(key, uid) for _, key, uid in hits]
        seq.num_cached = len(hits) * self.page_size
        seq.pages += [self._fresh(shard) for _ in range(self.pages_for(seq.num_tokens) - len(hits))]
        if share:
            self.stats.lookups += 1
            self.stats.lookup_tokens += seq.num_tokens
            self.stats.hit_tokens += seq.num_cached

    def _fresh(self, shard: int) -> int:
        free, evictable, table = self._frees[shard], self._evictables[shard], self._tables[shard]
        if free:
            page = free.popleft()
        elif evictable:
            page, _ = evictable.popitem(last=False)
            entry = self._meta[page]
            if table.get(entry.key) == page:
                del table[entry.key]
            self._meta[page] = None
        else:
            raise RuntimeError("no free page: check can_allocate / can_append first")
        self.refs[page] = 1
        return page

    # -- growth ----------------------------------------------------------------------------------

    def pages_needed(self, seq: Sequence, n: int) -> int:
        """Fresh pages seq needs for n decode steps: they write positions num_tokens - 1 ..
        num_tokens + n - 2 (the last token sampled is not written), so its page table covers < num_tokens - 1 + n."""
        return max(0, self.pages_for(seq.num_tokens - 1 + n) - len(seq.pages))

    def can_append(self, seq: Sequence, n: int) -> bool:
        return self.pages_needed(seq, n) <= self.free_in(seq.shard)

    def append(self, seq: Sequence, n: int) -> None:
        """Pages (of its shard) for n more decode steps: the runner writes up to n more positions."""
        if not self.can_append(seq, n):
            raise RuntimeError(f"append({seq.seq_id}, {n}) without room: check can_append first")
        seq.pages += [self._fresh(seq.shard) for _ in range(self.pages_needed(seq, n))]

    def register_full_pages(self, seq: Sequence) -> None:
        """Register each page of seq that is full and computed (all positions < seq.num_cached),
        chaining its key from the page before. If the key already names an identical page, this
        page stays unregistered (freed normally) and the chain goes on through the other one; if it
        names a different page (a hash collision), seq stops registering."""
        if not self.prefix_caching:
            return
        tokens, ps, table = None, self.page_size, self._tables[seq.shard]
        while len(seq.chain) < min(seq.num_cached // ps, len(seq.pages)):
            prev_key, prev_uid = seq.chain[-1] if seq.chain else (None, None)
            if seq.chain and (prev_uid is None or prev_uid < self._first_uid):
                return  # chain broken by a collision, or started before reset_prefix_cache
            tokens = seq.tokens if tokens is None else tokens
            i = len(seq.chain)
            t = tuple(tokens[i * ps : (i + 1) * ps])
            key = page_key(prev_key, t)
            other = table.get(key)
            if other is None:
                uid, self._next_uid = self._next_uid, self._next_uid + 1
                self._meta[seq.pages[i]] = _Entry(key, t, prev_uid, uid)
                table[key] = seq.pages[i]
            else:
                entry = self._meta[other]
                uid = entry.uid if (entry.tokens, entry.parent) == (t, prev_uid) else None
            seq.chain.append((key, uid))

    def free(self, seq: Sequence, spoiled: bool = False) -> list[int]:
        """Drop seq's references. Its last page is freed first, so within one sequence the deeper
        pages are evicted before the prefix they extend (a prefix outlives its extensions). `spoiled`: the pages
        may hold NaN or Inf (its logits were not finite), so those no other sequence holds leave the prefix cache
        for the free list, and are returned, for the caller to zero before they are handed out again; else []."""
        dropped = []
        for page in reversed(seq.pages):
            self.refs[page] -= 1
            if self.refs[page] == 0:
                entry = self._meta[page]
                if spoiled and entry is not None:
                    table = self._tables[self.shard_of(page)]
                    if table.get(entry.key) == page:
                        del table[entry.key]
                    self._meta[page] = entry = None
                if entry is not None:
                    self._evictables[self.shard_of(page)][page] = None
                else:
                    self._frees[self.shard_of(page)].append(page)
                    dropped += [page] if spoiled else []
        seq.pages, seq.num_cached, seq.chain = [], 0, []
        return dropped
