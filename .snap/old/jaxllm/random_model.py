"""Models with random weights from a config alone: for benchmarks and tests, no checkpoint needed.

They take the loading path up to the read (`loader.plan`); weights are then drawn on the devices
(sharded straight onto a mesh when given), so an 8B-shaped model takes seconds and no host memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxllm.loader import LoadedModel, plan
from jaxllm.models.weights import flat_params, unflatten_into

# HF-shaped configs of well-known models (weights random): name -> config.json fields.
SHAPES = {
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "llama3-8b": dict(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    "tiny": dict(
        architectures=["LlamaForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    ),
}


def random_model(raw: dict | str, dtype="bfloat16", mesh=None, seed: int = 0) -> LoadedModel:
    """A LoadedModel of config `raw` (a config.json dict, or a name in SHAPES) with N(0, 0.02)
    weights and unit norms."""
    p = plan(SHAPES[raw] if isinstance(raw, str) else raw, dtype, mesh)
    # One small jit per distinct (shape, dtype, sharding): one giant init jit compiles for minutes on GPU.
    makers, filled = {}, {}
    for i, (path, leaf) in enumerate(flat_params(p.abstract).items()):
        sh = (p.shardings or {}).get(path)
        key = (leaf.shape, leaf.dtype, sh)
        if key not in makers:
            def make(k, shape=leaf.shape, dtype=leaf.dtype, ones=leaf.ndim == 1):  # 1-D: norm weights
                if ones:
                    return jnp.ones(shape, dtype)
                return (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)

            makers[key] = jax.jit(make, out_shardings=sh)
        filled[path] = makers[key](jax.random.fold_in(jax.random.PRNGKey(seed), i))
    return LoadedModel(p.config, p.graphdef, unflatten_into(p.abstract, filled), None, {}, None, p.mesh)
