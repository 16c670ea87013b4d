"""The research API's pure functions given params that are not the graphdef's: a tree of the same structure from a
model of another width or vocabulary, or one cast to integers. Each is refused in one line naming the leaf, eagerly
and under jit, where the width raised dot_general's TypeError deep inside the forward and another vocabulary gave
logits over it without a word. Params that are the model's, quantized ones included, are taken as before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm import loader, research
from jaxllm.models import registry, weights
from jaxllm.random_model import SHAPES, random_model

IDS = np.array([[1, 2, 3, 4]])


@pytest.fixture(scope="module")
def tiny():
    return random_model("tiny", dtype="float32")


@pytest.mark.parametrize("change, leaf", [(dict(hidden_size=128), "lm_head.kernel has shape (256, 128)"),
                                          (dict(vocab_size=300), "lm_head.kernel has shape (300, 64)"),
                                          (dict(intermediate_size=96), "down_proj.kernel has shape (64, 96)")])
def test_params_of_another_size_are_refused_naming_the_leaf(tiny, change, leaf):
    other = random_model(dict(SHAPES["tiny"], **change), dtype="float32")
    for fn in (research.logits, research.jitted("logits"), research.jitted("hidden_states")):
        with pytest.raises(jaxllm.InputError, match="params do not fit graphdef: .*" + leaf.replace("(", r"\(").replace(")", r"\)")) as err:
            fn(tiny.graphdef, other.params, IDS)
        assert "\n" not in str(err.value) and "model.params" in str(err.value)
    with pytest.raises(jaxllm.InputError, match="params do not fit graphdef"):  # under vmap over params too
        jax.vmap(lambda p: research.logits(tiny.graphdef, p, IDS))(jax.tree.map(lambda x: jnp.stack([x, x]), other.params))


def test_params_cast_to_integers_are_refused_and_float_casts_taken(tiny):
    ints = jax.tree.map(lambda x: x.astype(jnp.int32), tiny.params)
    with pytest.raises(jaxllm.InputError, match=r"params hold int32 at lm_head.kernel, where the model computes in floats: cast"):
        research.jitted("token_logprobs")(tiny.graphdef, ints, IDS)
    want = np.asarray(research.logits(tiny.graphdef, tiny.params, IDS))
    half = research.logits(tiny.graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), tiny.params), IDS)
    assert half.shape == want.shape and np.abs(np.asarray(half, np.float32) - want).max() <= 0.05 * np.abs(want).max()


def test_a_quantized_models_own_params_are_taken(tiny):
    """Integer kernels beside their scales are the model's: its logits, and near the float model's of the same weights'
    spread (the check leaves quantized kernels alone)."""
    q = random_model("tiny", dtype="float32", quantize="int8", quantize_embeddings=True)
    got = research.jitted("logits")(q.graphdef, q.params, IDS)
    assert got.shape == (1, 4, 256) and bool(jnp.isfinite(got).all())
    assert np.array_equal(np.asarray(got), np.asarray(q.logits(IDS)))


# Families whose parameters are laid out unlike a Llama's: expert stacks, latent attention, linear attention and state
# spaces, AltUp streams, hyper-connections, shared kv layers, sparse indexers, recurrent and xLSTM blocks
VARIED = ["MixtralForCausalLM", "DeepseekV32ForCausalLM", "GptOssForCausalLM", "Qwen3NextForCausalLM", "Gemma3nForCausalLM",
          "Gemma4ForCausalLM", "HYV4ForCausalLM", "Mamba2ForCausalLM", "FalconH1ForCausalLM", "LongcatFlashForCausalLM",
          "ZayaForCausalLM", "Kolibri1_1ForCausalLM", "RwkvForCausalLM", "xLSTMForCausalLM", "Llama4ForCausalLM"]


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_params_of_varied_families_fit_their_config(quantize):
    """No false refusal: quantized params (with int8 tables: the most integer leaves) have the shapes the config's
    float module gives, in families of every layout (every family's float params go through the research functions in
    test_parity)."""
    for name in VARIED:
        raw = dict(registry.get(name).tiny_config, architectures=[name])
        plan = loader.plan(raw, "bfloat16", quantize=quantize, quantize_embeddings=True)
        leaves = weights.flat_params(plan.abstract)
        assert any(jnp.issubdtype(x.dtype, jnp.integer) for x in leaves.values()), name
        research.check_params(plan.config, leaves)
