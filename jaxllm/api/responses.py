"""OpenAI's response objects for jaxllm.serve: what one choice gained from an engine event (`Piece`),
and each endpoint's way of writing it (`Format`: completions and chat, whole or as stream chunks),
log-probabilities and tool calls included; the request side is protocol.py."""

from __future__ import annotations

import dataclasses
import time
import uuid

from jaxllm.api.tool_calls import Format as ToolFormat
from jaxllm.api.tool_calls import ToolCalls


@dataclasses.dataclass
class Piece:
    """What one choice gained from one engine event: text (final), tokens and their log-probabilities (None: a
    prompt's first token), and per token its most likely (id, logprob) pairs (Event.top_logprobs; None: none
    asked of the prompt's first token; the list may stop short where none were asked). With echo, the first
    piece of a choice begins with its prompt's `echoed` tokens (`after`)."""

    text: str
    tokens: list[int]
    logprobs: list[float | None]
    finish_reason: str | None = None
    top: list = dataclasses.field(default_factory=list)
    echoed: int = 0
    stop_reason: str | int | None = None  # vLLM's: the stop string or stop token id that ended the choice

    def after(self, text: str, prompt: list[int], output) -> "Piece":
        """This piece behind its prompt (completions' echo): the prompt's text and tokens, with the
        log-probabilities the engine gave them (generation.Output.prompt_logprobs; None where not asked)."""
        n = len(prompt)
        lps = output.prompt_logprobs or [None] * n
        top = output.prompt_top_logprobs or [None] * n
        return Piece(text + self.text, prompt + self.tokens, lps + self.logprobs, self.finish_reason, top + self.top, n,
                     self.stop_reason)

    def top_at(self, i: int) -> list:
        return self.top[i] or [] if i < len(self.top) else []


LOGPROB_FLOOR = -9999.0  # -inf in JSON: what OpenAI and vLLM send in its place


def _floored(logprob: float | None) -> float | None:
    return None if logprob is None else max(logprob, LOGPROB_FLOOR)


class Format:
    """One endpoint's response objects. `choice` builds a whole answer (final) or a stream chunk's."""

    object = chunk_object = prefix = ""

    def __init__(self, name: str, token_text, *, logprobs: bool, token_ids: bool, token_bytes=None):
        self.id, self.created, self.name = f"{self.prefix}-{uuid.uuid4().hex}", int(time.time()), name
        self.token_text, self.logprobs, self.token_ids = token_text, logprobs, token_ids
        self.top: int | None = None  # the most likely tokens shown per token (None: all the engine gave; prompt_logprobs may widen them)
        self.stream_usage = False  # stream_options.include_usage: every chunk carries "usage" (null but the last's, as OpenAI's)
        self.token_bytes = token_bytes or (lambda token: token_text(token).encode())  # a token's own bytes (tokenizing.byte_reader)

    def envelope(self, choices: list[dict], usage: dict | None = None, chunk: bool = False) -> dict:
        out = {"id": self.id, "object": self.chunk_object if chunk else self.object, "created": self.created,
               "model": self.name, "choices": choices}
        if usage is not None or (chunk and self.stream_usage):
            out["usage"] = usage
        return out

    def choice(self, index: int, piece: Piece, final: bool) -> dict:
        out = {"index": index, **self.content(index, piece, final), "finish_reason": self.finish_reason(index, piece),
               "logprobs": self.format_logprobs(index, piece) if self.logprobs else None}
        out["stop_reason"] = piece.stop_reason
        if self.token_ids:
            out["token_ids"] = piece.tokens[piece.echoed :]
        return out

    def first_chunks(self, n: int) -> list[dict]:
        return []

    def pairs(self, piece: Piece, i: int) -> list:
        return piece.top_at(i)[: self.top]

    def with_prompt_logprobs(self, response: dict, scored: list) -> dict:
        """vLLM's prompt_logprobs (`scored`: per choice, prompt_logprobs() of its prompt) on each choice."""
        for choice, lps in zip(response["choices"], scored):
            choice["prompt_logprobs"] = lps
        return response

    def prompt_logprobs(self, prompt: list[int], output, k: int) -> list[dict | None]:
        """vLLM's prompt_logprobs of one prompt: None for its first token, then per token {id: {logprob,
        rank, decoded_token}} of the token itself (rank: the tokens at least as likely, itself included)
        and of the k most likely (ranks 1..k); JSON's keys are the ids as text."""
        out: list[dict | None] = [None]
        for i in range(1, len(prompt)):
            scored = {prompt[i]: (output.prompt_logprobs[i], output.prompt_ranks[i])}  # the token itself first, as vLLM's
            for rank, (token, logprob) in enumerate(output.prompt_top_logprobs[i][:k], 1):
                scored.setdefault(token, (logprob, rank))
            out.append({token: {"logprob": _floored(logprob), "rank": rank, "decoded_token": self.token_text(token)}
                        for token, (logprob, rank) in scored.items()})
        return out

    def finish_reason(self, index: int, piece: Piece) -> str | None:
        return piece.finish_reason

    @staticmethod
    def carries(choice: dict) -> bool:
        """Whether a stream chunk's choice says something (text, a delta)."""
        return bool(choice.get("text") or choice.get("delta"))


