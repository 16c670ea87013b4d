"""Decode attention over an 8-bit (int8) KV pool on a GPU: models/paged_kernel.py (our Pallas kernel reading the pool
as stored) against the XLA gather form it replaces and against cuDNN's paged kernel over a bf16 pool.

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/kv8_decode_probe.py [layer] [engine=A,B,..] [--tiny]

big: a pool of more than 2**31 elements (do the kernel's offsets wrap?).
check: the kernel against the XLA form on heads of 256 with soft-capping, float8 and int8 pools, windows and sinks.
layer[=mixed|=dims|=b1]: one layer's decode call (H, K, D of Qwen3-0.6B and Llama-3-8B), microseconds per call in a chain of 20,
       the kernel's tilings swept; numerics against the XLA form.
engine=A,B: whole models in jaxllm.Engine (VARIANTS: shape, KV dtype, which kernel decodes), 64 requests of 512 + 128
       tokens, first and steady tokens/s, same process; greedy agreement of the kernel's and the XLA form's tokens.
--tiny: CPU smoke test of the script (interpret mode, tiny sizes).
"""
from __future__ import annotations

import functools
import gc
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models import attention, kv_quant, paged_kernel
from jaxllm.models import paged_decode as pd
from jaxllm.models.config import Chunked

TINY = "--tiny" in sys.argv
T0 = time.time()
DEADLINE = float(os.environ.get("PROBE_DEADLINE", "540"))


def log(msg=""):
    print(msg, flush=True)


def chain(fn, reps):
    """reps calls, each query nudged by the last output, so they run one after another."""
    def run(q, *rest):
        def body(_, q):
            return q + (fn(q, *rest) * 1e-3).astype(q.dtype)
        return jax.lax.fori_loop(0, reps, body, q)
    return jax.jit(run)


def timed(fn, *args, reps=20):
    f = chain(fn, reps)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t) / reps * 1e6)
    return statistics.median(times)


BEST = {}  # the fastest int8 tiling the layer section found: the engine's "best" variant uses it


def _layer_plan(mixed, dims, b1=False):
    """-> the layer section's (shapes, cases, int8 tilings, extra bf16 tilings, page size)."""
    shapes = {"qwen3-0.6b": (16, 8, 128), "llama3-8b": (32, 8, 128)}
    cases = [("qwen3-0.6b", 64, 1024), ("qwen3-0.6b", 256, 1024), ("qwen3-0.6b", 64, 4096), ("qwen3-0.6b", 1, 1024),
             ("qwen3-0.6b", 1, 8192), ("llama3-8b", 64, 1024)]
    # (pages per block, warps, stages, blocks prefetched by hand). Session 41 also tried one program per (row, split)
    # reading whole pages (all kv heads, each query head masked to its own): 304-640 us at layer=mixed, not kept.
    tilings = [(4, 4, 3, 0), (4, 4, 1, 1)] + [(p, w, 1, f) for p, w, f in (
        (4, 4, 2), (2, 4, 2), (2, 4, 3), (4, 2, 1), (4, 2, 2), (2, 2, 2), (8, 4, 2), (2, 4, 4), (1, 4, 4))]
    bf16_tilings = [(4, 4, 3, 0), (4, 4, 1, 2), (2, 4, 1, 2)]
    if mixed:
        cases = [("qwen3-0.6b", 256, 2048)]
    if dims:  # other head sizes: how far a tile's bytes (pages x 16 x D) may grow before prefetching spills
        shapes = {"d256": (8, 4, 256), "d64": (32, 8, 64)}
        cases = [("d256", 64, 1024), ("d256", 1, 4096), ("d64", 64, 1024)]
        tilings = [(p, 4, 1, f) for p in (1, 2, 4) for f in (0, 1)] + [(4, 4, 3, 0), (2, 4, 3, 0), (8, 4, 1, 1)]
        bf16_tilings = list(tilings)
    if b1:  # the bench's batch-1 decode: one row of ~300 keys over a table of 2,048 positions
        cases = [("qwen3-0.6b", 1, 2048)]
        tilings = [(4, 4, 3, 0), (4, 4, 1, 0), (4, 4, 1, 1), (8, 4, 1, 0), (8, 4, 3, 0), (2, 4, 1, 0), (4, 4, 1, None)]
        bf16_tilings = []
    if TINY:
        return {"tiny": (4, 2, 16)}, [("tiny", 2, 64)], [(2, 4, 2, 0), (2, 4, 1, 2)], [], 4
    return shapes, cases, tilings, bf16_tilings, 16


