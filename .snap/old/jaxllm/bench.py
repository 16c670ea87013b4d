"""`python -m jaxllm.bench`: decode speed of random-weight models of real shapes, with transformers
measured in the same run (`--compare hf`). Prints a table and writes JSON.

    python -m jaxllm.bench --shape qwen3-0.6b --shape llama3-8b --compare hf --out bench.json

Per shape: batch-1 decode tokens/s (prompt 128, 256 new), batch-64 throughput (prompt 512,
256 new), time to first token of a 1,024-token prompt, cold start (random weights + compile, fresh
process) and warm start (same, persistent compilation cache), peak device memory, the measured
copy bandwidth and the batch-1 roofline fraction; and the offline workload nano-vllm and vLLM
publish (256 requests, prompt and output lengths uniform in 100..1024, seed 0, EOS ignored).
`--quick` shrinks every size (for the CPU test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from jaxllm import runtime
from jaxllm.engine import Engine, Request
from jaxllm.errors import JaxllmError, run_cli
from jaxllm.random_model import SHAPES, random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(b1_prompt=8, b1_new=8, bN=2, bN_prompt=16, bN_new=8, ttft_prompt=32,
                    offline_n=4, offline_lo=4, offline_hi=16, offline_slots=2)
    return dict(b1_prompt=128, b1_new=256, bN=64, bN_prompt=512, bN_new=256, ttft_prompt=1024,
                offline_n=256, offline_lo=100, offline_hi=1024, offline_slots=128)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy (median of 20, after the
    clocks have ramped up)."""
    on_cpu = jax.default_backend() == "cpu"
    x = jax.numpy.ones((2**22 if on_cpu else 2**30,), jax.numpy.bfloat16)  # 2 GiB on an accelerator
    f = jax.jit(lambda a: a + 1)
    for _ in range(5):
        f(x).block_until_ready()
    times = []
    for _ in range(20):
        t = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * x.nbytes / sorted(times)[len(times) // 2]


def _run(engine, requests):
    """(seconds to the first token, total seconds, new tokens) of serving `requests`."""
    start, first, n = time.perf_counter(), None, 0
    for ev in engine.run(requests):
        if first is None:
            first = time.perf_counter()
        n += len(ev.tokens)
    return first - start, time.perf_counter() - start, n


def _section(name, fn):
    """Run one measurement, saying how long it took (compiles included) on stderr."""
    t = time.perf_counter()
    value = fn()
    print(f"  {name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    return value


def bench_jax(shape: str, sizes: dict, dtype: str, skip=(), loop: str = "while") -> dict:
    model = _section("random weights", lambda: jax.block_until_ready(random_model(shape, dtype=dtype)))
    cfg = model.config
    rng = np.random.default_rng(0)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    out = {"shape": shape, "param_bytes": param_bytes}

    def reqs(n, prompt, new):
        p = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
        return [Request(rng.integers(0, cfg.vocab_size, prompt).tolist(), p, i) for i in range(n)]

    def timed(engine, n, prompt, new):
        _section(f"compile+run b={n} prompt={prompt} new={new}", lambda: _run(engine, reqs(n, prompt, new)))
        return _run(engine, reqs(n, prompt, new))

    if "b1" not in skip:  # batch 1: decode rate after the first token
        e1 = Engine(model, batch_size=1, max_len=sizes["b1_prompt"] + sizes["b1_new"], chunk=64, loop=loop)
        first, total, n = timed(e1, 1, sizes["b1_prompt"], sizes["b1_new"])
        out["b1_tokens_per_s"] = (n - 1) / (total - first)
    if "bN" not in skip:  # batch N: whole-run throughput, prefill included
        eN = Engine(model, batch_size=sizes["bN"], max_len=sizes["bN_prompt"] + sizes["bN_new"], chunk=64, loop=loop)
        first, total, n = timed(eN, sizes["bN"], sizes["bN_prompt"], sizes["bN_new"])
        out["bN_tokens_per_s"] = n / total
        out["bN_decode_tokens_per_s"] = (n - sizes["bN"]) / (total - first)
    if "ttft" not in skip:  # time to first token of one long prompt (warm)
        et = Engine(model, batch_size=1, max_len=sizes["ttft_prompt"] + 1)
        out["ttft_s"] = timed(et, 1, sizes["ttft_prompt"], 1)[0]
    if "offline" not in skip:
        lo, hi = sizes["offline_lo"], sizes["offline_hi"]
        orng = np.random.default_rng(0)
        prompts = orng.integers(lo, hi + 1, sizes["offline_n"])
        outputs = orng.integers(lo, hi + 1, sizes["offline_n"])
        offline = [Request(orng.integers(0, cfg.vocab_size, p).tolist(),
                           SamplingParams(max_new_tokens=int(o), ignore_eos=True).resolved(), i)
                   for i, (p, o) in enumerate(zip(prompts, outputs))]
        eo = Engine(model, batch_size=sizes["offline_slots"], max_len=2 * hi, chunk=64, loop=loop)
        # The first run compiles a prefill per (rows, bucket) it meets; the second compiles nothing.
        _, first_total, _ = _section("offline, first run", lambda: _run(eo, offline))
        compiles = eo.counters.prefill + eo.counters.decode
        _, total, n = _section("offline", lambda: _run(eo, offline))
        out["offline_tokens_per_s"] = n / total
        out["offline_first_run_tokens_per_s"] = n / first_total
        out["offline_compiles"] = compiles
        out["offline_output_tokens"] = int(n)
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_device_bytes"] = stats.get("peak_bytes_in_use")
    return out


def start_time(shape: str, sizes: dict, dtype: str, cache_dir: str) -> float:
    """Seconds for a fresh process to build the model and serve its first token."""
    code = (
        "import time; t=time.perf_counter(); from jaxllm.runtime import use_compile_cache; "
        f"use_compile_cache({cache_dir!r}); "
        "from jaxllm.random_model import random_model; from jaxllm.engine import Engine, Request; "
        "from jaxllm.sampling import SamplingParams; "
        f"m = random_model({shape!r}, dtype={dtype!r}); "
        f"e = Engine(m, batch_size=1, max_len={sizes['b1_prompt'] + sizes['b1_new']}); "
        f"p = SamplingParams(max_new_tokens=2, ignore_eos=True).resolved(); "
        f"list(e.run([Request(list(range(1, {sizes['b1_prompt'] + 1})), p)])); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def bench_hf(shape: str, sizes: dict) -> dict:
    """The transformers peer. It lives outside the package (benchmarks/hf_peer.py in a source
    checkout), so the runtime never imports torch or transformers' model classes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_peer.py"
    if not path.exists():
        raise JaxllmError("--compare hf needs a source checkout (benchmarks/hf_peer.py): run from the repository")
    spec = importlib.util.spec_from_file_location("jaxllm_hf_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bench_hf(shape, sizes)


def tp_compare(shape: str, degrees: list[int], sizes: dict, dtype: str) -> list[dict]:
    """The same random model at each tensor-parallel degree: greedy tokens must agree (compared in
    float32: in bf16 a different reduction order flips near-ties of random weights' flat logits);
    decode tokens/s at batch 1 in `dtype` for each."""
    rng = np.random.default_rng(0)
    vocab = SHAPES[shape]["vocab_size"]
    prompts = [rng.integers(0, vocab, n).tolist() for n in (17, 40)]
    greedy = SamplingParams(max_new_tokens=32, ignore_eos=True)
    rows, reference = [], None
    for tp in degrees:
        mesh = make_mesh(f"tp={tp}", devices=jax.devices()[:tp])
        exact = random_model(shape, dtype="float32", mesh=mesh)
        with jax.default_matmul_precision("highest"):  # GPUs otherwise take float32 matmuls in TF32
            tokens = [r.token_ids for r in exact.generate(prompts, greedy)]
        del exact
        model = random_model(shape, dtype=dtype, mesh=mesh)
        reference = reference or tokens
        p = SamplingParams(max_new_tokens=sizes["b1_new"], ignore_eos=True).resolved()
        e = Engine(model, batch_size=1, max_len=sizes["b1_prompt"] + sizes["b1_new"], chunk=64)
        req = lambda: [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), p)]  # noqa: E731
        _run(e, req())
        first, total, n = _run(e, req())
        rows.append({"tp": tp, "b1_tokens_per_s": (n - 1) / (total - first), "same_greedy_as_first": tokens == reference})
        print(json.dumps(rows[-1]), flush=True)
        del model, e
    return rows


def table(results: list[dict], bandwidth: float) -> str:
    def f(r, key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    rows = [f"copy bandwidth {bandwidth / 1e12:.2f} TB/s"]
    rows.append(f"{'shape':<12} {'b1 tok/s':>9} {'roofline':>8} {'bN tok/s':>9} {'offline':>8} {'ttft s':>7} "
                f"{'cold s':>7} {'warm s':>7} {'peak GB':>8}")
    for r in results:
        if r.get("b1_tokens_per_s"):
            r["roofline"] = r["b1_tokens_per_s"] / (bandwidth / r["param_bytes"])
        r["peak_gb"] = (r.get("peak_device_bytes") or 0) / 1e9
        rows.append(f"{r['shape']:<12} {f(r, 'b1_tokens_per_s', '9.1f'):>9} {f(r, 'roofline', '8.0%'):>8} "
                    f"{f(r, 'bN_tokens_per_s', '9.1f'):>9} {f(r, 'offline_tokens_per_s', '8.1f'):>8} {f(r, 'ttft_s', '7.3f'):>7} "
                    f"{f(r, 'cold_start_s', '7.1f'):>7} {f(r, 'warm_start_s', '7.1f'):>7} {f(r, 'peak_gb', '8.1f'):>8}")
        hf = r.get("hf")
        if hf:
            ratio = lambda k: f"{r[k] / hf[k]:.2f}x" if r.get(k) else "-"  # noqa: E731
            rows.append(f"{'  hf':<12} {hf['b1_tokens_per_s']:>9.1f} {'':>8} {hf['bN_tokens_per_s']:>9.1f}"
                        f"   ours/hf: b1 {ratio('b1_tokens_per_s')}, bN {ratio('bN_tokens_per_s')}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxllm.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", help="qwen3-0.6b, llama3-8b or tiny (repeatable)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compare", choices=["hf"], help="also run transformers on the same shapes")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: b1,bN,ttft,offline,start")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--loop", default="while", choices=["scan", "while"], help="the engine's decode loop")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--tp", help="instead: compare tensor-parallel degrees, e.g. 1,2 (greedy tokens and batch-1 decode)")
    args = p.parse_args(argv)
    runtime.set_gpu_flags()  # read when the backend starts, below
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    shapes = args.shape or ["qwen3-0.6b"]
    for s in shapes:
        if s not in SHAPES:
            raise JaxllmError(f"unknown shape '{s}': use one of {', '.join(SHAPES)}")
    sizes = _sizes(args.quick)
    if args.tp:
        rows = tp_compare(shapes[0], [int(d) for d in args.tp.split(",")], sizes, args.dtype)
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"device": str(jax.devices()[0].device_kind), "shape": shapes[0], "rows": rows}, f, indent=1)
        for r in rows:
            print(f"tp={r['tp']}: {r['b1_tokens_per_s']:.1f} tokens/s at batch 1, greedy tokens same as tp={rows[0]['tp']}: {r['same_greedy_as_first']}")
        return 0 if all(r["same_greedy_as_first"] for r in rows) else 1
    skip = set(args.skip.split(","))
    # Subprocesses and the peer run first: once this process starts JAX on a GPU, JAX reserves
    # most of the device memory for itself.
    starts = {}
    if "start" not in skip:
        import tempfile

        for shape in shapes:
            cache = tempfile.mkdtemp(prefix="jaxllm-cc-")
            starts[shape] = {
                "cold_start_s": _section(f"cold start {shape}", lambda: start_time(shape, sizes, args.dtype, cache)),
                "warm_start_s": _section(f"warm start {shape}", lambda: start_time(shape, sizes, args.dtype, cache)),
            }
    peer = {shape: _section(f"transformers {shape}", lambda: bench_hf(shape, sizes)) for shape in shapes} if args.compare == "hf" else {}
    bandwidth = copy_bandwidth()
    results = []
    for shape in shapes:
        print(f"{shape}:", file=sys.stderr, flush=True)
        r = bench_jax(shape, sizes, args.dtype, skip, args.loop)
        r.update(starts.get(shape, {}))
        if shape in peer:
            r["hf"] = peer[shape]
        results.append(r)
        print(json.dumps(r), flush=True)
    report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "loop": args.loop, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "bandwidth_bytes_per_s": bandwidth, "sizes": sizes, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(table(results, bandwidth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
