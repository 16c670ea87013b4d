"""Which form of a quantized product is fastest for decode? Times, per product, on the Llama-3-8B
layer shapes ([out, in] kernels, as models/layers.py Dense stores them), at 1 and 64 rows:

  bf16              the float product (the baseline: what quantized decode must beat)
  deq               dequantize (convert, scale, offset, reshape) then the product: today's Dense
  grouped           quant.grouped_product: per-group contractions, scale/offset on partial sums
  reduce, magic     one row: dequantize in f32 and multiply-reduce (no dot); magic: int8 -> f32 by
                    bits (--reduce)
  chan              one symmetric scale per output channel applied to the output: (x . q) * s
  qmatvec, qmatmul  Pallas kernels that dequantize in registers, a few tilings: qmatmul is
                    models/quant_kernels.py's; qmatvec (below) a candidate without the tensor
                    cores, an elementwise accumulator per row reduced once at the end (--matvec)
  ...+triton        the same with XLA's Triton GEMM enabled for this executable only
                    (jax.jit compiler_options; the process keeps --xla_gpu_enable_triton_gemm=false)

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/quant_matvec_probe.py [--out r.json]

Each timed call runs LAYERS products on distinct weights (so nothing stays in L2) and the time is
divided by LAYERS. Prints one JSON line per case and the GB/s of the kernel's own bytes.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxllm.models import quant
from jaxllm.models.quant_kernels import _call, _dequantized, qmatmul

SHAPES = {"gate/up": (14336, 4096), "down": (4096, 14336), "q/o": (4096, 4096), "k/v": (1024, 4096)}
LAYERS = 8
TRITON = {"xla_gpu_enable_triton_gemm": True}


def _matvec_kernel(x_ref, q_ref, s_ref, o_ref, y_ref, *, g: int, bk: int, steps: int):
    bn, rows = q_ref.shape[0], x_ref.shape[0]

    def body(i, acc):
        w = _dequantized(q_ref, s_ref, o_ref, i, bk, g, jnp.float32)
        xs = x_ref[:, pl.ds(pl.multiple_of(i * bk, bk), bk)].astype(jnp.float32)  # [R, bk]
        return tuple(a + w * xs[r][None, :] for r, a in enumerate(acc))

    acc = jax.lax.fori_loop(0, steps, body, tuple(jnp.zeros((bn, bk), jnp.float32) for _ in range(rows)))
    for r, a in enumerate(acc):
        y_ref[pl.ds(r, 1), :] = jnp.sum(a, axis=1)[None, :].astype(y_ref.dtype)


@functools.partial(jax.jit, static_argnames=("bn", "bk", "interpret", "num_warps", "num_stages"))
def qmatvec(x, q, scale, offset=None, *, bn: int = 8, bk: int = 512, interpret: bool = False,
            num_warps: int = 4, num_stages: int = 3):
    """The probe's matvec candidate (probed 2026-11-28: slower than quant.grouped_product at one row)."""
    return _call(_matvec_kernel, x, q, scale, offset, x.shape[0], bn, bk, interpret, num_warps, num_stages)


