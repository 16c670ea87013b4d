"""Request bodies that combine valid fields, drawn by hypothesis, sent to /v1/completions and /v1/chat/completions of a
tiny model's app in this process (Starlette's TestClient; SmolLM2's tokenizer over 2 random layers). Whatever the mix:
never a 5xx; a 400 is OpenAI's error body in one line; a 200's choices are n per prompt, indexed 0..k-1 once each, with a
finish_reason of the allowed set, no more tokens than max_tokens, no stop string in the text, and usage counting the
tokens returned and the prompt's; a stream ends with [DONE] and, reassembled, is the whole answer to the same body
(greedy or seeded). Few examples, derandomized: each request runs the tiny model, and a new mix of sampling, top
log-probabilities, prompt scoring or structured output compiles a program."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_serve_hostile import model  # noqa: F401 - the module fixture: SmolLM2's tokenizer over 2 random layers

import jaxllm
from jaxllm.api import build_app

SERVED = settings(max_examples=6, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FINISH = {"stop", "length"}
CHAT_FINISH = FINISH | {"tool_calls"}


@pytest.fixture(scope="module")
def client(model):  # noqa: F811 - the imported fixture
    """Hermes' tool-call format read from answers, so tool_choice 'auto' is served (the template teaches none)."""
    app = build_app(model, jaxllm.Engine(model, batch_size=4, max_len=64, chunk=4), name="tiny", tool_parser="hermes")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def optional(**fields) -> st.SearchStrategy[dict]:
    """A dict holding any of `fields` (each a strategy of its values)."""
    return st.fixed_dictionaries({}, optional=fields)


# Values each valid alone; the top log-probabilities asked stay one width (2), so that few programs compile
SAMPLING = optional(
    n=st.integers(1, 3), temperature=st.sampled_from([0, 0.8]), top_p=st.sampled_from([0.9, 1.0]), top_k=st.sampled_from([-1, 5]),
    min_p=st.sampled_from([0.0, 0.1]), seed=st.sampled_from([7, 2**40]), ignore_eos=st.booleans(),
    stop=st.sampled_from(["", [], " the", ["e", "a b"], "\n"]), stop_token_ids=st.sampled_from([[], [5], [198, 30]]),
    presence_penalty=st.sampled_from([0.0, 0.5]), frequency_penalty=st.sampled_from([-0.5, 0.5]),
    repetition_penalty=st.sampled_from([1.0, 1.3]), logit_bias=st.sampled_from([{}, {"30": 5}, {"198": -100}]),
    return_token_ids=st.booleans(), min_tokens=st.sampled_from([0, 2]), include_stop_str_in_output=st.booleans(),
    prompt_logprobs=st.sampled_from([0, 2]),
)
STREAM = st.one_of(st.just({}), st.just({"stream": False}), st.fixed_dictionaries(
    {"stream": st.just(True)}, optional={"stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})}))
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
FORMATS = st.sampled_from([{"type": "text"}, {"type": "json_object"},
                           {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}])
COMPLETION = st.fixed_dictionaries({
    "prompt": st.sampled_from(["Hi", "The cat sat on", ["Hi", "The cat"], [5, 6, 7], [[5, 6], [7, 8, 9]]]),
    "max_tokens": st.sampled_from([0, 1, 3])}, optional=dict(logprobs=st.sampled_from([0, 2]), echo=st.booleans()))
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "now"}}]
CHOICES = st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "now"}}])
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": [{"type": "text", "text": "And now?"}]}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}],
]
CHAT = st.fixed_dictionaries({"messages": st.sampled_from(CONVERSATIONS), "max_tokens": st.sampled_from([0, 1, 3])}, optional=dict(
    logprobs=st.sampled_from([False, True, {"logprobs": True, "top_logprobs": 2}]), echo=st.booleans(),
    tools=st.just(TOOLS), tool_choice=CHOICES)).map(lambda body: {**body, **body["logprobs"]} if isinstance(body.get("logprobs"), dict) else body)


