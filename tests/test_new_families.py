"""Families added over the shared modules (their parity, cache and engine tests are the generic ones over their tiny
configs): what their config.json may not say, refused in one line, and their tensors split over a tp mesh."""

import json

import numpy as np
import pytest
import reference

import jaxllm
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))


def _raw(arch: str, **change) -> dict:
    spec = registry.get(arch)
    return json.loads(json.dumps(dict(spec.tiny_config, model_type=spec.hf_model_type, **change)))


@pytest.mark.parametrize("arch, change, key", [
    ("BailingHybridForCausalLM", dict(layer_types=["linear_attention", "full_attention"]), "layer_types"),
    ("BailingHybridForCausalLM", dict(layer_types=["linear_attention", "sliding_attention", "full_attention"]), "sliding_attention"),
    ("BailingHybridForCausalLM", dict(num_key_value_heads=2), "num_key_value_heads"),
    ("BailingHybridForCausalLM", dict(kda_lower_bound=None), "kda_lower_bound"),
    ("BailingHybridForCausalLM", dict(layer_group_size=0), "layer_group_size"),
    ("CohereCompassForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), "rope_parameters"),
    ("CohereCompassForCausalLM", dict(rope_scaling=None), "rope_scaling"),
    ("CohereCompassForCausalLM", dict(layer_types=None, rope_parameters={"sliding_attention": {  # all full, no entry for them
        "rope_type": "default", "rope_theta": 10000.0}}), "full_attention"),
    ("CohereCompassForCausalLM", dict(rope_parameters={"sliding_attention": {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}, "full_attention": None}),
     "partial_rotary_factor"),
    ("MiniMaxM3VLForCausalLM", dict(layer_types=["minimax_m3_sparse", "sliding_attention"]), "sliding_attention"),
    ("MiniMaxM3VLForCausalLM", dict(index_n_heads=3), "index_n_heads"),
    ("MiniMaxM3VLForCausalLM", dict(sparse_attention_config={"sparse_attention_freq": [1, 2]}), "sparse_attention_freq"),
    ("HrmTextForCausalLM", dict(num_layers_per_stack=2, num_hidden_layers=10), "num_layers_per_stack"),
    ("HrmTextForCausalLM", dict(attention_bias=True), "attention_bias"),
])
def test_what_transformers_cannot_run_is_refused_in_one_line(arch, change, key):
    with pytest.raises(ConfigError, match=key) as err:
        registry.get(arch).config(_raw(arch, **change))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["BailingHybridForCausalLM", "CohereCompassForCausalLM", "MiniMaxM3VLForCausalLM",
                                  "HrmTextForCausalLM"])
def test_tensor_parallel_mesh_gives_the_same_logits(arch, tmp_path):
    """Every new parameter names logical axes the sharding rules split (8 simulated devices, dp=4 x tp=2)."""
    reference.build(arch, tmp_path)
    want = jaxllm.load(tmp_path).logits(TOKENS)
    got = jaxllm.load(tmp_path, mesh="dp=4,tp=2").logits(TOKENS)
    assert reference.max_rel_diff(got, want) <= 1e-5


def test_minimax_m3_sparse_layers_serve_only_the_positions_they_compute_densely(tmp_path):
    """MiniMax-M3's block-sparse layers are dense attention while their top-k blocks cover every earlier key (16 blocks of
    8 keys in the tiny config): the model serves those 128 positions (its config's 256 bound nothing), a longer request is
    refused in one line; without sparse layers it serves them all."""
    reference.build("MiniMaxM3VLForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    assert (model.config.max_position_embeddings, model.config.context_length) == (256, 128)
    with pytest.raises(jaxllm.errors.JaxllmError) as err:
        model.generate(list(range(3, 120)), jaxllm.SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert "\n" not in str(err.value)
    dense = registry.get("MiniMaxM3VLForCausalLM").config(_raw("MiniMaxM3VLForCausalLM", layer_types=None))
    assert dense.context_length == 256
