"""Symmetric int8 products of 16..64 rows on a Hopper GPU: models/quant_hopper.py's Mosaic GPU kernel
(several tilings) against bf16 (cuBLAS), quant_kernels.qmatmul16/qmatmul (Triton, what
quant_kernels.matmul picked before) and JAX's own hopper_mixed_type_matmul_mgpu (no scales at all:
a ceiling), on the Llama-3-8B layer shapes. Microseconds per product (8 distinct kernels per timed
call, so nothing stays in L2) and each case's largest error over the largest |y| against the
float32 product of the dequantized kernel.

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/quant_hopper_probe.py [--rows 16,64] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from quant_matvec_probe import SHAPES, measure, product, weights, write_results  # noqa: E402

from jaxllm.models import quant, quant_hopper, quant_kernels  # noqa: E402

# (tile_k, splits, stages)
TILINGS = ((128, 1, 4), (128, 2, 4), (128, 4, 4), (128, 8, 4), (128, 1, 5), (128, 4, 5), (128, 4, 2), (64, 4, 6))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="64,16")
    p.add_argument("--shapes", default="gate/up,down,q/o,k/v")
    p.add_argument("--out")
    args = p.parse_args(argv)
    results, key = [], jax.random.PRNGKey(0)

    def record(name, shape, rows, fn, x, ws, nbytes, ref=None):
        results.append(measure(dict(case=name, shape=shape, rows=rows), fn, x, ws, nbytes, ref))

    for rows in [int(r) for r in args.rows.split(",")]:
        for shape in args.shapes.split(","):
            n, k = SHAPES[shape]
            x = jax.random.normal(key, (rows, k), jnp.float32).astype(jnp.bfloat16)
            ws = weights(n, k, "bf16", None, key)
            record("bf16", shape, rows, jax.jit(product("bf16")), x, ws, 2 * n * k)
            del ws
            ws = [(q, s) for q, s, _ in weights(n, k, "int8", 128, key)]
            nbytes = n * k + 2 * n * (k // 128)
            ref = [x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T for q, s in ws]
            saved = quant_kernels.HOPPER
            quant_kernels.HOPPER = False
            record("triton (before)", shape, rows, jax.jit(lambda x, ws: [quant_kernels.matmul(x, q, s, None) for q, s in ws]),
                   x, ws, nbytes, ref)
            quant_kernels.HOPPER = saved
            record(f"auto {quant_kernels.hopper_tiling(rows, n, k, k // 128)}", shape, rows,
                   jax.jit(lambda x, ws: [quant_kernels.matmul(x, q, s, None) for q, s in ws]), x, ws, nbytes, ref)
            for tile_k, splits, stages in TILINGS:
                if not quant_hopper.fits(rows, n, k, k // 128, tile_k, splits):
                    continue
                kw = dict(tile_k=tile_k, splits=splits, stages=stages)
                record(f"hopper {kw}", shape, rows, jax.jit(lambda x, ws, kw=kw: [quant_hopper.qmatmul(x, q, s, **kw) for q, s in ws]),
                       x, ws, nbytes, ref)
            try:
                from jax.experimental.pallas.ops.gpu import hopper_mixed_type_matmul_mgpu as mixed

                cfg = mixed.TuningConfig(tile_m=64, tile_n=64, tile_k=128, max_concurrent_steps=4, epi_tile_n=64, epi_tile_m=64,
                                         wg_dimension=mixed.MatmulDimension.M)
                xt = jnp.pad(x.T, ((0, 0), (0, 64 - rows)))
                record("jax mixed (no scales)", shape, rows,
                       jax.jit(lambda xt, ws: [mixed.mixed_matmul_kernel(q, xt, out_dtype=jnp.bfloat16, config=cfg) for q, _ in ws]),
                       xt, ws, n * k)
            except Exception as e:
                print(json.dumps(dict(case="jax mixed", error=f"{type(e).__name__}: {str(e)[:300]}")), flush=True)
            del ws, ref
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
