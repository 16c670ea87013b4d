"""Models with random weights from a config alone: for benchmarks and tests, no checkpoint needed.

They take the loading path up to the read (`loader.plan`); weights are then drawn on the devices
(sharded straight onto a mesh when given), so an 8B-shaped model takes seconds and no host memory.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.loader import LoadedModel, plan, resolve_kv_dtype
from jaxllm.models import quant
from jaxllm.models.weights import flat_params, place, unflatten_into

# HF-shaped configs of well-known models (weights random): name -> config.json fields.
SHAPES = {
    "qwen3-0.6b": dict(
        architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "llama3-8b": dict(  # Llama-3.1-8B's config: 131,072 positions by llama3 rope scaling of 8,192
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
    ),
    # Mixtures of experts (issue 15's expert-parallel shapes): ~94 GB and ~61 GB in bfloat16.
    "mixtral-8x7b": dict(
        architectures=["MixtralForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False, num_local_experts=8, num_experts_per_tok=2,
    ),
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"], vocab_size=151936, hidden_size=2048, intermediate_size=6144,
        moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
    ),
    # gpt-oss-20b's config (~42 GB in bfloat16; its Hub checkpoint packs the experts in MXFP4):
    # sinks, sliding (128) and full layers alternating, 32 experts top 4, YaRN (the family's default)
    "gpt-oss-20b": dict(
        architectures=["GptOssForCausalLM"], model_type="gpt_oss", vocab_size=201088, hidden_size=2880,
        intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
        num_local_experts=32, num_experts_per_tok=4, sliding_window=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    # RecurrentGemma-2b's config (Griffin): two RG-LRU layers per local multi-query attention layer (window 2,048)
    "recurrentgemma-2b": dict(
        architectures=["RecurrentGemmaForCausalLM"], model_type="recurrent_gemma", vocab_size=256000, hidden_size=2560,
        intermediate_size=15360, num_hidden_layers=26, num_attention_heads=10, num_key_value_heads=1, lru_width=2560,
        attention_window_size=2048, conv1d_width=4, logits_soft_cap=30.0, rms_norm_eps=1e-6, rope_theta=10000.0,
        partial_rotary_factor=0.5, block_types=["recurrent", "recurrent", "attention"], tie_word_embeddings=True,
    ),
    "tiny": dict(
        architectures=["LlamaForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    ),
}


def random_model(raw: dict | str, dtype="bfloat16", mesh=None, seed: int = 0, *, quantize: str | None = None,
                 group_size: int | None = None, kv_dtype=None, quantize_embeddings: bool = False) -> LoadedModel:
    """A LoadedModel of config `raw` (a config.json dict, or a name in SHAPES) with N(0, 0.02)
    weights and unit norms. With `quantize` ("int8", "int4"), kernels are drawn as uniform integers
    on the devices with scales and offsets that give values of about the same spread (mean 0,
    standard deviation 0.02), so a quantized 8B shape also takes seconds; `quantize_embeddings`
    quantizes the embedding and output head too (jaxllm.load's)."""
    kv_dtype = resolve_kv_dtype(kv_dtype)
    p = plan(SHAPES[raw] if isinstance(raw, str) else raw, dtype, mesh, quantize=quantize, group_size=group_size,
             quantize_embeddings=quantize_embeddings)
    # One small jit per distinct (shape, dtype, sharding): one giant init jit compiles for minutes on GPU.
    makers, filled = {}, {}
    leaves = flat_params(p.abstract)
    roles = _quant_roles(leaves)
    for i, (path, leaf) in enumerate(leaves.items()):
        sh = (p.shardings or {}).get(path)
        role = roles.get(path)
        if role is not None or len(leaf.shape) == 1:  # constants (norms, scales, offsets): no compile
            filled[path] = place(_constant(leaf.shape, leaf.dtype, role), sh)
            continue
        key = (leaf.shape, leaf.dtype, sh)
        if key not in makers:
            makers[key] = jax.jit(functools.partial(_make, shape=leaf.shape, dtype=leaf.dtype), out_shardings=sh)
        filled[path] = makers[key](jax.random.fold_in(jax.random.PRNGKey(seed), i))
    return LoadedModel(p.config, p.graphdef, unflatten_into(p.abstract, filled), None, {}, None, p.mesh,
                       quantize=p.quantize, kv_dtype=kv_dtype)


def _quant_roles(leaves: dict) -> dict:
    """{path: (role, levels)} of the scales and offsets of quantized kernels (role "scale" or
    "offset", levels the kernel's number of integer values)."""
    roles = {}
    for path, leaf in leaves.items():
        if quant.is_quantized(leaf.dtype):
            levels = 2 ** quant.bits(leaf.dtype)
            for role, name in zip(("scale", "offset"), quant.scale_names(path[-1])):
                roles[path[:-1] + (name,)] = (role, levels)
    return roles


def _constant(shape, dtype, role) -> np.ndarray:
    """Norm weights (ones), or a quantized kernel's scales and offsets: its integers are uniform over
    [-levels / 2, levels / 2), of std levels / sqrt(12) and mean -1/2, so these give std 0.02, mean 0."""
    if role is None:
        return np.ones(shape, dtype)
    kind, levels = role
    scale = 0.02 * math.sqrt(12) / levels
    return np.full(shape, scale if kind == "scale" else scale / 2, dtype)


def _make(k, *, shape, dtype):
    if quant.is_quantized(dtype):
        info = jnp.iinfo(dtype)
        return jax.random.randint(k, shape, int(info.min), int(info.max) + 1, jnp.int32).astype(dtype)
    return (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)
