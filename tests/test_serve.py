"""python -m jaxllm.serve, driven by the real `openai` client on the embedded SmolLM2 (float32, CPU).

One server per module, over an engine that first computed the reference answers with
`model.generate` (so the server compiles little more); every test leaves the engine idle.
"""

import asyncio
import contextlib
import dataclasses
import functools
import gzip
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

import jaxllm
from jaxllm import serve
from jaxllm.api import app as api_app
from jaxllm.api import build_app, parsing, protocol, tool_calls
from jaxllm.chat_template import encode
from jaxllm.errors import GenerationError, JaxllmError, StructuredError
from jaxllm.serve import check_listen, parse_args

NAME = "smollm2-test"
NEW = 12  # tokens per answer: small, the whole file runs in a few minutes on a 2-core CPU
CHAT = ["What is the capital of France?", "Name three colors.", "Say hi.", "What is 2 + 2?"]
TEXT = ["The capital of Italy is", "def add(a, b):"]
SEED = 7
TOP = 3  # top_logprobs


@pytest.fixture(scope="module")
def server(gguf_path, xla_optimized):  # the real model serving: its run time is most of this module's
    model = jaxllm.load(gguf_path, dtype="float32")
    # prompts fit the 64-token prefill; decode calls of 4 steps: a cancelled request ends after the call under way (of
    # 16 steps: 4 s on a busy 2-core CPU), and a 12-token answer takes 3 calls where it took 1, at the same cost a step
    engine = jaxllm.Engine(model, batch_size=8, max_len=512, prefill_tokens=1024, chunk=4)
    greedy = jaxllm.SamplingParams(max_new_tokens=NEW, temperature=0.0, logprobs=True)
    # CHAT[0] alone (its logprobs are compared with a request alone); the others together, as the 32 clients ask them
    # (their texts are compared): a decode step computes all 8 slots, so a batch takes the time of one answer
    refs = {(CHAT[0], True): model.generate(CHAT[0], greedy, chat=True, engine=engine)}
    refs |= {(p, True): r for p, r in zip(CHAT[1:], model.generate(CHAT[1:], greedy, chat=True, engine=engine))}
    refs[TEXT[1], False] = model.generate(TEXT[1], greedy, chat=False, engine=engine)  # TEXT[0]'s: the echo's, below
    sampled = jaxllm.SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.9, top_k=20, seed=SEED, presence_penalty=0.5,
                                    frequency_penalty=0.25)
    refs["sampled"] = model.generate(CHAT[1], sampled, engine=engine)
    # The text prompts as one request: float32 logprobs of rows batched together differ from each row alone by
    # ~1e-5 in a 30-layer model, by how the CPU's kernels split the sums (1.07e-5 on an AMD EPYC with AVX-512)
    refs["text-batch"] = model.generate(TEXT, greedy, chat=False, engine=engine)
    top = dataclasses.replace(greedy, top_logprobs=TOP)  # the steps that return top log-probabilities, compiled here too
    refs["top"] = model.generate(CHAT[0], top, chat=True, engine=engine)
    refs["echo"] = model.generate(TEXT[0], dataclasses.replace(top, prompt_logprobs=True), chat=False, engine=engine)
    refs[TEXT[0], False] = refs["echo"]  # greedy, alone: the answer (its texts are compared) a plain request's
    engine.blocks.reset_prefix_cache()  # the server starts from a cold cache

    started = int(time.time())
    app = build_app(model, engine, name=NAME, max_queue=32)
    with serving(app) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        yield SimpleNamespace(url=url, refs=refs, loop=app.state.engine_loop, engine=engine, client=client, model=model,
                              app_server=app.state.server, started=started)
        client.close()


@contextlib.contextmanager
def serving(app, shutdown_timeout: int = 1):
    """`app` served as `python -m jaxllm.serve` serves it (serve.http_server), on a free port of this machine, by a
    thread: (its URL, uvicorn's server); it stops (as on Ctrl-C) at the end, within the time it is given."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = serve.http_server(app, host="127.0.0.1", port=port, log_level="warning", shutdown_timeout=shutdown_timeout)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not http.started:
        assert thread.is_alive() and time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", http
    finally:
        http.should_exit = True  # what uvicorn's handler of SIGINT and SIGTERM does
        thread.join(timeout=60)
        assert not thread.is_alive(), "the server did not stop"


@contextlib.contextmanager
def prefilled_together(server, n: int, timeout: float = 30.0):
    """The engine's prefill waits until `n` requests have been added (or `timeout` passes), so requests sent at once
    are prefilled in one call, as a test that says they run together needs: the first alone took a call (and a
    compile) of its own, as the engine thread's timing fell."""
    engine, added, deadline = server.engine, [], time.monotonic() + timeout
    add, prefill = engine.add, engine.prefill_step

    def held():
        if len(added) < n and time.monotonic() < deadline:
            time.sleep(0.005)  # the engine thread goes round again, taking what came in (EngineLoop._take)
            return []
        return prefill()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "add", lambda req: added.append(req) or add(req))
        patch.setattr(engine, "prefill_step", held)
        yield


def wait_idle(server, timeout=60.0) -> dict:
    """The engine's counts once nothing runs or waits and every page is back (or fail)."""
    deadline = time.time() + timeout
    while True:
        health = httpx.get(server.url + "/health").json()
        if health["active"] == health["running"] == health["waiting"] == 0 and health["free_pages"] == health["total_pages"]:
            return health
        assert time.time() < deadline, f"the engine did not go idle: {health}"
        time.sleep(0.1)


def test_models_health_and_cli_defaults(server):
    card = server.client.models.retrieve(NAME)  # GET /v1/models/{model}
    assert [(m.id, m.created) for m in server.client.models.list().data] == [(card.id, card.created)] == [(NAME, card.created)]
    assert server.started <= card.created <= time.time()  # a Unix time, as OpenAI's: when the server started (was 0)
    r = httpx.get(server.url + "/v1/models/org/other-model")  # hub ids hold a '/'
    assert r.status_code == 404 and (r.json()["error"]["code"], r.json()["error"]["param"]) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError):
        server.client.models.retrieve("gpt-4o")
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    args = parse_args(["--max-queue", "4"])
    assert (args.host, args.port, args.max_queue, args.batch_size) == ("127.0.0.1", 8000, 4, 32)
    args = parse_args(["--port", "65535", "--log-level", "DEBUG"])
    assert (args.port, args.log_level, args.shutdown_timeout, args.tool_call_parser) == (65535, "debug", 10, "auto")


@pytest.mark.parametrize("argv, flag", [
    (["--port", "70000"], "--port"),  # uvicorn would listen on 70000 - 65536 = 4464
    (["--port", "-1"], "--port"),
    (["--port", "0"], "--port"),
    (["--port", "80.5"], "--port"),
    (["--log-level", "chatty"], "--log-level"),  # uvicorn's KeyError
    (["--max-request-bytes", "0"], "--max-request-bytes"),
    (["--shutdown-timeout", "-1"], "--shutdown-timeout"),
    (["--tool-call-parser", "qwen"], "--tool-call-parser"),  # not a format jaxllm reads
])
def test_cli_refuses_bad_port_and_log_level_in_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit:
        parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: argument {flag}: ") and "--help" in err