def layer_section(mixed=False, dims=False, b1=False):
    """mixed: the offline bench's decode calls instead, 256 rows of which 40% are done (length 1) and the rest hold
    100..2047 keys, over a table of 2,048 positions. dims: heads of 256 and 64."""
    shapes, cases, tilings, bf16_tilings, ps = _layer_plan(mixed, dims, b1)
    for name, b, ctx in cases:
        h, kv, d = shapes[name]
        if time.time() - T0 > DEADLINE * 0.55:
            log("layer: deadline, later cases skipped")
            return
        cols = ctx // ps
        # a pool of a multiple of the rows, as the engine's (steps._zero_state): cuDNN's paged call then reads every row
        # in one call; b * cols + 8 pages (sessions 39-40) sent it blocks of 8 rows, each a call of its own
        n = b * (cols + 1)
        key = jax.random.PRNGKey(b * 7 + ctx)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        k = jax.random.normal(k1, (n, ps, kv, d), jnp.float32).astype(jnp.bfloat16)
        v = jax.random.normal(k2, (n, ps, kv, d), jnp.float32).astype(jnp.bfloat16)
        q = jax.random.normal(k3, (b, 1, h, d), jnp.float32).astype(jnp.bfloat16)
        table = jax.random.permutation(k4, n)[: b * cols].reshape(b, cols).astype(jnp.int32)
        lengths = jnp.full((b,), ctx, jnp.int32) - jnp.arange(b, dtype=jnp.int32) % 7
        if b1:
            lengths = jnp.full((b,), 300, jnp.int32)
        if mixed:
            r = np.random.default_rng(0)
            lengths = jnp.asarray(np.where(r.random(b) < 0.4, 1, r.integers(min(100, ctx // 2), ctx, b)), jnp.int32)
        (k8, ks), (v8, vs) = (kv_quant.quantize_kv(x, jnp.int8, jnp.bfloat16) for x in (k, v))
        scale = d ** -0.5
        interp = dict(interpret=True) if TINY else {}
        row = f"{name} B={b} ctx={ctx}:"

        def xla8(q, k8, v8, table, lengths, ks, vs):
            return pd.paged_decode_attention(q, k8, v8, table, lengths, scale=scale, k_scales=ks, v_scales=vs)

        def ker(q, k, v, table, lengths, ks=None, vs=None, tiling=(4, 4, 1, None), programs=512):
            p, w, s, pre = tiling
            out, lse = paged_kernel.pool_decode(q, k, v, table, lengths, None, None, ks, vs, scale=scale, pages=p,
                                                programs=programs, num_warps=w, num_stages=s, prefetch=pre, **interp)
            return out.reshape(q.shape).astype(q.dtype)

        ref8 = jax.jit(xla8)(q, k8, v8, table, lengths, ks, vs)
        base = {}
        try:
            if not TINY:
                base["bf16 cudnn_paged"] = timed(lambda q, k, v, t, n_: pd.paged_decode_attention(
                    q, k, v, t, n_, scale=scale, impl="cudnn_paged"), q, k, v, table, lengths)
            base["bf16 xla"] = timed(lambda q, k, v, t, n_: pd.paged_decode_attention(q, k, v, t, n_, scale=scale),
                                     q, k, v, table, lengths)
            base["bf16 kernel"] = timed(ker, q, k, v, table, lengths)
            for t_ in bf16_tilings:
                base[f"bf16 kernel {t_}"] = timed(functools.partial(ker, tiling=t_), q, k, v, table, lengths)
            base["int8 xla"] = timed(xla8, q, k8, v8, table, lengths, ks, vs)
        except Exception as err:  # noqa: BLE001 - a probe reports and goes on
            log(f"{row} baseline failed: {type(err).__name__}: {str(err)[:300]}")
        log(row + " " + ", ".join(f"{k_} {t:.1f} us" for k_, t in base.items()))
        best = None
        for tiling in tilings:
            try:
                f = functools.partial(ker, tiling=tiling)
                out = jax.jit(f)(q, k8, v8, table, lengths, ks, vs)
                diff = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref8.astype(jnp.float32))))
                t = timed(f, q, k8, v8, table, lengths, ks, vs)
                log(f"  int8 kernel pages={tiling[0]} warps={tiling[1]} stages={tiling[2]} prefetch={tiling[3]}: "
                    f"{t:.1f} us, max diff vs xla {diff:.4f}")
                best = min(best or (t, tiling), (t, tiling))
                if t < BEST.get("t", float("inf")):
                    BEST.update(t=t, tiling=tiling)
            except Exception as err:  # noqa: BLE001
                log(f"  int8 kernel {tiling}: failed {type(err).__name__}: {str(err)[:300]}")
        if best and not (dims or b1):
            for programs in (128, 256, 1024) + ((2048, 4096) if mixed else ()):
                f = functools.partial(ker, tiling=best[1], programs=programs)
                log(f"  best {best[1]} programs={programs}: {timed(f, q, k8, v8, table, lengths, ks, vs):.1f} us")


def check_section():
    """The kernel against the XLA form on the layers it newly takes: head 256 with soft-capping and a window, float8
    and int8 pools with a chunked window and sinks, an int8 cache's rotation (paged_decode_attention's "pallas" against
    "xla")."""
    ps, b, cols = (4, 3, 8) if TINY else (16, 8, 64)
    cases = [("bf16 D=256 softcap 50 window 300", 8, 4, 256, None, dict(softcap=50.0, window=300)),
             ("fp8 D=64 chunked 256", 8, 2, 64, jnp.float8_e4m3fn, dict(window=Chunked(256))),
             ("int8 D=128 sinks window 100", 16, 8, 128, jnp.int8, dict(window=100, sinks=True)),
             ("int8 D=128 rotated (q and output turned in the kernel)", 16, 8, 128, jnp.int8, dict(rotated=True)),
             ("int8 D=64 rotated sinks", 8, 2, 64, jnp.int8, dict(rotated=True, sinks=True))]
    for name, h, kv, d, pool, kw in cases:
        key = jax.random.split(jax.random.PRNGKey(d), 5)
        n = b * cols + 4
        k, v = (jax.random.normal(key[i], (n, ps, kv, d), jnp.float32).astype(jnp.bfloat16) for i in (0, 1))
        q = jax.random.normal(key[2], (b, 1, h, d), jnp.float32).astype(jnp.bfloat16)
        table = jax.random.permutation(key[3], n - 4)[: b * cols].reshape(b, cols).astype(jnp.int32)
        lengths = jax.random.randint(key[4], (b,), 1, cols * ps + 1).astype(jnp.int32)
        ks = vs = None
        if pool is not None:
            (k, ks), (v, vs) = (kv_quant.quantize_kv(x, pool, jnp.bfloat16) for x in (k, v))
        kw = dict(kw, sinks=jnp.linspace(-1.0, 1.0, h)) if kw.get("sinks") else kw
        got, want = (jax.jit(functools.partial(pd.paged_decode_attention, scale=d ** -0.5, impl=impl, interpret=TINY,
                                               **kw))(q, k, v, table, lengths, k_scales=ks, v_scales=vs)
                     for impl in ("pallas", "xla"))
        diff = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32))))
        log(f"check {name}: max diff kernel vs xla {diff:.4f} (largest |out| {float(jnp.max(jnp.abs(want))):.3f})")


