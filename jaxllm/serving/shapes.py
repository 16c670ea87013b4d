"""The shapes of the prefill calls and which programs a workload needs, decided on the host.

Each distinct shape of a device call is a compile, so the engine runs prefill chunks in calls from
a short menu (`CallShapes.call`, a step's chunks grouped into them: `CallShapes.calls`), and
`CallShapes.workload` lists every shape (and the key buckets of the runner, jaxllm/serving/runner.py)
that serving some requests can meet, and `variants` every kind of program their calls take, for
`Engine.precompile`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

from jaxllm.sampling import SamplingParams, logprob_width, step_kind
from jaxllm.serving.runner import Runner, bucket
from jaxllm.serving.scheduler import PrefillChunk


@dataclass(frozen=True)
class CallShapes:
    """The call menu of an engine: `budget` prefill tokens a step (per dp shard) and `rows_cap`
    decode rows per dp shard (batch_size / dp)."""

    budget: int
    rows_cap: int

    def call(self, longest: int, waiting: int) -> tuple[int, int]:
        """(rows, length) of a prefill call whose longest chunk has `longest` tokens, with `waiting`
        chunks to run. Lengths come from a short menu (the budget / 16, / 4, / 1, rounded to a
        multiple of 16, and 128 when the budget / 16 is longer) and rows from 1, 4, 16, 64 within
        the budget, so a workload meets few shapes (each a compile); a chunk longer than the
        budget (LongRoPE, dynamic NTK: never split) takes a power of two. The 128 serves prompts
        that are mostly a cached prefix under a large budget: 64 requests of 50 new tokens behind
        a shared prompt, budget 8,192, are one call of 64 x 128 positions, not four of 16 x 512
        (H200, session 14)."""
        length = next((n for n in self.lengths() if n >= longest), None) or bucket(longest, 16)
        allowed = self.rows(length)
        return next((r for r in allowed if r >= waiting), allowed[-1]), length

    def calls(self, chunks: list[PrefillChunk], shards: int) -> Iterator[tuple[int, int, list[PrefillChunk]]]:
        """A step's prefill chunks as calls of the menu's shapes: (rows, length, the chunks of the call), longest
        chunks first, a call taking that many rows of each of the `shards` (dp) shards."""
        chunks = sorted(chunks, key=lambda c: -c.length)
        while chunks:
            per_shard = [sum(1 for c in chunks if c.seq.shard == i) for i in range(shards)]
            rows, length = self.call(chunks[0].length, max(per_shard))
            taken, group, rest = [0] * shards, [], []
            for c in chunks:
                (group if taken[c.seq.shard] < rows else rest).append(c)
                taken[c.seq.shard] += 1
            chunks = rest
            yield rows, length, group

    def lengths(self) -> list[int]:
        lengths = {max(16, -(-self.budget // (16 * d)) * 16) for d in (16, 4, 1)}
        return sorted(lengths | {min(128, min(lengths))})

    def rows(self, length: int) -> list[int]:
        """Rows of a call (of each dp shard's block: the budget and rows are per shard)."""
        return [r for r in (1, 4, 16, 64) if r == 1 or (r * length <= self.budget and r <= self.rows_cap)]

    def workload(self, runner: Runner, max_chunk: int, decode_chunk: int, prompts: list[int], reaches: list[int],
                 speculative: bool = False):
        """(prefill shapes [(rows, length, keys)], decode key buckets) that serving requests of
        these prompt lengths, reaching these total lengths, can meet: every (rows, length) their
        chunks (at most `max_chunk` tokens) may take, the key buckets of their prompts, and the
        decode calls (`decode_chunk` steps each) up to the longest reach; with `speculative`, the
        speculative decode calls' widths (Runner.speculate's buckets), which take the decode calls' place."""
        longest = max(prompts)
        chunk = min(longest, max_chunk)
        lengths = [n for n in self.lengths() if n < chunk] + [self.call(chunk, 1)[1]]
        keys = sorted({runner.prefill_keys(n) for n in range(1, longest + 1, 1024)} | {runner.prefill_keys(longest)})
        # A call of length n takes up to call(n, chunks waiting)'s rows, and a step has at most one
        # chunk per request: more rows than that never run. Each length has its own rows (a shorter
        # one more: the short chunks left behind a call of the longest take a call of their own).
        prefill = [(r, n, s) for n in lengths for r in self.rows(n) if r <= self.call(n, len(prompts))[0] for s in keys]
        keys = runner.kv_bucket if speculative else runner.decode_keys
        decode = sorted({keys(n) for n in range(1, max(reaches) + decode_chunk + 1, 256)})
        return prefill, decode


def variants(params: list[SamplingParams]) -> list[tuple[str, int, bool]]:
    """(sampling kind, top log-probability width, prompt scored) of every program that a call over some of the
    requests of these params takes. A call is of the largest kind its rows need (greedy, sampled, penalized:
    sampling.step_kind), of the widest top log-probabilities, and scores prompts if one of its rows does: requests
    that mix them meet calls of each combination (a greedy prompt prefilled alone, decode once the sampled ones end),
    and a prompt scored is prefilled again unscored if it is preempted (Sequence.scores_prompt)."""
    kinds = {step_kind([p]) for p in params}
    widths = {logprob_width([p]) for p in params}
    prompts = {False} | {bool(p.prompt_logprobs) for p in params}
    return list(itertools.product(sorted(kinds), sorted(widths), sorted(prompts)))
