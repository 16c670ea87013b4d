"""`python -m jaxllm.bench`: decode speed of random-weight models of real shapes, with transformers
measured in the same run (`--compare hf`). Prints a table and writes JSON.

    python -m jaxllm.bench --shape qwen3-0.6b --shape llama3-8b --compare hf --out bench.json

Per shape: batch-1 decode tokens/s (prompt 128, 256 new), batch-64 throughput (prompt 512,
256 new), time to first token of a 1,024-token prompt, cold start (random weights + compile, fresh
process) and warm start (same, persistent compilation cache), peak device memory, the measured
copy and read bandwidths and the batch-1 roofline fraction (of the read rate); the offline workload nano-vllm and vLLM
publish (256 requests, prompt and output lengths uniform in 100..1024, seed 0, EOS ignored), its
first run (compiles included) and steady rate; `long`: one 32,768- and one 40,000-token prompt (capped by the
shape's positions) producing 256 tokens each, time to first token and peak memory; `prefix`: 256
requests sharing a 2,000-token prefix (50 tokens of their own, 64 new), with and without prefix
caching. `--quick` shrinks every size (for the CPU test).

`--load` instead times loading: jaxllm/bench_load.py.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np

from jaxllm import runtime
from jaxllm.bench_load import (
    LOAD_SKIPS,
    PEER_FIX,
    check_load_folder,
    check_out,
    finite,
    fresh_python,
    hf_peer,
    hf_peer_missing,
    load_main,
    load_runs,
    run_settings,
    section,
    skip_names,
    why_not_writable,
    write_json,
)
from jaxllm.engine import Engine, Request
from jaxllm.errors import ArgumentParser, JaxllmError, run_cli, size_text
from jaxllm.loader import resolve_dtype
from jaxllm.models import quant
from jaxllm.models.attention import check_kv_dtype, kv_cache_bytes
from jaxllm.random_model import SHAPES, random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh, parse_spec

SECTIONS = ("b1", "bN", "ttft", "offline", "long", "prefix", "start")  # what --skip takes (without --load)


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(b1_prompt=8, b1_new=8, bN=2, bN_prompt=16, bN_new=8, ttft_prompt=32,
                    offline_n=4, offline_lo=4, offline_hi=16, offline_slots=2, long=(64, 80), long_new=4,
                    prefix_n=6, prefix_len=40, prefix_own=5, prefix_new=4, prefill_tokens=64, page_size=8)
    return dict(b1_prompt=128, b1_new=256, bN=64, bN_prompt=512, bN_new=256, ttft_prompt=1024,
                offline_n=256, offline_lo=100, offline_hi=1024, offline_slots=256, long=(32768, 40000), long_new=256,
                prefix_n=256, prefix_len=2000, prefix_own=50, prefix_new=64, prefill_tokens=8192, page_size=16)


def bandwidths() -> tuple[float, float]:
    """(copy, read): bytes read + written per second by a large device-to-device copy, and bytes read
    per second by one row times a large matrix (what batch-1 decode does with each weight; median of
    20 each, after the clocks have ramped up). The read rate is batch-1 decode's roofline: on an
    H200 a copy (2.75 TB/s) and a sum (3.14 TB/s) run below what decode reaches (3.20 TB/s,
    2026-11-30)."""
    on_cpu = jax.default_backend() == "cpu"
    side = 2**11 if on_cpu else 2**15  # 2 GiB of bfloat16 on an accelerator
    x = jax.numpy.ones((side * side,), jax.numpy.bfloat16)
    w, v = x.reshape(side, side), jax.numpy.ones((1, side), jax.numpy.bfloat16)
    copy, read = jax.jit(lambda a: a + 1), jax.jit(lambda m: v @ m)

    def rate(f, arg, nbytes):
        for _ in range(5):
            f(arg).block_until_ready()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            f(arg).block_until_ready()
            times.append(time.perf_counter() - t)
        return nbytes / sorted(times)[len(times) // 2]

    return rate(copy, x, 2 * x.nbytes), rate(read, w, w.nbytes)


def _run(engine, requests):
    """(seconds to the first token, total seconds, new tokens) of serving `requests`."""
    start, first, n = time.perf_counter(), None, 0
    for ev in engine.run(requests):
        if first is None:
            first = time.perf_counter()
        n += len(ev.tokens)
    return first - start, time.perf_counter() - start, n


def _engine(model, sizes: dict, batch: int, max_len: int, pages: int | None = "fit", **kw) -> Engine:
    """An engine with the run's page size and prefill budget; pages "fit": just enough for `batch`
    sequences of max_len (None: the default share of device memory)."""
    ps = sizes["page_size"]
    num_pages = batch * -(-max_len // ps) if pages == "fit" else pages
    return Engine(model, batch_size=batch, max_len=max_len, num_pages=num_pages, page_size=ps,
                  prefill_tokens=sizes["prefill_tokens"], **kw)


def _peak_bytes() -> int | None:
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def bench_long(model, sizes: dict) -> dict:
    """One long prompt at a time (each run alone in a fresh engine whose pool holds just it):
    time to first token, tokens/s after it, and peak device memory against weights + its KV."""
    cfg, out = model.config, {}
    rng = np.random.default_rng(1)
    params = SamplingParams(max_new_tokens=sizes["long_new"], ignore_eos=True).resolved()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    for n in sizes["long"]:
        if n + sizes["long_new"] > cfg.max_position_embeddings and cfg.rope.type != "llama3":
            n = cfg.max_position_embeddings - sizes["long_new"]
        engine = _engine(model, sizes, 1, n + sizes["long_new"], chunk=64)
        # A fresh prompt for the timed run: the compile run's pages would be prefix-cache hits.
        prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for _ in range(2)]
        section(f"long {n} (compile)", lambda e=engine, p=prompts[0]: _run(e, [Request(p, params)]))
        first, total, new = _run(engine, [Request(prompts[1], params)])
        kv = kv_cache_bytes(cfg, n + sizes["long_new"], model.dtype, model.kv_dtype)
        out[f"long_{n}"] = dict(ttft_s=first, decode_tokens_per_s=(new - 1) / (total - first), peak_bytes=_peak_bytes(),
                                weights_plus_kv_bytes=param_bytes + kv)
        del engine
    return out


def bench_prefix(model, sizes: dict) -> dict:
    """256 requests sharing a 2,000-token prefix, with and without prefix caching: the same
    tokens, and the ratio of the two runs' wall times (each after a whole compile run, the prefix
    cache emptied between)."""
    cfg, rng = model.config, np.random.default_rng(2)
    shared = rng.integers(0, cfg.vocab_size, sizes["prefix_len"]).tolist()
    prompts = [shared + rng.integers(0, cfg.vocab_size, sizes["prefix_own"]).tolist() for _ in range(sizes["prefix_n"])]
    params = SamplingParams(max_new_tokens=sizes["prefix_new"], ignore_eos=True).resolved()
    reqs = [Request(p, params, i) for i, p in enumerate(prompts)]
    max_len = len(prompts[0]) + sizes["prefix_new"]
    out, tokens = {}, {}
    # cached (decode reads the shared pages once: cascade attention), cached with every row
    # reading its own table, not cached
    for name, caching, cascade in (("on", True, None), ("on_plain", True, False), ("off", False, None)):
        engine = _engine(model, sizes, min(sizes["bN"], sizes["prefix_n"]), max_len, prefix_caching=caching, chunk=64,
                         cascade=cascade)
        for run in ("compile run", "second run"):  # on a GPU a program's second execution carries a one-time cost too
            section(f"prefix {name} ({run})", lambda e=engine: _run(e, reqs))
            engine.blocks.reset_prefix_cache()
        got = {}
        start = time.perf_counter()
        for ev in engine.run(reqs):
            got.setdefault(ev.index, []).extend(ev.tokens)
        out[f"prefix_{name}_s"] = time.perf_counter() - start
        out[f"prefix_{name}_cascaded_calls"] = engine.scheduler.stats.cascaded
        tokens[name] = got
        del engine
    out["prefix_speedup"] = out["prefix_off_s"] / out["prefix_on_s"]
    out["prefix_same_tokens"] = tokens["on"] == tokens["off"]
    out["prefix_same_tokens_plain"] = tokens["on_plain"] == tokens["off"]
    return out


def build_args(args) -> dict:
    """random_model's keywords that the command line sets (`build`, below): dtype, mesh, weights' and KV cache's formats."""
    return dict(dtype=args.dtype, mesh=args.mesh, quantize=args.quantize, quantize_embeddings=args.quantize_embeddings,
                kv_dtype=args.kv_dtype)


