"""Hostile requests to the HTTP server, on a tiny model's app in this process (Starlette's TestClient; no
request here reaches the engine, so nothing compiles): values the library's checks once met with a Python
exception (the server's plain-text 500), tools whose schema the chat template showed the model as it came,
and a bug's error, which must still be OpenAI's error body (a stream's last event, then [DONE])."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient
from test_bad_inputs import LLAMA, write_checkpoint

import jaxllm
from jaxllm import checkpoint
from jaxllm.api import build_app, protocol

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory, gguf_path):
    root = tmp_path_factory.mktemp("serve_hostile")
    checkpoint.load_tokenizer(gguf_path).save_pretrained(str(root / "tokenizer"))
    model = jaxllm.load(write_checkpoint(root / "llama", LLAMA, root / "tokenizer"))
    app = build_app(model, jaxllm.Engine(model, batch_size=1, max_len=64), name="tiny")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def tool(parameters) -> list[dict]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


DIGITS = "9" * 400
REFUSED = {
    # logit_bias keys str.isdigit takes and int() does not, keys no dict holds, a bias beyond a float: were 500s
    "bias-key-superscript": ("/v1/completions", {"prompt": "Hi", "logit_bias": {"\u00b2": 1}}, "logit_bias",
                             "logit_bias={'\u00b2': 1} is invalid: token id '\u00b2' is not a token id: use whole numbers >= 0"),
    "bias-key-two-minus": ("/v1/completions", {"prompt": "Hi", "logit_bias": {"--5": 1}}, "logit_bias",
                           "logit_bias={'--5': 1} is invalid: token id '--5' is not a token id"),
    "bias-key-5000-digits": ("/v1/completions", {"prompt": "Hi", "logit_bias": {"9" * 5000: 1}}, "logit_bias",
                             "is not a token id: use whole numbers >= 0"),
    "bias-key-a-list": ("/v1/completions", {"prompt": "Hi", "logit_bias": [[[5], 1]]}, "logit_bias",
                        "logit_bias=[[[5], 1]] is invalid: token id [5] is not a token id"),
    "bias-beyond-float": ("/v1/chat/completions", f'{{"messages": {json.dumps(USER)}, "logit_bias": {{"5": {DIGITS}}}}}',
                          "logit_bias", "use a number in [-100, 100]"),
    # a tool's parameters whose properties or required list are not a schema's: the template showed them as they came
    "tool-properties-a-number": ("/v1/chat/completions", {"messages": USER, "tools": tool({"type": "object", "properties": 5}),
                                                          "tool_choice": "none"}, "tools[0].function.parameters.properties",
                                 "tools[0].function.parameters.properties must map each argument's name to its JSON schema "
                                 "(an object), got 5"),
    "tool-property-a-number": ("/v1/chat/completions", {"messages": USER, "tools": tool({"properties": {"a": 5}}),
                                                        "tool_choice": "none"}, "tools[0].function.parameters.properties",
                               'got {"a": 5}'),
    "tool-required-a-string": ("/v1/chat/completions", {"messages": USER, "tools": tool({"type": "object", "required": "a"}),
                                                        "tool_choice": "none"}, "tools[0].function.parameters.required",
                               "tools[0].function.parameters.required must be a list of the names of the arguments a call "
                               'must give, got "a"'),
    "tool-required-numbers": ("/v1/chat/completions", {"messages": USER, "tools": tool({"required": [1]}), "tool_choice": "none"},
                              "tools[0].function.parameters.required", "got [1]"),
}


@pytest.mark.parametrize("path, body, param, says", REFUSED.values(), ids=REFUSED)
def test_refused_with_a_400_naming_the_field(client, path, body, param, says):
    if isinstance(body, dict):
        r = client.post(path, json={"max_tokens": 1, **body})
    else:
        r = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    error = r.json()["error"]
    assert (r.status_code, error["type"], error["param"]) == (400, "invalid_request_error", param), r.text
    assert says in error["message"] and "\n" not in error["message"], r.text


def test_a_bug_answers_openais_error_body(client, monkeypatch):
    """An exception no check expected (a bug) answers a 500 with OpenAI's error JSON, its message's first line (Starlette
    answered 'Internal Server Error' as plain text, which clients fail to parse)."""
    def broken(*args, **kwargs):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(protocol.CompletionRequest, "sampling", broken)
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert r.status_code == 500 and r.json() == {"error": {"message": "injected failure", "type": "server_error", "param": None,
                                                           "code": None}}, r.text


def test_a_bug_mid_stream_ends_it_with_an_error_event_and_done(client, monkeypatch):
    """A stream whose answer fails with an exception no check expected (a bug) ends with OpenAI's error body as its last
    event and [DONE], as an engine failure does (it was cut off mid-stream, the client's parser left waiting)."""
    server = client.app.state.server

    class Failing:
        async def events(self):
            raise RuntimeError("injected failure")
            yield  # an async generator

        def close(self):
            pass

    monkeypatch.setattr(server.loop, "submit", lambda requests: Failing())
    with client.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True}) as r:
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert r.status_code == 200 and events[-1] == "[DONE]", events
    assert json.loads(events[-2]) == {"error": {"message": "injected failure", "type": "server_error", "param": None, "code": None}}
