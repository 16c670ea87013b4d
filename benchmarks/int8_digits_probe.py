"""One row (batch-1 decode) of a symmetric int8 product through integer matmuls: x [1, K] written as
`d` int8 "digits" per value (x ~ s * (d1 + d2 / 254 + ...), one float scale s per row, each digit
the rounded remainder of the one before), so that x . dequantize(q [N, K], scale [N, K / g]) becomes
an s8 x s8 -> s32 product of the [d, K] digits with the int8 kernel, exact in int32, read once:

  per group   einsum("dGk,nGk->dnG") in int32 (a batched integer matmul over the G groups), then
              the [d, N, G] sums times the digits' weights and the group scales, summed over G
  one scale   (the ceiling) the kernel with one scale per output channel: one [d, K] x [K, N] s8 dot

against bf16 (cuBLAS) and quant.grouped_product (today's one-row form), on the Llama-3-8B layer shapes.
Error: largest |y - y_f32| / largest |y| against the float32 product of the dequantized kernel with
the float x (the digits' rounding included). Two digits leave |x - x~| <= max|x| / (127 * 508).

    python benchmarks/int8_digits_probe.py [--digits 1,2,3] [--out r.json]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from quant_matvec_probe import LAYERS, SHAPES, measure, write_results  # noqa: E402

from jaxllm.models import quant  # noqa: E402


def digits(x, d: int):
    """x [R, K] -> (int8 digits [d, R, K], their float32 weights [d, R]): x ~ sum_i w_i * digit_i."""
    xf = x.astype(jnp.float32)
    s = jnp.maximum(jnp.max(jnp.abs(xf), axis=-1), 1e-30) / 127.0  # [R]
    out, weights, rest, unit = [], [], xf / s[:, None], s
    for i in range(d):
        step = 1.0 if i == 0 else 254.0
        rest = rest * step
        unit = unit / step
        q = jnp.clip(jnp.round(rest), -127, 127)
        out.append(q.astype(jnp.int8))
        weights.append(unit)
        rest = rest - q
    return jnp.stack(out), jnp.stack(weights)


def per_group(x, q, s, d: int):
    """x [1, K] . dequantize(q [N, K], s [N, G]) with x in `d` int8 digits, an int32 product per group."""
    n, groups = s.shape
    dig, w = digits(x, d)  # [d, 1, K], [d, 1]
    dg = dig[:, 0].reshape(d, groups, -1)  # [d, G, g]
    acc = jnp.einsum("dGk,nGk->dnG", dg, q.reshape(n, groups, -1), preferred_element_type=jnp.int32)
    y = jnp.einsum("dnG,nG,d->n", acc.astype(jnp.float32), s.astype(jnp.float32), w[:, 0])
    return y[None].astype(x.dtype)


def per_group_sum_first(x, q, s, d: int):
    """As per_group, the digits' int32 sums combined first: [d, N, G] -> [N, G] before the scales."""
    n, groups = s.shape
    dig, w = digits(x, d)
    dg = dig[:, 0].reshape(d, groups, -1)
    acc = jnp.einsum("dGk,nGk->dnG", dg, q.reshape(n, groups, -1), preferred_element_type=jnp.int32)
    part = jnp.einsum("dnG,d->nG", acc.astype(jnp.float32), w[:, 0])
    return jnp.sum(part * s.astype(jnp.float32), axis=-1)[None].astype(x.dtype)


def one_scale(x, q, s1, d: int):
    """x [1, K] . (q [N, K] * s1 [N]): one s8 dot of the digits, the ceiling of the integer form."""
    dig, w = digits(x, d)
    acc = jnp.einsum("dk,nk->dn", dig[:, 0], q, preferred_element_type=jnp.int32)
    return (jnp.einsum("dn,d->n", acc.astype(jnp.float32), w[:, 0]) * s1.astype(jnp.float32))[None].astype(x.dtype)


def int8_weights(n, k, key, groups):
    out = []
    for i in range(LAYERS):
        kk = jax.random.fold_in(key, i)
        q = jax.random.randint(kk, (n, k), -127, 128, jnp.int32).astype(jnp.int8)
        s = (1e-3 * jax.random.uniform(kk, (n, groups), jnp.float32, 0.5, 1.5)).astype(jnp.bfloat16)
        out.append((q, s))
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--digits", default="1,2,3")
    p.add_argument("--check", action="store_true", help="values only, small shapes (CPU)")
    p.add_argument("--hlo", action="store_true", help="print the kernels XLA compiles per_group d=2 into (gate/up)")
    args = p.parse_args(argv)
    key = jax.random.PRNGKey(0)
    ds = [int(v) for v in args.digits.split(",")]
    if args.check:
        x = (3 * jax.random.normal(key, (1, 1024), jnp.float32)).astype(jnp.bfloat16)
        (q, s), = int8_weights(256, 1024, key, 8)[:1]
        ref = x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T
        for d in ds:
            for f in (per_group, per_group_sum_first):
                y = f(x, q, s, d)
                print(f.__name__, d, float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref))))
        return 0
    if args.hlo:
        n, k = SHAPES["gate/up"]
        x = jax.random.normal(key, (1, k), jnp.float32).astype(jnp.bfloat16)
        (q, s), = int8_weights(n, k, key, k // 128)[:1]
        for f in (per_group, per_group_sum_first):
            text = jax.jit(lambda x, q, s, f=f: f(x, q, s, 2)).lower(x, q, s).compile().as_text()
            print(f.__name__, [ln.strip()[:160] for ln in text.splitlines() if "custom_call_target" in ln or "__triton" in ln
                                or " fusion(" in ln and "ENTRY" not in ln][:12])
    results = []
    for shape, (n, k) in SHAPES.items():
        x = jax.random.normal(key, (1, k), jnp.float32).astype(jnp.bfloat16)
        ws = [(0.02 * jax.random.normal(jax.random.fold_in(key, i), (n, k), jnp.float32)).astype(jnp.bfloat16)
              for i in range(LAYERS)]
        results.append(measure(dict(case="bf16", shape=shape), jax.jit(lambda x, ws: [jnp.einsum("rk,nk->rn", x, w) for w in ws]),
                               x, ws, 2 * n * k))
        del ws
        ws = int8_weights(n, k, key, k // 128)
        nbytes = n * k + 2 * n * (k // 128)
        ref = [x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T for q, s in ws]
        results.append(measure(dict(case="grouped", shape=shape),
                               jax.jit(lambda x, ws: [quant.grouped_product(x, q, s, None, 1) for q, s in ws]), x, ws, nbytes, ref))
        for d in ds:
            for f in (per_group, per_group_sum_first):
                results.append(measure(dict(case=f"{f.__name__} d={d}", shape=shape),
                                       jax.jit(lambda x, ws, f=f, d=d: [f(x, q, s, d) for q, s in ws]), x, ws, nbytes, ref))
        ws1 = [(q, s[:, :1]) for q, s in ws]
        ref1 = [x.astype(jnp.float32) @ (q.astype(jnp.float32) * s.astype(jnp.float32)).T for q, s in ws1]
        for d in ds:
            results.append(measure(dict(case=f"one scale d={d}", shape=shape),
                                   jax.jit(lambda x, ws, d=d: [one_scale(x, q, s[:, 0], d) for q, s in ws]), x, ws1, n * k, ref1))
        del ws, ws1
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
