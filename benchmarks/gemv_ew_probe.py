"""One row (batch-1 decode) of a symmetric int8 product, y [1, N] = x [1, K] . dequantize(q [N, K],
scale [N, K / 128]), as a Pallas (Triton) kernel without the tensor cores: each program keeps an
elementwise float32 accumulator [bn, bk] over its rows, adds x times the converted tile times the
tile's group scale each step, and reduces it across K once at the end (K split over `splits`
programs where the rows alone leave multiprocessors idle). Three conversions of the int8 tile:

  cvt     astype(float32): one quarter-rate convert per weight
  magic   the byte viewed unsigned, xor 0x4B000080 (2^23 + 128 + q as a float32's bits), minus
          2^23 + 128: two full-rate instructions per weight, exact
  f16     inline PTX to float16 four bytes at a time (quant_kernels._I8_TO_F16), then float32

against bf16 (cuBLAS), quant.grouped_product (today's one-row form) and XLA's folded form with the
magic conversion, on the Llama-3-8B layer shapes. Error: largest |y - y_f32| / largest |y| against
the float32 product of the dequantized kernel.

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/gemv_ew_probe.py [--out r.json]
    python benchmarks/gemv_ew_probe.py --check      # interpret mode on a CPU: values only
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
from quant_matvec_probe import LAYERS, SHAPES, measure, weights, write_results  # noqa: E402

from jaxllm.models import quant  # noqa: E402
from jaxllm.models.quant_kernels import _int8_to_f16  # noqa: E402

MAGIC, MAGIC_F = 0x4B000080, 8388736.0


def _convert(q, how: str, interpret: bool):
    if how == "magic":  # q arrives as uint8 bytes
        return jax.lax.bitcast_convert_type(q.astype(jnp.uint32) ^ MAGIC, jnp.float32) - MAGIC_F
    if how == "f16":
        return _int8_to_f16(q, interpret).astype(jnp.float32)
    return q.astype(jnp.float32)


def _kernel(x_ref, q_ref, s_ref, y_ref, *, g: int, bk: int, steps: int, how: str, interpret: bool):
    bn, per = q_ref.shape[0], bk // g

    def body(i, acc):
        k0 = pl.multiple_of(i * bk, bk)
        w = _convert(q_ref[:, pl.ds(k0, bk)], how, interpret)  # [bn, bk]
        t = w * x_ref[:, pl.ds(k0, bk)].astype(jnp.float32)
        if per == 1:
            return acc + t * s_ref[:, pl.ds(i, 1)].astype(jnp.float32)
        s = s_ref[:, pl.ds(pl.multiple_of(i * per, per), per)].astype(jnp.float32)
        return acc + (t.reshape(bn, per, g) * s[:, :, None]).reshape(bn, bk)

    acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((bn, bk), jnp.float32))
    y_ref[...] = jnp.sum(acc, axis=1)[None, :].astype(y_ref.dtype)


@functools.partial(jax.jit, static_argnames=("bn", "bk", "splits", "warps", "stages", "how", "interpret"))
def qgemv_ew(x, q, scale, *, bn=32, bk=128, splits=1, warps=4, stages=3, how="magic", interpret=False):
    (_, k), (n, groups) = x.shape, scale.shape
    g = k // groups
    ks, gs = k // splits, groups // splits
    assert bk % g == 0 and ks % bk == 0 and n % bn == 0, (x.shape, q.shape, bn, bk, splits)
    if how == "magic":
        q = jax.lax.bitcast_convert_type(q, jnp.uint8)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages))
    y = pl.pallas_call(
        functools.partial(_kernel, g=g, bk=bk, steps=ks // bk, how=how, interpret=interpret),
        grid=(n // bn, splits),
        in_specs=[pl.BlockSpec((1, ks), lambda j, h: (0, h)), pl.BlockSpec((bn, ks), lambda j, h: (j, h)),
                  pl.BlockSpec((bn, gs), lambda j, h: (j, h))],
        out_specs=pl.BlockSpec((1, bn), lambda j, h: (h, j)),
        out_shape=jax.ShapeDtypeStruct((splits, n), jnp.float32),
        interpret=interpret,
        **params,
    )(x, q, scale)
    return y.sum(0, keepdims=True).astype(x.dtype)


def folded_magic(x, q, s):
    """XLA's folded one-row form (quant.grouped_product for n >= k) with the magic conversion."""
    n, groups = s.shape
    u = jax.lax.bitcast_convert_type(q, jnp.uint8).astype(jnp.uint32) ^ MAGIC
    w = (jax.lax.bitcast_convert_type(u, jnp.float32) - MAGIC_F).reshape(n, groups, -1) * s.astype(jnp.float32)[:, :, None]
    return jnp.sum(x.astype(jnp.float32).reshape(1, 1, groups, -1) * w[None], axis=(2, 3)).astype(x.dtype)


