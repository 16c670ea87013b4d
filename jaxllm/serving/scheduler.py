"""Each step's work, decided on the host: prefill chunks within a token budget, or a decode batch.

A step is one or the other: the engine runs schedule_prefill()'s chunks when there are any, else
schedule_decode()'s batch, then reports back with computed() / decoded() so the sequences' cached
counts advance and their full pages enter the prefix cache. Pages for a whole prompt are taken
when it is admitted, so prefill never runs out; decode grows page tables by `lookahead` tokens
and, when the pool is empty, preempts the newest sequence, which is prefilled again later from
its prompt and output so far (recompute, no swapping). Deterministic: no clocks.

Data parallelism (a BlockManager of `shards` > 1): the decode rows and the pages split into equal
shards, one per data-parallel group of devices, and a sequence lives on one shard (its rows, its
pages). A new (or preempted) sequence goes to the shard with the fewest running sequences, then the
most prefix-cache hits for it, then the fewest used pages (then the lower shard); the budget and
max_seqs // shards rows are per shard, and preemption frees pages of the shard that ran out. A
prefix cached on another shard is not a hit: the sequence computes it again on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from jaxllm.errors import GenerationError
from jaxllm.serving.block_manager import BlockManager
from jaxllm.serving.sequence import Sequence, Status


@dataclass
class PrefillChunk:
    """Compute seq.tokens[start:start+length] (positions start.., pages seq.pages) this step."""

    seq: Sequence
    start: int
    length: int

    @property
    def last(self) -> bool:
        """The chunk ends the prefill: its last position's logits give the next token."""
        return self.start + self.length == self.seq.num_tokens


