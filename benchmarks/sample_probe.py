"""The cost of sampling's filters in a decode step: jaxllm.sampling.sample (top-k, top-p, min-p,
temperature, repetition penalty; one stable argsort of the vocabulary per row, the mask scattered
back) against greedy and against a bare value sort of the same logits (the floor of any sorted
filter), microseconds per call, rows x vocabulary float32.

    python benchmarks/sample_probe.py --rows 1,64,256 --vocab 151936
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.sampling import RowParams, SamplingParams, sample


def _time(fn, *args, n=50) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1e6 * (time.perf_counter() - start) / n


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,64,256")
    p.add_argument("--vocab", type=int, default=151936)
    args = p.parse_args(argv)
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.95, min_p=0.0, repetition_penalty=1.1, seed=0).resolved()
    for rows in [int(r) for r in args.rows.split(",")]:
        rng = np.random.default_rng(0)
        logits = jnp.asarray(rng.standard_normal((rows, args.vocab)).astype(jnp.bfloat16).astype(np.float32) * 3)
        seen = jnp.asarray(rng.random((rows, args.vocab)) < 0.001)
        rp = RowParams.of([params] * rows)
        step = jnp.zeros(rows, jnp.int32)
        sampled = jax.jit(lambda x, s, r, n: sample(x, s, r, n, True))
        greedy = jax.jit(lambda x, s, r, n: sample(x, s, r, n, False))
        bare = jax.jit(lambda x: jnp.cumsum(jax.nn.softmax(jnp.sort(x, axis=-1), axis=-1), axis=-1))
        print(json.dumps({"rows": rows, "vocab": args.vocab, "device": jax.devices()[0].device_kind,
                          "sample_us": round(_time(sampled, logits, seen, rp, step), 1),
                          "greedy_us": round(_time(greedy, logits, seen, rp, step), 1),
                          "bare_sort_us": round(_time(bare, logits), 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
