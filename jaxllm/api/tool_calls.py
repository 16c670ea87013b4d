"""Tool calls in a chat answer's text: the formats models are trained to write them in, read into
OpenAI's `tool_calls` as the text arrives (vLLM's --tool-call-parser; `python -m jaxllm.serve
--tool-call-parser NAME`).

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>, any number, text around them
                 (Qwen2.5, Qwen3, Hermes 2 Pro / 3; an unclosed last one is read at the answer's end; several
                 calls in one block, one after another or as a [...] list, are each a call; a markdown fence
                 around them inside the block, ```json ... ```, is skipped)
    llama3_json  an answer that is JSON calls alone: [<|python_tag|>]{"name": ..., "parameters": {...}}
                 (or "arguments"), several joined by ';' (Llama 3.1 - 3.3's JSON tool calling)
    mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] to the answer's end, text before it
                 (Mistral-7B-Instruct-v0.3's format; call ids of 9 letters and digits, as its template demands),
                 or [TOOL_CALLS]name[ARGS]{...} a call (v11 tokenizers: Mistral Small 3.2, Devstral; [ARGS]
                 optional, as vLLM reads it with the marker skipped); a [TOOL_CALLS] begins each block

Each format is a small incremental parser (`feed(text, final)` -> the text, call starts and argument
pieces that became settled). A block (from its marker; for llama3_json the answer from its first
'{') holds back its text until a call object's header is read: its "name" and the '{' that begins
its arguments (`Call`); from then on the arguments stream (`Args`), re-written as json.dumps writes
them (json.dumps(json.loads(arguments), ensure_ascii=False): the non-streamed form), a number once it
ends, a string's characters as they come (a raw newline or tab in one, as models write code, as its
escape; an end marker inside one is its text, not the block's end). Arguments written as a JSON
string of the object ("arguments": "{\\"city\\": ...}", as OpenAI's field holds them) are that
object. A block none of whose objects becomes a call (not JSON, no name, arguments that are not an
object) is text, as vLLM leaves it (Mistral's without its [TOOL_CALLS] marker, a control token no reader
shows, as vLLM's parser drops it); once a call has begun it stays
one: a block cut short (max_tokens, a closing marker inside the JSON) or whose JSON breaks after the
header keeps the arguments given so far, and what follows the calls in their block is dropped.
ToolCalls turns one choice's items into OpenAI's shapes; since a whole answer is parsed by the same
code fed once (final), a stream's pieces add up to the non-streamed answer exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid


@dataclasses.dataclass(frozen=True)
class Call:
    """A call begins: its name (its arguments follow as Args pieces)."""

    name: str


@dataclasses.dataclass(frozen=True)
class Args:
    """A piece of the current call's arguments (OpenAI's function.arguments, a JSON object as text)."""

    text: str


_DECODER = json.JSONDecoder(strict=False)  # a raw newline or tab inside a string, as models write code: its escape
_SPACE = re.compile(r"[ \t\n\r]*")
_WHITE = " \t\n\r"
_LITERAL = re.compile(r"[-+.0-9a-zA-Z]")  # the characters of numbers, true, false, null (NaN, Infinity as json reads them)
_UNIT = re.compile(r'[^"\\]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}')  # one character of a JSON string's text
_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")  # a surrogate pair's first half: waits for the second
_CLOSE = {"{": "}", "[": "]"}
_QUOTED = re.compile(r'"\{[ \t\n\r]*(\\"|\})')  # a string that begins a JSON object: '"{\"' or '"{}'
_FENCE = re.compile(r"```[A-Za-z]*")  # a markdown code fence around a block's calls ("```json")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,256}")  # a function's name written before its arguments (OpenAI's names)


_LONE = re.compile("[\ud800-\udfff]")  # half of a surrogate pair, alone: no UTF-8 writes it


def _dumps(value: str) -> str:
    """A JSON string as json.dumps(ensure_ascii=False) writes it, a lone surrogate ('\\ud83d' with no second
    half: its escape) left escaped, as the response's UTF-8 cannot hold it."""
    return _LONE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False))


def _settled(text: str) -> tuple[int, int]:
    """How much of a JSON string's text `text` is whole characters (a surrogate pair's first half waits),
    and where its characters end (at its closing '"', an escape not whole yet, or the end)."""
    at = end = 0
    while unit := _UNIT.match(text, at):
        at = unit.end()
        end = at if not _HIGH.fullmatch(unit.group()) else end
    return end, at


