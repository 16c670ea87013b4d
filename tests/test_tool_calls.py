"""jaxllm/api/tool_calls.py on strings: each format's calls and the text around them, malformed calls
left as text, and a stream split anywhere giving the same answer as the whole text, its argument
pieces adding up to the whole arguments."""

import json

import pytest

from jaxllm.api.tool_calls import FORMATS, Hermes, Llama3Json, Mistral, ToolCalls, choose

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}'
TIME = '{"name": "get_time", "arguments": {}}'
CALLS = [("get_weather", '{"city": "Paris", "unit": "°C"}')]
TIMED = CALLS + [("get_time", "{}")]

CASES = [  # format, answer, content, calls (name, arguments as json.dumps writes them)
    ("hermes", f"<tool_call>\n{WEATHER}\n</tool_call>", None, CALLS),  # Qwen2.5's shape: the call alone
    ("hermes", f"Let me check.\n\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>\n",
     "Let me check.", TIMED),
    ("hermes", f"Before <tool_call>{WEATHER}</tool_call> between <tool_call>{TIME}</tool_call> after",
     "Before between after", TIMED),  # text around every call
    ("hermes", f"\n<tool_call>{WEATHER}</tool_call>\n\nthen more", "then more", CALLS),
    ("hermes", f"<tool_call>\n{WEATHER}", None, CALLS),  # an unclosed last call, read at the end (as vLLM)
    ("hermes", "No call: a < b and <tool_ is not one.\n", "No call: a < b and <tool_ is not one.\n", []),
    ("hermes", '<tool_call>{"name": f, "arguments": {}}</tool_call> done',  # malformed before the arguments: text
     '<tool_call>{"name": f, "arguments": {}}</tool_call> done', []),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": </tool_call> done', "done",  # cut in its arguments:
     [("f", '{"a": ')]),  # the call has begun and stays one, with the arguments that came
    ("hermes", '<tool_call>{"name": "f", "arguments": {"n": 12', None, [("f", '{"n": 12')]),  # cut at max_tokens
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1} }} junk</tool_call>', None, [("f", '{"a": 1}')]),
    ("hermes", f'<tool_call>{{"arguments": {{}}}}</tool_call><tool_call>{WEATHER}</tool_call>',  # no name: text
     '<tool_call>{"arguments": {}}</tool_call>', CALLS),
    ("hermes", '<tool_call>{"arguments":{"a":[1,2.50,1E2,true,null,{}],"s":"q\\"\\u00e9\\ud83d\\ude00\\n/\\/"},'
     '"name":"f","id":{"k":"}"}}</tool_call>', None,  # the name after the arguments; json.dumps's spacing and escapes
     [("f", '{"a": [1, 2.5, 100.0, true, null, {}], "s": "q\\"é😀\\n//"}')]),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"code": "x = 1\n\tif a:\r\n"}}</tool_call>', None,  # raw
     [("f", '{"code": "x = 1\\n\\tif a:\\r\\n"}')]),  # control characters in a string (code): their escapes
    ("hermes", '<tool_call>{"name": "f", "arguments": {"s": "a}b{\\"</tool_call>"}, "k": "</tool_call>"}</tool_call>x',
     "x", [("f", '{"s": "a}b{\\"</tool_call>"}')]),  # the end marker inside a string is text of the string
    ("hermes", '<tool_call>{"name": "f", "arguments": {"s": "cut </tool_call> here', None,
     [("f", '{"s": "cut </tool_call> here')]),
    ("hermes", f"<tool_call>\n{WEATHER}\n{TIME}\n</tool_call>", None, TIMED),  # parallel calls in one block
    ("hermes", f"<tool_call>[{WEATHER}, {TIME}]</tool_call>", None, TIMED),
    ("hermes", f"<tool_call>{WEATHER}, {TIME}</tool_call>", None, TIMED),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"s": "a\\ud83dx\\udc00\\ud83d\\ude00"}}</tool_call>', None,  # lone
     [("f", '{"s": "a\\ud83dx\\udc00😀"}')]),  # surrogates stay escaped: UTF-8 cannot write them
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": "\\x", "b": 1}}</tool_call> ok', "ok",  # a bad escape:
     [("f", '{"a": "')]),  # cut there (no closing quote that would read as a whole string)
    ("hermes", 'Wrap calls in <tool_call> tags, e.g. <tool_call>{"name": ...}</tool_call>.',  # calls in prose: text
     'Wrap calls in <tool_call> tags, e.g. <tool_call>{"name": ...}</tool_call>.', []),
    ("hermes", '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call><tool_call>{"name": "f", "arguments": "{x}"}'
     '</tool_call>', '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call><tool_call>{"name": "f", "arguments": '
     '"{x}"}</tool_call>', []),  # arguments that are no object (nor a string of one): text
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"\\u00b0C\\"}"}'
     '</tool_call>', None, CALLS),  # arguments as a JSON string of the object (OpenAI's field): the object
    ("hermes", '<tool_call>{"arguments": "{\\"s\\": \\"a\\\\\\"</tool_call>\\", \\"n\\": 12", "name": "f"}</tool_call> ok',
     "ok", [("f", '{"s": "a\\"</tool_call>", "n": 12')]),  # ... ended inside it: cut there
    ("llama3_json", '{"name": "get_time", "parameters": "{}"}', None, [("get_time", "{}")]),
    ("hermes", '<tool_call>{"arguments": {"s": "</tool_call>"}, "name": "f"}</tool_call>', None,  # before the name
     [("f", '{"s": "</tool_call>"}')]),
    ("hermes", f"<tool_call>\n```json\n{WEATHER}\n```\n</tool_call>", None, CALLS),  # a markdown fence in the block
    ("hermes", f"<tool_call>```{WEATHER}\n{TIME}```</tool_call> ok", "ok", TIMED),
    ("hermes", f"<tool_call>``{WEATHER}</tool_call>", f"<tool_call>``{WEATHER}</tool_call>", []),  # no fence: text
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "°C"}}', None, CALLS),
    ("llama3_json", f'<|python_tag|>{WEATHER}; {TIME}', None, TIMED),
    ("llama3_json", f"{WEATHER} is what I would call.", None, CALLS),  # what follows the calls is dropped
    ("llama3_json", '  {"city": "Paris"}', '  {"city": "Paris"}', []),  # JSON that is no call
    ("llama3_json", "The answer is {x}.", "The answer is {x}.", []),
    ("mistral", f"[TOOL_CALLS][{WEATHER}, {TIME}]", None, TIMED),
    ("mistral", f"Sure. [TOOL_CALLS] [{WEATHER}]", "Sure.", CALLS),
    ("mistral", f"[TOOL_CALLS]{WEATHER}", None, CALLS),
    ("mistral", "[TOOL_CALLS][{'name': 'f'}]", "[{'name': 'f'}]", []),  # no call: the text without the control token
    ("mistral", f"[TOOL_CALLS][{WEATHER}] [TOOL_CALLS][{TIME}]", None, TIMED),  # a marker before each list
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "°C"}[TOOL_CALLS]get_time[ARGS]{}', None,
     TIMED),  # v11 tokenizers (Mistral Small 3.2, Devstral): name[ARGS]{arguments}, each call behind its marker
    ("mistral", '[TOOL_CALLS]get_weather{"city": "Paris", "unit": "°C"}[TOOL_CALLS] get_time {}', None, TIMED),
    ("mistral", 'hi{hi[TOOL_CALLS]bash{"c": "print(\\"{}\\")\\n', "hi{hi", [("bash", '{"c": "print(\\"{}\\")\\n')]),
    ("mistral", '[TOOL_CALLS]two words{"a": 1}', 'two words{"a": 1}', []),  # no function's name: text
    ("mistral", "[TOOL_CALLS]only_a_name", "only_a_name", []),
    ("mistral", "Sure.[TOOL_CALLS] not json[TOOL_CALLS]", "Sure. not json", []),  # as vLLM: [TOOL_CALLS] never shown
    ("mistral", f"[TOOL_CALLS]oops[TOOL_CALLS][{TIME}]", "oops", [("get_time", "{}")]),
    ("mistral", f"[TOOL_CALLS]```json\n[{WEATHER}]\n```", None, CALLS),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": "]}, [TOOL_CALLS]\n"}}]', None,
     [("f", '{"a": "]}, [TOOL_CALLS]\\n"}')]),
]