def bench_jax(shape: str, sizes: dict, build: dict, skip=()) -> dict:
    """The sections of one shape, its model random_model(shape, **build)."""
    model = section("random weights", lambda: jax.block_until_ready(random_model(shape, **build)))
    cfg = model.config
    rng = np.random.default_rng(0)
    param_bytes = int(sum(quant.bytes_of(x) for x in jax.tree.leaves(model.params)))  # int4: half a byte
    out = {"shape": shape, "param_bytes": param_bytes, **{k: v for k, v in build.items() if k != "dtype"}}

    def reqs(n, prompt, new):
        p = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
        return [Request(rng.integers(0, cfg.vocab_size, prompt).tolist(), p, i) for i in range(n)]

    def timed(engine, n, prompt, new):
        section(f"compile+run b={n} prompt={prompt} new={new}", lambda: _run(engine, reqs(n, prompt, new)))
        return _run(engine, reqs(n, prompt, new))

    # Long prompts first: the peak device memory they report is then theirs (it never goes down).
    if "long" not in skip:
        out.update(section("long prompts", lambda: bench_long(model, sizes)))
    if "prefix" not in skip:
        out.update(section("shared prefix", lambda: bench_prefix(model, sizes)))
    if "b1" not in skip:  # batch 1: decode rate after the first token
        e1 = _engine(model, sizes, 1, sizes["b1_prompt"] + sizes["b1_new"], chunk=64)
        first, total, n = timed(e1, 1, sizes["b1_prompt"], sizes["b1_new"])
        out["b1_tokens_per_s"] = section("b1 tokens/s", lambda: (n - 1) / (total - first))
        del e1
    if "bN" not in skip:  # batch N: whole-run throughput, prefill included
        eN = _engine(model, sizes, sizes["bN"], sizes["bN_prompt"] + sizes["bN_new"], chunk=64)
        first, total, n = timed(eN, sizes["bN"], sizes["bN_prompt"], sizes["bN_new"])
        out["bN_tokens_per_s"] = section("bN tokens/s", lambda: n / total)
        out["bN_decode_tokens_per_s"] = (n - sizes["bN"]) / (total - first)
        del eN
    if "ttft" not in skip:  # time to first token of one long prompt (warm)
        et = _engine(model, sizes, 1, sizes["ttft_prompt"] + 1)
        out["ttft_s"] = timed(et, 1, sizes["ttft_prompt"], 1)[0]
        del et
    if "offline" not in skip:
        offline = offline_requests(cfg, sizes)
        eo = _engine(model, sizes, sizes["offline_slots"], 2 * sizes["offline_hi"], pages=None, chunk=64)
        # The first run compiles a prefill per (rows, bucket) it meets; the second compiles nothing.
        _, first_total, _ = section("offline, first run", lambda: _run(eo, offline))
        compiles = eo.counters.prefill + eo.counters.decode
        eo.blocks.reset_prefix_cache()  # the same prompts again: no hits from the first run
        _, total, n = section("offline", lambda: _run(eo, offline))
        out["offline_tokens_per_s"] = section("offline tokens/s", lambda: n / total)
        out["offline_first_run_tokens_per_s"] = n / first_total
        out["offline_compiles"] = compiles
        # the pool, and the rows per cuDNN paged decode call it allows (paged_decode.cudnn_paged_rows): the H100's
        # default pool once sent decode to a 4x slower gather (docs/benchmarks.md, 2026-12-03)
        out["offline_pool_pages"] = int(eo.blocks.num_pages)
        out["offline_decode_rows_per_call"] = eo.runner.cudnn_rows
        out["offline_output_tokens"] = int(n)
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_device_bytes"] = stats.get("peak_bytes_in_use")
    return out


