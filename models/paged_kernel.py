"""A Pallas (Triton) decode-attention kernel that reads our page pool as it is stored: k, v [N, ps, K, D] in any
dtype, 8-bit ones (int8 with per-token-per-head scales [N, ps, K], or float8) converted tile by tile in the
kernel, so an 8-bit cache is read at its own size instead of gathered, transposed and widened by XLA.

One program per (row, kv head, split of the row's table): its query heads (padded to 16, the tensor cores'
smallest tile) against blocks of `pages` pages at a time, with an online softmax over the positions the row
sees (lo <= position < hi, so sliding windows and chunked attention are masks), stopping at the row's own
length: a table wider than the row costs nothing past it; the next block's pages are loaded while this one is
computed (`prefetch`). The splits' partial results are merged after the call by their log-sum-exps. Runs in interpret mode on a CPU (tests/test_attention_ops.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxllm.models import kv_quant

_FLOOR = -1e30  # the running maximum before any key: finite, so empty splits merge to weight 0


def _kernel(info_ref, table_ref, q_ref, k_ref, v_ref, *rest, ps: int, pages: int, scale: float,
            softcap: float | None, scaled: bool, prefetch: int, rotated: bool):
    """info_ref [4] int32: (hi, lo, first, 0) of this row: it sees positions lo <= p < hi, and its table's
    column c holds positions first + c * ps ..; table_ref [per_split] this split's columns; q_ref [G, D];
    k_ref, v_ref [N, ps, D] this kv head's pool; (ks_ref, vs_ref [N, ps] its scales;) (signs_ref [D, D], norms_ref
    [1, D]: kv_quant.rotate's factors, with which q is turned first and o last;) outputs o [G, D] (unnormalized
    float32), l, m [G] (sum of weights and running maximum)."""
    rest = list(rest)
    ks_ref, vs_ref = (rest.pop(0), rest.pop(0)) if scaled else (None, None)
    signs_ref, norms_ref = (rest.pop(0), rest.pop(0)) if rotated else (None, None)
    o_ref, l_ref, m_ref = rest
    per_split = table_ref.shape[0]
    g, d = q_ref.shape
    block = pages * ps
    hi, lo, first = info_ref[0], info_ref[1], info_ref[2]
    col0 = pl.program_id(2) * per_split  # this split's first column
    # blocks j of this split whose columns hold a visible position
    start = jnp.maximum(lo - first, 0) // ps - col0
    stop = pl.cdiv(hi - first, ps) - col0
    j0 = jnp.maximum(start, 0) // pages
    j1 = jnp.minimum(pl.cdiv(jnp.maximum(stop, 0), pages), per_split // pages)
    q = q_ref[...]

    def turn(x):  # kv_quant.rotate in the kernel: x [G, D] times the +-1 entries (x's dtype), each column's norm after
        y = plgpu.dot(x.astype(q_ref.dtype), signs_ref[...]).astype(jnp.float32)
        return y * norms_ref[...]

    if rotated:
        q = turn(q).astype(q_ref.dtype)
    column = lax.broadcasted_iota(jnp.int32, (1, block), 1)

    last = per_split // pages - 1

    def ids_of(j):  # block j's page ids (a block past the split's last reads the last again: in bounds, unused)
        return table_ref[pl.ds(jnp.minimum(j, last) * pages, pages)]

    def tiles(ids):  # the block's keys and values as stored (and their scales)
        got = [k_ref[ids].reshape(block, d), v_ref[ids].reshape(block, d)]
        if scaled:
            got += [ks_ref[ids].reshape(1, block), vs_ref[ids].reshape(1, block)]
        return tuple(got)

    def step(j, tile, o, den, m):
        k, v = tile[:2]
        s = plgpu.dot(q, k.astype(q.dtype), trans_b=True).astype(jnp.float32) * scale  # [G, block]
        if scaled:
            s = s * tile[2].astype(jnp.float32)
        if softcap is not None:
            s = jnp.tanh(s / softcap) * softcap
        pos = first + (col0 + j * pages) * ps + column
        seen = (pos < hi) & (pos >= lo)
        s = jnp.where(seen, s, _FLOOR)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        corr = jnp.exp(m - m_new)
        p = jnp.where(seen, jnp.exp(s - m_new[:, None]), 0.0)
        den = den * corr + jnp.sum(p, axis=1)
        if scaled:
            p = p * tile[3].astype(jnp.float32)
        o = o * corr[:, None] + plgpu.dot(p.astype(q.dtype), v.astype(q.dtype)).astype(jnp.float32)
        return o, den, m_new

    init = (jnp.zeros((g, d), jnp.float32), jnp.zeros((g,), jnp.float32), jnp.full((g,), _FLOOR, jnp.float32))
    if prefetch:  # blocks j + 1 .. j + prefetch are loaded (and the next one's ids) before block j is computed
        def body(j, carry):
            o, den, m, ids, *ahead = carry
            ahead.append(tiles(ids))
            return (*step(j, ahead[0], o, den, m), ids_of(j + prefetch + 1), *ahead[1:])

        ahead = [tiles(ids_of(j0 + i)) for i in range(prefetch)]
        o, den, m, *_ = lax.fori_loop(j0, jnp.maximum(j1, j0), body, (*init, ids_of(j0 + prefetch), *ahead))
    else:
        def body(j, carry):
            return step(j, tiles(ids_of(j)), *carry)

        o, den, m = lax.fori_loop(j0, jnp.maximum(j1, j0), body, init)
    # the output turned back per split (the splits' merge after the call is linear in it)
    o_ref[...] = turn(o) if rotated else o
    l_ref[...] = den
    m_ref[...] = m


# The kernel addresses a pool in 32-bit element offsets (page * ps * K * D + ...): a pool of more elements wrapped
# and read out of bounds (CUDA_ERROR_ILLEGAL_ADDRESS on an H200 with an int8 pool of 140,000 pages of 16 x 8 x 128,
# 1.07 x 2**31 elements, 2026-12-03; benchmarks/kv8_decode_probe.py big).
MAX_POOL_ELEMENTS = 2**31


# Loading the next block while this one computes (`prefetch`) is what Triton's own pipelining (num_stages) did not
# do here: the loads go through the table, and 2-4 stages ran no faster than 1. Measured on an H200, one layer, us a
# call (benchmarks/kv8_decode_probe.py layer=mixed / layer=dims, 2026-12-03): Qwen3-0.6B's 256 offline-like rows int8
# 329 -> 265 (bf16 405 -> 333), D=256 int8 64 rows 100 either way; but a block of 32 KB (bf16, D=256, 4 pages of 16)
# 118 -> 178 (registers spill), and a split of one block only reads a block it does not use.
PREFETCH_BYTES = 16384


# Turning q and the output inside the kernel (`rotated`) saves a decode step two products a layer but loads the
# rotation's [D, D] entries twice in every program. Measured on an H200 (Qwen3-0.6B shape, int8 cache, 2026-12-03):
# batch 1 +10% and batch 64 (512 programs) +9% tokens/s, but the offline workload's 256 rows (2,048 programs, one split
# each) 0.94-0.97x. So only calls of at most this many (row, kv head) pairs turn inside; larger ones by products.
TURN_INSIDE_ROWS = 512


def turns_inside(rows: int, kv_heads: int) -> bool:
    """Whether a call of `rows` queries over `kv_heads` kv heads turns an int8 cache's q and output in the kernel."""
    return rows * kv_heads <= TURN_INSIDE_ROWS


