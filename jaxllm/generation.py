"""Generation as a library call, text in and text out, on top of the Engine: prompts encoded
(through the chat template), the engine's tokens decoded incrementally with stop strings
(TextStream), Completions out. `LoadedModel.generate` runs this; so does the CLI.

Tokenizers are transformers' (tokenizers and chat templates only, never its models), or
jaxllm.tokenizing's stand-in for one (a GGUF file's, cached: the same ids and text)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import numpy as np

# the chat-template helpers and TextStream are importable from here too, where they lived before
from jaxllm.chat_template import check_template_inputs, check_template_kwargs, encode, encode_messages, has_chat_template  # noqa: F401
from jaxllm.engine import Engine, Request, context_error
from jaxllm.errors import GenerationError, InputError, available_memory, check_prompt_ids, lone_surrogate, shown, size_text
from jaxllm.models.attention import check_kv_dtype, kv_cache_bytes
from jaxllm.sampling import SamplingParams
from jaxllm.serving.memory import tp_split
from jaxllm.serving.runner import pool_pages
from jaxllm.text_stream import TextStream


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": an EOS token or a stop string; "length": max_new_tokens reached; "error": non-finite logits
    prompt_tokens: int
    logprobs: list[float] | None = None  # per generated token, when SamplingParams.logprobs
    # SamplingParams.top_logprobs k > 0: per generated token the k most likely (token id, logprob) pairs at its
    # position, best first (ties: the lower id first, as jax.lax.top_k); None otherwise
    top_logprobs: list[list[tuple[int, float]]] | None = None
    # SamplingParams.prompt_logprobs: per prompt token log p(token | the tokens before it), None for the first;
    # per prompt token its k most likely pairs ([] for top_logprobs 0; None for the first); and its rank (vLLM's:
    # the tokens at least as likely, itself included; None for the first)
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    prompt_ranks: list[int | None] | None = None
    # finish_reason "error": why, in one line naming the problem and the fix (the model's logits turned NaN/inf, a
    # structured-output grammar refused a token); None otherwise
    error: str | None = None


def prepare(model, prompts, params: SamplingParams | dict | None, *, chat=None, system=None, chat_template_kwargs=None):
    """Token ids and resolved SamplingParams for each prompt (str, or token ids: a list, tuple or
    1-D numpy integer array); `params` may be a dict of SamplingParams fields. Everything is
    checked here, before any engine is made. Each prompt's params are resolved with its length, for
    generation_config.json's max_length and min_length (prompt + new tokens, as transformers reads them)."""
    template_kwargs = check_template_kwargs(chat_template_kwargs)
    request = SamplingParams.of(params)
    params = request.resolved(model.generation_config, prompt_tokens=0)  # checked before any prompt is encoded
    tok = model.tokenizer
    if chat is None:
        chat = has_chat_template(tok)
    if chat and not has_chat_template(tok):
        raise GenerationError("this checkpoint has no tokenizer, and a chat needs its chat template: use chat=False "
                              "(--no-chat) with token-id prompts" if tok is None else
                              "this checkpoint's tokenizer has no chat template: use chat=False (--no-chat)")
    if params.stop and tok is None:  # stop strings are found in the decoded text: without a tokenizer, never
        raise GenerationError(f"stop={shown(list(params.stop))} needs the decoded text, and this checkpoint has no tokenizer: "
                              "add its tokenizer files (tokenizer.json, tokenizer_config.json) to the folder, or drop stop")
    check_template_inputs(tok, prompts, chat, system, template_kwargs)
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tok is None:
                raise GenerationError("this checkpoint has no tokenizer: add its tokenizer files (tokenizer.json, "
                                      "tokenizer_config.json) to the folder, or pass prompts as lists of token ids (library)")
            for what, text in ((f"prompt {i}", p), ("the system message", system or "")):
                at = lone_surrogate(text)  # undecodable bytes read with errors="surrogateescape" (stdin in a C locale)
                if at is not None:
                    raise GenerationError(f"{what} is not valid text (character {at + 1} stands for an "
                                          "undecodable byte): give UTF-8 text")
            tokens = encode(tok, p, chat=chat, system=system, template_kwargs=template_kwargs)
            if not tokens:
                raise GenerationError(f"prompt {i} is empty: it encodes to no tokens; give some text")
            ids.append(tokens)
        else:
            tokens = check_prompt_ids(p, model.config, f"prompt {i}")
            if tokens.ndim != 1:
                raise GenerationError(f"prompt {i} must be a string or a flat list of token ids, got shape {list(tokens.shape)}")
            if not tokens.size:
                raise GenerationError(f"prompt {i} is empty: give at least one token id")
            ids.append(tokens.tolist())
    context = getattr(model.config, "context_length", None)
    by_length = {n: request.resolved(model.generation_config, prompt_tokens=n, context=context) for n in sorted({len(i) for i in ids})}
    return ids, [by_length[len(i)] for i in ids]