def _run(fmt: str, pieces: list[str]):
    """The content and the calls (ids left out) that the deltas of `pieces` fed in turn add up to."""
    reader = ToolCalls(FORMATS[fmt])
    content, calls = "", []
    for i, piece in enumerate(pieces):
        text, deltas = reader.feed(piece, final=i == len(pieces) - 1)
        content += text
        for delta in deltas:
            assert delta["index"] >= (calls[-1]["index"] if calls else 0)  # a call's deltas before the next call's
            if delta["index"] == len(calls):  # a call's first delta: all but the rest of its arguments
                assert delta["type"] == "function" and delta["id"] and delta["function"]["name"]
                calls.append({**delta, "function": dict(delta["function"]), "id": None})
            else:
                assert set(delta) == {"index", "function"} and set(delta["function"]) == {"arguments"}
                calls[delta["index"]]["function"]["arguments"] += delta["function"]["arguments"]
    assert calls == [{**c, "id": None} for c in reader.calls]
    return content, calls


@pytest.mark.parametrize("fmt, answer, content, expected", CASES)
def test_calls_and_text_around_them_whole_and_split_anywhere(fmt, answer, content, expected):
    reader = ToolCalls(FORMATS[fmt])
    whole, calls = reader.feed(answer, True)
    assert (whole or None) == content if expected else whole == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == expected
    assert calls == reader.calls and [c["index"] for c in calls] == list(range(len(expected)))
    assert all(c["type"] == "function" for c in calls) and len({c["id"] for c in calls}) == len(calls)
    json.dumps([whole, calls], ensure_ascii=False).encode()  # the response can be written
    if fmt == "mistral":  # its chat template refuses other ids
        assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    else:
        assert all(c["id"].startswith("call_") for c in calls)
    strip = [{**c, "id": None} for c in calls]
    assert _run(fmt, [*answer, ""]) == (whole, strip)  # one character an event, then the end
    for cut in range(1, len(answer)):  # two pieces, cut at every boundary, the end with the second
        assert _run(fmt, [answer[:cut], answer[cut:]]) == (whole, strip), cut
    for size in range(2, 9):  # pieces of a few characters, as tokens come
        assert _run(fmt, [answer[i : i + size] for i in range(0, len(answer), size)]) == (whole, strip), size


