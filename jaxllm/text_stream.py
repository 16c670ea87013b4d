"""Incremental detokenization with stop strings (TextStream): the text of one sequence's tokens
as they arrive, final text only, as transformers' decode would give it."""

from __future__ import annotations

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
    `tokenizer.decode(tokens, skip_special_tokens=skip_special)` (cut before a stop string).

    vLLM's options: `include_stop` cuts the text after the stop string instead; `min_tokens` lets a
    stop string count only where it ends past the text of the first min_tokens tokens.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = (), *, skip_special: bool = True, include_stop: bool = False,
                 min_tokens: int = 0):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_special, self.include_stop, self.min_tokens = skip_special, include_stop, min_tokens
        self.stop_string: str | None = None  # the stop string that ended the text
        self._floor = 0  # where the text of the first min_tokens tokens ends: a stop string must end past it
        self.tokens: list[int] = []
        self.emitted = 0  # characters of text returned by push and flush
        self.stopped = False
        self.kept_tokens = 0  # tokens that count: all pushed ones, or up to the one completing a stop string
        self._stops = tuple(s for s in self.stop if s)
        self._keep = max((len(s) for s in self._stops), default=1) - 1  # text before new text a stop may start in
        self._special = set(getattr(tokenizer, "all_special_ids", None) or ()) if skip_special else set()
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
                if start + i < self.min_tokens:
                    self._floor = self._final_len + len(self._provisional) - len(self._incomplete)  # len(text), less a half character
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
            return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special, clean_up_tokenization_spaces=False)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

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
        """Where the text ends at the first stop string in it (`_first_stop`), looking only where one
        could have appeared since the last look: the new text and the _keep characters before it."""
        region = self._tail + self._fresh + self._provisional
        base = self._final_len - len(self._fresh) - len(self._tail)
        self._tail = (self._tail + self._fresh)[-self._keep :] if self._keep else ""
        self._fresh = ""
        return self._first_stop(region, base)

    def _first_stop(self, text: str, base: int) -> int | None:
        """Where the whole text ends at the first stop string of `text` (which starts at `base` in
        it) that ends past _floor: the stop string's start, or its end under include_stop; None: none."""
        hits = [(i, s) for i, s in ((text.find(s, max(0, self._floor - base - len(s) + 1)), s) for s in self._stops) if i >= 0]
        if not hits:
            return None
        i, self.stop_string = min(hits, key=lambda hit: hit[0])
        return base + i + (len(self.stop_string) if self.include_stop else 0)

    def _stop_at(self, position: int, kept: int) -> str:
        self.stopped, self.kept_tokens = True, kept
        text = self.text
        out = text[self.emitted : position]  # what comes out goes on from what was streamed
        if self._dirty:  # `text` is the whole decode's, cut at its stop string (see flush)
            text = self._whole_decode(kept)
            found = self._first_stop(text, 0)
            position = position if found is None else found
        self._stopped_text = text[:position]
        self.emitted = max(self.emitted + len(out), len(self._stopped_text))
        return out

    def _whole_decode(self, n: int) -> str:
        return self.tokenizer.decode(self.tokens[:n], skip_special_tokens=self.skip_special)

    def _emit(self) -> str:
        """Final text not returned yet, less a tail that may still grow into a stop string."""
        unsent = self._unsent
        hold = len(unsent)
        for s in () if self.include_stop else self._stops:  # text kept up to a stop string's end is final
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
