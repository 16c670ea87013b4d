"""Structured outputs as a request asks for them, translated into jaxllm.Structured: OpenAI's
`response_format` (json_object, json_schema), vLLM's guided_json / guided_regex / guided_choice /
guided_grammar and its newer `structured_outputs` object, and (forced_tools.py) a tool_choice that
forces a call. A request sends at most one; each is refused (400) in one line naming its field.
"""

from __future__ import annotations

import json

from jaxllm.api.errors import APIError
from jaxllm.errors import JaxllmError
from jaxllm.structured import Structured

GUIDED = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}  # vLLM's names: Structured's


def sent(request) -> list[tuple[str, Structured]]:
    """(field, Structured) of each structured-output field `request` sent (response_format, guided_*,
    structured_outputs), unchecked; a response_format or structured_outputs of no known shape is refused."""
    found = _response_format(request.response_format)
    vllm = [(f"guided_{k}", key, getattr(request, f"guided_{k}")) for k, key in GUIDED.items()]
    outputs = request.structured_outputs
    if outputs is not None:
        if not isinstance(outputs, dict) or set(outputs) - set(GUIDED) - {"json_object"}:
            raise APIError(400, f"structured_outputs {json.dumps(outputs)[:80]} is invalid: send an object of one of "
                           "json, regex, choice, grammar, json_object", "structured_outputs")
        vllm += [(f"structured_outputs.{k}", GUIDED.get(k, k), v) for k, v in outputs.items()]
    return found + [(field, Structured(**{key: value})) for field, key, value in vllm if value not in (None, False)]


def _response_format(fmt) -> list[tuple[str, Structured]]:
    """OpenAI's response_format as sent() finds it: none for "text" (or no field)."""
    if fmt is None:
        return []
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(400, f"response_format {json.dumps(fmt)[:80]} is invalid: use {{\"type\": \"text\"}}, "
                       '{"type": "json_object"} or {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
                       "response_format")
    if kind == "json_object":
        return [("response_format", Structured(json_object=True))]
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise APIError(400, 'response_format.json_schema lacks its schema: send {"name": ..., "schema": {...}} '
                           "(a JSON schema object)", "response_format.json_schema")
        return [("response_format.json_schema.schema", Structured(json_schema=spec["schema"]))]
    return []


def one(found: list[tuple[str, Structured]]) -> Structured | None:
    """The structured output of `found` ((field, Structured) pairs), checked: a 400 naming the field for a bad
    one or for more than one; None for none."""
    if len(found) > 1:
        raise APIError(400, f"{' and '.join(f for f, _ in found)} each constrain the answer: send one of them", found[1][0])
    if not found:
        return None
    field, structured = found[0]
    try:
        structured.check()
    except JaxllmError as err:
        raise APIError(400, f"{field}: {err}", field) from None
    return structured
