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

from jaxllm.engine import Engine, Request, context_error
from jaxllm.errors import GenerationError, InputError, available_memory, check_token_ids, size_text
from jaxllm.models.attention import check_kv_dtype, kv_cache_bytes
from jaxllm.sampling import SamplingParams
from jaxllm.serving.memory import tp_split
from jaxllm.serving.runner import pool_pages
from jaxllm.tokenizing import APPLY_OPTIONS


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": an EOS token or a stop string; "length": max_new_tokens reached; "error": non-finite logits
    prompt_tokens: int
    logprobs: list[float] | None = None  # per generated token, when SamplingParams.logprobs


def prepare(model, prompts, params: SamplingParams | dict | None, *, chat=None, system=None, chat_template_kwargs=None):
    """Token ids and resolved SamplingParams for each prompt (str, or token ids: a list, tuple or
    1-D numpy integer array); `params` may be a dict of SamplingParams fields. Everything is
    checked here, before any engine is made."""
    template_kwargs = check_template_kwargs(chat_template_kwargs)
    params = SamplingParams.of(params).resolved(model.generation_config)
    tok = model.tokenizer
    if chat is None:
        chat = has_chat_template(tok)
    if chat and not has_chat_template(tok):
        raise GenerationError("this checkpoint has no tokenizer, and a chat needs its chat template: use chat=False "
                              "(--no-chat) with token-id prompts" if tok is None else
                              "this checkpoint's tokenizer has no chat template: use chat=False (--no-chat)")
    if params.stop and tok is None:  # stop strings are found in the decoded text: without a tokenizer, never
        raise GenerationError(f"stop={list(params.stop)!r} needs the decoded text, and this checkpoint has no tokenizer: "
                              "add its tokenizer files (tokenizer.json, tokenizer_config.json) to the folder, or drop stop")
    _check_template_inputs(tok, prompts, chat, system, template_kwargs)
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tok is None:
                raise GenerationError("this checkpoint has no tokenizer: add its tokenizer files (tokenizer.json, "
                                      "tokenizer_config.json) to the folder, or pass prompts as lists of token ids (library)")
            for what, text in ((f"prompt {i}", p), ("the system message", system or "")):
                try:  # lone surrogates: undecodable bytes read with errors="surrogateescape" (stdin in a C locale)
                    text.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise GenerationError(f"{what} is not valid text (character {err.start + 1} stands for an "
                                          "undecodable byte): give UTF-8 text") from None
            tokens = encode(tok, p, chat=chat, system=system, template_kwargs=template_kwargs)
            if not tokens:
                raise GenerationError(f"prompt {i} is empty: it encodes to no tokens; give some text")
            ids.append(tokens)
        else:
            tokens = check_token_ids(p, model.config.vocab_size, f"prompt {i}")
            if tokens.ndim != 1:
                raise GenerationError(f"prompt {i} must be a string or a flat list of token ids, got shape {list(tokens.shape)}")
            if not tokens.size:
                raise GenerationError(f"prompt {i} is empty: give at least one token id")
            ids.append(tokens.tolist())
    return ids, params