def timed(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def measure(fields: dict, fn, x, ws, nbytes, ref=None) -> dict:
    """One case, printed as a JSON line: `fields` plus microseconds per product, GB/s of the
    kernel's own bytes and (with `ref`, the float32 products) the largest error relative to the
    largest output; or the error that stopped it (a form that does not compile is a finding)."""
    try:
        out = fn(x, ws)
        err = None if ref is None else max(
            float(jnp.max(jnp.abs(o.astype(jnp.float32) - r)) / jnp.max(jnp.abs(r))) for o, r in zip(out, ref))
        t = timed(fn, x, ws) / LAYERS
        r = dict(fields, us=round(t * 1e6, 2), gbps=round(nbytes / t / 1e9, 1), err=err)
    except Exception as e:
        r = dict(fields, error=f"{type(e).__name__}: {str(e)[:600]}")
    print(json.dumps(r), flush=True)
    return r


def weights(n, k, kind, g, key):
    """LAYERS kernels of one kind: (kernel, scale, offset) tuples with random values."""
    out = []
    for i in range(LAYERS):
        kk = jax.random.fold_in(key, i)
        if kind == "bf16":
            out.append((0.02 * jax.random.normal(kk, (n, k), jnp.float32)).astype(jnp.bfloat16))
            continue
        lo, hi, dt = (-128, 127, jnp.int8) if kind == "int8" else (-8, 7, jnp.int4)
        q = jax.random.randint(kk, (n, k), lo, hi + 1, jnp.int32).astype(dt)
        groups = 1 if g is None else k // g
        s = (1e-3 * jax.random.uniform(kk, (n, groups), jnp.float32, 0.5, 1.5)).astype(jnp.bfloat16)
        o = None if g is None else (1e-3 * jax.random.normal(kk, (n, groups), jnp.float32)).astype(jnp.bfloat16)
        out.append((q, s, o))
    return out


def one_row_shapes(argv):
    """The one-row probes' command line (--out) and cases: (args, [(label, n, k, x, sets)]) with one row x [1, k]
    and, per Llama-3-8B product shape [n, k], LAYERS kernels each of bf16, int8 symmetric in groups of 128 and int4
    asymmetric in groups of 32 (the adopted schemes), made as the list is walked."""
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args(argv)
    key = jax.random.PRNGKey(0)

    def cases():
        for label, (n, k) in SHAPES.items():
            x = jax.random.normal(jax.random.fold_in(key, 7), (1, k), jnp.float32).astype(jnp.bfloat16)
            yield label, n, k, x, {"bf16": weights(n, k, "bf16", None, key),
                                   "int8": [(q, s, None) for q, s, _ in weights(n, k, "int8", 128, key)],
                                   "int4": weights(n, k, "int4", 32, key)}

    return args, cases()


def product(form):
    def one(x, w):
        if form == "bf16":
            return jnp.einsum("rk,nk->rn", x, w)
        q, s, o = w
        if form == "deq":
            return jnp.einsum("rk,nk->rn", x, quant.dequantize(q, s, o, x.dtype))
        if form == "grouped":
            return quant.grouped_product(x, q, s, o, 1)
        if form in ("reduce", "magic"):  # multiply-reduce over (G, g): no dot, one fused reduction
            groups = s.shape[1]
            if form == "magic" and q.dtype == jnp.int8:  # int8 -> f32 by bits: (q + 128) | 2^23, minus 2^23 + 128
                u = jax.lax.bitcast_convert_type(q, jnp.uint8).astype(jnp.uint32) ^ 0x80
                wf = jax.lax.bitcast_convert_type(u | 0x4B000000, jnp.float32) - 8388736.0
            else:
                wf = q.astype(jnp.float32)
            w = wf.reshape(q.shape[0], groups, -1) * s.astype(jnp.float32)[:, :, None] + o.astype(jnp.float32)[:, :, None]
            xs = x.astype(jnp.float32).reshape(x.shape[0], 1, groups, -1)
            return jnp.sum(xs * w[None], axis=(2, 3)).astype(x.dtype)
        if form == "chan":
            return (jnp.einsum("rk,nk->rn", x, q.astype(x.dtype), preferred_element_type=jnp.float32)
                    * s[:, 0].astype(jnp.float32)).astype(x.dtype)
        raise ValueError(form)

    return lambda x, ws: [one(x, w) for w in ws]


def pallas_form(kernel, **tiling):
    return lambda x, ws: [kernel(x, q, s, o, **tiling) for q, s, o in ws]


# tilings tried: (bn, bk, warps) for qmatvec at <= 4 rows; (bm, bn, bk, warps, stages, K splits) for qmatmul
MATVEC = ((4, 512, 4), (8, 512, 4), (8, 1024, 4), (16, 256, 4))
MATMUL = {1: ((16, 32, 256, 4, 3, 2), (16, 32, 256, 4, 3, 4), (16, 64, 128, 4, 3, 4), (16, 32, 128, 4, 4, 8),
              (16, 16, 256, 4, 3, 4), (16, 64, 256, 4, 3, 8)),
          64: ((64, 64, 128, 4, 3, 2), (64, 64, 128, 4, 3, 4), (64, 128, 128, 8, 3, 4), (64, 64, 256, 4, 3, 4),
               (64, 128, 256, 8, 3, 2), (64, 32, 256, 4, 3, 4))}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--rows", default="1,16,64")
    p.add_argument("--pallas", action="store_true", help="also the Pallas kernels' tilings")
    p.add_argument("--reduce", action="store_true", help="also the one-row multiply-reduce forms")
    p.add_argument("--matvec", action="store_true", help="with --pallas: also qmatvec")
    p.add_argument("--chan", action="store_true", help="also per-channel int8 with Triton GEMM")
    args = p.parse_args(argv)
    results = []
    key = jax.random.PRNGKey(0)

    def record(name, shape, rows, kind, fn, x, ws, nbytes):
        results.append(measure(dict(case=name, shape=shape, rows=rows, kind=kind), fn, x, ws, nbytes))

    for rows in [int(r) for r in args.rows.split(",")]:
        for shape, (n, k) in SHAPES.items():
            if rows > 1 and shape not in ("gate/up", "down", "q/o"):
                continue  # many rows: the two large products say enough
            x = jax.random.normal(key, (rows, k), jnp.float32).astype(jnp.bfloat16)
            for kind, g in (("bf16", None), ("int8", 128), ("int4", 32)) + ((("int8c", None),) if args.chan else ()):
                ws = weights(n, k, "int8" if kind == "int8c" else kind, g, key)
                per = {"bf16": 2, "int8": 1, "int8c": 1, "int4": 0.5}[kind]
                nbytes = n * k * per + (0 if g is None else 2 * 2 * n * (k // g))
                forms = {"bf16": {"bf16": product("bf16")}, "int8c": {"chan+triton": product("chan")}}.get(
                    kind, {"deq": product("deq"), "grouped": product("grouped")} if rows > 1 else
                    dict(grouped=product("grouped"), **({"reduce": product("reduce")} if args.reduce else {}),
                         **({"magic": product("magic")} if args.reduce and kind == "int8" else {})))
                for name, f in forms.items():
                    opts = TRITON if name.endswith("+triton") else None
                    record(name, shape, rows, kind, jax.jit(f, compiler_options=opts), x, ws, nbytes)
                if kind in ("int8", "int4"):
                    for bn, bk, warps in MATVEC if rows <= 4 and args.pallas and args.matvec else ():
                        record(f"qmatvec bn={bn} bk={bk} w={warps}", shape, rows, kind,
                               jax.jit(pallas_form(qmatvec, bn=bn, bk=bk, num_warps=warps)), x, ws, nbytes)
                    for bm, bn, bk, warps, stages, splits in MATMUL[1 if rows <= 16 else 64] if args.pallas else ():
                        if kind == "int4" and (bm, bn, bk) not in ((16, 32, 256), (64, 64, 128)):
                            continue  # int4: two tilings say whether the kernel is near int8's
                        record(f"qmatmul bm={bm} bn={bn} bk={bk} w={warps} s={stages} S={splits}", shape, rows, kind,
                               jax.jit(pallas_form(qmatmul, bm=bm, bn=bn, bk=bk, num_warps=warps, num_stages=stages,
                                                   splits=splits)), x, ws, nbytes)
                del ws
    write_results(args.out, results)
    return 0


def write_results(path, results) -> None:
    """The probe's JSON lines as one list, when --out names a file."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
