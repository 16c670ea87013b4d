"""Products of a few rows with symmetric int8 kernels on Hopper GPUs (sm_90), in Mosaic GPU:
y [R, N] = x [R, K] . (q [N, K] int8 times scale [N, G], one scale per group of K/G inputs).

Each warpgroup's 64 x tile_k integer tile goes from shared memory into registers, becomes bfloat16
there (Mosaic GPU converts int8 to bfloat16 by bit operations, a few instructions per four values,
where a float16 convert is one slow instruction per value: 1.3x slower in the whole product), is
multiplied by its rows' scales (a step covers tile_k inputs inside one group, so one scale per
row) and is the tensor cores' left operand (wgmma takes A from registers); x's [R, tile_k] tile is
the right operand, read transposed from shared memory. Scales come in as [G, N], a transpose of
a loop-invariant parameter. No float kernel exists anywhere in memory. A separate memory
warpgroup streams the tiles in (`emit_pipeline_warp_specialized`), `stages` steps ahead. Work
items are (128 outputs, one of `splits` K ranges) spread over the multiprocessors; with splits > 1
their float32 partial sums are added here.

Only the GPU runs it (no interpret mode); `quant_kernels.matmul` picks it on Hopper for the
products it fits (docs/benchmarks.md, session 19).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

TILE_M = 64  # a warpgroup's wgmma rows (outputs)
WARPGROUPS = 2  # compute warpgroups per block: 128 outputs


def fits(rows: int, n: int, k: int, groups: int, tile_k: int, splits: int) -> bool:
    """Whether the kernel takes this product: whole 128-output blocks, tile_k inside one group,
    whole steps per split, and at most 64 rows."""
    g = k // groups if groups and k % groups == 0 else 0
    return bool(g and 0 < rows <= 64 and n % (TILE_M * WARPGROUPS) == 0 and g % tile_k == 0
                and k % (splits * tile_k) == 0 and tile_k % 64 == 0)


def _padded_rows(rows: int) -> int:
    return next(t for t in (16, 32, 64) if rows <= t)


@functools.partial(jax.jit, static_argnames=("tile_k", "splits", "stages", "cores"))
def qmatmul(x, q, scale, *, tile_k: int = 128, splits: int = 1, stages: int = 4, cores: int | None = None):
    """x [R, K] bfloat16 (R <= 64) . (q [N, K] int8 * scale [N, G]) in bfloat16: the kernel's
    values q * scale rounded to bfloat16 (as dequantizing to a bfloat16 model's dtype rounds them),
    float32 sums. `cores`: the multiprocessors the work items spread over (default: the device's)."""
    import jax.experimental.pallas.mosaic_gpu as plgpu

    rows, k = x.shape
    n, groups = scale.shape
    assert fits(rows, n, k, groups, tile_k, splits), (x.shape, q.shape, scale.shape, tile_k, splits)
    tile_n, cta_m = _padded_rows(rows), TILE_M * WARPGROUPS
    per_group = (k // groups) // tile_k  # steps per group
    steps, m_blocks = k // splits // tile_k, n // cta_m
    assert x.dtype == jnp.bfloat16, x.dtype
    xp = jnp.pad(x, ((0, tile_n - rows), (0, 0)))  # [tile_n, K]
    st = scale.T  # [G, N]

    def swizzled(minor_bits: int, bits: int):
        swizzle = plgpu.find_swizzle(minor_bits)
        return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))

    q_tf, x_tf, out_tf = swizzled(tile_k * 8, 8), swizzled(tile_k * 16, 16), swizzled(tile_n * 32, 32)

    def kernel(q_gmem, x_gmem, s_gmem, out_gmem, out_smem):
        def pipeline(body, context):
            return plgpu.emit_pipeline_warp_specialized(
                body, grid=(steps,), memory_registers=40, wg_axis="wg", num_compute_wgs=WARPGROUPS,
                max_concurrent_steps=stages, compute_context=context,
                in_specs=[plgpu.BlockSpec((cta_m, tile_k), lambda i: (0, i), transforms=q_tf, memory_space=plgpu.SMEM),
                          plgpu.BlockSpec((tile_n, tile_k), lambda i: (0, i), transforms=x_tf, memory_space=plgpu.SMEM),
                          plgpu.BlockSpec((1, cta_m), lambda i: (i // per_group, 0), memory_space=plgpu.SMEM)])

        nothing = lambda *_, **__: None  # noqa: E731  (allocations do not depend on the bodies)

        @functools.partial(pl.run_scoped, allocs=pipeline(nothing, nothing).get_allocations(q_gmem, x_gmem, s_gmem),
                           collective_axes="wg")
        def _scope(allocs):
            wg = lax.axis_index("wg")
            rows_of_wg = pl.ds(wg * TILE_M, TILE_M)

            @plgpu.nd_loop((m_blocks * splits,), collective_axes="sm")
            def _item(info):
                (item,) = info.index
                m, h = item // splits, item % splits
                outs, ins = pl.ds(m * cta_m, cta_m), pl.ds(h * (k // splits), k // splits)

                def step(_, q_smem, x_smem, s_smem, acc_ref):
                    s = s_smem[0, rows_of_wg].astype(jnp.bfloat16)
                    w = q_smem[rows_of_wg].astype(jnp.bfloat16) * lax.broadcast_in_dim(s, (TILE_M, tile_k), [0])
                    plgpu.wgmma(acc_ref, w, plgpu.transpose_ref(x_smem, (1, 0)))
                    plgpu.wgmma_wait(0)  # w's registers are reused next step
                    return acc_ref

                def context(run):
                    acc = pl.run_scoped(lambda acc_ref: run(acc_ref)[...], plgpu.ACC((TILE_M, tile_n), jnp.float32))
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last item's store has read out_smem
                    out_smem[wg] = acc
                    plgpu.commit_smem()
                    plgpu.copy_smem_to_gmem(out_smem.at[wg], out_gmem.at[pl.ds(h * n + m * cta_m + wg * TILE_M, TILE_M)])

                pipeline(step, context)(q_gmem.at[outs, ins], x_gmem.at[:, ins], s_gmem.at[pl.ds(h * (groups // splits), groups // splits), outs],
                                        allocations=allocs)

        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    cores = cores or jax.devices()[0].core_count
    call = plgpu.kernel(
        kernel, out_type=jax.ShapeDtypeStruct((splits * n, tile_n), jnp.float32),
        grid=(cores,), grid_names=("sm",), num_threads=WARPGROUPS + 1, thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        scratch_types=dict(out_smem=plgpu.SMEM((WARPGROUPS, TILE_M, tile_n), jnp.float32, transforms=out_tf)))
    y = call(q, xp, st).reshape(splits, n, tile_n)
    return y.sum(0)[:, :rows].T.astype(x.dtype)
