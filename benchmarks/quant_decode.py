"""Batch-1 decode (and optionally batch-N throughput) of random-weight models, float against int8
and int4 weights, in one process: `python benchmarks/quant_decode.py --shape llama3-8b [--bN]`.
Prints one JSON line per (shape, quantize) and the ratios to the float run of the same shape."""

import argparse
import gc
import json
import sys

import jax

from jaxllm import bench, runtime
from jaxllm.models import quant


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", action="append", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--bN", action="store_true", help="also batch-N throughput")
    p.add_argument("--grouped", type=int, default=0, help="also run int8/int4 with quant.FEW_ROWS set to this "
                   "(products of that many rows or fewer contract per group instead of dequantizing first)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    runtime.set_gpu_flags()
    sizes = bench._sizes(jax.default_backend() == "cpu")
    skip = {"long", "prefix", "ttft", "offline", "start"} | (set() if args.bN else {"bN"})
    rows = []
    for shape in args.shape or ["llama3-8b"]:
        base = None
        runs = [(None, 0), ("int8", 0), ("int4", 0)] + ([("int8", args.grouped), ("int4", args.grouped)] if args.grouped else [])
        for q, few in runs:
            quant.FEW_ROWS = few  # read when the steps are traced: forget every trace of the last run
            jax.clear_caches()
            r = bench.bench_jax(shape, sizes, args.dtype, skip, q)
            r["few_rows"] = few
            gc.collect()
            base = base or r
            r["b1_vs_float"] = r["b1_tokens_per_s"] / base["b1_tokens_per_s"]
            if args.bN:
                r["bN_vs_float"] = r["bN_tokens_per_s"] / base["bN_tokens_per_s"]
            print(json.dumps(r), flush=True)
            rows.append(r)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
