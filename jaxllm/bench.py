"""`python -m jaxllm.bench`: decode speed of random-weight models of real shapes, with transformers
measured in the same run (`--compare hf`). Prints a table and writes JSON.

    python -m jaxllm.bench --shape qwen3-0.6b --shape llama3-8b --compare hf --out bench.json

Per shape: batch-1 decode tokens/s (prompt 128, 256 new), batch-64 throughput (prompt 512,
256 new), time to first token of a 1,024-token prompt, cold start (random weights + compile, fresh
process) and warm start (same, persistent compilation cache), peak device memory, the measured
copy bandwidth and the batch-1 roofline fraction; the offline workload nano-vllm and vLLM
publish (256 requests, prompt and output lengths uniform in 100..1024, seed 0, EOS ignored), its
first run (compiles included) and steady rate; `long`: one 32,768- and one 40,000-token prompt (capped by the
shape's positions) producing 256 tokens each, time to first token and peak memory; `prefix`: 256
requests sharing a 2,000-token prefix (50 tokens of their own, 64 new), with and without prefix
caching. `--quick` shrinks every size (for the CPU test).

`--load` instead times loading (`load_section`): a random-weight Hugging Face checkpoint of each
--shape (or the checkpoint of --load-folder), each step in a fresh process: `jaxllm.load` of the
safetensors, `python -m jaxllm.convert`'s work, `jaxllm.load` of the converted (orbax) folder, and
transformers' `from_pretrained` of the same files (when torch and transformers are installed), with
the peak host RSS above the process's baseline; warm page cache (best of --repeat) and, where the
page cache can be dropped (root), cold.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxllm
from jaxllm import checkpoint, convert, runtime
from jaxllm.engine import Engine, Request
from jaxllm.errors import ArgumentParser, JaxllmError, run_cli
from jaxllm.loader import plan
from jaxllm.models import quant, weights
from jaxllm.models.attention import kv_cache_bytes
from jaxllm.random_model import SHAPES, random_model
from jaxllm.sampling import SamplingParams
from jaxllm.sharding import make_mesh


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(b1_prompt=8, b1_new=8, bN=2, bN_prompt=16, bN_new=8, ttft_prompt=32,
                    offline_n=4, offline_lo=4, offline_hi=16, offline_slots=2, long=(64, 80), long_new=4,
                    prefix_n=6, prefix_len=40, prefix_own=5, prefix_new=4, prefill_tokens=64, page_size=8)
    return dict(b1_prompt=128, b1_new=256, bN=64, bN_prompt=512, bN_new=256, ttft_prompt=1024,
                offline_n=256, offline_lo=100, offline_hi=1024, offline_slots=256, long=(32768, 40000), long_new=256,
                prefix_n=256, prefix_len=2000, prefix_own=50, prefix_new=64, prefill_tokens=8192, page_size=16)


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
    shown = f" -> {value}" if isinstance(value, (dict, float, int)) else ""
    print(f"  {name}: {time.perf_counter() - t:.1f}s{shown}", file=sys.stderr, flush=True)
    return value


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
        _section(f"long {n} (compile)", lambda e=engine, p=prompts[0]: _run(e, [Request(p, params)]))
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
    for caching in (True, False):
        engine = _engine(model, sizes, min(sizes["bN"], sizes["prefix_n"]), max_len, prefix_caching=caching, chunk=64)
        _section(f"prefix caching={caching} (compile run)", lambda e=engine: _run(e, reqs))
        engine.blocks.reset_prefix_cache()
        got = {}
        start = time.perf_counter()
        for ev in engine.run(reqs):
            got.setdefault(ev.index, []).extend(ev.tokens)
        out[f"prefix_{'on' if caching else 'off'}_s"] = time.perf_counter() - start
        tokens[caching] = got
        del engine
    out["prefix_speedup"] = out["prefix_off_s"] / out["prefix_on_s"]
    out["prefix_same_tokens"] = tokens[True] == tokens[False]
    return out


def bench_jax(shape: str, sizes: dict, dtype: str, skip=(), quantize=None, mesh=None) -> dict:
    model = _section("random weights", lambda: jax.block_until_ready(random_model(shape, dtype=dtype, mesh=mesh, quantize=quantize)))
    cfg = model.config
    rng = np.random.default_rng(0)
    param_bytes = int(sum(quant.bytes_of(x) for x in jax.tree.leaves(model.params)))  # int4: half a byte
    out = {"shape": shape, "param_bytes": param_bytes, "quantize": quantize, "mesh": mesh}

    def reqs(n, prompt, new):
        p = SamplingParams(max_new_tokens=new, ignore_eos=True).resolved()
        return [Request(rng.integers(0, cfg.vocab_size, prompt).tolist(), p, i) for i in range(n)]

    def timed(engine, n, prompt, new):
        _section(f"compile+run b={n} prompt={prompt} new={new}", lambda: _run(engine, reqs(n, prompt, new)))
        return _run(engine, reqs(n, prompt, new))

    # Long prompts first: the peak device memory they report is then theirs (it never goes down).
    if "long" not in skip:
        out.update(_section("long prompts", lambda: bench_long(model, sizes)))
    if "prefix" not in skip:
        out.update(_section("shared prefix", lambda: bench_prefix(model, sizes)))
    if "b1" not in skip:  # batch 1: decode rate after the first token
        e1 = _engine(model, sizes, 1, sizes["b1_prompt"] + sizes["b1_new"], chunk=64)
        first, total, n = timed(e1, 1, sizes["b1_prompt"], sizes["b1_new"])
        out["b1_tokens_per_s"] = _section("b1 tokens/s", lambda: (n - 1) / (total - first))
        del e1
    if "bN" not in skip:  # batch N: whole-run throughput, prefill included
        eN = _engine(model, sizes, sizes["bN"], sizes["bN_prompt"] + sizes["bN_new"], chunk=64)
        first, total, n = timed(eN, sizes["bN"], sizes["bN_prompt"], sizes["bN_new"])
        out["bN_tokens_per_s"] = _section("bN tokens/s", lambda: n / total)
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
        _, first_total, _ = _section("offline, first run", lambda: _run(eo, offline))
        compiles = eo.counters.prefill + eo.counters.decode
        eo.blocks.reset_prefix_cache()  # the same prompts again: no hits from the first run
        _, total, n = _section("offline", lambda: _run(eo, offline))
        out["offline_tokens_per_s"] = _section("offline tokens/s", lambda: n / total)
        out["offline_first_run_tokens_per_s"] = n / first_total
        out["offline_compiles"] = compiles
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


def offline_first_run(shape: str, sizes: dict, dtype: str, cache_dir: str, mesh=None, quantize=None) -> float:
    """Output tokens/s of the offline workload's first run in a fresh process (its compiles
    included; with `cache_dir` warm, loaded from the persistent cache instead)."""
    code = (
        "import json, sys, time; from jaxllm import bench; from jaxllm.runtime import use_compile_cache; "
        f"use_compile_cache({cache_dir!r}); from jaxllm.random_model import random_model; "
        f"m = random_model({shape!r}, dtype={dtype!r}, mesh={mesh!r}, quantize={quantize!r}); sizes = json.loads({json.dumps(sizes)!r}); "
        "e = bench._engine(m, sizes, sizes['offline_slots'], 2 * sizes['offline_hi'], pages=None, chunk=64); "
        "_, total, n = bench._run(e, bench.offline_requests(m.config, sizes)); print(n / total)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def start_time(shape: str, sizes: dict, dtype: str, cache_dir: str, mesh=None, quantize=None) -> float:
    """Seconds for a fresh process to build the model and serve its first token."""
    code = (
        "import time; t=time.perf_counter(); from jaxllm.runtime import use_compile_cache; "
        f"use_compile_cache({cache_dir!r}); "
        "from jaxllm.random_model import random_model; from jaxllm.engine import Engine, Request; "
        "from jaxllm.sampling import SamplingParams; "
        f"m = random_model({shape!r}, dtype={dtype!r}, mesh={mesh!r}, quantize={quantize!r}); "
        f"e = Engine(m, batch_size=1, max_len={sizes['b1_prompt'] + sizes['b1_new']}, num_pages={sizes['b1_prompt'] + sizes['b1_new']}); "
        f"p = SamplingParams(max_new_tokens=2, ignore_eos=True).resolved(); "
        f"list(e.run([Request(list(range(1, {sizes['b1_prompt'] + 1})), p)])); print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def hf_peer():
    """The transformers peer's module. It lives outside the package (benchmarks/hf_peer.py in a
    source checkout), so the runtime never imports torch or transformers' model classes."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_peer.py"
    if not path.exists():
        raise JaxllmError("the transformers peer needs a source checkout (benchmarks/hf_peer.py): run from the repository")
    spec = importlib.util.spec_from_file_location("jaxllm_hf_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# ----------------------------------------------------------------------------------------------
# Loading: safetensors, orbax, convert and transformers' from_pretrained, each in a fresh process

_MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}
LOAD_STEPS = ("safetensors", "sharded", "convert", "orbax", "transformers")  # sharded: with --mesh


