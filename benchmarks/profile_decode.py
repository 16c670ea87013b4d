"""Where decode time goes on a GPU: a jax.profiler trace of steady-state decode, read back with
jax.profiler.ProfileData, summarised per generated token (kernels launched, GPU-busy time, idle
gaps, the kernels that take the time) for each shape and XLA-flag variant.

    python benchmarks/profile_decode.py --out profile.json     # on the device machine
    python benchmarks/profile_decode.py --runs llama3-8b:1:default:tp=1,llama3-8b:1:default:tp=2

A run's fourth field is a mesh (jaxllm.sharding.make_mesh over the first devices); the summary
then reads the first GPU's plane only, and counts the collectives' kernels (NCCL's) apart.

Each (shape, batch, flags) variant runs in its own process, since XLA_FLAGS are read at start-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

BASE_FLAGS = "--xla_gpu_enable_triton_gemm=false"
SYNC = " --xla_gpu_disable_async_collectives=ALLREDUCE,ALLGATHER,REDUCESCATTER,ALLTOALL,COLLECTIVEPERMUTE"
# name: (XLA_FLAGS, Engine keyword arguments)
VARIANTS = {
    "default": BASE_FLAGS,
    "xla-attn": (BASE_FLAGS, {"attention": "xla"}),
    "ps64": (BASE_FLAGS, {"page_size": 64}),
    "ps128": (BASE_FLAGS, {"page_size": 128}),
    # XLA's dot merger fuses the q/k/v (and gate/up) products into one by concatenating their
    # weights, inside the decode loop: every step copies those weights.
    "nomerge": BASE_FLAGS + " --xla_disable_hlo_passes=dot-merger",
    "nm-xla": (BASE_FLAGS + " --xla_disable_hlo_passes=dot-merger", {"attention": "xla"}),
    "nm-graphs": BASE_FLAGS + " --xla_disable_hlo_passes=dot-merger --xla_gpu_enable_command_buffer="
    "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,COLLECTIVES,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1",
    "nm-graphs-xla": (BASE_FLAGS + " --xla_disable_hlo_passes=dot-merger --xla_gpu_enable_command_buffer="
                      "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,COLLECTIVES,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1",
                      {"attention": "xla"}),
    # Collectives on the compute stream (not async): a while loop with async collectives in it is
    # not captured into a CUDA graph (tp=2 traced 676 kernels a step with the graphs flags on).
    "nm-graphs-sync": BASE_FLAGS + " --xla_disable_hlo_passes=dot-merger --xla_gpu_enable_command_buffer="
    "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,COLLECTIVES,WHILE,CONDITIONAL --xla_gpu_graph_min_graph_size=1"
    " --xla_gpu_disable_async_collectives=ALLREDUCE,ALLGATHER,REDUCESCATTER,ALLTOALL,COLLECTIVEPERMUTE",
    # The whole while loop as one CUDA graph (conditional nodes), so a token costs no host launches.
    # Matrix-vector products to cuBLAS instead of XLA's reduction kernels (batch-1 decode).
    "nosr": BASE_FLAGS + " --xla_gpu_enable_dot_strength_reduction=false",
    # Tensor parallel: the CLIs' flags (runtime.TP_GPU_XLA_FLAGS: NCCL all-reduces on the compute
    # stream); XLA's one-shot all-reduce kernel on the compute stream; NCCL with its LL protocol.
    # A third element is environment variables for the child.
    "tp": BASE_FLAGS + " --xla_gpu_unsupported_use_all_reduce_one_shot_kernel=false" + SYNC,
    "tp-oneshot": BASE_FLAGS + " --xla_gpu_unsupported_use_all_reduce_one_shot_kernel=true" + SYNC,
    "tp-ll": (BASE_FLAGS + " --xla_gpu_unsupported_use_all_reduce_one_shot_kernel=false" + SYNC, {}, {"NCCL_PROTO": "LL"}),
    "tp-ll128": (BASE_FLAGS + " --xla_gpu_unsupported_use_all_reduce_one_shot_kernel=false" + SYNC, {}, {"NCCL_PROTO": "LL128"}),
    "int8": (BASE_FLAGS, {"quantize": "int8"}),
    "int4": (BASE_FLAGS, {"quantize": "int4"}),
    "kv-int8": (BASE_FLAGS, {"kv_dtype": "int8"}),
    "graphs": BASE_FLAGS + " --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
    " --xla_gpu_graph_min_graph_size=1",
}
RUNS = [("qwen3-0.6b", 1, "default"), ("qwen3-0.6b", 1, "graphs"), ("llama3-8b", 1, "default"),
        ("llama3-8b", 1, "graphs"), ("qwen3-0.6b", 64, "default")]


def child(shape: str, batch: int, prompt: int, new: int, trace_dir: str, engine_kw: dict) -> dict:
    import jax
    import numpy as np

    from jaxllm.engine import Engine, Request
    from jaxllm.random_model import random_model
    from jaxllm.sampling import SamplingParams
    from jaxllm.sharding import make_mesh

    spec, quantize, kv_dtype = (engine_kw.pop(k, None) for k in ("mesh", "quantize", "kv_dtype"))
    mesh = make_mesh(spec, devices=jax.devices()[: math.prod(int(a.split("=")[1]) for a in spec.split(","))]) if spec else None
    model = jax.block_until_ready(random_model(shape, dtype="bfloat16", mesh=mesh, quantize=quantize,
                                                   kv_dtype=kv_dtype))
    rng = np.random.default_rng(0)
    p = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
    engine = Engine(model, batch_size=batch, max_len=prompt + new, chunk=64, **engine_kw)

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
    out = {"shape": shape, "batch": batch, "mesh": spec, "tokens_per_s": (n - batch) / (total - first),
           "ms_per_step": 1e3 * (total - first) / steps, "param_bytes": sum(x.nbytes for x in jax.tree.leaves(model.params))}
    out.update(summarise(trace_dir, steps))
    return out


def _union_ns(spans) -> float:
    """Length of the union of (start, end) intervals: time a line was busy, nested events once."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