@dataclass
class SchedulerStats:
    preempted: int = 0  # sequences preempted (pages freed, recomputed later)
    chunked: int = 0  # prefill chunks that left their prompt unfinished
    cascaded: int = 0  # decode calls that read a prefix their rows share once for all (the engine counts them)
    verified: int = 0  # speculative decoding's verify steps (Engine speculative_tokens; the engine counts these three)
    drafted: int = 0  # tokens drafted by prompt lookup and verified
    accepted: int = 0  # of which kept: the tokens a decode step would have chosen


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_seqs: int, prefill_budget: int, lookahead: int,
                 max_chunk: int | None = None):
        if max_seqs < 1 or prefill_budget < 1 or lookahead < 1:
            raise GenerationError(f"a scheduler needs max_seqs, prefill_budget and lookahead >= 1, got "
                                  f"{max_seqs}, {prefill_budget}, {lookahead}")
        shards = block_manager.shards
        if max_seqs % shards:
            raise GenerationError(f"a scheduler of {shards} data-parallel shards needs max_seqs a multiple of {shards}, "
                                  f"got {max_seqs}")
        self.block_manager = block_manager
        self.max_seqs, self.prefill_budget, self.lookahead = max_seqs, prefill_budget, lookahead
        self.shards, self.shard_seqs = shards, max_seqs // shards  # rows per shard
        self.max_chunk = max_chunk or prefill_budget  # the most tokens of one sequence in one step
        self.waiting: deque[Sequence] = deque()  # FIFO; preempted sequences go back to the front
        self.running: list[Sequence] = []  # hold pages: prefilling or decoding, in admission order
        self._arrivals = 0
        self.stats = SchedulerStats()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def can_admit(self) -> bool:
        """The first waiting sequence could start now: a free row and pages for its prompt (on one shard)."""
        return bool(self.waiting) and self._place(self.waiting[0], [1] * self.shards) is not None

    def running_in(self, shard: int) -> int:
        return sum(1 for s in self.running if s.shard == shard)

    def _place(self, seq: Sequence, budgets: list[int]) -> int | None:
        """The shard a waiting sequence starts on: one with a free row, token budget left and room
        for its prompt; the fewest running sequences first, then the most prefix-cache hits, then
        the fewest used pages. None: no shard can take it now."""
        bm = self.block_manager
        if self.shards == 1:
            ok = budgets[0] > 0 and len(self.running) < self.max_seqs and bm.can_allocate(seq)
            return 0 if ok else None
        rows = [self.running_in(i) for i in range(self.shards)]
        fits = [i for i in range(self.shards)
                if budgets[i] > 0 and rows[i] < self.shard_seqs and bm.can_allocate(seq, i)]
        return min(fits, key=lambda i: (rows[i], -bm.hits(seq, i), bm.used_in(i), i), default=None)

    def add(self, seq: Sequence) -> None:
        """Queue a new request. Raises GenerationError if its prompt can never fit the pool."""
        self._check_fits(seq)
        seq.status, seq.arrival = Status.WAITING, self._arrivals
        self._arrivals += 1
        self.waiting.append(seq)

    def _check_fits(self, seq: Sequence) -> None:
        bm = self.block_manager
        if seq.num_tokens == 0:
            raise GenerationError(f"sequence {seq.seq_id} has an empty prompt: give at least one token")
        need = bm.pages_for(seq.num_tokens)
        if need > bm.shard_pages:
            where = "the pool has" if bm.shards == 1 else f"each of the pool's {bm.shards} data-parallel shards has"
            raise GenerationError(
                f"sequence {seq.seq_id} needs {need} pages of {bm.page_size} tokens for its {seq.num_tokens} tokens "
                f"but {where} {bm.shard_pages}: add KV pages or shorten the prompt")

    def abort(self, seq: Sequence) -> bool:
        """Drop a request wherever it is, returning its pages; False if it is not queued or running."""
        for queue in (self.waiting, self.running):
            if any(s is seq for s in queue):
                queue.remove(seq)  # sequences compare by identity
                self.block_manager.free(seq)
                seq.status = Status.FINISHED
                return True
        return False

    def finish(self, seq: Sequence, spoiled: bool = False) -> list[int]:
        """A sequence is done (EOS, stop string, max_new_tokens, an error: the engine decides): free its pages.
        `spoiled` (its logits were not finite): the pages it held alone are uncached, and returned (BlockManager.free)."""
        for queue in (self.running, self.waiting):
            if seq in queue:
                queue.remove(seq)
        pages = self.block_manager.free(seq, spoiled)
        seq.status = Status.FINISHED
        return pages

    # -- prefill ---------------------------------------------------------------------------------

    def schedule_prefill(self) -> list[PrefillChunk]:
        """This step's prefill chunks, at most prefill_budget tokens per shard: partly prefilled
        sequences first, then waiting ones FIFO while the rows and the page pool allow (a preempted
        sequence is at the front). A prompt longer than the budget left gets a partial chunk."""
        budgets, chunks = [self.prefill_budget] * self.shards, []
        for seq in self.running:
            budget = budgets[seq.shard]
            if budget > 0 and seq.prefilling and seq.num_to_compute > 0:
                chunks.append(PrefillChunk(seq, seq.num_cached, min(seq.num_to_compute, budget, self.max_chunk)))
                budgets[seq.shard] -= chunks[-1].length
        while self.waiting and any(budgets) and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            shard = self._place(seq, budgets)
            if shard is None:
                if not self.running:  # an empty pool cannot take it: fail now rather than wait forever
                    try:
                        self._check_fits(seq)
                    except GenerationError:
                        self.waiting.popleft()
                        seq.status = Status.FINISHED
                        raise
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq, shard=shard)
            seq.status = Status.RUNNING
            self.running.append(seq)
            if seq.prefilling:  # else every token but the last was cached: it decodes right away
                chunks.append(PrefillChunk(seq, seq.num_cached, min(seq.num_to_compute, budgets[shard], self.max_chunk)))
                budgets[shard] -= chunks[-1].length
        return chunks

    def computed(self, chunk: PrefillChunk, token: int | None = None) -> None:
        """The runner computed `chunk`; `token` is the one it sampled if the chunk was the last."""
        seq = chunk.seq
        if chunk.start != seq.num_cached or (token is not None and not chunk.last):
            raise RuntimeError(f"chunk {chunk.start}+{chunk.length} does not follow sequence {seq.seq_id}'s state")
        self.stats.chunked += not chunk.last
        seq.num_cached += chunk.length
        self.block_manager.register_full_pages(seq)
        if token is not None:
            seq.output.append(token)

    # -- decode ----------------------------------------------------------------------------------

    def schedule_decode(self) -> list[Sequence]:
        """The decoding sequences, oldest first, each with pages for `lookahead` more tokens (fewer
        if max_new_tokens ends it sooner). The runner may write a row until its next position
        reaches len(seq.pages) * page_size. When pages run out the newest running sequence of its
        shard is preempted; a sequence alone in its shard gets what is left (at least one token)."""
        bm, batch = self.block_manager, []
        for seq in sorted((s for s in self.running if not s.prefilling), key=lambda s: s.arrival):
            if seq.status is not Status.RUNNING:
                continue  # preempted to make room for an older one
            n = self._lookahead(seq)
            while not bm.can_append(seq, n):
                mates = [s for s in self.running if s.shard == seq.shard]
                victim = max(mates, key=lambda s: s.arrival)
                if victim is seq and len(mates) == 1:
                    n = next((m for m in range(n - 1, 0, -1) if bm.can_append(seq, m)), 0)
                    if n == 0:
                        raise GenerationError(
                            f"sequence {seq.seq_id} of {seq.num_tokens} tokens needs another page but the pool's "
                            f"{bm.shard_pages} pages of {bm.page_size} tokens are full: add KV pages or lower max_new_tokens")
                    break
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                bm.append(seq, n)
                batch.append(seq)
        return batch

    def _lookahead(self, seq: Sequence) -> int:
        left = seq.max_new_tokens
        return self.lookahead if left is None else max(1, min(self.lookahead, left - len(seq.output)))

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's pages and queue it first, to be recomputed from its prompt and
        output (also how the engine recomputes a LongRoPE sequence at its short-to-long switch)."""
        self.stats.preempted += 1
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def decoded(self, seq: Sequence, tokens: list[int]) -> None:
        """The runner ran len(tokens) decode steps for seq: each computed the last token and
        sampled the next (`tokens`)."""
        writes = seq.num_tokens - 1 + len(tokens)  # positions written: < this
        if seq.prefilling or writes > len(seq.pages) * self.block_manager.page_size:
            raise RuntimeError(f"sequence {seq.seq_id} cannot take {len(tokens)} decode steps")
        seq.num_cached += len(tokens)
        seq.output.extend(tokens)
        self.block_manager.register_full_pages(seq)
