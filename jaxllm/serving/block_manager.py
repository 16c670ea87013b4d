"""The KV page pool: reference counts, and a prefix cache of full pages keyed by their content.

Pages 0..num_pages-1 each hold `page_size` positions of K/V. A full, computed page is registered
under a key chained from the previous page's key and its own token ids (`page_key`), so a new
sequence walks its pages from the start and reuses every hit. A freed page that is registered
stays in the table as evictable cache (LRU); fresh pages come from the truly free pages first,
then from the least recently used cached page, whose key is dropped.

Hits are exact, never trusted to the hash: each registered page keeps its token ids and the uid
of the page before it, and a hit must match both (a uid is never reused, so the whole prefix
matches by induction). A sequence whose page collides with a different page under the same key
stops registering there, so no page is ever registered under a prefix it was not computed with.
"""

from __future__ import annotations

from collections import OrderedDict, deque
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
    """`num_pages` pages of `page_size` positions, shared by reference count (see the module doc)."""

    def __init__(self, num_pages: int, page_size: int, prefix_caching: bool = True):
        if num_pages < 1 or page_size < 1:
            raise GenerationError(f"a page pool needs num_pages >= 1 and page_size >= 1, got {num_pages}, {page_size}")
        self.num_pages, self.page_size, self.prefix_caching = num_pages, page_size, prefix_caching
        self.refs = [0] * num_pages
        self.stats = CacheStats()
        self._free = deque(range(num_pages))  # refcount 0, unregistered
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0, registered; LRU first
        self._table: dict[int, int] = {}  # key -> page
        self._meta: list[_Entry | None] = [None] * num_pages  # a registered page's entry
        self._next_uid = self._first_uid = 0

    def reset_prefix_cache(self) -> None:
        """Forget every key: cached pages become free; running sequences stop registering pages."""
        self._free.extend(self._evictable)
        self._evictable.clear()
        self._table.clear()
        self._meta = [None] * self.num_pages
        self._first_uid = self._next_uid

    @property
    def num_free(self) -> int:
        """Pages an allocation can take: truly free plus evictable cache."""
        return len(self._free) + len(self._evictable)

    @property
    def num_evictable(self) -> int:
        return len(self._evictable)

    def pages_for(self, positions: int) -> int:
        """Pages covering positions [0, positions)."""
        return -(-positions // self.page_size)

    # -- admission -------------------------------------------------------------------------------

    def _match(self, seq: Sequence) -> list[tuple[int, int, int]]:
        """(page, key, uid) of each cached page of seq's prefix, up to the first miss. Only pages
        entirely before the last token count: that token is always computed (for its logits) and
        its page is written, so it must never be shared."""
        if not self.prefix_caching:
            return []
        tokens, ps, hits = seq.tokens, self.page_size, []
        prev_key = prev_uid = None
        for i in range((seq.num_tokens - 1) // ps):
            t = tuple(tokens[i * ps : (i + 1) * ps])
            key = page_key(prev_key, t)
            page = self._table.get(key)
            entry = None if page is None else self._meta[page]
            if entry is None or entry.tokens != t or entry.parent != prev_uid:
                break
            hits.append((page, key, entry.uid))
            prev_key, prev_uid = key, entry.uid
        return hits

    def _fits(self, seq: Sequence, hits) -> bool:
        fresh = self.pages_for(seq.num_tokens) - len(hits)
        reclaimed = sum(1 for page, _, _ in hits if self.refs[page] == 0)  # hits that leave the LRU
        return fresh <= self.num_free - reclaimed

    def can_allocate(self, seq: Sequence) -> bool:
        return self._fits(seq, self._match(seq))

    def allocate(self, seq: Sequence, share: bool = True) -> None:
        """Pages for all of seq.tokens: cached prefix pages first (seq.num_cached counts them),
        fresh pages for the rest (all fresh with share=False: a sequence that computes every
        position, as scoring does)."""
        if seq.pages:
            raise RuntimeError(f"sequence {seq.seq_id} already holds pages")
        hits = self._match(seq) if share else []
        if not self._fits(seq, hits):
            raise RuntimeError(f"allocate({seq.seq_id}) without room: check can_allocate first")
        for page, _, _ in hits:
            if self.refs[page] == 0:
                del self._evictable[page]
            self.refs[page] += 1
        seq.pages = [page for page, _, _ in hits]
        seq.chain = [(key, uid) for _, key, uid in hits]
        seq.num_cached = len(hits) * self.page_size
        seq.pages += [self._fresh() for _ in range(self.pages_for(seq.num_tokens) - len(hits))]
        if share:
            self.stats.lookups += 1
            self.stats.lookup_tokens += seq.num_tokens
            self.stats.hit_tokens += seq.num_cached

    def _fresh(self) -> int:
        if self._free:
            page = self._free.popleft()
        elif self._evictable:
            page, _ = self._evictable.popitem(last=False)
            entry = self._meta[page]
            if self._table.get(entry.key) == page:
                del self._table[entry.key]
            self._meta[page] = None
        else:
            raise RuntimeError("no free page: check can_allocate / can_append first")
        self.refs[page] = 1
        return page

    # -- growth ----------------------------------------------------------------------------------

    def pages_needed(self, seq: Sequence, n: int) -> int:
        """Fresh pages seq needs so its page table covers positions < seq.num_tokens + n."""
        return max(0, self.pages_for(seq.num_tokens + n) - len(seq.pages))

    def can_append(self, seq: Sequence, n: int) -> bool:
        return self.pages_needed(seq, n) <= self.num_free

    def append(self, seq: Sequence, n: int) -> None:
        """Cover positions < seq.num_tokens + n: the runner writes up to n more tokens."""
        if not self.can_append(seq, n):
            raise RuntimeError(f"append({seq.seq_id}, {n}) without room: check can_append first")
        seq.pages += [self._fresh() for _ in range(self.pages_needed(seq, n))]

    def register_full_pages(self, seq: Sequence) -> None:
        """Register each page of seq that is full and computed (all positions < seq.num_cached),
        chaining its key from the page before. If the key already names an identical page, this
        page stays unregistered (freed normally) and the chain goes on through the other one; if it
        names a different page (a hash collision), seq stops registering."""
        if not self.prefix_caching:
            return
        tokens, ps = None, self.page_size
        while len(seq.chain) < min(seq.num_cached // ps, len(seq.pages)):
            prev_key, prev_uid = seq.chain[-1] if seq.chain else (None, None)
            if seq.chain and (prev_uid is None or prev_uid < self._first_uid):
                return  # chain broken by a collision, or started before reset_prefix_cache
            tokens = seq.tokens if tokens is None else tokens
            i = len(seq.chain)
            t = tuple(tokens[i * ps : (i + 1) * ps])
            key = page_key(prev_key, t)
            other = self._table.get(key)
            if other is None:
                uid, self._next_uid = self._next_uid, self._next_uid + 1
                self._meta[seq.pages[i]] = _Entry(key, t, prev_uid, uid)
                self._table[key] = seq.pages[i]
            else:
                entry = self._meta[other]
                uid = entry.uid if (entry.tokens, entry.parent) == (t, prev_uid) else None
            seq.chain.append((key, uid))

    def free(self, seq: Sequence) -> None:
        """Drop seq's references. Its last page is freed first, so within one sequence the deeper
        pages are evicted before the prefix they extend (a prefix outlives its extensions)."""
        for page in reversed(seq.pages):
            self.refs[page] -= 1
            if self.refs[page] == 0:
                if self._meta[page] is not None:
                    self._evictable[page] = None
                else:
                    self._free.append(page)
        seq.pages, seq.num_cached, seq.chain = [], 0, []