def _is_collective(name: str) -> bool:
    low = name.lower()
    return "nccl" in low or "all_reduce" in low or "allreduce" in low


def _device(plane, steps: float) -> dict:
    """One GPU's kernels per decode step: busy time, collectives apart, and the idle time between
    one kernel's end and the next one's start (on any stream) by the kernel before the gap: where
    the device waits on the host or on the other devices."""
    kernels, lines_seen, events = {}, [], []
    for line in plane.lines:
        lines_seen.append(f"{line.name} ({sum(1 for _ in line.events)})")
        if not line.name.startswith("Stream"):
            continue
        for ev in line.events:
            events.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name))
            k = kernels.setdefault(ev.name, [0, 0.0])
            k[0] += 1
            k[1] += ev.duration_ns
    events.sort()
    gaps, reach = {}, None
    for (start, end, name), nxt in zip(events, events[1:]):
        reach = end if reach is None else max(reach, end)
        if nxt[0] > reach:
            g = gaps.setdefault(name[:60], [0, 0.0])
            g[0] += 1
            g[1] += nxt[0] - reach
    comm = {name: v for name, v in kernels.items() if _is_collective(name)}
    return {
        "kernels_per_step": sum(v[0] for v in kernels.values()) / steps,
        "busy_us_per_step": sum(v[1] for v in kernels.values()) / 1e3 / steps,
        "span_us_per_step": (max(e[1] for e in events) - events[0][0]) / 1e3 / steps if events else None,
        "idle_us_per_step": sum(g[1] for g in gaps.values()) / 1e3 / steps,
        "collective_kernels_per_step": sum(v[0] for v in comm.values()) / steps,
        "collective_us_per_step": sum(v[1] for v in comm.values()) / 1e3 / steps,
        "collectives": [(name[:60], round(c / steps, 2), round(t / 1e3 / max(c, 1), 1)) for name, (c, t) in comm.items()],
        "idle_after": [(name, round(c / steps, 2), round(t / 1e3 / steps, 2))
                       for name, (c, t) in sorted(gaps.items(), key=lambda kv: -kv[1][1])[:8]],
        "top": [(name[:90], round(c / steps, 2), round(t / 1e3 / steps, 2))
                for name, (c, t) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:15]],
        "gpu_lines": lines_seen,
    }


def summarise(trace_dir: str, steps: float) -> dict:
    """Per decode step (the prefill is a small share of the run): the first GPU's kernels in full,
    the others' totals (each runs the same program on a mesh; "collectives" gives each collective
    kernel's mean microseconds, which include waiting for the slowest device), and the host
    threads that were busiest (union of their events: launching thunks, waiting on the device)."""
    import glob

    from jax.profiler import ProfileData

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = ProfileData.from_file(path)
    gpus = sorted((plane for plane in data.planes if plane.name.startswith("/device:GPU")), key=lambda p: p.name)
    out = {"gpu_planes": [plane.name for plane in gpus]}
    if gpus:
        out.update(_device(gpus[0], steps))
        out["other_gpus"] = [{k: v for k, v in _device(plane, steps).items() if k not in ("top", "gpu_lines", "idle_after")}
                             for plane in gpus[1:]]
    threads = []
    for plane in data.planes:
        if plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            spans = [(ev.start_ns, ev.start_ns + ev.duration_ns) for ev in line.events]
            if spans:
                threads.append((f"{plane.name} {line.name}"[:80], len(spans) / steps, _union_ns(spans) / 1e3 / steps))
    out["host_threads"] = [(name, round(n, 1), round(us, 1)) for name, n, us in sorted(threads, key=lambda t: -t[2])[:8]]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="profile.json")
    ap.add_argument("--child", nargs=5, metavar=("SHAPE", "BATCH", "PROMPT", "NEW", "ENGINE_KW"))
    ap.add_argument("--trace-dir", default="/tmp/jaxllm-trace")
    ap.add_argument("--dump", default=None, help="folder for XLA's HLO dumps of the decode step")
    ap.add_argument("--runs", default=None, help="SHAPE:BATCH:VARIANT,... (default: the set in RUNS)")
    args = ap.parse_args()
    if args.child:
        shape, batch, prompt, new, kw = args.child
        print("RESULT " + json.dumps(child(shape, int(batch), int(prompt), int(new), args.trace_dir, json.loads(kw))), flush=True)
        return
    results = []
    runs = RUNS
    if args.runs:
        runs = [(r.split(":")[0], int(r.split(":")[1]), *r.split(":")[2:]) for r in args.runs.split(";" if ";" in args.runs else ",")]
    for shape, batch, variant, *mesh in runs:
        flags, kw, extra = (tuple(VARIANTS[variant]) + ({},))[:3] if isinstance(VARIANTS[variant], tuple) else (VARIANTS[variant], {}, {})
        kw = dict(kw, mesh=mesh[0]) if mesh else kw
        if args.dump:
            flags += f" --xla_dump_to={args.dump}/{variant} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*decode.*"
        env = dict(os.environ, XLA_FLAGS=flags, **extra)
        prompt, new = (128, 256) if batch == 1 else (512, 256)
        trace = f"{args.trace_dir}/{shape}-{batch}-{variant}" + (f"-{mesh[0].replace('=', '').replace(',', '-')}" if mesh else "")
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", shape, str(batch), str(prompt), str(new), json.dumps(kw),
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
