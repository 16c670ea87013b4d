"""A candidate bandwidth-bound matrix-vector product for decode, y [M, N] = x [M, K] @ w [K, N] with
M <= 16, as a Pallas (Triton) kernel: a grid over blocks of N and K, each program streaming a
[bk, bn] tile of w; partial sums over K blocks are added outside. Probed against XLA's dot by
benchmarks/matvec_probe.py before any model code uses it.

    python benchmarks/matvec_kernel.py     # correctness in interpret mode (CPU) or on a GPU
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ROWS = 16  # Triton's dot needs at least 16 rows; x is padded to this


def _kernel(x_ref, w_ref, o_ref):
    o_ref[0] = jnp.dot(x_ref[...], w_ref[...], preferred_element_type=jnp.float32)


@functools.partial(jax.jit, static_argnames=("bn", "bk", "interpret", "num_warps", "num_stages"))
def matvec(x, w, bn: int = 32, bk: int = 1024, interpret: bool = False, num_warps: int = 4, num_stages: int = 3):
    m, k = x.shape
    n = w.shape[1]
    bk = min(bk, k)
    assert m <= ROWS and k % bk == 0 and n % bn == 0, (x.shape, w.shape, bn, bk)
    xp = jnp.zeros((ROWS, k), x.dtype).at[:m].set(x)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages))
    parts = pl.pallas_call(
        _kernel,
        grid=(n // bn, k // bk),
        in_specs=[pl.BlockSpec((ROWS, bk), lambda j, i: (0, i)), pl.BlockSpec((bk, bn), lambda j, i: (i, j))],
        out_specs=pl.BlockSpec((1, ROWS, bn), lambda j, i: (i, 0, j)),
        out_shape=jax.ShapeDtypeStruct((k // bk, ROWS, n), jnp.float32),
        interpret=interpret,
        **params,
    )(xp, w)
    return parts.sum(0)[:m].astype(x.dtype)


if __name__ == "__main__":
    interpret = jax.default_backend() == "cpu"
    for m, k, n in ((1, 1024, 3072), (2, 3072, 1024), (8, 2048, 1024)):
        x = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32).astype(jnp.bfloat16)
        w = (0.05 * jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)).astype(jnp.bfloat16)
        ref = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32))
        got = matvec(x, w, interpret=interpret).astype(jnp.float32)
        err = float(jnp.abs(got - ref).max() / jnp.abs(ref).max())
        print(f"M={m} K={k} N={n}: max rel err {err:.2e}")
        assert err < 1e-2
