"""A request body into its pydantic model (protocol.py's), or a one-line 400 naming the first
bad field by the API's path to it ('stream_options.include_usage', 'messages[0].role').

The path is read from pydantic's error location, which mixes the fields with a tag for each
member of a union ('str', 'list[int]'): the fields are told from the tags by the names of the
model's fields and of every model nested in them (_field_names), read from the model parsed.
"""

from __future__ import annotations

import functools
import json
import typing

from pydantic import BaseModel, ValidationError

from jaxllm.api.errors import APIError
from jaxllm.errors import BOM


def parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body as `model`, or a 400 naming the first bad field by its path
    ('stream_options.include_usage', 'messages[0].role')."""
    raw = raw.removeprefix(BOM.encode())  # JSON's RFC lets a parser ignore a byte order mark (PowerShell's UTF-8 sends one)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        errors = err.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]  # was "expected value at line 1 column 1"
            why = "it is UTF-16 text: send it as UTF-8" if utf16 else first["msg"]
            raise APIError(400, f"malformed JSON body: {why}") from None
        fields = _field_names(model)
        if _param(first["loc"], fields) == "prompt":
            raise APIError(400, _prompt_error(errors), "prompt") from None
        first = _deepest(errors, fields)
        param = _param(first["loc"], fields)
        if first["type"] == "missing":
            raise APIError(400, f"the body lacks '{param}', which this endpoint needs: add it", param) from None
        where = f"'{param}': " if param else "the body: "
        raise APIError(400, f"invalid value for {where}{first['msg']}", param) from None


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """The names of `model`'s fields and of those of every model its fields hold, however nested
    (a chat request's messages, their content parts and tool calls, its tools' functions)."""
    names: set[str] = set()
    todo, seen = [model], set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            for name, field in m.model_fields.items():
                names.add(name)
                todo += _models_in(field.annotation)
    return frozenset(names)


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (`list[Message] | None` -> [Message])."""
    if typing.get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _deepest(errors: list[dict], fields: frozenset[str]) -> dict:
    """The error to report: the first, or where it lies in a union (a field of several shapes:
    `content` a string or a list of parts), the alternative that got furthest into the input. A
    content part without its type was reported as "'messages[0].content': Input should be a valid
    string" (the string alternative's error), sending the client to fix what was not wrong."""
    first = errors[0]
    at = next((i for i, item in enumerate(first["loc"]) if _is_tag(item, fields)), None)
    if at is None:
        return first
    field = first["loc"][:at]
    same = [e for e in errors if e["loc"][:at] == field and len(e["loc"]) > at and _is_tag(e["loc"][at], fields)]
    return max(same, key=lambda e: len(e["loc"]))  # the first of the deepest


def _is_tag(item, fields: frozenset[str]) -> bool:
    """A location item pydantic adds for a member of a union ('str', 'list[ContentPart]'), not a field or index."""
    return not isinstance(item, int) and item not in fields


def _param(loc: tuple, fields: frozenset[str]) -> str | None:
    """A pydantic error location as the API's path to the field: list indices in brackets,
    nested fields after dots, and the tags pydantic adds for each member of a union ('str',
    'list[int]': not field names) left out, so that a bad `stop` is 'stop', not 'stop.str', and
    a bad item of a `stop` list 'stop[1]'."""
    path = ""
    for item in loc:
        if isinstance(item, int):
            path += f"[{item}]"
        elif item in fields:
            path += f".{item}" if path else item
    return path or None


def _prompt_error(errors: list[dict]) -> str:
    """One message for a bad `prompt`, a union of four shapes whose first error ('should be a
    valid string') says nothing of token ids: a value that is not a whole number where ids were
    given (2.5, true, "a" among ids) is named."""
    shapes = "give text, a list of texts, or token ids as whole numbers (a list of them, or a list of such lists)"
    for e in errors:
        if e["type"].startswith("int_") and not isinstance(e["input"], (list, dict)):
            return f"invalid value for 'prompt': token ids must be whole numbers, got {json.dumps(e['input'])}: {shapes}"
    return f"invalid value for 'prompt': {shapes}"
