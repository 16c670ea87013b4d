"""tool_choice 'required' and a named function: the answer is constrained (structured outputs) to the
calls, as vLLM serves them, and read back as OpenAI's tool_calls.

    required   a JSON array of one or more {"name": <a tool's name>, "parameters": <its arguments>}
               (vLLM's schema); finish_reason "tool_calls"
    named      the named function's arguments alone, a JSON object of its parameters' schema;
               finish_reason "stop" (as OpenAI and vLLM answer a forced function)

The answer's text is held until it ends and then read whole (an answer cut by max_tokens, which
does not parse, stays text, its finish_reason "length").
"""

from __future__ import annotations

import json

from jaxllm.api.tool_calls import Args, Call, Format
from jaxllm.structured import Structured


def _arguments(tool) -> dict:
    """A tool's parameters schema ({} or none: an object without arguments)."""
    return tool.function.parameters or {"type": "object", "properties": {}}


def named(tool_choice) -> str | None:
    """The function a tool_choice names ({"type": "function", "function": {"name": ...}}), else None."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        return fn.get("name") if isinstance(fn, dict) else None
    return None


def constraint(tools: list, tool_choice) -> Structured:
    """The Structured output a forced tool_choice (checked: 'required' or a named tool of `tools`) asks for."""
    name = named(tool_choice)
    if name is not None:
        return Structured(json_schema=_arguments(next(t for t in tools if t.function.name == name)))
    calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [t.function.name]},
                                               "parameters": _arguments(t)},
              "required": ["name", "parameters"], "additionalProperties": False} for t in tools]
    return Structured(json_schema={"type": "array", "minItems": 1, "items": {"anyOf": calls}})


class Required(Format):
    """The answer read as a JSON array of {"name", "parameters"} calls."""

    name = "required"
    finish_reason = "tool_calls"

    def feed(self, text: str, final: bool) -> list[str | Call | Args]:
        self.buf += text
        if not final:
            return []
        whole, self.buf = self.buf, ""
        calls = self.read(whole)
        return calls if calls else [whole] if whole else []

    def read(self, text: str) -> list[Call | Args] | None:
        """Each call of the answer as a Call and its whole arguments (one Args piece), or None for no calls."""
        found = _json(text)
        if not isinstance(found, list) or not all(isinstance(c, dict) and isinstance(c.get("parameters"), dict) for c in found):
            return None
        return [item for c in found for item in _call(c["name"], c["parameters"])] or None


class Named(Required):
    """The answer read as the arguments of the one function named (`function`, set by `for_choice`)."""

    name = "named"
    finish_reason = "stop"
    function = ""

    def read(self, text: str) -> list[Call | Args] | None:
        found = _json(text)
        return _call(self.function, found) if isinstance(found, dict) else None


def _json(text: str):
    """The answer's JSON value, or None where it does not parse (cut by max_tokens)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call(name: str, arguments: dict) -> list[Call | Args]:
    """A call's items as a Format gives them: its Call, then its arguments as json.dumps writes them (one piece)."""
    return [Call(name), Args(json.dumps(arguments, ensure_ascii=False))]


def forces(tool_choice) -> bool:
    """Whether a tool_choice forces a call: 'required', or a named function."""
    return tool_choice == "required" or named(tool_choice) is not None


def format_for(tool_choice) -> type[Format] | None:
    """The reader of a forced tool_choice's answer ('required', a named function), None for another."""
    if not forces(tool_choice):
        return None
    name = named(tool_choice)
    return Required if name is None else type("Named", (Named,), {"function": name})
