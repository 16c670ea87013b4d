"""A Pallas (Triton) kernel for products with quantized kernels on GPUs: y [R, N] =
x [R, K] . dequantize(q [N, K] integers, scale [N, G], offset [N, G]), the weight tile
dequantized in registers, so no float kernel is ever written (XLA's dequantize-then-dot writes and
reads one every step: 0.36x bf16 for Llama-3-8B decode on an H200).

qmatmul   a tiled product (bm x bn tiles, K in blocks of bk, split over `splits` programs whose
          float32 partial sums are added), the dequantized tile fed to the tensor cores in x's
          dtype; rows padded to bm (Triton's dot needs 16 at least). What quant.product uses for
          2..64 rows on one GPU (benchmarks/quant_matvec_probe.py; docs/benchmarks.md).

It runs in interpret mode on a CPU (tests/test_quant.py checks it against the dequantized
product). `tiling` gives a product's tiling, or None when its shapes fit none: XLA's forms then.
`_call` and `_dequantized` also serve the probe's matvec candidate (benchmarks/quant_matvec_probe.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


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


def _call(kernel, x, q, scale, offset, bm, bn, bk, interpret, num_warps, num_stages, splits: int = 1):
    """pallas_call over (row blocks, column blocks, K splits); with splits > 1 each split writes
    float32 partial sums, added here."""
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
    out_dtype = x.dtype if splits == 1 else jnp.float32
    y = pl.pallas_call(
        fn,
        grid=(rows // bm, n // bn, splits),
        in_specs=specs,
        out_specs=pl.BlockSpec((None, bm, bn), lambda i, j, h: (h, i, j)),
        out_shape=jax.ShapeDtypeStruct((splits, rows, n), out_dtype),
        interpret=interpret,
        **params,
    )(*args)
    return y[0] if splits == 1 else y.sum(0).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("bm", "bn", "bk", "interpret", "num_warps", "num_stages", "splits"))
def qmatmul(x, q, scale, offset=None, *, bm: int = 16, bn: int = 64, bk: int = 256, interpret: bool = False,
            num_warps: int = 4, num_stages: int = 3, splits: int = 1):
    rows = x.shape[0]
    padded = -(-rows // bm) * bm  # Triton's dot needs 16 rows at least
    xp = x if padded == rows else jnp.zeros((padded, x.shape[1]), x.dtype).at[:rows].set(x)
    return _call(_matmul_kernel, xp, q, scale, offset, bm, bn, bk, interpret, num_warps, num_stages, splits)[:rows]


# (bm, bn, bk, warps, stages, splits) by rows: the best average over Llama-3-8B's q/o, gate/up and
# down products on an H200 (benchmarks/quant_matvec_probe.py --pallas, 2026-11-28)
TILINGS = ((16, (16, 32, 256, 4, 3, 4)), (64, (64, 64, 128, 4, 3, 4)))
MAX_ROWS = TILINGS[-1][0]


def tiling(rows: int, n: int, k: int, groups: int):
    """qmatmul's tiling for this product, or None when its shapes do not fit one (XLA's forms then)."""
    if rows > MAX_ROWS:
        return None
    bm, bn, bk, warps, stages, splits = next(t for r, t in TILINGS if rows <= r)
    g = k // groups
    per = bk // g if g and bk % g == 0 else 0
    fits = (k % groups == 0 and per and per & (per - 1) == 0 and groups % splits == 0
            and (k // splits) % bk == 0 and n % bn == 0)
    return dict(bm=bm, bn=bn, bk=bk, num_warps=warps, num_stages=stages, splits=splits) if fits else None
