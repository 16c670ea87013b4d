"""Hostile requests to the HTTP server, on a tiny model's app in this process (Starlette's TestClient; no
request here reaches the engine, so nothing compiles): values the library's checks once met with a Python
exception (the server's plain-text 500), tools whose schema the chat template showed the model as it came,
and a bug's error, which must still be OpenAI's error body (a stream's last event, then [DONE]). Then hostile
workloads and failures, served over HTTP on a tiny engine whose pool holds one 64-token sequence: more work than
the pool holds, clients gone at any point or reading nothing, a step or the engine failing, the server stopping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.testclient import TestClient
from test_bad_inputs import LLAMA, write_checkpoint
from test_serve import serving

import jaxllm
from jaxllm import checkpoint
from jaxllm.api import build_app, protocol

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory, gguf_path):
    """SmolLM2's tokenizer over 2 random layers: its programs compile in seconds."""
    root = tmp_path_factory.mktemp("serve_hostile")
    checkpoint.load_tokenizer(gguf_path).save_pretrained(str(root / "tokenizer"))
    return jaxllm.load(write_checkpoint(root / "llama", LLAMA, root / "tokenizer"))


@pytest.fixture(scope="module")
def client(model):
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


ECHOED = {  # what a client sent, echoed in an error's message: it was echoed whole (16 kB of path, 1 MB of name), newlines too
    "model-in-the-body": ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1, "model": "a\nb" + "x" * 100_000}, 404),
    "model-in-the-path": ("GET", "/v1/models/" + "x" * 5000, None, 404),
    "unknown-path": ("GET", "/v1/" + "a" * 5000, None, 404),
    "wrong-method": ("POST", "/v1/models/" + "x" * 5000, None, 405),
}


@pytest.mark.parametrize("method, path, body, status", ECHOED.values(), ids=ECHOED)
def test_what_an_error_echoes_stays_one_short_line(client, method, path, body, status):
    r = client.request(method, path, json=body)
    message = r.json()["error"]["message"]
    assert r.status_code == status and "\n" not in message and len(message) < 600, (r.status_code, message[:200])
    assert ("'a\\nb" in message) == (body is not None), message  # a newline shown as its escape


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


# -- workloads and failures, on a tiny random-weights model whose pool holds one 64-token sequence ----------------------

@pytest.fixture(scope="module")
def tiny_engine(model):
    """4 rows, 64 tokens of context, and a pool of 8 pages of 8 tokens, so that two 33-token sequences do not fit at
    once. Each test serves it through its own app."""
    return jaxllm.Engine(model, batch_size=4, max_len=64, num_pages=8, page_size=8, chunk=4)


@contextlib.contextmanager
def tiny_server(engine, shutdown_timeout: int = 1):
    """A server of `engine` (its own app and EngineLoop), for one test: (URL, the app's EngineLoop, uvicorn's server);
    the engine is left idle with every page free."""
    app = build_app(engine.model, engine, name="tiny", max_queue=32)
    try:
        with serving(app, shutdown_timeout) as (url, http):
            yield url, app.state.engine_loop, http
    finally:
        engine.reset()  # what a failing test left; the page count is checked before, in the test
        engine.blocks.reset_prefix_cache()


def greedy(prompt, max_tokens, **fields) -> dict:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **fields}


def test_more_work_than_the_pool_holds_waits_and_answers_as_alone(tiny_engine):
    """Four long prompts and an n=3 request with long answers at once, on a pool of room for 8 x 8 tokens: they wait for
    pages or are preempted and recomputed, and each answer is the one it gets alone; /health and /v1/models answer
    while the engine is busy."""
    prompts = [[100 + 7 * i + j for j in range(36)] for i in range(4)]
    alone = [r.text for r in tiny_engine.model.generate(prompts, jaxllm.SamplingParams(max_new_tokens=20, temperature=0,
                                                                                      ignore_eos=True), engine=tiny_engine)]
    n3 = tiny_engine.model.generate([5, 6, 7], jaxllm.SamplingParams(max_new_tokens=50, temperature=0, ignore_eos=True),
                                    engine=tiny_engine).text
    preempted = tiny_engine.scheduler.stats.preempted
    with tiny_server(tiny_engine) as (url, loop, _):
        async def clients():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                async def complete(body):
                    r = await c.post("/v1/completions", json=body)
                    assert r.status_code == 200, r.text
                    return [choice["text"] for choice in r.json()["choices"]]

                async def side():  # answered at once while the engine works
                    slowest = 0.0
                    while loop.active:
                        start = time.monotonic()
                        assert (await c.get("/health")).status_code == (await c.get("/v1/models")).status_code == 200
                        slowest = max(slowest, time.monotonic() - start)
                        await asyncio.sleep(0.02)
                    return slowest

                work = [asyncio.ensure_future(complete(body)) for body in [greedy(p, 20) for p in prompts] + [greedy([5, 6, 7], 50, n=3)]]
                await asyncio.sleep(0.05)
                slowest = await side()
                return await asyncio.gather(*work), slowest

        answers, slowest = asyncio.run(clients())
        assert answers == [[text] for text in alone] + [[n3] * 3]
        assert slowest < 1.0, slowest
        assert tiny_engine.scheduler.stats.preempted > preempted  # the n=3 answers outgrew the pool
        assert loop.stats["free_pages"] == loop.stats["total_pages"] == tiny_engine.blocks.num_free