def write_checkpoint(folder, shape: str, dtype: str = "bfloat16", shard_bytes: int = 5 << 30) -> int:
    """A Hugging Face checkpoint of a named shape (random_model.SHAPES) in `folder`: config.json and
    safetensors shards of N(0, 0.02)-like weights (a random block repeated, so writing is as fast
    as the disk) and unit norms. No device is used. Returns the bytes of the safetensors files."""
    folder = Path(folder)
    raw = dict(SHAPES[shape], torch_dtype=dtype)
    raw.setdefault("model_type", _MODEL_TYPES.get(raw["architectures"][0], "llama"))
    p = plan(raw, dtype)
    specs = p.arch.weight_map(p.config)
    shapes = {path: leaf.shape for path, leaf in weights.flat_params(p.abstract).items()}
    np_dtype = np.dtype(p.dtype)
    layout = {name: (tuple(s), np_dtype) for name, s in weights.hf_layout(specs, shapes).items()}
    block = (0.02 * np.random.default_rng(0).standard_normal(1 << 22, np.float32)).astype(np_dtype)

    def tensors():
        for i, (name, (s, dt)) in enumerate(layout.items()):
            if len(s) == 1:
                yield name, np.ones(s, dt)
                continue
            start = (i * 7919) % block.size
            yield name, np.resize(np.concatenate([block[start:], block[:start]]), math.prod(s)).reshape(s)

    folder.mkdir(parents=True, exist_ok=True)
    files = checkpoint.write_safetensors(folder, layout, tensors(), shard_bytes)
    (folder / "config.json").write_text(json.dumps(raw, indent=1))
    return sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))


