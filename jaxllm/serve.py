"""`python -m jaxllm.serve`: an OpenAI-compatible HTTP server (pip install "jaxllm[serve]").

    python -m jaxllm.serve --model HuggingFaceTB/SmolLM2-135M-Instruct --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'

One engine serves every client (continuous batching across requests), driven by one thread
(jaxllm/api/engine_loop.py); the endpoints are jaxllm/api/app.py's. Without --model it serves
SmolLM2-135M-Instruct, as `python -m jaxllm.generate` does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from jaxllm import progress, runtime
from jaxllm.engine import Engine, Request
from jaxllm.errors import ArgumentParser, JaxllmError, handle_signals, printable, run_cli
from jaxllm.sampling import SamplingParams

try:
    import uvicorn

    from jaxllm.api import build_app, tool_calls
except ImportError as err:  # the serve extra is not installed
    uvicorn, build_app, tool_calls, _missing = None, None, None, err

# The engine's arguments serve's flags set, so that its refusals name the flags ('lower batch_size' as 'lower --batch-size')
ENGINE_FLAGS = {"batch_size": "--batch-size", "max_len": "--max-len", "num_pages": "--num-pages", "page_size": "--page-size",
                "memory_fraction": "--memory-fraction"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's; any other is its KeyError


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m jaxllm.serve", description="Serve a model over OpenAI's HTTP API.",
                       parents=[progress.load_flags()])
    p.add_argument("--served-model-name", type=named("the name clients send as 'model'"),
                   help="the model's name in the API (default: --model, or the default model's hub id)")
    p.add_argument("--host", default="127.0.0.1", type=named("an address, e.g. 127.0.0.1 (0.0.0.0: every interface)"),
                   help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=tcp_port, default=8000, help="TCP port, 1 to 65535 (default: %(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="sequences decoded at once (default: %(default)s)")
    p.add_argument("--max-len", type=at_least(2), help="longest prompt + answer in tokens (default: the model's positions)")
    # the KV page pool, as jaxllm.Engine takes it (vLLM's --gpu-memory-utilization and --block-size)
    p.add_argument("--memory-fraction", "--gpu-memory-utilization", type=fraction, default=0.9,
                   help="share of the device memory left after the weights that the KV page pool may take, in (0, 1] "
                        "(default: %(default)s)")
    p.add_argument("--num-pages", type=at_least(1), help="KV pages in the pool, in place of --memory-fraction's share")
    p.add_argument("--page-size", type=at_least(1), default=16, help="tokens per KV page (default: %(default)s)")
    p.add_argument("--max-queue", type=at_least(0), default=256,
                   help="sequences that may wait beyond a full batch; more are refused with 503 (default: %(default)s)")
    p.add_argument("--max-request-bytes", type=at_least(1),
                   help="largest request body taken, in bytes; a larger one is refused with 413 before it is parsed "
                        "(default: 16 per token of --max-len, at least 1048576)")
    p.add_argument("--chat-template-kwargs", type=progress.template_kwargs, metavar="JSON",
                   help="variables the chat template reads for every chat request, as a JSON object (a request's own "
                        'chat_template_kwargs go over them): \'{"enable_thinking": false}\'')
    # without the serve extra, any name: _main says the extra is missing
    p.add_argument("--tool-call-parser", default="auto", choices=tool_calls and tool_calls.PARSER_CHOICES,
                   help="the format the model writes tool calls in, read into OpenAI's tool_calls when a request offers "
                        "tools (tool_choice 'auto'): hermes (Qwen2.5/3, Hermes), llama3_json (Llama 3.1-3.3), mistral; "
                        "auto: the one the chat template teaches; none: read none (default: %(default)s)")
    p.add_argument("--enable-auto-tool-choice", action="store_true",
                   help="vLLM's flag, accepted for its command lines: tool calls are read whenever --tool-call-parser finds a format")
    p.add_argument("--no-warmup", action="store_true", help="start serving without compiling the engine's steps first")
    p.add_argument("--shutdown-timeout", type=at_least(0), default=10,
                   help="seconds a stop (Ctrl-C, SIGTERM) waits for open requests before ending them with a 503 (default: %(default)s)")
    progress.add_compile_cache(p)
    p.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                   help="uvicorn's log level (default: %(default)s)")
    return p


def parse_args(argv=None):
    return parser().parse_args(argv)


def _whole(text: str) -> int | None:
    """A flag's text as a whole number, or None."""
    try:
        return int(text)
    except ValueError:
        return None


def at_least(low: int):
    """An argparse type: a whole number >= `low`, checked as the flags are read (not after loading the model)."""

    def whole(text: str) -> int:
        value = _whole(text)
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is invalid: use a whole number >= {low}")
        return value

    return whole


