"""`jaxllm.generate`: prompts in, completions out, on top of the Engine.

Usable from research code without the CLI; the CLI is a thin layer over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from jaxllm.engine import Engine, Request
from jaxllm.errors import GenerationError
from jaxllm.sampling import SamplingParams
from jaxllm.tokenizer import TextStream, encode, has_chat_template


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": an EOS token or a stop string; "length": max_new_tokens reached
    prompt_tokens: int
    logprobs: list[float] | None = None  # per generated token, when SamplingParams.logprobs


def prepare(model, prompts, params: SamplingParams | None, *, chat=None, system=None):
    """Token ids and resolved SamplingParams for each prompt (str, or a list of token ids)."""
    params = (params or SamplingParams()).resolved(model.generation_config)
    tok = model.tokenizer
    if chat is None:
        chat = has_chat_template(tok)
    if chat and not has_chat_template(tok):
        raise GenerationError("this checkpoint's tokenizer has no chat template: use chat=False (--no-chat)")
    ids = []
    for p in prompts:
        if isinstance(p, str):
            if tok is None:
                raise GenerationError("this checkpoint has no tokenizer: pass prompts as lists of token ids")
            ids.append(encode(tok, p, chat=chat, system=system))
        else:
            ids.append([int(t) for t in p])
    return ids, params


def engine_for(model, ids: list[list[int]], params: SamplingParams, batch_size: int | None = None) -> Engine:
    """An engine just large enough: cache length rounded up to a multiple of 256."""
    need = max(len(i) for i in ids) + params.max_new_tokens
    max_len = -(-need // 256) * 256
    return Engine(model, batch_size=batch_size or min(len(ids), 8), max_len=max_len)


def generate(
    model,
    prompts: str | Sequence,
    params: SamplingParams | None = None,
    *,
    chat: bool | None = None,
    system: str | None = None,
    engine: Engine | None = None,
    on_text: Callable[[int, str], None] | None = None,
    on_token: Callable[[int, list[int]], None] | None = None,
):
    """Generate for one prompt (returns a Completion) or a list of prompts (returns a list).

    A prompt is a string (chat template applied when the tokenizer has one, unless chat=False)
    or a list of token ids. Pass an `engine` to reuse its compiled steps across calls;
    `on_text(index, text)` receives streamed text as it becomes final, `on_token(index, ids)`
    the token ids as they arrive.
    """
    single = isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int))
    batch = [prompts] if single else list(prompts)
    if not batch:
        return []
    ids, params = prepare(model, batch, params, chat=chat, system=system)
    engine = engine or engine_for(model, ids, params)
    requests = [Request(p, params, i) for i, p in enumerate(ids)]
    streams = [TextStream(model.tokenizer, params.stop) if model.tokenizer is not None else None for _ in batch]
    tokens: list[list[int]] = [[] for _ in batch]
    logprobs: list[list[float]] = [[] for _ in batch]
    finished = [False] * len(batch)
    for ev in engine.run(requests, stop_check=lambda i: streams[i] is not None and streams[i].stopped):
        if on_token and ev.tokens:
            on_token(ev.index, ev.tokens)
        if streams[ev.index] is None or not streams[ev.index].stopped:
            tokens[ev.index] += ev.tokens
            logprobs[ev.index] += ev.logprobs
            if streams[ev.index] is not None:
                text = streams[ev.index].push(ev.tokens)
                if streams[ev.index].stopped:
                    # Drop tokens that came after the one completing the stop string.
                    _trim_to_stop(streams[ev.index], tokens[ev.index], logprobs[ev.index])
                if text and on_text:
                    on_text(ev.index, text)
        finished[ev.index] = finished[ev.index] or ev.finished
    eos_ids = set(engine.eos.tolist()) if not params.ignore_eos else set()
    out = []
    for i, s in enumerate(streams):
        if s is not None and not s.stopped:
            rest = s.flush()
            if rest and on_text:
                on_text(i, rest)
        eos_end = bool(tokens[i]) and tokens[i][-1] in eos_ids or (s is not None and s.stopped)
        out.append(Completion(
            text=s.text if s is not None else "",
            token_ids=tokens[i],
            finish_reason="stop" if eos_end else "length",
            prompt_tokens=len(ids[i]),
            logprobs=logprobs[i] if params.logprobs else None,
        ))
    return out[0] if single else out


def _trim_to_stop(stream: TextStream, tokens: list[int], logprobs: list[float]) -> None:
    """Keep the shortest token prefix whose text contains a stop string."""
    for n in range(1, len(tokens) + 1):
        text = stream.tokenizer.decode(tokens[:n], skip_special_tokens=True)
        if any(s in text for s in stream.stop):
            del tokens[n:], logprobs[n:]
            return