def test_cli_refuses_an_address_it_cannot_listen_on_before_loading(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(JaxllmError, match=f"^cannot listen on 127.0.0.1:{port}: .*: choose another --port/--host$"):
            check_listen("127.0.0.1", port)
        with pytest.raises(JaxllmError, match="^cannot listen on 999.1.1.1:8000: .*: choose another --port/--host$"):
            check_listen("999.1.1.1", 8000)

        def load_model(args):
            raise AssertionError("the model was loaded before the address was checked")

        monkeypatch.setattr(serve.progress, "load_model", load_model)
        monkeypatch.setattr(serve.runtime, "set_gpu_flags", lambda mesh: None)  # main's process-wide settings
        assert serve.main(["--port", str(port), "--compile-cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    check_listen("127.0.0.1", port)  # free again: binds, and lets go


def test_cli_refuses_a_max_len_beyond_the_models_positions(monkeypatch, capsys, server):
    """--max-len above the model's positions: one line before any engine is built (requests beyond
    the positions are refused anyway, so a pool for them would only take memory)."""
    monkeypatch.setattr(serve.runtime, "set_gpu_flags", lambda mesh: None)  # main's process-wide settings
    monkeypatch.setattr(serve.progress, "load_model", lambda args: server.model)
    monkeypatch.setattr(serve, "Engine", lambda *a, **k: (_ for _ in ()).throw(AssertionError("an engine was built")))
    positions = server.model.config.context_length
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert serve.main(["--port", str(port), "--compile-cache", "none", "--max-len", str(positions + 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --max-len {positions + 1:,} exceeds the model's {positions:,} positions"), err


def test_a_failing_step_fails_its_requests_and_the_server_goes_on(server, monkeypatch, capsys):
    """A step that raises (a bug, a device error) ends the requests in the engine with a 500 and
    the error; the engine starts again empty, so the next request is answered as before."""
    real = server.engine.decode_step

    def broken():
        raise RuntimeError("injected failure")

    monkeypatch.setattr(server.engine, "decode_step", broken)
    with pytest.raises(openai.InternalServerError, match="injected failure"):
        server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=NEW, temperature=0)
    monkeypatch.setattr(server.engine, "decode_step", real)
    out = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=NEW, temperature=0)
    assert out.choices[0].text == server.refs[TEXT[0], False].text
    assert httpx.get(server.url + "/health").status_code == 200
    wait_idle(server)
    assert "injected failure" in capsys.readouterr().err  # the traceback, for the operator


REASON = "the model's logits are NaN/inf at token 3 of request 7: its weights hold NaN/inf"


class _Failing(api_app.Output):
    """An Output that receives the engine's last event as an error one (Event.error: non-finite logits)."""

    def push(self, tokens, logprobs, finished, error=None, top=None):
        return super().push(tokens, logprobs, finished, REASON if finished else error, top)


def test_an_answer_the_engine_ended_with_an_error_says_why(server, monkeypatch):
    """finish_reason "error" (non-finite logits) answers 500 with the engine's reason (it answered 200 with the
    text cut and no word of why); streamed, the chunks so far, the one with finish_reason "error", then the reason
    as an error event the client raises. The server answers the next request as before. (/v1/completions takes the
    same path: App._collect, App._sse.)"""
    monkeypatch.setattr(api_app, "Output", _Failing)
    ask = dict(model=NAME, max_tokens=NEW, temperature=0)
    create = functools.partial(server.client.chat.completions.create, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.InternalServerError, match="NaN/inf at token 3") as err:
        create(**ask)
    assert err.value.body["code"] == "generation_failed", err.value.body
    chunks = []
    with pytest.raises(openai.APIError, match="NaN/inf at token 3"):
        for chunk in create(**ask, stream=True):
            chunks.append(chunk)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "error"
    monkeypatch.setattr(api_app, "Output", _Failing.__mro__[1])
    out = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=NEW, temperature=0)
    assert out.choices[0].text == server.refs[TEXT[0], False].text


def test_prompts_are_tokenized_off_the_event_loop(server, monkeypatch):
    """Encoding a prompt (and a chat template) runs on the server's tokenizing thread, so a huge
    prompt does not stop the event loop, and with it every other client's stream."""
    from jaxllm.api import protocol

    threads = []
    for name in ("encode", "encode_messages"):
        real = getattr(protocol, name)
        monkeypatch.setattr(protocol, name, lambda *a, _real=real, **k: threads.append(threading.current_thread().name) or _real(*a, **k))
    server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=2, temperature=0)
    server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}], max_tokens=2, temperature=0)
    assert len(threads) == 2 and all(t.startswith("jaxllm-tokenize") for t in threads), threads


def test_text_too_long_for_the_context_is_refused_before_encoding(server, monkeypatch):
    """More bytes of text than max_len tokens can hold (max_len x the longest token's bytes) is a
    400 naming the field, without encoding it; text at the bound is encoded (and then refused by
    its token count)."""
    from jaxllm.api import protocol

    limit = server.app_server.most_text_bytes
    assert limit >= server.engine.max_len
    encoded = []
    real = protocol.encode
    monkeypatch.setattr(protocol, "encode", lambda tok, text, **k: encoded.append(len(text)) or real(tok, text, **k))
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a" * (limit + 1), "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "shorten it" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "é" * (limit // 2 + 1)}]},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert encoded == []
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a" * limit, "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and encoded == [limit]  # encoded, then too many tokens
    wait_idle(server)


def test_greedy_answers_equal_generate(server):
    ref = server.refs[CHAT[0], True]
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}],
                                                max_tokens=NEW, temperature=0, logprobs=True)
    choice = out.choices[0]
    assert (choice.message.content, choice.finish_reason) == (ref.text, ref.finish_reason)
    assert [c.logprob for c in choice.logprobs.content] == pytest.approx(ref.logprobs, abs=1e-5)
    eos = set(server.engine.eos)  # the end token is listed (and counted), its text is not in the content
    spoken = [c for c, t in zip(choice.logprobs.content, ref.token_ids) if t not in eos]
    assert bytes(b for c in spoken for b in c.bytes).decode() == ref.text
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (ref.prompt_tokens, len(ref.token_ids))
    assert out.usage.total_tokens == ref.prompt_tokens + len(ref.token_ids)

    refs = [server.refs[p, False] for p in TEXT]
    out = server.client.completions.create(model=NAME, prompt=TEXT, max_tokens=NEW, temperature=0, logprobs=0)
    assert [(c.text, c.finish_reason) for c in out.choices] == [(r.text, r.finish_reason) for r in refs]
    assert [c.logprobs.token_logprobs for c in out.choices] == [pytest.approx(r.logprobs, abs=1e-5) for r in server.refs["text-batch"]]
    lp = out.choices[1].logprobs  # text_offset: where each token's text starts, as the token texts add up
    assert lp.text_offset[0] == 0 and all(lp.text_offset[i + 1] - lp.text_offset[i] == len(lp.tokens[i]) for i in range(len(lp.tokens) - 1))
    assert out.usage.prompt_tokens == sum(r.prompt_tokens for r in refs)
    wait_idle(server)


