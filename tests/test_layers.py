"""Shared layers: the decode attention paths equal the general one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import runtime
from jaxllm.models import layers, registry
from jaxllm.models.attention import AttnSpec, attend, attention_mask, attention_probs, cudnn_decode_fits, decode_attention
from jaxllm.models.config import Alibi
from jaxllm.models.rope import apply_rotary


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_batch_one_decode_attention_equals_the_matmul_form(softcap):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 8, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(1, 40, 2, 16)), jnp.float32) for _ in range(2))
    mask = jnp.asarray(rng.random((1, 1, 40)) > 0.3)
    fast = attend(q, k, v, mask, 0.25, softcap)  # takes the batch-1, one-query path
    probs = attention_probs(q, k, mask, 0.25, softcap)
    general = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(q.shape)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(general), atol=1e-6)
    # two rows take the general path and agree with the one-row result for the first row
    two = attend(jnp.concatenate([q, q]), jnp.concatenate([k, k]), jnp.concatenate([v, v]), jnp.concatenate([mask, mask]), 0.25, softcap)
    np.testing.assert_allclose(np.asarray(two[:1]), np.asarray(fast), atol=1e-6)


def test_decode_attention_call_equals_the_masked_form():
    """The call that runs as one cuDNN kernel on GPUs (here its XLA form): grouped heads, keys
    valid up to each row's position, the same result as attending with our causal mask."""
    rng = np.random.default_rng(1)
    b, s, h, kv, d = 3, 40, 8, 2, 16
    q = jnp.asarray(rng.normal(size=(b, 1, h, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, s, kv, d)), jnp.float32) for _ in range(2))
    positions = jnp.asarray([[0], [17], [39]], jnp.int32)
    mask = attention_mask(positions, jnp.broadcast_to(jnp.arange(s), (b, s)), None)
    want = attend(q, k, v, mask, 0.25)
    got = decode_attention(q, k, v, positions[:, 0] + 1, 0.25, "xla")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # Never on the CPU, nor with a window or soft-capping, nor in float32.
    assert runtime.attention_impl() == "xla"
    assert cudnn_decode_fits(q.astype(jnp.bfloat16), AttnSpec(0.25))
    assert not cudnn_decode_fits(q, AttnSpec(0.25))
    assert not cudnn_decode_fits(q.astype(jnp.bfloat16), AttnSpec(0.25, window=8))
    assert not cudnn_decode_fits(q.astype(jnp.bfloat16), AttnSpec(0.25, softcap=3.0))
    assert not cudnn_decode_fits(q.astype(jnp.bfloat16), AttnSpec(0.25, alibi=Alibi((0.5,) * q.shape[2])))  # ALiBi: the XLA forms


@pytest.mark.parametrize("arch, float32_tables", [("Olmo2ForCausalLM", True), ("Olmo3ForCausalLM", True),
                                                  ("LlamaForCausalLM", False), ("CohereForCausalLM", True),
                                                  ("Glm4ForCausalLM", False), ("Ernie4_5ForCausalLM", True)])
def test_bfloat16_rotation_is_transformers(arch, float32_tables):
    """OLMo 2 and 3's rotary embedding returns float32 cos/sin, so transformers rotates bfloat16 q/k
    in float32 and casts back; Llama's casts the tables to bfloat16 first; Cohere's casts them to bfloat16,
    then rotates in float32. GLM and ERNIE 4.5 rotate interleaved pairs. Each bit for bit."""
    import inspect

    import torch
    import transformers
    from flax import nnx

    a = registry.get(arch)
    raw = dict(a.tiny_config, architectures=[arch])
    cfg = a.config(raw)
    module = a.module(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    positions = np.arange(300, 309)[None]
    rot = module.model.rotaries(jnp.asarray(positions), jnp.bfloat16)[cfg.rope]  # the full-attention layers
    assert (rot.cos.dtype == jnp.float32) == float32_tables
    q = np.random.default_rng(0).standard_normal((1, 9, cfg.num_heads, cfg.head_dim)).astype(np.float32)
    q = jnp.asarray(q, jnp.bfloat16)
    ours = np.asarray(apply_rotary(q, rot, cfg.rope_interleaved).astype(jnp.float32))
    hf_cfg = transformers.AutoConfig.for_model(a.hf_model_type, **{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    family = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[hf_cfg.model_type]
    modeling = __import__(getattr(transformers, family).__module__, fromlist=["x"])
    rotary = next(v for k, v in vars(modeling).items() if k.endswith("RotaryEmbedding"))(hf_cfg)
    qt = torch.from_numpy(np.asarray(q.astype(jnp.float32))).to(torch.bfloat16).transpose(1, 2)  # [B, H, T, D]
    by_type = "layer_type" in inspect.signature(rotary.forward).parameters  # OLMo 3: a rope per layer type
    cos, sin = rotary(qt, torch.from_numpy(positions), **({"layer_type": "full_attention"} if by_type else {}))
    want, _ = modeling.apply_rotary_pos_emb(qt, qt, cos, sin)
    np.testing.assert_array_equal(ours, want.transpose(1, 2).float().numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_rounded_to_is_the_cast_pair_without_casts(dtype):
    """layers.rounded_to(x, dtype) equals x cast to dtype and back (overflow, float16's subnormals and ties included), by
    no cast to dtype: XLA on GPUs drops such a pair of casts (its excess precision), so the rounding would not happen."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20000) * np.exp(rng.uniform(-30, 30, 20000))
    x = jnp.asarray(np.concatenate([x, [7e4, -1e6, 65504, 65520, 2**-24 * 1.5, 2**-25, 2**-14 * (1 - 2**-12), 1 + 2**-8]]),
                    jnp.float32)
    np.testing.assert_array_equal(np.asarray(layers.rounded_to(x, jnp.dtype(dtype))),
                                  np.asarray(x.astype(dtype).astype(jnp.float32)))
    assert f"new_dtype={dtype}" not in str(jax.make_jaxpr(lambda v: layers.rounded_to(v, jnp.dtype(dtype)))(x))
