"""Speculative decoding by prompt lookup (Engine speculative_tokens): batch-1 decode tokens/s with and without it,
in one process, with the acceptance rate.

The model is a random-weight one of a real shape (jaxllm.random_model, as jaxllm.bench makes them) with its
attention and MLP outputs (o_proj, down_proj) scaled to zero: it computes and reads exactly what the shape does, but
each token's greedy successor is a fixed function of that token alone (a bigram model; a tied head's: the token
itself), so its answer copies any stretch of its
own earlier output that it comes back to, as a summary or a code edit copies its prompt. Workloads:

  copy      the prompt is the model's own greedy output X followed by X's first two tokens again: the answer goes
            on as X did, so every draft is found in the prompt and kept (but where the verify step's arithmetic,
            bfloat16 over k + 1 positions, picks another token than decode's at a near tie)
  fresh     a random prompt: the answer's n-grams rarely occurred before, so drafts are rarely found and the
            engine mostly decodes as without speculation
  rejected  the fresh prompt with a draft forced at every step (k copies of the last token, which the model does
            not choose next, but for a tied head's): every step verifies k drafts and keeps none, the worst case,
            but for the back-off (a sequence whose drafts all missed decodes a call's `chunk` tokens before it drafts
            again)
  none      the fresh prompt, the drafts looked up as always and then dropped: what looking them up costs

    python benchmarks/speculative.py                                             # CPU smoke check (tiny shape)
    python benchmarks/speculative.py --shape qwen3-0.6b --shape llama3-8b        # GPU, bfloat16

Tokens/s counts the new tokens after the first over the time after the first (jaxllm.bench's b1 figure), each
engine's second run (the first compiles).
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.engine import Engine, Request
from jaxllm.random_model import random_model
from jaxllm.sampling import SamplingParams
from jaxllm.serving import ngram
from jaxllm.serving.steps import steps as make_steps


def bigram(model):
    """`model` with its attention and MLP outputs scaled to zero (the same computation, the same bytes read): the
    last hidden state is the token's embedding, so the greedy successor is a fixed function of the token, chosen
    by a wide margin (no near ties that the verify step's arithmetic and decode's would break differently)."""
    zeroed = ("o_proj", "down_proj")
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 0 if any(name in jax.tree_util.keystr(path) for name in zeroed) else x, model.params)
    return dataclasses.replace(model, params=params, engines={})


def timed(engine: Engine, prompts: list[list[int]], new: int) -> tuple[float, list[list[int]], dict]:
    """(tokens/s, each request's tokens, the engine's speculation counts) of greedy requests, on the engine's
    second run: one request's decode tokens/s after its first token, or several's new tokens/s over the whole run."""
    params = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
    for _ in range(2):
        stats = engine.scheduler.stats
        stats.verified = stats.drafted = stats.accepted = 0
        start, first, tokens = time.perf_counter(), None, [[] for _ in prompts]
        for ev in engine.run([Request(p, params, i) for i, p in enumerate(prompts)]):
            first = first or time.perf_counter()
            tokens[ev.index] += ev.tokens
        total = time.perf_counter() - start
    counts = dict(verified=stats.verified, drafted=stats.drafted, accepted=stats.accepted)
    if len(prompts) == 1:
        return (len(tokens[0]) - 1) / (total - (first - start)), tokens, counts
    return sum(map(len, tokens)) / total, tokens, counts


def repeating(tokens, sizes, k, *rest):
    """ngram.propose_rows drafting k copies of each row's last token, whatever its sequence holds."""
    last = jnp.take_along_axis(tokens, jnp.maximum(sizes - 1, 0)[:, None], axis=1)
    return jnp.broadcast_to(last, (tokens.shape[0], k)).astype(jnp.int32), jnp.full(tokens.shape[0], k, jnp.int32)


def never(tokens, sizes, k, *rest):
    """ngram.propose_rows looking its drafts up as always, then drafting none: what the lookup costs."""
    drafts, lengths = PROPOSE(tokens, sizes, k, *rest)
    return drafts, lengths * 0


