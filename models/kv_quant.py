"""The 8-bit KV cache's values (pure functions): int8 with one scale per token and kv head
(scale = max|x| / 127 over the head's D values), or a plain cast to float8 e4m3; `rotate`, the
orthogonal map an int8 cache applies to keys, values, queries and outputs (models/attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.models.layers import rounded_to

INT8_MAX = 127


def quantize_kv(x, dtype, scale_dtype=None):
    """Keys or values x [..., D] as the cache stores them: (values in `dtype`, scales [...] in
    `scale_dtype`, or None where the cache keeps no scales).

    int8: symmetric, one scale per vector of D (a token's kv head): scale = max|x| / 127, values
    round(x / scale). The scale is rounded to `scale_dtype` first and the values quantized with
    the rounded scale, so |x - q * scale| <= scale / 2 per element (the largest element may clip
    by at most 127 * scale * 2**-9 for bfloat16 scales, well inside that). An all-zero vector
    gets scale 0 and values 0.
    float8 (e4m3fn): a plain cast, clipped to the format's +-448 first (it has no infinity:
    XLA's cast would give NaN). Any other float dtype: a cast."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.int8:
        xf = x.astype(jnp.float32)
        amax = jnp.max(jnp.abs(xf), axis=-1)
        # the rounded scale in float32 by reduce_precision (layers.rounded_to), then stored exactly: a cast to
        # scale_dtype and back is a pair XLA drops (on CPUs inside its YNNPACK fusions: the values were divided by the
        # unrounded scale, 5% of them a step off, 2026-12-03)
        s = rounded_to(amax / INT8_MAX, scale_dtype or jnp.float32)
        q = jnp.round(xf / jnp.where(s > 0, s, 1.0)[..., None])
        return jnp.clip(q, -INT8_MAX, INT8_MAX).astype(jnp.int8), s.astype(scale_dtype)
    if dtype.itemsize == 1:  # float8
        big = float(jnp.finfo(dtype).max)
        return jnp.clip(x, -big, big).astype(dtype), None
    return x.astype(dtype), None


def _blocks(d: int) -> list[int]:
    """The powers of two, largest first, that sum to d (64 + 32 for 96): the Hadamard blocks of `rotate`."""
    blocks = []
    while d:
        blocks.append(1 << (d.bit_length() - 1))
        d -= blocks[-1]
    return blocks


@functools.cache
def _rotation(d: int) -> np.ndarray:
    """`rotate`'s matrix [d, d]: block-diagonal normalised Hadamard matrices of sizes `_blocks(d)`."""
    h, at = np.zeros((d, d), np.float32), 0
    for n in _blocks(d):
        block = np.ones((1, 1), np.float32)
        while len(block) < n:
            block = np.block([[block, block], [block, -block]])
        h[at : at + n, at : at + n] = block / np.sqrt(n)
        at += n
    return h


@functools.cache
def signs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """`_rotation(d)` as (its +-1 entries [d, d], each column's normalisation [d]): `rotate` is the product with the
    first, then each column times the second (also inside models/paged_kernel.py's decode kernel)."""
    norms = np.concatenate([np.full(n, 1 / np.sqrt(n), np.float32) for n in _blocks(d)])
    return np.sign(_rotation(d)).astype(np.float32), norms


def rotate(x, dtype=None):
    """x [..., D] times a fixed orthogonal, symmetric matrix (normalised Hadamard blocks, `_rotation`), so
    rotate(rotate(x)) == x up to rounding; in `dtype` (default: x's). An int8 cache stores keys and values
    rotated: queries turned the same way keep every score q . k, and the attention output turned
    back is the output over the unrotated values. The rotation spreads a vector's outlier
    channels over all D, so one scale per token and head fits: on SmolLM2-135M (float32, first
    256 tokens of tests/data/public_domain.txt, through the cache in chunks of 64) int8 keys and
    values raised perplexity by 1.9% unrotated, by 1.0% with the keys rotated, by 0.6% with
    both.

    A product with the matrix's +-1 entries in x's own dtype (exact in 16 bits: a 16-bit tensor-core product,
    summed in float32), then each column's normalisation in float32. Multiplying by the float32 matrix instead ran
    as a float32 product: 3.6 microseconds a call on an H200, four calls per layer and step, 400 of a batch-1
    decode step's 1,870 (Qwen3-0.6B shape, 2026-12-03). The butterflies of a fast Walsh-Hadamard transform
    (adds, no product) measured worse there: XLA fused them into a pad whose every element recomputed its chain
    (2,556 microseconds a step)."""
    entries, norms = signs(x.shape[-1])
    y = jnp.einsum("...d,de->...e", x, jnp.asarray(entries, x.dtype), preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST)
    return (y * norms).astype(dtype or x.dtype)


def dequantize_kv(values, scales, dtype):
    """The float keys or values [..., D] in `dtype` of cached `values` (and their int8 `scales`
    [...], or None)."""
    if scales is None:
        return values.astype(dtype)
    return (values.astype(jnp.float32) * scales.astype(jnp.float32)[..., None]).astype(dtype)


def _round_e4m3(s):
    """s (float32, in [2**-9, 448]) rounded to float8 e4m3fn's nearest value, ties to even, in float32 arithmetic: 3
    mantissa bits, subnormal steps of 2**-9 below 2**-6. Not a cast to float8 and back: XLA on GPUs drops such a pair
    of casts (its excess precision), which left Kolibri 1.1's NVFP4 scales unrounded there (logits 0.44 relative from
    transformers' on an H200, 2026-12-03)."""
    _, e = jnp.frexp(s)  # s = m * 2**e, 0.5 <= m < 1
    step = jnp.exp2(jnp.maximum(e - 4, -9).astype(jnp.float32))  # a power of two: the division and product are exact
    return jnp.round(s / step) * step


def fake_nvfp4(x):
    """x [..., D] (D a multiple of 16) rounded to NVFP4 and back, in x's dtype: E2M1 values (magnitudes 0, 0.5, 1, 1.5, 2,
    3, 4, 6, ties to even) times one E4M3 scale per 16 consecutive values (max|x| / 6, clipped to [2**-9, 448], rounded to
    E4M3), in float32 (transformers' nvfp4_fake_quantize: Kolibri 1.1's sparse keys and values, and its indexer's
    queries and keys, ModelConfig.indexer.rounding)."""
    blocks = x.astype(jnp.float32).reshape(x.shape[:-1] + (-1, 16))
    scale = _round_e4m3(jnp.clip(jnp.max(jnp.abs(blocks), axis=-1, keepdims=True) / 6, 2.0**-9, 448))
    scaled = blocks / scale
    magnitude = jnp.minimum(jnp.abs(scaled), 6.0)
    step = jnp.where(magnitude < 2, 0.5, jnp.where(magnitude < 4, 1.0, 2.0))
    rounded = jnp.round(magnitude / step) * step  # jnp.round: ties to even, as torch.round
    return (jnp.copysign(rounded, scaled) * scale).reshape(x.shape).astype(x.dtype)


ROUNDINGS = {"nvfp4": fake_nvfp4}  # AttnSpec.kv_round's names (models/attention.py)