def test_held_text_goes_out_once_it_cannot_start_a_call():
    """A stream holds back only what may still become a call."""
    reader = ToolCalls(Hermes)
    assert reader.feed("Hello <tool", False) == ("Hello", [])  # the space waits: a call may follow it
    assert reader.feed("box> x", False) == (" <toolbox> x", [])
    reader = ToolCalls(Llama3Json)
    assert reader.feed("  {", False) == ("", []) and reader.feed('"a": 1}', True) == ('  {"a": 1}', [])


def test_arguments_stream_as_they_arrive():
    """The call's first delta once its name and the arguments' '{' are read, then each piece once sure
    (a string's characters as they come, a number once it ends, nothing of the closing markup)."""
    reader = ToolCalls(Hermes)
    assert reader.feed('<tool_call>{"name": "f", "arg', False) == ("", [])
    (first,) = reader.feed('uments": {"city": "Pa', False)[1]
    assert first["function"] == {"name": "f", "arguments": '{"city": "Pa'} and first["index"] == 0
    assert reader.feed('ris", "n": 1', False)[1] == [{"index": 0, "function": {"arguments": 'ris", "n": '}}]
    assert reader.feed("2}}\n</tool", False)[1] == [{"index": 0, "function": {"arguments": "12}"}}]
    assert reader.feed("_call>", True) == ("", []) and reader.calls[0]["function"]["arguments"] == '{"city": "Paris", "n": 12}'


@pytest.mark.parametrize("fmt", FORMATS.values())
def test_a_marker_that_may_be_a_special_token_is_kept(fmt):
    """A format whose calls begin with a marker keeps special tokens in the answer's text (vLLM's hermes and
    mistral parsers turn skip_special_tokens off): Hermes 2 Pro's <tool_call>, Mistral's [TOOL_CALLS] are
    special tokens, and skipped the calls would read as text. llama3_json reads calls without <|python_tag|>."""
    assert fmt.keep_special == hasattr(fmt, "start")


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