def test_top_logprobs_and_echo_equal_generate(server):
    """Chat top_logprobs, and completions logprobs k with echo (max_tokens 0: the prompt alone, as lm-evaluation-harness
    scores a continuation; then with an answer, streamed): the library's numbers (test_generation checks them against
    transformers), in OpenAI's shapes."""
    ref, text = server.refs["top"], server.app_server.token_text
    before = server.engine.counters
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}], max_tokens=NEW,
                                                temperature=0, logprobs=True, top_logprobs=TOP)
    content = out.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(ref.logprobs, abs=1e-5)
    assert [[t.token for t in c.top_logprobs] for c in content] == [[text(t) for t, _ in pairs] for pairs in ref.top_logprobs]
    assert [[t.logprob for t in c.top_logprobs] for c in content] == [pytest.approx([lp for _, lp in pairs], abs=1e-5)
                                                                      for pairs in ref.top_logprobs]
    assert all(list(t.bytes) == list(text(i).encode()) for c, pairs in zip(content, ref.top_logprobs) for t, (i, _) in zip(c.top_logprobs, pairs))

    ref, prompt = server.refs["echo"], encode(server.model.tokenizer, TEXT[0], chat=False)
    alone = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=0, echo=True, logprobs=TOP, temperature=0)
    lp = alone.choices[0].logprobs
    assert (alone.choices[0].text, alone.choices[0].finish_reason, alone.usage.completion_tokens) == (TEXT[0], "length", 0)
    assert lp.tokens == [text(t) for t in prompt] and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(ref.prompt_logprobs[1:], abs=1e-5)
    for got, pairs, token in zip(lp.top_logprobs[1:], ref.prompt_top_logprobs[1:], prompt[1:]):  # the k most likely and the chosen
        assert got == pytest.approx({text(t): v for t, v in [*pairs, (token, got[text(token)])]}, abs=1e-5)
    chunks = list(server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=NEW, temperature=0, echo=True,
                                                   logprobs=TOP, stream=True))
    streamed = [c.choices[0] for c in chunks if c.choices and c.choices[0].logprobs]
    assert "".join(c.text for c in streamed) == TEXT[0] + ref.text
    tokens = [t for c in streamed for t in c.logprobs.tokens]
    logprobs = [v for c in streamed for v in c.logprobs.token_logprobs]
    assert tokens == [text(t) for t in prompt + ref.token_ids] and logprobs[0] is None
    assert logprobs[1:] == pytest.approx(ref.prompt_logprobs[1:] + ref.logprobs, abs=1e-5)
    offsets = [o for c in streamed for o in c.logprobs.text_offset]  # counted on across the prompt and the chunks
    assert offsets == [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    assert server.engine.counters == before  # the steps the references compiled served them
    wait_idle(server)


def test_prompt_logprobs_as_vllm_gives_them(server):
    """vLLM's prompt_logprobs k (completions: on each choice; chat: beside the choices): per prompt token
    (None for the first) its own logprob, rank and text, then the k most likely (ranks 1..k), the
    library's numbers; the answer's own logprobs keep their k."""
    ref, text = server.refs["echo"], server.app_server.token_text
    prompt = encode(server.model.tokenizer, TEXT[0], chat=False)
    before = server.engine.counters
    out = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=2, temperature=0, logprobs=1,
                                           extra_body={"prompt_logprobs": TOP})
    (choice,) = out.choices
    assert ref.text.startswith(choice.text) and [set(top) for top in choice.logprobs.top_logprobs] == [
        {text(pairs[0][0]), text(token)} for pairs, token in zip(ref.top_logprobs[:2], ref.token_ids)]
    scored = choice.prompt_logprobs
    assert len(scored) == len(prompt) and scored[0] is None
    for got, token, logprob, pairs in zip(scored[1:], prompt[1:], ref.prompt_logprobs[1:], ref.prompt_top_logprobs[1:]):
        ids = [t for t, _ in pairs]
        assert list(got) == [str(t) for t in dict.fromkeys([token, *ids])]  # the token itself first
        assert got[str(token)]["logprob"] == pytest.approx(logprob, abs=1e-5) and got[str(token)]["decoded_token"] == text(token)
        assert got[str(token)]["rank"] == ids.index(token) + 1 if token in ids else got[str(token)]["rank"] > TOP
        assert [(got[str(t)]["rank"], got[str(t)]["decoded_token"]) for t in ids] == [(i + 1, text(t)) for i, t in enumerate(ids)]
        assert [got[str(t)]["logprob"] for t in ids] == pytest.approx([lp for _, lp in pairs], abs=1e-5)
    chat = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}], max_tokens=1,
                                                 temperature=0, extra_body={"prompt_logprobs": 1})
    scored = chat.prompt_logprobs
    assert len(scored) == chat.usage.prompt_tokens and scored[0] is None and all(1 <= len(s) <= 2 for s in scored[1:])
    assert server.engine.counters == before  # the steps the references compiled served them
    wait_idle(server)


def test_chat_echo_begins_with_the_last_assistant_message(server):
    """vLLM's chat echo: the content begins with the last message's when it is the assistant's (streamed:
    in a chunk after the role's); after a user's message it changes nothing."""
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ask = dict(model=NAME, max_tokens=1, temperature=0)
    plain, echoed = (server.client.chat.completions.create(**ask, messages=turns, extra_body={"echo": e}) for e in (False, True))
    assert echoed.choices[0].message.content == "Hello" + plain.choices[0].message.content
    chunks = server.client.chat.completions.create(**ask, messages=turns, extra_body={"echo": True}, stream=True)
    assert [c.choices[0].delta.content for c in chunks][:2] == ["", "Hello"]
    assert protocol.ChatRequest(messages=turns[:1], echo=True).echoed() == ""
    wait_idle(server)


def test_seeded_sampling_n_and_stop_strings(server):
    ref = server.refs["sampled"]
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[1]}], max_tokens=NEW,
                                                temperature=1.0, top_p=0.9, seed=SEED, presence_penalty=0.5, frequency_penalty=0.25,
                                                extra_body={"top_k": 20})
    assert out.choices[0].message.content == ref.text  # choice 0 samples with the seed itself, under the same penalties
    # n choices: distinct seeds, none another seed's first choice (seed + 1 once was)
    from jaxllm.api.protocol import ChatRequest

    seeds = [p.seed for p in ChatRequest(messages=[{"role": "user", "content": "Hi"}], n=4, seed=SEED, temperature=1.0)
             .sampling({}, 8)]
    assert seeds[0] == SEED and len(set(seeds)) == 4 and SEED + 1 not in seeds
    assert {p.seed for p in ChatRequest(messages=[{"role": "user", "content": "Hi"}], n=2).sampling({}, 8)} == {None}
    # 64-bit seeds (OpenAI's and vLLM's range, negative too) are mixed down to the engine's 32 bits, the same each time
    wide = [[p.seed for p in ChatRequest(messages=[{"role": "user", "content": "Hi"}], seed=s, n=2).sampling({}, 8)]
            for s in (2**40, -5, 2**40)]
    assert wide[0] == wide[2] and wide[0] != wide[1] and all(0 <= s < 2**32 for row in wide for s in row)

    # unset values: the checkpoint's where it names them, else OpenAI's (temperature 1, no top-k)
    hi = [{"role": "user", "content": "Hi"}]
    (plain,) = ChatRequest(messages=hi).sampling({}, 8)
    assert (plain.temperature, plain.top_p, plain.top_k) == (1.0, 1.0, 0)
    (vllm,) = ChatRequest(messages=hi, top_k=-1).sampling({"top_k": 20}, 8)  # vLLM's -1: no top-k
    assert vllm.top_k == 0
    (own,) = ChatRequest(messages=hi).sampling({"do_sample": False, "temperature": 0.6, "top_k": 20}, 8)
    assert (own.temperature, own.top_k) == (0.6, 20)
    assert ChatRequest(messages=hi, temperature=0.0).sampling({"temperature": 0.6}, 8)[0].temperature == 0.0

    full = server.refs[CHAT[0], True].text  # "The capital of France is Paris."
    stop = full.split()[3]
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}], max_tokens=NEW,
                                                temperature=0, n=2, stop=[stop, "zzz"])
    assert [(c.index, c.message.content, c.finish_reason) for c in out.choices] == [
        (i, full[: full.index(stop)], "stop") for i in range(2)]
    assert out.usage.completion_tokens < 2 * len(server.refs[CHAT[0], True].token_ids)

    # vLLM's extensions (extra_body), asked at once (the engine batches them)
    def ask(extra):
        return server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": CHAT[0]}], max_tokens=NEW,
                                                     temperature=0, extra_body={"return_token_ids": True, **extra}).choices[0]

    ref, tok = server.refs[CHAT[0], True], server.model.tokenizer
    at = next(i for i in range(2, len(ref.token_ids)) if ref.token_ids[i] not in ref.token_ids[:i])
    asks = [dict(stop=[stop], include_stop_str_in_output=True), dict(stop_token_ids=[ref.token_ids[at]]),
            dict(stop_token_ids=[ref.token_ids[at]], include_stop_str_in_output=True),
            dict(include_stop_str_in_output=True, skip_special_tokens=False), dict(skip_special_tokens=False)]
    with ThreadPoolExecutor(len(asks)) as pool:
        kept, *by_id, eos_kept, special = pool.map(ask, asks)
    # the stop string kept, with vLLM's stop_reason
    assert (kept.message.content, kept.finish_reason, kept.model_extra["stop_reason"]) == (full[: full.index(stop) + len(stop)], "stop", stop)
    # a stop token id ends the answer where greedy picks it: the id is the last token, its text is left out unless asked for
    for include, got in enumerate(by_id):
        assert (got.model_extra["token_ids"], got.finish_reason, got.model_extra["stop_reason"]) == (
            ref.token_ids[: at + 1], "stop", ref.token_ids[at])
        assert got.message.content == tok.decode(ref.token_ids[: at + include], skip_special_tokens=True)
    # the EOS that ended the answer: its text only with include_stop_str_in_output and skip_special_tokens false
    assert ref.finish_reason == "stop" and ref.token_ids[-1] in server.engine.eos
    eos_text = tok.decode(ref.token_ids[-1:], skip_special_tokens=False)
    assert eos_kept.message.content == ref.text + eos_text and special.message.content == ref.text
    # min_tokens (the engine's and TextStream's, tested against transformers and the whole decode) reaches the
    # sampling values; a request without it is not given generation_config.json's min_new_tokens (nor by vLLM's server)
    (vllm,) = ChatRequest(messages=hi, min_tokens=3, stop_token_ids=[5, 9, 5]).sampling({"min_new_tokens": 7}, 8)
    assert (vllm.min_tokens, vllm.stop_token_ids) == (3, (5, 9))
    assert ChatRequest(messages=hi).sampling({"min_new_tokens": 7}, 8)[0].min_tokens == 0
    wait_idle(server)


