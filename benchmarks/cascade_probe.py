"""Decode calls of rows that share a cached prompt prefix, read per row (cuDNN's paged kernel on a
GPU) or once for all (cascade attention), on a random model (python benchmarks/cascade_probe.py
--shape qwen3-0.6b): the prefix is cached by one request, then `rows` requests that begin with it
run to the end; each decode call is timed on the host (it returns host arrays, so it has finished).
Prints per mode: decode calls, their total and mean time, and the whole run. `--check` first
compares the kernels on one layer and times them per call (those times include the Python
dispatch of each call, ~0.1 ms: compare the decode calls instead)."""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxllm import SamplingParams, runtime
from jaxllm.engine import Engine, Request
from jaxllm.random_model import random_model
from jaxllm.serving import runner as runner_module


def check_kernels(rows: int = 64, prefix: int = 2000, own: int = 80, ps: int = 16) -> None:
    """cascade_decode_attention (cuDNN and XLA forms) against the plain paged call, bf16, Qwen3-0.6B
    heads, one layer; a row with no shared keys and an inactive row (length 1) included."""
    import jax
    import jax.numpy as jnp

    from jaxllm.models import paged_decode
    h, kv, d = 16, 8, 128
    width = -(-(prefix + own) // ps)
    pool = rows * width + rows  # a multiple of the rows, >= rows * width
    rng = np.random.default_rng(0)
    kp = jnp.asarray(rng.standard_normal((pool, ps, kv, d)), jnp.bfloat16)
    vp = jnp.asarray(rng.standard_normal((pool, ps, kv, d)), jnp.bfloat16)
    shared_pages = prefix // ps
    ids = rng.permutation(pool - 1)
    table = np.zeros((rows, width), np.int32)
    table[:, :shared_pages] = ids[:shared_pages]
    table[:, shared_pages:] = ids[shared_pages : shared_pages + rows * (width - shared_pages)].reshape(rows, -1)
    table[0] = ids[-width:]  # row 0 shares nothing
    lengths = rng.integers(shared_pages * ps + 1, width * ps, rows).astype(np.int32)
    lengths[1] = 1  # inactive
    offsets = np.full(rows, shared_pages * ps, np.int32)
    offsets[:2] = 0
    q = jnp.asarray(rng.standard_normal((rows, 1, h, d)), jnp.bfloat16)
    shared_keys = 2048
    shared = np.full(shared_keys // ps, pool - 1, np.int32)
    shared[:shared_pages] = ids[:shared_pages]
    args = (q, kp, vp, jnp.asarray(table), jnp.asarray(lengths))
    plain = jax.jit(lambda *a: paged_decode.paged_decode_attention(*a, scale=0.088, impl="cudnn_paged"))(*args)
    ref = jax.jit(lambda *a: paged_decode.paged_decode_attention(*a, scale=0.088, impl="xla"))(*args)
    for impl in ("cudnn", "xla"):
        f = jax.jit(lambda *a, impl=impl: paged_decode.cascade_decode_attention(
            *a, jnp.asarray(shared), jnp.asarray(offsets), scale=0.088, shared_keys=shared_keys, suffix_keys=256,
            impl=impl))
        got = f(*args)
        err = float(jnp.max(jnp.abs(got[2:].astype(jnp.float32) - ref[2:].astype(jnp.float32))))
        # rows 0-1 read their own tables: the cuDNN form reads them whole, the XLA form only suffix_keys
        print(f"cascade {impl}: max |diff| vs xla plain {err:.4f} (cudnn_paged vs xla plain "
              f"{float(jnp.max(jnp.abs(plain.astype(jnp.float32) - ref.astype(jnp.float32)))):.4f})"
              + (f", rows without a shared part {float(jnp.max(jnp.abs(got[:2].astype(jnp.float32) - ref[:2].astype(jnp.float32)))):.4f}"
                 if impl == "cudnn" else ""), flush=True)
        print(f"  {impl} cascade {_per_call_us(f, args):.1f} us per call", flush=True)
    g = jax.jit(lambda *a: paged_decode.paged_decode_attention(*a, scale=0.088, impl="cudnn_paged"))
    print(f"  cudnn_paged plain {_per_call_us(g, args):.1f} us per call", flush=True)


def _per_call_us(f, args, calls: int = 50) -> float:
    for _ in range(3):
        f(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        out = f(*args)
    out.block_until_ready()
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--prefix", type=int, default=2000)
    p.add_argument("--own", type=int, default=50)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--check", action="store_true", help="the one-layer kernel check and timing first")
    args = p.parse_args()
    runtime.set_gpu_flags()
    if args.check:
        check_kernels()
    model = random_model(args.shape)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    shared = rng.integers(0, vocab, args.prefix).tolist()
    params = SamplingParams(max_new_tokens=args.new, ignore_eos=True).resolved()
    max_len = args.prefix + args.own + args.new
    timings = {}
    original = runner_module.Runner.decode

    def timed(self, *a, **k):
        start = time.perf_counter()
        out = original(self, *a, **k)
        timings.setdefault("decode", []).append(time.perf_counter() - start)
        return out

    runner_module.Runner.decode = timed
    for cascade in [False, True] * args.repeat:
        engine = Engine(model, batch_size=args.rows, max_len=max_len, num_pages=(args.rows + 1) * -(-max_len // 16),
                        page_size=16, prefill_tokens=8192, chunk=64, cascade=cascade)
        list(engine.run([Request(shared + [1], params, 0)]))  # caches the prefix's pages
        for attempt in range(2):  # the second run is timed (the first compiles)
            reqs = [Request(shared + rng.integers(0, vocab, args.own).tolist(), params, i) for i in range(args.rows)]
            timings.clear()
            start = time.perf_counter()
            for _ in engine.run(reqs):
                pass
            whole = time.perf_counter() - start
        d = timings["decode"]
        print(f"cascade={cascade!s:5} decode calls {len(d)}, {sum(d):.3f} s (mean {1e3 * np.mean(d):.2f} ms, "
              f"median {1e3 * np.median(d):.2f} ms), run {whole:.3f} s, cascaded calls {engine.scheduler.stats.cascaded}",
              flush=True)


if __name__ == "__main__":
    main()