def engine_for(model, ids: list[list[int]], params: SamplingParams) -> Engine:
    """An engine just large enough (sequences up to a multiple of 256 tokens, pages for a full
    batch of them; on a CPU, which computes every padded position, a prefill budget of that length
    too, so a short prompt pads to max_len / 16 or / 4 tokens, not to 128), its cache in the
    model's `kv_dtype`, kept on the model so the next call of the same size reuses its compiled
    steps and prefix cache. A kept engine of the same batch up to 4x longer serves the call too,
    and a new engine replaces the shorter ones of its batch, so the pools kept stay within 4/3 of
    the longest (one per size grew without bound: prompts growing to 8k tokens kept a pool for
    every 256 of them). A request beyond the model's learned
    positions, or whose KV cache the device's memory cannot hold, is refused before anything is
    allocated."""
    cfg, longest, new = model.config, max(len(i) for i in ids), params.max_new_tokens
    need = longest + new
    if need > cfg.context_length:
        raise GenerationError(context_error(longest, new, cfg))
    batch, max_len = min(len(ids), 8), -(-need // 256) * 256
    num_pages = batch * max_len // 16
    kv_dtype = check_kv_dtype(getattr(model, "kv_dtype", None))
    key = (batch, max_len, kv_dtype)
    mates = [k for k in model.engines if (k[0], k[2]) == (batch, kv_dtype)]
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
    requests = [Request(p, params, i) for i, p in enumerate(ids)]
    outputs = [Output(model.tokenizer, params, set(engine.eos.tolist())) for _ in batch]

    def completion(i):
        o = outputs[i]
        return Completion(o.text, o.tokens, o.finish_reason or "length", len(ids[i]), o.logprobs if params.logprobs else None)

    for ev in engine.run(requests, stop_check=lambda i: outputs[i].finish_reason is not None):
        output = outputs[ev.index]
        if output.finish_reason is not None:  # after a stop string: nothing more counts
            continue
        before = len(output.tokens)
        text = output.push(ev.tokens, ev.logprobs, ev.finished, ev.error)
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
    string, and its finish reason ("stop": EOS or a stop string; "length"; "error": non-finite
    logits; None while running)."""

    def __init__(self, tokenizer, params: SamplingParams, eos: set[int]):
        self.stream = TextStream(tokenizer, params.stop) if tokenizer is not None else None
        self.eos = set() if params.ignore_eos else eos
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def push(self, tokens: list[int], logprobs: list[float], finished: bool, error: bool = False) -> str:
        """Take an event's tokens; returns the text that became final. `error`: the engine ended
        the sequence because its logits turned non-finite (finish reason "error")."""
        self.tokens += tokens
        self.logprobs += logprobs
        text = ""
        if self.stream is not None:
            text = self.stream.push(tokens)
            if self.stream.stopped:  # drop the tokens after the one that completed the stop string
                del self.tokens[self.stream.kept_tokens:], self.logprobs[self.stream.kept_tokens:]
                self.finish_reason = "stop"
        if finished and self.finish_reason is None:
            text += self.stream.flush() if self.stream is not None else ""
            eos_end = bool(self.tokens) and self.tokens[-1] in self.eos
            self.finish_reason = "error" if error else "stop" if eos_end else "length"
        return text


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _check_template_inputs(tok, prompts, chat: bool, system, template_kwargs: dict) -> None:
    """A system message and template variables go through the chat template: refused in one line
    where it would not run (chat=False, no template) or token-id prompts skip it."""
    if system is not None and not isinstance(system, str):
        raise InputError(f"system must be the system message's text (a string), got {type(system).__name__}")
    for what, the, given in (("a system message", "the system message", system is not None),
                             ("chat_template_kwargs", "chat_template_kwargs", bool(template_kwargs))):
        if given and any(not isinstance(p, str) for p in prompts):  # token ids skip the template: it would be dropped
            raise GenerationError(f"{what} goes through the chat template, which token-id prompts skip: pass the "
                                  "prompt as text" + (", or put the system turn into the token ids" if system is not None else ""))
        if given and not chat:  # it would be dropped without a word
            raise GenerationError(f"{what} goes through the chat template: " + (
                f"this checkpoint's tokenizer has none; drop {the}" if not has_chat_template(tok)
                else f"drop chat=False (--no-chat), or {the}"))


def encode(tokenizer, prompt: str, *, chat: bool, system: str | None = None, template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt: through the chat template (as one user turn, after a system turn
    when `system` is not None, even "") when `chat`, else plain text with the tokenizer's own special tokens."""
    if chat:
        # an empty system message is a turn too: it is how a template's default system prompt is left out
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
        return encode_messages(tokenizer, messages, template_kwargs)
    return list(tokenizer(prompt)["input_ids"])


# apply_chat_template's own arguments and the names it gives the template itself: not template variables
_TEMPLATE_OWN = APPLY_OPTIONS + ("messages", "conversation", "tokenize", "add_generation_prompt")


def check_template_kwargs(kwargs) -> dict:
    """`chat_template_kwargs` (variables the chat template reads, as transformers' apply_chat_template
    passes them: Qwen3's enable_thinking, gpt-oss's reasoning_effort), checked in one line; {} for None."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise InputError(f"chat_template_kwargs must map the chat template's variable names to values, e.g. "
                         f'{{"enable_thinking": false}}, got {str(kwargs)[:80]}')
    own = [k for k in kwargs if k in _TEMPLATE_OWN]
    if own:
        raise InputError(f"chat_template_kwargs {own[0]!r} is not a template variable but how the template is applied, "
                         "which jaxllm decides: leave it out")
    return dict(kwargs)


def encode_messages(tokenizer, messages: list[dict], template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a conversation ({"role", "content"} dicts) through the chat template, ready
    for the assistant's turn; `template_kwargs` the template's own variables (check_template_kwargs)."""
    import jinja2  # what transformers and jaxllm.tokenizing render templates with

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **check_template_kwargs(template_kwargs))
    except jinja2.TemplateSyntaxError as err:  # the template itself does not parse
        raise InputError(f"the tokenizer's chat template is invalid (line {err.lineno}: {err.message}): fix the template "
                         "(chat_template in tokenizer_config.json, or a GGUF's tokenizer.chat_template), or generate without it "
                         "(--no-chat, chat=False)") from None
    except jinja2.TemplateError as err:  # the template's raise_exception(...): these messages are not for it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"the chat template refused the messages: {first}") from None
    except Exception as err:  # the template failed while rendering (a TypeError inside it, ...)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(f"the chat template failed on these messages ({type(err).__name__}: {first}): fix the template "
                         "(chat_template in tokenizer_config.json, or a GGUF's tokenizer.chat_template), or generate without it "
                         "(--no-chat, chat=False)") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


