"""One request's host-side state: its tokens, where its K/V live (pages), and how far it is computed.

Position p of a sequence lives in page `pages[p // page_size]`, slot `p % page_size`; every page
is of one data-parallel shard of the pool (`shard`), chosen when the sequence is admitted. The first
`num_cached` positions have their K/V in those pages (prefix-cache hits plus tokens computed so
far); the rest must still be computed. A sequence that has produced output and has only its last
token left to compute is decoding: one step computes that token and samples the next.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.Enum):
    WAITING = "waiting"  # queued: no pages (new, or preempted and to be recomputed from prompt + output)
    RUNNING = "running"  # holds pages: prefilling, then decoding
    FINISHED = "finished"  # done or aborted: pages returned


@dataclass(eq=False)
class Sequence:
    """`params` is anything with `max_new_tokens` (the engine passes a resolved SamplingParams).
    Compared by identity: two requests with equal prompts are still two sequences."""

    seq_id: int
    prompt: list[int]
    params: Any = None
    output: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    pages: list[int] = field(default_factory=list)
    num_cached: int = 0
    arrival: int = 0  # set by Scheduler.add: the larger, the newer (preempted first)
    shard: int = 0  # the data-parallel shard whose pages and decode slot it holds (set by BlockManager.allocate)
    # Prefix-cache chain of the leading full computed pages: (key, uid) per page, filled by the
    # BlockManager (allocate's hits, register_full_pages); uid None means the chain broke there.
    chain: list[tuple[int, int | None]] = field(default_factory=list, repr=False)
    # SamplingParams.prompt_logprobs: each prompt position's (log-probability of the prompt token after it, its
    # most likely (id, logprob) pairs, its rank), filled chunk by chunk by the engine until the first token goes out
    prompt_scores: list | None = field(default=None, repr=False)
    # SamplingParams.structured: its matcher (jaxllm.structured.Grammar), fed every output token; a preempted
    # sequence keeps it with its output, and its recompute's first token is masked by it again
    grammar: Any = field(default=None, repr=False)
    # Speculative decoding (Engine speculative_tokens): no drafts before this many tokens, after a verify step that
    # kept none of its drafts (`chunk` plain decode steps in between bound what rejected drafts cost; steps._speculate
    # sets it, the engine keeps it between calls)
    drafts_from: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def num_to_compute(self) -> int:
        return self.num_tokens - self.num_cached

    @property
    def max_new_tokens(self) -> int | None:
        return getattr(self.params, "max_new_tokens", None)

    @property
    def scores_prompt(self) -> bool:
        """It returns its prompt's log-probabilities (SamplingParams.prompt_logprobs) and has not yet: every
        prompt position is computed, none taken from the prefix cache (as vLLM does for such a request)."""
        return bool(getattr(self.params, "prompt_logprobs", False)) and not self.output

    @property
    def prefilling(self) -> bool:
        """True until the sequence has output and at most its last token uncomputed (then it decodes).
        A preempted sequence prefills again: its prompt and output so far, minus prefix-cache hits."""
        return not self.output or self.num_cached < self.num_tokens - 1

