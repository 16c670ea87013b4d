"""The HTTP side of `python -m jaxllm.serve`: a Starlette app with OpenAI's endpoints over one
EngineLoop (jaxllm/api/engine_loop.py).

    GET  /v1/models            the one model served (GET /v1/models/{model}: its card)
    GET  /health               200 and the engine's counts (running, waiting, free/total pages, compiles); 503 and
                               why once it takes no new work (stopping, or the engine failed for good)
    POST /v1/completions       prompts as text (no chat template) or token ids
    POST /v1/chat/completions  messages through the tokenizer's chat template (tools too: their calls are
                               read from the answer by tool_calls.py's format)

A request becomes one sequence per (prompt, choice), submitted together; each choice's tokens
go through a TextStream (incremental detokenization, stop strings) as events
arrive, and a choice that meets a stop string is cancelled in the engine. `stream: true` answers
as server-sent events ending with `data: [DONE]`. A client that disconnects cancels its
sequences. A full server (more than the batch plus --max-queue sequences) answers 503 with
Retry-After; a request still open when the server stops (serve.http_server), or any once the engine has failed
and could not start again, 503 too (a stream: an error event, then [DONE]); a body over --max-request-bytes 413 (before it is parsed), one not sent as JSON
415; a bad request 400, a model not served or an unknown path 404 and a wrong method 405, an answer the engine
ended with finish reason "error" (non-finite logits) 500 saying why (a stream: its last chunk, then that error event),
each with OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxllm import tokenizing
from jaxllm.api import forced_tools, tool_calls
from jaxllm.api.engine_loop import EngineFailed, EngineLoop, QueueFull, Submission
from jaxllm.api.errors import APIError
from jaxllm.api.parsing import parse
from jaxllm.api.protocol import ChatRequest, CompletionRequest, bad_request
from jaxllm.api.responses import ChatFormat, CompletionFormat, Format, Piece, usage
from jaxllm.chat_template import check_template_kwargs
from jaxllm.engine import Engine, Request
from jaxllm.errors import JaxllmError, shown
from jaxllm.generation import Output
from jaxllm.sampling import SamplingParams

log = logging.getLogger("jaxllm")

RETRY_AFTER_S = 1
MIN_REQUEST_BYTES = 1 << 20  # the default body limit: 16 bytes per token of context, at least this


def default_request_bytes(max_len: int) -> int:
    """The largest request body taken by default: room for a context of token ids (up to 8 bytes
    each as JSON: '128255, ') or of escaped text (CJK as '\\uXXXX': 6 bytes a character), twice
    over, and at least 1 MiB. Parsing a body holds the event loop (and every stream) ~0.3 s a MB."""
    return max(MIN_REQUEST_BYTES, 16 * max_len)


class Server:
    """The endpoints over one model and its EngineLoop."""

    def __init__(self, model, engine_loop: EngineLoop, name: str, max_request_bytes: int | None = None,
                 template_kwargs: dict | None = None, tool_parser: str = "auto"):
        self.model, self.loop, self.name, self.template_kwargs = model, engine_loop, name, template_kwargs
        self.created = int(time.time())  # the model card's "created": when this server began serving it (OpenAI's: a Unix time)
        self.engine: Engine = engine_loop.engine
        self.max_request_bytes = max_request_bytes or default_request_bytes(self.engine.max_len)
        self.tokenizer = model.tokenizer
        self.tool_parser = tool_parser  # --tool-call-parser; tool_format: the format it chose (None: none)
        self.tool_format = tool_calls.choose(tool_parser, getattr(self.tokenizer, "chat_template", None))
        self.token_bytes = tokenizing.byte_reader(self.tokenizer) if self.tokenizer is not None else None
        # A text longer than max_len x the longest token's bytes cannot fit: refused before it is
        # encoded (tens of MB of text would take a minute of a core and GBs of token lists).
        self.most_text_bytes = None if self.token_bytes is None else self.engine.max_len * max(
            len(self.token_bytes(i)) for i in range(self.tokenizer.backend_tokenizer.get_vocab_size()))
        self.eos = {int(t) for t in self.engine.eos if t >= 0}
        # Prompts are tokenized (and chat templates applied) off the event loop, one at a time (a
        # tokenizer is not safe to share between threads): a 4.5 MB prompt takes 4 s to encode on
        # a 2-core CPU, during which every other client's stream would otherwise stop.
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxllm-tokenize")

    def _check_texts(self, texts: list[str], field: str) -> None:
        most = self.most_text_bytes
        if most is None:  # no tokenizer: prompts come as token ids
            return
        for text in texts:
            size = len(text.encode()) if 4 * len(text) > most else 0  # UTF-8: <= 4 bytes a character
            if size > most:
                raise APIError(400, f"the {field} holds {size:,} bytes of text, more than the {self.engine.max_len:,} "
                               f"tokens this server takes can hold (at most {most:,} bytes): shorten it", field)

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, fn, *args)

    def token_text(self, token: int) -> str:
        """A token's text in logprobs: its own bytes read as UTF-8 (what `bytes` holds, so the two
        agree; SentencePiece's "▁Hello" is " Hello", where decode([token]) drops the space)."""
        if self.tokenizer is None:
            return f"token_id:{token}"
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def _card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "jaxllm", "max_model_len": self.engine.max_len}

    async def models(self, request: HTTPRequest) -> Response:
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model_card(self, request: HTTPRequest) -> Response:
        """GET /v1/models/{model} (the openai client's models.retrieve): the card, or 404 as OpenAI answers."""
        asked = request.path_params["model"]
        if asked != self.name:
            raise self._not_served(asked)
        return JSONResponse(self._card())

    def _not_served(self, asked: str) -> APIError:
        """404 for a model not served, as OpenAI's and vLLM's servers answer it; the name asked for cut to a line (a
        client's 1 MB or multi-line 'model' was echoed whole)."""
        return APIError(404, f"model {shown(asked, 100)} is not served here: this server serves {self.name!r} (GET /v1/models)",
                        "model", "model_not_found")

    async def health(self, request: HTTPRequest) -> Response:
        """200 and the engine's counts while the server takes work; 503 and why (one line) once it takes none: the
        engine failed for good, or the server is stopping (load balancers' probes then send clients elsewhere)."""
        why = self.loop.unavailable
        if why is not None:
            status = "error" if self.loop.error is not None else "stopping"
            return JSONResponse({"status": status, "error": why}, status_code=503)
        return JSONResponse({"status": "ok", "active": self.loop.active, **self.loop.stats})

    async def _read(self, request: HTTPRequest) -> bytes:
        """The request body, refused with a 413 once it is known to exceed max_request_bytes: by its
        Content-Length before any of it is read, else (chunked) as soon as the bytes read pass it.
        The event loop parses the body (every stream waits meanwhile): this bounds that wait.
        A body of another media type than JSON is a 415, before it is read: form and text/plain
        bodies are what a web page may POST cross-site without a CORS preflight, so reading them
        as JSON let any page a user opened run requests on a server on their machine (FastAPI,
        vLLM's server, refuses them too; no Content-Type at all is read as JSON, as there)."""
        kind = request.headers.get("content-type")
        media = (kind or "").split(";", 1)[0].strip().lower()
        if kind is not None and media != "application/json" and not media.endswith("+json"):
            raise APIError(415, f"the request body is sent as '{media}': send it as JSON, with the header "
                           "Content-Type: application/json (curl: -H 'Content-Type: application/json')")
        coding = request.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):  # read as JSON, a gzip body was "malformed JSON ... at column 1"
            raise APIError(415, f"the request body is sent compressed (Content-Encoding: {coding}), which this server does "
                           "not read: send it uncompressed, without the Content-Encoding header")
        limit = self.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(f"{int(declared):,} bytes", limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(f"more than {limit:,} bytes", limit)
        return bytes(body)

    async def completions(self, request: HTTPRequest) -> Response:
        body = self._parse(CompletionRequest, await self._read(request))
        self._check_room(len(body.batch()), body.n)  # before any prompt is encoded
        self._check_texts(body.texts(), "prompt")
        prompts = await self._off_loop(body.prompts, self.tokenizer)
        params = body.sampling(self.model.generation_config, 16)  # OpenAI's default 16
        fmt = CompletionFormat(self.name, self.token_text, logprobs=body.logprobs is not None, token_ids=body.return_token_ids)
        texts = body.echo_texts()
        echo = None if texts is None else [(self._prompt_text(text, ids), ids) for text, ids in zip(texts, prompts)]
        return await self._answer(request, body, fmt, prompts, params, echo)

    def _prompt_text(self, text: str | None, ids: list[int]) -> str:
        """A prompt's text as echoed: as sent, or its token ids decoded."""
        if text is not None:
            return text
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    async def chat(self, request: HTTPRequest) -> Response:
        body = self._parse(ChatRequest, await self._read(request))
        tools = self._tool_format(body)
        self._check_room(1, body.n)
        if len(body.messages) > self.engine.max_len:  # each renders to a token or more: refused before the template runs
            raise APIError(400, f"{len(body.messages):,} messages cannot fit in the {self.engine.max_len:,} tokens of context "
                           "this server takes (each takes a token or more): send fewer", "messages", "context_length_exceeded")
        self._check_texts(body.texts(), "messages")
        prompt = await self._off_loop(body.prompt, self.tokenizer, self.template_kwargs)
        room = self.engine.max_len - len(prompt)  # the default max_tokens: the rest of the context
        if body.max_tokens is None and room < 1:
            self._check_context(body, [prompt], 1)  # refused: no room for a token
        if tools is not None and tools.keep_special:
            body.skip_special_tokens = False  # the calls' marker is a special token (vLLM's parsers turn it off too)
        params = body.sampling(self.model.generation_config, room)
        fmt = ChatFormat(self.name, self.token_text, logprobs=body.logprobs, token_ids=body.return_token_ids,
                         token_bytes=self.token_bytes, tools=tools, echo=body.echoed())
        return await self._answer(request, body, fmt, [prompt], params)

    def _tool_format(self, body: ChatRequest) -> type[tool_calls.Format] | None:
        """The format the answer's tool calls are read in; None when it is not read for calls (no tools, or
        tool_choice 'none'); a 400 when calls are asked for and this server reads none."""
        forced = forced_tools.format_for(body.tool_choice) if body.tools else None
        if forced is not None:  # 'required' or a named function: the answer is constrained to the calls
            return forced
        if not body.reads_tool_calls():
            return None
        if self.tool_format is None:
            why = ("it was started with --tool-call-parser none" if self.tool_parser == "none" else
                   "its model's chat template shows none of the tool-call formats it reads")
            raise APIError(400, f"this server reads no tool calls from answers ({why}): start it with --tool-call-parser "
                           f"{'|'.join(tool_calls.FORMATS)} (the format the model writes calls in), or send tool_choice "
                           "'none' (the tools still reach the chat template)", "tool_choice")
        return self.tool_format

    def _parse(self, kind, raw: bytes):
        body = parse(kind, raw)
        if body.model is not None and body.model != self.name:
            raise self._not_served(body.model)
        body.check()
        return body

    def _check_room(self, prompts: int, n: int) -> None:
        """Refuse more sequences (prompts x n) than the server can ever hold, before n sampling
        parameters are built (n=2**31 would take the memory)."""
        room = self.loop.capacity
        if prompts * n > room:
            asked = f"n={n}" if prompts == 1 else f"{prompts} prompts x n={n} = {prompts * n} sequences"
            fix = f"use n <= {room // prompts}" if room >= prompts else f"send at most {room} prompts per request"
            raise APIError(400, f"{asked}: more sequences than the {room} this server holds: {fix}", "n" if room >= prompts else "prompt")

    def _check_context(self, body, prompts: list, max_tokens: int) -> None:
        """A prompt that does not fit with its answer in the context: OpenAI's context_length_exceeded,
        on the field to change (max_tokens while the prompt leaves room, else the prompt or the
        messages) with a fix the client can make (Engine.check would say 'raise max_len')."""
        limit, chat = self.engine.max_len, isinstance(body, ChatRequest)
        asked = body.api_names().get("max_new_tokens", "max_tokens")
        for i, prompt in enumerate(prompts):
            n = len(prompt)
            if n + max_tokens <= limit:
                continue
            field = "messages" if chat else "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            held = {"messages": "the messages hold", "prompt": "the prompt holds"}.get(field, f"{field} holds")
            if n >= limit:
                raise APIError(400, f"{held} {n:,} tokens, which leave no room for an answer in the {limit:,} tokens of context "
                               f"this server takes: shorten {'them' if chat else 'it'} below {limit:,} tokens", field,
                               "context_length_exceeded")
            default = " (its default)" if body.max_tokens is None else ""
            raise APIError(400, f"{held} {n:,} tokens and {asked}={max_tokens}{default} asks for {max_tokens:,} more, beyond "
                           f"the {limit:,} tokens of context this server takes: lower {asked} to at most {limit - n:,}, or "
                           f"shorten the {field}", asked, "context_length_exceeded")

    async def _answer(self, request: HTTPRequest, body, fmt: Format, prompts: list, params: list[SamplingParams],
                      echo: list[tuple[str, list[int]]] | None = None) -> Response:
        """Submit every (prompt, choice) pair; stream the answer or collect it. `echo`: each prompt's
        (text, ids), which begin its choices (completions' echo)."""
        if params[0].stop and self.tokenizer is None:  # stop strings are found in the decoded text: here, never (were ignored)
            raise APIError(400, "stop strings are found in the answer's text, and this model has no tokenizer to decode it: "
                           "send the tokens that end an answer as stop_token_ids, or leave stop out", "stop")
        requests = [Request(prompt, p) for prompt in prompts for p in params]
        self._check_context(body, prompts, params[0].max_new_tokens)
        for i, req in enumerate(requests[:: len(params)]):
            try:
                self.engine.check(req)  # reads only the engine's fixed sizes (and llguidance's tokenizer): safe off its thread
            except JaxllmError as err:
                error = body.refusal(err)
                if error.param == "prompt" and len(prompts) > 1:  # "prompt holds ...": which of the batch
                    error = APIError(400, f"prompt[{i}]{error.message.removeprefix('prompt')}", f"prompt[{i}]")
                raise error from None
        try:
            sub = self.loop.submit(requests)
        except QueueFull as err:
            raise APIError(503, f"the server is full ({err}): retry later", kind="server_error", code="server_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        outputs = [Output(self.tokenizer, req.params, self.eos) for req in requests]
        fmt.top = body.logprob_fields().get("top_logprobs", 0)  # the engine's may be prompt_logprobs' wider ones
        echoes = None if echo is None else [e for e in echo for _ in params]  # per choice
        prompt_tokens = sum(len(p) for p in prompts)
        if body.stream:
            fmt.stream_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(self._sse(sub, outputs, fmt, prompt_tokens if fmt.stream_usage else None, echoes, body),
                                     media_type="text/event-stream", background=BackgroundTask(sub.close))
        try:
            if not await _unless_disconnected(request, self._collect(sub, outputs)):
                return Response(status_code=499)  # nobody reads it; the sequences were cancelled
        except JaxllmError as err:  # the engine refused a request as it took it
            raise body.refusal(err) from None
        failed = next((o for o in outputs if o.finish_reason == "error"), None)
        if failed is not None:  # vLLM's answer too: a 500 that says why, not a 200 whose answer was cut without a word
            raise _failed(failed)
        choices = [fmt.choice(i, _echoed(Piece(o.text, o.tokens, o.logprobs, o.finish_reason, o.top_logprobs,
                                               stop_reason=o.stop_reason), echoes, i, o), final=True)
                   for i, o in enumerate(outputs)]
        response = fmt.envelope(choices, usage(prompt_tokens, sum(len(o.tokens) for o in outputs)))
        if body.prompt_logprobs is not None:  # vLLM's: each choice's prompt, scored
            response = fmt.with_prompt_logprobs(response, [fmt.prompt_logprobs(prompts[i // len(params)], o, body.prompt_logprobs)
                                                           for i, o in enumerate(outputs)])
        return JSONResponse(response)

    async def _pieces(self, sub: Submission, outputs: list[Output], echoes: list | None = None) -> AsyncIterator[tuple[int, Piece]]:
        """(choice, what it gained) per event, a choice's first behind its prompt when `echoes` (per
        choice: (text, ids)); a choice that meets a stop string is cancelled. Every choice still
        running when this ends (client gone, error) is cancelled."""
        echoed = set()
        try:
            async for choice, ev in sub.events():
                out, start = outputs[choice], len(outputs[choice].tokens)
                text = out.take(ev)
                if out.finish_reason is not None and not ev.finished:
                    sub.cancel(choice)  # a stop string
                piece = Piece(text, out.tokens[start:], out.logprobs[start:], out.finish_reason, out.top_logprobs[start:],
                              stop_reason=out.stop_reason)
                yield choice, piece if choice in echoed else _echoed(piece, echoes, choice, out)
                echoed.add(choice)
        finally:
            sub.close()

    async def _collect(self, sub: Submission, outputs: list[Output]) -> None:
        async for _ in self._pieces(sub, outputs):
            pass

    async def _sse(self, sub: Submission, outputs: list[Output], fmt: Format, prompt_tokens: int | None,
                   echoes: list | None = None, body=None) -> AsyncIterator[str]:
        try:
            for chunk in fmt.first_chunks(len(outputs)):
                yield _event(chunk)
            async for choice, piece in self._pieces(sub, outputs, echoes):
                out = fmt.choice(choice, piece, final=False)  # the text a tool-call reader holds back carries nothing yet
                if fmt.carries(out) or piece.finish_reason or (piece.tokens and (fmt.logprobs or fmt.token_ids)):
                    yield _event(fmt.envelope([out], chunk=True))
                if piece.finish_reason == "error":  # why, as the stream's last event (the client raises it), then [DONE]
                    yield _event(_failed(outputs[choice]).body())
                    break
            if prompt_tokens is not None:
                yield _event(fmt.envelope([], usage(prompt_tokens, sum(len(o.tokens) for o in outputs)), chunk=True))
        except Exception as err:  # noqa: BLE001 - the status line has gone: the error is the stream's last event (a bug's too,
            if not isinstance(err, (JaxllmError, EngineFailed)):  # which ended the stream without one, or [DONE])
                log.exception("a streamed answer failed")
            yield _event(_error_of(err, body).body())
        yield "data: [DONE]\n\n"


def _failed(output: Output) -> APIError:
    """The error of an answer the engine ended with finish reason "error" (Output.error: non-finite logits, a
    structured output's grammar refusing a token)."""
    return APIError(500, f"the answer failed: {output.error or 'the engine ended it with an error'}", kind="server_error",
                    code="generation_failed")


def _echoed(piece: Piece, echoes: list | None, choice: int, output: Output) -> Piece:
    """A choice's first piece (or whole answer) behind its prompt when echoed (`echoes`: per choice (text, ids))."""
    return piece if echoes is None else piece.after(*echoes[choice], output)


def _too_large(size: str, limit: int) -> APIError:
    return APIError(413, f"the request body holds {size}, more than the {limit:,} this server takes: send a shorter "
                    "prompt or fewer messages (the server's --max-request-bytes sets the limit)")


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error_of(err: Exception, body=None) -> APIError:
    """An error as OpenAI's error object: a library error a 400 (in `body`'s names when given: its request's), any other a 500."""
    if isinstance(err, JaxllmError):
        return bad_request(err) if body is None else body.refusal(err)
    first = (str(err).strip().splitlines() or [""])[0][:300]
    status = err.status if isinstance(err, EngineFailed) else 500  # 503: the engine cannot serve, or the server stops
    return APIError(status, first or f"the server failed ({type(err).__name__})", kind="server_error")


def _routing_error(request: HTTPRequest, err: HTTPException, routes: list[Route]) -> APIError:
    """Starlette's own errors (an unknown path: 404, a wrong method: 405) in OpenAI's error JSON,
    as clients parse every error body, naming the endpoints (or the methods) that exist."""
    path = request.url.path  # as decoded: '%0A' is a newline; a 16 kB path was echoed whole
    asked = f"{request.method} {path if len(path) <= 100 and path.isprintable() else shown(path, 100)}"
    if err.status_code == 404:
        served = ", ".join(f"{m} {r.path.replace(':path', '')}" for r in routes for m in sorted(r.methods - {"HEAD"}))
        message = f"{asked}: no such endpoint here: use one of {served}"
    elif err.status_code == 405:
        allowed = (err.headers or {}).get("Allow", "")
        message = f"{asked}: the method is not allowed on this path: use {allowed}"
    else:
        message = f"{asked}: {err.detail}"
    return APIError(err.status_code, message, headers=err.headers)


async def _unless_disconnected(request: HTTPRequest, work) -> bool:
    """Run `work` to its end (True), or cancel it when the client disconnects first (False)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # its sequences are cancelled on the way out
            await asyncio.wait({task})
    if task.cancelled():
        return False
    task.result()  # raises what the work raised
    return True


async def _disconnect(request: HTTPRequest) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(model, engine: Engine, *, name: str, max_queue: int = 256, max_request_bytes: int | None = None,
              template_kwargs: dict | None = None, tool_parser: str = "auto") -> Starlette:
    """The ASGI app serving `model` through `engine`. The engine's thread starts with the app
    (lifespan) and stops with it; `app.state.engine_loop` is the EngineLoop. Request bodies over
    `max_request_bytes` (default: default_request_bytes(engine.max_len)) answer 413. `template_kwargs`:
    the chat template's variables for every chat request, under each request's own chat_template_kwargs.
    `tool_parser`: the format tool calls are read in (tool_calls.PARSER_CHOICES; 'auto': the one the chat
    template teaches)."""
    loop = EngineLoop(engine, max_queue)
    server = Server(model, loop, name, max_request_bytes, check_template_kwargs(template_kwargs), tool_parser)

    @asynccontextmanager
    async def lifespan(app):
        loop.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            loop.drain("the server is stopping")  # another ASGI server's stop (http_server's says so as it begins)
            loop.stop()
            server._tokenizing.shutdown(wait=False, cancel_futures=True)

    async def on_api_error(request, err: APIError):
        return err.response()

    async def on_library_error(request, err: Exception):  # any other exception too (a bug): OpenAI's error body, not
        return _error_of(err).response()  # Starlette's plain-text 500; Starlette logs its traceback

    routes = [
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.model_card, methods=["GET"]),  # hub ids hold a '/'
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]

    async def on_http_error(request, err: HTTPException):
        return _routing_error(request, err, routes).response()

    async def on_client_gone(request, err: ClientDisconnect):  # hung up while sending its body: nobody's error
        return Response(status_code=499)  # nobody reads it; nothing was submitted

    handlers = {APIError: on_api_error, JaxllmError: on_library_error, EngineFailed: on_library_error,
                HTTPException: on_http_error, ClientDisconnect: on_client_gone, Exception: on_library_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.engine_loop, app.state.server = loop, server
    return app
