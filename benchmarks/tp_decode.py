"""Batch-1 decode tokens/s of a random-weight model at tensor-parallel degrees, bf16, nothing else
(no float32 agreement check: `python -m jaxllm.bench --tp` does that): for A/B runs of XLA and
NCCL settings, each in its own process.

    XLA_FLAGS=... python benchmarks/tp_decode.py --shape llama3-8b --tp 1,2
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

from jaxllm import bench
from jaxllm.engine import Request
from jaxllm.random_model import random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--tp", default="1,2")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    sizes = bench._sizes(jax.default_backend() == "cpu")
    rng = np.random.default_rng(0)
    vocab = bench.SHAPES[args.shape]["vocab_size"]
    for tp in [int(t) for t in args.tp.split(",")]:
        model = random_model(args.shape, dtype="bfloat16", mesh=make_mesh(f"tp={tp}", devices=jax.devices()[:tp]))
        e = bench._engine(model, sizes, 1, sizes["b1_prompt"] + sizes["b1_new"], chunk=64)
        params = SamplingParams(max_new_tokens=sizes["b1_new"], ignore_eos=True).resolved()
        bench._run(e, [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), params)])
        first, total, n = bench._run(e, [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), params)])
        print(json.dumps({"label": args.label, "tp": tp, "b1_tokens_per_s": round((n - 1) / (total - first), 1),
                          "xla_flags": os.environ.get("XLA_FLAGS", ""), "nccl_proto": os.environ.get("NCCL_PROTO")}), flush=True)
        del model, e
    return 0


if __name__ == "__main__":
    sys.exit(main())