def test_32_concurrent_streaming_clients(server):
    async def one(client, i):
        prompt = CHAT[i % len(CHAT)]
        stream = await client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                                      max_tokens=NEW, temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        text, finish, used = [], None, None
        async for chunk in stream:
            assert "usage" in chunk.model_fields_set, chunk  # null but the last's, as OpenAI sends them (vLLM: left out)
            if chunk.usage is not None:
                used = chunk.usage.completion_tokens
            for c in chunk.choices:
                text.append(c.delta.content or "")
                finish = c.finish_reason or finish
        return prompt, "".join(text), finish, used

    async def all_clients():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(all_clients())
    for prompt, text, finish, used in results:
        ref = server.refs[prompt, True]
        assert (text, finish, used) == (ref.text, ref.finish_reason, len(ref.token_ids)), prompt
    wait_idle(server)


def test_cancel_mid_stream_frees_the_sequence(server):
    stream = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=400, temperature=0, stream=True,
                                              stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        assert "usage" in chunk.model_fields_set and chunk.usage is None, chunk  # null until the last chunk's
        got += bool(chunk.choices[0].text)
        if got == 2:
            break
    assert server.loop.stats["running"] + server.loop.stats["waiting"] == 1  # still going
    stream.close()  # the client goes away mid-answer
    health = wait_idle(server)
    assert health["total_pages"] == server.engine.blocks.num_pages


def test_full_server_answers_503_with_retry_after(server):
    server.loop.max_queue = 0  # room for one batch (8 sequences), none waiting
    try:
        # greedy: the programs the references compiled (a sampled request compiled a prefill and a decode of its own)
        body = {"model": NAME, "prompt": TEXT[0], "max_tokens": 400, "n": 8, "stream": True, "ignore_eos": True, "temperature": 0}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as held:
            assert held.status_code == 200  # its 8 sequences are in: the server is full
            refused = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "server_error"
    finally:
        server.loop.max_queue = 32
    wait_idle(server)


@pytest.mark.parametrize("fields, param", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"),
    (dict(extra_body={"temperature": "hot"}), "temperature"),
    (dict(extra_body={"max_tokens": 2.5}), "max_tokens"),
    (dict(extra_body={"stop": [1, 2]}), "stop[0]"),  # the item at fault
    (dict(extra_body={"top_k": -2}), "top_k"),
    (dict(extra_body={"top_k": 2**40}), "top_k"),  # beyond int32: once failed the engine, and every request after it
    (dict(seed=2**64), "seed"),  # beyond 64 bits (OpenAI and vLLM take int64 seeds)
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),  # beyond OpenAI's 20
    (dict(logprobs=True, top_logprobs=-1), "top_logprobs"),
    (dict(top_logprobs=3), "top_logprobs"),  # without logprobs: true, as OpenAI answers
    (dict(extra_body={"echo": "yes"}), "echo"),
    (dict(max_tokens=600), "max_tokens"),  # the prompt + max_tokens exceed the engine's 512 positions
    (dict(messages=[]), "messages"),
    (dict(n=100), "n"),  # more sequences than the server holds (batch 8 + queue 32)
    (dict(n=2**31 - 1), "n"),  # refused before n SamplingParams are built
    (dict(temperature=1e300), "temperature"),  # beyond float32: inf on the device
    (dict(messages=[{"role": "wizard", "content": "Hi"}]), "messages[0].role"),
    (dict(messages=[{"role": "user", "content": "Hi"}, {"role": "function", "content": "x"}]), "messages[1].role"),
    (dict(messages=[{"role": "user", "contents": "Hi"}]), "messages[0].content"),  # was read as an empty message
    (dict(extra_body={"stream_options": {"include_usage": "maybe"}}), "stream_options.include_usage"),
    (dict(stream_options={"include_usage": True}), "stream_options"),  # without stream: true, as OpenAI answers
    (dict(logit_bias={"5": -100.5}), "logit_bias"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tool_choice"),  # SmolLM2's template shows no format
    (dict(tools=[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {}}]),
     "tools[1].function.name"),
    (dict(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools[0].type"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
     "tools[0].function.parameters"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}] * 2), "tools[1].function.name"),  # the same name twice
    (dict(tool_choice="required"), "tool_choice"),  # no tools to call
    (dict(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "g"}}),
     "tool_choice"),  # a function no tool offers
    (dict(tool_choice="sometimes"), "tool_choice"),
    (dict(functions=[{"name": "f"}]), "functions"),
    (dict(function_call={"name": "f"}), "function_call"),
    (dict(response_format={"type": "json"}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}),
     "response_format.json_schema.schema"),  # structured outputs: refused as llguidance reads it
    (dict(response_format={"type": "json_object"}, extra_body={"guided_regex": "a"}), "guided_regex"),  # two constraints
    (dict(presence_penalty=2.5), "presence_penalty"),  # beyond OpenAI's [-2, 2]
    (dict(frequency_penalty=-3), "frequency_penalty"),
    (dict(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{'a': 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]), "messages[1].tool_calls[0].function.arguments"),
    (dict(messages=[{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}]), "messages[1].tool_call_id"),
    (dict(messages=[{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]),
     "messages[0].function_call"),
    # fields this server does not declare, that would change the answer: refused, not ignored
    (dict(modalities=["text", "audio"]), "modalities"),
    (dict(extra_body={"spaces_between_special_tokens": False}), "spaces_between_special_tokens"),  # vLLM's extensions
    (dict(extra_body={"min_tokens": 5}), "min_tokens"),  # beyond max_tokens
    (dict(extra_body={"min_tokens": -1}), "min_tokens"),
    (dict(extra_body={"stop_token_ids": [2, -1]}), "stop_token_ids"),
    (dict(extra_body={"stop_token_ids": [10**9]}), "stop_token_ids"),  # beyond the vocabulary
    (dict(extra_body={"skip_special_tokens": "no"}), "skip_special_tokens"),
    (dict(extra_body={"guided_regex": "[0-9"}), "guided_regex"),
    (dict(extra_body={"structured_outputs": {"grammar": "start: foo"}}), "structured_outputs.grammar"),
    (dict(extra_body={"continue_final_message": True, "add_generation_prompt": False}), "continue_final_message"),
    (dict(reasoning_effort="high"), "reasoning_effort"),
    (dict(extra_body={"prompt_logprobs": -1}), "prompt_logprobs"),  # vLLM's -1 (the whole vocabulary) is not served
    (dict(extra_body={"prompt_logprobs": 21}), "prompt_logprobs"),
    (dict(extra_body={"prompt_logprobs": True}), "prompt_logprobs"),
    (dict(extra_body={"prompt_logprobs": 1}, stream=True), "prompt_logprobs"),  # as vLLM: no chunk carries them
    # fields nobody defines (a misspelt one): refused as OpenAI's API refuses them, not ignored
    (dict(extra_body={"temprature": 0}), "temprature"),
    (dict(extra_body={"some_other_field": None}), "some_other_field"),
    # fields that change no answer here, of a type OpenAI's API refuses: were taken
    (dict(extra_body={"user": 5}), "user"),
    (dict(extra_body={"parallel_tool_calls": "no"}), "parallel_tool_calls"),
])
def test_bad_fields_answer_400_with_openai_error_json(server, fields, param):
    fields = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        server.client.chat.completions.create(**fields)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == param
    assert err.value.body["message"]


