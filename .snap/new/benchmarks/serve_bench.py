"""Serving benchmark: `python -m jaxllm.serve`'s app under 64 concurrent streaming clients on the
offline workload's request mix (jaxllm.bench: 256 requests, prompt and output lengths uniform in
100..1024, EOS ignored), against the offline engine on the same requests in the same run.

    PYTHONPATH=$PWD python benchmarks/serve_bench.py [--shape qwen3-0.6b | --model PATH] [--clients 64] [--out r.json]
    PYTHONPATH=$PWD python benchmarks/serve_bench.py --shape tiny --quick --clients 2     # a CPU smoke run

A child process builds the model (random weights of a shape, or a checkpoint) and one engine
(batch = clients), runs the workload offline twice (compile, then timed: output tokens/s), then
serves the same engine over HTTP. This process is the clients: each of `--clients` streams one
request at a time (completions with token-id prompts, `ignore_eos`, `return_token_ids`) until the
workload is done. Reported: output tokens/s, time to first token p50/p99, the ratio to the
offline rate, and the engine's compiles during the timed pass. A first serving pass warms up
(`--warmup-runs`); each pass uses fresh prompt tokens of the same lengths, so no pass hits the
prefix cache of another. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import jax
import numpy as np
import openai
import uvicorn

from jaxllm import bench, runtime
from jaxllm.api import build_app
from jaxllm.engine import Engine
from jaxllm.loader import load
from jaxllm.random_model import random_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen3-0.6b", help="random weights of this shape (jaxllm.random_model.SHAPES)")
    p.add_argument("--model", help="instead: a checkpoint folder, .gguf file or hub id")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--clients", type=int, default=64, help="concurrent streaming clients, and the engine's batch size")
    p.add_argument("--chunk", type=int, default=16, help="the engine's decode steps per call (python -m jaxllm.serve: 16)")
    p.add_argument("--warmup-runs", type=int, default=1, help="serving passes before the timed one")
    p.add_argument("--quick", action="store_true", help="jaxllm.bench's --quick sizes (4 short requests)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child-port", type=int, help=argparse.SUPPRESS)  # internal: be the server
    return p.parse_args(argv)


def workload(vocab_size: int, sizes: dict, run: int):
    """The offline workload's requests; run > 0: the same lengths with fresh prompt tokens."""
    reqs = bench.offline_requests(SimpleNamespace(vocab_size=vocab_size), sizes)
    rng = np.random.default_rng(1000 + run)
    for r in reqs if run else []:
        r.prompt = rng.integers(0, vocab_size, len(r.prompt)).tolist()
    return reqs


# -- the server (child process) ----------------------------------------------------------------


def serve(args) -> None:
    model = load(args.model, dtype=args.dtype) if args.model else random_model(args.shape, dtype=args.dtype)
    sizes = bench._sizes(args.quick)
    engine = Engine(model, batch_size=args.clients, max_len=2 * sizes["offline_hi"], page_size=sizes["page_size"],
                    prefill_tokens=sizes["prefill_tokens"], chunk=args.chunk)
    reqs = workload(model.config.vocab_size, sizes, 0)
    offline = {}
    for name in ("offline_first_run", "offline"):
        engine.blocks.reset_prefix_cache()
        start, n = time.perf_counter(), 0
        for ev in engine.run(reqs):
            n += len(ev.tokens)
        offline[f"{name}_s"] = time.perf_counter() - start
        offline[f"{name}_tokens_per_s"] = n / offline[f"{name}_s"]
        offline["offline_output_tokens"] = n
    engine.blocks.reset_prefix_cache()
    offline.update(device=jax.devices()[0].device_kind, vocab_size=model.config.vocab_size,
                   compiles=engine.counters.prefill + engine.counters.decode)
    print(json.dumps(offline), flush=True)
    app = build_app(model, engine, name="bench", max_queue=len(reqs))
    uvicorn.run(app, host="127.0.0.1", port=args.child_port, log_level="warning")


# -- the clients (this process) ----------------------------------------------------------------


async def clients(url: str, reqs, n_clients: int) -> dict:
    pending = list(reversed(reqs))
    ttft, tokens = [], 0

    async def client(api):
        nonlocal tokens
        while pending:
            req = pending.pop()
            start, first = time.perf_counter(), None
            stream = await api.completions.create(model="bench", prompt=req.prompt, max_tokens=req.params.max_new_tokens,
                                                  temperature=0, stream=True,
                                                  extra_body={"ignore_eos": True, "return_token_ids": True})
            async for chunk in stream:
                got = sum(len(getattr(c, "token_ids", None) or []) for c in chunk.choices)
                if got and first is None:
                    first = time.perf_counter()
                    ttft.append(first - start)
                tokens += got

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600) as api:
        start = time.perf_counter()
        await asyncio.gather(*(client(api) for _ in range(n_clients)))
        wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "output_tokens": tokens, "wall_s": wall, "requests": len(reqs),
            "ttft_p50_s": float(np.percentile(ttft, 50)), "ttft_p99_s": float(np.percentile(ttft, 99))}


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.set_gpu_flags()
    if args.child_port:
        serve(args)
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child-port", str(port)],
                             stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        line = child.stdout.readline()
        if not line:
            raise SystemExit(f"the server process failed (exit code {child.wait()})")
        offline = json.loads(line)
        url = f"http://127.0.0.1:{port}"
        while True:  # until uvicorn listens
            try:
                health(url)
                break
            except Exception:
                if child.poll() is not None:
                    raise SystemExit(f"the server process failed (exit code {child.returncode})")
                time.sleep(0.2)
        sizes = bench._sizes(args.quick)
        for run in range(1, args.warmup_runs + 1):
            print(f"warm-up pass {run}: {asyncio.run(clients(url, workload(offline['vocab_size'], sizes, run), args.clients))}",
                  file=sys.stderr, flush=True)
        before = health(url)
        result = asyncio.run(clients(url, workload(offline["vocab_size"], sizes, args.warmup_runs + 1), args.clients))
        compiles = health(url).get("compiles", 0) - before.get("compiles", 0)
    finally:
        child.terminate()
        child.wait(timeout=60)
    report = {"device": offline.pop("device"), "model": args.model or args.shape,
              "dtype": args.dtype, "clients": args.clients, "chunk": args.chunk,
              "serve": result, "offline": {k: v for k, v in offline.items() if k != "vocab_size"},
              "serve_over_offline": result["tokens_per_s"] / offline["offline_tokens_per_s"], "compiles_during_timed_pass": compiles}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
