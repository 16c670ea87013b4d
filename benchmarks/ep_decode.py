"""Decode tokens/s of a random-weight model on several meshes, bf16, and how far each mesh's greedy
tokens agree with the first one's (issue 15: expert parallelism; any mesh spec works).

    python benchmarks/ep_decode.py --shape qwen3-30b-a3b --meshes "ep=1;ep=2" --batch 1,16 [--layers 12]

`--layers` keeps the named shape's layers but fewer of them (a quick look at a big model).
"""

import argparse
import json
import math
import sys
import time

import jax
import numpy as np

from jaxllm import bench
from jaxllm.engine import Request
from jaxllm.random_model import SHAPES, random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-30b-a3b")
    p.add_argument("--meshes", default="ep=1;ep=2", help="';'-separated mesh specs, each over the first devices it needs")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=64)
    args = p.parse_args(argv)
    raw = dict(SHAPES[args.shape])
    if args.layers:
        raw["num_hidden_layers"] = args.layers
    sizes = dict(bench._sizes(False), b1_prompt=args.prompt)
    rng = np.random.default_rng(0)
    prompts = {b: [rng.integers(0, raw["vocab_size"], args.prompt).tolist() for _ in range(b)] for b in map(int, args.batch.split(","))}
    first = {}
    for spec in args.meshes.split(";"):
        n = math.prod(int(item.split("=")[1]) for item in spec.split(","))
        model = random_model(raw, dtype="bfloat16", mesh=make_mesh(spec, devices=jax.devices()[:n]))
        out = {"shape": args.shape, "layers": raw["num_hidden_layers"], "mesh": spec}
        for b, batch in prompts.items():
            e = bench._engine(model, sizes, b, args.prompt + args.new, chunk=64)
            params = SamplingParams(max_new_tokens=args.new, ignore_eos=True).resolved()
            reqs = lambda: [Request(list(t), params, i) for i, t in enumerate(batch)]  # noqa: E731
            bench._run(e, reqs())  # compile
            tokens, start, n_tok = {}, None, 0
            t0 = time.perf_counter()
            for ev in e.run(reqs()):
                start = start or time.perf_counter()
                tokens.setdefault(ev.index, []).extend(ev.tokens)
                n_tok += len(ev.tokens)
            total = time.perf_counter() - t0
            out[f"b{b}_tokens_per_s"] = round((n_tok - b) / (total - (start - t0)), 1)
            seqs = [tokens[i] for i in range(b)]
            if b not in first:
                first[b] = seqs
            else:
                same = [sum(x == y for x, y in zip(s, f)) / len(f) for s, f in zip(seqs, first[b])]
                out[f"b{b}_greedy_agreement"] = round(float(np.mean(same)), 3)
            del e
        print(json.dumps(out), flush=True)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