def big_section():
    """A pool of more than 2**31 elements (int8, 140,000 pages of 16 x 8 x 128; a small model's pool on a large GPU):
    the kernel's 32-bit page offsets wrapped there (CUDA_ERROR_ILLEGAL_ADDRESS, 2026-12-03), so `decode_kernel` sends
    such a pool to the XLA form. Checks that route against the kernel over a small pool holding the same pages."""
    n, ps, kv, d, h = (40, 4, 2, 16, 4) if TINY else (140_000, 16, 8, 128, 16)
    key = jax.random.split(jax.random.PRNGKey(7), 4)
    k = jax.random.randint(key[0], (n, ps, kv, d), -127, 128, jnp.int32).astype(jnp.int8)
    v = jax.random.randint(key[1], (n, ps, kv, d), -127, 128, jnp.int32).astype(jnp.int8)
    ks = vs = jnp.full((n, ps, kv), 0.01, jnp.bfloat16)
    q = jax.random.normal(key[2], (2, 1, h, d), jnp.float32).astype(jnp.bfloat16)
    table = jnp.stack([jnp.arange(n - 8, n, dtype=jnp.int32), jnp.arange(8, dtype=jnp.int32)])
    lengths = jnp.full((2,), 8 * ps, jnp.int32)
    impl = attention.decode_kernel("cudnn", q, k, attention.AttnSpec(scale=d ** -0.5))
    got = jax.jit(functools.partial(pd.paged_decode_attention, scale=d ** -0.5, impl=impl, interpret=TINY))(
        q, k, v, table, lengths, k_scales=ks, v_scales=vs)
    pages = table.reshape(-1)  # the same pages as a small pool, read by the kernel
    small = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    want = jax.jit(functools.partial(pd.paged_decode_attention, scale=d ** -0.5, impl="pallas", interpret=TINY))(
        q, k[pages], v[pages], small, lengths, k_scales=ks[pages], v_scales=vs[pages])
    diff = jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)), axis=(1, 2, 3))
    log(f"big pool ({n * ps * kv * d / 2**31:.2f} x 2**31 elements) decoded by {impl!r}: max diff against the kernel "
        f"over a small pool, row of the last pages {float(diff[0]):.4f}, row of the first {float(diff[1]):.4f}")