# (bn, bk, splits, warps, stages)
TILINGS = ((32, 128, 1, 4, 3), (64, 128, 1, 4, 3), (16, 256, 1, 4, 3), (32, 256, 1, 4, 3), (64, 256, 1, 8, 3),
           (32, 512, 1, 4, 3), (16, 512, 1, 4, 4), (32, 128, 1, 4, 4), (8, 512, 1, 4, 3), (32, 256, 2, 4, 3),
           (16, 256, 4, 4, 3), (32, 128, 4, 4, 3), (8, 256, 4, 4, 3), (16, 512, 2, 8, 3))


def int8_weights(n, k, key):
    """LAYERS symmetric int8 kernels in groups of 128: the probe's weights without their offsets."""
    return [(q, s) for q, s, _ in weights(n, k, "int8", 128, key)]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--check", action="store_true", help="values in interpret mode (CPU), small shapes")
    p.add_argument("--hows", default="magic,cvt,f16")
    args = p.parse_args(argv)
    key = jax.random.PRNGKey(0)
    if args.check:
        x = jax.random.normal(key, (1, 1024), jnp.float32).astype(jnp.bfloat16)
        (q, s), = int8_weights(256, 1024, key)[:1]
        ref = x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T
        for how in ("magic", "cvt"):
            for bn, bk, splits, *_ in TILINGS[:4] + TILINGS[9:11]:
                y = qgemv_ew(x, q, s, bn=bn, bk=bk, splits=splits, how=how, interpret=True)
                err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref)))
                print(how, bn, bk, splits, f"{err:.4f}")
                assert err < 0.01
        y = folded_magic(x, q, s)
        print("folded magic", float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref))))
        return 0
    results = []

    def record(name, shape, fn, x, ws, nbytes, ref=None):
        results.append(measure(dict(case=name, shape=shape), fn, x, ws, nbytes, ref))

    for shape, (n, k) in SHAPES.items():
        x = jax.random.normal(key, (1, k), jnp.float32).astype(jnp.bfloat16)
        ws = [(0.02 * jax.random.normal(jax.random.fold_in(key, i), (n, k), jnp.float32)).astype(jnp.bfloat16)
              for i in range(LAYERS)]
        record("bf16", shape, jax.jit(lambda x, ws: [jnp.einsum("rk,nk->rn", x, w) for w in ws]), x, ws, 2 * n * k)
        del ws
        ws = int8_weights(n, k, key)
        nbytes = n * k + 2 * n * (k // 128)
        ref = [x.astype(jnp.float32) @ quant.dequantize(q, s, None, jnp.float32).T for q, s in ws]
        record("grouped", shape, jax.jit(lambda x, ws: [quant.grouped_product(x, q, s, None, 1) for q, s in ws]), x, ws, nbytes, ref)
        record("folded magic (XLA)", shape, jax.jit(lambda x, ws: [folded_magic(x, q, s) for q, s in ws]), x, ws, nbytes, ref)
        for how in args.hows.split(","):
            for bn, bk, splits, warps, stages in TILINGS:
                if n % bn or (k // splits) % bk:
                    continue
                kw = dict(bn=bn, bk=bk, splits=splits, warps=warps, stages=stages, how=how)
                record(f"ew {how} bn={bn} bk={bk} S={splits} w={warps} st={stages}", shape,
                       jax.jit(lambda x, ws, kw=kw: [qgemv_ew(x, q, s, **kw) for q, s in ws]), x, ws, nbytes, ref)
        del ws, ref
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
