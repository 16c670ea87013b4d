"""jaxllm/api/tool_calls.py on strings: each format's calls and the text around them, malformed calls
left as text, and a stream split anywhere giving the same answer as the whole text."""

import json

import pytest

from jaxllm.api.tool_calls import FORMATS, Hermes, Llama3Json, Mistral, ToolCalls, choose

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}'
TIME = '{"name": "get_time", "arguments": {}}'
CALLS = [("get_weather", {"city": "Paris", "unit": "°C"})]

CASES = [  # format, answer, content, calls
    ("hermes", f"<tool_call>\n{WEATHER}\n</tool_call>", None, CALLS),  # Qwen2.5's shape: the call alone
    ("hermes", f"Let me check.\n\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>\n",
     "Let me check.", CALLS + [("get_time", {})]),
    ("hermes", f"Before <tool_call>{WEATHER}</tool_call> between <tool_call>{TIME}</tool_call> after",
     "Before between after", CALLS + [("get_time", {})]),  # text around every call
    ("hermes", f"\n<tool_call>{WEATHER}</tool_call>\n\nthen more", "then more", CALLS),
    ("hermes", f"<tool_call>\n{WEATHER}", None, CALLS),  # an unclosed last call, read at the end (as vLLM)
    ("hermes", "No call: a < b and <tool_ is not one.\n", "No call: a < b and <tool_ is not one.\n", []),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": </tool_call> done',  # malformed JSON stays text
     '<tool_call>{"name": "f", "arguments": {"a": </tool_call> done', []),
    ("hermes", f'<tool_call>{{"arguments": {{}}}}</tool_call><tool_call>{WEATHER}</tool_call>',  # no name: text
     '<tool_call>{"arguments": {}}</tool_call>', CALLS),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "°C"}}', None, CALLS),
    ("llama3_json", f'<|python_tag|>{WEATHER}; {TIME}', None, CALLS + [("get_time", {})]),
    ("llama3_json", f"{WEATHER} is what I would call.", f"{WEATHER} is what I would call.", []),  # not calls alone
    ("llama3_json", "The answer is {x}.", "The answer is {x}.", []),
    ("mistral", f"[TOOL_CALLS][{WEATHER}, {TIME}]", None, CALLS + [("get_time", {})]),
    ("mistral", f"Sure. [TOOL_CALLS] [{WEATHER}]", "Sure.", CALLS),
    ("mistral", "[TOOL_CALLS][{'name': 'f'}]", "[TOOL_CALLS][{'name': 'f'}]", []),
]


def _run(fmt: str, pieces: list[str]):
    reader = ToolCalls(FORMATS[fmt])
    content, calls = "", []
    for i, piece in enumerate(pieces):
        text, made = reader.feed(piece, final=i == len(pieces) - 1)
        content += text
        calls += made
    assert calls == reader.calls
    return content, calls


@pytest.mark.parametrize("fmt, answer, content, expected", CASES)
def test_calls_and_text_around_them_whole_and_split_anywhere(fmt, answer, content, expected):
    whole, calls = _run(fmt, [answer])
    assert (whole or None) == content if expected else whole == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected
    assert [c["index"] for c in calls] == list(range(len(expected))) and all(c["type"] == "function" for c in calls)
    assert len({c["id"] for c in calls}) == len(calls)
    if fmt == "mistral":  # its chat template refuses other ids
        assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    else:
        assert all(c["id"].startswith("call_") for c in calls)
    strip = [{**c, "id": None} for c in calls]
    by_char = _run(fmt, [*answer, ""])  # one character an event, then the end
    assert (by_char[0], [{**c, "id": None} for c in by_char[1]]) == (whole, strip)
    for cut in range(1, len(answer)):  # two pieces, cut at every boundary, the end with the second
        split = _run(fmt, [answer[:cut], answer[cut:]])
        assert (split[0], [{**c, "id": None} for c in split[1]]) == (whole, strip), cut


def test_held_text_goes_out_once_it_cannot_start_a_call():
    """A stream holds back only what may still become a call."""
    reader = ToolCalls(Hermes)
    assert reader.feed("Hello <tool", False) == ("Hello", [])  # the space waits: a call may follow it
    assert reader.feed("box> x", False) == (" <toolbox> x", [])
    reader = ToolCalls(Llama3Json)
    assert reader.feed("  {", False) == ("", []) and reader.feed('"a": 1}', True) == ('  {"a": 1}', [])


@pytest.mark.parametrize("template, fmt", [
    ("{%- if tools %}<tools>{{ tools | tojson }}</tools> ... <tool_call>{\"name\": ...}</tool_call>{% endif %}", Hermes),
    ("{%- if tools %}Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
     "value}.{% endif %}", Llama3Json),
    ("{{ '[AVAILABLE_TOOLS]' }}{{ '[TOOL_CALLS]' }}", Mistral),
    ({"default": "{{ messages }}", "tool_use": "<tool_call>"}, Hermes),  # named templates
    ("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}", None),  # a template that ignores tools
    (None, None),
])
def test_auto_chooses_the_format_the_chat_template_teaches(template, fmt):
    assert choose("auto", template) is fmt
    assert choose("none", template) is None and choose("mistral", template) is Mistral