PROPOSE = ngram.propose_rows
FORCED = {"rejected": repeating, "none": never}  # workloads whose drafts are forced (in an engine of their own)


def run(shape: str, dtype: str, k: int, prompt_len: int, new: int, batch: int = 1) -> list[dict]:
    model = bigram(jax.block_until_ready(random_model(shape, dtype=dtype)))
    vocab = model.config.vocab_size
    max_len = max(prompt_len, new + 4) + new + 16

    def engine(speculative):
        return Engine(model, batch_size=batch, max_len=max_len, num_pages=batch * -(-max_len // 16), page_size=16,
                      prefill_tokens=max(512, max_len), chunk=64, speculative_tokens=speculative,
                      prefix_caching=False)  # the second run prefills what the first did: no compile in the timed run

    plain, spec = engine(0), engine(k)
    rng = np.random.default_rng(0)
    # copy: each row its own chain (the model's greedy answer from its own first token), then that chain's first
    # two tokens again; fresh: each row its own random prompt
    chains = [timed(plain, [[int(rng.integers(vocab))]], new + 4)[1][0] for _ in range(batch)]
    fresh = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(batch)]
    rows = []
    for name, prompts in (("copy", [c + c[:2] for c in chains]), ("fresh", fresh), ("rejected", fresh), ("none", fresh)):
        rate, want, _ = timed(plain, prompts, new)
        if name in FORCED:  # an engine of its own, whose steps are traced anew with the forced drafts
            ngram.propose_rows = FORCED[name]
            make_steps.cache_clear()
            spec = engine(k)
        try:
            spec_rate, got, counts = timed(spec, prompts, new)
        finally:
            if name in FORCED:  # the steps traced with the forced drafts are not the next engine's
                ngram.propose_rows = PROPOSE
                make_steps.cache_clear()
        assert dtype != "float32" or got == want, f"{name}: speculation changed the greedy tokens"
        rows.append(dict(shape=shape, workload=name, plain=rate, speculative=spec_rate, same_tokens=got == want, **counts))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", help="a jaxllm.random_model shape (repeatable; default: tiny)")
    p.add_argument("--dtype", help="default: bfloat16 on an accelerator, float32 on a CPU")
    p.add_argument("--k", type=int, default=4, help="speculative_tokens (default: %(default)s)")
    p.add_argument("--prompt", type=int, default=128, help="the fresh prompt's tokens (default: %(default)s)")
    p.add_argument("--new", type=int, default=256, help="new tokens of each request (default: %(default)s)")
    p.add_argument("--batch", type=int, action="append", help="requests at a time (repeatable; default: 1; above 1: new tokens/s "
                   "over the whole second run, prefill included)")
    args = p.parse_args()
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    print(f"{jax.devices()[0].device_kind}, {dtype}, speculative_tokens={args.k}, n-grams {ngram.N_MAX}..{ngram.N_MIN}, "
          f"{args.new} new tokens")
    print(f"{'shape':<12} {'batch':>5} {'workload':<9} {'plain tok/s':>11} {'spec tok/s':>10} {'speedup':>7} {'verify steps':>12} "
          f"{'drafted':>7} {'kept':>5} {'accepted':>8} {'same tokens':>11}")
    for shape in args.shape or ["tiny"]:
        for batch in args.batch or [1]:
            for r in run(shape, dtype, args.k, args.prompt, args.new, batch):
                rate = r["accepted"] / r["drafted"] if r["drafted"] else float("nan")
                print(f"{r['shape']:<12} {batch:>5} {r['workload']:<9} {r['plain']:>11.1f} {r['speculative']:>10.1f} "
                      f"{r['speculative'] / r['plain']:>6.2f}x {r['verified']:>12} {r['drafted']:>7} {r['accepted']:>5} "
                      f"{rate:>8.0%} {str(r['same_tokens']):>11}", flush=True)


if __name__ == "__main__":
    main()
