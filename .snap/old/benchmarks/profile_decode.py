"""Where decode time goes on a GPU: a jax.profiler trace of steady-state decode, read back with
jax.profiler.ProfileData, summarised per generated token (kernels launched, GPU-busy time, idle
gaps, the kernels that take the time) for each shape and XLA-flag variant.

    python benchmarks/profile_decode.py --out profile.json     # on the device machine

Each (shape, batch, flags) variant runs in its own process, since XLA_FLAGS are read at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BASE_FLAGS = "--xla_gpu_enable_triton_gemm=false"
VARIANTS = {
    "default": BASE_FLAGS,
    # The whole while loop as one CUDA graph (conditional nodes), so a token costs no host launches.
    # Matrix-vector products to cuBLAS instead of XLA's reduction kernels (batch-1 decode).
    "nosr": BASE_FLAGS + " --xla_gpu_enable_dot_strength_reduction=false",
    "graphs": BASE_FLAGS + " --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
    " --xla_gpu_graph_min_graph_size=1",
}
RUNS = [("qwen3-0.6b", 1, "default"), ("qwen3-0.6b", 1, "graphs"), ("llama3-8b", 1, "default"),
        ("llama3-8b", 1, "graphs"), ("qwen3-0.6b", 64, "default")]


def child(shape: str, batch: int, prompt: int, new: int, trace_dir: str) -> dict:
    import jax
    import numpy as np

    from jaxllm.engine import Engine, Request
    from jaxllm.random_model import random_model
    from jaxllm.sampling import SamplingParams

    model = jax.block_until_ready(random_model(shape, dtype="bfloat16"))
    rng = np.random.default_rng(0)
    p = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
    engine = Engine(model, batch_size=batch, max_len=prompt + new, chunk=64)

    def run():
        reqs = [Request(rng.integers(0, model.config.vocab_size, prompt).tolist(), p, i) for i in range(batch)]
        start, first, n = time.perf_counter(), None, 0
        for ev in engine.run(reqs):
            first = first or time.perf_counter()
            n += len(ev.tokens)
        return first - start, time.perf_counter() - start, n

    run()  # compile
    first, total, n = run()
    steps = (n - batch) / batch  # decode steps after the first token
    jax.profiler.start_trace(trace_dir)
    run()
    jax.profiler.stop_trace()
    out = {"shape": shape, "batch": batch, "tokens_per_s": (n - batch) / (total - first),
           "ms_per_step": 1e3 * (total - first) / steps, "param_bytes": sum(x.nbytes for x in jax.tree.leaves(model.params))}
    out.update(summarise(trace_dir, steps))
    return out


def summarise(trace_dir: str, steps: float) -> dict:
    """Kernel events of the GPU plane, per decode step (the prefill is a small share of the run)."""
    import glob

    from jax.profiler import ProfileData

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = ProfileData.from_file(path)
    kernels, lines_seen = {}, []
    first, last = None, None
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            lines_seen.append(f"{line.name} ({sum(1 for _ in line.events)})")
            if not line.name.startswith("Stream"):
                continue
            for ev in line.events:
                k = kernels.setdefault(ev.name, [0, 0.0])
                k[0] += 1
                k[1] += ev.duration_ns
                first = ev.start_ns if first is None else min(first, ev.start_ns)
                last = ev.start_ns + ev.duration_ns if last is None else max(last, ev.start_ns + ev.duration_ns)
    busy = sum(v[1] for v in kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:15]
    return {
        "gpu_lines": lines_seen,
        "kernels_per_step": sum(v[0] for v in kernels.values()) / steps,
        "busy_us_per_step": busy / 1e3 / steps,
        "span_us_per_step": (last - first) / 1e3 / steps if first is not None else None,
        "top": [(name[:90], round(c / steps, 2), round(t / 1e3 / steps, 2)) for name, (c, t) in top],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="profile.json")
    ap.add_argument("--child", nargs=4, metavar=("SHAPE", "BATCH", "PROMPT", "NEW"))
    ap.add_argument("--trace-dir", default="/tmp/jaxllm-trace")
    ap.add_argument("--runs", default=None, help="SHAPE:BATCH:VARIANT,... (default: the set in RUNS)")
    args = ap.parse_args()
    if args.child:
        shape, batch, prompt, new = args.child
        print("RESULT " + json.dumps(child(shape, int(batch), int(prompt), int(new), args.trace_dir)), flush=True)
        return
    results = []
    runs = RUNS
    if args.runs:
        runs = [(r.split(":")[0], int(r.split(":")[1]), r.split(":")[2]) for r in args.runs.split(",")]
    for shape, batch, variant in runs:
        env = dict(os.environ, XLA_FLAGS=VARIANTS[variant])
        prompt, new = (128, 256) if batch == 1 else (512, 256)
        trace = f"{args.trace_dir}/{shape}-{batch}-{variant}"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", shape, str(batch), str(prompt), str(new),
                               "--trace-dir", trace], env=env, capture_output=True, text=True, timeout=400)
        line = [out for out in proc.stdout.splitlines() if out.startswith("RESULT ")]
        if not line:
            print(f"{shape} b={batch} {variant}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        res = dict(json.loads(line[0][7:]), variant=variant, wall_s=round(time.perf_counter() - t, 1))
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