def test_malformed_json_and_bad_completions_answer_400(server):
    bodies = {b'{"prompt": "Hi", "max_tokens": 4': None, b"[1, 2]": None, b"": None, b'{"max_tokens": 4}': "prompt",
              b'{"prompt": "Hi", "logprobs": 21}': "logprobs", b'{"prompt": "Hi", "logprobs": -1}': "logprobs",
              b'{"prompt": "Hi", "max_tokens": 0}': "max_tokens", b'{"prompt": "Hi", "max_tokens": 0, "echo": false}': "max_tokens", b'{"prompt": [5, 99999999]}': "prompt", b'{"prompt": []}': "prompt",
              b'{"prompt": [1, 2.5]}': "prompt", b'{"prompt": "Hi", "best_of": 3}': "best_of", 
              b'{"prompt": "Hi", "suffix": "x"}': "suffix", b'{"prompt": "Hi", "logit_bias": {"5": 101}}': "logit_bias",
              b'{"prompt": "Hi", "logit_bias": {"five": 1}}': "logit_bias", b'{"prompt": "Hi", "logit_bias": {"99999999": 1}}': "logit_bias",
              b'{"prompt": "Hi", "n": 2, "best_of": 1}': "best_of", b'{"prompt": "Hi", "temperature": 1e400}': "temperature",
              b'{"prompt": "Hi", "stream": false, "stream_options": {"include_usage": true}}': "stream_options",
              b'{"prompt": "Hi", "max_token": 5}': "max_token", b'{"prompt": "Hi", "store": true}': "store",
              # round 3 of the hostile-input audit: JSON's literals beyond numbers, a token named twice, UTF-16 text
              b'{"prompt": "Hi", "top_p": NaN}': "top_p", b'{"prompt": "Hi", "frequency_penalty": -Infinity}': "frequency_penalty",
              b'{"prompt": "Hi", "logit_bias": {"5": Infinity}}': "logit_bias", b'{"prompt": "Hi", "n": Infinity}': "n",
              b'{"prompt": "Hi", "logit_bias": {"5": 1, "05": -1}}': "logit_bias", b'{"prompt": "Hi", "max_tokens": 1e2}': "max_tokens",
              '{"prompt": "Hi"}'.encode("utf-16"): None}
    for body, param in bodies.items():
        r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param and error["message"], body
    assert "UTF-16 text: send it as UTF-8" in error["message"], error
    bom = httpx.post(server.url + "/v1/completions", content=b'\xef\xbb\xbf{"prompt": "Hi", "max_tokens": 1, "temperature": 0}',
                     timeout=60)  # greedy: sampled, it compiled a prefill no other request needs
    assert bom.status_code == 200, bom.text  # a byte order mark, which JSON's RFC lets a parser ignore
    wait_idle(server)


def test_max_completion_tokens_errors_name_it(server):
    """A chat request that limits its answer with max_completion_tokens (max_tokens' newer name,
    what recent clients send) is told about max_completion_tokens, not a max_tokens it never
    sent; the two names with different values are refused rather than one silently winning."""
    def error(**fields):
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "temperature": 0, **fields})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    e = error(max_completion_tokens=0)
    assert e["param"] == "max_completion_tokens" and e["message"].startswith("max_completion_tokens=0 is invalid"), e
    e = error(max_completion_tokens=600)  # beyond the engine's 512 positions
    assert "max_completion_tokens=600" in e["message"] and "max_tokens" not in e["message"].replace("max_completion_tokens", ""), e
    e = error(max_tokens=3, max_completion_tokens=5)
    assert e["param"] == "max_completion_tokens" and "max_tokens=3 and max_completion_tokens=5" in e["message"], e
    assert error(max_tokens=0)["param"] == "max_tokens"
    out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], temperature=0,
                                                max_tokens=2, max_completion_tokens=2)
    assert out.usage.completion_tokens == 2
    wait_idle(server)


def test_chat_without_max_tokens_that_fills_the_context_names_the_messages(server):
    """Without max_tokens a chat answer may take the rest of the context; messages that leave none
    are refused on 'messages' with their token count, not as a 'max_tokens=1' the client never sent."""
    words = server.engine.max_len  # "hi " is one token each: the template's tokens push it past the context
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={"messages": [{"role": "user", "content": "hi " * words}]})
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert (e["param"], e["code"]) == ("messages", "context_length_exceeded") and "max_tokens" not in e["message"], e
    assert f"{server.engine.max_len:,} tokens of context" in e["message"], e
    wait_idle(server)


def test_bad_input_messages_name_the_fix(server):
    def message(path, body):
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400, body
        return r.json()["error"]["message"]

    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert "'wizard'" in message("/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "Hi"}]})
    assert "system, user, assistant, tool" in message("/v1/chat/completions", {**chat, "messages": [{"role": "wizard"}]})
    assert message("/v1/completions", {"prompt": [1, 2.5]}).startswith(
        "invalid value for 'prompt': token ids must be whole numbers, got 2.5")
    assert "token ids must be whole numbers, got true" in message("/v1/completions", {"prompt": [[1], [2, True]]})
    assert message("/v1/completions", {"prompt": "Hi", "n": 100000}).endswith("use n <= 40")
    assert message("/v1/completions", {"prompt": ["a", "b", "c"], "n": 20}).endswith("use n <= 13")
    assert message("/v1/chat/completions", {**chat, "tools": [{"type": "function"}]}) == (
        "the body lacks 'tools[0].function', which this endpoint needs: add it")
    assert message("/v1/chat/completions", {**chat, "temprature": 0}) == (
        "Unrecognized request argument supplied: temprature (did you mean 'temperature'?): fix its name, or leave it out")
    assert message("/v1/completions", {"prompt": "Hi", "max_token": 5}).startswith(
        "Unrecognized request argument supplied: max_token (did you mean 'max_tokens'?)")


def test_neutral_values_of_unsupported_fields_and_the_developer_role_are_accepted(server):
    neutral = dict(logit_bias={}, tools=[], tool_choice="none", response_format={"type": "text"}, modalities=["text"],
                   extra_body={"functions": [], "function_call": "none", "presence_penalty": 0, "min_tokens": 0,
                               "stop_token_ids": [], "skip_special_tokens": True, "add_generation_prompt": True,
                               "spaces_between_special_tokens": True,
                               "verbosity": "medium"},
                   # OpenAI's fields that change no answer here: accepted
                   user="u1", store=False, metadata={"k": "v"}, service_tier="auto", parallel_tool_calls=False)
    used = {}
    for role in ("system", "developer"):  # developer is read as system
        out = server.client.chat.completions.create(model=NAME, max_tokens=1, temperature=0, **neutral, messages=[
            {"role": role, "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        used[role] = out.usage.prompt_tokens
    assert used["developer"] == used["system"]
    out = server.client.completions.create(model=NAME, prompt="Hi", max_tokens=1, temperature=0, n=2, best_of=2,
                                           logit_bias=None, echo=False, user="u1")
    assert len(out.choices) == 2
    wait_idle(server)


def test_null_optional_fields_take_their_defaults(server):
    """OpenAI's optional fields are nullable: a client that serializes unset values as null (n,
    stream, presence_penalty, logprobs, echo, ...) gets the defaults, not a 400."""
    nulls = {k: None for k in ("n", "stream", "stream_options", "presence_penalty", "frequency_penalty", "logit_bias",
                               "seed", "stop", "top_p", "user", "ignore_eos", "return_token_ids")}
    ref = server.refs[CHAT[0], True]
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        **nulls, "messages": [{"role": "user", "content": CHAT[0], "name": None}], "max_tokens": NEW, "temperature": 0,
        "logprobs": None, "top_logprobs": None, "max_completion_tokens": None, "tools": None})
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert (choice["message"]["content"], choice["logprobs"]) == (ref.text, None) and "token_ids" not in choice
    ref = server.refs[TEXT[0], False]
    r = httpx.post(server.url + "/v1/completions", timeout=60, json={
        **nulls, "prompt": TEXT[0], "max_tokens": NEW, "temperature": 0, "logprobs": None, "echo": None, "best_of": None,
        "suffix": None})
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["choices"]] == [ref.text]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": None, "max_tokens": 2})  # a required field stays required
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    wait_idle(server)


def test_unknown_paths_and_wrong_methods_answer_openai_error_json(server):
    for method, path, status in [("GET", "/v1/nope", 404), ("POST", "/v1/embeddings", 404),
                                 ("GET", "/v1/completions", 405), ("POST", "/v1/models", 405)]:
        r = httpx.request(method, server.url + path)
        assert r.status_code == status, (method, path)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["message"].startswith(f"{method} {path}: ")
    assert "POST /v1/chat/completions" in httpx.get(server.url + "/v1/nope").json()["error"]["message"]
    assert httpx.get(server.url + "/v1/completions").headers["Allow"] == "POST"
    with pytest.raises(openai.NotFoundError):
        server.client.embeddings.create(model=NAME, input="Hi")


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('Conversation roles must alternate') }}", "the chat template refused the messages: Conversation roles must alternate"),
    ("{{ messages }", "the tokenizer's chat template is invalid (line 1: "),
])
def test_chat_template_errors_answer_400(server, monkeypatch, template, message):
    """A template that refuses the messages, or does not parse: 400 on 'messages', the server goes on."""
    monkeypatch.setattr(server.engine.model.tokenizer, "chat_template", template)
    with pytest.raises(openai.BadRequestError) as err:
        server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert err.value.body["param"] == "messages" and message in err.value.body["message"]


