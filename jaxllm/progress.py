"""What the command lines share: tqdm progress bars (stderr, only on a terminal), the flags of a
model and its sampling (one parser for `python -m jaxllm.generate` and `python -m jaxllm.chat`),
loading the model with a bar, and the stats line of an answer."""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
from tqdm.auto import tqdm

from jaxllm import runtime
from jaxllm.loader import LoadedModel, load
from jaxllm.sampling import SamplingParams


class Bar:
    """Counts named steps (tensors read or written); `bar(name)` after each. `delay`: seconds before
    the bar first shows, so quick work prints nothing; `enabled` False: never shown."""

    def __init__(self, total: int | None, what: str, unit: str = "tensor", delay: float = 0.0, enabled: bool = True):
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, delay=delay,
                        disable=not (enabled and sys.stderr.isatty()))

    def __call__(self, name: str) -> None:
        self.bar.set_postfix_str(name[-40:], refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def model_flags() -> argparse.ArgumentParser:
    """The flags of every command that generates (an argparse parent): model, dtype, mesh,
    sampling, stop strings, system message, compile cache."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", help="checkpoint folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--mesh", help="device mesh: 'tp=4', 'dp=2,tp=4', 'fsdp=8' or 'auto' (all devices on tp)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); never printed")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--compile-cache", default=os.environ.get("JAXLLM_COMPILE_CACHE", runtime.DEFAULT_COMPILE_CACHE),
                   help="folder where compiled programs are kept for the next run, or 'none' "
                        "(default: $JAXLLM_COMPILE_CACHE, else %(default)s)")
    return p


def start(args) -> None:
    """Process settings from the flags, first thing (before transformers is imported and the
    backend starts): quiet imports, GPU flags, the compile cache."""
    runtime.quiet()
    runtime.set_gpu_flags()
    runtime.use_compile_cache(args.compile_cache)


def sampling_params(args) -> SamplingParams:
    """SamplingParams of the flags, every value checked before anything is loaded."""
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )
    params.resolved()
    return params


def is_leader() -> bool:
    """Whether this process prints (under jax.distributed every process runs the command)."""
    return jax.process_index() == 0


def load_model(args) -> LoadedModel:
    """The model of --model (default: runtime.default_model()) in --dtype (default: float32 on a
    CPU, else bfloat16) on --mesh, with a progress bar when loading takes over a second."""
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    with Bar(None, "loading", delay=1.0, enabled=is_leader()) as bar:
        return load(args.model or runtime.default_model(), dtype=dtype, mesh=args.mesh, progress=bar)


_compile_s = [0.0]  # XLA backend compile seconds in this process (jax.monitoring events)


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _compile_s[0] += duration


class Stats:
    """The stats line of one generate call: pass `on_token` to it, then `line(prompt_tokens)`.
    Decode speed leaves out each sequence's first token and the compiles after it."""

    _listening = False

    def __init__(self):
        if not Stats._listening:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            Stats._listening = True
        self.start, self.compile_start = time.time(), _compile_s[0]
        self.first = self.compile_at_first = None
        self.tokens, self.rows = 0, set()

    def on_token(self, index: int, tokens: list[int]) -> None:
        if self.first is None:
            self.first, self.compile_at_first = time.time(), _compile_s[0]
        self.tokens += len(tokens)
        self.rows.add(index)

    def line(self, prompt_tokens: int) -> str:
        end = time.time()
        first = self.first or end
        decode_s = end - first - (_compile_s[0] - self.compile_at_first) if self.first else 0.0
        rate = (self.tokens - len(self.rows)) / decode_s if decode_s > 0 else 0.0
        return (f"[prompt tokens {prompt_tokens} | new tokens {self.tokens} | time to first token {first - self.start:.2f}s | "
                f"decode {rate:.1f} tokens/s | compile {_compile_s[0] - self.compile_start:.1f}s]")
