"""One row (batch-1 decode) of an int4 product: which XLA form reads the packed weights fastest?
Microseconds per product on the Llama-3-8B layer shapes (kernels [out, in], as models/layers.py
stores them), int4 asymmetric groups of 32 (the default scheme), against bf16 and symmetric int8
groups of 128 (quant.grouped_product, the adopted forms):

  grouped    quant.grouped_product on the int4 kernel (today's form)
  nib        the int4 kernel viewed as bytes (a bitcast: XLA packs element 2j in byte j's low
             nibble), each byte's two values taken by shifts and masks and converted to float32,
             contracted with x's even and odd inputs: one load per byte instead of one per value
  nibmagic   the same, the conversion by bits: (u ^ 8) | 0x4B000000 read as float32 is 2^23 + 8 + v,
             minus the constant (taking it off per group through x's sums cancels catastrophically)

Each timed call runs LAYERS products on distinct weights (nothing stays in L2). Checks each form
against the float32 product of the dequantized kernel.

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/int4_gemv_probe.py [--out r.json]
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from quant_matvec_probe import LAYERS, one_row_shapes, product, timed  # noqa: E402

from jaxllm.models import quant  # noqa: E402


def _halves(q):
    """(low, high) nibbles of an int4 kernel [n, k] as uint32 [n, k / 2]: values 2j and 2j + 1."""
    n, k = q.shape
    b = jax.lax.bitcast_convert_type(q.reshape(n, k // 2, 2), jnp.uint8).astype(jnp.uint32)
    return b & 15, b >> 4


def nib(x, q, s, o, magic: bool):
    n, k = q.shape
    groups = s.shape[1]
    lo, hi = _halves(q)
    if magic:  # float32 2^23 + 8 + v by bits, exactly; minus the constant, v (an exact add)
        lo, hi = (jax.lax.bitcast_convert_type((h ^ 8) | 0x4B000000, jnp.float32) - 8388616.0 for h in (lo, hi))
    else:  # signed value of the nibble
        lo, hi = (((h ^ 8).astype(jnp.int32) - 8).astype(jnp.float32) for h in (lo, hi))
    xf = x.astype(jnp.float32).reshape(x.shape[0], groups, -1, 2)  # [R, G, g/2, 2]
    xe, xo = xf[..., 0], xf[..., 1]
    lo, hi = lo.reshape(n, groups, -1), hi.reshape(n, groups, -1)
    sf, of = s.astype(jnp.float32), o.astype(jnp.float32)
    xsum = jnp.sum(xf, axis=(-1, -2))  # [R, G]
    if n >= k:
        w_lo, w_hi = lo * sf[:, :, None], hi * sf[:, :, None]
        y = jnp.sum(xe[:, None] * w_lo[None] + xo[:, None] * w_hi[None], axis=(2, 3))
    else:
        part = jnp.sum(xe[:, None] * lo[None] + xo[:, None] * hi[None], axis=3)  # [R, n, G]
        y = jnp.sum(part * sf[None], axis=2)
    y = y + jnp.einsum("rG,nG->rn", xsum, of)
    return y.astype(x.dtype)


def form(name):
    """A jitted function of (x, LAYERS weights): the probe's forms, the others quant_matvec_probe's."""
    if name in ("bf16", "grouped"):
        return jax.jit(product(name))
    return jax.jit(lambda x, ws: [nib(x, q, s, o, name == "nibmagic") for q, s, o in ws])


def main(argv=None):
    args, cases = one_row_shapes(argv)
    results = []
    for label, n, k, x, sets in cases:
        q, s, o = sets["int4"][0]
        ref = x.astype(jnp.float32) @ quant.dequantize(q, s, o, jnp.float32).T
        for name, kind in (("bf16", "bf16"), ("grouped", "int8"), ("grouped", "int4"), ("nib", "int4"),
                           ("nibmagic", "int4")):
            fn = form(name)
            us = timed(fn, x, sets[kind]) / LAYERS * 1e6
            row = dict(shape=label, form=name, weights=kind, us=round(us, 2))
            if kind == "int4":
                y = fn(x, sets[kind][:1])[0].astype(jnp.float32)
                row["rel_err"] = float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
