"""What goes into the serving engine and what comes out: a Request (prompt ids and sampling values),
the Events of its tokens as they come, a Score of teacher-forced log-probabilities, and the one-line
refusal of a request beyond the model's positions. jaxllm.engine re-exports them beside Engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from jaxllm.sampling import SamplingParams


def context_error(prompt_tokens: int, max_new: int, cfg) -> str:
    """The one-line refusal of a request beyond the model's positions (cfg.context_length): learned
    position tables end there, and rotary models were trained up to it (transformers would compute
    on, vLLM refuses, as this does)."""
    limit = cfg.context_length
    fix = fit_advice(prompt_tokens, max_new, limit)
    what = "positions this model has learned" if cfg.position_embedding == "learned" else "positions of this model's context"
    return f"prompt of {prompt_tokens:,} tokens + max_new_tokens={max_new:,} exceeds the {limit:,} {what}: {fix}"


def fit_advice(prompt_tokens: int, max_new: int, limit: int) -> str:
    """What makes a prompt and its max_new_tokens fit `limit` positions, so that following it does
    not meet a second refusal: fewer new tokens where the prompt leaves room, else a prompt short
    enough for the new tokens asked for."""
    if prompt_tokens < limit:
        return f"lower max_new_tokens to at most {limit - prompt_tokens:,}"
    if max_new < limit:
        return f"shorten the prompt to at most {limit - max_new:,} tokens"
    return f"shorten the prompt and lower max_new_tokens (together at most {limit:,} tokens)"


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    index: int = 0


@dataclass
class Event:
    """New tokens of one request, as the host loop sees them. A request's events arrive in order;
    the last one is `finished` and names its `finish_reason`: "stop" (its last token is an EOS id),
    "length" (max_new_tokens reached) or "error" (non-finite logits). Stop strings are matched in
    the decoded text, above the engine (jaxllm.generation.Output), and an aborted request gets no
    last event.

    With SamplingParams.top_logprobs k, `top_logprobs` holds per token of `tokens` the k most likely
    (token id, logprob) pairs at its position, best first (ties: the lower id first); else []. With
    prompt_logprobs, the request's first event carries `prompt_logprobs` [float | None] per prompt
    token (log p(token | the tokens before it); None for the first) and `prompt_top_logprobs` per
    prompt token its k pairs (the first: None) and `prompt_ranks` its rank (vLLM's: the tokens at
    least as likely, itself included); other events None."""

    index: int
    tokens: list[int]
    logprobs: list[float]
    finished: bool = False
    error: str | None = None  # why the request ended with finish_reason "error" (one line: the problem and the fix)
    finish_reason: str | None = None  # set on the last event: "stop", "length" or "error"
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    prompt_ranks: list[int | None] | None = None


class Score(NamedTuple):
    """Engine.score's answer for tokens t_0 .. t_n-1 (teacher-forced: each prefix is the given
    tokens, never the model's)."""

    logprobs: np.ndarray  # float32 [n - 1]: log p(t_i | t_0 .. t_i-1) for i >= 1
    greedy: np.ndarray  # int32 [n - 1]: the model's most likely token after t_0 .. t_i-1, i >= 1

    @property
    def perplexity(self) -> float:
        return float(np.exp(-np.mean(self.logprobs)))