_FFFD = "\ufffd"  # what a decoder shows for the bytes of a character that has not fully arrived
_CLEANUP_PROBE = "a . b , c ! d ? e n't f 's"
_MAX_UNFINISHED = 16  # tokens a window waits for a character to complete before taking it as broken


class TextStream:
    """Incremental detokenization for one sequence, with stop strings.

    `push(tokens)` returns only text that is final: never half of a multi-byte character (the
    decoder shows those as U+FFFD until the rest arrives) and never a tail that might still grow
    into a stop string. A stop string ends the text just before it; `kept_tokens` is then the
    length of the shortest token prefix whose text contains it (all tokens pushed, before that).

    Each token costs O(1) work, whatever the length of the sequence: it decodes only a window
    of the last few tokens (the tokens since the text was last complete, after the tokens that
    completed it before, as in vLLM and TGI), takes what the window's text gained from them, and
    looks for stop strings only in that new text and the (longest stop - 1) characters before it.
    Tokens are processed one at a time, so every token's text end is known and the answer does
    not depend on how tokens are grouped into pushes. The text equals
    `tokenizer.decode(tokens, skip_special_tokens=True)` (cut before a stop string).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.emitted = 0  # characters of text returned by push and flush
        self.stopped = False
        self.kept_tokens = 0  # tokens that count: all pushed ones, or up to the one completing a stop string
        self._stops = tuple(s for s in self.stop if s)
        self._keep = max((len(s) for s in self._stops), default=1) - 1  # text before new text a stop may start in
        self._special = set(getattr(tokenizer, "all_special_ids", None) or ())
        self._skips: dict[int, bool] = {}
        self._clean = _cleanup(tokenizer)  # transformers' clean_up_tokenization, when decode applies it
        # The decoding window: `_ids` are the tokens that may give text (skipped special tokens
        # left out: decode drops them before anything else); the text of _ids[:_read] is final.
        self._ids: list[int] = []
        self._prefix = 0  # the window starts here: the tokens that completed the text before
        self._read = 0
        self._prefix_text = ""  # decode(_ids[_prefix:_read]), the window's context
        self._partial = ""  # text of _ids[_read:] already final (before an unfinished character)
        self._incomplete = ""  # the U+FFFD run after it, until the character's bytes all arrive
        self._dirty = False  # a window's text disagreed with itself: check against one whole decode at the end
        self._pending = ""  # decoded text whose cleanup may still change (cleanup only)
        # The text: final parts, then a provisional tail that may still change.
        self._parts: list[str] = []
        self._provisional = ""
        self._unsent = ""  # final text not returned yet (held back while it may start a stop string)
        self._fresh = ""  # final text not searched for stop strings yet
        self._tail = ""  # the last _keep characters of the searched final text
        self._final_len = 0
        self._stopped_text: str | None = None

    @property
    def text(self) -> str:
        """All text so far; once a stop string is found, the text before it."""
        if self._stopped_text is not None:
            return self._stopped_text
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return (self._parts[0] if self._parts else "") + self._provisional

    def push(self, tokens: list[int]) -> str:
        if self.stopped:
            return ""
        tokens = list(tokens)
        start = len(self.tokens)
        self.tokens += tokens
        if len(self._stops) < len(self.stop):  # an empty stop string is in any text
            return self._stop_at(0, kept=start)
        for i, token in enumerate(tokens):
            if self._advance(token) and self._stops:
                hit = self._find_stop()
                if hit is not None:
                    return self._stop_at(hit, kept=start + i + 1)
        self.kept_tokens = len(self.tokens)
        return self._emit()

    def flush(self) -> str:
        """The rest of the text, at the end of the sequence."""
        if self._stopped_text is not None:
            out = self._stopped_text[self.emitted :]
            self.emitted += len(out)
            return out
        # text still provisional comes out too: later pushes skip what it was
        rest = self._unsent + self._provisional
        out = rest[max(0, self.emitted - (self._final_len - len(self._unsent))) :]
        self._unsent = ""
        self.emitted += len(out)
        if self._dirty:
            # The windows' text is not the whole decode's (byte-fallback bytes that formed no character turned
            # characters already streamed into U+FFFD): `text` becomes the whole decode, while what comes out goes on
            # from what was streamed (the whole decode's tail from the streamed length repeated or skipped text), and
            # later pushes go on after the whole decode.
            whole = self._whole_decode(len(self.tokens))
            self._parts, self._provisional, self._dirty = [whole], "", False
            self._final_len, self._fresh, self._tail = len(whole), "", ""
            self.emitted = len(whole)
        return out

    # -- detokenization ----------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self._clean is not None:  # cleaned up here, where it cannot straddle a window's edge
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _skipped(self, token: int) -> bool:
        """Whether decode drops the token (a special token): it then never enters the window."""
        if token not in self._special:
            return False
        skip = self._skips.get(token)
        if skip is None:
            skip = self._skips[token] = self.tokenizer.decode([token], skip_special_tokens=True) == ""
        return skip

    def _advance(self, token: int) -> bool:
        """Decode one more token; False when it cannot change the text."""
        if self._skipped(token):
            return False
        self._ids.append(token)
        window = self._decode(self._ids[self._prefix :])
        delta = window[len(self._prefix_text) :]  # the text of _ids[_read:], in context
        if not window.startswith(self._prefix_text):
            # Byte-fallback tokens can do this: "<0x0A><0xF0>" decodes to two U+FFFD, not "\n"
            # and one, until the emoji's last byte arrives. Usually the window agrees again a few
            # tokens later; if not (bytes that never form a character), the text is put right
            # from one whole decode at the end.
            self._dirty = True
        done = delta.rstrip(_FFFD)
        if len(done) < len(self._partial):
            done = self._partial  # final text is never taken back
        piece, self._incomplete = done[len(self._partial) :], delta[len(done) :]
        if self._incomplete and len(self._ids) - self._read > _MAX_UNFINISHED and done == self._partial:
            # Only U+FFFD for many tokens: bytes that form no character. Take them as they are
            # rather than let the window grow (the whole decode puts the text right at the end).
            piece, self._incomplete, self._dirty = delta[len(self._partial) :], "", True
            self._read = len(self._ids) - 1  # and only the last of them is the next window's context
        if delta and not self._incomplete:  # complete: these tokens become the next window's context
            self._prefix, self._read = self._read, len(self._ids)
            self._prefix_text = self._decode(self._ids[self._prefix : self._read])
            self._partial = ""
        else:
            self._partial = done
        self._add_text(piece)
        return True

    def _add_text(self, piece: str) -> None:
        """Take newly decoded final text: through cleanup (when the tokenizer cleans up) into the text."""
        if self._clean is None:
            final, self._provisional = piece, self._incomplete
        else:
            # Cleanup only removes spaces before punctuation and contractions; it gives the same
            # text on both sides of a point between three letters or digits as on the whole, so
            # text before the last such point is final.
            pending = self._pending + piece
            cut = 0
            for c in range(len(pending) - 1, max(2, len(self._pending)) - 1, -1):
                if pending[c].isalnum() and pending[c - 1].isalnum() and pending[c - 2].isalnum():
                    cut = c
                    break
            final, self._pending = (self._clean(pending[:cut]) if cut else ""), pending[cut:]
            self._provisional = self._clean(self._pending + self._incomplete)
        if final:
            self._parts.append(final)
            self._final_len += len(final)
            self._unsent += final
            if self._stops:
                self._fresh += final

    # -- stop strings ------------------------------------------------------------------------

    def _find_stop(self) -> int | None:
        """Where the first stop string in the text starts, looking only where one could have
        appeared since the last look: the new text and the _keep characters before it."""
        region = self._tail + self._fresh + self._provisional
        base = self._final_len - len(self._fresh) - len(self._tail)
        hits = [i for i in (region.find(s) for s in self._stops) if i >= 0]
        self._tail = (self._tail + self._fresh)[-self._keep :] if self._keep else ""
        self._fresh = ""
        return base + min(hits) if hits else None

    def _stop_at(self, position: int, kept: int) -> str:
        self.stopped, self.kept_tokens = True, kept
        text = self.text
        out = text[self.emitted : position]  # what comes out goes on from what was streamed
        if self._dirty:  # `text` is the whole decode's, cut at its stop string (see flush)
            text = self._whole_decode(kept)
            position = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=position)
        self._stopped_text = text[:position]
        self.emitted = max(self.emitted + len(out), len(self._stopped_text))
        return out

    def _whole_decode(self, n: int) -> str:
        return self.tokenizer.decode(self.tokens[:n], skip_special_tokens=True)

    def _emit(self) -> str:
        """Final text not returned yet, less a tail that may still grow into a stop string."""
        unsent = self._unsent
        hold = len(unsent)
        for s in self._stops:
            for j in range(max(0, len(unsent) - len(s) + 1), hold):
                if s.startswith(unsent[j:]):
                    hold = j
                    break
        start = self._final_len - len(unsent)  # where `unsent` starts in the text
        out = unsent[max(0, self.emitted - start) : hold]  # less what a flush returned already
        self._unsent = unsent[hold:]
        self.emitted = max(self.emitted, start + hold)
        return out


def _cleanup(tokenizer):
    """transformers' clean_up_tokenization when the tokenizer's decode applies it, else None."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False) or not hasattr(tokenizer, "clean_up_tokenization"):
        return None
    try:
        ids = tokenizer.encode(_CLEANUP_PROBE, add_special_tokens=False)
        plain = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cleaned = tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:  # a decode without that option: windows are decoded as decode does
        return None
    return tokenizer.clean_up_tokenization if cleaned != plain else None