def test_an_engine_that_cannot_start_again_refuses_with_503_and_hangs_nobody(tiny_engine, monkeypatch, caplog):
    """A step raises, and so does the engine's reset: the request in the engine gets its 500, one sent while the reset
    ran (it waited in the engine thread's inbox for ever: the client hung) and every later one a 503 that says to
    restart the server, and the log says so in one line."""
    def broken():
        raise RuntimeError("device lost")

    def no_reset():
        time.sleep(1.0)  # a request comes in meanwhile
        raise RuntimeError("cannot start again")

    with tiny_server(tiny_engine) as (url, loop, _):
        monkeypatch.setattr(tiny_engine, "decode_step", broken)
        monkeypatch.setattr(tiny_engine, "reset", no_reset)

        async def clients():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                async def post(delay):
                    await asyncio.sleep(delay)
                    return await c.post("/v1/completions", json=greedy([5, 6, 7], 8))

                return await asyncio.gather(post(0), post(0.5))

        first, meanwhile = asyncio.run(clients())
        later = httpx.post(url + "/v1/completions", json=greedy([5, 6, 7], 8), timeout=30)
        health = httpx.get(url + "/health", timeout=30)
        monkeypatch.undo()
    assert first.status_code == 500 and "device lost" in first.json()["error"]["message"], first.text
    for r in (meanwhile, later):
        e = r.json()["error"]
        assert (r.status_code, e["type"]) == (503, "server_error") and "cannot start again" in e["message"], r.text
        assert e["message"].endswith(": restart the server"), e
    assert (health.status_code, health.json()) == (503, {"status": "error", "error": meanwhile.json()["error"]["message"]})
    said = [r.getMessage() for r in caplog.records if r.name == "jaxllm" and r.levelno >= logging.ERROR]
    assert len(said) == 1 and "\n" not in said[0] and "restart" in said[0], said


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_stop_answers_the_requests_still_open(tiny_engine, monkeypatch, caplog, stream):
    """The server stops (Ctrl-C, SIGTERM) with requests in the engine: after --shutdown-timeout they get a 503 with
    OpenAI's error body (a stream: an error event, then [DONE]), their pages go back, and it stops at once. uvicorn
    cancelled them: a plain-text 500 and a traceback in the log, or nothing, and a stream cut off without [DONE]."""
    decode = tiny_engine.decode_step
    monkeypatch.setattr(tiny_engine, "decode_step", lambda: time.sleep(0.05) or decode())  # answers that last
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not reach the root's handlers: caplog's too
    monkeypatch.setattr(uvicorn_log, "handlers", [*uvicorn_log.handlers, caplog.handler])
    with tiny_server(tiny_engine, shutdown_timeout=0) as (url, loop, http):
        answer = ThreadPoolExecutor(1).submit(
            lambda: httpx.post(url + "/v1/completions", json=greedy([5, 6, 7], 60, stream=stream), timeout=30))
        while loop.stats["running"] == 0:
            time.sleep(0.01)
        start = time.monotonic()
        http.should_exit = True  # what uvicorn's handler of SIGINT and SIGTERM does
        r = answer.result(timeout=30)
    assert time.monotonic() - start < 5
    assert tiny_engine.blocks.num_free == tiny_engine.blocks.num_pages
    said = "the server is stopping: retry later"
    if stream:
        events = [line.removeprefix("data: ") for line in r.text.splitlines() if line]
        assert r.status_code == 200 and events[-1] == "[DONE]", r.text
        assert json.loads(events[-2])["error"]["message"] == said, events
    else:
        assert r.status_code == 503 and r.json()["error"] == {"message": said, "type": "server_error", "param": None,
                                                              "code": None}, r.text
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