def _in_string(string: bool, escape: bool, ch: str) -> tuple[bool, bool, bool]:
    """JSON text read on by `ch`: whether it is inside a string, after a backslash there, and whether `ch` is a
    string's (its quotes too)."""
    if string:
        return escape or ch != '"', not escape and ch == "\\", True
    return ch == '"', False, ch == '"'


def _open_string(text: str) -> bool:
    """Whether JSON text `text` stops inside a string."""
    string = escape = False
    for ch in text:
        string, escape, _ = _in_string(string, escape, ch)
    return string


def _header(text: str, keys: tuple[str, ...]) -> tuple[str, int] | None:
    """A call object's beginning `text` ('{' ...) read again as it grows: its name and where its
    arguments' '{' is (the first of `keys` whose value is an object, or a string of one: '"{\\"'), once
    both have arrived; None before, and for an object that is no call."""
    name = args = None
    at = 1
    while True:
        try:
            key, at = _DECODER.raw_decode(text, _SPACE.match(text, at).end())
            at = _SPACE.match(text, at).end()
            if not isinstance(key, str) or text[at : at + 1] != ":":
                return None
            at = _SPACE.match(text, at + 1).end()
            if key in keys and args is None and (text[at : at + 1] == "{" or _QUOTED.match(text, at)):
                args = at
            elif name is None and key == "name" and text[at : at + 1] != '"':
                return None
            if name is not None and args is not None:
                return name, args
            value, at = _DECODER.raw_decode(text, at)  # a value before the header is whole: skipped
        except ValueError:  # not yet arrived (or never will)
            return None
        if key == "name" and name is None:
            if not value:
                return None
            name = _dumps(value)[1:-1] if _LONE.search(value) else value
            if args is not None:
                return name, args
        at = _SPACE.match(text, at).end()
        if text[at : at + 1] != ",":
            return None
        at += 1


class _Arguments:
    """A JSON object's text arriving in pieces, given out as json.dumps(json.loads(whole), ensure_ascii=False)
    writes it, each piece once it is sure: brackets, separators and keys as they come, a string's
    characters as they come (an escape once whole), a number or literal once it ends. `done` when the
    object closes; `broken` when the text stops being JSON (what was given stays)."""

    def __init__(self):
        self.stack: list[str] = []  # the open '{' and '['
        self.expect = "value"  # value, value_or_close, key, key_or_close, colon, comma
        self.token = ""  # a number or literal being read; a string's text not given yet
        self.string = self.key = self.escape = self.done = self.broken = False

    def feed(self, text: str) -> tuple[str, int]:
        """The pieces of `text` as json.dumps writes them, and how many of its characters the object took."""
        out: list[str] = []
        for i, ch in enumerate(text):
            if self.done or self.broken:
                return "".join(out), i
            if self.string:
                if self.escape or ch not in '"\\':
                    self.escape, self.token = False, self.token + ch
                elif ch == "\\":
                    self.escape, self.token = True, self.token + ch
                else:
                    self.string = False
                    part = self._text(whole=True)
                    out += [part, '"'] if not self.broken else []
                    self._then("colon" if self.key else None)
                continue
            if self.token:
                if _LITERAL.match(ch):
                    self.token += ch
                    continue
                out.append(self._literal())
            if ch not in _WHITE:
                out.append(self._mark(ch))
        if self.string:
            out.append(self._text(whole=False))
        return "".join(out), len(text)

    def finish(self) -> str:
        """What is left at the block's end (a number the answer ends with)."""
        return self._literal() if self.token and not self.string and not self.broken else ""

    def _mark(self, ch: str) -> str:
        """A character outside strings and literals, as json.dumps writes it ('' when none)."""
        e, top = self.expect, self.stack[-1] if self.stack else ""
        if e in ("comma", "key_or_close", "value_or_close") and ch == _CLOSE.get(top):
            self.stack.pop()
            self._then(None)
            return ch
        if e in ("value", "value_or_close") and ch in "{[":
            self.stack.append(ch)
            self.expect = "key_or_close" if ch == "{" else "value_or_close"
            return ch
        if e in ("value", "value_or_close", "key", "key_or_close") and ch == '"':
            self.string, self.key = True, e.startswith("key")
            return ch
        if e in ("value", "value_or_close") and _LITERAL.match(ch):
            self.token, self.expect = ch, "comma"  # given once it ends
            return ""
        if (e, ch) in (("colon", ":"), ("comma", ",")):
            self.expect = "value" if ch == ":" or top == "[" else "key"
            return ch + " "
        self.broken = True
        return ""

    def _then(self, expect: str | None) -> None:
        """After a key (`expect` 'colon') or a value (None: the object may be done)."""
        self.done = expect is None and not self.stack
        self.expect = expect or "comma"

    def _literal(self) -> str:
        token, self.token = self.token, ""
        try:
            return json.dumps(json.loads(token))
        except ValueError:
            self.broken = True
            return ""

    def _text(self, whole: bool) -> str:
        """A string's text received so far, re-escaped as json.dumps does (not whole: up to its last whole character)."""
        part = self.token if whole else self.token[: _settled(self.token)[0]]
        self.token = self.token[len(part) :]
        try:
            return _dumps(_DECODER.decode(f'"{part}"'))[1:-1]
        except ValueError:
            self.broken = True
            return ""


