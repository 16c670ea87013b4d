"""Batch-1 decode tokens/s of a random-weight model at tensor-parallel degrees, bf16, nothing else
(no float32 agreement check: `python -m jaxllm.bench --tp` does that): for A/B runs of XLA and
NCCL settings, each in its own process.

    python benchmarks/tp_decode.py --shape llama3-8b --tp 1,2 [--tp-flags off]
    XLA_FLAGS=... python benchmarks/tp_decode.py ...     # flags of your own instead

Without XLA_FLAGS it runs with jaxllm.runtime.gpu_flags for the largest degree (the CLIs' flags);
`--tp-flags off` leaves out the tensor-parallel flags (runtime.TP_GPU_XLA_FLAGS), for the A/B.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

from jaxllm import bench, runtime
from jaxllm.engine import Request
from jaxllm.random_model import random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--tp", default="1,2")
    p.add_argument("--label", default="")
    p.add_argument("--tp-flags", choices=["on", "off"], default="on")
    args = p.parse_args(argv)
    top = max(int(t) for t in args.tp.split(","))
    runtime.set_gpu_flags(f"tp={top}" if args.tp_flags == "on" else None)  # before the backend starts
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
