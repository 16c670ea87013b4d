"""Generation as a library call, text in and text out, on top of the Engine: prompts encoded
(through the chat template), the engine's tokens decoded incrementally with stop strings
(TextStream), Completions out. `LoadedModel.generate` runs this; so does the CLI.

Tokenizers are transformers' (tokenizers and chat templates only, never its models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from jaxllm.engine import Engine, Request
from jaxllm.errors import GenerationError, check_token_ids
from jaxllm.sampling import SamplingParams


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
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tok is None:
                raise GenerationError("this checkpoint has no tokenizer: pass prompts as lists of token ids")
            ids.append(encode(tok, p, chat=chat, system=system))
        else:
            tokens = check_token_ids(p, model.config.vocab_size, f"prompt {i}")
            if tokens.ndim != 1:
                raise GenerationError(f"prompt {i} must be a string or a flat list of token ids, got shape {tokens.shape}")
            ids.append(tokens.tolist())
    return ids, params


def engine_for(model, ids: list[list[int]], params: SamplingParams) -> Engine:
    """An engine just large enough (cache length rounded up to a multiple of 256), kept on the
    model so the next call of the same size reuses its compiled steps."""
    need = max(len(i) for i in ids) + params.max_new_tokens
    key = (min(len(ids), 8), -(-need // 256) * 256)
    if key not in model.engines:
        model.engines[key] = Engine(model, batch_size=key[0], max_len=key[1])
    return model.engines[key]


def _is_single(prompts) -> bool:
    if isinstance(prompts, str):
        return True
    first = prompts[0] if len(prompts) else None
    return first is not None and not isinstance(first, (str, list, tuple)) and getattr(first, "ndim", 0) == 0


def generate(model, prompts: str | Sequence, params: SamplingParams | None = None, *, chat: bool | None = None,
             system: str | None = None, engine: Engine | None = None,
             on_text: Callable[[int, str], None] | None = None, on_token: Callable[[int, list[int]], None] | None = None):
    """See LoadedModel.generate."""
    single = _is_single(prompts)
    batch = [prompts] if single else list(prompts)
    if not batch:
        return []
    ids, params = prepare(model, batch, params, chat=chat, system=system)
    engine = engine or engine_for(model, ids, params)
    requests = [Request(p, params, i) for i, p in enumerate(ids)]
    streams = [TextStream(model.tokenizer, params.stop) if model.tokenizer is not None else None for _ in batch]
    tokens: list[list[int]] = [[] for _ in batch]
    logprobs: list[list[float]] = [[] for _ in batch]
    for ev in engine.run(requests, stop_check=lambda i: streams[i] is not None and streams[i].stopped):
        if on_token and ev.tokens:
            on_token(ev.index, ev.tokens)
        stream = streams[ev.index]
        if stream is not None and stream.stopped:
            continue
        tokens[ev.index] += ev.tokens
        logprobs[ev.index] += ev.logprobs
        if stream is not None:
            text = stream.push(ev.tokens)
            if stream.stopped:  # drop the tokens after the one that completed the stop string
                del tokens[ev.index][stream.kept_tokens:], logprobs[ev.index][stream.kept_tokens:]
            if text and on_text:
                on_text(ev.index, text)
    eos_ids = set() if params.ignore_eos else set(engine.eos.tolist())
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


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def encode(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    """Token ids of a prompt: through the chat template (as one user turn, after an optional
    system turn) when `chat`, else plain text with the tokenizer's own special tokens."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


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
        elif self._dirty:
            whole = self._whole_decode(len(self.tokens))
            self._parts, self._provisional, self._dirty = [whole], "", False
            self._final_len, self._unsent, self._fresh, self._tail = len(whole), "", "", ""
            out = whole[self.emitted :]
        else:  # text still provisional comes out too: later pushes skip what it was
            rest = self._unsent + self._provisional
            out = rest[max(0, self.emitted - (self._final_len - len(self._unsent))) :]
            self._unsent = ""
        self.emitted += len(out)
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
        if self._dirty:
            text = self._whole_decode(kept)
            position = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=position)
        self._stopped_text = text[:position]
        return self.flush()

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
    except Exception:  # a decode without that option: windows are decoded as decode does
        return None
    return tokenizer.clean_up_tokenization if cleaned != plain else None