def test_health_turns_503_as_soon_as_a_stop_begins(tiny_engine, monkeypatch):
    """A stop (Ctrl-C, SIGTERM) turns /health to a 503 saying why at once, while the open requests finish (a load
    balancer's probe then sends no more work here); it answered 200 "ok" through the drain and after it."""
    decode = tiny_engine.decode_step
    monkeypatch.setattr(tiny_engine, "decode_step", lambda: time.sleep(0.2) or decode())  # an answer that outlasts the drain
    with tiny_server(tiny_engine, shutdown_timeout=1) as (url, loop, http):
        probe = TestClient(http.config.app)  # in this process: uvicorn stopped listening as the stop began
        assert probe.get("/health").json()["status"] == "ok"
        answer = ThreadPoolExecutor(1).submit(lambda: httpx.post(url + "/v1/completions", json=greedy([5, 6, 7], 60), timeout=30))
        while loop.stats["running"] == 0:
            time.sleep(0.01)
        http.should_exit = True
        deadline = time.monotonic() + 0.8  # within the drain's second
        while (health := probe.get("/health")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (health.status_code, health.json()) == (503, {"status": "stopping", "error": "the server is stopping"})
        assert loop.ended is None and loop.active == 1  # the request open goes on meanwhile
        assert answer.result(timeout=30).status_code == 503  # the drain's second ended it
    assert probe.get("/health").json() == {"status": "stopping", "error": "the server is stopping: retry later"}


def raw_post(url: str, body: dict, rcvbuf: int | None = None) -> socket.socket:
    """A POST of `body` to /v1/completions on a socket of its own, whose answer nobody reads (yet)."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    raw = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
    return s


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_clients_gone_at_any_point_free_their_pages(tiny_engine, monkeypatch, stream):
    """A client that hangs up while its prompt is prefilled, while it waits for pages behind another, or mid-answer:
    its sequences are aborted and every page goes back."""
    prefill = tiny_engine.prefill_step
    monkeypatch.setattr(tiny_engine, "prefill_step", lambda: prefill() + (time.sleep(0.3) or []))  # a long prefill
    with tiny_server(tiny_engine) as (url, loop, _):
        for moment in ("prefill", "waiting", "decode"):
            pool = tiny_engine.blocks.num_free
            ahead = raw_post(url, greedy([9] * 40, 20)) if moment == "waiting" else None  # takes 8 pages: all
            gone = raw_post(url, greedy([5] * 40, 20, stream=stream))
            state = {"prefill": "running", "waiting": "waiting", "decode": "running"}[moment]
            deadline = time.monotonic() + 30
            while not (loop.stats[state] and (moment != "decode" or tiny_engine.scheduler.running[0].output)):
                assert time.monotonic() < deadline, loop.stats
                time.sleep(0.005)
            gone.close()
            if ahead is not None:
                ahead.close()
            while loop.active or tiny_engine.has_work():
                assert time.monotonic() < deadline, loop.stats
                time.sleep(0.01)
            assert tiny_engine.blocks.num_free == pool == tiny_engine.blocks.num_pages, moment


def test_a_stream_nobody_reads_stalls_no_one(tiny_engine):
    """A client that reads nothing of its stream (3 answers of 60 tokens, ~40 kB of events, a receive buffer of 1 KiB)
    holds up no other client, nor the engine: its answers end in the engine and their pages go back while it still
    reads nothing."""
    with tiny_server(tiny_engine) as (url, loop, _):
        asleep = raw_post(url, greedy([5, 6, 7], 60, n=3, stream=True), rcvbuf=1024)
        start = time.monotonic()
        r = httpx.post(url + "/v1/completions", json=greedy([8, 9], 30), timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 30
        while loop.active:
            assert time.monotonic() - start < 30, loop.stats
            time.sleep(0.01)
        assert tiny_engine.blocks.num_free == tiny_engine.blocks.num_pages
        asleep.close()


def test_a_step_that_raises_once_ends_every_request_in_it_and_the_next_is_served(tiny_engine, monkeypatch):
    """A decode step raises once (a device's out-of-memory error) with a whole answer and a stream in the engine: the
    first gets a 500 and the stream an error event and [DONE], both with OpenAI's error body; the engine starts again
    empty, and the next request gets the answer it gets alone."""
    decode, raised = tiny_engine.decode_step, []

    def once():  # once both run, and each has its first token
        if not raised and len(tiny_engine.scheduler.running) == 2 and all(s.output for s in tiny_engine.scheduler.running):
            raised.append(True)
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while trying to allocate 1.2GiB")
        return decode()

    alone = tiny_engine.model.generate([5, 6, 7], jaxllm.SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True),
                                       engine=tiny_engine).text
    monkeypatch.setattr(tiny_engine, "decode_step", once)
    with tiny_server(tiny_engine) as (url, loop, _):
        async def clients():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                async def stream():
                    async with c.stream("POST", "/v1/completions", json=greedy([8, 9], 30, stream=True)) as r:
                        return r.status_code, [line.removeprefix("data: ") async for line in r.aiter_lines() if line]

                return await asyncio.gather(c.post("/v1/completions", json=greedy([5, 6, 7], 30)), stream())

        whole, (status, events) = asyncio.run(clients())
        said = "the engine failed: RuntimeError('RESOURCE_EXHAUSTED: out of memory while trying to allocate 1.2GiB')"
        assert whole.status_code == 500 and whole.json()["error"] == {"message": said, "type": "server_error", "param": None,
                                                                      "code": None}, whole.text
        assert status == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["error"]["message"] == said, events
        r = httpx.post(url + "/v1/completions", json=greedy([5, 6, 7], 30), timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == alone, r.text
        assert tiny_engine.blocks.num_free == tiny_engine.blocks.num_pages
