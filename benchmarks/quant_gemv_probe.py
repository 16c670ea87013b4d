"""One row (batch-1 decode): a Pallas kernel, qgemv below (weight tile as the dot's left side, int8
-> float16 by bits or by a convert, scale/offset on each group's partial sums) against bf16 and
quant.grouped_product, on the Llama-3-8B layer shapes, a few tilings each. Also checks each case
against the float32 product of the dequantized kernel (max error / max |y|). `--mm 16,64`: instead,
quant_kernels.qmatmul16's tilings against qmatmul and bf16 at those rows (symmetric int8).

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/quant_gemv_probe.py [--out r.json]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

sys.path.insert(0, os.path.dirname(__file__))
from quant_matvec_probe import SHAPES, measure, product, weights, write_results  # noqa: E402

from jaxllm.models import quant  # noqa: E402
from jaxllm.models.quant_kernels import _int8_to_f16, qmatmul16  # noqa: E402

# -- one row (batch-1 decode) -------------------------------------------------------------------

def _to_f16(q, fast: bool):
    """int8 values as float16 (exact): by bits in inline PTX (`fast`), else a convert."""
    return _int8_to_f16(q, interpret=not fast)


def _gemv_kernel(x_ref, q_ref, s_ref, o_ref, y_ref, *, g: int, per: int, steps: int, fast: bool):
    """One row: the weight tile [bn, g] (one group) is the dot's left side, x's group broadcast to the
    16 columns a tensor-core dot needs on the right; the scale and offset apply to the [bn] partial
    sums of each group, so a weight costs one conversion and nothing else."""
    bn = q_ref.shape[0]

    def body(i, acc):
        for j in range(per):
            gi = i * per + j
            k0 = pl.multiple_of(gi * g, g)
            x = x_ref[:, pl.ds(k0, g)].astype(jnp.float32)  # [1, g]
            xt = jnp.broadcast_to(x, (16, g)).astype(jnp.float16)
            w = _to_f16(q_ref[:, pl.ds(k0, g)], fast)  # [bn, g]
            p = jax.lax.dot_general(w, xt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)  # [bn, 16]
            term = p * s_ref[:, pl.ds(gi, 1)].astype(jnp.float32)
            if o_ref is not None:
                term = term + o_ref[:, pl.ds(gi, 1)].astype(jnp.float32) * jnp.sum(x, axis=1, keepdims=True)
            acc = acc + term
        return acc

    acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((bn, 16), jnp.float32))
    y_ref[...] = jnp.max(acc, axis=1).astype(y_ref.dtype)  # the 16 columns are equal


@functools.partial(jax.jit, static_argnames=("bn", "per", "interpret", "num_warps", "num_stages", "splits", "fast"))
def qgemv(x, q, scale, offset=None, *, bn: int = 64, per: int = 1, interpret: bool = False, num_warps: int = 4,
          num_stages: int = 3, splits: int = 1, fast: bool = True):
    """y [1, N] = x [1, K] . dequantize(q [N, K], scale [N, G], offset [N, G]): one row, float16
    products (x rounded to float16), float32 sums; K split over `splits` programs."""
    (rows, k), (n, groups) = x.shape, scale.shape
    g = k // groups
    ks, gs = k // splits, groups // splits
    assert rows == 1 and k % groups == 0 and groups % splits == 0 and gs % per == 0 and n % bn == 0, (
        x.shape, q.shape, scale.shape, bn, per, splits)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages))
    specs = [pl.BlockSpec((1, ks), lambda j, h: (0, h)), pl.BlockSpec((bn, ks), lambda j, h: (j, h)),
             pl.BlockSpec((bn, gs), lambda j, h: (j, h))]
    args = [x, q, scale]
    body = functools.partial(_gemv_kernel, g=g, per=per, steps=gs // per, fast=fast and not interpret)
    if offset is not None:
        specs.append(pl.BlockSpec((bn, gs), lambda j, h: (j, h)))
        args.append(offset)
        fn = body
    else:
        fn = lambda x_ref, q_ref, s_ref, y_ref: body(x_ref, q_ref, s_ref, None, y_ref)  # noqa: E731
    y = pl.pallas_call(
        fn,
        grid=(n // bn, splits),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, bn), lambda j, h: (h, j)),
        out_shape=jax.ShapeDtypeStruct((splits, n), x.dtype if splits == 1 else jnp.float32),
        interpret=interpret,
        **params,
    )(*args)
    return (y if splits == 1 else y.sum(0, keepdims=True)).astype(x.dtype)


# -- a few rows (batch-N decode): quant_kernels.qmatmul16's tilings ------------------------------

MM16 = {16: ((16, 64, 128, 4, 3, 1, True), (16, 32, 256, 4, 3, 4, True), (16, 64, 256, 4, 3, 2, True),
             (16, 32, 256, 4, 3, 4, False), (16, 64, 256, 4, 3, 2, False)),
        64: ((64, 64, 128, 4, 3, 1, True), (64, 64, 128, 4, 3, 2, True), (64, 128, 128, 8, 3, 1, True),
             (64, 64, 256, 4, 3, 2, False), (64, 128, 256, 8, 3, 1, False), (64, 64, 128, 4, 4, 4, True))}


# (bn, per, warps, stages, splits)
TILINGS = ((64, 1, 4, 3, 1), (32, 1, 4, 3, 1), (128, 1, 4, 3, 1), (64, 2, 4, 3, 1), (64, 1, 8, 3, 1),
           (64, 1, 4, 4, 1), (32, 2, 4, 4, 1), (64, 1, 4, 3, 2), (32, 1, 4, 3, 4), (16, 1, 4, 3, 4),
           (16, 2, 4, 3, 2), (128, 1, 8, 3, 2))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--mm", default="", help="rows for the qmatmul16 section, e.g. 16,64 (skips the one-row section)")
    args = p.parse_args(argv)
    results = []
    key = jax.random.PRNGKey(0)

    def record(name, shape, kind, fn, x, ws, nbytes, ref=None):
        results.append(measure(dict(case=name, shape=shape, kind=kind), fn, x, ws, nbytes, ref))

    for rows in [int(r) for r in args.mm.split(",") if r]:
        from jaxllm.models.quant_kernels import qmatmul, tiling

        for shape, (n, k) in SHAPES.items():
            if shape == "k/v":
                continue
            x = jax.random.normal(key, (rows, k), jnp.float32).astype(jnp.bfloat16)
            ws = weights(n, k, "bf16", None, key)
            record(f"bf16 rows={rows}", shape, "bf16", jax.jit(product("bf16")), x, ws, 2 * n * k)
            del ws
            ws = [(q, s, None) for q, s, _ in weights(n, k, "int8", 128, key)]
            nbytes = n * k + 2 * n * (k // 128)
            ref = [x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T for q, s, _ in ws]
            kw = tiling(rows, n, k, k // 128)
            record(f"qmatmul rows={rows} {kw}", shape, "int8", jax.jit(lambda x, ws, kw=kw: [qmatmul(x, q, s, None, **kw) for q, s, _ in ws]),
                   x, ws, nbytes, ref)
            for bm, bn, bk, warps, stages, splits, pg in MM16[16 if rows <= 16 else 64]:
                if (k // splits) % bk:
                    continue
                kw = dict(bm=bm, bn=bn, bk=bk, num_warps=warps, num_stages=stages, splits=splits, per_group=pg)
                record(f"qmatmul16 rows={rows} {kw}", shape, "int8", jax.jit(lambda x, ws, kw=kw: [qmatmul16(x, q, s, **kw) for q, s, _ in ws]),
                       x, ws, nbytes, ref)
            del ws, ref
    for shape, (n, k) in SHAPES.items() if not args.mm else ():
        x = jax.random.normal(key, (1, k), jnp.float32).astype(jnp.bfloat16)
        ws = weights(n, k, "bf16", None, key)
        record("bf16", shape, "bf16", jax.jit(product("bf16")), x, ws, 2 * n * k)
        del ws
        ws = weights(n, k, "int8", 128, key)
        nbytes = n * k + 4 * n * (k // 128)
        ref = [x.astype(jnp.float32) @ quant.dequantize(q, s, o, jnp.float32).T for q, s, o in ws]
        record("grouped", shape, "int8", jax.jit(product("grouped")), x, ws, nbytes, ref)
        for fast in (True, False):
            for bn, per, warps, stages, splits in TILINGS[:3] if args.quick else TILINGS:
                if n % bn or (k // 128) % (splits * per):
                    continue
                fn = jax.jit(lambda x, ws, kw=dict(bn=bn, per=per, num_warps=warps, num_stages=stages, splits=splits,
                                                   fast=fast): [qgemv(x, q, s, o, **kw) for q, s, o in ws])
                record(f"qgemv {'asm' if fast else 'cvt'} bn={bn} per={per} w={warps} s={stages} S={splits}",
                       shape, "int8", fn, x, ws, nbytes, ref)
        del ws, ref
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