def offline_requests(cfg, sizes: dict) -> list[Request]:
    lo, hi = sizes["offline_lo"], sizes["offline_hi"]
    orng = np.random.default_rng(0)
    prompts = orng.integers(lo, hi + 1, sizes["offline_n"])
    outputs = orng.integers(lo, hi + 1, sizes["offline_n"])
    return [Request(orng.integers(0, cfg.vocab_size, p).tolist(), SamplingParams(max_new_tokens=int(o), ignore_eos=True).resolved(), i)
            for i, (p, o) in enumerate(zip(prompts, outputs))]


def offline_first_run(shape: str, sizes: dict, build: dict, cache_dir: str) -> float:
    """Output tokens/s of the offline workload's first run in a fresh process (its compiles
    included; with `cache_dir` warm, loaded from the persistent cache instead)."""
    code = (
        "import json, sys, time; from jaxllm import bench; from jaxllm.runtime import use_compile_cache; "
        f"use_compile_cache({cache_dir!r}); from jaxllm.random_model import random_model; "
        f"m = random_model({shape!r}, **{build!r}); sizes = json.loads({json.dumps(sizes)!r}); "
        "e = bench._engine(m, sizes, sizes['offline_slots'], 2 * sizes['offline_hi'], pages=None, chunk=64); "
        "_, total, n = bench._run(e, bench.offline_requests(m.config, sizes)); print(n / total)"
    )
    return float(fresh_python(["-c", code], f"the offline workload of {shape}", 900).strip().splitlines()[-1])