def bodies(fields) -> st.SearchStrategy[dict]:
    """A request body: `fields` and the sampling and streaming ones; a structured output now and then."""
    extra = st.one_of(st.just({}), st.just({}), st.just({}), st.fixed_dictionaries({"response_format": FORMATS}))
    return st.tuples(fields, SAMPLING, STREAM, extra).map(lambda parts: {k: v for part in parts for k, v in part.items()})


def post(client, path: str, body: dict) -> tuple[int, dict]:
    """(status, the answer): a JSON body, or a stream's events (checked: [DONE] last, no error) reassembled into one."""
    r = client.post(path, json=body)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code != 200 or not body.get("stream"):
        return r.status_code, r.json()
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line]
    assert events and events[-1] == "[DONE]" and "[DONE]" not in events[:-1], events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], chunks[-1]
    usage = body.get("stream_options", {}).get("include_usage", False)  # every chunk has usage, null but the last's
    assert [c for c in chunks if ("usage" in c) != usage] == [], chunks[0]
    return 200, reassembled(chunks, chat=path.endswith("chat/completions"))


def reassembled(chunks: list[dict], chat: bool) -> dict:
    """A stream's chunks as the whole answer's JSON (usage only when a chunk carried it)."""
    choices: dict[int, dict] = {}
    usage = None
    for chunk in chunks:
        assert chunk["object"] == ("chat.completion.chunk" if chat else "text_completion"), chunk
        if chunk.get("usage") is not None:
            assert chunk["choices"] == [] and usage is None, chunk
            usage = chunk["usage"]
        for c in chunk["choices"]:
            assert not choices.get(c["index"], {}).get("finish_reason"), ("a chunk after the choice's last", c)
            into = choices.setdefault(c["index"], {"index": c["index"], "finish_reason": None, "logprobs": None, "stop_reason": None})
            for key in ("finish_reason", "stop_reason"):
                into[key] = c.get(key) if c.get("finish_reason") else into[key]
            if "token_ids" in c:
                into["token_ids"] = into.get("token_ids", []) + c["token_ids"]
            if chat:
                _delta(into.setdefault("message", {"role": "assistant", "content": None}), c["delta"])
            else:
                into["text"] = into.get("text", "") + c["text"]
            if c.get("logprobs") is not None:
                into["logprobs"] = _joined(into["logprobs"], c["logprobs"])
    out = {"object": "chat.completion" if chat else "text_completion", "choices": [choices[i] for i in sorted(choices)]}
    return out if usage is None else {**out, "usage": usage}


def _delta(message: dict, delta: dict) -> None:
    if "role" in delta:
        assert delta["role"] == "assistant", delta
    if delta.get("content") is not None:
        message["content"] = (message["content"] or "") + delta["content"]
    for call in delta.get("tool_calls", []):
        calls = message.setdefault("tool_calls", [])
        if call["index"] == len(calls):  # a call's first delta: its id, type and name
            calls.append({"id": call["id"], "type": call["type"], "function": {"name": call["function"]["name"], "arguments": ""}})
        calls[call["index"]]["function"]["arguments"] += call["function"].get("arguments", "")


def _joined(into: dict | None, more: dict) -> dict:
    if into is None:
        return more
    return {k: into[k] + more[k] for k in into}


def completion_tokens(choice: dict, echoed: int) -> int | None:
    """The tokens a choice returned (its token_ids, or its log-probabilities past the echoed prompt), None: not shown."""
    if "token_ids" in choice:
        return len(choice["token_ids"])
    lps = choice["logprobs"]
    if lps is None:
        return None
    return len(lps["content"]) if "content" in lps else len(lps["tokens"]) - echoed