class CompletionFormat(Format):
    object = chunk_object = "text_completion"
    prefix = "cmpl"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._offsets: dict[int, int] = {}  # per choice: the text offset its next token starts at

    def content(self, index: int, piece: Piece, final: bool) -> dict:
        return {"text": piece.text}

    def format_logprobs(self, index: int, piece: Piece) -> dict:
        """With `text_offset`: where each token's text starts in the choice's text (a stream's
        chunks go on counting from the last), as the token texts add up."""
        texts = [self.token_text(t) for t in piece.tokens]
        offsets, at = [], self._offsets.get(index, 0)
        for text in texts:
            offsets.append(at)
            at += len(text)
        self._offsets[index] = at
        return {"tokens": texts, "token_logprobs": [_floored(lp) for lp in piece.logprobs],
                "top_logprobs": [None if lp is None else self._top(t, lp, self.pairs(piece, i))
                                 for i, (t, lp) in enumerate(zip(piece.tokens, piece.logprobs))],
                "text_offset": offsets}

    def _top(self, token: int, logprob: float, pairs: list) -> dict:
        """OpenAI's top_logprobs of one token: the k most likely tokens' texts -> logprobs, and the
        chosen token's (so k + 1 at most; texts that two tokens share keep the likelier's logprob)."""
        out = {}
        for t, lp in [*pairs, (token, logprob)]:
            out.setdefault(self.token_text(t), _floored(lp))
        return out


class ChatFormat(Format):
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, *args, tools: type[ToolFormat] | None = None, echo: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.tools = tools  # the tool-call format each choice's text is read in (tool_calls.py); None: text only
        self.echo = echo  # vLLM's chat echo: the text each choice's content begins with (ChatRequest.echoed)
        self._calls: dict[int, ToolCalls] = {}  # per choice

    def content(self, index: int, piece: Piece, final: bool) -> dict:
        if self.tools is None:
            text, calls, made = piece.text, [], []
        else:
            reader = self._calls.setdefault(index, ToolCalls(self.tools))
            text, calls = reader.feed(piece.text, final or piece.finish_reason is not None)
            made = reader.calls
        if final:  # content: the text around the calls (null if none), as OpenAI's
            text = self.echo + text
            message = {"role": "assistant", "content": text if text or not made else None}
            if made:
                message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in made]
            return {"message": message}
        delta = {"content": text} if text else {}
        if calls:  # a call's first delta (index, id, type, name), then its arguments in pieces (tool_calls.ToolCalls)
            delta["tool_calls"] = calls
        return {"delta": delta}

    def finish_reason(self, index: int, piece: Piece) -> str | None:
        """"tool_calls" for an answer that made calls and ended its turn; "length" and "error" stay, as they say it was cut."""
        reader = self._calls.get(index)
        made = piece.finish_reason == "stop" and reader is not None and reader.calls
        return getattr(self.tools, "finish_reason", "tool_calls") if made else piece.finish_reason  # forced_tools: its own

    def format_logprobs(self, index: int, piece: Piece) -> dict:
        return {"content": [{**self._token(t, lp), "top_logprobs": [self._token(*pair) for pair in self.pairs(piece, i)]}
                            for i, (t, lp) in enumerate(zip(piece.tokens, piece.logprobs))]}

    def _token(self, token: int, logprob: float) -> dict:
        return {"token": self.token_text(token), "logprob": _floored(logprob), "bytes": list(self.token_bytes(token))}

    def with_prompt_logprobs(self, response: dict, scored: list) -> dict:
        """vLLM's chat answer carries its one prompt's prompt_logprobs once, beside the choices."""
        response["prompt_logprobs"] = scored[0]
        return response

    def first_chunks(self, n: int) -> list[dict]:
        """The role comes first, in a chunk of its own per choice (as OpenAI sends it); then the echo, if any (as vLLM)."""
        return [self.envelope([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}], chunk=True) for i in range(n)] + [
                self.envelope([{"index": i, "delta": {"content": self.echo}, "logprobs": None, "finish_reason": None}], chunk=True)
                for i in range(n if self.echo else 0)]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