def test_chat_template_kwargs_reach_the_template(server, monkeypatch):
    """A request's chat_template_kwargs (vLLM's field) are variables its chat template reads; a bad
    one answers 400 on that field."""
    tok = server.engine.model.tokenizer
    monkeypatch.setattr(tok, "chat_template", "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}"
                                              "{{ messages[-1]['content'] }}")
    for variables, text in (({"enable_thinking": False}, "/no_think Hi"), (None, "Hi")):
        out = server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                                    temperature=0, extra_body={"chat_template_kwargs": variables})
        assert out.usage.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
    for bad, said in (([1], "chat_template_kwargs': Input should be an object"), ({"add_generation_prompt": False}, "is not a template variable")):
        with pytest.raises(openai.BadRequestError) as err:
            server.client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                                  extra_body={"chat_template_kwargs": bad})
        assert err.value.body["param"] == "chat_template_kwargs" and said in err.value.body["message"], err.value.body


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
TOOL_ANSWER = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_TEMPLATE = ("{% for t in tools or [] %}[{{ t.function.name }}{{ t.function.parameters.properties | list }}]{% endfor %}"
                 "{% for m in messages %}<{{ m.role }}>{% for c in m.tool_calls or [] %}{{ c.id }} {{ c.function.name }}"
                 "{{ c.function.arguments | tojson }}{% endfor %}{% if m.tool_call_id %}({{ m.tool_call_id }}) {% endif %}"
                 "{{ m.content }}{% endfor %}<assistant>")


def _scripted(text: str, size: int = 7):
    """An Output whose answer is `text` (`size` characters an event, the rest as it ends), ended by the
    model ("stop"): the engine runs the request as ever; its text is the one the test needs."""

    class Scripted(api_app.Output):
        sent = 0

        def push(self, tokens, logprobs, finished, error=False, top=None):
            super().push(tokens, logprobs, finished, error, top)
            piece = text[self.sent :] if finished else text[self.sent : self.sent + size]
            self.sent += len(piece)
            if finished:
                self.finish_reason, self.stop_reason = "stop", None
            return piece

        @property
        def text(self):
            return text[: self.sent]

    return Scripted