class _Object:
    """One call object's text from its '{': held while its header arrives, then its arguments'
    pieces, then the rest of the object skipped to its '}' (`closed`; `rest`: the text after it).
    `name` given (the name written before the object): the object is the arguments, closed with them.
    Arguments written as a JSON string of the object ("arguments": "{\\"a\\": 1}", as OpenAI's field holds
    them) are that object: the string's text decoded as it comes."""

    def __init__(self, keys: tuple[str, ...], name: str | None = None):
        self.keys, self.text, self.name = keys, "", name
        self.args: _Arguments | None = None  # once the header is read
        self.depth, self.string, self.escape = 1, False, False  # the object's rest, after the arguments
        self.closed = False
        self.quoted: str | None = None  # arguments in a string: its text not decoded yet (None: not, or closed)

    @property
    def broken(self) -> bool:
        return self.args is not None and self.args.broken

    @property
    def in_string(self) -> bool:
        """Whether the text so far stops inside a string of the arguments (or of the keys after them)."""
        if self.args is None:
            return _open_string(self.text)
        if self.broken:
            return False
        return self.quoted is not None or (self.args.string if not self.args.done else self.string)

    def feed(self, text: str) -> tuple[list, str]:
        items: list = []
        if self.args is None and self.name is not None:
            self.args, items = _Arguments(), [Call(self.name)]
        if self.args is None:
            self.text += text
            head = _header(self.text, self.keys)
            if head is None:
                return items, ""
            self.args, items, text = _Arguments(), [Call(head[0])], self.text[head[1] :]
            self.quoted, text = ("", text[1:]) if text[0] == '"' else (None, text)
        if self.quoted is not None:
            piece, used = self._unquote(text)
            items += [Args(piece)] if piece else []
            text = text[used:]
        elif not self.args.done:
            piece, used = self.args.feed(text)
            items += [Args(piece)] if piece else []
            text = text[used:] if not self.args.broken else ""
        if self.name is not None:
            self.closed = self.args.done
            return items, text
        for i, ch in enumerate(text):  # the keys after the arguments: skipped
            self.string, self.escape, quote = _in_string(self.string, self.escape, ch)
            if not self.string and not quote:
                self.depth += (ch in "{[") - (ch in "}]")
                if self.depth == 0:
                    self.closed = True
                    return items, text[i + 1 :]
        return items, ""

    def _unquote(self, text: str) -> tuple[str, int]:
        """The arguments' pieces in the next of their string's text, and how much of `text` the string took."""
        raw, held = self.quoted + text, len(self.quoted)
        end, at = _settled(raw)
        closed = raw[at : at + 1] == '"'
        part = raw[: at if closed else end]
        piece = self.args.feed(_DECODER.decode(f'"{part}"'))[0] if part and not self.args.done else ""
        if not closed:
            self.quoted = raw[len(part) :]
            return piece, len(text)
        piece += self.args.finish() if not self.args.done else ""  # a number the string ends with
        self.quoted, self.args.broken = None, self.args.broken or not self.args.done  # the string ends with the object
        return piece, at + 1 - held


