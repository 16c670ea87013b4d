"""`python -m jaxllm.generate`: text generation from the command line.

    python -m jaxllm.generate "What is the capital of France?"
    echo "Tell me a joke" | python -m jaxllm.generate --model ./my-checkpoint --temperature 0.7

Prompts come from the arguments, else --batch-file, else stdin (one prompt per non-empty line).
One prompt streams as it is generated; several print in order. Statistics go to stderr.
Compiled programs are kept in ~/.cache/jaxllm/xla (--compile-cache) for the next run.
The library's entry is `model.generate(...)` (jaxllm.loader.LoadedModel); this module is the command line only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

from jaxllm import runtime
from jaxllm.errors import JaxllmError, run_cli
from jaxllm.inspect import list_architectures
from jaxllm.loader import load
from jaxllm.progress import Bar
from jaxllm.sampling import SamplingParams


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jaxllm.generate", description="Generate text with a language model.")
    p.add_argument("prompt", nargs="*", help="prompt(s); default: --batch-file, else stdin, one per line")
    p.add_argument("--model", help="checkpoint folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); never printed")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the chat template (default: on when the tokenizer has one)")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--mesh", help="device mesh: 'tp=4', 'dp=2,tp=4', 'fsdp=8' or 'auto' (all devices on tp)")
    p.add_argument("--batch-file", help="file with one prompt per line")
    p.add_argument("--no-stream", action="store_true", help="print each answer when complete")
    p.add_argument("--list-models", action="store_true", help="print the supported architectures and exit")
    p.add_argument("--compile-cache", default=os.environ.get("JAXLLM_COMPILE_CACHE", runtime.DEFAULT_COMPILE_CACHE),
                   help="folder where compiled programs are kept for the next run, or 'none' "
                        "(default: $JAXLLM_COMPILE_CACHE, else %(default)s)")
    return p.parse_args(argv)


def read_prompts(args) -> list[str]:
    if args.prompt:
        return [" ".join(args.prompt)]
    if args.batch_file:
        try:
            with open(args.batch_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as err:
            raise JaxllmError(f"cannot read --batch-file {args.batch_file}: {err.strerror}") from None
    else:
        if sys.stdin is None or sys.stdin.isatty():
            raise JaxllmError('no prompt: pass one as an argument, e.g. python -m jaxllm.generate "Hello"')
        lines = sys.stdin.read().splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise JaxllmError("no prompt: the input held only empty lines")
    return prompts


def _compile_seconds():
    """Sum of XLA backend compile durations from now on (jax.monitoring events)."""
    total = [0.0]

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    return total


def main(argv=None) -> int:
    args = parse_args(argv)
    runtime.set_gpu_flags()  # before the backend starts, below
    runtime.use_compile_cache(args.compile_cache)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    if args.list_models:
        print(list_architectures())
        return 0
    prompts = read_prompts(args)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )
    params.resolved()  # fail on bad values before loading anything
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    if args.model is None:
        args.model = runtime.default_model()
    compile_s = _compile_seconds()
    leader = jax.process_index() == 0  # under jax.distributed every process runs this; one prints
    with Bar(None, "loading", delay=1.0, enabled=leader) as bar:
        model = load(args.model, dtype=dtype, mesh=args.mesh, progress=bar)
    stream = len(prompts) == 1 and not args.no_stream and leader
    marks = {"start": time.time(), "first": None, "compile_at_first": 0.0}

    def on_text(index, text):
        if stream:
            sys.stdout.write(text)
            sys.stdout.flush()

    def on_token(index, tokens):
        if marks["first"] is None:
            marks["first"], marks["compile_at_first"] = time.time(), compile_s[0]

    results = model.generate(prompts, params, chat=args.chat, system=args.system, on_text=on_text, on_token=on_token)
    end = time.time()
    if not leader:
        return 0
    if stream:
        sys.stdout.write("\n")
    else:
        for i, r in enumerate(results):
            if len(results) > 1:
                print(f"### {i + 1}")
            print(r.text)
    new = sum(len(r.token_ids) for r in results)
    first = marks["first"] or end
    decode_s = end - first - (compile_s[0] - marks["compile_at_first"])  # the decode step compiles after the first token
    rate = (new - len(results)) / decode_s if decode_s > 0 else 0.0
    print(
        f"[prompt tokens {sum(r.prompt_tokens for r in results)} | new tokens {new} | "
        f"time to first token {first - marks['start']:.2f}s | decode {rate:.1f} tokens/s | "
        f"compile {compile_s[0]:.1f}s]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