def start_time(shape: str, sizes: dict, build: dict, cache_dir: str) -> float:
    """Seconds for a fresh process to build the model and serve its first token."""
    code = (
        "import time; t=time.perf_counter(); from jaxllm.runtime import use_compile_cache; "
        f"use_compile_cache({cache_dir!r}); "
        "from jaxllm.random_model import random_model; from jaxllm.engine import Engine, Request; "
        "from jaxllm.sampling import SamplingParams; "
        f"m = random_model({shape!r}, **{build!r}); "
        f"e = Engine(m, batch_size=1, max_len={sizes['b1_prompt'] + sizes['b1_new']}, num_pages={sizes['b1_prompt'] + sizes['b1_new']}); "
        f"p = SamplingParams(max_new_tokens=2, ignore_eos=True).resolved(); "
        f"list(e.run([Request(list(range(1, {sizes['b1_prompt'] + 1})), p)])); print(time.perf_counter()-t)"
    )
    return float(fresh_python(["-c", code], f"the start of {shape}", 600).strip().splitlines()[-1])


def bench_hf(shape: str, sizes: dict) -> dict:
    return hf_peer().bench_hf(shape, sizes)


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
        e = _engine(model, sizes, 1, sizes["b1_prompt"] + sizes["b1_new"], chunk=64)
        req = lambda: [Request(rng.integers(0, vocab, sizes["b1_prompt"]).tolist(), p)]  # noqa: E731
        _run(e, req())
        first, total, n = _run(e, req())
        rows.append({"tp": tp, "b1_tokens_per_s": (n - 1) / (total - first), "same_greedy_as_first": tokens == reference})
        print(json.dumps(rows[-1]), flush=True)
        del model, e
    return rows


def table(results: list[dict], bandwidth: float, read: float) -> str:
    def f(r, key, fmt):  # "-": not measured, or no finite rate
        return format(r[key], fmt) if r.get(key) is not None and math.isfinite(r[key]) else "-"

    rows = [f"copy bandwidth {size_text(bandwidth)}/s, read bandwidth {size_text(read)}/s (the roofline's)"]
    rows.append(f"{'shape':<12} {'b1 tok/s':>9} {'roofline':>8} {'bN tok/s':>9} {'off tok/s':>9} {'ttft s':>7} "
                f"{'cold s':>7} {'warm s':>7} {'peak GB':>8}")
    for r in results:
        if f(r, "b1_tokens_per_s", "") != "-":
            r["roofline"] = r["b1_tokens_per_s"] / (read / r["param_bytes"])
        r["peak_gb"] = r["peak_device_bytes"] / 1e9 if r.get("peak_device_bytes") else None  # "-" where the device reports none
        rows.append(f"{r['shape']:<12} {f(r, 'b1_tokens_per_s', '9.1f'):>9} {f(r, 'roofline', '8.0%'):>8} "
                    f"{f(r, 'bN_tokens_per_s', '9.1f'):>9} {f(r, 'offline_tokens_per_s', '9.1f'):>9} {f(r, 'ttft_s', '7.3f'):>7} "
                    f"{f(r, 'cold_start_s', '7.1f'):>7} {f(r, 'warm_start_s', '7.1f'):>7} {f(r, 'peak_gb', '8.1f'):>8}")
        hf = r.get("hf")
        if hf:
            ratio = lambda k: f"{r[k] / hf[k]:.2f}x" if r.get(k) and hf.get(k) else "-"  # noqa: E731
            rows.append(f"{'  hf':<12} {f(hf, 'b1_tokens_per_s', '9.1f'):>9} {'':>8} {f(hf, 'bN_tokens_per_s', '9.1f'):>9}"
                        f"   ours/hf: b1 {ratio('b1_tokens_per_s')}, bN {ratio('bN_tokens_per_s')}")
    return "\n".join(rows)


