"""Prompt lookup decoding's drafts (vLLM's "ngram" speculative method), on the host: no draft model.

A sequence that copies from its own prompt or output (a summary quoting its source, a code edit, a RAG answer)
has, at its end, n tokens that occurred before; the tokens that followed that earlier occurrence are a good guess
of what comes next. `propose` finds the longest such suffix of n in [n_min, n_max] tokens (the most recent
earlier occurrence of it) and drafts the k tokens after it; the engine verifies them in one forward pass
(Runner.verify), keeping those its decode steps would have chosen.
"""

from __future__ import annotations

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