def kernel_takes(dtype, head_dim: int, pool) -> bool:
    """Whether the kernel runs on a GPU for queries of `dtype` over `pool` (an array or its ShapeDtypeStruct, [N, ps,
    K, D]): 16-bit queries (its products are 16-bit tensor-core ones), a head size that is a power of two from 16 to
    256 (Triton's tiles), a pool of int8, float8 or the queries' own dtype, of fewer than MAX_POOL_ELEMENTS."""
    pool_dtype = jnp.dtype(pool.dtype)
    return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0
            and (pool_dtype.itemsize == 1 or pool_dtype == jnp.dtype(dtype)) and math.prod(pool.shape) < MAX_POOL_ELEMENTS)


def _splits(rows: int, columns: int, pages: int, programs: int) -> int:
    """How many parts a row's table is cut into: enough that rows * splits reaches `programs` (a few per multiprocessor),
    no more than the table's blocks."""
    return max(1, min(-(-programs // max(rows, 1)), -(-columns // pages)))


@functools.partial(jax.jit, static_argnames=("scale", "softcap", "pages", "programs", "num_warps", "num_stages",
                                             "prefetch", "rotated", "interpret"))
def pool_decode(q, k_pages, v_pages, page_table, hi, lo=None, first=None, k_scales=None, v_scales=None, *,
                scale: float, softcap: float | None = None, pages: int = 4, programs: int = 512, num_warps: int = 4,
                num_stages: int = 1, prefetch: int | None = None, rotated: bool = False, interpret: bool = False):
    """One query per row over the pool: q [B, 1, H, D]; k_pages, v_pages [N, ps, K, D] (k_scales, v_scales [N, ps, K]
    with an int8 pool); page_table [B, P] int32, whose column c holds the row's positions first + c * ps ..;
    the row sees positions lo <= p < hi (hi [B]: its length; lo [B], default 0: its window's first; first [B],
    default 0: paged_decode.window_table's). -> (output float32 [B, K, G, D] normalized over the keys seen, their
    log-sum-exp float32 [B, K, G]), as paged_decode._decode_part returns. `pages`: pages per block (a power of
    two); `programs`: the (row, kv head, split) programs aimed at; `prefetch`: blocks loaded ahead of the one
    computed (by hand, in the loop's carry: the loads are in flight while it computes); None: one where a split has
    more than one block and a block's keys take at most PREFETCH_BYTES. `rotated`: the pool holds keys and values
    turned by kv_quant.rotate (an int8 cache's) and q and the output are not: the kernel turns q as it loads it and its
    output back as it stores it, so a decode step launches no product of its own for either (two a layer)."""
    b, _, h, d = q.shape
    n, ps, kv, _ = k_pages.shape
    if math.prod(k_pages.shape) >= MAX_POOL_ELEMENTS:
        raise ValueError(f"a pool of {n} pages of {ps} x {kv} x {d} is {math.prod(k_pages.shape):,} elements, more than "
                         f"the kernel's 32-bit offsets address (2**31): decode it with paged_decode_attention's impl "
                         f"'xla', or use fewer pages")
    groups = h // kv
    gp = max(16, 1 << (groups - 1).bit_length())
    pages = max(1, min(pages, 1 << (page_table.shape[1] - 1).bit_length()))
    splits = _splits(b * kv, page_table.shape[1], pages, programs)
    per_split = -(-page_table.shape[1] // (splits * pages)) * pages
    table = jnp.pad(page_table.astype(jnp.int32), ((0, 0), (0, splits * per_split - page_table.shape[1])))
    if prefetch is None:
        prefetch = int(per_split > pages and pages * ps * d * k_pages.dtype.itemsize <= PREFETCH_BYTES)
    zeros = jnp.zeros((b,), jnp.int32)
    info = jnp.stack([jnp.asarray(hi, jnp.int32), zeros if lo is None else jnp.asarray(lo, jnp.int32),
                      zeros if first is None else jnp.asarray(first, jnp.int32), zeros], axis=1)
    qg = q.reshape(b, kv, groups, d)
    if gp > groups:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gp - groups), (0, 0)))
    scaled = k_scales is not None
    in_specs = [pl.BlockSpec((None, 4), lambda r, k, s: (r, 0)),
                pl.BlockSpec((None, per_split), lambda r, k, s: (r, s)),
                pl.BlockSpec((None, None, gp, d), lambda r, k, s: (r, k, 0, 0)),
                pl.BlockSpec((n, ps, None, d), lambda r, k, s: (0, 0, k, 0)),
                pl.BlockSpec((n, ps, None, d), lambda r, k, s: (0, 0, k, 0))]
    args = [info, table, qg, k_pages, v_pages]
    if scaled:
        in_specs += [pl.BlockSpec((n, ps, None), lambda r, k, s: (0, 0, k))] * 2
        args += [k_scales, v_scales]
    if rotated:
        entries, norms = kv_quant.signs(d)
        in_specs += [pl.BlockSpec((d, d), lambda r, k, s: (0, 0)), pl.BlockSpec((1, d), lambda r, k, s: (0, 0))]
        args += [jnp.asarray(entries, q.dtype), jnp.asarray(norms, jnp.float32)[None]]
    params = {} if interpret else dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages))
    o, den, m = pl.pallas_call(
        functools.partial(_kernel, ps=ps, pages=pages, scale=scale, softcap=softcap, scaled=scaled, prefetch=prefetch,
                          rotated=rotated),
        grid=(b, kv, splits),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, None, gp, d), lambda r, k, s: (s, r, k, 0, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda r, k, s: (s, r, k, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda r, k, s: (s, r, k, 0))],
        out_shape=[jax.ShapeDtypeStruct((splits, b, kv, gp, d), jnp.float32),
                   jax.ShapeDtypeStruct((splits, b, kv, gp), jnp.float32),
                   jax.ShapeDtypeStruct((splits, b, kv, gp), jnp.float32)],
        interpret=interpret, name=f"pool_decode_{pages}x{ps}", **params,
    )(*args)
    o, den, m = o[..., :groups, :], den[..., :groups], m[..., :groups]
    top = jnp.max(m, axis=0)
    w = jnp.exp(m - top[None])  # an empty split (m = _FLOOR) weighs 0
    total = jnp.sum(den * w, axis=0)
    out = jnp.sum(o * w[..., None], axis=0) / jnp.where(total > 0, total, 1.0)[..., None]
    lse = jnp.where(total > 0, top + jnp.log(jnp.maximum(total, 1e-30)), -jnp.inf)
    return out, lse