def _choosers():
    plain = attention.decode_kernel

    def xla_for_8bit(impl, q, pool, spec):  # the code before the kernel
        return "xla" if jnp.dtype(pool.dtype).itemsize == 1 else plain(impl, q, pool, spec)

    def kernel_for_16bit_too(impl, q, pool, spec):  # the kernel also where cuDNN's does not fit
        got = plain(impl, q, pool, spec)
        if got == "xla" and impl == "cudnn" and spec.alibi is None and paged_kernel.kernel_takes(q.dtype, q.shape[-1], pool):
            return "pallas"
        return got
    return dict(plain=plain, xla8=xla_for_8bit, all16=kernel_for_16bit_too, best=plain)


KERNEL = paged_kernel.pool_decode
MISTRAL = "mistral"  # the Qwen3-0.6B shape as a Mistral model whose every layer has a 1,024-key window

# name: (shape, kv_dtype, kernel chooser, max_len; None: the model's positions)
VARIANTS = {
    "bf16": ("qwen3-0.6b", None, "plain", 2048),
    "int8": ("qwen3-0.6b", "int8", "plain", 2048),
    "int8-before": ("qwen3-0.6b", "int8", "xla8", 2048),
    "int8-best": ("qwen3-0.6b", "int8", "best", 2048),  # the kernel at the layer section's best tiling
    "int8-context": ("qwen3-0.6b", "int8", "plain", None),
    "int8-context-before": ("qwen3-0.6b", "int8", "xla8", None),
    "window-bf16-before": (MISTRAL, None, "plain", 32768),
    "window-bf16-kernel": (MISTRAL, None, "all16", 32768),
    "window-int8": (MISTRAL, "int8", "plain", 32768),
}


