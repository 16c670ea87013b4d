"""Prompt lookup decoding's drafts (vLLM's "ngram" speculative method): no draft model.

A sequence that copies from its own prompt or output (a summary quoting its source, a code edit, a RAG answer)
has, at its end, n tokens that occurred before; the tokens that followed that earlier occurrence are a good guess
of what comes next. `propose` finds the longest such suffix of n in [n_min, n_max] tokens (the most recent
earlier occurrence of it) and drafts the k tokens after it; the engine verifies them in one forward pass,
keeping those its decode steps would have chosen. `propose_rows` is the same lookup for every decode row at once,
in jax.numpy: the decode loop drafts on the device between its steps (steps._speculate), so no host round trip
sits between a verify step and the next (on an H200 a call's dispatch alone cost Qwen3-0.6B two decode steps).
`propose` is its reference on the host (tests, benchmarks).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

N_MAX, N_MIN = 4, 2  # the longest and shortest suffix matched (vLLM's prompt_lookup_max and prompt_lookup_min defaults)


def propose(tokens, k: int, n_max: int = N_MAX, n_min: int = N_MIN) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the last n tokens of `tokens` (the
    sequence's prompt and output), n from n_max down to n_min: the longest suffix that occurred before wins, and
    the latest of its occurrences; where those run into the end of `tokens` (an occurrence overlapping the suffix),
    they go on repeating with the period that occurrence shows. [] when none did (or k is 0)."""
    tokens = np.asarray(tokens)
    size = len(tokens)
    if k < 1 or size <= n_min:
        return []
    # ends: positions e < size - 1 where an earlier occurrence of the suffix may end (the last token again)
    ends = np.flatnonzero(tokens[: size - 1] == tokens[-1])
    matched = np.ones(len(ends), np.int64)  # how many of the suffix's tokens each occurrence matches, back from its end
    going = np.ones(len(ends), bool)
    for back in range(1, n_max):
        ok = going & (ends >= back)
        ok[ok] = tokens[ends[ok] - back] == tokens[size - 1 - back]
        going = ok
        matched += going
    best = matched.max(initial=0)
    if best < n_min:
        return []
    end = ends[np.flatnonzero(matched == best)[-1]]  # the latest occurrence of the longest suffix
    # what followed it, repeated where that runs into the sequence's end: a suffix found `period` tokens back says the
    # sequence repeats with that period (a loop, a list's pattern), so its next tokens go on repeating
    period = size - 1 - end
    return [int(tokens[end + 1 + i % period]) for i in range(k)]


def propose_rows(tokens, sizes, k: int, n_max: int = N_MAX, n_min: int = N_MIN):
    """`propose` for every row at once, traceable: tokens [B, H] (row b's sequence is its first sizes[b] [B]
    tokens; what lies past them is ignored). Returns (drafts int32 [B, k], lengths int32 [B]): row b's draft is
    `propose(tokens[b, :sizes[b]], k)`, of length k where one was found and 0 where none was (its drafts then 0)."""
    b, h = tokens.shape
    at = jnp.arange(h)[None, :]
    rows = jnp.arange(b)[:, None]
    sizes = sizes[:, None]

    def back(j):  # the suffix's token j back from its end, and each position's token j back (-1 before the start)
        return tokens[rows, jnp.maximum(sizes - 1 - j, 0)], jnp.where(at >= j, tokens[rows, jnp.maximum(at - j, 0)], -1)

    last, here = back(0)
    going = (at < sizes - 1) & (here == last)  # positions e < size - 1 where an earlier occurrence may end
    matched = going.astype(jnp.int32)
    for j in range(1, n_max):
        want, earlier = back(j)
        going = going & (at >= j) & (earlier == want)
        matched = matched + going
    best = matched.max(axis=1)
    found = (best >= n_min) & (sizes[:, 0] > n_min)
    end = jnp.argmax(jnp.where(matched == best[:, None], at, -1), axis=1)  # the latest occurrence of the longest
    period = jnp.maximum(sizes[:, 0] - 1 - end, 1)
    follow = end[:, None] + 1 + jnp.arange(k)[None, :] % period[:, None]
    drafts = jnp.where(found[:, None], tokens[rows, jnp.clip(follow, 0, h - 1)], 0)
    return drafts.astype(jnp.int32), jnp.where(found, k, 0).astype(jnp.int32)