def main(argv=None, prog: str = "python -m jaxllm.bench") -> int:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", help=f"{', '.join(SHAPES)} (repeatable; default: qwen3-0.6b)")
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 or float16 (default: %(default)s)")
    p.add_argument("--quantize", choices=["int8", "int4"], help="quantized weights in every section but --load")
    p.add_argument("--quantize-embeddings", action="store_true",
                   help="with --quantize: the embedding and output head in int8 too")
    p.add_argument("--kv-dtype", help="the KV cache's dtype in every section but --load and --tp: int8 or fp8 (default: "
                                      "the model's dtype)")
    p.add_argument("--mesh", help="device mesh for every section but --tp, e.g. 'tp=2', 'dp=2' (default: one device); "
                   "with --load: also time the safetensors load onto it")
    p.add_argument("--compare", choices=["hf"], help="also run transformers on the same shapes")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: b1,bN,ttft,offline,long,prefix,start")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (the only sizes a CPU runs: "
                   "the full ones are a GPU's)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--tp", help="instead: compare tensor-parallel degrees, e.g. 1,2 (greedy tokens and batch-1 decode)")
    p.add_argument("--load", action="store_true", help="instead: time loading a random-weight checkpoint of each --shape "
                   "(safetensors, convert, orbax, transformers; --skip any of those, or cold)")
    p.add_argument("--load-folder", help="with --load (implied): time this Hugging Face checkpoint folder instead")
    p.add_argument("--load-dir", help="with --load: where the checkpoint and its conversion are written (default: a temporary folder)")
    p.add_argument("--repeat", type=int, default=REPEAT, help=f"with --load: warm runs of each step, the best counted (default {REPEAT})")
    args = p.parse_args(argv)
    runtime.quiet()
    return run_cli(lambda: _main(args))


REPEAT = 2  # --repeat's default


def _check_hf_peer() -> None:
    """--compare hf times transformers on a CUDA GPU: refused before any work when PyTorch, or a
    GPU it can use, is missing (the peer, outside the package, checks; jaxllm never imports torch)."""
    why = hf_peer_missing()
    try:
        peer = None if why else hf_peer()
    except ImportError as err:  # torch installed, but one of its own imports is not
        why = f"importing it failed ({err})"
    if why:
        raise JaxllmError(f"--compare hf cannot run: {why}: {PEER_FIX} (torch a CUDA build: it times transformers on a GPU); "
                          "or drop --compare")
    peer.check_gpu()


def tp_degrees(text: str) -> list[int]:
    """The degrees of --tp ("1,2"), or a JaxllmError saying what it takes."""
    items = [d.strip() for d in text.split(",")]
    if not all(d.isascii() and d.isdigit() and int(d) >= 1 for d in items):
        raise JaxllmError("--tp takes whole numbers >= 1 separated by commas, e.g. 1,2")
    degrees = [int(d) for d in items]
    if len(set(degrees)) < len(degrees):
        raise JaxllmError(f"--tp {text}: a degree is given twice: give each once, e.g. 1,2")
    return degrees


