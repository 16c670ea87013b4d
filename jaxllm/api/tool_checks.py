"""A chat request's `tools` and `tool_choice` checked (protocol.py's ChatRequest.check): each tool a
function with a name of its own and an object schema of its arguments, tool_choice one this server
serves, each refused as a one-line 400 on the field at fault."""

from __future__ import annotations

import json

from jaxllm.api import forced_tools
from jaxllm.api.errors import APIError


def check(tools: list | None, choice) -> None:
    """Each tool (protocol.py's Tool) a function with a name of its own and an object schema; tool_choice
    (`choice`) one this server serves: 'required' and a named function need decoding constrained to a schema."""
    names: dict[str, int] = {}
    for i, tool in enumerate(tools or []):
        where, fn = f"tools[{i}]", tool.function
        if tool.type != "function":
            raise APIError(400, f"{where}.type '{tool.type}' is not a tool this server offers: use \"function\"",
                           f"{where}.type")
        if not fn.name.strip():
            raise APIError(400, f"{where}.function.name is empty: name the function", f"{where}.function.name")
        if fn.name in names:
            raise APIError(400, f"{where}.function.name '{fn.name}' is tools[{names[fn.name]}]'s too: give each "
                           "function a name of its own", f"{where}.function.name")
        names[fn.name] = i
        _parameters(fn.parameters or {}, f"{where}.function.parameters")
    name = forced_tools.named(choice)
    if choice in (None, "none", "auto"):
        return
    if forced_tools.forces(choice) and not tools:
        raise APIError(400, f"tool_choice {json.dumps(choice)[:80]} asks for a call, and no tools are offered: send "
                       "the tools", "tool_choice")
    if choice == "required" or name in names:
        return
    if isinstance(name, str):
        raise APIError(400, f"tool_choice names the function '{name}', which no tool offers: name one of "
                       f"{', '.join(names)}", "tool_choice")
    raise APIError(400, f"tool_choice {json.dumps(choice)[:80]} is invalid: use 'none', 'auto', 'required' or "
                   '{"type": "function", "function": {"name": ...}}', "tool_choice")


def _parameters(schema: dict, where: str) -> None:
    """A tool's parameters: a JSON schema of type "object" whose properties map names to schemas (objects, or
    JSON Schema's true / false) and whose required list names them: the chat template showed the model any other
    shape ("properties": 5) as it came, and the answer was made from it."""
    kind = schema.get("type", "object")
    if kind != "object":
        raise APIError(400, f"{where} is a schema of type {json.dumps(kind)}: describe the arguments as a JSON schema of "
                       'type "object" (its properties)', where)
    properties, required = schema.get("properties", {}), schema.get("required", [])
    if not isinstance(properties, dict) or not all(isinstance(p, (dict, bool)) for p in properties.values()):
        raise APIError(400, f"{where}.properties must map each argument's name to its JSON schema (an object), got "
                       f"{json.dumps(properties)[:80]}", f"{where}.properties")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise APIError(400, f"{where}.required must be a list of the names of the arguments a call must give, got "
                       f"{json.dumps(required)[:80]}", f"{where}.required")