def test_tool_calls_through_the_openai_client(server, monkeypatch):
    """Tools reach the chat template; a Hermes call in the answer comes back as the client's
    message.tool_calls (streamed: as tool-call deltas), the text around it as content; the call and
    its result go back to the template as an assistant's tool_calls and a tool message."""
    tok = server.engine.model.tokenizer
    for holder in (tok, tok.transformers):  # tools and tool calls render through transformers' tokenizer
        monkeypatch.setattr(holder, "chat_template", TOOL_TEMPLATE)
    monkeypatch.setattr(server.app_server, "tool_format", tool_calls.Hermes)
    monkeypatch.setattr(api_app, "Output", _scripted(TOOL_ANSWER, TOOL_ANSWER.index("Paris")))  # 1st event: into the arguments
    rendered, encode_messages = [], protocol.encode_messages

    def spy(tokenizer, *args):
        ids = encode_messages(tokenizer, *args)
        rendered.append(tokenizer.decode(ids))
        return ids

    monkeypatch.setattr(protocol, "encode_messages", spy)
    offered = "[get_weather['city']]<user>Weather in Paris?"  # prompts within the 64 tokens the fixture's prefill compiled
    ask = dict(model=NAME, tools=TOOLS, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Weather in Paris?"}])
    out = server.client.chat.completions.create(**ask)
    assert rendered[-1] == offered + "<assistant>"
    (choice,) = out.choices
    (call,) = choice.message.tool_calls
    assert (choice.finish_reason, choice.message.content, call.type, call.function.name) == (
        "tool_calls", "Let me check.", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")

    chunks = [c for c in server.client.chat.completions.create(**ask, stream=True) if c.choices]
    deltas = [c.choices[0].delta for c in chunks]
    first, *rest = [t for d in deltas for t in d.tool_calls or []]  # the arguments in pieces, as they arrived
    assert "".join(d.content or "" for d in deltas) == "Let me check." and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather") and first.id.startswith("call_")
    assert rest and all((t.index, t.id, t.type, t.function.name) == (0, None, None, None) for t in rest)
    assert "".join(t.function.arguments for t in [first, *rest]) == call.function.arguments

    back = [*ask["messages"], {"role": "assistant", "content": None, "tool_calls": [{**call.model_dump(), "id": "c1"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]
    out = server.client.chat.completions.create(**{**ask, "messages": back}, tool_choice="none")  # the answer stays text
    assert rendered[-1] == offered + '<assistant>c1 get_weather{"city": "Paris"}<tool>(c1) 18 C<assistant>'
    assert (out.choices[0].message.content, out.choices[0].message.tool_calls, out.choices[0].finish_reason) == (
        TOOL_ANSWER, None, "stop")
    monkeypatch.setattr(server.app_server, "tool_format", None)  # --tool-call-parser none: tools with 'auto' refused
    monkeypatch.setattr(server.app_server, "tool_parser", "none")
    with pytest.raises(openai.BadRequestError) as err:
        server.client.chat.completions.create(**ask)
    assert err.value.body["param"] == "tool_choice" and "(it was started with --tool-call-parser none)" in err.value.body["message"]
    wait_idle(server)


FORCED_TOOLS = [{"type": "function", "function": {"name": name, "parameters": {
    "type": "object", "properties": {key: {"enum": values}}, "required": [key], "additionalProperties": False}}}
    for name, key, values in (("get_weather", "city", ["Paris", "Rome"]), ("get_time", "zone", ["UTC", "CET"]))]


def test_structured_outputs_and_forced_tool_calls(server):
    """response_format json_schema answers JSON of the schema; tool_choice 'required' answers calls of the tools
    (finish_reason "tool_calls"), a named function that function's call (finish_reason "stop", as OpenAI and vLLM);
    vLLM's guided_choice one of the choices. Sent at once (greedy): they decode together."""
    ask = dict(model=NAME, max_tokens=48, temperature=0, messages=[{"role": "user", "content": "Plan a trip as JSON."}])
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1,
                                                                                             "maximum": 9}},
              "required": ["city", "days"], "additionalProperties": False}
    chat = server.client.chat.completions.create
    with prefilled_together(server, 4), ThreadPoolExecutor(4) as pool:
        asked = [pool.submit(chat, **ask, response_format={"type": "json_schema", "json_schema": {
                     "name": "trip", "schema": schema, "strict": True}}),
                 pool.submit(chat, **ask, tools=FORCED_TOOLS, tool_choice="required"),
                 pool.submit(chat, **ask, tools=FORCED_TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}),
                 pool.submit(chat, **ask, extra_body={"guided_choice": ["Rome", "Milan"]})]
        schema_out, required, named, choice = (f.result().choices[0] for f in asked)
    answer = json.loads(schema_out.message.content)
    assert answer["city"] in ("Paris", "Rome") and 1 <= answer["days"] <= 9 and schema_out.finish_reason == "stop"
    assert required.finish_reason == "tool_calls" and required.message.tool_calls and not required.message.content
    for call in required.message.tool_calls:
        assert json.loads(call.function.arguments) in ([{"city": c} for c in ("Paris", "Rome")] if call.function.name == "get_weather"
                                                       else [{"zone": z} for z in ("UTC", "CET")]), call
    (call,) = named.message.tool_calls
    assert (named.finish_reason, call.function.name, named.message.content) == ("stop", "get_time", None)
    assert json.loads(call.function.arguments)["zone"] in ("UTC", "CET") and call.id.startswith("call_")
    assert choice.message.content in ("Rome", "Milan") and choice.finish_reason == "stop"
    wait_idle(server)


def test_stop_lists_are_bounded(server):
    """Each stop string is searched for at every token of every choice, on the event loop that
    serves all clients: more than 16 strings, or one over 1,000 characters, is a 400 on 'stop'
    (a list of 2 million stop strings held every stream for seconds a token)."""
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
    for stop, said in [(["a"] * 17, "stop holds 17 strings"), (["x", "b" * 1001], "stop[1] is 1,001 characters"),
                       ("c" * 1001, "stop is 1,001 characters")]:
        r = httpx.post(server.url + "/v1/chat/completions", json={**chat, "stop": stop}, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "stop" and said in r.json()["error"]["message"], r.text
    stops = ["z" * 999 + chr(ord("A") + i) for i in range(16)]
    r = httpx.post(server.url + "/v1/chat/completions", json={**chat, "stop": stops}, timeout=60)
    assert r.status_code == 200, r.text
    wait_idle(server)


def test_too_many_prompts_are_refused_before_encoding(server, monkeypatch):
    """More prompts than the server holds are refused before any is encoded: 100,000 short texts
    took the tokenizing thread (every client's) over a second only to be refused by their count."""
    from jaxllm.api import protocol

    encoded = []
    real = protocol.encode
    monkeypatch.setattr(protocol, "encode", lambda tok, text, **k: encoded.append(text) or real(tok, text, **k))
    r = httpx.post(server.url + "/v1/completions", json={"prompt": ["Hi"] * 41, "max_tokens": 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    assert encoded == []


def test_more_messages_than_the_context_holds_are_refused_before_rendering(server, monkeypatch):
    """Each message renders to at least one token, so more messages than max_len are refused on
    'messages' before the chat template runs (100,000 empty messages took 6 s of the tokenizing
    thread, then were refused by their token count)."""
    from jaxllm.api import protocol

    rendered = []
    real = protocol.encode_messages
    monkeypatch.setattr(protocol, "encode_messages", lambda tok, msgs: rendered.append(len(msgs)) or real(tok, msgs))
    messages = [{"role": "user", "content": ""}] * (server.engine.max_len + 1)
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}, timeout=60)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert (e["param"], e["code"]) == ("messages", "context_length_exceeded") and f"{len(messages):,} messages" in e["message"], e
    assert rendered == []


def test_context_length_errors_name_the_field_to_change(server):
    """A prompt that does not fit with its max_tokens is refused as OpenAI does: code
    context_length_exceeded, param the field to change (max_tokens while the prompt leaves room,
    else the prompt or messages, prompt[i] in a batch), and a fix the client can make (not the
    server's max_len)."""
    def error(path, body):
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400, r.text
        e = r.json()["error"]
        assert e["code"] == "context_length_exceeded" and "max_len" not in e["message"] and "\n" not in e["message"], e
        return e["param"], e["message"]

    chat = "/v1/chat/completions"
    param, message = error(chat, {"messages": [{"role": "user", "content": "hi " * 400}], "max_tokens": 200})
    assert param == "max_tokens" and message.startswith("the messages hold 431 tokens") and "max_tokens to at most 81" in message
    param, message = error(chat, {"messages": [{"role": "user", "content": "hi " * 400}], "max_completion_tokens": 200})
    assert param == "max_completion_tokens" and "max_completion_tokens to at most 81" in message
    param, message = error(chat, {"messages": [{"role": "user", "content": "hi " * 600}], "max_tokens": 2})
    assert param == "messages" and message.startswith("the messages hold 631 tokens")
    param, message = error("/v1/completions", {"prompt": "hi " * 600, "max_tokens": 2})
    assert param == "prompt" and message.startswith("the prompt holds 601 tokens")
    param, message = error("/v1/completions", {"prompt": ["hi", "hi " * 600], "max_tokens": 2})
    assert param == "prompt[1]" and message.startswith("prompt[1] holds 601 tokens")
    param, message = error("/v1/completions", {"prompt": [1] * 9000, "max_tokens": 2})  # beyond the model's 8,192 positions too
    assert param == "prompt" and message.startswith("the prompt holds 9,000 tokens")
    wait_idle(server)


def test_a_model_not_served_answers_404(server):
    """A request for a model this server does not serve is a 404 model_not_found, as OpenAI's and
    vLLM's servers answer it (the openai client's NotFoundError), not a 400."""
    for path, body in [("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}), ("/v1/completions", {"prompt": "Hi"})]:
        r = httpx.post(server.url + path, json={**body, "model": "gpt-4o", "max_tokens": 1}, timeout=60)
        assert r.status_code == 404, r.text
        e = r.json()["error"]
        assert (e["param"], e["code"]) == ("model", "model_not_found") and f"'{NAME}'" in e["message"], e
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)


def test_content_parts(server):
    """Text parts read as OpenAI's API reads them (one part: the same answer as the string); a part
    of another type, or a text part without text, is a 400 naming that part and the fix."""
    ref = server.refs[CHAT[0], True]
    out = server.client.chat.completions.create(model=NAME, max_tokens=NEW, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": CHAT[0]}]}])
    assert out.choices[0].message.content == ref.text

    def error(content):
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}], "max_tokens": 1})
        assert r.status_code == 400, r.text
        return r.json()["error"]["param"], r.json()["error"]["message"]

    param, message = error([{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}])
    assert param == "messages[1].content[1].type" and "'image_url'" in message and '"type": "text"' in message, message
    param, message = error([{"type": "text"}])
    assert param == "messages[1].content[0].text" and "add its text" in message, message
    wait_idle(server)


def test_an_add_that_raises_fails_its_request_instead_of_hanging(server, monkeypatch, capsys):
    """Engine.add raising something other than a JaxllmError (a bug) ends that request with a 500,
    as a failing step does, instead of leaving its client waiting for ever; later requests are served."""
    real = server.engine.add

    def broken(req):
        raise RuntimeError("injected add failure")

    monkeypatch.setattr(server.engine, "add", broken)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": TEXT[0], "max_tokens": 2, "temperature": 0}, timeout=30)
    assert r.status_code == 500 and "injected add failure" in r.json()["error"]["message"], r.text
    monkeypatch.setattr(server.engine, "add", real)
    out = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=NEW, temperature=0)
    assert out.choices[0].text == server.refs[TEXT[0], False].text
    wait_idle(server)
    assert "injected add failure" in capsys.readouterr().err