def _fresh_devices() -> tuple[int, str]:
    """(jax.device_count(), jax.default_backend()) as a fresh process sees them (the sections that run
    in one, and --load's steps), without starting JAX in this one: on a GPU that would take most of its
    memory first."""
    out = fresh_python(["-c", "import jax; print(jax.device_count(), jax.default_backend())"], "counting the devices", 300)
    count, backend = out.split()[-2:]
    return int(count), backend


def check_backend(backend: str, args) -> None:
    """The full sizes (32,768-token prompts, batch 64, 256 requests) are a GPU's: on a CPU they take
    hours, so a run there without --quick is refused in one line saying how to run the small one."""
    if backend == "cpu" and not args.quick:
        raise JaxllmError("the full sizes are meant for a GPU (JAX runs on the CPU here, where they take hours): add "
                          "--quick for a small run, e.g. python -m jaxllm.bench --shape tiny --quick (minutes)")


def check_args(args, shapes: list[str]) -> list[int] | None:
    """Every value of the command line checked before any work starts: a one-line JaxllmError for
    the first bad one. Returns the --tp degrees (None without --tp). Sets the XLA flags (before JAX
    starts), then checks what needs the device count: --tp here, --mesh in a fresh process."""
    _check_shapes(shapes)
    resolve_dtype(args.dtype)  # the package's check and message: "dtype 'int9' is not supported; use one of ..."
    if args.repeat < 1:
        raise JaxllmError(f"--repeat {args.repeat}: give a whole number >= 1 (warm runs of each load step)")
    load = bool(args.load or args.load_folder)
    _check_mode(args, shapes, load)
    if not load:
        given = [flag for flag, value in (("--load-dir", args.load_dir), ("--repeat", args.repeat != REPEAT)) if value]
        if given:
            raise JaxllmError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --load: add --load, or drop {', '.join(given)}")
        if args.compare == "hf":
            _check_hf_peer()
    if args.quantize_embeddings and not args.quantize:
        raise JaxllmError("--quantize-embeddings goes with --quantize int8 or int4: add --quantize")
    if load and args.quantize:
        raise JaxllmError("--quantize is not timed by --load (it loads float checkpoints): drop one of them")
    if args.kv_dtype is not None:
        if load:
            raise JaxllmError("--kv-dtype is not timed by --load (it loads checkpoints, no cache): drop one of them")
        check_kv_dtype(args.kv_dtype)
    if load:
        skip_names(args.skip, LOAD_SKIPS, "a --load step", f" (without --load: {', '.join(SECTIONS)})", load_runs(args.mesh))
    else:
        skip_names(args.skip, SECTIONS, "a section", f" (with --load: {', '.join(LOAD_SKIPS)})", SECTIONS)
    degrees = tp_degrees(args.tp) if args.tp is not None and not load else None
    if args.out is not None:
        check_out(args.out)
    if load and args.load_dir is not None and (why := why_not_writable(args.load_dir or ".")):
        raise JaxllmError(f"cannot use --load-dir {args.load_dir}: {why}: give a folder you can write, or leave --load-dir out")
    runtime.set_gpu_flags(f"tp={max(degrees)}" if degrees else args.mesh)  # read when the backend starts
    _check_devices(args, degrees, load)
    return degrees


def _check_shapes(shapes: list[str]) -> None:
    for s in shapes:
        if s not in SHAPES:
            raise JaxllmError(f"unknown shape '{s}': use one of {', '.join(SHAPES)}")
    for i, s in enumerate(shapes):
        if s in shapes[:i]:  # it was run twice, the second's start times written over the first's
            raise JaxllmError(f"--shape {s} is given twice: give each shape once")


def _check_devices(args, degrees: list[int] | None, load: bool) -> None:
    """--tp's degrees and --mesh against the device count, and the sizes against the backend (check_backend)."""
    if degrees:  # tp_compare runs in this process
        if max(degrees) > jax.device_count():
            n = jax.device_count()
            raise JaxllmError(f"--tp {max(degrees)} needs {max(degrees)} devices but {'only 1 is' if n == 1 else f'{n} are'} "
                              f"available: give degrees up to {n}")
        check_backend(jax.default_backend(), args)
    elif args.mesh is not None or not (load or args.quick):
        count, backend = _fresh_devices()
        if args.mesh is not None:
            parse_spec(args.mesh, count)
        if not load:
            check_backend(backend, args)


