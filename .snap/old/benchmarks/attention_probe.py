"""Probe and time the attention paths of models/attention_ops.py on a GPU (Qwen3-0.6B attention:
H=16, K=8, D=128, bf16). One run prints: semantic checks of what cuDNN / Pallas express (max abs
diff against blocked_attention), prefill timings (T=32768 at start 0
T=2048 chunk at start
30720) and paged-decode timings (batch 1/64, context 1k/8k, page size 16..128).

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python3 benchmarks/attention_probe.py [--quick]

It loads models/attention_ops.py by path (the package need not import). Results also go to
$OUT/attention_probe.txt when OUT is set.
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("attention_ops", os.path.join(HERE, "..", "models", "attention_ops.py"))
ao = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ao)

H, K, D = 16, 8, 128
SCALE = D ** -0.5
DT = jnp.bfloat16
T0 = time.time()
DEADLINE = float(os.environ.get("PROBE_DEADLINE", "250"))  # seconds; later sections are skipped
QUICK = "--quick" in sys.argv
TINY = "--tiny" in sys.argv  # CPU smoke test of the script itself
LINES: list[str] = []


def log(msg=""):
    print(msg, flush=True)
    LINES.append(msg)


def rnd(key, shape, dtype=DT):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def maxdiff(a, b):
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def bench(fn, *args, reps=5, inner=1):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times), out


def attempt(name, f):
    try:
        return f()
    except Exception as e:  # noqa: BLE001
        log(f"  {name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return None


# ----------------------------------------------------------------------------------------------


def checks():
    log("== semantic checks (bf16, max abs diff vs blocked_attention) ==")
    k0 = jax.random.PRNGKey(0)
    ks = jax.random.split(k0, 8)
    # 1. Does cuDNN's is_causal with T < S align top-left or bottom-right?
    b, t, s = 2, 128, 384
    q = rnd(ks[0], (b, t, H, D))
    k = rnd(ks[1], (b, s, K, D))
    v = rnd(ks[2], (b, s, K, D))
    tl = ao.blocked_attention(q, k, v, jnp.broadcast_to(jnp.arange(t), (b, t)), None, scale=SCALE)
    br = ao.blocked_attention(q, k, v, jnp.broadcast_to(jnp.arange(t) + s - t, (b, t)), None, scale=SCALE)

    def c1():
        o = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=SCALE, is_causal=True,
                                                                 implementation="cudnn"))(q, k, v)
        log(f"  cudnn is_causal T={t} S={s}: vs top-left {maxdiff(o, tl):.4f}, vs bottom-right {maxdiff(o, br):.4f}")
    attempt("cudnn is_causal T<S", c1)

    start = jnp.array([200, 64], jnp.int32)
    qpos = start[:, None] + jnp.arange(t)
    ref = ao.blocked_attention(q, k, v, qpos, start + t, scale=SCALE)

    def c2():
        o = jax.jit(lambda q, k, v, kl: jax.nn.dot_product_attention(
            q, k, v, scale=SCALE, is_causal=True, query_seq_lengths=jnp.full((b,), t, jnp.int32),
            key_value_seq_lengths=kl, implementation="cudnn"))(q, k, v, start + t)
        log(f"  cudnn is_causal+seq lengths (PADDING_CAUSAL), chunk at start {list(map(int, start))}: "
            f"vs offset-causal {maxdiff(o, ref):.4f}")
    attempt("cudnn padding causal", c2)

    def c3():
        o = jax.jit(lambda q, k, v, st: ao.flash_prefill(q, k, v, st, scale=SCALE, impl="cudnn"))(q, k, v, start)
        log(f"  flash_prefill cudnn split (prefix+chunk, lse merge), starts {list(map(int, start))}: {maxdiff(o, ref):.4f}")
        st0 = jnp.array([0, 100], jnp.int32)
        r0 = ao.blocked_attention(q, k, v, st0[:, None] + jnp.arange(t), st0 + t, scale=SCALE)
        o0 = jax.jit(lambda q, k, v, st: ao.flash_prefill(q, k, v, st, scale=SCALE, impl="cudnn"))(q, k, v, st0)
        log(f"  flash_prefill cudnn split, starts [0, 100]: {maxdiff(o0, r0):.4f}, nan={bool(jnp.isnan(o0).any())}")
    attempt("cudnn split", c3)

    def c4():
        o = jax.jit(lambda q, k, v, st: ao.flash_prefill(q, k, v, st, scale=SCALE, impl="cudnn_mask"))(q, k, v, start)
        log(f"  flash_prefill cudnn_mask (dense bool mask -> bias): {maxdiff(o, ref):.4f}")
    attempt("cudnn mask", c4)

    # square causal, window
    t2 = 512
    q2 = rnd(ks[3], (1, t2, H, D))
    k2 = rnd(ks[4], (1, t2, K, D))
    v2 = rnd(ks[5], (1, t2, K, D))
    for window in (None, 100):
        r = ao.flash_prefill(q2, k2, v2, 0, scale=SCALE, window=window, impl="blocked")
        for impl in ("cudnn", "pallas_triton", "pallas_mgpu"):
            if window is not None and impl != "cudnn":
                continue
            def c5(impl=impl, window=window, r=r):
                o = jax.jit(lambda q, k, v: ao.flash_prefill(q, k, v, 0, scale=SCALE, window=window, impl=impl))(q2, k2, v2)
                log(f"  flash_prefill {impl} square T=S={t2} window={window}: {maxdiff(o, r):.4f}")
            attempt(f"{impl} square", c5)
    # float32 reference vs blocked bf16 (size of bf16 error)
    r32 = ao.reference_attention(q2.astype(jnp.float32), k2.astype(jnp.float32), v2.astype(jnp.float32),
                                 jnp.arange(t2)[None], None, scale=SCALE)
    rb = ao.flash_prefill(q2, k2, v2, 0, scale=SCALE, impl="blocked")
    log(f"  (scale of bf16 error: blocked bf16 vs float32 reference {maxdiff(rb, r32):.4f})")

    # paged decode paths
    bb, ctx, ps = 4, 1024, 16
    p = ctx // ps
    kp = rnd(ks[6], (bb * p, ps, K, D))
    vp = rnd(ks[7], (bb * p, ps, K, D))
    table = jnp.asarray(np.random.default_rng(0).permutation(bb * p).reshape(bb, p), jnp.int32)
    lengths = jnp.array([1, 17, 700, 1024], jnp.int32)
    qd = rnd(ks[0], (bb, 1, H, D))
    rd = ao.paged_decode_attention(qd, kp, vp, table, lengths, scale=SCALE, impl="xla")
    for impl in ("cudnn", "cudnn_paged", "pallas"):
        def c6(impl=impl):
            o = jax.jit(lambda *a: ao.paged_decode_attention(*a, scale=SCALE, impl=impl))(qd, kp, vp, table, lengths)
            log(f"  paged_decode {impl} (lengths 1,17,700,1024): {maxdiff(o, rd):.4f}")
        attempt(f"decode {impl}", c6)


# ----------------------------------------------------------------------------------------------


def prefill():
    log("")
    log("== prefill, one layer, B=1 (ms, median of 5) ==")
    key = jax.random.PRNGKey(1)
    ks = jax.random.split(key, 3)
    rows = []
    # (a) whole prompt, T = S = 32768, start 0
    t = s = 256 if TINY else (8192 if QUICK else 32768)
    q = rnd(ks[0], (1, t, H, D))
    k = rnd(ks[1], (1, s, K, D))
    v = rnd(ks[2], (1, s, K, D))
    flops = 4 * H * D * t * s / 2  # causal half
    variants = [
        ("blocked blk512", dict(impl="blocked", block=512)),
        ("blocked q2048/blk1024", dict(impl="blocked", block=1024, q_block=2048)),
        ("blocked q4096/blk512", dict(impl="blocked", block=512, q_block=4096)),
        ("cudnn", dict(impl="cudnn")),
        ("pallas_triton", dict(impl="pallas_triton")),
        ("pallas_mgpu", dict(impl="pallas_mgpu")),
    ]
    base = None
    for name, kw in variants:
        if time.time() - T0 > DEADLINE:
            log(f"  (deadline: skipped {name})")
            continue
        def run(kw=kw):
            f = jax.jit(lambda q, k, v: ao.flash_prefill(q, k, v, 0, scale=SCALE, **kw))
            return bench(f, q, k, v, reps=3)
        res = attempt(f"T={t} {name}", run)
        if res is None:
            continue
        sec, out = res
        if base is None:
            base = out
        rows.append((f"T={t} start=0", name, sec * 1e3, flops / sec / 1e12, maxdiff(out, base)))
        log(f"  T={t} start=0 {name:24s} {sec * 1e3:9.2f} ms  {flops / sec / 1e12:6.1f} TFLOP/s  diff vs first {rows[-1][-1]:.4f}")
    del q, k, v, base
    # (b) chunk of 2048 at start 30720 over 32768 keys
    t, s = (128, 512) if TINY else (2048, (8192 if QUICK else 32768))
    st = s - t
    q = rnd(ks[0], (1, t, H, D))
    k = rnd(ks[1], (1, s, K, D))
    v = rnd(ks[2], (1, s, K, D))
    start = jnp.array([st], jnp.int32)
    flops = 4 * H * D * t * (st + t / 2)
    variants = [
        ("blocked blk512", dict(impl="blocked", block=512)),
        ("blocked blk1024", dict(impl="blocked", block=1024)),
        ("blocked q512/blk2048", dict(impl="blocked", block=2048, q_block=512)),
        ("cudnn split+lse", dict(impl="cudnn")),
        ("cudnn_mask (bias)", dict(impl="cudnn_mask")),
        ("xla masked ref", dict(impl="xla")),
    ]
    base = None
    for name, kw in variants:
        if time.time() - T0 > DEADLINE:
            log(f"  (deadline: skipped {name})")
            continue
        def run(kw=kw):
            f = jax.jit(lambda q, k, v, s0: ao.flash_prefill(q, k, v, s0, scale=SCALE, **kw))
            return bench(f, q, k, v, start, reps=5)
        res = attempt(f"chunk {name}", run)
        if res is None:
            continue
        sec, out = res
        if base is None:
            base = out
        rows.append((f"T={t} start={st}", name, sec * 1e3, flops / sec / 1e12, maxdiff(out, base)))
        log(f"  T={t} start={st} {name:24s} {sec * 1e3:9.2f} ms  {flops / sec / 1e12:6.1f} TFLOP/s  diff vs first {rows[-1][-1]:.4f}")
    return rows


# ----------------------------------------------------------------------------------------------


def decode():
    log("")
    log("== paged decode, one layer, 100 chained calls in a fori_loop (us per call, median of 5) ==")
    rows = []
    n_loop = 100
    rng = np.random.default_rng(0)
    for b in ((1, 2) if TINY else (1, 64)):
        for ctx in ((256,) if TINY else (1024, 8192)):
            for ps in (16, 32, 64, 128):
                if time.time() - T0 > DEADLINE:
                    log(f"  (deadline: skipped B={b} ctx={ctx} ps={ps})")
                    continue
                p = ctx // ps
                n = b * p
                key = jax.random.PRNGKey(b * 100000 + ctx + ps)
                k1, k2, k3 = jax.random.split(key, 3)
                kp = rnd(k1, (n, ps, K, D))
                vp = rnd(k2, (n, ps, K, D))
                q = rnd(k3, (b, 1, H, D))
                table = jnp.asarray(rng.permutation(n).reshape(b, p), jnp.int32)
                lengths = jnp.asarray(rng.integers(ctx * 3 // 4, ctx + 1, size=b) if b > 1 else [ctx], jnp.int32)
                kt, vt = jnp.transpose(kp, (2, 0, 1, 3)), jnp.transpose(vp, (2, 0, 1, 3))
                impls = ["cudnn", "cudnn_paged", "pallas_knpd", "xla"]
                if ps not in (16, 128):
                    impls = ["cudnn_paged", "pallas_knpd"]
                ref = None
                for impl in impls:
                    def one(q, table, impl=impl, kp=kp, vp=vp, kt=kt, vt=vt, lengths=lengths):
                        if impl == "pallas_knpd":  # pool stored in the kernel's own layout
                            return ao.pallas_paged_decode(q, kt, vt, table, lengths, scale=SCALE)
                        return ao.paged_decode_attention(q, kp, vp, table, lengths, scale=SCALE, impl=impl)

                    def loop(q, table, one=one, n=n):
                        # the table moves each step so XLA cannot hoist a gather out of the loop
                        return lax.fori_loop(0, n_loop, lambda i, qq: one(qq, (table + i) % n).astype(qq.dtype), q)

                    def run(loop=loop, q=q, table=table):
                        f = jax.jit(loop)
                        return bench(f, q, table, reps=5, inner=n_loop)
                    res = attempt(f"B={b} ctx={ctx} ps={ps} {impl}", run)
                    if res is None:
                        continue
                    sec, _ = res
                    single = jax.jit(one)(q, table)
                    if ref is None:
                        ref = ao.paged_decode_attention(q, kp, vp, table, lengths, scale=SCALE, impl="xla")
                    d = maxdiff(single, ref)
                    rows.append((b, ctx, ps, impl, sec * 1e6, d))
                    log(f"  B={b:2d} ctx={ctx:5d} ps={ps:3d} {impl:12s} {sec * 1e6:9.1f} us  diff vs xla {d:.4f}")
    return rows


def main():
    log(f"jax {jax.__version__}, devices {jax.devices()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    try:
        from jax._src.lib import cuda_versions
        log(f"cudnn {cuda_versions.cudnn_get_version()}")
    except Exception:  # noqa: BLE001
        pass
    for section in (checks, prefill, decode):
        try:
            section()
        except Exception:  # noqa: BLE001
            log(traceback.format_exc())
        log(f"(elapsed {time.time() - T0:.0f} s)")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "attention_probe.txt"), "w") as f:
            f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
