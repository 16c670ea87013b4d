"""The shapes of the prefill calls and which programs a workload needs, decided on the host.

Each distinct shape of a device call is a compile, so the engine runs prefill chunks in calls from
a short menu (`CallShapes.call`), and `CallShapes.workload` lists every shape (and the key buckets
of the runner, jaxllm/serving/runner.py) that serving some requests can meet, for
`Engine.precompile`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxllm.serving.runner import Runner, bucket


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