def _check_mode(args, shapes: list[str], load: bool) -> None:
    """--tp and --load are runs of their own: a flag they would ignore is refused, not dropped."""
    if load and args.tp is not None:
        raise JaxllmError("--tp and --load are two different runs: give one of them")
    if args.tp is not None:
        given = [flag for flag, value in (("--quantize", args.quantize), ("--kv-dtype", args.kv_dtype), ("--mesh", args.mesh),
                                          ("--compare", args.compare),
                                          ("--skip", args.skip), ("a second --shape", len(shapes) > 1)) if value]
        if given:
            them = "it" if len(given) == 1 else "them"
            raise JaxllmError(f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to --tp (batch-1 decode and "
                              f"greedy tokens of one --shape at each degree): drop {them}, or drop --tp")
    if load and args.compare is not None:
        raise JaxllmError("--compare does not apply to --load (it times transformers' own load already): drop --compare")
    if args.load_folder is not None:
        if args.shape:
            raise JaxllmError("--shape does not apply to --load-folder (it times that checkpoint): drop one of them")
        check_load_folder(args.load_folder)


def _main(args) -> int:
    shapes = args.shape or ["qwen3-0.6b"]
    degrees = check_args(args, shapes)
    if args.load or args.load_folder:  # before anything starts JAX here: each step has the devices to itself
        return load_main(args, shapes)
    sizes = _sizes(args.quick)
    if degrees:
        rows = tp_compare(shapes[0], degrees, sizes, args.dtype)
        for r in rows:
            print(f"tp={r['tp']}: {r['b1_tokens_per_s']:.1f} tokens/s at batch 1, greedy tokens same as tp={rows[0]['tp']}: {r['same_greedy_as_first']}")
        if args.out:
            write_json(args.out, {**device_info(), **run_settings(args, shapes), "shape": shapes[0], "sizes": sizes, "rows": rows})
        return 0 if all(r["same_greedy_as_first"] for r in rows) else 1
    skip = skip_names(args.skip, SECTIONS, "a section")
    build = build_args(args)
    # Subprocesses and the peer run first: once this process starts JAX on a GPU, JAX reserves
    # most of the device memory for itself.
    starts = {}
    if "start" not in skip:
        import tempfile

        for shape in shapes:
            cache = tempfile.mkdtemp(prefix="jaxllm-cc-")
            starts[shape] = {
                "cold_start_s": section(f"cold start {shape}", lambda: start_time(shape, sizes, build, cache)),
                "warm_start_s": section(f"warm start {shape}", lambda: start_time(shape, sizes, build, cache)),
            }
            if "offline" not in skip:
                cache = tempfile.mkdtemp(prefix="jaxllm-cc-")
                starts[shape]["offline_fresh_cold_tokens_per_s"] = section(
                    f"offline fresh process, cold {shape}", lambda: offline_first_run(shape, sizes, build, cache))
                starts[shape]["offline_fresh_warm_tokens_per_s"] = section(
                    f"offline fresh process, warm {shape}", lambda: offline_first_run(shape, sizes, build, cache))
    peer = {shape: section(f"transformers {shape}", lambda: bench_hf(shape, sizes)) for shape in shapes} if args.compare == "hf" else {}
    bandwidth, read = bandwidths()
    results = []
    for shape in shapes:
        print(f"{shape}:", file=sys.stderr, flush=True)
        r = bench_jax(shape, sizes, build, skip)
        r.update(starts.get(shape, {}))
        if shape in peer:
            r["hf"] = peer[shape]
        results.append(r)
        print(json.dumps(finite(r)), flush=True)
    report = {**device_info(), **run_settings(args, shapes), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "bandwidth_bytes_per_s": bandwidth, "read_bytes_per_s": read, "sizes": sizes, "results": results}
    print(table(results, bandwidth, read), flush=True)  # first: a failed --out write loses no figure
    if args.out:
        write_json(args.out, report)
    return 0


def device_info() -> dict:
    """The device a results file was measured on (JAX started)."""
    return {"device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(), "device_count": jax.device_count()}


if __name__ == "__main__":
    sys.exit(main())