def test_a_bad_prompt_in_a_batch_is_named_by_its_index(server):
    """Token ids beyond the vocabulary, or an empty prompt, in a batch of prompts: the error names
    prompt[i] (message and param), so a client with many prompts knows which to fix."""
    for prompt, said in [([[1, 2], [5, 99999999]], "prompt[1] must lie in [0, "), (["Hi", "there", ""], "prompt[2] holds no token ids")]:
        r = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=60)
        assert r.status_code == 400, r.text
        e = r.json()["error"]
        assert e["param"] == said[:9] and e["message"].startswith(said), e
    r = httpx.post(server.url + "/v1/completions", json={"prompt": [5, 99999999], "max_tokens": 1}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and r.json()["error"]["message"].startswith("prompt must")


def test_request_bodies_over_the_limit_answer_413_before_parsing(server, monkeypatch):
    """A body over --max-request-bytes (default: 16 bytes per token of context, at least 1 MiB) is
    refused with a 413 and OpenAI's error JSON before it is parsed (parsing holds the event loop,
    and every stream: 10 MB of messages took 3 s): by its Content-Length, or counted as a chunked
    body arrives. A body at the limit is served."""
    limit = server.app_server.max_request_bytes
    assert limit == api_app.default_request_bytes(server.engine.max_len) == 1 << 20  # max_len 512: the 1 MiB floor
    parsed = []
    real = api_app.parse
    monkeypatch.setattr(api_app, "parse", lambda kind, raw: parsed.append(len(raw)) or real(kind, raw))
    small = b'{"prompt": "Hi", "max_tokens": 1, "temperature": 0}'
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = httpx.post(server.url + path, content=small + b" " * (limit + 1 - len(small)), headers=headers, timeout=60)
        assert r.status_code == 413, r.text
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["type"] == "invalid_request_error" and "\n" not in e["message"]
        assert e["message"].startswith(f"the request body holds {limit + 1:,} bytes, more than the {limit:,}"), e
        assert "--max-request-bytes" in e["message"], e
    chunks = iter([small] + [b" " * 65536] * 17)  # chunked: no Content-Length; refused once 1 MiB has come
    r = httpx.post(server.url + "/v1/completions", content=chunks, headers=headers, timeout=60)
    assert r.status_code == 413 and f"more than {limit:,} bytes" in r.json()["error"]["message"], r.text
    assert parsed == []
    r = httpx.post(server.url + "/v1/completions", content=small + b" " * (limit - len(small)), headers=headers, timeout=60)
    assert r.status_code == 200 and parsed == [limit], r.text
    assert parse_args([]).max_request_bytes is None and parse_args(["--max-request-bytes", "4096"]).max_request_bytes == 4096
    wait_idle(server)


def test_a_client_gone_mid_body_logs_no_traceback(server, caplog):
    """A client that hangs up while sending its body (Content-Length or chunked) is nobody's
    error: the server logged Starlette's ClientDisconnect as 'Exception in ASGI application' with
    a 30-line traceback each time, which any client could repeat at will."""
    log = logging.getLogger("uvicorn.error")
    log.addHandler(caplog.handler)
    try:
        for head in (b"Content-Length: 1000\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n5\r\n"):
            with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head + b'{"pro')
                time.sleep(0.3)  # the server reads what came, and waits for the rest
        out = server.client.completions.create(model=NAME, prompt=TEXT[0], max_tokens=1, temperature=0)  # the server goes on
        assert out.choices[0].finish_reason == "length"
    finally:
        log.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    wait_idle(server)


def test_a_body_sent_as_another_media_type_answers_415(server, monkeypatch):
    """A POST whose Content-Type is not JSON (a browser form's, text/plain: what a web page may
    send cross-site without asking, so any page a user opens could run requests on a server on
    their machine; curl -d without -H) is refused with a 415 naming the fix, before it is read,
    as FastAPI (vLLM's server) refuses it; application/json (any parameters), +json types and
    no Content-Type at all are read as JSON."""
    parsed = []
    real = api_app.parse
    monkeypatch.setattr(api_app, "parse", lambda kind, raw: parsed.append(kind) or real(kind, raw))
    body = b'{"prompt": "Hi", "max_tokens": 1, "temperature": 0}'
    for kind in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": kind}, timeout=60)
        assert r.status_code == 415, (kind, r.text)
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["type"] == "invalid_request_error", e
        assert kind.split(";")[0] in e["message"] and "Content-Type: application/json" in e["message"] and "\n" not in e["message"], e
    assert parsed == []
    r = httpx.post(server.url + "/v1/completions", content=gzip.compress(body), timeout=60,
                   headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding: gzip" in r.json()["error"]["message"], r.text
    assert parsed == []
    for kind in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json", None):
        r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": kind} if kind else {}, timeout=60)
        assert r.status_code == 200, (kind, r.text)
    wait_idle(server)


def test_a_server_without_a_tokenizer_refuses_what_needs_one(server):
    """A model without tokenizer files serves token-id prompts; stop strings, found in the decoded text, were ignored
    (the answer ran to max_tokens): refused on 'stop', naming stop_token_ids. A text prompt and a chat need it too."""
    from starlette.testclient import TestClient

    model = dataclasses.replace(server.model, tokenizer=None, engines={})  # the weights shared, nothing compiled: all refused
    app = build_app(model, jaxllm.Engine(model, batch_size=1, max_len=64), name="ids-only")
    with TestClient(app) as client:
        for path, body, param, says in [
                ("/v1/completions", {"prompt": [1, 2], "stop": ["x"]}, "stop", "send the tokens that end an answer as stop_token_ids"),
                ("/v1/completions", {"prompt": "Hi"}, "prompt", "this model has no tokenizer: give the prompt as token ids"),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, "messages", "no chat template")]:
            r = client.post(path, json={"max_tokens": 1, **body})
            assert r.status_code == 400 and r.json()["error"]["param"] == param and says in r.json()["error"]["message"], r.text


def test_structured_errors_found_as_the_engine_takes_a_request_name_their_field():
    """llguidance compiles a constraint for the model's tokenizer as the engine takes the request (100,000 guided_choice
    strings fail there, in 2 s: here the error alone): the 400 names the field that sent it, as the checks before do;
    the request's other errors keep their names (max_tokens for SamplingParams' max_new_tokens)."""
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    for field, value in [("guided_choice", ["a"]), ("response_format.json_schema.schema",
                                                    {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})]:
        body = parsing.parse(protocol.ChatRequest, json.dumps({**chat, field.split(".")[0]: value}).encode())
        error = body.refusal(StructuredError("structured choice is invalid: panic: assertion failed"))
        assert (error.status, error.param, error.message) == (400, field, f"{field}: structured choice is invalid: panic: "
                                                                          "assertion failed")
    error = body.refusal(GenerationError("max_new_tokens=0 is invalid"))
    assert (error.param, error.message) == ("max_tokens", "max_tokens=0 is invalid")


def test_a_bad_value_inside_a_union_field_is_named_where_it_lies(server):
    """Fields of several shapes (content: a string or a list of parts; stop: a string or a list):
    the error names the alternative the value took, down to the item at fault, not the first
    alternative's complaint ("'messages[0].content': Input should be a valid string" for a part
    without its type sent the client to fix what was right)."""
    def error(body):
        r = httpx.post(server.url + "/v1/chat/completions", json={"max_tokens": 1, **body}, timeout=60)
        assert r.status_code == 400, r.text
        return r.json()["error"]["param"], r.json()["error"]["message"]

    def user(content):
        return {"messages": [{"role": "user", "content": content}]}

    assert error(user([{"type": "text", "text": "Hi"}, {"text": "x"}])) == (
        "messages[0].content[1].type", "the body lacks 'messages[0].content[1].type', which this endpoint needs: add it")
    assert error(user([{"type": "text", "text": 5}])) == (
        "messages[0].content[0].text", "invalid value for 'messages[0].content[0].text': Input should be a valid string")
    assert error({**user("Hi"), "stop": ["a", 5]}) == ("stop[1]", "invalid value for 'stop[1]': Input should be a valid string")
    assert error(user(5))[0] == "messages[0].content"  # neither shape: the field itself

