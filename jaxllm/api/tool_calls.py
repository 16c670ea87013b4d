"""Tool calls in a chat answer's text: the formats models are trained to write them in, read into
OpenAI's `tool_calls` as the text arrives (vLLM's --tool-call-parser; `python -m jaxllm.serve
--tool-call-parser NAME`).

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, text around them
                 (Qwen2.5, Qwen3, Hermes 2 Pro / 3; an unclosed last one is read at the answer's end)
    llama3_json  an answer that is JSON calls alone: [<|python_tag|>]{"name": ..., "parameters": {...}}
                 (or "arguments"), several joined by ';' (Llama 3.1 - 3.3's JSON tool calling)
    mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] to the answer's end, text before it
                 (Mistral-7B-Instruct-v0.3's format; call ids of 9 letters and digits, as its template demands)

Each format is a small incremental parser (`feed(text, final)` -> the text and calls that became
settled): it holds back only what may still become a call (a partial '<tool_call>', a call not yet
closed) and gives a call once it is whole, as one item. A block that looks like a call but whose
JSON does not parse (or lacks a name, or arguments that are an object) stays text, as vLLM leaves
it. ToolCalls turns one choice's items into OpenAI's shapes; since a whole answer is parsed by the
same code fed once (final), a stream's pieces add up to the non-streamed answer exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's function.arguments)


def _call(obj, *keys: str) -> Call | None:
    """A decoded call {"name": str, <key>: {...}}, the first of `keys` it holds; None if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = next((obj[k] for k in keys if k in obj), None)
    if not isinstance(args, dict):
        return None
    return Call(obj["name"], json.dumps(args, ensure_ascii=False))


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _partial(text: str, marker: str) -> int:
    """How many of `text`'s last characters begin `marker` (held back: the marker may be arriving)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class Format:
    """One answer's parser. `keep_special`: its marker is a special token, which the answer's text
    must keep (the request's skip_special_tokens is turned off, as vLLM's parsers adjust it)."""

    name = ""
    keep_special = False

    def __init__(self):
        self.buf = ""  # text received and not yet settled

    def feed(self, text: str, final: bool) -> list[str | Call]:
        raise NotImplementedError

    @staticmethod
    def call_id() -> str:
        return f"call_{uuid.uuid4().hex[:24]}"


class Tagged(Format):
    """Calls inside a start marker and an end marker (`end` None: the block runs to the answer's
    end); `block(text between them)` gives its calls, or None when they do not parse."""

    start = end = ""

    def block(self, body: str) -> list[Call] | None:
        raise NotImplementedError

    def feed(self, text: str, final: bool) -> list[str | Call]:
        self.buf += text
        out: list[str | Call] = []
        while self.buf:
            at = self.buf.find(self.start)
            if at < 0:
                keep = 0 if final else _partial(self.buf, self.start)
                out.append(self.buf[: len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep :]
                break
            out.append(self.buf[:at])
            self.buf = self.buf[at:]
            close = self.buf.find(self.end, len(self.start)) if self.end else -1
            if close < 0 and not final:
                break  # the block is still arriving
            stop = close + len(self.end) if close >= 0 else len(self.buf)
            whole, self.buf = self.buf[:stop], self.buf[stop:]
            calls = self.block(whole[len(self.start) : len(whole) - len(self.end) if close >= 0 else None])
            out += calls if calls else [whole]
        return [item for item in out if item != ""]


class Hermes(Tagged):
    name, start, end = "hermes", "<tool_call>", "</tool_call>"

    def block(self, body: str) -> list[Call] | None:
        call = _call(_loads(body), "arguments")
        return [call] if call else None


class Mistral(Tagged):
    name, start, end = "mistral", "[TOOL_CALLS]", None
    keep_special = True  # [TOOL_CALLS] is a control token: skipped, the calls would read as JSON text

    def block(self, body: str) -> list[Call] | None:
        found = _loads(body)
        calls = [_call(obj, "arguments") for obj in (found if isinstance(found, list) else [found])]
        return calls if calls and all(calls) else None

    @staticmethod
    def call_id() -> str:
        return uuid.uuid4().hex[:9]  # its chat template refuses any other id


class Llama3Json(Format):
    """An answer that begins (after white space) with '{' or <|python_tag|> is held to its end, then
    read as calls, or given whole as text when it is not calls alone."""

    name, tag = "llama3_json", "<|python_tag|>"

    def __init__(self):
        super().__init__()
        self.text = False  # the answer is known to be text

    def feed(self, text: str, final: bool) -> list[str | Call]:
        self.buf += text
        head = self.buf.lstrip()
        if not self.text and not final and (head.startswith(("{", self.tag)) or self.tag.startswith(head)):
            return []
        self.text = self.text or not head.startswith(("{", self.tag))
        out, self.buf = self.buf, ""
        return (None if self.text else self._calls(head.removeprefix(self.tag))) or ([out] if out else [])

    @staticmethod
    def _calls(text: str) -> list[Call] | None:
        decoder, calls, at = json.JSONDecoder(), [], 0
        space = re.compile(r"\s*")
        while True:
            at = space.match(text, at).end()
            try:
                obj, at = decoder.raw_decode(text, at)
            except ValueError:
                return None
            calls.append(_call(obj, "parameters", "arguments"))
            at = space.match(text, at).end()
            if at == len(text):
                return calls if all(calls) else None
            if text[at] != ";":
                return None
            at += 1


FORMATS = {f.name: f for f in (Hermes, Llama3Json, Mistral)}
PARSER_CHOICES = ("auto", *FORMATS, "none")

# What a chat template holds when it teaches a format (checked in this order): Qwen2.5/3's and
# Hermes' system prompt shows <tool_call>; Mistral v0.3's renders [TOOL_CALLS]; Llama 3.1-3.3's asks
# for {"name": function name, "parameters": ...} and names <|python_tag|> for its built-in tools.
_TEMPLATE_MARKS = (("<tool_call>", Hermes), ("[TOOL_CALLS]", Mistral), ('"parameters": dictionary', Llama3Json),
                   ("<|python_tag|>", Llama3Json))


def choose(name: str, chat_template) -> type[Format] | None:
    """The format --tool-call-parser `name` names; 'auto': the one the chat template teaches (None:
    none of these, so a request that offers tools with tool_choice 'auto' is refused)."""
    if name == "none":
        return None
    if name != "auto":
        return FORMATS[name]
    source = json.dumps(chat_template) if not isinstance(chat_template, str) else chat_template  # a dict of named templates too
    return next((fmt for mark, fmt in _TEMPLATE_MARKS if mark in (source or "")), None)


class ToolCalls:
    """One choice's answer through a Format: `feed` gives the content and the calls that became
    settled, in OpenAI's shapes. The white space at a call's edges is dropped (the newline before
    '<tool_call>', between two calls, after the last), except what keeps apart the texts on both sides
    of a call ("Before <call> after" is "Before after"): the content of text and calls is the text
    around them; an answer without calls is its text unchanged."""

    def __init__(self, fmt: type[Format]):
        self.format = fmt()
        self.calls: list[dict] = []
        self._held = ""  # white space after text: given with the text that follows, dropped at the end after a call
        self._after_call = False  # nothing but white space since the last call
        self._said = False  # some content was given

    def feed(self, text: str, final: bool) -> tuple[str, list[dict]]:
        content, calls = "", []
        for item in self.format.feed(text, final):
            if isinstance(item, Call):
                self._after_call = True
                self._held = self._held if self._said else ""
                call = {"index": len(self.calls), "id": self.format.call_id(), "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                self.calls.append(call)
                calls.append(call)
                continue
            if self._after_call:
                item = item.lstrip()
                if not item:
                    continue
                self._after_call = False
            body = item.rstrip()
            if body:
                content, self._held, self._said = content + self._held + body, "", True
            self._held += item[len(body) :]
        if final:
            content, self._held = content + ("" if self._after_call else self._held), ""
        return content, calls
