"""What data parallelism can give at most on a workload of N sequences: decode tokens/s of one
device at N rows against N / dp rows. dp devices each run N / dp rows with the whole model, so
dp=2's decode throughput is at most 2 x tokens/s(N / 2 rows) and its ratio to one device at most
2 x tokens/s(N / 2) / tokens/s(N): below 2 wherever the step at N / 2 rows still reads all the
weights in about the time the N-row step takes (issue 15's offline workload: 256 sequences).

    python benchmarks/dp_bound.py --shape llama3-8b --rows 128,256
"""

import argparse
import json
import sys

import jax
import numpy as np

from jaxllm import bench, runtime
from jaxllm.engine import Request
from jaxllm.random_model import random_model
from jaxllm.sampling import SamplingParams


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--rows", default="128,256")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    args = p.parse_args(argv)
    runtime.set_gpu_flags(None)
    sizes = bench._sizes(jax.default_backend() == "cpu")
    model = random_model(args.shape, dtype="bfloat16")
    rng, vocab = np.random.default_rng(0), model.config.vocab_size
    params = SamplingParams(max_new_tokens=args.new, ignore_eos=True).resolved()
    rates = {}
    for rows in [int(r) for r in args.rows.split(",")]:
        e = bench._engine(model, sizes, rows, args.prompt + args.new, chunk=64)
        for _ in range(2):  # compile run, then the timed one
            first, total, n = bench._run(e, [Request(rng.integers(0, vocab, args.prompt).tolist(), params, i) for i in range(rows)])
        rates[rows] = (n - rows) / (total - first)  # decode tokens/s after the first token
        print(json.dumps({"shape": args.shape, "rows": rows, "decode_tokens_per_s": round(rates[rows], 1)}), flush=True)
        del e
    lo, hi = min(rates), max(rates)
    print(json.dumps({"dp": hi // lo, "bound_on_ratio": round(hi // lo * rates[lo] / rates[hi], 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
