"""Batch-1 decode multiplies a [1, E] row by [E, F] weights. XLA emits that as its own reduction
kernel ("dot strength reduction") rather than a cuBLAS call; this times XLA at M = 1, 2 and 8 rows
and the Pallas kernel of benchmarks/matvec_kernel.py on the layer shapes of Qwen3-0.6B and
Llama-3-8B, and prints the bandwidth each reaches. Run with XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
(as the engine does).

    python benchmarks/matvec_probe.py      # on the device machine
"""

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from matvec_kernel import matvec  # noqa: E402

SHAPES = {"qwen3-0.6b gate/up": (1024, 3072), "qwen3-0.6b down": (3072, 1024), "qwen3-0.6b q": (1024, 2048),
          "qwen3-0.6b fused qkv": (1024, 4096), "qwen3-0.6b fused gate+up": (1024, 6144),
          "llama3-8b gate/up": (4096, 14336), "llama3-8b down": (14336, 4096), "llama3-8b k/v": (4096, 1024),
          "llama3-8b fused qkv": (4096, 6144)}
LAYERS = 28


def timed(fn, *args):
    fn(*args).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    for name, (e, f) in SHAPES.items():
        w = jax.random.normal(jax.random.PRNGKey(0), (LAYERS, e, f), jnp.bfloat16)

        wt = jnp.swapaxes(w, 1, 2)  # [layers, F, E]: HF's [out, in] layout

        def layers(x, w, product=jnp.matmul):  # chained like decode (layers unrolled): matvec, folded back to E
            def body(x, wi):
                y = product(x, wi)
                return x + y[:, :e].astype(x.dtype) if f >= e else jnp.pad(y, ((0, 0), (0, e - f))), None
            return jax.lax.scan(body, x, w, unroll=True)[0]

        def transposed(x, wi):  # x [M, E] . wi[F, E]^T: a reduction over the minor dim
            return jnp.einsum("me,fe->mf", x, wi)

        out = [name]
        variants = [("xla M=1", 1, jnp.matmul, w), ("xla M=8", 8, jnp.matmul, w),
                    ("xla [out,in] M=1", 1, transposed, wt), ("xla [out,in] M=8", 8, transposed, wt),
                    ("pallas bn=32 warps=4", 1, functools.partial(matvec, bn=32, num_warps=4), w)]
        for label, m, product, weights in variants:
            x = jnp.ones((m, e), jnp.bfloat16)
            try:
                fn = jax.jit(functools.partial(layers, product=product))
                t = timed(fn, x, weights)
                out.append(f"{label}: {t / LAYERS * 1e6:.1f} us, {w.nbytes / t / 1e12:.2f} TB/s")
            except Exception as err:  # a kernel configuration this backend refuses
                out.append(f"{label}: failed ({type(err).__name__}: {str(err)[:160]})")
        print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