def check_refusal(status: int, answer: dict) -> None:
    error = answer["error"]
    assert status == 400 and set(answer) == {"error"} and set(error) == {"message", "type", "param", "code"}, answer
    assert error["type"] == "invalid_request_error" and error["message"] and "\n" not in error["message"], answer


def check_answer(body: dict, answer: dict, prompts: list[list[int]], texts: list[str | None], chat: bool) -> None:
    """The properties of a 200 of `body`, whose prompts encode to `prompts` (their texts: `texts`, None for ids)."""
    n, max_tokens, choices = body.get("n", 1), body.get("max_tokens"), answer["choices"]
    assert [c["index"] for c in choices] == list(range(n * len(prompts))), [c["index"] for c in choices]
    stops = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop", [])
    echo = not chat and body.get("echo", False)
    counted = []
    for c in choices:
        prompt, text = prompts[c["index"] // n], texts[c["index"] // n]
        assert c["finish_reason"] in (CHAT_FINISH if chat else FINISH), c
        content = c["message"]["content"] if chat else c["text"]
        if echo:
            assert content.startswith(text if text is not None else ""), (text, content)
            content = content[len(text or ""):] if text is not None else content
        new = completion_tokens(c, len(prompt) if echo else 0)
        counted.append(new)
        if new is not None and max_tokens is not None:
            assert new <= max_tokens, (new, c)
            if c["finish_reason"] == "length":
                assert new == max_tokens, (new, c)
        if new is not None and c["finish_reason"] == "length" and body.get("ignore_eos") and max_tokens is not None:
            assert new == max_tokens, c
        for s in stops:  # included: it ends the text (the first found)
            kept = content or ""
            if body.get("include_stop_str_in_output") and c["stop_reason"] == s:
                assert kept.endswith(s), (s, kept)
                kept = kept[: -len(s)]
            assert not s or s not in kept, (s, content)
    if "usage" in answer:
        u = answer["usage"]
        assert u["prompt_tokens"] == sum(len(p) for p in prompts), (u, [len(p) for p in prompts])
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
        if None not in counted:
            assert u["completion_tokens"] == sum(counted), (u, counted)


def check_endpoint(client, path: str, body: dict, prompts, texts, chat: bool) -> None:
    status, answer = post(client, path, body)
    if status != 200:
        check_refusal(status, answer)
        return
    stream = body.get("stream", False)
    assert ("usage" in answer) == (not stream or body.get("stream_options", {}).get("include_usage", False)), answer.keys()
    check_answer(body, answer, prompts, texts, chat)
    if stream and (body.get("temperature") == 0 or "seed" in body):  # the same answer, whole
        whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        status, expected = post(client, path, whole)
        assert status == 200, expected
        got = [{k: v for k, v in c.items() if k != "logprobs" or v is not None} for c in answer["choices"]]
        assert got == [{k: v for k, v in c.items() if k != "logprobs" or v is not None} for c in expected["choices"]], (got, expected)
        if "usage" in answer:
            assert answer["usage"] == expected["usage"]


@SERVED
@given(body=bodies(COMPLETION))
def test_completion_bodies_answer_consistently(client, body):
    tokenizer = client.app.state.server.tokenizer
    prompt = body.get("prompt")
    batch = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    prompts = [p if isinstance(p, list) else list(tokenizer(p)["input_ids"]) for p in batch if p is not None]
    check_endpoint(client, "/v1/completions", body, prompts, [p if isinstance(p, str) else None for p in batch], chat=False)


@SERVED
@given(body=bodies(CHAT))
def test_chat_bodies_answer_consistently(client, body):
    tokenizer = client.app.state.server.tokenizer
    messages = [{**m, "content": m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]}
                for m in body.get("messages", [])]
    tools = {"tools": body["tools"]} if body.get("tools") else {}
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **tools) if messages else ""
    check_endpoint(client, "/v1/chat/completions", body, [list(tokenizer(prompt, add_special_tokens=False)["input_ids"])], [None],
                   chat=True)
