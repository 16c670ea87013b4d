"""`python -m jaxllm.serve`: an OpenAI-compatible HTTP server (pip install "jaxllm[serve]").

    python -m jaxllm.serve --model HuggingFaceTB/SmolLM2-135M-Instruct --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'

One engine serves every client (continuous batching across requests), driven by one thread
(jaxllm/api/engine_loop.py); the endpoints are jaxllm/api/app.py's. Without --model it serves
SmolLM2-135M-Instruct, as `python -m jaxllm.generate` does.
"""

from __future__ import annotations

import os
import sys

from jaxllm import progress, runtime
from jaxllm.engine import Engine, Request
from jaxllm.errors import ArgumentParser, JaxllmError, run_cli
from jaxllm.sampling import SamplingParams

try:
    import uvicorn

    from jaxllm.api import build_app
except ImportError as err:  # the serve extra is not installed
    uvicorn, build_app, _missing = None, None, err


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m jaxllm.serve", description="Serve a model over OpenAI's HTTP API.",
                       parents=[progress.load_flags()])
    p.add_argument("--served-model-name", help="the model's name in the API (default: --model, or the default model's hub id)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--batch-size", type=int, default=32, help="sequences decoded at once (default: %(default)s)")
    p.add_argument("--max-len", type=int, help="longest prompt + answer in tokens (default: the model's positions)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="sequences that may wait beyond a full batch; more are refused with 503 (default: %(default)s)")
    p.add_argument("--no-warmup", action="store_true", help="start serving without compiling the engine's steps first")
    p.add_argument("--compile-cache", default=os.environ.get("JAXLLM_COMPILE_CACHE", runtime.DEFAULT_COMPILE_CACHE),
                   help="folder where compiled programs are kept for the next run, or 'none' "
                        "(default: $JAXLLM_COMPILE_CACHE, else %(default)s)")
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default: %(default)s)")
    return p.parse_args(argv)


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
    runtime.quiet()
    runtime.set_gpu_flags(args.mesh)  # before the backend starts, below
    runtime.use_compile_cache(args.compile_cache)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    if build_app is None:
        raise JaxllmError(f"the server needs the serve extra ({_missing}): pip install 'jaxllm[serve]'")
    if args.max_queue < 0:
        raise JaxllmError(f"--max-queue {args.max_queue} is invalid: use 0 or more")
    name = args.served_model_name or args.model or runtime.HUB_ID
    model = progress.load_model(args)
    engine = Engine(model, batch_size=args.batch_size, max_len=args.max_len)
    if not args.no_warmup:
        print("compiling the engine's steps ...", file=sys.stderr, flush=True)
        warm_up(engine)
    app = build_app(model, engine, name=name, max_queue=args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
