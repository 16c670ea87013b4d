"""What the engine's Events say about a sequence, from what the runner computed: the ids that end it, why it
finished, its structured output's matcher, the prompt's scores its first event carries, and the one-line error of a
request that ends with finish_reason "error". Plain host functions over a Sequence; the engine emits the Events."""

from __future__ import annotations

import numpy as np

from jaxllm import structured
from jaxllm.sampling import SamplingParams
from jaxllm.serving.scheduler import PrefillChunk
from jaxllm.serving.sequence import Sequence


def stops(eos: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The ids that end a sequence of these params, its decode row's `eos`: the engine's EOS ids `eos` (-1s under
    ignore_eos), then its stop_token_ids. The device finds them, so a sequence recomputed after preemption ends where
    it did."""
    eos = np.full_like(eos, -1) if params.ignore_eos else eos
    return np.concatenate([eos, np.asarray(params.stop_token_ids, np.int32)])


def finish_reason(seq: Sequence, finished: bool, eos: np.ndarray) -> str | None:
    """A finished sequence's finish reason: "stop" when it ended on an id that ends it (one of `eos`, the engine's EOS
    ids, or of its stop_token_ids), or its structured output is complete, else "length"; None while it runs."""
    if not finished:
        return None
    if complete(seq):
        return "stop"
    return "stop" if seq.output and seq.output[-1] in stops(eos, seq.params) else "length"


def complete(seq: Sequence) -> bool:
    """Its structured output is complete: the sequence ends here (finish reason "stop")."""
    return seq.grammar is not None and seq.grammar.stopped


def synced(seq: Sequence) -> structured.Grammar | None:
    """A structured-output sequence's matcher, whose state says what its last prefill chunk may sample (the runner
    makes the masks: structured.masks), fed the output first where it has not consumed it (a recompute after a
    preemption keeps the output); None for another sequence."""
    if seq.grammar is not None:
        seq.grammar.sync(seq.output)
    return seq.grammar


def keep_prompt_scores(chunk: PrefillChunk, scored: tuple) -> None:
    """Keep what a prefill chunk of a sequence that scores its prompt computed (runner.PrefillResult.prompt): each
    position's log-probability of the prompt token after it, its top pairs and its rank; a chunk computed again
    (after a preemption) overwrites its positions."""
    seq = chunk.seq
    if seq.prompt_scores is None:
        seq.prompt_scores = [None] * len(seq.prompt)
    logprobs, tops, ranks = scored
    for j in range(chunk.length):
        seq.prompt_scores[chunk.start + j] = (float(logprobs[j]), tops[j], ranks[j])


def prompt_fields(seq: Sequence) -> dict:
    """The first event's prompt_logprobs and prompt_top_logprobs (Event) of a sequence that scored its prompt
    (none for the first token, which nothing precedes), taken off it; {} for any other."""
    scores, seq.prompt_scores = seq.prompt_scores, None
    if scores is None:
        return {}
    before = scores[: len(seq.prompt) - 1]
    return dict(prompt_logprobs=[None] + [lp for lp, _, _ in before], prompt_top_logprobs=[None] + [top for _, top, _ in before],
                prompt_ranks=[None] + [rank for _, _, rank in before])


def error_message(seq: Sequence, index, grammar: bool) -> str:
    """Why request `index` ends with finish_reason "error", in one line: its structured-output matcher refused its
    last token (`grammar`), or its logits turned non-finite (NaN or Inf)."""
    if grammar:
        return (f"request {index!r}: its structured-output grammar refused token {seq.output[-1]} after "
                f"{len(seq.output) - 1} new tokens ({seq.grammar.error}); it stops with finish_reason 'error'")
    return (f"the model's logits are NaN/inf at token {len(seq.output) + 1} of request {index!r}: its weights "
            "hold NaN/inf (check with `python -m jaxllm.inspect --scan MODEL`) or float16 overflowed (load "
            "with dtype=bfloat16 or float32)")