class Format:
    """One answer's parser. `keep_special`: its marker is a special token, which the answer's text
    must keep (the request's skip_special_tokens is turned off, as vLLM's parsers adjust it).
    A block's calls: objects with a name and an object under one of `keys`, between `sep`, in
    '[' ... ']' when `brackets` allows them."""

    name = ""
    keep_special = False
    keys: tuple[str, ...] = ("arguments",)
    sep: str | None = None
    brackets = False
    args_mark = ""  # set: a call may also be its name, this marker (optional) and its arguments' object

    def __init__(self):
        self.buf = ""  # text received and not yet settled
        self.raw: str | None = None  # the open block's text (None: outside blocks), given back if it makes no call

    def feed(self, text: str, final: bool) -> list[str | Call | Args]:
        raise NotImplementedError

    @staticmethod
    def call_id() -> str:
        return f"call_{uuid.uuid4().hex[:24]}"

    def _open(self, marker: str) -> None:
        self.raw, self.stage, self.obj, self.made, self.opened = marker, "open", None, False, False
        self.fname = self.fence = ""  # a name before its arguments (args_mark); a markdown fence, as it arrives

    def _body(self, text: str) -> list:
        """The calls in the next of the open block's text."""
        self.raw += text
        items: list = []
        while text and self.stage != "drop":
            if self.obj is not None:
                got, text = self.obj.feed(text)
                items += got
                if self.obj.broken:
                    self.stage = "drop"
                elif self.obj.closed:
                    self.obj, self.stage = None, "after"
                continue
            ch = text.lstrip(_WHITE)
            spaced, (ch, text) = ch != text, (ch[:1], ch[1:])
            name = self._between(ch, spaced)
            if name is not None:  # a call's object begins
                self.obj, text = _Object(self.keys, name or None), ch + text
        self.made = self.made or any(isinstance(item, Call) for item in items)
        return items

    def _between(self, ch: str, spaced: bool) -> str | None:
        """The next character outside the calls' objects (white space before it: `spaced`); not None when it
        begins a call's object: the name written before it ('' when the object holds its name)."""
        self.fname += " " if self.stage == "name" and spaced else ""  # kept: 'a b{' names no function
        if self.fence and (spaced or not (ch == "`" or ch.isalnum())):  # a markdown fence ends: skipped
            self.stage, self.fence = self.stage if _FENCE.fullmatch(self.fence) else "drop", ""
        if ch == "`" and self.stage in ("open", "after", "end") or self.fence and (ch == "`" or ch.isalnum()):
            self.fence += ch
        elif self.stage == "drop":
            return None
        elif ch == "{" and self.stage == "name":  # name{arguments}
            name = self.fname.strip().removesuffix(self.args_mark).rstrip()
            self.stage = "drop" if not _NAME.fullmatch(name) else self.stage
            return name if self.stage != "drop" else None
        elif ch == "{" and self.stage in ("open", "next", "after"):  # calls one after another: white space between
            return ""
        elif ch and self.stage in ("open", "name") and self.args_mark and ch not in "[{":
            self.stage, self.fname = "name", (self.fname if self.stage == "name" else "") + ch
        elif ch == "[" and self.stage == "name":
            self.fname += ch
        elif ch == "[" and self.stage == "open" and self.brackets:
            self.stage, self.opened = "next", True
        elif ch and ch == self.sep and self.stage == "after":
            self.stage = "next"
        elif ch == "]" and self.stage == "after" and self.opened:
            self.stage = "end"
        elif ch:
            self.stage = "drop"  # no (further) call here
        return None

    def _quoted(self) -> bool:
        """Whether the open block's text stops inside a string of a call's arguments (or of the keys after them)."""
        return self.obj is not None and self.obj.in_string

    def _close(self, marker: str) -> list:
        """The block ends: its calls, or its text when it made none."""
        self.raw += marker
        last = self.obj.args if self.obj is not None and self.obj.args is not None else None
        tail = last.finish() if last is not None else ""
        items = ([Args(tail)] if tail else []) if self.made else [self.raw]
        self.raw = None
        return items


