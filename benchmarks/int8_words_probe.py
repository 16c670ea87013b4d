"""One row (batch-1 decode) of a quantized product, the kernel read as 32-bit words: faster than
today's forms? Sessions 12-26 found XLA's one-row int8 products reading 2-3 TB/s where cuBLAS reads
bf16 at 3.5-3.9 TB/s, and int4 bound by its conversions (~1.5 TB/s). Not tried: give XLA's
reduction one 32-bit load per four int8 values (eight int4 values), a bitcast of the stored kernel
(no copy), each value taken out of the word by shifts:

  grouped      quant.grouped_product (today's forms: folded for outputs >= inputs, per-group sums for down)
  words        int8: four values per int32 word, each sign-extended by (w << 24 - 8b) >> 24;
               int4: eight per word, (w << 28 - 4b) >> 28; same folded / grouped split as today
  words-magic  int8 only: each byte to float32 by bits ((b ^ 0x80) | 0x4B000000, minus 2^23 + 128)
  *-pair       gate and up of one x in one program (the model's case: XLA fuses siblings)

Microseconds per product on the Llama-3-8B layer shapes, LAYERS distinct kernels per timed call
(nothing stays in L2), int8 symmetric groups of 128 and int4 asymmetric groups of 32 (the adopted
schemes); each form checked against the float32 product of the dequantized kernel.

    XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python benchmarks/int8_words_probe.py [--out r.json]
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from quant_matvec_probe import LAYERS, one_row_shapes, timed, write_results  # noqa: E402

from jaxllm.models import quant  # noqa: E402


def _words(q):
    """The kernel [n, k] as int32 words [n, k / per] and the values per word."""
    n, k = q.shape
    if q.dtype == jnp.int8:
        return jax.lax.bitcast_convert_type(q.reshape(n, k // 4, 4), jnp.int32), 4
    b = jax.lax.bitcast_convert_type(q.reshape(n, k // 2, 2), jnp.uint8)  # element 2j: byte j's low nibble
    return jax.lax.bitcast_convert_type(b.reshape(n, k // 8, 4), jnp.int32), 8


def _values(w, per: int, magic: bool):
    """Each word's values as float32 [..., per] (value i of the word is input per * j + i)."""
    bits = 32 // per
    if magic:  # int8 only
        u = jax.lax.bitcast_convert_type(w, jnp.uint32)
        return [jax.lax.bitcast_convert_type((((u >> (8 * i)) & 0xFF) ^ 0x80) | 0x4B000000, jnp.float32) - 8388736.0
                for i in range(per)]
    return [((w << (32 - bits * (i + 1))) >> (32 - bits)).astype(jnp.float32) for i in range(per)]


def words(x, q, s, o, magic=False):
    n, k = q.shape
    groups = s.shape[1]
    w, per = _words(q)
    w = w.reshape(n, groups, -1)  # [n, G, g / per]
    vals = _values(w, per, magic)
    xf = x.astype(jnp.float32).reshape(x.shape[0], groups, -1, per)  # [R, G, g / per, per]
    sf = s.astype(jnp.float32)
    if n >= k:  # folded: one multiply-reduce of values x scale x x
        y = sum(jnp.sum(xf[:, None, :, :, i] * (v * sf[:, :, None])[None], axis=(2, 3)) for i, v in enumerate(vals))
    else:  # per-group sums, then scaled
        part = sum(jnp.sum(xf[:, None, :, :, i] * v[None], axis=3) for i, v in enumerate(vals))  # [R, n, G]
        y = jnp.sum(part * sf[None], axis=2)
    if o is not None:
        y = y + jnp.einsum("rG,nG->rn", jnp.sum(xf, axis=(2, 3)), o.astype(jnp.float32))
    return y.astype(x.dtype)


def words_product(x, kernel, scale, offset, n_in: int):
    """quant.grouped_product's signature on the words form (for benchmarks/quant_decode.py --words)."""
    n_out = kernel.ndim - n_in
    out_shape = kernel.shape[:n_out]
    n, k = math.prod(out_shape), math.prod(kernel.shape[n_out:])
    lead = x.shape[: x.ndim - n_in]
    groups = scale.shape[-1]
    y = words(x.reshape(-1, k), kernel.reshape(n, k), scale.reshape(n, groups),
              None if offset is None else offset.reshape(n, groups))
    return y.reshape(lead + out_shape)


def form(name):
    """A jitted function of (x, LAYERS weights) -> LAYERS products (pairs: two weights per product)."""
    def one(x, w):
        q, s, o = w
        if name.startswith("grouped"):
            return quant.grouped_product(x, q, s, o, 1)
        return words(x, q, s, o, magic=name.startswith("words-magic"))

    if name.endswith("-pair"):
        return jax.jit(lambda x, ws: [one(x, a) + one(x, b) for a, b in zip(ws[::2], ws[1::2])])
    if name == "bf16":
        return jax.jit(lambda x, ws: [jnp.einsum("rk,nk->rn", x, w) for w in ws])
    return jax.jit(lambda x, ws: [one(x, w) for w in ws])


def main(argv=None):
    args, cases = one_row_shapes(argv)
    results = []
    for label, n, k, x, sets in cases:
        cases = [("bf16", "bf16"), ("grouped", "int8"), ("words", "int8"), ("words-magic", "int8"),
                 ("grouped", "int4"), ("words", "int4")]
        if label == "gate/up":
            cases += [("grouped-pair", "int8"), ("words-pair", "int8"), ("grouped-pair", "int4"), ("words-pair", "int4")]
        for name, kind in cases:
            fn = form(name)
            ws = sets[kind]
            row = dict(shape=label, form=name, weights=kind)
            try:
                us = timed(fn, x, ws) / LAYERS * 1e6
                per = {"bf16": 2, "int8": 1, "int4": 0.5}[kind]
                row.update(us=round(us, 2), tbps=round(n * k * per / us / 1e6, 2))
                if kind != "bf16" and not name.endswith("-pair"):
                    q, s, o = ws[0]
                    ref = x.astype(jnp.float32) @ quant.dequantize(q, s, o, jnp.float32).T
                    y = fn(x, ws[:1])[0].astype(jnp.float32)
                    row["rel_err"] = float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))
            except Exception as e:  # a form that does not compile is a finding
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            print(json.dumps(row), flush=True)
            results.append(row)
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