def _memory() -> tuple[int, int] | None:
    """(resident bytes now, high-water mark) of this process (Linux), else None."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def load_worker(argv=None) -> None:
    """One timed step in this (fresh) process: `STEP PATH DTYPE [DST]`; prints JSON {seconds, peak
    host bytes above the baseline taken after the imports and the backend's start, ...}."""
    step, path, dtype, *rest = argv if argv is not None else sys.argv[1:]
    out = {}
    if step == "transformers":
        peer = hf_peer()
        peer.start_device()
        base = _memory()
        start = time.perf_counter()
        out["device"] = peer.load(path, dtype)
    else:
        import orbax.checkpoint  # noqa: F401 - imported before the baseline, as loading a converted folder does

        jax.numpy.zeros(1).block_until_ready()
        out["device"] = str(jax.devices()[0].device_kind)
        base = _memory()
        start = time.perf_counter()
        if step == "convert":
            convert.convert(path, rest[0], dtype=dtype, progress=False)
        else:  # safetensors, orbax, or sharded (safetensors onto the mesh rest[0])
            model = jaxllm.load(path, dtype=dtype, tokenizer=False, mesh=rest[0] if step == "sharded" else None)
            jax.block_until_ready(model.params)
            if jax.default_backend() == "cpu":  # the parameters themselves are host memory here
                out["placed_bytes"] = sum(x.nbytes for x in jax.tree.leaves(model.params))
    out["seconds"] = time.perf_counter() - start
    end = _memory()
    if base and end:
        out["peak_rss_above_baseline_bytes"] = max(end[1], end[0]) - base[0]
    print(json.dumps(out), flush=True)


def can_drop_page_cache() -> str | None:
    """None when this process can drop the page cache (Linux, root), else why not."""
    path = "/proc/sys/vm/drop_caches"
    if not os.path.exists(path):
        return "no /proc/sys/vm/drop_caches (not Linux)"
    if os.geteuid() != 0 or not os.access(path, os.W_OK):
        return "dropping the page cache needs root (write access to /proc/sys/vm/drop_caches)"
    try:
        drop_page_cache()
    except OSError as err:
        return f"writing /proc/sys/vm/drop_caches failed ({err.strerror})"
    return None


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _fresh(step: str, path, dtype: str, *rest, cold: bool = False, timeout: float = 1800) -> dict:
    """Run load_worker in a fresh process (after dropping the page cache when `cold`)."""
    if cold:
        drop_page_cache()
    start = time.perf_counter()
    cmd = [sys.executable, "-c", "from jaxllm.bench import load_worker; load_worker()", step, str(path), dtype, *map(str, rest)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise JaxllmError(f"the {step} step failed in its process: {last[:300]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def load_section(shape: str | None, dtype: str, folder=None, repeat: int = 2, skip=(), workdir=None, mesh=None) -> dict:
    """Load timings of one checkpoint (see the module docstring); every step in a fresh process;
    with `mesh` (a spec such as "tp=2") also the safetensors load onto that mesh."""
    tmp = Path(tempfile.mkdtemp(prefix="jaxllm-load-", dir=workdir))
    try:
        if folder is None:
            folder = tmp / "hf"
            _section(f"write {shape} checkpoint", lambda: subprocess.run(
                [sys.executable, "-c", f"from jaxllm.bench import write_checkpoint; write_checkpoint({str(folder)!r}, {shape!r}, {dtype!r})"],
                check=True, capture_output=True, timeout=3600))
        folder = Path(folder)
        files = sorted(folder.glob("*.safetensors"))
        report = {"section": "load", "shape": shape, "folder": str(folder) if shape is None else None, "dtype": dtype,
                  "bytes": sum(f.stat().st_size for f in files), "files": len(files), "repeat": repeat, "steps": {}}
        why_not = "left out (--skip cold)" if "cold" in skip else can_drop_page_cache()
        report["cold_cache"] = why_not or "measured"
        peer = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
        dst = tmp / "converted"

        def measure(step, path, *rest, before=None):
            runs = {}
            if why_not is None:
                before and before()
                runs["cold"] = _section(f"{step}, cold page cache", lambda: _fresh(step, path, dtype, *rest, cold=True))
            warm = []
            for _ in range(repeat):
                before and before()
                warm.append(_section(f"{step}, warm page cache", lambda: _fresh(step, path, dtype, *rest)))
            runs["warm"] = min(warm, key=lambda r: r["seconds"])
            return runs

        steps = report["steps"]
        if "safetensors" not in skip:
            steps["safetensors"] = measure("safetensors", folder)
        if mesh and "sharded" not in skip:
            steps["sharded"] = measure("sharded", folder, mesh)
            report["mesh"] = mesh
        if "convert" not in skip or "orbax" not in skip:
            clear = lambda: shutil.rmtree(dst, ignore_errors=True)  # noqa: E731 - each conversion writes a new folder
            converted = measure("convert", folder, dst, before=clear)
            if "convert" not in skip:
                steps["convert"] = converted
            if "orbax" not in skip:
                steps["orbax"] = measure("orbax", dst)
        if "transformers" not in skip:
            if peer:
                steps["transformers"] = measure("transformers", folder)
            else:
                report["transformers"] = "not measured: torch and transformers are not both installed"
        report["device"] = next((r["warm"].get("device") for k, r in steps.items() if k != "transformers"), None)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_LOAD_NAMES = {"safetensors": "jaxllm.load, safetensors", "sharded": "jaxllm.load, safetensors, --mesh", "orbax": "jaxllm.load, converted (orbax)",
               "convert": "convert (in process)", "transformers": "transformers from_pretrained"}


def load_table(report: dict) -> str:
    """The load section's results as text."""
    gb = report["bytes"] / 1e9
    what = report["shape"] or report["folder"]
    rows = [f"load: {what}, {report['dtype']}, {gb:.2f} GB in {report['files']} safetensors files, device {report.get('device')}; "
            f"warm: best of {report['repeat']}, cold page cache: {report['cold_cache']}"]
    rows.append(f"{'step':<34} {'warm s':>7} {'GB/s':>6} {'cold s':>7} {'peak RSS GB':>11} {'vs transformers':>15}")
    peer = report["steps"].get("transformers", {}).get("warm", {}).get("seconds")
    for step, runs in report["steps"].items():
        warm, cold = runs["warm"], runs.get("cold")
        rss = warm.get("peak_rss_above_baseline_bytes")
        ratio = f"{warm['seconds'] / peer:.2f}x" if peer and step != "transformers" else "-"
        rows.append(f"{_LOAD_NAMES[step]:<34} {warm['seconds']:>7.2f} {gb / warm['seconds']:>6.2f} "
                    f"{(format(cold['seconds'], '7.2f') if cold else '-'):>7} {(format(rss / 1e9, '11.2f') if rss is not None else '-'):>11} "
                    f"{ratio:>15}")
    if "transformers" in report:
        rows.append(report["transformers"])
    return "\n".join(rows)


def _load_main(args, shapes) -> int:
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - set(LOAD_STEPS) - {"cold"}
    if unknown:
        raise JaxllmError(f"--skip {','.join(sorted(unknown))}: the load section's steps are {', '.join(LOAD_STEPS)} (and cold)")
    if args.repeat < 1:
        raise JaxllmError("--repeat must be at least 1")
    targets = [(None, args.load_folder)] if args.load_folder else [(s, None) for s in shapes]
    reports = []
    for shape, folder in targets:
        if folder is not None and not Path(folder).is_dir():
            raise JaxllmError(f"--load-folder {folder} is not a folder")
        report = load_section(shape, args.dtype, folder, args.repeat, skip, args.load_dir, args.mesh)
        report["date"] = time.strftime("%Y-%m-%d")
        reports.append(report)
        print(load_table(report), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(reports[0] if len(reports) == 1 else reports, f, indent=1)
    return 0


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m jaxllm.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", help="qwen3-0.6b, llama3-8b or tiny (repeatable)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantize", choices=["int8", "int4"], help="quantized weights in every section but --load")
    p.add_argument("--mesh", help="device mesh for every section but --tp, e.g. 'tp=2', 'dp=2' (default: one device); "
                   "with --load: also time the safetensors load onto it")
    p.add_argument("--compare", choices=["hf"], help="also run transformers on the same shapes")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: b1,bN,ttft,offline,long,prefix,start")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--tp", help="instead: compare tensor-parallel degrees, e.g. 1,2 (greedy tokens and batch-1 decode)")
    p.add_argument("--load", action="store_true", help="instead: time loading a random-weight checkpoint of each --shape "
                   "(safetensors, convert, orbax, transformers; --skip any of those, or cold)")
    p.add_argument("--load-folder", help="with --load (implied): time this Hugging Face checkpoint folder instead")
    p.add_argument("--load-dir", help="with --load: where the checkpoint and its conversion are written (default: a temporary folder)")
    p.add_argument("--repeat", type=int, default=2, help="with --load: warm runs of each step, the best counted (default 2)")
    args = p.parse_args(argv)
    runtime.quiet()
    runtime.set_gpu_flags()  # read when the backend starts, below
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    shapes = args.shape or ["qwen3-0.6b"]
    for s in shapes:
        if s not in SHAPES:
            raise JaxllmError(f"unknown shape '{s}': use one of {', '.join(SHAPES)}")
    if args.load or args.load_folder:  # before anything starts JAX here: each step has the devices to itself
        return _load_main(args, shapes)
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
                "cold_start_s": _section(f"cold start {shape}", lambda: start_time(shape, sizes, args.dtype, cache, args.mesh, args.quantize)),
                "warm_start_s": _section(f"warm start {shape}", lambda: start_time(shape, sizes, args.dtype, cache, args.mesh, args.quantize)),
            }
            if "offline" not in skip:
                cache = tempfile.mkdtemp(prefix="jaxllm-cc-")
                starts[shape]["offline_fresh_cold_tokens_per_s"] = _section(
                    f"offline fresh process, cold {shape}", lambda: offline_first_run(shape, sizes, args.dtype, cache, args.mesh, args.quantize))
                starts[shape]["offline_fresh_warm_tokens_per_s"] = _section(
                    f"offline fresh process, warm {shape}", lambda: offline_first_run(shape, sizes, args.dtype, cache, args.mesh, args.quantize))
    peer = {shape: _section(f"transformers {shape}", lambda: bench_hf(shape, sizes)) for shape in shapes} if args.compare == "hf" else {}
    bandwidth = copy_bandwidth()
    results = []
    for shape in shapes:
        print(f"{shape}:", file=sys.stderr, flush=True)
        r = bench_jax(shape, sizes, args.dtype, skip, args.quantize, args.mesh)
        r.update(starts.get(shape, {}))
        if shape in peer:
            r["hf"] = peer[shape]
        results.append(r)
        print(json.dumps(r), flush=True)
    report = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "bandwidth_bytes_per_s": bandwidth, "sizes": sizes, "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(table(results, bandwidth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