class Tagged(Format):
    """Calls inside a start marker and an end marker (`end` None: the block runs to the answer's end; `end` the
    start marker: a block runs to the next block)."""

    start = ""
    end: str | None = None
    shown = True  # a block that makes no call is given back with its start marker (False: without it)

    def feed(self, text: str, final: bool) -> list[str | Call | Args]:
        self.buf += text
        out: list = []
        while True:
            if self.raw is None:
                at = self.buf.find(self.start)
                if at < 0:
                    keep = 0 if final else _partial(self.buf, self.start)
                    out.append(self.buf[: len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep :]
                    break
                out.append(self.buf[:at])
                self._open(self.start if self.shown else "")
                self.buf = self.buf[at + len(self.start) :]
            while True:  # an end marker inside a string of the arguments is that string's text
                close = self.buf.find(self.end) if self.end else -1
                stop = close if close >= 0 else len(self.buf) - (0 if final or not self.end else _partial(self.buf, self.end))
                out += self._body(self.buf[:stop])
                self.buf = self.buf[stop:]
                if close < 0 or not self._quoted():
                    break
                out += self._body(self.end)
                self.buf = self.buf[len(self.end) :]
            if close < 0 and not final:
                break
            marker = self.end if close >= 0 and self.end != self.start else ""  # or the next block's start
            out += self._close(marker)
            self.buf = self.buf[len(marker) :]
        return [item for item in out if item != ""]


class Hermes(Tagged):
    name, start, end = "hermes", "<tool_call>", "</tool_call>"
    keep_special = True  # a special token in Hermes 2 Pro / 3's vocabularies (not Qwen's): skipped, no call is read
    sep, brackets = ",", True  # several calls in one block: [{...}, {...}], or one after another


class Mistral(Tagged):
    """v0.3's [TOOL_CALLS][{...}, ...], and the later tokenizers' (v11: Mistral Small 3.2, Devstral, Magistral)
    [TOOL_CALLS]name[ARGS]{...} a call, the next behind its own [TOOL_CALLS]."""

    name, start, end = "mistral", "[TOOL_CALLS]", "[TOOL_CALLS]"  # a block ends where the next begins
    keep_special = True  # [TOOL_CALLS] is a control token: skipped, the calls would read as JSON text
    shown = False  # ... so a block that makes no call is its text alone, as vLLM's parser gives it back
    sep, brackets, args_mark = ",", True, "[ARGS]"

    @staticmethod
    def call_id() -> str:
        return uuid.uuid4().hex[:9]  # its chat template refuses any other id


class Llama3Json(Format):
    """An answer that begins (after white space) with '{' or <|python_tag|> is one block of calls to
    its end; any other answer is text."""

    name, tag = "llama3_json", "<|python_tag|>"
    keys, sep = ("parameters", "arguments"), ";"

    def __init__(self):
        super().__init__()
        self.text = False  # the answer is known to be text

    def feed(self, text: str, final: bool) -> list[str | Call | Args]:
        self.buf += text
        if self.raw is None and not self.text:
            head = self.buf.lstrip()
            if not final and self.tag.startswith(head):
                return []
            self.text = not head.startswith(("{", self.tag))
            if not self.text:
                self._open(self.buf[: len(self.buf) - len(head)] + (self.tag if head.startswith(self.tag) else ""))
                self.buf = head.removeprefix(self.tag)
        out, self.buf = self.buf, ""
        if self.text:
            return [out] if out else []
        items = self._body(out)
        return items + self._close("") if final else items


def _partial(text: str, marker: str) -> int:
    """How many of `text`'s last characters begin `marker` (held back: the marker may be arriving)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


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
    """One choice's answer through a Format: `feed` gives the content and the tool-call deltas that
    became settled, in OpenAI's shapes: a call's first delta {index, id, type, function: {name,
    arguments}}, then {index, function: {arguments}} with the next piece of its arguments (a feed's
    pieces of one call in one delta); `calls` holds the calls so far, whole. The white space at a call's
    edges is dropped (the newline before '<tool_call>', between two calls, after the last), except what
    keeps apart the texts on both sides of a call ("Before <call> after" is "Before after"): the content
    of text and calls is the text around them; an answer without calls is its text unchanged."""

    def __init__(self, fmt: type[Format]):
        self.format = fmt()
        self.calls: list[dict] = []
        self._held = ""  # white space after text: given with the text that follows, dropped at the end after a call
        self._after_call = False  # nothing but white space since the last call
        self._said = False  # some content was given

    def feed(self, text: str, final: bool) -> tuple[str, list[dict]]:
        content, deltas = "", []
        for item in self.format.feed(text, final):
            if isinstance(item, Call):
                self._after_call = True
                self._held = self._held if self._said else ""
                call = {"index": len(self.calls), "id": self.format.call_id(), "type": "function",
                        "function": {"name": item.name, "arguments": ""}}
                self.calls.append(call)
                deltas.append({**call, "function": dict(call["function"])})
                continue
            if isinstance(item, Args):
                self.calls[-1]["function"]["arguments"] += item.text
                if not deltas or deltas[-1]["index"] != len(self.calls) - 1:
                    deltas.append({"index": len(self.calls) - 1, "function": {"arguments": ""}})
                deltas[-1]["function"]["arguments"] += item.text
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
        return content, deltas
