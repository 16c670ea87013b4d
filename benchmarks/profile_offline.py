"""Where the offline workload's time goes on a GPU: the bench's 256 requests (100..1024 in/out) on
one engine, once to compile, then under jax.profiler: GPU-busy vs wall time, the kernels that take
it, and the engine's calls (prefill / decode calls, decode steps, rows active per step).

    python benchmarks/profile_offline.py --shape qwen3-0.6b --out offline_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-0.6b")
    ap.add_argument("--kv-dtype", default=None, help="int8 or fp8 (default: the model's dtype)")
    ap.add_argument("--out", default="offline_profile.json")
    ap.add_argument("--trace-dir", default="/tmp/jaxllm-offline-trace")
    args = ap.parse_args()
    from jaxllm import runtime

    runtime.set_gpu_flags()
    import jax
    from profile_decode import summarise

    from jaxllm import bench
    from jaxllm.random_model import random_model

    model = jax.block_until_ready(random_model(args.shape, dtype="bfloat16", kv_dtype=args.kv_dtype))
    sizes = bench._sizes(False)
    engine = bench._engine(model, sizes, sizes["offline_slots"], 2 * sizes["offline_hi"], pages=None, chunk=64)
    requests = bench.offline_requests(model.config, sizes)
    bench._run(engine, requests)  # compile
    engine.blocks.reset_prefix_cache()
    calls = {"prefill": 0, "decode": 0, "decode_steps": 0, "active_row_steps": 0}
    prefill, decode = engine.runner.prefill, engine.runner.decode

    def counted_prefill(*a, **k):
        calls["prefill"] += 1
        return prefill(*a, **k)

    def counted_decode(*a, **k):
        calls["decode"] += 1
        out = decode(*a, **k)
        got = out[1] >= 0
        calls["decode_steps"] += int(got.sum(1).max()) if got.any() else 0
        calls["active_row_steps"] += int(got.sum())
        return out

    engine.runner.prefill, engine.runner.decode = counted_prefill, counted_decode
    jax.profiler.start_trace(args.trace_dir)
    _, total, n = bench._run(engine, requests)
    jax.profiler.stop_trace()
    out = {"shape": args.shape, "kv_dtype": args.kv_dtype, "tokens_per_s": n / total, "wall_s": total, "tokens": n, **calls,
           "mean_active_rows": calls["active_row_steps"] / max(calls["decode_steps"], 1)}
    summary = summarise(args.trace_dir, 1.0)  # per run, not per step
    out.update(busy_s=summary["busy_us_per_step"] / 1e6, span_s=summary["span_us_per_step"] / 1e6,
               top=[(name, count, round(us / 1e6, 3)) for name, count, us in summary["top"]])
    print(json.dumps(out, indent=1))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
