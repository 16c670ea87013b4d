"""Batch-1 decode tokens/s of a random-weight model at tensor-parallel degrees, bf16, nothing else
(no float32 agreement check: `python -m jaxllm.bench --tp` does that): for A/B runs of XLA and
NCCL settings, each in its own process.

    python benchmarks/tp_decode.py --shape llama3-8b --tp 1,2 [--tp-flags off]
    XLA_FLAGS=... python benchmarks/tp_decode.py ...     # flags of your own instead

Without XLA_FLAGS it runs with jaxllm.runtime.gpu_flags for the largest degree (the CLIs' flags);
`--tp-flags off` leaves out the tensor-parallel flags (runtime.TP_GPU_XLA_FLAGS), for the A/B.
`--processes N` runs the tp=N case as N processes of one GPU each (jax.distributed on this host),
each with its own host threads launching its GPU's work, as vLLM runs tensor parallelism.
"""

import argparse
import json
import os
import socket
import subprocess
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
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--attention", choices=["cudnn", "xla"], default=None)
    p.add_argument("--rank", default=None, help=argparse.SUPPRESS)  # "PORT,RANK" in a child
    args = p.parse_args(argv)
    top = max(int(t) for t in args.tp.split(","))
    runtime.set_gpu_flags(f"tp={top}" if args.tp_flags == "on" else None)  # before the backend starts
    if args.processes > 1 and args.rank is None:
        return _spawn(args.processes, argv if argv is not None else sys.argv[1:])
    if args.rank is not None:
        port, rank = (int(x) for x in args.rank.split(","))
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # a CPU rehearsal
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=args.processes, process_id=rank,
                                   local_device_ids=[rank])
    sizes = bench._sizes(jax.default_backend() == "cpu")
    rng = np.random.default_rng(0)
    vocab = bench.SHAPES[args.shape]["vocab_size"]
    degrees = [int(t) for t in args.tp.split(",")]
    for tp in degrees if args.processes == 1 else [args.processes]:
        model = random_model(args.shape, dtype="bfloat16", mesh=make_mesh(f"tp={tp}", devices=jax.devices()[:tp]))
        e = bench._engine(model, sizes, 1, sizes["b1_prompt"] + sizes["b1_new"], chunk=64, attention=args.attention)
        params = SamplingParams(max_new_tokens=sizes["b1_new"], ignore_eos=True).resolved()
        bench._run(e, [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), params)])
        first, total, n = bench._run(e, [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), params)])
        if jax.process_index() != 0:
            continue
        print(json.dumps({"label": args.label, "tp": tp, "processes": args.processes, "attention": args.attention,
                          "b1_tokens_per_s": round((n - 1) / (total - first), 1),
                          "xla_flags": os.environ.get("XLA_FLAGS", ""), "nccl_proto": os.environ.get("NCCL_PROTO")}), flush=True)
        del model, e
    return 0


def _spawn(n: int, argv: list) -> int:
    """Run this script as n processes of one GPU each; rank 0 prints."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--rank", f"{port},{r}"]) for r in range(n)]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
