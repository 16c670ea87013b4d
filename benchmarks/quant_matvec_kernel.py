"""A candidate decode product for quantized kernels, as a Pallas (Triton) kernel: y [R, N] =
x [R, K] . dequantize(q [N, K] integers, scale [N, G], offset [N, G]), R small (decode rows).

Each program owns `bn` output channels and streams their integers along K in blocks of `bk`
(a multiple of the group size g), dequantizing in registers: no float kernel is ever written. A
bandwidth-bound form for few rows; probed against XLA's forms by benchmarks/quant_matvec_probe.py
before any model code uses it.

    python benchmarks/quant_matvec_kernel.py     # correctness in interpret mode (CPU) or on a GPU
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _kernel(x_ref, q_ref, s_ref, o_ref, y_ref, *, g: int, bk: int, steps: int):
    bn, rows = q_ref.shape[0], x_ref.shape[0]
    per = bk // g  # groups per K block

    def body(i, acc):
        k0 = pl.multiple_of(i * bk, bk)
        g0 = pl.multiple_of(i * per, per)
        w = q_ref[:, pl.ds(k0, bk)].astype(jnp.float32).reshape(bn, per, g)
        w = w * s_ref[:, pl.ds(g0, per)].astype(jnp.float32)[:, :, None]
        if o_ref is not None:
            w = w + o_ref[:, pl.ds(g0, per)].astype(jnp.float32)[:, :, None]
        w = w.reshape(bn, bk)
        xs = x_ref[:, pl.ds(k0, bk)].astype(jnp.float32)  # [R, bk]
        return acc + jnp.sum(xs[:, None, :] * w[None, :, :], axis=2)

    acc = jax.lax.fori_loop(0, steps, body, jnp.zeros((rows, bn), jnp.float32))
    y_ref[...] = acc.astype(y_ref.dtype)


@functools.partial(jax.jit, static_argnames=("bn", "bk", "interpret", "num_warps", "num_stages"))
def qmatvec(x, q, scale, offset=None, *, bn: int = 32, bk: int = 512, interpret: bool = False,
            num_warps: int = 4, num_stages: int = 3):
    rows, k = x.shape
    n, groups = scale.shape
    g = k // groups
    bk = min(bk, k)
    assert k % bk == 0 and bk % g == 0 and n % bn == 0, (x.shape, q.shape, scale.shape, bn, bk)
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages))
    specs = [pl.BlockSpec((rows, k), lambda j: (0, 0)), pl.BlockSpec((bn, k), lambda j: (j, 0)),
             pl.BlockSpec((bn, groups), lambda j: (j, 0))]
    args = [x, q, scale]
    kernel = functools.partial(_kernel, g=g, bk=bk, steps=k // bk)
    if offset is not None:
        specs.append(pl.BlockSpec((bn, groups), lambda j: (j, 0)))
        args.append(offset)
    else:
        kernel = functools.partial(lambda *refs, **kw: _kernel(*refs[:3], None, refs[3], **kw), g=g, bk=bk, steps=k // bk)
    return pl.pallas_call(
        kernel,
        grid=(n // bn,),
        in_specs=specs,
        out_specs=pl.BlockSpec((rows, bn), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((rows, n), x.dtype),
        interpret=interpret,
        **params,
    )(*args)


if __name__ == "__main__":
    import numpy as np

    from jaxllm.models import quant

    interpret = jax.default_backend() == "cpu"
    for rows, k, n, g, dt in ((1, 1024, 256, 128, jnp.int8), (2, 3072, 128, 32, jnp.int4), (4, 512, 64, 128, jnp.int8)):
        w = np.asarray(0.05 * jax.random.normal(jax.random.PRNGKey(1), (n, k), jnp.float32))
        q, s, o = quant.quantize_array(w, dt, (n, k // g), np.float32, None, True)
        x = jax.random.normal(jax.random.PRNGKey(0), (rows, k), jnp.float32)
        ref = x @ quant.dequantize_array(q, s, o).T
        got = qmatvec(x, jnp.asarray(q), jnp.asarray(s), jnp.asarray(o), bn=32, bk=256, interpret=interpret)
        err = float(jnp.abs(got - ref).max() / jnp.abs(ref).max())
        print(f"R={rows} K={k} N={n} g={g} {np.dtype(dt).name}: max rel err {err:.2e}")
        assert err < 1e-5
