"""Batch-1 decode multiplies a [1, E] row by [E, F] weights. XLA may emit that as its own
reduction kernel ("dot strength reduction") rather than a cuBLAS call; this times both ways on the
layer shapes of Qwen3-0.6B and Llama-3-8B and prints the bandwidth each reaches.

    python benchmarks/matvec_probe.py      # on the device machine
"""

import time

import jax
import jax.numpy as jnp

SHAPES = {"qwen3-0.6b gate/up": (1024, 3072), "qwen3-0.6b down": (3072, 1024), "qwen3-0.6b q": (1024, 2048),
          "llama3-8b gate/up": (4096, 14336), "llama3-8b down": (14336, 4096), "llama3-8b k/v": (4096, 1024)}
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
        x = jnp.ones((1, e), jnp.bfloat16)

        def layers(x, w):  # chained like decode: each layer's matvec, folded back to E
            def body(x, wi):
                y = x @ wi
                return x + y[:, :e].astype(x.dtype) if f >= e else jnp.pad(y, ((0, 0), (0, e - f))), None
            return jax.lax.scan(body, x, w)[0]

        out = [name]
        for label, opts in (("default", None), ("no-strength-reduction", {"xla_gpu_enable_dot_strength_reduction": False}),
                            ("size-threshold-0", {"xla_gpu_gemm_rewrite_size_threshold": 0})):
            try:
                fn = jax.jit(layers, compiler_options=opts) if opts else jax.jit(layers)
                t = timed(fn, x, w)
                out.append(f"{label}: {t / LAYERS * 1e6:.1f} us/matvec, {w.nbytes / t / 1e12:.2f} TB/s")
            except Exception as err:  # an option this XLA does not know
                out.append(f"{label}: failed ({type(err).__name__}: {str(err)[:120]})")
        print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
