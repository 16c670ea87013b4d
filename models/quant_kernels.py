"""A Pallas (Triton) kernel for products with quantized kernels on GPUs: y [R, N] =
x [R, K] . dequantize(q [N, K] integers, scale [N, G], offset [N, G]), the weight tile
dequantized in registers, so no float kernel is ever written (XLA's dequantize-then-dot writes and
reads one every step: 0.36x bf16 for Llama-3-8B decode on an H200).

qmatmul   a tiled product (bm x bn tiles, K in blocks of bk, split over `splits` programs whose
          float32 partial sums are added), the dequantized tile fed to the tensor cores in x's
          dtype; rows padded to bm (Triton's dot needs 16 at least).
qmatmul16 the same for symmetric int8 with the tile converted to float16 by bits in inline PTX
          and float16 products (25% faster at 64 rows of Llama-3-8B's large products).

`matmul` picks one for a product of 2..64 rows on one GPU (quant.product; benchmarks/
quant_matvec_probe.py, benchmarks/quant_gemv_probe.py; docs/benchmarks.md).

It runs in interpret mode on a CPU (tests/test_quant.py checks it against the dequantized
product). `tiling` gives a product's tiling, or None when its shapes fit none: XLA's forms then.
`_call` and `_dequantized` also serve the probe's matvec candidate (benchmarks/quant_matvec_probe.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxllm.models import quant_hopper


def _dequantized(q_ref, s_ref, o_ref, i, bk: int, g: int, dtype):
    """The [bn, bk] float tile of K block i."""
    bn, per = q_ref.shape[0], bk // g
    k0, g0 = pl.multiple_of(i * bk, bk), pl.multiple_of(i * per, per)
    w = q_ref[:, pl.ds(k0, bk)].astype(jnp.float32).reshape(bn, per, g)
    w = w * s_ref[:, pl.ds(g0, per)].astype(jnp.float32)[:, :, None]
    if o_ref is not None:
        w = w + o_ref[:, pl.ds(g0, per)].astype(jnp.float32)[:, :, None]
    return w.reshape(bn, bk).astype(dtype)


def _matmul_kernel(x_ref, q_ref, s_ref, o_ref, y_ref, *, g: int, bk: int, steps: int):
    bm, bn = x_ref.shape[0], q_ref.shape[0]

    def body(i, acc):
        w = _dequantized(q_ref, s_ref, o_ref, i, bk, g, x_ref.dtype)
        xs = x_ref[:, pl.ds(pl.multiple_of(i * bk, bk), bk)]  # [bm, bk]
        return acc + jax.lax.dot_general(xs, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

    y_ref[...] = jax.lax.fori_loop(0, steps, body, jnp.zeros((bm, bn), jnp.float32)).astype(y_ref.dtype)


def _call(kernel, x, q, scale, offset, bm, bn, bk, interpret, num_warps, num_stages, splits: int = 1, out_dtype=None):
    """pallas_call over (row blocks, column blocks, K splits); with splits > 1 each split writes
    float32 partial sums, added here. The result in `out_dtype` (default x's)."""
    rows, k = x.shape
    n, groups = scale.shape
    g = k // groups
    ks, gs = k // splits, groups // splits  # one split's inputs and groups
    bk = min(bk, ks)
    assert k % splits == 0 and groups % splits == 0 and ks % bk == 0 and bk % g == 0 and n % bn == 0 and rows % bm == 0, (
        x.shape, q.shape, scale.shape, bm, bn, bk, splits)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages))
    specs = [pl.BlockSpec((bm, ks), lambda i, j, h: (i, h)), pl.BlockSpec((bn, ks), lambda i, j, h: (j, h)),
             pl.BlockSpec((bn, gs), lambda i, j, h: (j, h))]
    args = [x, q, scale]
    body = functools.partial(kernel, g=g, bk=bk, steps=ks // bk)
    if offset is not None:
        specs.append(pl.BlockSpec((bn, gs), lambda i, j, h: (j, h)))
        args.append(offset)
        fn = body
    else:
        fn = lambda x_ref, q_ref, s_ref, y_ref: body(x_ref, q_ref, s_ref, None, y_ref)  # noqa: E731
    out_dtype = out_dtype or x.dtype
    y = pl.pallas_call(
        fn,
        grid=(rows // bm, n // bn, splits),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, h: (h, i, j)),
        out_shape=jax.ShapeDtypeStruct((splits, rows, n), out_dtype if splits == 1 else jnp.float32),
        interpret=interpret,
        **params,
    )(*args)
    return y[0] if splits == 1 else y.sum(0).astype(out_dtype)


def _pad_rows(x, bm: int):
    """x with zero rows added up to a multiple of bm (Triton's dot needs 16 rows at least)."""
    padded = -(-x.shape[0] // bm) * bm
    return x if padded == x.shape[0] else jnp.zeros((padded, x.shape[1]), x.dtype).at[: x.shape[0]].set(x)


@functools.partial(jax.jit, static_argnames=("bm", "bn", "bk", "interpret", "num_warps", "num_stages", "splits"))
def qmatmul(x, q, scale, offset=None, *, bm: int = 16, bn: int = 64, bk: int = 256, interpret: bool = False,
            num_warps: int = 4, num_stages: int = 3, splits: int = 1):
    xp = _pad_rows(x, bm)
    return _call(_matmul_kernel, xp, q, scale, offset, bm, bn, bk, interpret, num_warps, num_stages, splits)[: x.shape[0]]


# int8 -> float16, four values per instance: bias each byte to unsigned (q + 128), place it as the
# low byte of float16 1024 + u (0x64uu: exact, 10-bit mantissa), subtract 1152 from both halves.
# Five instructions per four values, where a convert per value is a quarter-rate instruction.
_I8_TO_F16 = """{
.reg .b32 t, m;
xor.b32 t, $2, 0x80808080;
prmt.b32 $0, t, 0x64646464, 0x5150;
prmt.b32 $1, t, 0x64646464, 0x5352;
mov.b32 m, 0x64806480;
sub.f16x2 $0, $0, m;
sub.f16x2 $1, $1, m;
}"""
# x enters the float16 products times X_SHIFT and the scales times its inverse (exact powers of
# two): float16's range then holds |x| up to 4e6, and products come out unscaled.
X_SHIFT = 2.0 ** -6


def _int8_to_f16(q, interpret: bool):
    if interpret:  # the same values; inline PTX exists only on the GPU
        return q.astype(jnp.float16)
    from jax.experimental.pallas import triton as plgpu

    return plgpu.elementwise_inline_asm(_I8_TO_F16, args=[q], constraints="=r,=r,r", pack=4,
                                        result_shape_dtypes=[jax.ShapeDtypeStruct(q.shape, jnp.float16)])[0]


def _f16_kernel(x_ref, q_ref, s_ref, o_ref, y_ref, *, g: int, bk: int, steps: int, per_group: bool, interpret: bool):
    """Symmetric int8 (o_ref None), x [bm, K] in float16 times X_SHIFT. `per_group`: one dot per
    group of g inputs, its float32 scale on the [bm, bn] partial sums; else the tile times its
    scales in float16, one dot per bk inputs."""
    bm, bn, per = x_ref.shape[0], q_ref.shape[0], bk // g

    def body(i, acc):
        if per_group:
            for j in range(per):
                gi = i * per + j
                k0 = pl.multiple_of(gi * g, g)
                w = _int8_to_f16(q_ref[:, pl.ds(k0, g)], interpret)
                p = jax.lax.dot_general(x_ref[:, pl.ds(k0, g)], w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
                acc = acc + p * jnp.transpose(s_ref[:, pl.ds(gi, 1)].astype(jnp.float32) / X_SHIFT)
            return acc
        k0, g0 = pl.multiple_of(i * bk, bk), pl.multiple_of(i * per, per)
        w = _int8_to_f16(q_ref[:, pl.ds(k0, bk)], interpret).reshape(bn, per, g)
        scales = (s_ref[:, pl.ds(g0, per)].astype(jnp.float32) / X_SHIFT).astype(jnp.float16)
        w = (w * scales[:, :, None]).reshape(bn, bk)
        return acc + jax.lax.dot_general(x_ref[:, pl.ds(k0, bk)], w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

    y_ref[...] = jax.lax.fori_loop(0, steps, body, jnp.zeros((bm, bn), jnp.float32)).astype(y_ref.dtype)


@functools.partial(jax.jit, static_argnames=("bm", "bn", "bk", "interpret", "num_warps", "num_stages", "splits", "per_group"))
def qmatmul16(x, q, scale, *, bm: int = 16, bn: int = 64, bk: int = 256, interpret: bool = False, num_warps: int = 4,
              num_stages: int = 3, splits: int = 1, per_group: bool = False):
    """qmatmul for symmetric int8 kernels: the tile converted by bits (_I8_TO_F16) and multiplied in
    float16 (x rounded to float16 after X_SHIFT; the products' 11-bit mantissas hold more than
    bfloat16's 8), float32 sums, the result in x's dtype."""
    x16 = _pad_rows((x.astype(jnp.float32) * X_SHIFT).astype(jnp.float16), bm)
    kernel = functools.partial(_f16_kernel, per_group=per_group, interpret=interpret)
    y = _call(kernel, x16, q, scale, None, bm, bn, bk, interpret, num_warps, num_stages, splits, jnp.float32)
    return y[: x.shape[0]].astype(x.dtype)


# (bm, bn, bk, warps, stages, splits) by rows: the best average over Llama-3-8B's q/o, gate/up and
# down products on an H200 (benchmarks/quant_matvec_probe.py --pallas, 2026-11-28)
TILINGS = ((16, (16, 32, 256, 4, 3, 4)), (64, (64, 64, 128, 4, 3, 4)))
MAX_ROWS = TILINGS[-1][0]
# qmatmul16's, (rows, least outputs, (bm, bn, bk, warps, stages, splits, per_group)): Llama-3-8B's
# products on an H200, microseconds against qmatmul's (benchmarks/quant_gemv_probe.py --mm 16,64,
# 2026-11-28): 16 rows gate/up 26.2 (29.2), down 22.8 (30.4), q/o 20.2 (19.3); 64 rows gate/up
# 42.8 (59.8), down 44.6 (50.5), q/o 16.9 (18.4). Fewer outputs (k/v) were not measured: qmatmul.
TILINGS16 = ((16, 4096, (16, 32, 256, 4, 3, 4, True)), (64, 8192, (64, 128, 256, 8, 3, 1, False)),
             (64, 4096, (64, 64, 256, 4, 3, 2, False)))


# Whether symmetric int8 products of 2..64 rows take quant_hopper's Mosaic GPU kernel on Hopper GPUs
# (benchmarks/quant_hopper_probe.py switches it off to time the Triton kernels against it).
HOPPER = True


def _on_hopper() -> bool:
    return getattr(jax.devices()[0], "compute_capability", None) == "9.0"


def hopper_tiling(rows: int, n: int, k: int, groups: int):
    """quant_hopper.qmatmul's tiling for this product, or None where the Triton kernels measured
    faster (16 rows or fewer, under 4,096 outputs) or it does not fit: K split until the work items
    (128 outputs x one split) about fill an H200's 132 multiprocessors, keeping at least two steps
    per split (benchmarks/quant_hopper_probe.py, docs/benchmarks.md session 19)."""
    if rows <= 16 or n < 4096:
        return None
    tile_k, splits = 128, 1
    while n // 128 * splits < 96 and k % (2 * splits * tile_k) == 0 and k // (2 * splits * tile_k) >= 2:
        splits *= 2
    return dict(tile_k=tile_k, splits=splits, stages=4) if quant_hopper.fits(rows, n, k, groups, tile_k, splits) else None


def matmul(x, q, scale, offset):
    """x [R, K] . dequantize(q [N, K], scale [N, G], offset [N, G] or None) by the kernel and tiling
    for its shapes, or None when none fits (XLA's forms then): on Hopper GPUs quant_hopper's kernel
    for symmetric int8 where it fits; qmatmul16 for symmetric int8 with enough outputs and 16-bit
    rows (which float16 holds exactly), else qmatmul."""
    rows, (n, k), groups = x.shape[0], q.shape, scale.shape[-1]
    if offset is None and q.dtype == jnp.int8 and x.dtype in (jnp.bfloat16, jnp.float16):
        kw = hopper_tiling(rows, n, k, groups) if HOPPER and x.dtype == jnp.bfloat16 and _on_hopper() else None
        if kw is not None:
            return quant_hopper.qmatmul(x, q, scale, **kw)
        for most, least, (bm, bn, bk, warps, stages, splits, per_group) in TILINGS16:
            if rows <= most and n >= least:
                if _fits(n, k, groups, bn, bk, splits) and (k // groups) % 16 == 0:  # a group is a dot's K
                    return qmatmul16(x, q, scale, bm=bm, bn=bn, bk=bk, num_warps=warps, num_stages=stages, splits=splits,
                                     per_group=per_group)
                break
    kw = tiling(rows, n, k, groups)
    return None if kw is None else qmatmul(x, q, scale, offset, **kw)


def tiling(rows: int, n: int, k: int, groups: int):
    """qmatmul's tiling for this product, or None when its shapes do not fit one (XLA's forms then)."""
    if rows > MAX_ROWS:
        return None
    bm, bn, bk, warps, stages, splits = next(t for r, t in TILINGS if rows <= r)
    fits = _fits(n, k, groups, bn, bk, splits)
    return dict(bm=bm, bn=bn, bk=bk, num_warps=warps, num_stages=stages, splits=splits) if fits else None


def _fits(n: int, k: int, groups: int, bn: int, bk: int, splits: int) -> bool:
    """Whether a product [n outputs, k inputs in `groups` groups] tiles by (bn, bk, splits): whole
    groups, a power of two of them per K block, whole blocks per split, whole column blocks."""
    g = k // groups
    per = bk // g if g and k % groups == 0 and bk % g == 0 else 0
    return bool(per and per & (per - 1) == 0 and groups % splits == 0 and (k // splits) % bk == 0 and n % bn == 0)
