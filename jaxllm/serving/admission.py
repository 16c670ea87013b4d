"""What an engine takes, refused at the door in one line before anything is computed or queued: its own options
checked against the model (speculative_tokens), and each request checked against the model and the engine's sizes
(its prompt's ids, its sampling values, its length against the positions and the pages), a list of them at once
(which one to fix named), and the indices their events will carry."""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxllm import structured
from jaxllm.errors import GenerationError, JaxllmError, check_prompt_ids, shown
from jaxllm.sampling import SamplingParams
from jaxllm.serving.block_manager import BlockManager
from jaxllm.serving.requests import Request, context_error, fit_advice


def check_request(req: Request, cfg, max_len: int, blocks: BlockManager, grammar_tokenizer: Callable) -> list[int]:
    """Refuse a request that can never run on an engine of `max_len` positions and `blocks`' pages; returns its
    prompt's ids as Python ints (whatever holds them: a list, a numpy or JAX array). `grammar_tokenizer()` gives
    llguidance's tokenizer, made only for a structured-output request."""
    if not isinstance(req, Request):
        raise GenerationError(f"Engine takes jaxllm.engine.Request(prompt ids, resolved params) objects, got {type(req).__name__}")
    params = req.params
    unset = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "min_tokens")  # resolved fills them
    if not isinstance(params, SamplingParams) or any(getattr(params, f) is None for f in unset):
        raise GenerationError("a Request's params must be resolved SamplingParams: pass "
                              "jaxllm.SamplingParams(...).resolved(model.generation_config)")
    params.validate()
    if params.structured is not None:
        structured.check(params.structured, grammar_tokenizer())
    for name, ids, given in (("logit_bias", [t for t, _ in params.logit_bias], dict(params.logit_bias)),
                             ("stop_token_ids", params.stop_token_ids, list(params.stop_token_ids))):
        beyond = [t for t in ids if t >= cfg.output_vocab]  # the logits' width
        if beyond:
            raise GenerationError(f"{name}={shown(given)} is invalid: token {shown(beyond[0])} is beyond the model's "
                                  f"{cfg.output_vocab:,} tokens: use ids below {cfg.output_vocab:,}")
    ids = check_prompt_ids(req.prompt, cfg, "prompt", dims=(1,), allow_empty=False).tolist()
    n = len(ids)
    total = n + req.params.max_new_tokens
    if total > cfg.context_length:  # first: raising max_len cannot help here
        raise GenerationError(context_error(n, req.params.max_new_tokens, cfg))
    if total > max_len:
        raise GenerationError(
            f"prompt of {n} tokens + max_new_tokens={req.params.max_new_tokens} exceeds the engine's max_len "
            f"{max_len}: {fit_advice(n, req.params.max_new_tokens, max_len)}, or raise max_len")
    pages = blocks.pages_for(max(total - 1, n))  # the keys written: the last new token is sampled, never written
    if pages > blocks.shard_pages:
        where = "the pool has" if blocks.shards == 1 else f"each of the pool's {blocks.shards} data-parallel shards has"
        raise GenerationError(
            f"prompt of {n} tokens + max_new_tokens={req.params.max_new_tokens} needs "
            f"{pages} KV pages but {where} {blocks.shard_pages}: "
            "give the engine more pages (num_pages, memory_fraction) or ask for fewer tokens")
    return ids


def check_all(requests: list[Request], check: Callable[[Request], list[int]]) -> list[list[int]]:
    """`check` each of a list of requests; the refusal of one of several names it (its index, else its place in the
    list): "temperature=-1 is invalid" among a hundred requests did not say which to fix."""
    ids = []
    for i, req in enumerate(requests):
        try:
            ids.append(check(req))
        except JaxllmError as err:
            if len(requests) == 1:
                raise
            which = f"request {req.index!r}" if isinstance(req, Request) else f"item {i} of the list"
            raise type(err)(f"{which}: {err}") from None
    return ids


def check_indices(requests: list[Request], held) -> None:
    """Refuse an index that a `held` request (their indices), or an earlier one of `requests`, already has: events
    name their request by index alone, so two streams under one index could not be told apart."""
    taken = set(held)
    for req in requests:
        try:
            hash(req.index)
        except TypeError:
            raise GenerationError(f"a Request's index must be hashable (a number or a string: its events carry it), "
                                  f"got {type(req.index).__name__}") from None
        if req.index in taken:
            raise GenerationError(f"request index {req.index!r} is already used by a request this engine holds: "
                                  "their events could not be told apart; give each request its own index")
        taken.add(req.index)


def request_list(requests, what: str) -> list[Request]:
    """`requests` as a list (a generator is read once: checking it must not leave nothing to serve), or the one-line
    refusal of one Request or something that is no list of them (iterating either raised a TypeError)."""
    if isinstance(requests, Request):
        raise GenerationError(f"{what} takes a list of Requests, got one Request: pass [request]")
    if isinstance(requests, (str, bytes, dict)) or not hasattr(requests, "__iter__"):
        raise GenerationError(f"{what} takes a list of Requests, got {type(requests).__name__}: pass [Request(prompt ids, "
                              "resolved params), ...]")
    return list(requests)


MAX_SPECULATIVE = 64  # drafts per verify step: prompt lookup's pay at 2-10 (docs/benchmarks.md, speculative decoding)


def speculative_tokens(model, cfg, k) -> int:
    """Engine speculative_tokens checked: a whole number >= 0 (None: the model's `speculative_tokens` attribute,
    else 0), refused above 0 for a model whose drafts could not be verified in one call."""
    k = getattr(model, "speculative_tokens", 0) if k is None else k
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise GenerationError(f"Engine speculative_tokens={k!r} is invalid: use a whole number >= 0 (0: no speculative decoding)")
    if k > MAX_SPECULATIVE:  # a verify call scores k + 1 tokens a row, one program per width: 10**5 compiled for minutes
        raise GenerationError(f"speculative_tokens={k} is too large: each verify step scores k + 1 tokens a sequence "
                              f"and drafts that long are almost never accepted; use at most {MAX_SPECULATIVE} (2-10 pay best)")
    if k and cfg.recurrent:
        raise GenerationError(f"Engine speculative_tokens={k} is invalid for this model: its recurrent layers keep a state "
                              "per sequence that a rejected draft cannot roll back; use speculative_tokens=0")
    if k and cfg.whole_prefill:
        raise GenerationError(f"Engine speculative_tokens={k} is invalid for this model: its keys depend on the sequence's "
                              "length (dynamic NTK, LongRoPE) or on how it is split into calls (shared KV pools), so drafts "
                              "verified in one call would not give decode's tokens; use speculative_tokens=0")
    return int(k)