def fraction(text: str) -> float:
    """--memory-fraction: a number in (0, 1], checked as the flags are read (not after loading the model)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: use a number in (0, 1], e.g. 0.9")
    return value


def named(what: str):
    """An argparse type: text that is not empty or blank. An unset shell variable gave --served-model-name "" (the
    model then served under --model's path) and --host "" (every interface, where the default is this machine alone)."""

    def text(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"{value!r} is empty: give {what}, or leave the flag out")
        return progress.argv_flag(value)  # undecodable bytes: every JSON answer naming the model failed to encode

    return text


def tcp_port(text: str) -> int:
    """--port as a TCP port. uvicorn takes any int: 70000 wraps to 4464 (while its log says
    :70000), -1 fails inside getaddrinfo; so refuse them here, as a usage error."""
    value = _whole(text)
    if value is None or not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port: use a whole number from 1 to 65535")
    return value


def check_listen(host: str, port: int) -> None:
    """Bind (and release) every address `host`:`port` resolves to, as uvicorn's asyncio server
    will (SO_REUSEADDR), so that a port in use or an address this machine lacks is a one-line
    error before the model loads, not uvicorn's `[Errno ...]` after it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(address)
    except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError; an over-long name a UnicodeError
        reason = getattr(err, "strerror", None) or str(err)
        raise JaxllmError(f"cannot listen on {where}: {reason}: choose another --port/--host") from None


def warm_up(engine: Engine) -> None:
    """Compile the steps a first request needs (a short prefill, greedy and sampled decode), so
    the first client does not wait for them; the prefix cache is emptied afterwards."""
    for temperature in (0.0, 1.0):
        params = SamplingParams(max_new_tokens=2, temperature=temperature, ignore_eos=True).resolved()
        for _ in engine.run([Request([0] * 8, params)]):
            pass
    engine.blocks.reset_prefix_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    handle_signals()  # SIGTERM, as Ctrl-C: "interrupted", exit 143 (uvicorn raises the signal again once it has stopped)
    runtime.quiet()
    runtime.set_gpu_flags(args.mesh)  # before the backend starts, below
    runtime.use_compile_cache(args.compile_cache)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    if build_app is None:
        raise JaxllmError(f"the server needs the serve extra ({_missing}): pip install 'jaxllm[serve]'")
    check_listen(args.host, args.port)  # before the model: loading it takes a while
    # a --model path of undecodable bytes named as printable text: JSON answers are UTF-8 (the name as given failed every one)
    name = args.served_model_name or (printable(args.model) if args.model else runtime.HUB_ID)
    # a load's or the engine's error names the flag, not the library's argument ('lower batch_size' as 'lower --batch-size')
    with progress.flag_terms(flags=ENGINE_FLAGS):
        model = progress.load_model(args)
        positions = model.config.context_length
        if args.max_len is not None and args.max_len > positions:  # requests beyond it are refused anyway: no pool for them
            raise JaxllmError(f"--max-len {args.max_len:,} exceeds the model's {positions:,} positions: use at most "
                              f"{positions}, or leave it out")
        engine = Engine(model, batch_size=args.batch_size, max_len=args.max_len, num_pages=args.num_pages,
                        page_size=args.page_size, memory_fraction=args.memory_fraction)
    if not args.no_warmup:
        print("compiling the engine's steps ...", file=sys.stderr, flush=True)
        warm_up(engine)
    app = build_app(model, engine, name=name, max_queue=args.max_queue, max_request_bytes=args.max_request_bytes,
                    template_kwargs=args.chat_template_kwargs, tool_parser=args.tool_call_parser)
    tools = app.state.server.tool_format  # what --tool-call-parser auto chose is worth a line
    print(f"tool calls: read as {tools.name}" if tools else "tool calls: not read" + (
        " (the chat template shows no format: --tool-call-parser names one)" if args.tool_call_parser == "auto" else ""),
        file=sys.stderr, flush=True)
    http_server(app, host=args.host, port=args.port, log_level=args.log_level, shutdown_timeout=args.shutdown_timeout).run()
    return 0


# Seconds between the requests still open after --shutdown-timeout being answered with a 503 and uvicorn cancelling
# their tasks (which cut a stream off without its error event and [DONE], and answered a plain-text 500 or nothing).
ANSWER_S = 1


def http_server(app, *, shutdown_timeout: float, **config) -> "uvicorn.Server":
    """uvicorn's server of `app` (build_app's), whose stop (Ctrl-C, SIGTERM) waits `shutdown_timeout` seconds for
    the requests open, then answers those left with a 503 (a stream: an error event and [DONE]), before uvicorn
    cancels what still runs; `config`: uvicorn.Config's."""
    engine_loop = app.state.engine_loop

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            engine_loop.drain("the server is stopping")  # /health: 503 from now on, while the open requests finish
            stop = asyncio.get_running_loop().call_later(shutdown_timeout, engine_loop.end, "the server is stopping")
            try:
                await super().shutdown(sockets)
            finally:
                stop.cancel()

    return Server(uvicorn.Config(app, timeout_graceful_shutdown=shutdown_timeout + ANSWER_S, **config))


if __name__ == "__main__":
    sys.exit(main())