def engine_for(model, ids: list[list[int]], params: SamplingParams | list[SamplingParams]) -> Engine:
    """An engine just large enough (sequences up to a multiple of 256 tokens, pages for a full
    batch of them; on a CPU, which computes every padded position, a prefill budget of that length
    too, so a short prompt pads to max_len / 16 or / 4 tokens, not to 128), its cache in the
    model's `kv_dtype`, kept on the model so the next call of the same size reuses its compiled
    steps and prefix cache. A kept engine of the same batch up to 4x longer serves the call too,
    and a new engine replaces the shorter ones of its batch, so the pools kept stay within 4/3 of
    the longest (one per size grew without bound: prompts growing to 8k tokens kept a pool for
    every 256 of them). A request beyond the model's learned
    positions, or whose KV cache the device's memory cannot hold, is refused before anything is
    allocated. `params`: one SamplingParams for every prompt, or one for each."""
    rows = params if isinstance(params, list) else [params] * len(ids)
    cfg, (longest, new) = model.config, max(((len(i), p.max_new_tokens) for i, p in zip(ids, rows)), key=sum)
    need = longest + new
    if need > cfg.context_length:
        raise GenerationError(context_error(longest, new, cfg))
    batch, max_len = min(len(ids), 8), -(-need // 256) * 256
    num_pages = batch * max_len // 16
    kv_dtype = check_kv_dtype(getattr(model, "kv_dtype", None))
    speculative = getattr(model, "speculative_tokens", 0)  # the engine's default (Engine speculative_tokens)
    key = (batch, max_len, kv_dtype, speculative)
    mates = [k for k in model.engines if (k[0], k[2:]) == (batch, key[2:])]
    key = min((k for k in mates if max_len <= k[1] <= 4 * max_len), key=lambda k: k[1], default=key)
    if key not in model.engines:
        token_bytes = kv_cache_bytes(cfg, 1, model.dtype, kv_dtype) / tp_split(model)
        pool = pool_pages(num_pages, batch) * 16  # positions, as the runner allocates them
        available, where = available_memory()
        if available is not None and pool * token_bytes > available:
            fit = (int(available // (token_bytes * batch)) - 16) // 256 * 256 - longest  # as max_len rounds
            fix = (f"lower max_new_tokens (about {fit:,} fit)" if fit > 0 else "shorten the prompt") + \
                  (", send fewer prompts at once" if batch > 1 else "") + ", or free memory"
            raise GenerationError(
                f"prompt of {longest} tokens + max_new_tokens={new:,} needs a KV cache of {num_pages:,} pages of 16 tokens "
                f"({size_text(pool * token_bytes)}) for {batch} sequence{'s' if batch > 1 else ''}, but {where} has "
                f"{size_text(available)} available: {fix}")
        budget = min(2048, max_len) if jax.default_backend() == "cpu" else 2048  # 37 tokens: 0.4 s padded to 64, 0.9 s to 128
        engine = Engine(model, batch_size=batch, max_len=max_len, num_pages=num_pages, page_size=16,
                        kv_dtype=kv_dtype, prefill_tokens=budget).hold_weakly()
        for k in mates:  # the new engine serves their requests: their pools go (only once it exists)
            if k[1] < max_len:
                del model.engines[k]
        model.engines[key] = engine
    return model.engines[key]


def _is_single(prompts) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, (bytes, dict)) or not hasattr(prompts, "__len__") or not hasattr(prompts, "__getitem__"):
        raise GenerationError(f"prompts must be a string, token ids (a list, tuple or numpy array) or a list of those, "
                              f"got {type(prompts).__name__}")
    if getattr(prompts, "ndim", None) == 0:  # len() of it raised a TypeError
        raise GenerationError(f"prompts must be a string, token ids or a list of those, got a 0-d array ({shown(prompts, 40)}): "
                              "pass one prompt's ids as a list or 1-D array, e.g. [5]")
    if getattr(prompts, "ndim", None) == 1:  # a 1-D array is one prompt's ids, even an empty one
        return True
    first = prompts[0] if len(prompts) else None
    return first is not None and not isinstance(first, (str, list, tuple)) and getattr(first, "ndim", 0) == 0


def generate(model, prompts: str | Sequence, params: SamplingParams | None = None, *, chat: bool | None = None,
             system: str | None = None, chat_template_kwargs: dict | None = None, engine: Engine | None = None,
             on_text: Callable[[int, str], None] | None = None, on_token: Callable[[int, list[int]], None] | None = None,
             on_finish: Callable[[int, Completion], None] | None = None):
    """See LoadedModel.generate."""
    single = _is_single(prompts)
    batch = [prompts] if single else list(prompts)
    if not batch:
        return []
    if engine is not None and (not isinstance(engine, Engine) or engine.model is not model):
        raise GenerationError("engine= must be a jaxllm.Engine built on this model (Engine(model, ...)), got "
                              + ("one built on another model" if isinstance(engine, Engine) else type(engine).__name__))
    _check_options(chat, on_text, on_token, on_finish)
    ids, params = prepare(model, batch, params, chat=chat, system=system, chat_template_kwargs=chat_template_kwargs)
    engine = engine or engine_for(model, ids, params)
    requests = [Request(p, params[i], i) for i, p in enumerate(ids)]
    outputs = [Output(model.tokenizer, p, set(engine.eos.tolist())) for p in params]

    def completion(i):
        o, p = outputs[i], params[i]
        return Completion(o.text, o.tokens, o.finish_reason or "length", len(ids[i]), o.logprobs if p.logprobs else None,
                          o.top_logprobs if p.top_logprobs else None, o.prompt_logprobs, o.prompt_top_logprobs,
                          o.prompt_ranks, o.error)

    for ev in engine.run(requests, stop_check=lambda i: outputs[i].finish_reason is not None):
        output = outputs[ev.index]
        if output.finish_reason is not None:  # after a stop string: nothing more counts
            continue
        before = len(output.tokens)
        text = output.take(ev)
        if on_token and len(output.tokens) > before:  # the tokens kept: none past a stop string
            on_token(ev.index, output.tokens[before:])
        if text and on_text:
            on_text(ev.index, text)
        if on_finish and output.finish_reason is not None:  # this event ended it (finished ones are skipped above)
            on_finish(ev.index, completion(ev.index))
    out = [completion(i) for i in range(len(batch))]
    return out[0] if single else out


def _check_options(chat, on_text, on_token, on_finish) -> None:
    """generate's keyword options, refused in one line before anything runs: a chat flag that is
    not a bool ("no" would be truthy: the template applied), callbacks that cannot be called as
    the decode loop calls them."""
    if chat is not None and not isinstance(chat, (bool, np.bool_)):
        raise InputError(f"chat must be True, False or None (apply the chat template when the tokenizer has one), got {chat!r}")
    for name, fn, args in (("on_text", on_text, "(index, text)"), ("on_token", on_token, "(index, token_ids)"),
                           ("on_finish", on_finish, "(index, completion)")):
        if fn is not None and not _takes_two(fn):
            raise InputError(f"{name} must be a function taking {args}, e.g. lambda i, x: print(x), got {fn!r}")


def _takes_two(fn) -> bool:
    """Whether `fn` can be called with two positional arguments (as far as its signature tells)."""
    if not callable(fn):
        return False
    try:
        inspect.signature(fn).bind(0, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): take it on trust
        pass
    return True


class Output:
    """One sequence's answer as the engine's events arrive: its text through a TextStream (stop
    strings cut it), its tokens and log-probabilities up to the token that completed a stop
    string, and its finish reason ("stop": EOS, a stop token id or a stop string; "length"; "error": non-finite
    logits; None while running). `stop_reason` is vLLM's: the stop string or stop token id that ended
    it (None: an EOS id, the length, or running). The id that ended it is its last token, its text
    left out as vLLM leaves it out, unless include_stop_str_in_output."""

    def __init__(self, tokenizer, params: SamplingParams, eos: set[int]):
        self.stream = TextStream(tokenizer, params.stop, skip_special=params.skip_special_tokens, min_tokens=params.min_tokens,
                                 include_stop=params.include_stop_str_in_output) if tokenizer is not None else None
        self.eos = set() if params.ignore_eos else eos
        self.stop_ids, self.include_stop = set(params.stop_token_ids) - self.eos, params.include_stop_str_in_output
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []  # per token, when the events carry them
        self.prompt_logprobs = self.prompt_top_logprobs = self.prompt_ranks = None  # the first event's (Event)
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.error: str | None = None  # finish reason "error": why (Event.error)

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def take(self, ev) -> str:
        """Take an engine Event (its tokens, log-probabilities, top ones and the prompt's); returns the text
        that became final."""
        if ev.prompt_logprobs is not None:
            self.prompt_logprobs, self.prompt_top_logprobs, self.prompt_ranks = ev.prompt_logprobs, ev.prompt_top_logprobs, ev.prompt_ranks
        text = self.push(ev.tokens, ev.logprobs, ev.finished, ev.error, ev.top_logprobs)
        if ev.finish_reason == "stop" and self.finish_reason == "length":  # a structured output completed, no ending id
            self.finish_reason = "stop"
        return text

    def push(self, tokens: list[int], logprobs: list[float], finished: bool, error: str | None = None, top: list | None = None) -> str:
        """Take an event's tokens; returns the text that became final. `error`: why the engine ended
        the sequence (its logits turned non-finite: finish reason "error"; Event.error); `top`: the
        tokens' top log-probabilities (Event.top_logprobs), if any."""
        self.tokens += tokens
        self.logprobs += logprobs
        self.top_logprobs += top or []
        ended = finished and not error and bool(self.tokens) and self.tokens[-1] in self.eos | self.stop_ids  # by an id
        text = ""
        if self.stream is not None:
            text = self.stream.push(tokens[:-1] if ended and tokens and not self.include_stop else tokens)
            if self.stream.stopped:  # drop the tokens after the one that completed the stop string
                kept = self.stream.kept_tokens
                del self.tokens[kept:], self.logprobs[kept:], self.top_logprobs[kept:]
                self.finish_reason, self.stop_reason = "stop", self.stream.stop_string
        if finished and self.finish_reason is None:
            text += self.stream.flush() if self.stream is not None else ""
            self.finish_reason = "error" if error else "stop" if ended else "length"
            self.error = error or None
            self.stop_reason = self.tokens[-1] if ended and self.tokens[-1] in self.stop_ids else None
        return text
