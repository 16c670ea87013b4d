"""Batch-1 decode (and optionally batch-N throughput) of random-weight models, float against int8
and int4 weights, in one process:

    python benchmarks/quant_decode.py --shape llama3-8b [--shape qwen3-0.6b] [--bN] [--xla] [--words]

`--xla` also runs int8/int4 with every quantized product dequantizing first (quant.product's GPU
forms switched off: what the code did before them). `--triton` also runs int8 with the Triton
kernels where Hopper GPUs take quant_hopper's (quant_kernels.HOPPER off). `--words` also runs them with
the one-row products reading the kernels as 32-bit words (benchmarks/int8_words_probe.py). Prints one JSON line per (shape, quantize,
forms) and the ratios to the float run of the same shape."""

import argparse
import gc
import json
import os
import sys

import jax

from jaxllm import bench, runtime
from jaxllm.models import quant, quant_kernels

sys.path.insert(0, os.path.dirname(__file__))
from int8_words_probe import words_product  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", action="append", default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--bN", action="store_true", help="also batch-N throughput")
    p.add_argument("--xla", action="store_true", help="also int8/int4 with dequantize-then-dot everywhere")
    p.add_argument("--kinds", default="int8,int4", help="the quantized runs beside the float one (int8+tables: "
                   "quantize_embeddings too)")
    p.add_argument("--triton", action="store_true", help="also int8 without the Hopper kernel")
    p.add_argument("--words", action="store_true", help="also int8/int4 with the one-row products reading 32-bit "
                   "words (benchmarks/int8_words_probe.py)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    runtime.set_gpu_flags()
    sizes = bench._sizes(jax.default_backend() == "cpu")
    skip = {"long", "prefix", "ttft", "offline", "start"} | (set() if args.bN else {"bN"})
    rows, product, grouped = [], quant.product, quant.grouped_product
    for shape in args.shape or ["llama3-8b"]:
        base = None
        kinds = [q for q in args.kinds.split(",") if q]
        runs = [(None, "auto")] + [(q, "auto") for q in kinds] + ([(q, "xla") for q in kinds] if args.xla else [])
        runs += [("int8", "triton")] if args.triton else []
        runs += [(q, "words") for q in kinds] if args.words else []
        for q, forms in runs:
            quant.product = (lambda *a: None) if forms == "xla" else product  # read when the steps are traced
            quant.grouped_product = words_product if forms == "words" else grouped
            quant_kernels.HOPPER = forms != "triton"
            jax.clear_caches()
            q, _, extra = (q or "").partition("+")  # "int8+tables": quantize_embeddings too
            r = bench.bench_jax(shape, sizes, dict(dtype=args.dtype, quantize=q or None, quantize_embeddings=extra == "tables"),
                                skip)
            r["forms"] = forms
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
    quant.product, quant_kernels.HOPPER = product, True
    return 0


if __name__ == "__main__":
    sys.exit(main())
