"""The gated delta rule (and Mamba2's selective state space, the same recurrence without the delta
rule's subtraction) token by token as one Pallas (Triton) kernel on GPUs: the engine's
linear-attention layers under a cache (models/linear_attention.recurrent_delta_rule).

As a lax.scan each token is a few XLA kernels launched one after another, so a 2,048-token prefill
chunk is thousands of launches per layer (docs/benchmarks.md, session 25: a Qwen3.5-9B shape reached
its first token 4-5x later than Llama-3-8B's). Here one program per (row, head, block of `bv` value
columns) keeps its [Dk, bv] slice of the state in registers across all T tokens and writes each
token's output as it goes. The arithmetic per token is fixed (the same loads, products and
reductions whatever T is), and the state between calls is the float32 state itself, so a sequence
gets the same results however its prompt is split into calls, as the engine requires. A decode step
(one token) runs XLA's scan step instead (`fits`), whose rounding differs from the kernel's in the last
bits: a sequence recomputed after preemption (its generated tokens then prefilled) can differ from its
first run at that level (the engine test's 1e-5 on log-probabilities holds on the H200).

Inputs as recurrent_delta_rule takes them after its L2 norms: q, k [B, T, H, Dk], v [B, T, H, Dv],
g, beta [B, T, H] (float32; g [B, T, H, Dk] for a decay per key channel; a padding token has g = beta = 0 and
leaves the state as it was),
state [B, H, Dk, Dv] float32. Dk and Dv must be powers of two (Triton's tiles), else `fits` says
no and the scan runs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

ENABLED = True  # False: the scan on GPUs too (benchmarks/hybrid_prefill_probe.py --scan compares them)
BV = 32  # value columns per program, with 8 warps: 2.5 ms a 2,048-token call of 32 heads of 128 x 128 on an H200 (bv 16-128, 4-8 warps: 2.5-8.4)


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def fits(dk: int, dv: int, tokens: int) -> bool:
    """Whether the kernel runs a call of `tokens` tokens with heads of these sizes here: on one GPU (a
    Pallas call is not partitioned over a mesh), sizes powers of two from 16, more than one token (a
    decode step's one token is faster as XLA's fused step: a Bamba-9B shape decoded 7-9% slower in the
    kernel on an H200, docs/benchmarks.md)."""
    return (ENABLED and tokens > 1 and jax.default_backend() == "gpu" and jax.device_count() == 1
            and _pow2(dk) and _pow2(dv))


def _kernel(*refs, steps: int, subtract: bool, channel: bool):
    (q_ref, k_ref, v_ref, gb_ref), g_ref, (s_ref, o_ref, s_out_ref) = refs[:4], refs[4] if channel else None, refs[-3:]

    def body(t, s):
        row = pl.ds(t, 1)
        q = jnp.transpose(q_ref[row, :])  # [Dk, 1]
        k = jnp.transpose(k_ref[row, :])
        beta = gb_ref[row, pl.ds(1, 1)]  # [1, 1]
        # the token's decay: one for the head [1, 1], or one per key channel [Dk, 1] (Kimi Delta Attention)
        s = s * jnp.exp(jnp.transpose(g_ref[row, :]) if channel else gb_ref[row, pl.ds(0, 1)])
        v = v_ref[row, :]  # [1, bv]
        delta = ((v - jnp.sum(s * k, axis=0, keepdims=True)) if subtract else v) * beta
        s = s + k * delta
        o_ref[row, :] = jnp.sum(s * q, axis=0, keepdims=True)
        return s

    s_out_ref[...] = jax.lax.fori_loop(0, steps, body, s_ref[...])


def delta_rule(q, k, v, g, beta, state, **options):
    """recurrent_delta_rule's results (output [B, T, H, Dv] float32, the new state) in one kernel."""
    return recurrence(q, k, v, g, beta, state, subtract=True, **options)


@functools.partial(jax.jit, static_argnames=("subtract", "interpret", "bv", "num_warps"))
def recurrence(q, k, v, g, beta, state, *, subtract: bool, interpret: bool = False, bv: int = BV, num_warps: int = 8):
    """The gated linear recurrence both mixers run, per row and head, state S [Dk, Dv] float32:

        S <- S * exp(g_t) + k_t (x) d_t,    o_t = q_t . S    (after the update),

g_t one per head ([B, T, H]) or one per key channel ([B, T, H, Dk]: Kimi Delta Attention, each row of S its own),
    d_t = beta_t * (v_t - k_t . S) for the delta rule (`subtract`), beta_t * v_t else (Mamba2's
    selective state space: k = B, q = C, v = x, beta = dt, g = dt * A, S its state transposed)."""
    b, steps, h, dk = k.shape
    dv = v.shape[-1]
    bv = min(bv, dv)
    t = 1 << max(steps - 1, 0).bit_length()  # Triton's tiles are powers of two: T padded, the padding never read
    pad = ((0, 0), (0, 0), (0, t - steps), (0, 0))
    channel = g.ndim == 4
    heads_first = [jnp.pad(jnp.moveaxis(x.astype(jnp.float32), 1, 2), pad) for x in (q, k, v) + ((g,) if channel else ())]
    head_g = jnp.zeros_like(beta) if channel else g
    gb = jnp.pad(jnp.moveaxis(jnp.stack([head_g, beta], axis=-1).astype(jnp.float32), 1, 2), pad)  # [B, H, T, 2]
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        params = dict(compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1))
    seq = lambda d: pl.BlockSpec((None, None, t, d), lambda i, j, c: (i, j, 0, 0))  # noqa: E731
    cols = lambda: pl.BlockSpec((None, None, t, bv), lambda i, j, c: (i, j, 0, c))  # noqa: E731
    block = lambda: pl.BlockSpec((None, None, dk, bv), lambda i, j, c: (i, j, 0, c))  # noqa: E731
    out, new = pl.pallas_call(
        functools.partial(_kernel, steps=steps, subtract=subtract, channel=channel),
        grid=(b, h, dv // bv),
        in_specs=[seq(dk), seq(dk), cols(), seq(2)] + [seq(dk)] * channel + [block()],
        out_specs=[cols(), block()],
        out_shape=[jax.ShapeDtypeStruct((b, h, t, dv), jnp.float32), jax.ShapeDtypeStruct(state.shape, jnp.float32)],
        interpret=interpret,
        **params,
    )(*heads_first[:3], gb, *heads_first[3:], state.astype(jnp.float32))
    return jnp.moveaxis(out[:, :, :steps], 2, 1), new