def _shape(name):
    from jaxllm.random_model import SHAPES
    if name != MISTRAL:
        return name
    raw = {k: v for k, v in SHAPES["tiny" if TINY else "qwen3-0.6b"].items() if k not in ("architectures", "model_type")}
    return dict(raw, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=16 if TINY else 1024,
                max_position_embeddings=64 if TINY else 32768)


def engine_section(names):
    from jaxllm import Engine, SamplingParams
    from jaxllm.engine import Request
    from jaxllm.random_model import random_model
    n, prompt, new = (4, 24, 8) if TINY else (64, 512, 128)
    choosers = _choosers()
    results = {}
    for label in names:
        shape, kv_dtype, chooser, length = VARIANTS[label]
        if TINY:
            shape, length = ("tiny" if shape != MISTRAL else shape), (64 if length else None)
        if time.time() - T0 > DEADLINE:
            log(f"engine: deadline, {label} skipped")
            continue
        attention.decode_kernel = choosers[chooser]
        if chooser == "best":
            p_, w_, s_, f_ = BEST.get("tiling", (4, 4, 1, None))
            log(f"engine {label}: kernel tiling pages={p_} warps={w_} stages={s_} prefetch={f_}")
            paged_kernel.pool_decode = functools.partial(KERNEL, pages=p_, num_warps=w_, num_stages=s_,
                                                         prefetch=f_)
        jax.clear_caches()  # the jitted steps were traced with the other choice: trace them again
        try:
            m = random_model(_shape(shape), kv_dtype=kv_dtype)
            e = Engine(m, batch_size=n, max_len=length, page_size=16 if not TINY else 4, prefill_tokens=8192, chunk=64)
            rng = np.random.default_rng(0)
            reqs = [Request(rng.integers(0, m.config.vocab_size, prompt).tolist(),
                            SamplingParams(max_new_tokens=new, ignore_eos=True).resolved(), i) for i in range(n)]
            for run in ("first", "steady"):
                if run == "steady":
                    e.blocks.reset_prefix_cache()
                t, toks, out = time.perf_counter(), 0, {}
                for ev in e.run(reqs):
                    toks += len(ev.tokens)
                    out.setdefault(ev.index, []).extend(ev.tokens)
                dt = time.perf_counter() - t
                log(f"engine {label}: {run} {toks / dt:,.0f} tokens/s ({dt:.2f} s, {toks} tokens)")
            results[label] = out
        except Exception as err:  # noqa: BLE001
            log(f"engine {label}: failed {type(err).__name__}: {str(err)[:400]}")
        finally:
            attention.decode_kernel = choosers["plain"]
            paged_kernel.pool_decode = KERNEL
            e = m = None  # the next engine sizes its pool from the free memory
            gc.collect()
    for a, b in (("int8", "int8-before"), ("int8-best", "int8"), ("int8-context", "int8-context-before"),
                 ("window-bf16-kernel", "window-bf16-before")):
        if a in results and b in results:
            x, y = results[a], results[b]
            agree = [next((i for i, (s, t) in enumerate(zip(x[r], y[r])) if s != t), len(x[r])) for r in x]
            log(f"engine {a} vs {b}: greedy tokens equal before the first difference, median "
                f"{statistics.median(agree)} of {len(x[0])}; 8 or more equal in {sum(g >= 8 for g in agree)}/{len(agree)} rows")


if __name__ == "__main__":
    log(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or ["layer", "engine=bf16,int8,int8-before"]
    if "check" in names:
        check_section()
    if "big" in names:
        big_section()
    if "layer=mixed" in names:
        layer_section(mixed=True)
    if "layer=dims" in names:
        layer_section(dims=True)
    if "layer=b1" in names:
        layer_section(b1=True)
    if "layer" in names:
        layer_section()
    for name in names:
        if name.startswith("engine="):
            engine_section(name.split("=", 1)[1].split(","))
    log(f"done in {time.time() - T0:.0f} s")
